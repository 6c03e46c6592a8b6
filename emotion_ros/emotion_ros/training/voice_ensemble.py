"""Combine voice models into one checkpoint (``emotion-train voice-ensemble``).

    emotion-train voice-ensemble --members A.pt B.pt [...] --data DIR [--data DIR2] --dev-speakers 15-16 --out voice.pt
        [--fit-perturb reverb,noise,telephone,quiet,rate44k] [--fit-seed 0]

The first member is the main network, a CNN + BiLSTM (its embedding is the model's embedding); every CNN + BiLSTM
member must compute the same features; a ``ge2e_head`` member (``emotion-train voice-ge2e``) reads the utterance
itself. The node's :class:`~emotion_ros.core.voice.model.VoiceModel` averages the members' tempered logits
(each member's own temperature) and divides by one more temperature, fitted here by log-likelihood on the
held-out ``--dev-speakers`` through the voice node's own pipeline (segmentation, trimming, features). The report
(accuracy of each member and of the ensemble on those speakers, calibration error before and after) is printed as
the last line and stored in the checkpoint (``ensemble``). Choose the members on held-out speakers, never on the
test speakers.

``--fit-perturb`` fits that temperature on the dev speakers as a robot hears them: their clean recordings and, as
further whole copies, each recording under each named ``emotion-eval voice --perturb`` condition (one draw,
``--fit-seed``), pooled. The report then gives the calibration error per condition and, to judge the choice of fit
set on speakers the fit did not see, a leave-one-dev-speaker-out check: for each dev speaker, the temperature fitted
on the others (clean only, and clean plus the conditions) and the error it gives on that speaker.
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
from ..core.voice.features import SAMPLE_RATE, FeatureSpec, load_audio
from .calibration import calibrate_report, ece, fit_temperature, softmax_t
from .perturb import parse_names, perturb_voice


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--members", nargs="+", required=True, help="voice checkpoints; the first is the main network")
    p.add_argument("--data", action="append", required=True,
                   help="corpus folder(s) holding the dev speakers (RAVDESS-style names or one folder per label)")
    p.add_argument("--dev-speakers", default="15-16", help="held-out speakers to fit the ensemble's temperature on")
    p.add_argument("--out", required=True)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--fit-perturb", action="append", default=[], metavar="NAME",
                   help="fit the temperature on the dev speakers clean and, as further copies, under each of these "
                        "perturbations (emotion-eval voice --perturb names, repeatable or a comma list; one each)")
    p.add_argument("--fit-seed", type=int, default=0, help="seed of the --fit-perturb perturbations")


def _dev_items(roots, speakers):
    from .voice_data import list_voice_data, parse_speakers
    keep = set(parse_speakers(speakers))
    items = []
    for root in roots:
        items += [i for i in list_voice_data(root).items if i.speaker in keep]
    if not items:
        raise DataError(f"no labelled audio of speaker(s) {', '.join(sorted(keep))} under {', '.join(roots)}")
    return items


def leave_one_speaker_out(logp: dict, y: np.ndarray, speakers: np.ndarray) -> dict:
    """For each speaker: the temperature fitted on the other speakers' clean copy (``logp["clean"]``) and on all
    their copies (every condition in ``logp``), and the calibration error each gives on this speaker's clean copy
    and on all its copies pooled; ``mean`` averages the speakers. ``logp``: condition -> (N, C) log-probabilities at
    T = 1, rows in the order of ``y`` and ``speakers``."""
    names = sorted(set(speakers.tolist()))
    if len(names) < 2:
        return {}
    rows = {}
    for s in names:
        out, held = speakers != s, speakers == s
        fits = {"clean": fit_temperature(logp["clean"][out], y[out]),
                "conditions": fit_temperature(np.concatenate([lp[out] for lp in logp.values()]),
                                              np.tile(y[out], len(logp)))}
        held_all = np.concatenate([lp[held] for lp in logp.values()])
        rows[s] = {f"{fit}_fit": {"temperature": round(t, 4),
                                  "ece_clean": round(ece(softmax_t(logp["clean"][held], t), y[held]), 4),
                                  "ece_all": round(ece(softmax_t(held_all, t), np.tile(y[held], len(logp))), 4)}
                   for fit, t in fits.items()}
    rows["mean"] = {fit: {k: round(float(np.mean([rows[s][fit][k] for s in names])), 4)
                          for k in ("ece_clean", "ece_all")} for fit in ("clean_fit", "conditions_fit")}
    return rows


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
    try:
        conditions = parse_names(args.fit_perturb, "voice")
    except ValueError as exc:
        raise DataError(f"--fit-perturb: {exc}") from None
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
        vm = VoiceModel(probe, device="cpu")
        p1 = voice_outputs_by_speaker(vm, waves, spk)[0].probs
        by_condition = {"clean": p1}
        for name in conditions:
            heard = [perturb_voice(w, SAMPLE_RATE, [name], args.fit_seed, i) for i, w in enumerate(waves)]
            by_condition[name] = voice_outputs_by_speaker(vm, heard, spk)[0].probs
    # log-softmax of the averaged logits: a temperature fits it
    logp = {c: np.log(np.clip(p, 1e-8, 1.0)) for c, p in by_condition.items()}
    fit_logp, fit_y = np.concatenate(list(logp.values())), np.tile(y, len(logp))
    fitted_on = (f"dev speakers {args.dev_speakers} (held out of every member's training), through the voice "
                 "node's pipeline")
    if conditions:
        fitted_on += f", clean and under {', '.join(conditions)} (seed {args.fit_seed}; {len(logp)} copies pooled)"
    report = calibrate_report(fit_logp, fit_y, fitted_on=fitted_on)
    if conditions:
        t = report["temperature"]
        report["conditions"] = {c: {"ece_before": round(ece(softmax_t(lp, 1.0), y), 4),
                                    "ece_after": round(ece(softmax_t(lp, t), y), 4),
                                    "accuracy": round(float((lp.argmax(1) == y).mean()), 4)}
                                for c, lp in logp.items()}
        report["leave_one_speaker_out"] = leave_one_speaker_out(logp, y, np.asarray(spk))
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
    for key in ("conditions", "leave_one_speaker_out"):
        if key in report:
            out[key] = report[key]
    print(json.dumps(out), flush=True)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    add_args(p)
    return run(p.parse_args(argv))

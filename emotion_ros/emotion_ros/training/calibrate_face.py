"""Fit the face model's temperature on held-out faces and store it in the checkpoint (``emotion-train calibrate-face``).

The temperature is fitted (NLL, :mod:`.calibration`) on the face model's own **dev** part: the stratified
``dev_fraction`` of its training data drawn with its training ``seed`` (both read from the checkpoint's saved
configuration; the same part ``emotion-train fusion`` uses), which the model never trained on. The test folder
(FER2013 PublicTest) is only measured: ECE before and after, never fitted on. Faces go through the face node's
detection and alignment (as in ``emotion-eval face``), with the node's horizontal-flip averaging.

    emotion-train calibrate-face --face-model models/face.pt --data ../shared/data/fer2013/train \\
        --test ../shared/data/fer2013/val [--out models/face.pt]

Writes ``ckpt["calibration"] = {"method": "temperature", "temperature", "ece_before", "ece_after", "fitted_on",
"fit": {...}, "test": {...}}``; :class:`~emotion_ros.core.face.model.FaceModel` applies it.
"""
from __future__ import annotations

import argparse
import json
import os

import numpy as np
import torch

from ..core.errors import DataError
from ..core.face.align import FaceAligner
from ..core.face.model import FaceModel
from ..core.modelio import load_checkpoint, write_checkpoint
from .calibration import calibrate_report, reliability_table, softmax_t
from .common import stratified_holdout
from .face_data import load_faces


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--face-model", required=True)
    p.add_argument("--data", required=True, help="the face model's training data (folder/CSV/npz); its dev part "
                                                 "is used for the fit")
    p.add_argument("--test", default=None, help="faces only measured, never fitted on (e.g. FER2013 val)")
    p.add_argument("--out", default=None, help="checkpoint to write (default: --face-model, replaced in place)")
    p.add_argument("--json", default=None, help="also write the calibration report here")
    p.add_argument("--cache-dir", default=os.path.expanduser("~/.cache/emotion_ros"))
    p.add_argument("--threads", type=int, default=0)


@torch.inference_mode()
def face_logits(model: FaceModel, crops: np.ndarray, batch: int = 512) -> np.ndarray:
    """(V, N, 7) logits: V = 2 views (image, mirror image) with the model's flip averaging, else 1."""
    out = []
    for i in range(0, len(crops), batch):
        x = model.to_tensor(crops[i:i + batch]).to(model.device)
        views = [x, torch.flip(x, dims=[3])] if model.flip_tta else [x]
        out.append(torch.stack([model.net(v).float() for v in views]).cpu().numpy())
    return np.concatenate(out, 1) if out else np.zeros((1, 0, 7), np.float32)


def run(args) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    ckpt = load_checkpoint(args.face_model, "face")
    cfg = (ckpt.get("config") or {}).get("args") or {}
    if "dev_fraction" not in cfg or "seed" not in cfg:
        raise DataError(f"{args.face_model!r} does not record its dev split (config.args dev_fraction/seed)")
    model = FaceModel(args.face_model, device="cpu", calibrated=False)
    faces = load_faces(args.data, cache_dir=args.cache_dir, aligner=FaceAligner())
    dev = stratified_holdout(faces.labels, float(cfg["dev_fraction"]), int(cfg["seed"]))
    if not dev.any():
        raise DataError(f"no dev faces in {args.data!r} (dev_fraction {cfg['dev_fraction']})")
    lg = face_logits(model, faces.images[dev])
    # a check that the split is the one the model was selected on: its training part scores far higher than dev
    rest = np.flatnonzero(~dev)
    rest = np.random.default_rng(0).choice(rest, size=min(len(rest), 2000), replace=False) if len(rest) else rest
    train_acc = (float((softmax_t(face_logits(model, faces.images[rest])).argmax(1) == faces.labels[rest]).mean())
                 if len(rest) else None)
    fitted_on = (f"{args.data}: dev part (stratified {cfg['dev_fraction']:g}, seed {cfg['seed']}) of the face "
                 f"model's training data, {int(dev.sum())} faces")
    test_lg = test_y = None
    if args.test:
        ft = load_faces(args.test, cache_dir=args.cache_dir, aligner=FaceAligner())
        test_lg, test_y = face_logits(model, ft.images), ft.labels
    rep = calibrate_report(lg, faces.labels[dev], test_lg, test_y, fitted_on=fitted_on)
    rep["test_data"] = args.test
    rep["train_part_accuracy"] = None if train_acc is None else round(train_acc, 4)  # 2,000 drawn at random
    if test_lg is not None:
        t = float(rep["temperature"])
        rep["reliability_test_before"] = reliability_table(softmax_t(test_lg, 1.0), test_y)
        rep["reliability_test_after"] = reliability_table(softmax_t(test_lg, t), test_y)
    rep = json.loads(json.dumps(rep))  # plain Python types only: checkpoints load with weights_only=True
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rep, f, indent=2)
    ckpt["calibration"] = rep
    out = args.out or args.face_model
    write_checkpoint(ckpt, out)
    FaceModel(out, device="cpu")  # the written file loads
    print(json.dumps({k: rep[k] for k in ("temperature", "ece_before", "ece_after", "n_fit")}
                     | {"dev_accuracy": rep["fit"]["accuracy"], "train_part_accuracy": rep["train_part_accuracy"],
                        "test": rep.get("test"), "out": out}), flush=True)
    return rep


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    add_args(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    main()

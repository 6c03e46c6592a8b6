"""Measure the face model's int8 activation ranges and store them in the checkpoint (``emotion-train quantize-face``).

Post-training static quantization (:mod:`emotion_ros.core.face.quant`): ``--n`` faces drawn (``--seed``) from the
**training** part of the face model's training data (its dev part, read from the checkpoint's saved configuration
as in ``emotion-train calibrate-face``, is left alone) go through the face node's detection and alignment and,
with the model's mirror averaging, through both views; the observers' ranges are stored as ``ckpt["int8"]``.
The float weights, the temperature and everything else in the file stay as they are: the face node runs int8 only
with ``int8: true``. ``--test`` faces are only measured (accuracy of the float and the int8 network through the
same crops, and how often their top emotions agree), never used for the ranges.

    emotion-train quantize-face --face-model models/face.pt --data ../shared/data/fer2013/train \\
        --test ../shared/data/fer2013/val [--out models/face.pt]
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
from ..core.face.quant import build_int8, engine, observe
from ..core.modelio import load_checkpoint, write_checkpoint
from .common import stratified_holdout
from .face_data import load_faces


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--face-model", required=True)
    p.add_argument("--data", required=True, help="the face model's training data (folder/CSV/npz); faces of its "
                                                 "training part (not its dev part) set the ranges")
    p.add_argument("--test", default=None, help="faces only measured, float against int8 (e.g. FER2013 val)")
    p.add_argument("--n", type=int, default=1024, help="faces whose activations set the ranges")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="checkpoint to write (default: --face-model, replaced in place)")
    p.add_argument("--json", default=None, help="also write the report here")
    p.add_argument("--cache-dir", default=os.path.expanduser("~/.cache/emotion_ros"))
    p.add_argument("--threads", type=int, default=0)


def _batches(model: FaceModel, crops: np.ndarray, batch: int = 256):
    for i in range(0, len(crops), batch):
        x = model.to_tensor(crops[i:i + batch])
        yield x
        if model.flip_tta:
            yield torch.flip(x, dims=[3])


def _compare(fp32: FaceModel, int8: FaceModel, crops: np.ndarray, labels: np.ndarray) -> dict:
    pf = np.concatenate([fp32.predict(crops[i:i + 512])[0] for i in range(0, len(crops), 512)])
    pq = np.concatenate([int8.predict(crops[i:i + 512])[0] for i in range(0, len(crops), 512)])
    return {"n": int(len(labels)), "accuracy_float": round(float((pf.argmax(1) == labels).mean()), 4),
            "accuracy_int8": round(float((pq.argmax(1) == labels).mean()), 4),
            "top_agreement": round(float((pf.argmax(1) == pq.argmax(1)).mean()), 4),
            "max_prob_abs_diff_p99": round(float(np.percentile(np.abs(pf - pq).max(1), 99)), 4)}


def run(args) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    if engine() is None:
        raise DataError("this torch build has no x86/fbgemm quantized engine: cannot measure int8 ranges")
    if args.n < 1:
        raise DataError(f"--n {args.n}: need at least one face")
    ckpt = load_checkpoint(args.face_model, "face")
    cfg = (ckpt.get("config") or {}).get("args") or {}
    model = FaceModel(args.face_model, device="cpu")
    faces = load_faces(args.data, cache_dir=args.cache_dir, aligner=FaceAligner(size=model.input_size))
    if "dev_fraction" in cfg and "seed" in cfg:
        pool = np.flatnonzero(~stratified_holdout(faces.labels, float(cfg["dev_fraction"]), int(cfg["seed"])))
        part = f"training part (dev {cfg['dev_fraction']:g} held out, seed {cfg['seed']})"
    else:
        pool, part = np.arange(len(faces.labels)), "all faces (the checkpoint records no dev split)"
    if len(pool) == 0:
        raise DataError(f"no faces in {args.data!r}")
    pick = np.random.default_rng(args.seed).choice(pool, size=min(args.n, len(pool)), replace=False)
    state = observe(model.net, _batches(model, faces.images[pick]))
    build_int8(model.net, state)  # the ranges fit the network
    rep = {"method": "post-training static quantization (torch.ao eager mode), per-channel weights, per-tensor activations",
           "engine": state["engine"], "torch": str(torch.__version__), "size": model.input_size, "n": int(len(pick)),
           "views": 2 if model.flip_tta else 1,
           "ranges_from": f"{args.data}: {len(pick)} faces of the face model's {part}, seed {args.seed}"}
    out = args.out or args.face_model
    ckpt["int8"] = {**rep, "observers": state["observers"]}
    write_checkpoint(ckpt, out)
    int8 = FaceModel(out, device="cpu", int8=True)  # the written file loads and runs int8
    if not int8.runs_int8:
        raise DataError(f"{out}: int8 network not built ({int8.int8_fallback})")
    if args.test:
        test = load_faces(args.test, cache_dir=args.cache_dir, aligner=FaceAligner(size=model.input_size))
        rep["test"] = {"data": args.test, **_compare(model, int8, test.images, test.labels)}
        ckpt["int8"]["test"] = rep["test"]
        write_checkpoint(ckpt, out)
    rep = json.loads(json.dumps(rep))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rep, f, indent=2)
    print(json.dumps({**rep, "out": out}), flush=True)
    return rep


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    add_args(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    main()

"""emotion-bench jpeg: what JPEG compression of the camera images (camera_node ``jpeg_quality``, for a face node on
another machine) costs in face accuracy, and what it saves in bytes.

On the labelled evaluation clips (``scripts/make_eval_clips.py``: 640x480 videos of faces no model trained on, with
a label per span), every ``--every``-th frame inside a span that shows a face (0.2 s from its edges) is classified by
the face node's pipeline (BlazeFace, alignment, ``models/face.pt`` with flip TTA; whole-frame detection on each frame,
no tracking, so frames are independent) as decoded from the clip ("raw": what ``image_raw`` carries) and after a
JPEG round trip at each quality (``numpy_to_compressed`` / ``compressed_to_numpy``, what ``image_raw/compressed``
carries). Per quality: accuracy of the largest face's top emotion against the span's face label (a frame without a
detected face counts as wrong), the share of frames with a face, agreement with the raw frame's prediction, and
the JPEG size (mean kB a frame, MB/s at 30 fps; raw bgr8 is 921.6 kB a frame, 27.6 MB/s).

The clips' own video is MJPG (OpenCV's writer), so "raw" already went through one JPEG encoding at high quality.

    emotion-bench jpeg                                   # /work/eval_clips, test clips, every 10th frame
    emotion-bench jpeg --clips /work/eval_clips --every 5 --qualities 40,50,60,70,80,90 --json jpeg.json
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import time
from typing import Dict, List, Optional, Sequence

import numpy as np

DEFAULT_CLIPS = "/work/eval_clips"
EDGE_S = 0.2


def face_frames(clip_dir: str, every: int):
    """(frame BGR, face label) of every ``every``-th frame inside a span with a face, edges left out."""
    import cv2
    with open(os.path.join(clip_dir, "meta.json")) as f:
        meta = json.load(f)
    spans = [(s["start"] + EDGE_S, s["end"] - EDGE_S, s["face_label"]) for s in meta["spans"] if s.get("face_label")]
    cap = cv2.VideoCapture(os.path.join(clip_dir, "video.avi"))
    if not cap.isOpened():
        raise FileNotFoundError(f"cannot read {os.path.join(clip_dir, 'video.avi')}")
    fps = float(meta.get("fps") or cap.get(cv2.CAP_PROP_FPS) or 25.0)
    i = 0
    try:
        while True:
            ok = cap.grab()
            if not ok:
                break
            if i % every == 0:
                t = i / fps
                label = next((lab for a, b, lab in spans if a <= t < b), None)
                if label is not None:
                    ok, frame = cap.retrieve()
                    if ok:
                        yield frame, label
            i += 1
    finally:
        cap.release()


def classify(pipeline, frame: np.ndarray) -> Optional[str]:
    """Top emotion of the largest face in ``frame`` (None: no face), with no memory of earlier frames."""
    pipeline.reset()
    faces = pipeline.process(frame, 0.0)
    if not faces:
        return None
    return max(faces, key=lambda f: f.box[2] * f.box[3]).emotion


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="emotion-bench jpeg", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", default=DEFAULT_CLIPS, help=f"folder of eval clips (default {DEFAULT_CLIPS})")
    ap.add_argument("--split", default="test", help="clips whose name starts with this (default test)")
    ap.add_argument("--every", type=int, default=10, help="every N-th frame (default 10)")
    ap.add_argument("--qualities", default="50,60,70,80,90", help="JPEG qualities (default 50,60,70,80,90)")
    ap.add_argument("--model", default="", help="face model (default: the package's models/face.pt)")
    ap.add_argument("--json", help="also write the result to this file")
    args = ap.parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        qualities = [int(q) for q in args.qualities.split(",") if q.strip()]
    except ValueError:
        qualities = []
    if not qualities or not all(1 <= q <= 100 for q in qualities) or args.every < 1:
        print("emotion-bench jpeg: --qualities must be integers 1-100, --every >= 1", file=sys.stderr)
        return 2
    clips = sorted(d for d in glob.glob(os.path.join(args.clips, f"{args.split}*"))
                   if os.path.isfile(os.path.join(d, "meta.json")) and os.path.isfile(os.path.join(d, "video.avi")))
    if not clips:
        print(f"emotion-bench jpeg: no {args.split}* clips with meta.json and video.avi in {args.clips} "
              "(scripts/make_eval_clips.py builds them)", file=sys.stderr)
        return 2
    import cv2
    import torch
    from emotion_ros import paths
    from emotion_ros.core.face.model import FaceModel
    from emotion_ros.core.face.pipeline import build_pipeline
    from emotion_ros.ros.convert import compressed_to_numpy, numpy_to_compressed

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    model_path = args.model or paths.model_path("face.pt")
    pipeline = build_pipeline(FaceModel(model_path, device="cpu", flip_tta=True), {"full_detect_every": 1})
    conds = ["raw"] + [f"q{q}" for q in qualities]
    correct = dict.fromkeys(conds, 0)
    found = dict.fromkeys(conds, 0)
    agree = dict.fromkeys(conds, 0)
    sizes: Dict[str, List[int]] = {c: [] for c in conds[1:]}
    n = 0
    t0 = time.monotonic()
    for clip in clips:
        for frame, label in face_frames(clip, args.every):
            n += 1
            preds = {"raw": classify(pipeline, frame)}
            for q in qualities:
                msg = numpy_to_compressed(frame, q)
                sizes[f"q{q}"].append(len(msg.data))
                preds[f"q{q}"] = classify(pipeline, compressed_to_numpy(msg, "bgr8"))
            for c, p in preds.items():
                correct[c] += p == label
                found[c] += p is not None
                agree[c] += p == preds["raw"]
        print(f"[bench jpeg] {os.path.basename(clip)}: {n} frames so far, {time.monotonic() - t0:.0f} s", flush=True)
    if n == 0:
        print("emotion-bench jpeg: no frame with a face in the clips", file=sys.stderr)
        return 2
    rows = []
    for c in conds:
        kb = float(np.mean(sizes[c])) / 1000 if c in sizes else 640 * 480 * 3 / 1000
        rows.append({"images": c, "accuracy": round(correct[c] / n, 4), "face_found": round(found[c] / n, 4),
                     "agrees_with_raw": round(agree[c] / n, 4), "kb_per_frame": round(kb, 1),
                     "mb_per_s_at_30fps": round(kb * 30 / 1000, 2)})
    print("| images | accuracy | face found | same as raw | kB / frame | MB/s at 30 fps |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['images']} | {100 * r['accuracy']:.1f} % | {100 * r['face_found']:.1f} % | "
              f"{100 * r['agrees_with_raw']:.1f} % | {r['kb_per_frame']:g} | {r['mb_per_s_at_30fps']:g} |")
    summary = {"bench": "jpeg", "clips": [os.path.basename(c) for c in clips], "frames": n, "every": args.every,
               "model": model_path, "rows": rows, "seconds": round(time.monotonic() - t0, 1)}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=2)
    print(json.dumps(summary, separators=(",", ":")), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

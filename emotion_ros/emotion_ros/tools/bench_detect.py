"""``emotion-bench detect``: compare the face detectors on real photos, the bench's scenes and face-free images.

  emotion-bench detect [--photos DIR] [--detectors blazeface,haar,...] [--rounds N] [--json FILE]

- photos (``--photos``, e.g. ../shared/data/face_photos: one face per photo, any folder layout): faces found (%
  of photos with at least one box) and false faces (boxes beyond the first, per photo);
- scenes: ``emotion-bench``'s own 640x480 frames (1 face of ~170 px, 5 faces of ~100 px, and one face at
  24-250 px: a person from ~0.5 to ~4 m away): true faces found (a box whose centre lies in the true box and
  whose side is 0.5-2x its side) and false boxes;
- face-free: generated 640x480 images (noise, blurred noise, gratings, checkerboards, gradients with shapes,
  matplotlib's non-face sample images): boxes per image, all false;
- time per 640x480 frame on one CPU core (``cv2.setNumThreads(1)``): whole-frame pass (median and p95 of
  ``--rounds`` passes over the 1- and 5-face scenes, detectors interleaved) and the search around known faces
  that the face node runs between whole-frame passes; wall-clock time, and the thread's CPU time (which other
  processes on a busy machine inflate much less).

Detectors as the face node builds them (``build_pipeline``'s defaults); a detector that cannot be built (package
missing) is reported and skipped.  Prints one line per measurement and, last, one JSON object.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import time
from typing import Dict, List, Sequence

import cv2
import numpy as np

DEFAULT_DETECTORS = "blazeface,blazeface_full,blazeface_short,haar"


def face_free_images(n: int = 40, seed: int = 0) -> List[np.ndarray]:
    """``n`` 640x480 BGR images that hold no face."""
    from .bench import background
    rng = np.random.default_rng(seed)
    h, w = 480, 640
    out: List[np.ndarray] = []
    samples = []
    try:
        import matplotlib.cbook as cbook
        for name in ("Minduka_Present_Blue_Pack.png", "logo2.png"):
            with cbook.get_sample_data(name) as f:
                img = cv2.imdecode(np.frombuffer(f.read(), np.uint8), cv2.IMREAD_COLOR)
            if img is not None:
                samples.append(cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA))
    except Exception:  # noqa: BLE001 - optional extra images
        pass
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    i = 0
    while len(out) < n:
        kind = i % 6
        if kind == 0:
            img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        elif kind == 1:
            sigma = float(rng.uniform(2, 12))
            img = cv2.GaussianBlur(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), (0, 0), sigma)
            img = cv2.normalize(img, None, 0, 255, cv2.NORM_MINMAX)
        elif kind == 2:
            f, a = float(rng.uniform(0.02, 0.2)), float(rng.uniform(0, np.pi))
            g = 127.5 + 127.5 * np.sin(f * (xx * np.cos(a) + yy * np.sin(a)))
            img = cv2.cvtColor(g.astype(np.uint8), cv2.COLOR_GRAY2BGR)
        elif kind == 3:
            c = int(rng.integers(8, 64))
            g = (((xx // c) + (yy // c)) % 2 * 255).astype(np.uint8)
            img = cv2.cvtColor(g, cv2.COLOR_GRAY2BGR)
        elif kind == 4:
            img = background(w, h, seed=int(rng.integers(0, 1 << 30)))
        else:
            img = samples[(i // 6) % len(samples)] if samples else background(w, h, seed=i)
            if samples and (i // 6) % 2:
                img = cv2.flip(img, -1)
        out.append(np.ascontiguousarray(img))
        i += 1
    return out


def _matches(det, truth) -> bool:
    cx, cy = det.x + det.w / 2.0, det.y + det.h / 2.0
    x, y, w, h = truth
    side, tside = max(det.w, det.h), max(w, h)
    return x <= cx <= x + w and y <= cy <= y + h and 0.5 * tside <= side <= 2.0 * tside


def score_scene(dets, truths) -> Dict[str, int]:
    used = set()
    found = 0
    for t in truths:
        for j, d in enumerate(dets):
            if j not in used and _matches(d, t):
                used.add(j)
                found += 1
                break
    return {"faces": len(truths), "found": found, "false": len(dets) - len(used)}


def build(name: str):
    from ..core.face.pipeline import build_pipeline

    class _Stub:
        input_size = 48
    return build_pipeline(_Stub(), {"detector": name}).detector


def main(argv: Sequence[str] = None) -> int:
    ap = argparse.ArgumentParser(prog="emotion-bench detect", description=__doc__.split("\n\n")[0])
    ap.add_argument("--photos", default="", help="folder of photos with one face each (searched recursively)")
    ap.add_argument("--detectors", default=DEFAULT_DETECTORS, help=f"comma list (default {DEFAULT_DETECTORS})")
    ap.add_argument("--rounds", type=int, default=5, help="timing passes over the scene frames (default 5)")
    ap.add_argument("--face-free", type=int, default=60, help="generated face-free images (default 60)")
    ap.add_argument("--json", default="", help="also write the results to this file")
    args = ap.parse_args(argv)
    if args.photos and not os.path.isdir(args.photos):
        print(f"emotion-bench detect: photo folder not found: {args.photos}", file=sys.stderr)
        return 2
    if args.rounds < 1 or args.face_free < 0:
        print("emotion-bench detect: --rounds must be >= 1 and --face-free >= 0", file=sys.stderr)
        return 2
    cv2.setNumThreads(1)
    from .bench import compose_scene, scene_frames

    dets = {}
    for name in [n.strip() for n in args.detectors.split(",") if n.strip()]:
        try:
            dets[name] = build(name)
        except Exception as exc:  # noqa: BLE001 - report and go on with the others
            print(f"{name}: cannot be built ({exc}); skipped", flush=True)
    if not dets:
        print("emotion-bench detect: no detector could be built", file=sys.stderr)
        return 2
    results: Dict[str, Dict] = {n: {} for n in dets}

    def view(d, img):
        """The BGR image as ``d`` takes it (grey unless the detector wants colour), as the face node converts."""
        return img if d.wants_color else cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)

    def run(d, img):
        return d.detect(view(d, img))

    if args.photos:
        files = sorted(p for p in glob.glob(os.path.join(args.photos, "**", "*"), recursive=True)
                       if os.path.splitext(p)[1].lower() in (".jpg", ".jpeg", ".png", ".bmp"))
        images = [im for im in (cv2.imread(p, cv2.IMREAD_COLOR) for p in files) if im is not None]
        for name, d in dets.items():
            counts = [len(run(d, im)) for im in images]
            r = {"n": len(images), "found_pct": round(100.0 * np.mean([c > 0 for c in counts]), 1),
                 "false_per_image": round(float(np.mean([max(0, c - 1) for c in counts])), 4)}
            results[name]["photos"] = r
            print(f"{name:16s} photos: found {r['found_pct']}% of {r['n']}, false faces/photo "
                  f"{r['false_per_image']}", flush=True)

    scenes = [("scene_1", compose_scene(1)), ("scene_5", compose_scene(5))]
    sizes = (24, 32, 40, 50, 64, 100, 170, 250)
    for px in sizes:
        scenes.append((f"face_{px}px", compose_scene(1, face_px=px)))
    for name, d in dets.items():
        sc = {}
        for key, (img, truths) in scenes:
            sc[key] = score_scene(run(d, img), truths)
        results[name]["scenes"] = sc
        print(f"{name:16s} scenes: " + ", ".join(f"{k} {v['found']}/{v['faces']} (+{v['false']})"
                                                  for k, v in sc.items()), flush=True)

    if args.face_free:
        free = face_free_images(args.face_free)
        for name, d in dets.items():
            boxes = [len(run(d, im)) for im in free]
            r = {"n": len(free), "false_per_image": round(float(np.mean(boxes)), 4),
                 "images_with_false": int(np.sum(np.asarray(boxes) > 0))}
            results[name]["face_free"] = r
            print(f"{name:16s} face-free: {r['false_per_image']} boxes/image "
                  f"({r['images_with_false']} of {r['n']} images)", flush=True)

    frames = {1: scene_frames(1, 15), 5: scene_frames(5, 15)}
    truths = {1: compose_scene(1)[1], 5: compose_scene(5)[1]}
    keys = ("frame_1", "frame_5", "regions_1", "regions_5")
    wall = {n: {k: [] for k in keys} for n in dets}
    cpu = {n: {k: [] for k in keys} for n in dets}

    def tracked(d, k):
        """The boxes the face node would track: the detector's own on the scene (the scene's where it finds none)."""
        return [x.box for x in run(d, frames[k][0])] or list(truths[k])
    boxes = {name: {k: tracked(d, k) for k in (1, 5)} for name, d in dets.items()}
    for _ in range(args.rounds):
        for name, d in dets.items():
            for k in (1, 5):
                for f in frames[k]:
                    img = view(d, f)
                    for key, call in ((f"frame_{k}", lambda: d.detect(img)),
                                      (f"regions_{k}", lambda: d.detect_regions(img, boxes[name][k]))):
                        c0, t0 = time.thread_time(), time.perf_counter()
                        call()
                        wall[name][key].append(1e3 * (time.perf_counter() - t0))
                        cpu[name][key].append(1e3 * (time.thread_time() - c0))
    for name in dets:
        r = {k: {"median_ms": round(float(np.median(wall[name][k])), 2),
                 "p95_ms": round(float(np.percentile(wall[name][k], 95)), 2),
                 "cpu_median_ms": round(float(np.median(cpu[name][k])), 2)} for k in keys}
        results[name]["time_640x480_1_thread"] = r
        print(f"{name:16s} ms/frame (1 thread; wall median, p95; CPU median): " + ", ".join(
            f"{k} {v['median_ms']}, {v['p95_ms']}; {v['cpu_median_ms']}" for k, v in r.items()), flush=True)

    out = {"detectors": results, "opencv": cv2.__version__, "cpu_count": os.cpu_count(),
           "load_avg_1min": round(os.getloadavg()[0], 2)}
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

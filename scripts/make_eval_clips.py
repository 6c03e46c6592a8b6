#!/usr/bin/env python3
"""Build labelled audio-visual evaluation clips (rosbag2 + labels CSV) from material no model trained on.

    .venv/bin/python scripts/make_eval_clips.py --out /work/eval_clips [--data ../shared/data] [--force]

Each clip is a sequence of spans of 2-6 s. In every span one person's face image (moving on a background, its size
changing, at the video's real frame rate) and/or that person's voice (utterances of one emotion) are shown:

- ``agree``:    face and voice of the same emotion (label: that emotion);
- ``disagree``: face of one emotion, voice of another (label: the face's, as a person watching would);
- ``no_face``:  voice only, nobody in view (label: the voice's);
- ``silent``:   face only, no speech (label: the face's).

Sources, chosen so that no face or voice of the same person was in any model's training data:

- **test** clips (``test_01``..): faces from FER2013 PublicTest (``fer2013/val``) and ``face_photos``; voices
  from RAVDESS actors 17-20 and TurEV-DB speakers 1358 and 7895 (held out of voice training);
- **dev** clips (``dev_01``..): faces from the face model's dev part of ``fer2013/train`` (stratified 10 %, seed 7:
  never trained on by the face model) and voices from RAVDESS dev actors 15-16. Fusion settings are chosen on
  these only; the test clips are only measured.

Per clip, in ``OUT/<name>/``: ``video.avi`` (MJPG, 640x480), ``audio.wav`` (16 kHz mono), ``labels.csv``
(``start,end,label`` in seconds from the bag start, as ``emotion-bag evaluate --labels`` reads it),
``meta.json`` (span kinds and source files) and ``bag/`` (``emotion-bag from-media``: image_raw, audio,
audio_info). Deterministic for a given ``--seed``. Never commit the output: it is cut from the shared data.
The last printed line is one JSON object.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shutil
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "emotion_ros"))

LABELS = ("neutral", "happy", "sad", "angry", "surprised", "disgusted", "scared")
FER_DIRS = {"neutral": "neutral", "happy": "happy", "sad": "sad", "angry": "angry", "surprised": "surprise",
            "disgusted": "disgust", "scared": "fear"}
RAVDESS_CODES = {"01": "neutral", "02": "neutral", "03": "happy", "04": "sad", "05": "angry", "06": "scared",
                 "07": "disgusted", "08": "surprised"}
TUREV_CODES = {"kz": "angry", "sk": "neutral", "mt": "happy", "hl": "sad"}
SR = 16000
W, H = 640, 480
FPS = 25.0
KIND_P = {"agree": 0.45, "disagree": 0.2, "no_face": 0.15, "silent": 0.2}

# name -> (split, voice sources [(corpus, speaker)], seconds)
CLIPS = {
    "test_01": ("test", [("ravdess", 17), ("ravdess", 18)], 64.0),
    "test_02": ("test", [("ravdess", 19), ("ravdess", 20)], 64.0),
    "test_03": ("test", [("ravdess", 17), ("ravdess", 20)], 64.0),
    "test_04": ("test", [("turev", "1358")], 64.0),
    "test_05": ("test", [("turev", "7895")], 64.0),
    "test_06": ("test", [("turev", "1358"), ("ravdess", 19)], 64.0),
    "dev_01": ("dev", [("ravdess", 15)], 64.0),
    "dev_02": ("dev", [("ravdess", 16)], 64.0),
    # more dev clips (2026-12-01): two minutes were too few to choose fusion settings on (fusion.md); the same dev
    # faces and voices, other spans and orders
    "dev_03": ("dev", [("ravdess", 15), ("ravdess", 16)], 64.0),
    "dev_04": ("dev", [("ravdess", 16), ("ravdess", 15)], 64.0),
    "dev_05": ("dev", [("ravdess", 15)], 64.0),
    "dev_06": ("dev", [("ravdess", 16)], 64.0),
}


class ClipError(Exception):
    pass


def fail(msg: str) -> None:
    print(f"make_eval_clips: {msg}", file=sys.stderr)
    sys.exit(2)


# -- sources -------------------------------------------------------------------------------------------------------

def list_voices(data: str, corpus: str, speaker) -> dict:
    """{label: [files]} of one speaker."""
    out: dict = {}
    if corpus == "ravdess":
        root = os.path.join(data, "ravdess_speech", f"Actor_{int(speaker):02d}")
        if not os.path.isdir(root):
            raise ClipError(f"RAVDESS actor folder {root!r} not found")
        for f in sorted(os.listdir(root)):
            m = re.match(r"^\d\d-\d\d-(\d\d)-\d\d-\d\d-\d\d-\d\d\.", f)
            if m and m.group(1) in RAVDESS_CODES:
                out.setdefault(RAVDESS_CODES[m.group(1)], []).append(os.path.join(root, f))
    else:
        root = os.path.join(data, "turev_db")
        if not os.path.isdir(root):
            raise ClipError(f"TurEV-DB folder {root!r} not found")
        for d in sorted(os.listdir(root)):
            sub = os.path.join(root, d)
            if not os.path.isdir(sub):
                continue
            for f in sorted(os.listdir(sub)):
                m = re.match(r"^(\d+)_([a-z]+)_", f)
                if m and m.group(1) == str(speaker) and m.group(2) in TUREV_CODES:
                    out.setdefault(TUREV_CODES[m.group(2)], []).append(os.path.join(sub, f))
    if not out:
        raise ClipError(f"no utterances of {corpus} speaker {speaker} under {root!r}")
    return out


def list_faces(data: str, split: str) -> dict:
    """{label: [image files]}: test = FER2013 PublicTest (+ face_photos under 'photo:' keys); dev = the face
    model's dev part of FER2013 Training (the stratified hold-out of training/common.py, fraction 0.1, seed 7, over
    the files in the order face_data.load_face_folder lists them)."""
    out: dict = {}
    if split == "test":
        root = os.path.join(data, "fer2013", "val")
        for lab, d in FER_DIRS.items():
            sub = os.path.join(root, d)
            if not os.path.isdir(sub):
                raise ClipError(f"face folder {sub!r} not found")
            out[lab] = sorted(os.path.join(sub, f) for f in os.listdir(sub) if not f.startswith("."))
        photos = os.path.join(data, "face_photos")
        if os.path.isdir(photos):
            for d in sorted(os.listdir(photos)):
                lab = {"neutral": "neutral", "happy": "happy", "surprised": "surprised"}.get(d)
                if lab:
                    out["photo:" + lab] = sorted(os.path.join(photos, d, f) for f in os.listdir(os.path.join(photos, d))
                                                 if f.lower().endswith((".jpg", ".jpeg", ".png")))
        return out
    from emotion_ros.core.labels import INDEX, normalise
    from emotion_ros.training.common import stratified_holdout
    from emotion_ros.training.face_data import list_class_folders

    known, _ = list_class_folders(os.path.join(data, "fer2013", "train"))
    files = sorted((p, INDEX[normalise(lab)]) for lab, ps in known.items() for p in ps
                   if os.path.splitext(p)[1].lower() in (".jpg", ".jpeg", ".png", ".bmp", ".pgm"))
    labels = np.array([y for _, y in files])
    dev = stratified_holdout(labels, 0.1, 7)
    for (p, y), d in zip(files, dev):
        if d:
            out.setdefault(LABELS[y], []).append(p)
    return out


def load_utterance(path: str) -> np.ndarray:
    import soundfile as sf
    x, sr = sf.read(path, dtype="float32", always_2d=True)
    x = x.mean(1)
    if sr != SR:
        import librosa
        x = librosa.resample(x, orig_sr=sr, target_sr=SR)
    # trim leading / trailing silence (35 dB under the loudest 20 ms frame), keep 0.1 s either side
    f = 320
    n = len(x) // f
    if n > 2:
        e = 10 * np.log10(np.mean(x[: n * f].reshape(n, f) ** 2, 1) + 1e-12)
        on = np.flatnonzero(e > e.max() - 35)
        a, b = max(0, on[0] * f - 1600), min(len(x), (on[-1] + 1) * f + 1600)
        x = x[a:b]
    return x.astype(np.float32)


# -- rendering -----------------------------------------------------------------------------------------------------

def background(rng: np.random.Generator) -> np.ndarray:
    import cv2
    c0, c1 = rng.uniform(40, 200, 3), rng.uniform(40, 200, 3)
    g = np.linspace(0, 1, W)[None, :, None]
    bg = c0 * (1 - g) + c1 * g
    bg = np.broadcast_to(bg, (H, W, 3)).copy()
    tex = cv2.GaussianBlur(rng.normal(0, 25, (H, W, 1)).astype(np.float32), (0, 0), 9)[..., None]
    return np.clip(bg + tex, 0, 255).astype(np.float32)


def load_face_image(path: str) -> np.ndarray:
    import cv2
    img = cv2.imread(path, cv2.IMREAD_COLOR)
    if img is None:
        raise ClipError(f"cannot read image {path!r}")
    return img


def render_frames(spans, bg: np.ndarray, rng: np.random.Generator, duration: float):
    """Yield BGR frames: the span's face image moving on the background (continuous motion over the clip)."""
    import cv2
    ax, ay = rng.uniform(50, 110), rng.uniform(20, 50)
    fx, fy, fs = rng.uniform(0.05, 0.15), rng.uniform(0.08, 0.2), rng.uniform(0.07, 0.17)
    px, py, ps = rng.uniform(0, 2 * np.pi, 3)
    cache: dict = {}
    n = int(round(duration * FPS))
    k = 0
    for i in range(n):
        t = i / FPS
        while k + 1 < len(spans) and t >= spans[k]["end"]:
            k += 1
        sp = spans[k]
        frame = bg.copy()
        if sp["face"] is not None and sp["start"] <= t < sp["end"]:
            if sp["face"] not in cache:
                cache[sp["face"]] = load_face_image(sp["face"])
            img = cache[sp["face"]]
            size = sp["face_px"] * (1.0 + 0.12 * np.sin(2 * np.pi * fs * t + ps))
            s = int(round(size))
            patch = cv2.resize(img, (s, s), interpolation=cv2.INTER_CUBIC if s > img.shape[0] else cv2.INTER_AREA)
            cx = W / 2 + ax * np.sin(2 * np.pi * fx * t + px)
            cy = H / 2 + ay * np.sin(2 * np.pi * fy * t + py)
            x0, y0 = int(round(cx - s / 2)), int(round(cy - s / 2))
            xa, ya, xb, yb = max(0, x0), max(0, y0), min(W, x0 + s), min(H, y0 + s)
            frame[ya:yb, xa:xb] = patch[ya - y0:yb - y0, xa - x0:xb - x0] * sp["gain"]
        frame += rng.normal(0, 2.0, frame.shape).astype(np.float32)  # sensor noise
        yield np.clip(frame, 0, 255).astype(np.uint8)


# -- one clip ------------------------------------------------------------------------------------------------------

def plan_clip(name: str, split: str, voices: list, duration: float, faces: dict, data: str,
              rng: np.random.Generator) -> list:
    pools = [(c, s, list_voices(data, c, s)) for c, s in voices]
    spans, t, prev = [], 0.0, None
    while t < duration - 1.0:
        d = float(min(rng.uniform(2.0, 6.0), duration - t))
        if d < 2.0 and spans:  # fold a short tail into the previous span
            spans[-1]["end"] = duration
            break
        kind = str(rng.choice(list(KIND_P), p=list(KIND_P.values())))
        corpus, speaker, pool = pools[int(rng.integers(len(pools)))]
        vlabs = sorted(pool)
        if kind == "disagree":
            vlab = str(rng.choice(vlabs))
            flab = str(rng.choice([x for x in LABELS if x != vlab]))
        elif kind in ("agree", "no_face"):
            choices = [x for x in vlabs if x != prev] or vlabs
            vlab = flab = str(rng.choice(choices))
        else:  # silent
            vlab = None
            flab = str(rng.choice([x for x in LABELS if x != prev]))
        label = vlab if kind == "no_face" else flab
        sp = {"start": round(t, 3), "end": round(t + d, 3), "kind": kind, "label": label,
              "face_label": None if kind == "no_face" else flab, "voice_label": vlab,
              "voice_source": None if vlab is None else f"{corpus}:{speaker}", "face": None, "voice": []}
        if kind != "no_face":
            photo = faces.get("photo:" + flab)
            use_photo = photo and rng.random() < 0.35
            sp["face"] = str(rng.choice(photo if use_photo else faces[flab]))
            sp["face_px"] = float(rng.uniform(230, 300) if use_photo else rng.uniform(140, 220))
            sp["gain"] = float(rng.uniform(0.75, 1.15))
        if vlab is not None:
            sp["voice"] = [str(p) for p in rng.permutation(pool[vlab])[:6]]
        spans.append(sp)
        prev = label
        t += d
    spans[-1]["end"] = round(duration, 3)
    return spans


def render_audio(spans, duration: float, rng: np.random.Generator) -> np.ndarray:
    audio = rng.normal(0, 10 ** (-62 / 20), int(round(duration * SR))).astype(np.float32)  # room noise floor
    for sp in spans:
        if not sp["voice"]:
            continue
        pos = int((sp["start"] + rng.uniform(0.1, 0.4)) * SR)
        end = int(sp["end"] * SR)
        used = []
        for path in sp["voice"]:
            if pos >= end - int(0.5 * SR):
                break
            x = load_utterance(path)
            x = x[: end - pos]
            if len(x) < 0.3 * SR:
                break
            fade = min(len(x) // 4, int(0.03 * SR))
            if fade:
                x[-fade:] *= np.linspace(1, 0, fade, dtype=np.float32)
            audio[pos:pos + len(x)] += x
            used.append(os.path.basename(path))
            pos += len(x) + int(rng.uniform(0.15, 0.6) * SR)
        sp["voice"] = used
    return np.clip(audio, -1, 1)


def make_clip(out_dir: str, name: str, data: str, faces_by_split: dict, seed: int, force: bool) -> dict:
    import cv2
    import soundfile as sf
    from emotion_ros.tools.bag_media import from_media

    split, voices, duration = CLIPS[name]
    d = os.path.join(out_dir, name)
    if os.path.isdir(os.path.join(d, "bag")) and os.path.isfile(os.path.join(d, "labels.csv")) and not force:
        return {"clip": name, "skipped": "exists"}
    if os.path.isdir(d):
        shutil.rmtree(d)
    os.makedirs(d)
    rng = np.random.default_rng([seed, sum(map(ord, name))])
    spans = plan_clip(name, split, voices, duration, faces_by_split[split], data, rng)
    audio = render_audio(spans, duration, rng)
    sf.write(os.path.join(d, "audio.wav"), audio, SR, subtype="PCM_16")
    bg = background(rng)
    vw = cv2.VideoWriter(os.path.join(d, "video.avi"), cv2.VideoWriter_fourcc(*"MJPG"), FPS, (W, H))
    if not vw.isOpened():
        raise ClipError("OpenCV cannot write MJPG video")
    for frame in render_frames(spans, bg, rng, duration):
        vw.write(frame)
    vw.release()
    with open(os.path.join(d, "labels.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["start", "end", "label"])
        for sp in spans:
            w.writerow([f"{sp['start']:.3f}", f"{sp['end']:.3f}", sp["label"]])
    meta = {"clip": name, "split": split, "duration_s": duration, "fps": FPS, "size": [W, H], "seed": seed,
            "voices": [f"{c}:{s}" for c, s in voices], "spans": spans}
    with open(os.path.join(d, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1)
    summary = from_media(os.path.join(d, "bag"), video=os.path.join(d, "video.avi"),
                         audio=os.path.join(d, "audio.wav"), start_time=1.8e9, force=True)
    kinds = {k: sum(1 for s in spans if s["kind"] == k) for k in KIND_P}
    changes = sum(1 for a, b in zip(spans, spans[1:]) if a["label"] != b["label"])
    return {"clip": name, "split": split, "spans": len(spans), "kinds": kinds, "duration_s": duration,
            "label_changes_per_min": round(changes / (duration / 60.0), 2), "frames": summary["messages"]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="/work/eval_clips", help="output folder (outside the repository)")
    p.add_argument("--data", default=os.path.join(os.path.dirname(os.path.dirname(HERE)), "shared", "data"))
    p.add_argument("--clips", nargs="*", default=None, help=f"names to build (default all: {' '.join(CLIPS)})")
    p.add_argument("--seed", type=int, default=2026)
    p.add_argument("--force", action="store_true", help="rebuild clips that exist")
    args = p.parse_args(argv)
    names = args.clips or list(CLIPS)
    bad = [n for n in names if n not in CLIPS]
    if bad:
        fail(f"unknown clip name(s) {bad}; known: {' '.join(CLIPS)}")
    if not os.path.isdir(args.data):
        fail(f"data folder {args.data!r} not found (pass --data)")
    repo = os.path.dirname(HERE)
    if os.path.abspath(args.out).startswith(repo + os.sep):
        fail(f"--out {args.out!r} lies inside the repository; clips are cut from the shared data and must not be "
             "committed: write them elsewhere")
    os.makedirs(args.out, exist_ok=True)
    try:
        splits = {CLIPS[n][0] for n in names}
        faces = {s: list_faces(args.data, s) for s in splits}
        results = []
        for n in names:
            r = make_clip(args.out, n, args.data, faces, args.seed, args.force)
            print(json.dumps(r), flush=True)
            results.append(r)
    except (ClipError, OSError) as exc:
        fail(str(exc))
    except Exception as exc:  # noqa: BLE001 - BagError from from_media and friends: one line
        fail(f"{type(exc).__name__}: {exc}")
    print(json.dumps({"out": args.out, "clips": [r["clip"] for r in results]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

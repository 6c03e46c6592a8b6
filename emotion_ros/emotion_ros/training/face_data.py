"""Face data loaders: one folder per class (any image size), and the FER2013 CSV.

Images that are not already the model's input size go through the same
detection and alignment as the face node (``core.face.align``).
"""
from __future__ import annotations

import csv
import hashlib
import os
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import cv2
import numpy as np

from ..core.labels import FER2013_CSV_CLASSES, INDEX, normalise

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".pgm", ".ppm", ".tif", ".tiff", ".webp")


@dataclass
class FaceSet:
    images: np.ndarray              # (N, S, S) uint8
    labels: np.ndarray              # (N,) int64, vocabulary indices
    paths: List[str] = field(default_factory=list)
    skipped_classes: Dict[str, int] = field(default_factory=dict)
    no_face: int = 0                # images where no face was found (whole image used)
    unreadable: List[str] = field(default_factory=list)


def list_class_folders(root: str) -> Tuple[Dict[str, List[str]], Dict[str, int]]:
    """Return {label: [files]} for folders whose names map onto the vocabulary,
    and {folder: file count} for those that don't."""
    if not os.path.isdir(root):
        raise FileNotFoundError(f"data folder not found: {root}")
    known: Dict[str, List[str]] = {}
    skipped: Dict[str, int] = {}
    for name in sorted(os.listdir(root)):
        sub = os.path.join(root, name)
        if not os.path.isdir(sub):
            continue
        files = sorted(
            os.path.join(dp, f) for dp, _, fs in os.walk(sub, followlinks=True) for f in fs if not f.startswith("."))
        label = normalise(name)
        if label is None:
            skipped[name] = len(files)
        else:
            known.setdefault(label, []).extend(files)
    return known, skipped


def load_face_folder(root: str, size: int = 48, aligner=None, cache_dir: Optional[str] = None,
                     transform: Optional[Callable[[np.ndarray, int], np.ndarray]] = None) -> FaceSet:
    """Load ``root/<class>/*`` as aligned grey crops of ``size``.

    ``aligner``: a :class:`core.face.align.FaceAligner` (the face node's detection and
    alignment; the whole image is used where it finds no face).  Without one, images
    are only resized.  Results are cached (keyed on the file list) unless there is a
    ``transform``: ``transform(grey, i)`` changes the grey image of the ``i``-th file (in
    sorted order) before detection (``emotion-eval --perturb``).
    """
    known, skipped = list_class_folders(root)
    files = [(p, INDEX[lab]) for lab, ps in known.items() for p in ps
             if os.path.splitext(p)[1].lower() in IMAGE_EXTS]
    files.sort()
    cache = None
    if cache_dir and transform is None:
        h = hashlib.sha1()
        key = getattr(aligner, "cache_key", type(aligner).__name__) if aligner is not None else None
        h.update(f"{size}|{key}".encode())
        for p, y in files:
            st = os.stat(p)
            h.update(f"{p}|{y}|{st.st_size}|{int(st.st_mtime)}".encode())
        cache = os.path.join(cache_dir, f"faces-{h.hexdigest()[:16]}.npz")
        if os.path.isfile(cache):
            z = np.load(cache, allow_pickle=False)
            return FaceSet(z["images"], z["labels"], [p for p, _ in files], skipped, int(z["no_face"]),
                           list(z["unreadable"]))
    images = np.zeros((len(files), size, size), np.uint8)
    labels = np.zeros(len(files), np.int64)
    keep = np.ones(len(files), bool)
    no_face = 0
    unreadable: List[str] = []
    for i, (p, y) in enumerate(files):
        img = cv2.imread(p, cv2.IMREAD_GRAYSCALE)
        if img is None:
            unreadable.append(p)
            keep[i] = False
            continue
        if transform is not None:
            img = transform(img, i)
        if aligner is not None:
            crop, found = aligner.crop_largest(img, size)
            no_face += 0 if found else 1
        elif img.shape == (size, size):
            crop = img
        else:
            crop = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
        images[i] = crop
        labels[i] = y
    out = FaceSet(images[keep], labels[keep], [p for (p, _), k in zip(files, keep) if k], skipped, no_face,
                  unreadable)
    if cache:
        os.makedirs(cache_dir, exist_ok=True)
        np.savez(cache, images=out.images, labels=out.labels, no_face=no_face,
                 unreadable=np.array(unreadable, dtype=str))
    return out


def load_fer_csv(path: str, usage: Optional[str] = None) -> FaceSet:
    """FER2013 CSV (``emotion,pixels,Usage``); ``usage`` filters e.g. ``Training``."""
    images, labels = [], []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            if usage and row.get("Usage", "") != usage:
                continue
            px = np.asarray(row["pixels"].split(), dtype=np.uint8)
            side = int(round(np.sqrt(px.size)))
            if side * side != px.size:
                continue
            images.append(px.reshape(side, side))
            labels.append(INDEX[FER2013_CSV_CLASSES[int(row["emotion"])]])
    return FaceSet(np.stack(images) if images else np.zeros((0, 48, 48), np.uint8),
                   np.asarray(labels, np.int64))


def load_face_arrays(path: str) -> FaceSet:
    """Packed arrays (``.npz``): ``images`` (N, S, S) uint8 and ``labels`` as label names (any alias) or
    vocabulary indices; e.g. to move a decoded dataset to a training machine in one file."""
    z = np.load(path, allow_pickle=False)
    images, raw = z["images"], z["labels"]
    if raw.dtype.kind in "US":
        names = [normalise(str(v)) for v in raw]
        keep = np.array([n is not None for n in names], bool)
        skipped: Dict[str, int] = {}
        for v, n in zip(raw, names):
            if n is None:
                skipped[str(v)] = skipped.get(str(v), 0) + 1
        labels = np.array([INDEX[n] for n in names if n is not None], np.int64)
        return FaceSet(np.ascontiguousarray(images[keep]), labels, skipped_classes=skipped)
    return FaceSet(np.ascontiguousarray(images), raw.astype(np.int64))


def load_faces(src: str, size: int = 48, aligner=None, cache_dir: Optional[str] = None,
               usage: Optional[str] = None) -> FaceSet:
    if os.path.isfile(src) and src.lower().endswith(".npz"):
        return load_face_arrays(src)
    if os.path.isfile(src) and src.lower().endswith(".csv"):
        return load_fer_csv(src, usage=usage)
    return load_face_folder(src, size=size, aligner=aligner, cache_dir=cache_dir)

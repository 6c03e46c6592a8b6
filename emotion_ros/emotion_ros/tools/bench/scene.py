"""Test scenes: real faces (matplotlib's Grace Hopper sample photo) tiled onto a background, 640x480 BGR."""
from __future__ import annotations

import math
from typing import List, Optional, Tuple

import numpy as np

WIDTH, HEIGHT = 640, 480

_HOPPER_FACE = (155, 105, 222, 222)  # Haar box of the face in grace_hopper.jpg (600x512)


def face_tile() -> Tuple[np.ndarray, Tuple[float, float, float, float]]:
    """Head-and-shoulders crop of matplotlib's grace_hopper.jpg (BGR) and the face box inside it (x, y, w, h)."""
    import cv2
    import matplotlib.cbook as cbook
    img = cv2.imread(str(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)))
    if img is None:
        raise RuntimeError("cannot read matplotlib's sample image grace_hopper.jpg")
    x, y, w, h = _HOPPER_FACE
    H, W = img.shape[:2]
    x0, y0 = max(0, int(x - 0.45 * w)), max(0, int(y - 0.36 * h))
    x1, y1 = min(W, int(x + w + 0.45 * w)), min(H, int(y + h + 0.54 * h))
    return img[y0:y1, x0:x1].copy(), (x - x0, y - y0, w, h)


def background(width: int = WIDTH, height: int = HEIGHT, seed: int = 0) -> np.ndarray:
    """A colour gradient with a few flat rectangles (some texture, no faces)."""
    import cv2
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    bg = np.dstack([90 + 60 * xx / width, 110 + 40 * yy / height, 130 - 50 * xx / width]).astype(np.uint8)
    for _ in range(12):
        c = tuple(int(v) for v in rng.integers(40, 220, 3))
        px, py = int(rng.integers(0, width)), int(rng.integers(0, height))
        cv2.rectangle(bg, (px, py), (px + int(rng.integers(20, 120)), py + int(rng.integers(20, 120))), c, -1)
    return bg


def compose_scene(n_faces: int, shift: Tuple[int, int] = (0, 0), face_px: Optional[int] = None,
                  width: int = WIDTH, height: int = HEIGHT, seed: int = 0
                  ) -> Tuple[np.ndarray, List[Tuple[int, int, int, int]]]:
    """BGR frame with ``n_faces`` (1..6) copies of a real face and their face boxes (x, y, w, h).

    One face: ~170 px, centred (a person about a metre from the camera); 2-6 faces: ~100 px each in two rows.
    ``shift`` moves all faces by (dx, dy) pixels (motion between frames). Alternate copies are mirrored."""
    import cv2
    if not 0 <= n_faces <= 6:
        raise ValueError("n_faces must be in 0..6")
    frame = background(width, height, seed)
    if n_faces == 0:
        return frame, []
    tile, (fx, fy, fw, fh) = face_tile()
    face_px = face_px or (int(0.36 * height) if n_faces == 1 else int(0.21 * height))
    s = face_px / float(fw)
    tile = cv2.resize(tile, None, fx=s, fy=s, interpolation=cv2.INTER_AREA)
    th, tw = tile.shape[:2]
    if n_faces == 1:
        pos = [((width - tw) // 2, (height - th) // 2)]
    else:
        top = (n_faces + 1) // 2
        bottom = n_faces - top
        pos = []
        for row, count, y in ((0, top, 10), (1, bottom, height - th - 10)):
            if count == 0:
                continue
            gap = (width - count * tw) / (count + 1)
            pos += [(int(gap + i * (tw + gap)), int(y)) for i in range(count)]
    boxes = []
    dx, dy = shift
    for i, (x, y) in enumerate(pos):
        x = int(np.clip(x + dx, 0, width - tw))
        y = int(np.clip(y + dy, 0, height - th))
        frame[y:y + th, x:x + tw] = tile[:, ::-1] if i % 2 else tile
        bx = x + (tw - (fx + fw) * s if i % 2 else fx * s)
        boxes.append((int(round(bx)), int(round(y + fy * s)), int(round(fw * s)), int(round(fh * s))))
    return frame, boxes


def scene_frames(n_faces: int, count: int = 30) -> List[np.ndarray]:
    """``count`` frames of one scene with the faces moving on a small circle (radius 4 px)."""
    out = []
    for k in range(count):
        a = 2 * math.pi * k / count
        out.append(compose_scene(n_faces, shift=(int(round(4 * math.cos(a))), int(round(4 * math.sin(a)))))[0])
    return out

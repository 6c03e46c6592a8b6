"""Face box -> square grey crop of the face model's input size.

The one place where crops are cut: the face node (through :class:`~.pipeline.FacePipeline`),
``emotion-eval`` and the training data loaders all use :class:`FaceAligner`, so the model
sees the same geometry everywhere.

Geometry: a square centred on the box, of side ``max(w, h) * (1 + 2 * margin)``;
parts outside the image are filled by replicating the border; resized with
``INTER_AREA`` (``INTER_LINEAR`` when enlarging).  The default margin matches
FER2013's crops: on FER2013 images (upscaled and padded) the Haar box covers
about 0.98 of the crop's side (median of 330 validation images), i.e. FER2013's
crops are the Haar box itself with next to no margin.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import cv2
import numpy as np

from ..errors import InputError
from .detect import HaarDetector, to_gray

# Images with a shorter side below this are taken to be face crops already (as FER2013's 48x48).
MIN_DETECT_SIDE = 96


class FaceAligner:
    def __init__(self, size: int = 48, margin: float = 0.0, detector=None):
        if size < 8:
            raise ValueError(f"crop size must be >= 8, got {size}")
        if not (-0.25 <= margin <= 1.0):
            raise ValueError(f"margin must be in [-0.25, 1], got {margin}")
        self.size = int(size)
        self.margin = float(margin)
        self._detector = detector

    @property
    def detector(self):
        """The detector of :meth:`crop_largest` (a Haar cascade unless one was given)."""
        if self._detector is None:
            self._detector = HaarDetector(min_size_frac=0.1, scale_factor=1.1, min_neighbors=5, max_width=320)
        return self._detector

    def square(self, box: Sequence[float]) -> Tuple[int, int, int]:
        """The square cut for ``box``: integer (x0, y0, side)."""
        x, y, w, h = (float(v) for v in box)
        if not all(math.isfinite(v) for v in (x, y, w, h)) or w <= 0 or h <= 0:
            raise InputError(f"bad face box {tuple(box)}")
        side = max(w, h) * (1.0 + 2.0 * self.margin)
        side_i = max(1, int(round(side)))
        cx, cy = x + w / 2.0, y + h / 2.0
        return int(round(cx - side_i / 2.0)), int(round(cy - side_i / 2.0)), side_i

    def crop(self, gray: np.ndarray, box: Sequence[float], size: Optional[int] = None) -> np.ndarray:
        """uint8 (size, size) crop of the face in ``box`` (x, y, w, h) of ``gray``
        (uint8 grey; (H, W, 1), BGR and BGRA are converted)."""
        gray = to_gray(gray)
        size = int(size or self.size)
        H, W = gray.shape
        x0, y0, side = self.square(box)
        x1, y1 = x0 + side, y0 + side
        ix0, iy0, ix1, iy1 = max(x0, 0), max(y0, 0), min(x1, W), min(y1, H)
        if ix1 <= ix0 or iy1 <= iy0:
            raise InputError(f"face box {tuple(box)} lies outside the {W}x{H} image")
        patch = gray[iy0:iy1, ix0:ix1]
        if (ix0, iy0, ix1, iy1) != (x0, y0, x1, y1):
            patch = cv2.copyMakeBorder(patch, iy0 - y0, y1 - iy1, ix0 - x0, x1 - ix1, cv2.BORDER_REPLICATE)
        if side == size:
            return np.ascontiguousarray(patch)
        interp = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
        return cv2.resize(patch, (size, size), interpolation=interp)

    def crop_largest(self, gray: np.ndarray, size: Optional[int] = None) -> Tuple[np.ndarray, bool]:
        """Crop of the largest face found in an image of any size -> (crop, found).

        Images smaller than :data:`MIN_DETECT_SIDE` on their shorter side are taken to be face
        crops already (FER2013-style): they, and images where no face is found, come back
        whole, resized to ``size`` x ``size``, with ``found=False``.
        """
        gray = to_gray(gray)
        size = int(size or self.size)
        if min(gray.shape) >= MIN_DETECT_SIDE:
            dets = self.detector.detect(gray)
            if dets:
                best = max(dets, key=lambda d: d.area)
                return self.crop(gray, best.box, size), True
        if gray.shape == (size, size):
            return np.ascontiguousarray(gray), False
        interp = cv2.INTER_AREA if min(gray.shape) > size else cv2.INTER_LINEAR
        return cv2.resize(gray, (size, size), interpolation=interp), False

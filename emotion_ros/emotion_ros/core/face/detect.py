"""Face detectors: OpenCV's Haar cascade (default, no model file) and YuNet (ONNX, optional).

Every detector takes a ``uint8`` image (grey ``(H, W)``; YuNet also BGR ``(H, W, 3)``)
and returns :class:`Detection` boxes in the pixel coordinates of that image.

Speed: the Haar cascade runs on a copy of the frame downscaled to at most
``max_width`` pixels wide, and boxes are mapped back.  :meth:`FaceDetector.detect_regions`
searches only around known boxes (e.g. the tracker's), at a handful of scales,
which costs a fraction of a full-frame pass; :class:`~.pipeline.FacePipeline`
alternates the two when asked to.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import cv2
import numpy as np

from ..errors import InputError
from ..modelio import ModelFileError

Box = Tuple[float, float, float, float]


@dataclass
class Detection:
    """A face box (top-left corner, size) in pixels, and a confidence in [0, 1]."""

    x: float
    y: float
    w: float
    h: float
    score: float = 1.0

    @property
    def box(self) -> Box:
        return (self.x, self.y, self.w, self.h)

    @property
    def area(self) -> float:
        return max(self.w, 0.0) * max(self.h, 0.0)

    def int_box(self) -> Tuple[int, int, int, int]:
        return (int(round(self.x)), int(round(self.y)), int(round(self.w)), int(round(self.h)))


def iou(a: Box, b: Box) -> float:
    """Intersection over union of two (x, y, w, h) boxes."""
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    iw = min(ax + aw, bx + bw) - max(ax, bx)
    ih = min(ay + ah, by + bh) - max(ay, by)
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    union = aw * ah + bw * bh - inter
    return float(inter / union) if union > 0 else 0.0


def nms(dets: Sequence[Detection], threshold: float = 0.3) -> List[Detection]:
    """Greedy non-maximum suppression: keep the best-scoring (then largest) of overlapping boxes."""
    order = sorted(dets, key=lambda d: (d.score, d.area), reverse=True)
    keep: List[Detection] = []
    for d in order:
        if all(iou(d.box, k.box) < threshold for k in keep):
            keep.append(d)
    return keep


def _check_image(image: np.ndarray, what: str = "image") -> None:
    if not isinstance(image, np.ndarray):
        raise InputError(f"{what}: expected a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise InputError(f"{what}: dtype {image.dtype} not supported, expected uint8")
    if image.ndim not in (2, 3) or image.size == 0 or image.shape[0] == 0 or image.shape[1] == 0:
        raise InputError(f"{what}: empty or badly shaped array {image.shape}")
    if image.ndim == 3 and image.shape[2] not in (1, 3, 4):
        raise InputError(f"{what}: {image.shape[2]} channels not supported (1, 3 or 4)")


def to_gray(image: np.ndarray) -> np.ndarray:
    """uint8 grey (H, W) from grey, (H, W, 1), BGR or BGRA."""
    _check_image(image)
    if image.ndim == 2:
        return image
    c = image.shape[2]
    if c == 1:
        return image[:, :, 0]
    if c == 3:
        return cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    return cv2.cvtColor(image, cv2.COLOR_BGRA2GRAY)


def to_bgr(image: np.ndarray) -> np.ndarray:
    _check_image(image)
    if image.ndim == 2 or image.shape[2] == 1:
        return cv2.cvtColor(image.reshape(image.shape[:2]), cv2.COLOR_GRAY2BGR)
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    return image


def expand_box(box: Box, frac: float, width: int, height: int) -> Tuple[int, int, int, int]:
    """Box grown by ``frac`` of its size on every side, clipped to the image: integer (x0, y0, x1, y1)."""
    x, y, w, h = box
    x0 = int(math.floor(max(0.0, x - frac * w)))
    y0 = int(math.floor(max(0.0, y - frac * h)))
    x1 = int(math.ceil(min(float(width), x + w + frac * w)))
    y1 = int(math.ceil(min(float(height), y + h + frac * h)))
    return x0, y0, x1, y1


class FaceDetector:
    """Interface: ``detect(image)`` over the whole image, ``detect_regions(image, boxes)`` around known boxes."""

    #: True when the detector works on colour (pass BGR), False for grey.
    wants_color = False
    name = "face"

    def detect(self, image: np.ndarray) -> List[Detection]:
        raise NotImplementedError

    def _detect_near(self, image: np.ndarray, box: Box) -> List[Detection]:
        """Faces of about ``box``'s size in ``image`` (already cut around the box); subclasses may speed it up."""
        return self.detect(image)

    def detect_regions(self, image: np.ndarray, boxes: Sequence[Box], expand: float = 0.35) -> List[Detection]:
        """Search only in windows around ``boxes`` (each grown by ``expand`` of its size per side),
        for faces of about the same size.  Overlapping results are merged."""
        _check_image(image)
        height, width = image.shape[:2]
        found: List[Detection] = []
        for box in boxes:
            if not (box[2] > 0 and box[3] > 0 and all(math.isfinite(v) for v in box)):
                continue
            x0, y0, x1, y1 = expand_box(box, expand, width, height)
            if x1 - x0 < 8 or y1 - y0 < 8:
                continue
            roi = image[y0:y1, x0:x1]
            local = (box[0] - x0, box[1] - y0, box[2], box[3])
            for d in self._detect_near(roi, local):
                found.append(Detection(d.x + x0, d.y + y0, d.w, d.h, d.score))
        return nms(found, 0.3)


class HaarDetector(FaceDetector):
    """OpenCV ``haarcascade_frontalface_default`` on a downscaled grey frame.

    ``min_size_frac``: smallest face searched, as a fraction of the image's shorter side
    (never below what the cascade's 24-px window allows at the detection scale).
    ``max_width``: the frame is downscaled to at most this width before detection.
    Scores: the cascade's last-stage sum (``levelWeights`` of ``detectMultiScale3``)
    through a logistic; true faces score about 0.9 and more, chance patterns below 0.5.
    """

    name = "haar"
    # logistic squashing of the cascade's level weight: score = 1 / (1 + exp(-(w - centre) / width))
    SCORE_CENTRE = 1.0
    SCORE_WIDTH = 1.0

    def __init__(self, min_size_frac: float = 0.08, scale_factor: float = 1.1, min_neighbors: int = 5,
                 max_width: int = 320, equalize: bool = False, cascade_path: Optional[str] = None):
        if not (0.0 <= min_size_frac < 1.0):
            raise ValueError(f"min_size_frac must be in [0, 1), got {min_size_frac}")
        if scale_factor <= 1.0:
            raise ValueError(f"scale_factor must be > 1, got {scale_factor}")
        if max_width < 32:
            raise ValueError(f"max_width must be >= 32, got {max_width}")
        path = cascade_path or os.path.join(cv2.data.haarcascades, "haarcascade_frontalface_default.xml")
        if not os.path.isfile(path):
            raise ModelFileError(f"Haar cascade file not found: {path!r}")
        self.cascade = cv2.CascadeClassifier(path)
        if self.cascade.empty():
            raise ModelFileError(f"Haar cascade file {path!r} cannot be read")
        self.cascade_path = path
        self.min_size_frac = float(min_size_frac)
        self.scale_factor = float(scale_factor)
        self.min_neighbors = int(min_neighbors)
        self.max_width = int(max_width)
        self.equalize = bool(equalize)
        win = self.cascade.getOriginalWindowSize()
        self.window = int(max(win)) if win and max(win) > 0 else 24

    @classmethod
    def _score(cls, weight: float) -> float:
        return float(1.0 / (1.0 + math.exp(-(float(weight) - cls.SCORE_CENTRE) / cls.SCORE_WIDTH)))

    def _run(self, small: np.ndarray, min_px: int, max_px: int = 0,
             min_neighbors: Optional[int] = None) -> List[Detection]:
        if self.equalize:
            small = cv2.equalizeHist(small)
        min_px = max(int(min_px), self.window)
        if min(small.shape[:2]) < min_px:
            return []
        kw = {"minSize": (min_px, min_px)}
        if max_px > 0:
            kw["maxSize"] = (int(max_px), int(max_px))
        boxes, _levels, weights = self.cascade.detectMultiScale3(
            small, scaleFactor=self.scale_factor,
            minNeighbors=self.min_neighbors if min_neighbors is None else int(min_neighbors),
            outputRejectLevels=True, **kw)
        weights = np.ravel(weights) if len(boxes) else ()
        out = []
        for i, (x, y, w, h) in enumerate(np.reshape(boxes, (-1, 4)) if len(boxes) else ()):
            score = self._score(weights[i]) if i < len(weights) else 1.0
            out.append(Detection(float(x), float(y), float(w), float(h), score))
        return out

    @staticmethod
    def _scaled(gray: np.ndarray, scale: float) -> np.ndarray:
        if scale >= 1.0:
            return gray
        h, w = gray.shape[:2]
        return cv2.resize(gray, (max(1, int(round(w * scale))), max(1, int(round(h * scale)))),
                          interpolation=cv2.INTER_AREA)

    def detect(self, image: np.ndarray) -> List[Detection]:
        gray = to_gray(image)
        h, w = gray.shape
        scale = min(1.0, self.max_width / float(w))
        small = self._scaled(gray, scale)
        sx = small.shape[1] / float(w)
        sy = small.shape[0] / float(h)
        min_px = int(round(self.min_size_frac * min(h, w) * min(sx, sy)))
        dets = self._run(small, min_px)
        return [Detection(d.x / sx, d.y / sy, d.w / sx, d.h / sy, d.score) for d in dets]

    def _detect_near(self, image: np.ndarray, box: Box) -> List[Detection]:
        gray = to_gray(image)
        side = max(box[2], box[3])
        # bring the expected face to 1.5x the cascade window: few scales on a small image; the
        # prior that a face is there allows fewer neighbours (measured on boxes jittered by 10%:
        # ~1.7 ms a face, recall 1.0 and no extra boxes; with 4 neighbours recall fell to 0.88-0.96)
        scale = min(1.0, 1.5 * self.window / side)
        small = self._scaled(gray, scale)
        sx = small.shape[1] / float(gray.shape[1])
        sy = small.shape[0] / float(gray.shape[0])
        s = side * min(sx, sy)
        dets = self._run(small, int(math.floor(0.6 * s)), int(math.ceil(1.6 * s)),
                         min_neighbors=min(2, self.min_neighbors))
        return [Detection(d.x / sx, d.y / sy, d.w / sx, d.h / sy, d.score) for d in dets]


class YuNetDetector(FaceDetector):
    """OpenCV's ``FaceDetectorYN`` (YuNet) from an ONNX file the user supplies
    (e.g. ``face_detection_yunet_2023mar.onnx`` from the OpenCV model zoo)."""

    name = "yunet"
    wants_color = True

    def __init__(self, model_path: str, score_threshold: float = 0.6, nms_threshold: float = 0.3,
                 top_k: int = 50, max_width: int = 640):
        if not model_path or not os.path.isfile(model_path):
            raise ModelFileError(f"YuNet face detector model file not found: {model_path!r}")
        try:
            self.net = cv2.FaceDetectorYN.create(model_path, "", (320, 320), float(score_threshold),
                                                 float(nms_threshold), int(top_k))
        except cv2.error as exc:
            raise ModelFileError(f"YuNet face detector model file {model_path!r} cannot be read: {exc}") from exc
        self.model_path = model_path
        self.score_threshold = float(score_threshold)
        self.max_width = int(max_width)
        self._size: Tuple[int, int] = (320, 320)

    def detect(self, image: np.ndarray) -> List[Detection]:
        bgr = to_bgr(image)
        h, w = bgr.shape[:2]
        scale = min(1.0, self.max_width / float(w))
        if scale < 1.0:
            bgr = cv2.resize(bgr, (max(1, int(round(w * scale))), max(1, int(round(h * scale)))),
                             interpolation=cv2.INTER_AREA)
        sy, sx = bgr.shape[0] / float(h), bgr.shape[1] / float(w)
        size = (bgr.shape[1], bgr.shape[0])
        if size != self._size:
            self.net.setInputSize(size)
            self._size = size
        _, faces = self.net.detect(bgr)
        out = []
        if faces is not None:
            for f in faces:
                x, y, fw, fh = (float(v) for v in f[:4])
                out.append(Detection(x / sx, y / sy, fw / sx, fh / sy, float(np.clip(f[-1], 0.0, 1.0))))
        return out


def make_detector(name: str = "haar", **kw) -> FaceDetector:
    """``'haar'`` -> :class:`HaarDetector` (kw: min_size_frac, scale_factor, min_neighbors, max_width, equalize);
    ``'yunet'`` -> :class:`YuNetDetector` (kw: model_path, score_threshold, nms_threshold, top_k, max_width).
    Keyword arguments the chosen detector does not take are ignored, so one parameter set serves both."""
    key = (name or "haar").strip().lower()
    import inspect
    if key == "haar":
        cls = HaarDetector
    elif key == "yunet":
        cls = YuNetDetector
        if "model_path" not in kw and "yunet_model" in kw:
            kw["model_path"] = kw.pop("yunet_model")
    else:
        raise ValueError(f"unknown face detector {name!r} (expected 'haar' or 'yunet')")
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
    return cls(**{k: v for k, v in kw.items() if k in accepted})

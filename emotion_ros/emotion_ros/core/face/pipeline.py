"""Camera frame -> faces with ids, boxes and expression probabilities.

``FacePipeline.process(frame, t)``: grey conversion (once), detection, tracking,
alignment of every face, and one batched model call for all faces of the frame.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np

from ..errors import InputError
from ..labels import LABELS
from .align import FaceAligner
from .detect import FaceDetector, HaarDetector, make_detector, to_bgr, to_gray
from .track import FaceTracker


@dataclass
class FaceResult:
    id: str
    box: Tuple[int, int, int, int]       # smoothed track box (x, y, w, h), pixels of the frame
    det_score: float                     # detector confidence in [0, 1]
    probs: np.ndarray                    # (7,) float32, LABELS order
    embedding: np.ndarray                # (D,) float32
    crop_box: Tuple[int, int, int, int] = field(default=(0, 0, 0, 0))  # this frame's raw detection box

    @property
    def emotion(self) -> str:
        return LABELS[int(np.argmax(self.probs))]

    @property
    def confidence(self) -> float:
        return float(np.max(self.probs))


def check_frame(frame) -> None:
    """Raise :class:`InputError` unless ``frame`` is a non-empty uint8 grey/BGR/BGRA image."""
    if not isinstance(frame, np.ndarray):
        raise InputError(f"frame: expected a numpy array, got {type(frame).__name__}")
    if frame.size == 0 or frame.ndim < 2 or frame.shape[0] == 0 or frame.shape[1] == 0:
        raise InputError(f"frame: empty image of shape {frame.shape}")
    if frame.dtype.kind == "f" and not np.all(np.isfinite(frame)):
        raise InputError("frame: contains NaN or infinite values")
    if frame.dtype != np.uint8:
        raise InputError(f"frame: dtype {frame.dtype} not supported, expected uint8")
    if frame.ndim > 3 or (frame.ndim == 3 and frame.shape[2] not in (1, 3, 4)):
        raise InputError(f"frame: shape {frame.shape} is not grey (H, W), BGR (H, W, 3) or BGRA (H, W, 4)")


class FacePipeline:
    """``model``: a :class:`~.model.FaceModel` (anything with ``predict(crops) -> (probs, emb)``
    and ``input_size``).  ``full_detect_every``: 1 = detect on the whole frame every
    frame; N > 1 = whole frame every N-th frame (and whenever nothing is tracked), in
    between only around the tracked faces (new faces then appear up to N-1 frames late)."""

    def __init__(self, model, detector: Optional[FaceDetector] = None, tracker: Optional[FaceTracker] = None,
                 aligner: Optional[FaceAligner] = None, max_faces: int = 10, full_detect_every: int = 1):
        self.model = model
        self.detector = detector or HaarDetector()
        self.tracker = tracker or FaceTracker()
        size = int(getattr(model, "input_size", 48))
        self.aligner = aligner or FaceAligner(size=size)
        self.max_faces = max(1, int(max_faces))
        self.full_detect_every = max(1, int(full_detect_every))
        self._frames = 0
        self._since_full = 0
        self.timings: Dict[str, float] = {}

    def reset(self) -> None:
        self.tracker.reset()
        self._since_full = 0

    def _detect(self, gray: np.ndarray, frame: np.ndarray):
        image = to_bgr(frame) if self.detector.wants_color else gray
        live = [tr for tr in self.tracker.tracks if tr.missed == 0]
        regional = (self.full_detect_every > 1 and live and 0 < self._since_full < self.full_detect_every)
        if regional:
            self._since_full += 1
            return self.detector.detect_regions(image, [tr.box for tr in live])
        self._since_full = 1
        return self.detector.detect(image)

    def process(self, frame: np.ndarray, t: float) -> List[FaceResult]:
        """Faces of ``frame`` (uint8 BGR, BGRA or grey) taken at time ``t`` (seconds), largest first."""
        check_frame(frame)
        t0 = time.perf_counter()
        gray = to_gray(frame)
        dets = self._detect(gray, frame)
        t1 = time.perf_counter()
        tracks = self.tracker.update(dets, t)
        tracks = sorted(tracks, key=lambda tr: tr.detection.area, reverse=True)[: self.max_faces]
        t2 = time.perf_counter()
        size = self.aligner.size
        crops = np.empty((len(tracks), size, size), np.uint8)
        for i, tr in enumerate(tracks):
            crops[i] = self.aligner.crop(gray, tr.detection.box)
        t3 = time.perf_counter()
        if tracks:
            probs, emb = self.model.predict(crops)
        else:
            probs = emb = None
        t4 = time.perf_counter()
        self._frames += 1
        self.timings = {"detect_ms": 1e3 * (t1 - t0), "track_ms": 1e3 * (t2 - t1),
                        "align_ms": 1e3 * (t3 - t2), "model_ms": 1e3 * (t4 - t3),
                        "total_ms": 1e3 * (t4 - t0), "faces": float(len(tracks))}
        out: List[FaceResult] = []
        for i, tr in enumerate(tracks):
            out.append(FaceResult(id=tr.id, box=tr.int_box(), det_score=float(tr.detection.score),
                                  probs=np.asarray(probs[i], np.float32),
                                  embedding=np.asarray(emb[i], np.float32),
                                  crop_box=tr.detection.int_box()))
        return out


def build_pipeline(model, params: Optional[Mapping[str, Any]] = None) -> FacePipeline:
    """A :class:`FacePipeline` from the face node's parameter names (``config/emotion.yaml``); missing
    names take the node's defaults.  One place for the node, emotion-bench and bag evaluation."""
    p: Dict[str, Any] = {"detector": "haar", "yunet_model": "", "yunet_score_threshold": 0.6,
                         "min_face_frac": 0.08, "detect_max_width": 320, "haar_min_neighbors": 5,
                         "full_detect_every": 3, "max_faces": 10, "tracker_iou": 0.3, "tracker_max_missed": 10,
                         "crop_margin": 0.0}
    p.update(params or {})
    detector = make_detector(str(p["detector"]), min_size_frac=float(p["min_face_frac"]),
                             max_width=int(p["detect_max_width"]), min_neighbors=int(p["haar_min_neighbors"]),
                             model_path=str(p["yunet_model"]), score_threshold=float(p["yunet_score_threshold"]))
    return FacePipeline(
        model, detector=detector,
        tracker=FaceTracker(iou_threshold=float(p["tracker_iou"]), max_missed=int(p["tracker_max_missed"])),
        aligner=FaceAligner(size=int(getattr(model, "input_size", 48)), margin=float(p["crop_margin"])),
        max_faces=int(p["max_faces"]), full_detect_every=int(p["full_detect_every"]))

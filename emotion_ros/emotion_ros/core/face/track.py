"""Multi-face tracker: greedy IoU matching with a centroid-distance fallback.

Gives each face a stable string id (``face_1``, ``face_2``, ...; never reused) and
an exponentially smoothed box.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

from .detect import Box, Detection, iou


@dataclass
class Track:
    id: str
    x: float
    y: float
    w: float
    h: float
    score: float
    first_t: float
    last_t: float
    age: int = 1            # frames since the track was created (including this one)
    hits: int = 1           # frames in which it was matched to a detection
    missed: int = 0         # consecutive frames without a detection
    detection: Optional[Detection] = field(default=None, repr=False)  # this frame's raw detection, or None

    @property
    def box(self) -> Box:
        return (self.x, self.y, self.w, self.h)

    @property
    def area(self) -> float:
        return self.w * self.h

    @property
    def visible(self) -> bool:
        return self.missed == 0

    def int_box(self) -> Tuple[int, int, int, int]:
        return (int(round(self.x)), int(round(self.y)), int(round(self.w)), int(round(self.h)))


def _centre_distance(a: Box, b: Box) -> float:
    """Distance of the centres, in units of the mean box side."""
    ax, ay = a[0] + a[2] / 2, a[1] + a[3] / 2
    bx, by = b[0] + b[2] / 2, b[1] + b[3] / 2
    side = 0.25 * (a[2] + a[3] + b[2] + b[3])
    return math.hypot(ax - bx, ay - by) / max(side, 1e-6)


class FaceTracker:
    """``update(detections, t)`` -> the tracks seen in this frame.

    ``iou_threshold``: least IoU for a match.  Detections left over are matched by centre
    distance (< ``max_centre_dist`` mean box sides, size ratio within ``max_size_ratio``),
    which keeps ids through fast motion.  A track survives ``max_missed`` frames without
    a detection.  ``smoothing``: weight of the new detection in the box EMA (1 = no smoothing).
    Time going backwards (a bag restarted) clears the tracks; ids are never reused.
    """

    def __init__(self, iou_threshold: float = 0.3, max_missed: int = 10, smoothing: float = 0.6,
                 max_centre_dist: float = 0.75, max_size_ratio: float = 1.6, prefix: str = "face_"):
        if not (0.0 < smoothing <= 1.0):
            raise ValueError(f"smoothing must be in (0, 1], got {smoothing}")
        self.iou_threshold = float(iou_threshold)
        self.max_missed = int(max_missed)
        self.smoothing = float(smoothing)
        self.max_centre_dist = float(max_centre_dist)
        self.max_size_ratio = float(max_size_ratio)
        self.prefix = prefix
        self._tracks: List[Track] = []
        self._next_id = 1
        self._last_t: Optional[float] = None

    @property
    def tracks(self) -> List[Track]:
        """All live tracks, including those missed in the latest frames."""
        return list(self._tracks)

    def reset(self) -> None:
        self._tracks = []
        self._last_t = None

    def _new_id(self) -> str:
        tid = f"{self.prefix}{self._next_id}"
        self._next_id += 1
        return tid

    def _match(self, dets: Sequence[Detection]) -> List[Tuple[int, int]]:
        pairs: List[Tuple[int, int]] = []
        free_t = set(range(len(self._tracks)))
        free_d = set(range(len(dets)))
        scored = []
        for ti, tr in enumerate(self._tracks):
            for di, d in enumerate(dets):
                v = iou(tr.box, d.box)
                if v >= self.iou_threshold:
                    scored.append((v, ti, di))
        for _, ti, di in sorted(scored, key=lambda s: -s[0]):
            if ti in free_t and di in free_d:
                pairs.append((ti, di))
                free_t.discard(ti)
                free_d.discard(di)
        # fallback: centre distance for what is left
        scored = []
        for ti in free_t:
            tr = self._tracks[ti]
            for di in free_d:
                d = dets[di]
                ratio = max(d.w, tr.w) / max(min(d.w, tr.w), 1e-6)
                if ratio > self.max_size_ratio:
                    continue
                dist = _centre_distance(tr.box, d.box)
                if dist < self.max_centre_dist:
                    scored.append((dist, ti, di))
        for _, ti, di in sorted(scored):
            if ti in free_t and di in free_d:
                pairs.append((ti, di))
                free_t.discard(ti)
                free_d.discard(di)
        return pairs

    def update(self, detections: Sequence[Detection], t: float) -> List[Track]:
        """Match ``detections`` of the frame at time ``t``; return the tracks seen in it
        (matched or new), in the order of ``detections``."""
        t = float(t)
        if self._last_t is not None and t < self._last_t:
            self.reset()
        self._last_t = t
        dets = [d for d in detections
                if d.w > 0 and d.h > 0 and all(math.isfinite(v) for v in (d.x, d.y, d.w, d.h))]
        pairs = self._match(dets)
        by_det = {di: ti for ti, di in pairs}
        a = self.smoothing
        for tr in self._tracks:
            tr.detection = None
            tr.age += 1
        seen: List[Track] = []
        for di, d in enumerate(dets):
            ti = by_det.get(di)
            if ti is None:
                tr = Track(self._new_id(), d.x, d.y, d.w, d.h, d.score, first_t=t, last_t=t, detection=d)
                self._tracks.append(tr)
            else:
                tr = self._tracks[ti]
                tr.x = a * d.x + (1 - a) * tr.x
                tr.y = a * d.y + (1 - a) * tr.y
                tr.w = a * d.w + (1 - a) * tr.w
                tr.h = a * d.h + (1 - a) * tr.h
                tr.score = d.score
                tr.last_t = t
                tr.hits += 1
                tr.missed = 0
                tr.detection = d
            seen.append(tr)
        matched = {id(tr) for tr in seen}
        for tr in self._tracks:
            if id(tr) not in matched:
                tr.missed += 1
        self._tracks = [tr for tr in self._tracks if tr.missed <= self.max_missed]
        return seen

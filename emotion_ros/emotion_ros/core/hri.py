"""ROS4HRI (REP-155) view of emotion_ros results, without rclpy.

REP-155 ("Conventions, Topics, Interfaces for Perception in Human-Robot Interaction") puts everything about humans
under ``/humans/``: the faces tracked now on ``/humans/faces/tracked`` (hri_msgs/IdsList), and per face a namespace
``/humans/faces/<face_id>/`` with ``roi``, ``cropped``, ``expression``, ...; persons (identities, matched to faces,
bodies and voices by a person manager) under ``/humans/persons/<person_id>/``.  The ROS side lives in
:mod:`emotion_ros.ros.hri`; this module holds what needs no ROS: the topic names, the expression of a probability
vector (label mapped through :data:`~emotion_ros.core.labels.HRI_EXPRESSION`, valence/arousal from the circumplex
table :data:`~emotion_ros.core.labels.VALENCE_AROUSAL`, confidence = the label's calibrated probability), normalised
regions of interest, the cropped face image, and the bookkeeping of ids that appear and disappear.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from .errors import InputError
from .labels import HRI_EXPRESSION, INDEX, LABELS, NUM_LABELS, valence_arousal

#: REP-155 topics (absolute: the ROS4HRI tools look for them there, whatever the node's namespace).
FACES_TRACKED = "/humans/faces/tracked"
PERSONS_TRACKED = "/humans/persons/tracked"
#: Side of the square /humans/faces/<id>/cropped image (REP-155's /humans/faces/width and height default, 128).
CROP_SIZE = 128

_ID = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def valid_id(ident: str) -> bool:
    """True when ``ident`` can be a topic name token (letters, digits, '_'; not starting with a digit)."""
    return bool(_ID.match(str(ident)))


def face_topic(face_id: str, leaf: str) -> str:
    """``/humans/faces/<face_id>/<leaf>``; InputError for an id that cannot be part of a topic name."""
    if not valid_id(face_id):
        raise InputError(f"face id {face_id!r} cannot be a ROS topic name token (letters, digits, '_')")
    return f"/humans/faces/{face_id}/{leaf}"


def person_topic(person_id: str, leaf: str) -> str:
    """``/humans/persons/<person_id>/<leaf>``; InputError for an id that cannot be part of a topic name."""
    if not valid_id(person_id):
        raise InputError(f"person id {person_id!r} cannot be a ROS topic name token (letters, digits, '_')")
    return f"/humans/persons/{person_id}/{leaf}"


@dataclass(frozen=True)
class HriExpression:
    """The fields of an hri_msgs/Expression (besides the header)."""
    expression: str     # an Expression constant's value
    valence: float      # [-1, 1]
    arousal: float      # [-1, 1]
    confidence: float   # [0, 1]


def expression_of(probs: Sequence[float], label: Optional[str] = None) -> HriExpression:
    """The expression of a probability vector in LABELS order: ``label`` (default: the most probable one) as an
    Expression constant, its probability as the confidence, and the probability-weighted valence/arousal of the
    circumplex table.  InputError for a vector of the wrong length, with NaN/negative values or summing to 0."""
    p = np.asarray(probs, dtype=np.float64).reshape(-1)
    if p.shape[0] != NUM_LABELS:
        raise InputError(f"expression: {p.shape[0]} probabilities, expected {NUM_LABELS} ({', '.join(LABELS)})")
    if not np.all(np.isfinite(p)) or np.any(p < 0) or p.sum() <= 0:
        raise InputError("expression: probabilities must be finite, >= 0 and not all 0")
    p = p / p.sum()
    if label is None:
        label = LABELS[int(np.argmax(p))]
    if label not in INDEX:
        raise InputError(f"expression: unknown label {label!r}")
    valence, arousal = valence_arousal(p)
    return HriExpression(HRI_EXPRESSION[label], float(np.clip(valence, -1.0, 1.0)), float(np.clip(arousal, -1.0, 1.0)),
                         float(np.clip(p[INDEX[label]], 0.0, 1.0)))


def normalized_roi(box: Sequence[float], width: int, height: int) -> Tuple[float, float, float, float]:
    """Box ``(x, y, w, h)`` in pixels -> ``(xmin, ymin, xmax, ymax)`` as fractions of the image, clipped to [0, 1]
    (hri_msgs/NormalizedRegionOfInterest2D)."""
    if int(width) <= 0 or int(height) <= 0:
        raise InputError(f"roi: image size {width}x{height}")
    x, y, w, h = (float(v) for v in box)
    W, H = float(width), float(height)
    return (float(np.clip(x / W, 0.0, 1.0)), float(np.clip(y / H, 0.0, 1.0)),
            float(np.clip((x + w) / W, 0.0, 1.0)), float(np.clip((y + h) / H, 0.0, 1.0)))


def crop_face(frame: np.ndarray, box: Sequence[int], size: int = CROP_SIZE) -> np.ndarray:
    """The face of ``box`` (x, y, w, h; clipped to the frame) scaled to fit ``size`` x ``size``, centred and
    zero-padded (REP-155's ``/cropped``), with the frame's channels and dtype."""
    if frame.ndim not in (2, 3) or frame.shape[0] == 0 or frame.shape[1] == 0:
        raise InputError(f"crop: frame of shape {frame.shape}")
    H, W = frame.shape[:2]
    x, y, w, h = (int(round(v)) for v in box)
    x0, y0 = max(0, min(x, W - 1)), max(0, min(y, H - 1))
    x1, y1 = max(x0 + 1, min(x + w, W)), max(y0 + 1, min(y + h, H))
    roi = frame[y0:y1, x0:x1]
    scale = min(size / roi.shape[1], size / roi.shape[0])
    sw, sh = max(1, min(size, int(round(roi.shape[1] * scale)))), max(1, min(size, int(round(roi.shape[0] * scale))))
    scaled = cv2.resize(roi, (sw, sh), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    out = np.zeros((size, size) + frame.shape[2:], frame.dtype)
    ox, oy = (size - sw) // 2, (size - sh) // 2
    out[oy:oy + sh, ox:ox + sw] = scaled.reshape((sh, sw) + frame.shape[2:])
    return out


class IdSet:
    """The ids live now; ``update(ids)`` returns ``(added, removed)`` (each in a stable order) and keeps the new
    set.  REP-155: a face's (person's) topics exist from the moment its id appears until it is dropped."""

    def __init__(self) -> None:
        self._ids: List[str] = []

    @property
    def ids(self) -> List[str]:
        return list(self._ids)

    def update(self, ids: Iterable[str]) -> Tuple[List[str], List[str]]:
        new: List[str] = []
        for i in ids:
            i = str(i)
            if i not in new:
                new.append(i)
        old = set(self._ids)
        added = [i for i in new if i not in old]
        removed = [i for i in self._ids if i not in set(new)]
        self._ids = new
        return added, removed

    def clear(self) -> List[str]:
        """Forget every id; returns those that were live."""
        gone, self._ids = self._ids, []
        return gone

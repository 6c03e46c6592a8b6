"""The one label vocabulary of emotion_ros, its aliases, and valence/arousal.

Every part of the project (models, nodes, training, evaluation, bags) takes its
label order from here.  The strings are those of ``hri_msgs/Expression``.
"""
from __future__ import annotations

import re
from typing import Dict, Iterable, Optional, Sequence, Tuple

import numpy as np

LABELS: Tuple[str, ...] = (
    "neutral",
    "happy",
    "sad",
    "angry",
    "surprised",
    "disgusted",
    "scared",
)
NUM_LABELS = len(LABELS)
INDEX: Dict[str, int] = {name: i for i, name in enumerate(LABELS)}

# Dataset and common spellings mapped onto the vocabulary.
ALIASES: Dict[str, str] = {
    "neutral": "neutral",
    "calm": "neutral",  # RAVDESS calm -> neutral
    "neu": "neutral",
    "happy": "happy",
    "happiness": "happy",
    "hap": "happy",
    "joy": "happy",
    "sad": "sad",
    "sadness": "sad",
    "angry": "angry",
    "anger": "angry",
    "ang": "angry",
    "surprised": "surprised",
    "surprise": "surprised",
    "sur": "surprised",
    "pleasant_surprise": "surprised",
    "pleasant_surprised": "surprised",
    "ps": "surprised",
    "disgusted": "disgusted",
    "disgust": "disgusted",
    "dis": "disgusted",
    "scared": "scared",
    "fear": "scared",
    "fearful": "scared",
    "afraid": "scared",
    "fea": "scared",
}

# RAVDESS emotion codes (third field of the file name).
RAVDESS_CODES: Dict[str, str] = {
    "01": "neutral",
    "02": "neutral",  # calm
    "03": "happy",
    "04": "sad",
    "05": "angry",
    "06": "scared",
    "07": "disgusted",
    "08": "surprised",
}

# FER2013 CSV class indices (0=Angry, 1=Disgust, 2=Fear, 3=Happy, 4=Sad, 5=Surprise, 6=Neutral).
FER2013_CSV_CLASSES: Tuple[str, ...] = (
    "angry", "disgusted", "scared", "happy", "sad", "surprised", "neutral")

# Valence/arousal of each label: its position on Russell's circumplex of affect (J. A. Russell, "A circumplex model
# of affect", J. Pers. Soc. Psychol. 39(6), 1980): valence = the pleasure axis (unpleasant -1 .. pleasant +1),
# arousal = the activation axis (calm -1 .. excited +1).  Hand-placed approximations of where the category words lie
# on that circle, not measured values.  valence_arousal() weighs them by the class probabilities; the same numbers
# serve EmotionState (fusion) and hri_msgs/Expression (face and fusion nodes with hri on).
VALENCE_AROUSAL: Dict[str, Tuple[float, float]] = {
    "neutral": (0.0, 0.0),
    "happy": (0.8, 0.5),
    "sad": (-0.7, -0.4),
    "angry": (-0.6, 0.8),
    "surprised": (0.3, 0.8),
    "disgusted": (-0.7, 0.3),
    "scared": (-0.6, 0.7),
}
_VA = np.array([VALENCE_AROUSAL[name] for name in LABELS], dtype=np.float32)

# Each label as an hri_msgs/Expression constant (ROS4HRI, REP-155): the value strings of Expression.NEUTRAL,
# HAPPY, SAD, ANGRY, SURPRISED, DISGUSTED, SCARED.  The one place where the vocabulary meets ROS4HRI's; the
# vocabulary was chosen to be these strings, so the mapping is one to one.
HRI_EXPRESSION: Dict[str, str] = {
    "neutral": "neutral",      # Expression.NEUTRAL
    "happy": "happy",          # Expression.HAPPY
    "sad": "sad",              # Expression.SAD
    "angry": "angry",          # Expression.ANGRY
    "surprised": "surprised",  # Expression.SURPRISED
    "disgusted": "disgusted",  # Expression.DISGUSTED
    "scared": "scared",        # Expression.SCARED
}


def normalise(name: str) -> Optional[str]:
    """Map a label or alias (any case, spaces/dashes allowed) onto the vocabulary.

    Returns ``None`` for names that are not known.
    """
    key = re.sub(r"[\s\-]+", "_", str(name).strip().lower())
    return ALIASES.get(key)


def index_of(name: str) -> Optional[int]:
    label = normalise(name)
    return None if label is None else INDEX[label]


def valence_arousal(probs: Sequence[float]) -> Tuple[float, float]:
    """Probability-weighted valence and arousal, clipped to [-1, 1]."""
    p = np.asarray(probs, dtype=np.float32).reshape(-1)
    if p.shape[0] != NUM_LABELS or not np.all(np.isfinite(p)):
        return 0.0, 0.0
    total = float(p.sum())
    if total <= 0:
        return 0.0, 0.0
    va = (p / total) @ _VA
    return float(np.clip(va[0], -1, 1)), float(np.clip(va[1], -1, 1))


def check_label_order(labels: Iterable[str], where: str = "model") -> None:
    """Raise ``ValueError`` unless ``labels`` is exactly :data:`LABELS`."""
    got = tuple(labels)
    if got != LABELS:
        raise ValueError(
            f"{where}: label order {list(got)} does not match the vocabulary {list(LABELS)}")

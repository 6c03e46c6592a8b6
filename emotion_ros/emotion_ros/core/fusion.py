"""Time-aligned fusion of face and voice emotion evidence (pure Python, no rclpy).

:class:`TemporalFusion` keeps bounded, time-stamped buffers of the face results (per person / track id) and of the
voice segments, and turns them into one :class:`FusedState` per person on request (``estimate(now)``).

Alignment (all times are float seconds of the message stamps; ``now`` is the caller's clock, e.g. the node clock,
so replayed bags work with ``use_sim_time``):

* face: the newest observation of a person whose age ``now - t`` is at most ``min(window_s, stale_s)``;
* voice: every voice-active segment whose ``[t_start, t_end]`` overlaps ``[now - window_s, now]`` and whose end is
  at most ``stale_s`` old, combined with weights proportional to the overlap;
* a modality with no such evidence is *stale*: weight 0, masked out of the fusion model.

Fusion of one person:

* both modalities with embeddings that fit the model -> model-level fusion (:class:`FusionModel`, the default);
* one modality alone -> the fusion model with the other masked; a modality whose message carried no embedding (or
  one of the wrong size) contributes its own probabilities instead;
* ``model=None`` -> probability-level weighted average, weights as below.  This is a fallback for running without
  a trained fusion model, not the default.

Voice has no speaker id: it is attached to the primary person (the largest fresh face) only, or to every person
with ``voice_to="all"``.  With no fresh face, fresh voice gives one voice-only state (``person_id=""``).

Weights (reported in every state; used for averaging only in the probability-level paths): per modality
``freshness x confidence`` with ``freshness = 1 - age / horizon`` (clipped to [0.05, 1]) and ``confidence`` the
modality's own top probability; normalised to sum 1; 0 for a stale modality.

The fused probabilities of each person are smoothed exponentially, ``p += (1 - exp(-dt / tau)) (raw - p)`` with
``dt`` the time since that person's previous estimate (``tau = 0`` disables smoothing).  When the primary switches
between a face and voice alone, the new stream's smoothing starts from the old one's state (same person, presumably,
looking away), so the primary's probabilities and ``changed`` stay continuous.  Persons not seen for ``forget_s``
are dropped.
"""
from __future__ import annotations

import collections
import math
from dataclasses import dataclass, field
from typing import Deque, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .errors import InputError
from .fusion_model import ARCH, FusionModel, FusionNet  # noqa: F401  (re-exported: "fusion.py = FusionModel + ...")
from .labels import LABELS, NUM_LABELS, valence_arousal

__all__ = ["TemporalFusion", "FusedState", "FaceObs", "VoiceObs", "FusionModel", "FusionNet", "ARCH"]

_MIN_FRESHNESS = 0.05


@dataclass
class FaceObs:
    t: float
    person_id: str
    box_area: float
    probs: np.ndarray
    embedding: Optional[np.ndarray]


@dataclass
class VoiceObs:
    t_start: float
    t_end: float
    probs: np.ndarray
    embedding: Optional[np.ndarray]
    voice_activity: bool


@dataclass
class FusedState:
    """One person's fused emotional state at one instant."""

    stamp: float                  # time of the newest evidence used
    person_id: str                # "" for a voice-only state
    primary: bool
    probs: np.ndarray             # smoothed fused probabilities (7,) in LABELS order
    emotion: str
    confidence: float
    valence: float
    arousal: float
    face_weight: float
    voice_weight: float
    changed: bool                 # top emotion differs from this person's previous estimate (True for a new person)
    mode: str = ""                # "model", "model+probs", "probs" (how the raw estimate was made)
    raw_probs: Optional[np.ndarray] = None    # before smoothing
    face_probs: Optional[np.ndarray] = None   # the face evidence used (None when stale)
    voice_probs: Optional[np.ndarray] = None  # the voice evidence used (None when stale)
    face_age: Optional[float] = None          # now - face stamp
    voice_age: Optional[float] = None         # now - newest voice segment end
    labels: Sequence[str] = field(default_factory=lambda: LABELS)


@dataclass
class _Smoother:
    probs: np.ndarray
    t: float
    emotion: str
    last_seen: float


def _finite(name: str, value: float) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{name} is not a number: {value!r}") from exc
    if not math.isfinite(v):
        raise InputError(f"{name} is not finite: {v}")
    return v


def _probs(name: str, probs) -> np.ndarray:
    p = np.asarray(probs, dtype=np.float32).reshape(-1)
    if p.shape[0] != NUM_LABELS:
        raise InputError(f"{name} has {p.shape[0]} values, expected {NUM_LABELS} ({', '.join(LABELS)})")
    if not np.all(np.isfinite(p)):
        raise InputError(f"{name} holds NaN or Inf")
    if np.any(p < 0):
        raise InputError(f"{name} holds negative values")
    s = float(p.sum())
    if s <= 0:
        raise InputError(f"{name} sums to {s}, not a probability vector")
    return p / s


def _embedding(name: str, emb) -> Optional[np.ndarray]:
    if emb is None:
        return None
    e = np.asarray(emb, dtype=np.float32).reshape(-1)
    if e.size == 0:
        return None
    if not np.all(np.isfinite(e)):
        raise InputError(f"{name} holds NaN or Inf")
    return e


class TemporalFusion:
    """Time-aligned, smoothed face + voice fusion.  Not thread-safe: call from one thread (or under a lock)."""

    def __init__(self, model: Optional[FusionModel] = None, window_s: float = 1.0, stale_s: float = 1.0,
                 smoothing_tau_s: float = 0.5, forget_s: float = 5.0, buffer_len: int = 32,
                 max_persons: int = 32, voice_to: str = "primary"):
        for name, v in (("window_s", window_s), ("stale_s", stale_s)):
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be > 0, got {v}")
        if not (math.isfinite(smoothing_tau_s) and smoothing_tau_s >= 0):
            raise ValueError(f"smoothing_tau_s must be >= 0, got {smoothing_tau_s}")
        if voice_to not in ("primary", "all"):
            raise ValueError(f"voice_to must be 'primary' or 'all', got {voice_to!r}")
        self.model = model
        self.window_s = float(window_s)
        self.stale_s = float(stale_s)
        self.smoothing_tau_s = float(smoothing_tau_s)
        self.forget_s = max(float(forget_s), self.stale_s)
        self.buffer_len = max(1, int(buffer_len))
        self.max_persons = max(1, int(max_persons))
        self.voice_to = voice_to
        self._faces: Dict[str, Deque[FaceObs]] = {}
        self._voice: Deque[VoiceObs] = collections.deque(maxlen=self.buffer_len)
        self._smooth: Dict[str, _Smoother] = {}
        self._last_now: Optional[float] = None
        self._last_primary: Optional[str] = None

    # -- input ----------------------------------------------------------------------------------------------------
    @property
    def face_horizon(self) -> float:
        return min(self.window_s, self.stale_s)

    def _check_dim(self, modality: str, emb: Optional[np.ndarray]) -> Optional[str]:
        if emb is None or self.model is None:
            return None
        want = self.model.face_dim if modality == "face" else self.model.voice_dim
        if emb.shape[0] != want:
            return (f"{modality} embedding has {emb.shape[0]} values, the fusion model {self.model.path!r} expects "
                    f"{want}: using the {modality} probabilities instead")
        return None

    def add_face(self, t: float, person_id: str, box_area: float, probs, embedding=None) -> Optional[str]:
        """Add one face result.  Returns a warning (embedding size mismatch, embedding dropped) or None.

        Raises InputError naming the field for NaN/Inf or malformed values."""
        t = _finite("face stamp", t)
        area = _finite("face box_area", box_area)
        if area < 0:
            raise InputError(f"face box_area is negative: {area}")
        p = _probs("face probabilities", probs)
        e = _embedding("face embedding", embedding)
        warning = self._check_dim("face", e)
        if warning:
            e = None
        pid = str(person_id)
        buf = self._faces.get(pid)
        if buf is None:
            if len(self._faces) >= self.max_persons:  # drop the person seen longest ago
                oldest = min(self._faces, key=lambda k: self._faces[k][-1].t if self._faces[k] else -math.inf)
                del self._faces[oldest]
                self._smooth.pop(oldest, None)
            buf = self._faces[pid] = collections.deque(maxlen=self.buffer_len)
        buf.append(FaceObs(t, pid, area, p, e))
        return warning

    def add_voice(self, t_start: float, t_end: float, probs, embedding=None,
                  voice_activity: bool = True) -> Optional[str]:
        """Add one voice segment.  Returns a warning (embedding size mismatch) or None.

        Segments without voice activity carry no emotion evidence and are ignored by ``estimate``."""
        t0 = _finite("voice start", t_start)
        t1 = _finite("voice end", t_end)
        if t1 < t0:
            raise InputError(f"voice segment ends ({t1}) before it starts ({t0})")
        p = _probs("voice probabilities", probs)
        e = _embedding("voice embedding", embedding)
        warning = self._check_dim("voice", e)
        if warning:
            e = None
        self._voice.append(VoiceObs(t0, t1, p, e, bool(voice_activity)))
        return warning

    def reset(self) -> None:
        self._faces.clear()
        self._voice.clear()
        self._smooth.clear()
        self._last_now = None
        self._last_primary = None

    @property
    def persons(self) -> List[str]:
        return list(self._faces)

    # -- alignment ------------------------------------------------------------------------------------------------
    def _fresh_face(self, pid: str, now: float) -> Optional[FaceObs]:
        best = None
        for obs in self._faces.get(pid, ()):
            age = now - obs.t
            if -self.window_s <= age <= self.face_horizon and (best is None or obs.t > best.t):
                best = obs
        return best

    def _fresh_voice(self, now: float):
        """Overlap-weighted voice evidence: (probs, embedding | None, newest end) or None."""
        lo = now - self.window_s
        weights, probs, embs, ends = [], [], [], []
        for seg in self._voice:
            if not seg.voice_activity or now - seg.t_end > self.stale_s:
                continue
            overlap = min(seg.t_end, now) - max(seg.t_start, lo)
            if overlap < 0 or seg.t_start > now:
                continue
            weights.append(max(overlap, 1e-3))  # a zero-length segment inside the window still counts a little
            probs.append(seg.probs)
            embs.append(seg.embedding)
            ends.append(seg.t_end)
        if not weights:
            return None
        w = np.asarray(weights, dtype=np.float64)
        w /= w.sum()
        p = (w[:, None] * np.stack(probs)).sum(0).astype(np.float32)
        with_emb = [(wi, e) for wi, e in zip(w, embs) if e is not None]
        emb = None
        if with_emb and len({e.shape[0] for _, e in with_emb}) == 1:
            ww = np.asarray([wi for wi, _ in with_emb])
            emb = ((ww / ww.sum())[:, None] * np.stack([e for _, e in with_emb])).sum(0).astype(np.float32)
        return p, emb, max(ends)

    def _prune(self, now: float) -> None:
        keep = max(self.window_s, self.stale_s)
        while self._voice and now - self._voice[0].t_end > keep:
            # segments are appended in arrival order; drop old heads only
            self._voice.popleft()
        for pid in list(self._faces):
            buf = self._faces[pid]
            if not buf or now - max(o.t for o in buf) > self.forget_s:
                del self._faces[pid]
        for pid in list(self._smooth):
            if now - self._smooth[pid].last_seen > self.forget_s:
                del self._smooth[pid]

    def _jumped_back(self, now: float) -> None:
        """The clock jumped back (a bag restarted): drop evidence from the abandoned future and all smoothing."""
        limit = now + self.window_s
        for pid in list(self._faces):
            kept = [o for o in self._faces[pid] if o.t <= limit]
            if kept:
                self._faces[pid] = collections.deque(kept, maxlen=self.buffer_len)
            else:
                del self._faces[pid]
        self._voice = collections.deque((v for v in self._voice if v.t_start <= limit), maxlen=self.buffer_len)
        self._smooth.clear()

    # -- fusion ---------------------------------------------------------------------------------------------------
    def _freshness(self, age: float, horizon: float) -> float:
        return float(np.clip(1.0 - max(age, 0.0) / horizon, _MIN_FRESHNESS, 1.0))

    def _fuse(self, face: Optional[FaceObs], voice, now: float):
        """-> raw probs, face_weight, voice_weight, mode."""
        fw = vw = 0.0
        if face is not None:
            fw = self._freshness(now - face.t, self.face_horizon) * float(face.probs.max())
        if voice is not None:
            vw = self._freshness(now - voice[2], self.stale_s) * float(voice[0].max())
        total = fw + vw
        if total > 0:
            fw, vw = fw / total, vw / total
        else:  # cannot happen with positive probabilities; keep the weights well defined anyway
            fw, vw = float(face is not None), float(voice is not None)
            s = fw + vw
            fw, vw = fw / s, vw / s

        face_emb = face.embedding if face is not None else None
        voice_emb = voice[1] if voice is not None else None
        if self.model is not None and (face_emb is not None or voice_emb is not None):
            p_model = self.model.predict(face_emb, voice_emb)
            # modalities present but without a usable embedding are mixed in at probability level
            rest = []
            if face is not None and face_emb is None:
                rest.append((fw, face.probs))
            if voice is not None and voice_emb is None:
                rest.append((vw, voice[0]))
            if not rest:
                return p_model.astype(np.float32), fw, vw, "model"
            w_model = 1.0 - sum(w for w, _ in rest)
            p = w_model * p_model + sum(w * q for w, q in rest)
            return (p / p.sum()).astype(np.float32), fw, vw, "model+probs"
        parts = []
        if face is not None:
            parts.append((fw, face.probs))
        if voice is not None:
            parts.append((vw, voice[0]))
        p = sum(w * q for w, q in parts)
        return (p / p.sum()).astype(np.float32), fw, vw, "probs"

    def _smooth_probs(self, key: str, raw: np.ndarray, now: float) -> Tuple[np.ndarray, bool]:
        s = self._smooth.get(key)
        if s is None or self.smoothing_tau_s <= 0:
            p = raw.copy()
        else:
            dt = now - s.t
            if dt <= 0:
                p = s.probs.copy() if dt == 0 else raw.copy()  # same instant: keep; time went back: restart
            else:
                a = 1.0 - math.exp(-dt / self.smoothing_tau_s)
                p = (s.probs + a * (raw - s.probs)).astype(np.float32)
        emotion = LABELS[int(np.argmax(p))]
        changed = s is None or s.emotion != emotion
        self._smooth[key] = _Smoother(p, now, emotion, now)
        return p, changed

    def _hand_over(self, pid: str) -> None:
        """Keep the primary stream continuous across face <-> voice-only switches (the same person, presumably, who
        turned away or came back): the new key's smoothing starts from the previous primary's state."""
        prev, self._last_primary = self._last_primary, pid
        if prev is None or prev == pid or "" not in (prev, pid):
            return
        src = self._smooth.get(prev)
        dst = self._smooth.get(pid)
        if src is not None and (dst is None or dst.t < src.t):
            self._smooth[pid] = _Smoother(src.probs.copy(), src.t, src.emotion, src.last_seen)

    def estimate(self, now: float) -> List[FusedState]:
        """Fused states at time ``now``: one per person with fresh face evidence (primary first), or a single
        voice-only state when no face is fresh but voice is; [] when nothing is fresh."""
        now = _finite("now", now)
        if self._last_now is not None and now < self._last_now - max(self.window_s, self.stale_s):
            self._jumped_back(now)
        self._last_now = now
        self._prune(now)

        faces = [f for f in (self._fresh_face(pid, now) for pid in self._faces) if f is not None]
        faces.sort(key=lambda f: (-f.box_area, f.person_id))
        voice = self._fresh_voice(now)
        out: List[FusedState] = []
        if faces:
            jobs = [(f.person_id, f, voice if (i == 0 or self.voice_to == "all") else None, i == 0)
                    for i, f in enumerate(faces)]
        elif voice is not None:
            jobs = [("", None, voice, True)]
        else:
            jobs = []
        for pid, face, v, primary in jobs:
            if primary:
                self._hand_over(pid)
            raw, fw, vw, mode = self._fuse(face, v, now)
            p, changed = self._smooth_probs(pid, raw, now)
            k = int(np.argmax(p))
            val, aro = valence_arousal(p)
            stamps = ([face.t] if face is not None else []) + ([v[2]] if v is not None else [])
            out.append(FusedState(
                stamp=max(stamps), person_id=pid, primary=primary, probs=p, emotion=LABELS[k],
                confidence=float(p[k]), valence=val, arousal=aro, face_weight=float(fw), voice_weight=float(vw),
                changed=changed, mode=mode, raw_probs=raw,
                face_probs=None if face is None else face.probs, voice_probs=None if v is None else v[0],
                face_age=None if face is None else now - face.t, voice_age=None if v is None else now - v[2]))
        return out

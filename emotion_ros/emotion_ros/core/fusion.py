"""Time-aligned, reliability-weighted fusion of face and voice emotion evidence (pure Python, no rclpy).

:class:`TemporalFusion` keeps bounded, time-stamped buffers of the face results (per person / track id) and of the
voice segments, and turns them into one :class:`FusedState` per person on request (``estimate(now)``).

Alignment (float seconds of the message stamps; ``now`` is the caller's clock, e.g. the node clock, so replayed bags
work with ``use_sim_time``), with a separate staleness per modality:

* face: the person's observations of age ``now - t`` at most ``face_stale_s``, averaged with their recency weights
  (a face frame says little 0.3-0.5 s later);
* voice: every voice-active segment whose end is at most ``voice_stale_s`` old (a voice result arrives ~0.4 s after
  the words and speaks for the seconds that follow), averaged with weights recency x duration;
* recency of one piece of evidence: 1 up to ``*_hold_s`` of age, then linear down to 0 at ``*_stale_s``;
* a modality with no such evidence is *stale*: weight 0, masked out.

Reliability weight of a modality (``face_weight``/``voice_weight`` of every state, normalised to sum 1):

    w = recency x confidence_term x ood_term x unsure_term   (x voice_prior x voice_trust for the voice)

* ``confidence_term = ((c - 1/K) / (1 - 1/K)) ** conf_power`` with ``c`` the top *calibrated* probability (the face
  and voice models carry temperatures fitted on held-out data): evidence at chance weighs nothing;
* ``ood_term``: the maximum-softmax score ``c`` is also the (cheap) out-of-distribution score: below
  ``ood_min_conf`` the input does not look like what the model was trained on and the weight is multiplied by
  ``ood_weight``;
* ``unsure_term`` (voice): ``unsure_weight`` for segments the voice node marks ``unsure`` (best calibrated
  probability under its threshold; without that flag, ``voice_unsure_threshold`` decides here);
* ``voice_prior``: how much a voice counts against a face of the same calibrated confidence (measured on held-out
  recordings: voices of new speakers are wrong more often than their confidence says).
* ``voice_trust`` (``agreement_tau_s`` > 0): the voice's weight is also scaled by ``min(1, agreement /
  agreement_reference) ** agreement_power``; ``agreement`` is the running, face-confidence-weighted share of ended voice
  segments whose top emotion the primary person's face showed over the segment (forgetting with ``agreement_tau_s``,
  starting at ``agreement_reference`` with the weight of ``agreement_strength`` segments): a voice the face keeps
  contradicting fades, and a voice with no history (the first words, a single pair) has full trust.
* voice segments that ended before the person's face last changed its top emotion (the new one held for
  ``min_dwell_s``) count ``voice_face_change_weight`` times, in the voice's mix and in its weight against the face:
  the words were about the earlier moment (1 = no discount).

Fusion (``fusion_mode``): ``average`` = the reliability-weighted average of the two probability vectors (the shipped
default, see models/fusion.md), arithmetic (``pool="linear"``: p = fw p_face + vw p_voice) or geometric
(``pool="log"``, a log-linear pool / product of experts: p ~ p_face^fw x p_voice^vw, each probability floored at
``PROB_FLOOR``): in the log pool a voice of small weight still decides between emotions the face finds about equally
likely, and an emotion one modality rules out needs a larger share of the weight from the other to win; ``model`` =
the learned fusion of the embeddings (:class:`FusionModel`), with a modality whose weight share is below
``model_min_weight`` masked out; ``auto`` = ``model`` when a model is given.
A modality without a usable embedding contributes its probabilities at its weight.

Steady output: each person's fused probabilities are smoothed exponentially (time constant ``smoothing_tau_s``),
and the reported emotion changes only on evidence (hysteresis): a new top emotion must lead the current one by
``switch_margin`` for ``min_dwell_s`` without interruption, or by ``fast_switch_margin`` at once (clear evidence
needs no waiting). A change the face does not support (the face evidence's own top emotion is another, or there is
no face) needs a lead of ``switch_margin + voice_switch_margin x voice_weight``: a voice, wrong more often than a face
on new speakers, must make a bigger case before it changes what the robot is told; a change the face shows is as
quick as before (without a face the voice share is 1: a voice-only state changes only on a clear lead). ``probs``
stay the smoothed probabilities; ``emotion`` is the held one.

Quicker where the face changed (``face_change_weight`` < 1): the face has its own change detector on its newest
frames (those within ``face_hold_s`` of the newest one); when their top emotion changes and the new one holds
``face_confirm_s``, the change is confirmed, and from then on the frames from before it count ``face_change_weight``
times in the face evidence (the recency-weighted average would otherwise need the old frames to age out first).

Voice has no speaker id: it is attached to the primary person (the largest fresh face) only, or to every person with
``voice_to="all"``. With no fresh face, fresh voice gives one voice-only state (``person_id=""``); when the primary
switches between a face and voice alone, the new stream starts from the old one's smoothing and held emotion (the
same person, presumably, looking away). Persons not seen for ``forget_s`` are dropped.

Legacy settings (the core's defaults, as before this scheme): without ``face_stale_s``, the face evidence is the
newest observation within ``min(window_s, stale_s)`` and the confidence term is the top probability itself; without
``voice_stale_s``, voice segments overlapping ``[now - window_s, now]`` and ending within ``stale_s`` count, weighted
by that overlap. The nodes and tools set the new parameters (config/emotion.yaml).
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
#: Tolerance of the dwell and window comparisons (s). Stamps are float seconds since the epoch, resolved to ~0.2 us
#: there, so a dwell of exactly n fusion periods (0.1 s at 10 Hz) was met or not by rounding (1e-9 was below the
#: resolution): replays of one bag with `now` computed two ways differed by a hysteresis decision. To the millisecond
#: it is met after n periods, whichever way the clock's float was rounded.
_TIME_EPS = 1e-3
#: ``smoothing_filter`` values: exponential smoothing of the probabilities, or an HMM forward filter.
SMOOTHING_FILTERS = ("exp", "hmm")


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
    unsure: bool = False
    scored: bool = False          # counted in the face-voice agreement (once)


@dataclass
class FusedState:
    """One person's fused emotional state at one instant."""

    stamp: float                  # time of the newest evidence used
    person_id: str                # "" for a voice-only state
    primary: bool
    probs: np.ndarray             # smoothed fused probabilities (7,) in LABELS order
    emotion: str                  # the held top emotion (hysteresis); usually argmax(probs)
    confidence: float             # probs[emotion]
    valence: float
    arousal: float
    face_weight: float
    voice_weight: float
    changed: bool                 # emotion differs from this person's previous estimate (True for a new person)
    mode: str = ""                # "model", "model+probs", "probs" (how the raw estimate was made)
    raw_probs: Optional[np.ndarray] = None    # before smoothing
    face_probs: Optional[np.ndarray] = None   # the newest face observation used (None when stale)
    voice_probs: Optional[np.ndarray] = None  # the voice evidence used (None when stale)
    face_age: Optional[float] = None          # now - face stamp
    voice_age: Optional[float] = None         # now - newest voice segment end
    voice_unsure: bool = False                # the voice evidence is (mostly) marked unsure
    labels: Sequence[str] = field(default_factory=lambda: LABELS)


@dataclass
class _Smoother:
    probs: np.ndarray
    t: float
    emotion: str
    last_seen: float
    candidate: Optional[str] = None
    candidate_since: float = 0.0


@dataclass
class _FaceChange:
    top: int                      # the face evidence's settled top emotion
    changed_at: float             # when it began to show (-inf: never changed since the person appeared)
    candidate: Optional[int] = None
    candidate_since: float = 0.0

    def update(self, top: int, t: float, shown_since: float, dwell: float) -> None:
        """A top emotion other than the settled one becomes a candidate (first shown at ``shown_since``), and the
        settled one once it has held ``dwell`` at time ``t`` without interruption."""
        if top == self.top:
            self.candidate = None
        elif self.candidate != top:
            self.candidate, self.candidate_since = top, shown_since
        if self.candidate is not None and t - self.candidate_since >= dwell - _TIME_EPS:
            self.top, self.changed_at, self.candidate = top, self.candidate_since, None


@dataclass
class _Evidence:
    probs: np.ndarray             # averaged evidence of the modality
    newest: np.ndarray            # probabilities of the newest observation / segment
    embedding: Optional[np.ndarray]
    t: float                      # newest stamp (face frame / segment end)
    recency: float                # recency weight of the newest piece
    unsure: float = 0.0           # weighted share of unsure segments (voice)


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


def _mean_embedding(pairs) -> Optional[np.ndarray]:
    with_emb = [(w, e) for w, e in pairs if e is not None]
    if not with_emb or len({e.shape[0] for _, e in with_emb}) != 1:
        return None
    ww = np.asarray([w for w, _ in with_emb], np.float64)
    ww = ww / ww.sum() if ww.sum() > 0 else np.full(len(ww), 1.0 / len(ww))
    return (ww[:, None] * np.stack([e for _, e in with_emb])).sum(0).astype(np.float32)


FUSION_MODES = ("auto", "average", "model")
POOLS = ("linear", "log")  # how the average mode combines the probability vectors
PROB_FLOOR = 1e-4          # log pool: no modality drives a class below 1e-4 of its belief (one wrong zero cannot veto)
#: the face-voice agreement before any voice segment was scored: (decayed sum of weight x agreement, decayed sum of
#: weight, stamp of the newest scored segment)
_NO_AGREEMENT = (0.0, 0.0, -math.inf)


def _above_chance(c: float, chance: float) -> float:
    """A top probability ``c`` as a share of the way from ``chance`` to certainty (0 at or below chance)."""
    return max(c - chance, 0.0) / (1.0 - chance)


class TemporalFusion:
    """Time-aligned, reliability-weighted, smoothed face + voice fusion.  Not thread-safe: call from one thread."""

    def __init__(self, model: Optional[FusionModel] = None, window_s: float = 1.0, stale_s: float = 1.0,
                 smoothing_tau_s: float = 0.5, forget_s: float = 5.0, buffer_len: int = 32,
                 max_persons: int = 32, voice_to: str = "primary",
                 face_stale_s: Optional[float] = None, voice_stale_s: Optional[float] = None,
                 face_hold_s: float = 0.0, voice_hold_s: float = 0.0, fusion_mode: str = "auto",
                 conf_power: float = 1.0, ood_min_conf: float = 0.0, ood_weight: float = 1.0,
                 unsure_weight: float = 1.0, voice_unsure_threshold: float = 0.0, model_min_weight: float = 0.0,
                 voice_prior: float = 1.0,
                 switch_margin: float = 0.0, min_dwell_s: float = 0.0, fast_switch_margin: float = 1.0,
                 voice_switch_margin: float = 0.0, pool: str = "linear",
                 smoothing_filter: str = "exp", hmm_switch_rate: float = 0.5, hmm_evidence_rate: float = 10.0,
                 voice_face_change_weight: float = 1.0, agreement_tau_s: float = 0.0,
                 agreement_reference: float = 0.5, agreement_strength: float = 3.0, agreement_power: float = 1.0,
                 face_change_weight: float = 1.0, face_confirm_s: float = 0.2):
        for name, v in (("window_s", window_s), ("stale_s", stale_s)):
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be > 0, got {v}")
        for name, v in (("face_stale_s", face_stale_s), ("voice_stale_s", voice_stale_s)):
            if v is not None and not (math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be > 0, got {v}")
        for name, v in (("smoothing_tau_s", smoothing_tau_s), ("face_hold_s", face_hold_s),
                        ("voice_hold_s", voice_hold_s), ("conf_power", conf_power), ("switch_margin", switch_margin),
                        ("min_dwell_s", min_dwell_s)):
            if not (math.isfinite(v) and v >= 0):
                raise ValueError(f"{name} must be >= 0, got {v}")
        if not (math.isfinite(voice_prior) and voice_prior >= 0):
            raise ValueError(f"voice_prior must be >= 0, got {voice_prior}")
        for name, v in (("fast_switch_margin", fast_switch_margin), ("voice_switch_margin", voice_switch_margin),
                        ("ood_min_conf", ood_min_conf), ("ood_weight", ood_weight), ("unsure_weight", unsure_weight),
                        ("voice_unsure_threshold", voice_unsure_threshold), ("model_min_weight", model_min_weight),
                        ("voice_face_change_weight", voice_face_change_weight),
                        ("face_change_weight", face_change_weight)):
            if not (math.isfinite(v) and 0 <= v <= 1):
                raise ValueError(f"{name} must be in [0, 1], got {v}")
        for name, v in (("agreement_tau_s", agreement_tau_s), ("agreement_strength", agreement_strength),
                        ("agreement_power", agreement_power), ("face_confirm_s", face_confirm_s)):
            if not (math.isfinite(v) and v >= 0):
                raise ValueError(f"{name} must be >= 0, got {v}")
        if not (math.isfinite(agreement_reference) and 0 < agreement_reference <= 1):
            raise ValueError(f"agreement_reference must be in (0, 1], got {agreement_reference}")
        if smoothing_filter not in SMOOTHING_FILTERS:
            raise ValueError(f"smoothing_filter must be one of {', '.join(SMOOTHING_FILTERS)}, "
                             f"got {smoothing_filter!r}")
        for name, v in (("hmm_switch_rate", hmm_switch_rate), ("hmm_evidence_rate", hmm_evidence_rate)):
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be > 0, got {v}")
        if voice_to not in ("primary", "all"):
            raise ValueError(f"voice_to must be 'primary' or 'all', got {voice_to!r}")
        if pool not in POOLS:
            raise ValueError(f"pool must be one of {', '.join(POOLS)}, got {pool!r}")
        if fusion_mode not in FUSION_MODES:
            raise ValueError(f"fusion_mode must be one of {', '.join(FUSION_MODES)}, got {fusion_mode!r}")
        if fusion_mode == "model" and model is None:
            raise ValueError("fusion_mode 'model' needs a fusion model")
        self.model = model if fusion_mode != "average" else None
        self.fusion_mode = "model" if self.model is not None else "average"
        self.window_s = float(window_s)
        self.stale_s = float(stale_s)
        self.face_stale_s = float(face_stale_s) if face_stale_s is not None else min(self.window_s, self.stale_s)
        self.voice_stale_s = float(voice_stale_s) if voice_stale_s is not None else self.stale_s
        self.face_hold_s = min(float(face_hold_s), self.face_stale_s)
        self.voice_hold_s = min(float(voice_hold_s), self.voice_stale_s)
        self._legacy_voice = voice_stale_s is None  # overlap with [now - window_s, now] as before
        self._legacy_face = face_stale_s is None    # newest face only, weight term = top probability, as before
        self.smoothing_tau_s = float(smoothing_tau_s)
        self.forget_s = max(float(forget_s), self.face_stale_s, self.voice_stale_s)
        self.buffer_len = max(1, int(buffer_len))
        self.max_persons = max(1, int(max_persons))
        self.voice_to = voice_to
        self.conf_power = float(conf_power)
        self.ood_min_conf = float(ood_min_conf)
        self.ood_weight = float(ood_weight)
        self.unsure_weight = float(unsure_weight)
        self.voice_unsure_threshold = float(voice_unsure_threshold)
        self.model_min_weight = float(model_min_weight)
        self.voice_prior = float(voice_prior)
        self.switch_margin = float(switch_margin)
        self.min_dwell_s = float(min_dwell_s)
        self.fast_switch_margin = float(fast_switch_margin)
        self.voice_switch_margin = float(voice_switch_margin)
        self.pool = pool
        self.smoothing_filter = smoothing_filter
        self.hmm_switch_rate = float(hmm_switch_rate)
        self.hmm_evidence_rate = float(hmm_evidence_rate)
        self.voice_face_change_weight = float(voice_face_change_weight)
        self.agreement_tau_s = float(agreement_tau_s)
        self.agreement_reference = float(agreement_reference)
        self.agreement_strength = float(agreement_strength)
        self.agreement_power = float(agreement_power)
        self.face_change_weight = float(face_change_weight)
        self.face_confirm_s = float(face_confirm_s)
        self._agree = _NO_AGREEMENT
        self._face_change: Dict[str, _FaceChange] = {}
        self._face_run: Dict[str, _FaceChange] = {}  # the face's change detector on its newest frames (face_hold_s)
        self._faces: Dict[str, Deque[FaceObs]] = {}
        self._voice: Deque[VoiceObs] = collections.deque(maxlen=self.buffer_len)
        self._smooth: Dict[str, _Smoother] = {}
        self._last_now: Optional[float] = None
        self._last_primary: Optional[str] = None

    # -- input ----------------------------------------------------------------------------------------------------
    @property
    def face_horizon(self) -> float:
        return self.face_stale_s

    @property
    def keep_s(self) -> float:
        return max(self.window_s, self.face_stale_s, self.voice_stale_s)

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
                  voice_activity: bool = True, unsure: Optional[bool] = None) -> Optional[str]:
        """Add one voice segment.  Returns a warning (embedding size mismatch) or None.

        Segments without voice activity carry no emotion evidence and are ignored by ``estimate``.  ``unsure``: the
        voice node's flag (None: top probability below ``voice_unsure_threshold``)."""
        t0 = _finite("voice start", t_start)
        t1 = _finite("voice end", t_end)
        if t1 < t0:
            raise InputError(f"voice segment ends ({t1}) before it starts ({t0})")
        p = _probs("voice probabilities", probs)
        e = _embedding("voice embedding", embedding)
        warning = self._check_dim("voice", e)
        if warning:
            e = None
        if unsure is None:
            unsure = float(p.max()) < self.voice_unsure_threshold
        self._voice.append(VoiceObs(t0, t1, p, e, bool(voice_activity), bool(unsure)))
        return warning

    def reset(self) -> None:
        self._faces.clear()
        self._voice.clear()
        self._smooth.clear()
        self._face_change.clear()
        self._face_run.clear()
        self._agree = _NO_AGREEMENT
        self._last_now = None
        self._last_primary = None

    @property
    def persons(self) -> List[str]:
        return list(self._faces)

    # -- alignment ------------------------------------------------------------------------------------------------
    def _recency(self, age: float, hold: float, stale: float) -> float:
        age = max(age, 0.0)
        if age <= hold:
            return 1.0
        return float(np.clip(1.0 - (age - hold) / max(stale - hold, 1e-6), _MIN_FRESHNESS, 1.0))

    def _fresh_face(self, pid: str, now: float, changed_at: float = -math.inf) -> Optional[_Evidence]:
        """Recency-weighted average of the person's face observations within ``face_stale_s``; frames from before
        ``changed_at`` (the face's last confirmed change, :meth:`_face_run_at`) count ``face_change_weight`` times."""
        obs = [o for o in self._faces.get(pid, ()) if -self.window_s <= now - o.t <= self.face_stale_s]
        if not obs:
            return None
        newest = max(obs, key=lambda o: o.t)
        if self._legacy_face:
            obs = [newest]
        w = np.asarray([self._recency(now - o.t, self.face_hold_s, self.face_stale_s)
                        * (self.face_change_weight if o.t < changed_at else 1.0) for o in obs])
        if w.sum() <= 0:  # only frames from before the change, and those discounted to nothing: the newest alone
            w = np.asarray([float(o is newest) for o in obs])
        p = (w[:, None] * np.stack([o.probs for o in obs])).sum(0) / w.sum()
        emb = newest.embedding if newest.embedding is not None else _mean_embedding(zip(w, (o.embedding for o in obs)))
        return _Evidence(p.astype(np.float32), newest.probs, emb, newest.t,
                         self._recency(now - newest.t, self.face_hold_s, self.face_stale_s))

    def _fresh_voice(self, now: float, face_changed_at: float = -math.inf) -> Optional[_Evidence]:
        """Voice evidence: segments ending within ``voice_stale_s``, weighted by recency x duration (legacy: by
        their overlap with [now - window_s, now]); segments that ended before ``face_changed_at`` (the person's face
        has shown another emotion since) count ``voice_face_change_weight`` times (not in the legacy overlap mode)."""
        lo = now - self.window_s
        base, weights, segs = [], [], []  # each segment's weight before and after the face-change discount
        for seg in self._voice:
            age = now - seg.t_end
            if not seg.voice_activity or age > self.voice_stale_s or seg.t_start > now:
                continue
            if self._legacy_voice:
                overlap = min(seg.t_end, now) - max(seg.t_start, lo)
                if overlap < 0:
                    continue
                base.append(max(overlap, 1e-3))
                weights.append(base[-1])
            else:
                base.append(self._recency(age, self.voice_hold_s, self.voice_stale_s)
                            * max(seg.t_end - seg.t_start, 0.1))
                weights.append(base[-1] * (self.voice_face_change_weight if seg.t_end < face_changed_at else 1.0))
            segs.append(seg)
        if not weights or sum(weights) <= 0:
            return None
        # the discount lowers the voice's weight against the face, not only its mix of segments: the voice evidence's
        # recency is scaled by the discounted weights' share of the undiscounted ones (exactly 1 without a discount)
        scale = float(sum(weights) / sum(base))
        w = np.asarray(weights, dtype=np.float64)
        w /= w.sum()
        p = (w[:, None] * np.stack([s.probs for s in segs])).sum(0).astype(np.float32)
        newest = max(segs, key=lambda s: s.t_end)
        unsure = float(sum(wi for wi, s in zip(w, segs) if s.unsure))
        return _Evidence(p, newest.probs, _mean_embedding(zip(w, (s.embedding for s in segs))), newest.t_end,
                         scale * self._recency(now - newest.t_end, self.voice_hold_s, self.voice_stale_s), unsure)

    def _prune(self, now: float) -> None:
        keep = self.keep_s
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
        for table in (self._face_change, self._face_run):
            for pid in list(table):
                if pid not in self._faces:
                    del table[pid]

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
        self._face_change.clear()
        self._face_run.clear()
        self._agree = _NO_AGREEMENT

    # -- fusion ---------------------------------------------------------------------------------------------------
    @property
    def voice_agreement(self) -> float:
        """The running face-voice agreement: the share of the recent voice segments whose top emotion the face
        showed while they were spoken (face-confidence weighted, forgetting with ``agreement_tau_s``), starting from
        ``agreement_reference`` with the weight of ``agreement_strength`` segments."""
        a, w, _ = self._agree
        return (a + self.agreement_strength * self.agreement_reference) / (w + self.agreement_strength) \
            if w + self.agreement_strength > 0 else self.agreement_reference

    @property
    def voice_trust(self) -> float:
        """The voice's weight factor from the agreement: ``min(1, agreement / agreement_reference) **
        agreement_power`` (1 while there is no history, or with ``agreement_tau_s`` 0)."""
        if self.agreement_tau_s <= 0:
            return 1.0
        return min(1.0, self.voice_agreement / self.agreement_reference) ** self.agreement_power

    def _score_agreement(self, pid: Optional[str], now: float) -> None:
        """Count each voice segment that has ended once: did the primary person's face, over the segment, show the
        segment's top emotion? Weighted by the face's confidence term (an unsure face says nothing about the voice)."""
        if self.agreement_tau_s <= 0:
            return
        faces = self._faces.get(pid, ()) if pid is not None else ()
        for seg in self._voice:
            if seg.scored or seg.t_end > now:
                continue
            seg.scored = True
            if not seg.voice_activity:
                continue
            obs = [o.probs for o in faces if seg.t_start <= o.t <= seg.t_end]
            if not obs:
                continue
            fp = np.mean(obs, axis=0)
            w = _above_chance(float(fp.max()), 1.0 / NUM_LABELS)
            agree = float(int(np.argmax(fp)) == int(np.argmax(seg.probs)))
            a, ws, t = self._agree
            decay = math.exp(-max(seg.t_end - t, 0.0) / self.agreement_tau_s) if math.isfinite(t) else 0.0
            self._agree = (a * decay + w * agree, ws * decay + w, max(seg.t_end, t))

    def reliability(self, probs: np.ndarray, recency: float, unsure: float = 0.0) -> float:
        """Weight of one modality's evidence before normalisation (see the module docstring)."""
        c = float(np.max(probs))
        term = _above_chance(c, 0.0 if self._legacy_face else 1.0 / NUM_LABELS)
        w = recency * (term ** self.conf_power if self.conf_power > 0 else 1.0)
        if c < self.ood_min_conf:
            w *= self.ood_weight
        return w * (1.0 - unsure * (1.0 - self.unsure_weight))

    def average(self, face_probs: Optional[np.ndarray], voice_probs: Optional[np.ndarray],
                voice_unsure: Optional[bool] = None) -> np.ndarray:
        """The reliability-weighted average of one fresh face and one fresh voice (either may be None), as
        ``estimate`` makes it for evidence of age 0 (no smoothing): for paired-sample evaluations."""
        face = None if face_probs is None else _Evidence(_probs("face probabilities", face_probs), None, None, 0.0, 1.0)
        voice = None
        if voice_probs is not None:
            vp = _probs("voice probabilities", voice_probs)
            unsure = float(vp.max()) < self.voice_unsure_threshold if voice_unsure is None else voice_unsure
            voice = _Evidence(vp, None, None, 0.0, 1.0, float(unsure))
        if face is None and voice is None:
            raise InputError("fusion needs at least one modality")
        model, self.model = self.model, None
        try:
            return self._fuse(face, voice)[0]
        finally:
            self.model = model

    def _fuse(self, face: Optional[_Evidence], voice: Optional[_Evidence]):
        """-> raw probs, face_weight, voice_weight, mode."""
        fw = self.reliability(face.probs, face.recency) if face is not None else 0.0
        vw = (self.voice_prior * self.voice_trust * self.reliability(voice.probs, voice.recency, voice.unsure)
              if voice is not None else 0.0)
        total = fw + vw
        if total > 1e-9:
            fw, vw = fw / total, vw / total
        else:  # both at chance (or weighted to nothing): equal shares of what is there
            fw, vw = float(face is not None), float(voice is not None)
            s = fw + vw
            fw, vw = fw / s, vw / s

        face_emb = face.embedding if face is not None else None
        voice_emb = voice.embedding if voice is not None else None
        if self.model is not None:
            use_f = face_emb is not None and (fw >= self.model_min_weight or voice is None)
            use_v = voice_emb is not None and (vw >= self.model_min_weight or face is None)
            if use_f or use_v:
                p_model = self.model.predict(face_emb if use_f else None, voice_emb if use_v else None)
                # modalities present but without a usable embedding are mixed in at probability level
                rest = []
                if face is not None and face_emb is None:
                    rest.append((fw, face.probs))
                if voice is not None and voice_emb is None:
                    rest.append((vw, voice.probs))
                if not rest:
                    return p_model.astype(np.float32), fw, vw, "model"
                w_model = 1.0 - sum(w for w, _ in rest)
                p = w_model * p_model + sum(w * q for w, q in rest)
                return (p / p.sum()).astype(np.float32), fw, vw, "model+probs"
        parts = []
        if face is not None:
            parts.append((fw, face.probs))
        if voice is not None:
            parts.append((vw, voice.probs))
        if self.pool == "log":
            # log-linear pool (weighted geometric mean, a product of experts): each modality can veto what it finds
            # implausible, and a modality's weight scales how sharply it does so
            logp = sum(w * np.log(np.maximum(q, PROB_FLOOR)) for w, q in parts)
            p = np.exp(logp - np.max(logp))
        else:
            p = sum(w * q for w, q in parts)
        return (p / p.sum()).astype(np.float32), fw, vw, "probs"

    def _smooth_probs(self, key: str, raw: np.ndarray, now: float, voice_share: float = 0.0,
                      face_top: Optional[int] = None) -> Tuple[np.ndarray, str, bool]:
        """Exponential smoothing (or the HMM filter), then the hysteresis on the reported emotion -> (probs, emotion,
        changed). ``voice_share``: the voice's weight in this estimate; ``face_top``: the face evidence's top emotion
        (None: no face). A change to an emotion other than ``face_top`` needs ``voice_switch_margin x voice_share``
        more lead."""
        s = self._smooth.get(key)
        if s is None or (self.smoothing_tau_s <= 0 and self.smoothing_filter == "exp"):
            p = raw.copy()
        elif now <= s.t:
            p = s.probs.copy() if now == s.t else raw.copy()  # same instant: keep; time went back: restart
        elif self.smoothing_filter == "hmm":
            p = self._hmm_step(s.probs, raw, now - s.t)
        else:
            a = 1.0 - math.exp(-(now - s.t) / self.smoothing_tau_s)
            p = (s.probs + a * (raw - s.probs)).astype(np.float32)
        top = LABELS[int(np.argmax(p))]
        if s is None:
            self._smooth[key] = _Smoother(p, now, top, now)
            return p, top, True
        emotion, cand, since = s.emotion, s.candidate, s.candidate_since
        if top == emotion:
            cand = None
        elif (lead := p[LABELS.index(top)] - p[LABELS.index(emotion)]) >= self.switch_margin + (
                0.0 if face_top == LABELS.index(top) else self.voice_switch_margin * voice_share):
            if cand != top:
                cand, since = top, now
            if now - since >= self.min_dwell_s - _TIME_EPS or lead >= self.fast_switch_margin:
                emotion, cand = top, None
        else:
            cand = None
        changed = emotion != s.emotion
        self._smooth[key] = _Smoother(p, now, emotion, now, cand, since)
        return p, emotion, changed

    def _hmm_step(self, prev: np.ndarray, raw: np.ndarray, dt: float) -> np.ndarray:
        """One forward step (``dt`` > 0 s) of an HMM over the emotions: the person stays in their emotion with
        probability ``exp(-hmm_switch_rate * dt)`` and otherwise jumps to any (uniform); the fused probabilities of
        this step are evidence counted ``hmm_evidence_rate * dt`` times (per second, so the call rate does not change
        the filter). Clear evidence overturns the posterior in a few tenths of a second; flicker is absorbed."""
        stay = math.exp(-self.hmm_switch_rate * dt)
        prior = stay * prev.astype(np.float64) + (1.0 - stay) / NUM_LABELS
        logp = np.log(np.maximum(prior, 1e-12)) + self.hmm_evidence_rate * dt * np.log(
            np.clip(raw.astype(np.float64), 1e-4, 1.0))
        logp -= logp.max()
        p = np.exp(logp)
        return (p / p.sum()).astype(np.float32)

    def _face_changed_at(self, pid: str, face: _Evidence, now: float) -> float:
        """When the person's face evidence last changed its top emotion, counted once the new one has held for
        ``min_dwell_s`` (-inf: not since the person appeared)."""
        top = int(np.argmax(face.probs))
        fc = self._face_change.get(pid)
        if fc is None:
            self._face_change[pid] = _FaceChange(top, -math.inf)
            return -math.inf
        fc.update(top, now, now, self.min_dwell_s)
        return fc.changed_at

    def _face_run_at(self, pid: str, now: float) -> float:
        """The face's own change detector, on its newest frames (those within ``face_hold_s`` of the newest): when
        their averaged top emotion changes and the new one holds for ``face_confirm_s`` (measured from the oldest of
        the frames that first showed it), the change is confirmed -> when it began to show (-inf before any change).
        Unlike the voice discount's detector (:meth:`_face_changed_at`, on the recency-weighted evidence), it does not
        wait for the older frames to be outweighed."""
        obs = [o for o in self._faces.get(pid, ()) if o.t <= now + _TIME_EPS]
        if not obs:
            return -math.inf
        t_new = max(o.t for o in obs)
        recent = [o for o in obs if t_new - o.t <= self.face_hold_s + _TIME_EPS]
        top = int(np.argmax(np.mean([o.probs for o in recent], axis=0)))
        run = self._face_run.get(pid)
        if run is None:
            self._face_run[pid] = _FaceChange(top, -math.inf)
            return -math.inf
        run.update(top, t_new, min(o.t for o in recent), self.face_confirm_s)
        return run.changed_at

    def _hand_over(self, pid: str) -> None:
        """Keep the primary stream continuous across face <-> voice-only switches (the same person, presumably, who
        turned away or came back): the new key's smoothing starts from the previous primary's state."""
        prev, self._last_primary = self._last_primary, pid
        if prev is None or prev == pid or "" not in (prev, pid):
            return
        src = self._smooth.get(prev)
        dst = self._smooth.get(pid)
        if src is not None and (dst is None or dst.t < src.t):
            self._smooth[pid] = _Smoother(src.probs.copy(), src.t, src.emotion, src.last_seen, src.candidate,
                                          src.candidate_since)

    def estimate(self, now: float) -> List[FusedState]:
        """Fused states at time ``now``: one per person with fresh face evidence (primary first), or a single
        voice-only state when no face is fresh but voice is; [] when nothing is fresh."""
        now = _finite("now", now)
        if self._last_now is not None and now < self._last_now - self.keep_s:
            self._jumped_back(now)
        self._last_now = now
        self._prune(now)

        faces = []
        use_runs = not self._legacy_face and self.face_change_weight < 1.0
        for pid in self._faces:
            ev = self._fresh_face(pid, now, self._face_run_at(pid, now) if use_runs else -math.inf)
            if ev is not None:
                faces.append((pid, ev, self._faces[pid][-1].box_area))
        faces.sort(key=lambda f: (-f[2], f[0]))
        self._score_agreement(faces[0][0] if faces else None, now)
        # the primary's last face change discounts older voice (voice_to all: the others get the same voice)
        changed_at = (self._face_changed_at(faces[0][0], faces[0][1], now)
                      if faces and self.voice_face_change_weight < 1.0 else -math.inf)
        voice = self._fresh_voice(now, changed_at)
        out: List[FusedState] = []
        if faces:
            jobs = [(pid, f, voice if (i == 0 or self.voice_to == "all") else None, i == 0)
                    for i, (pid, f, _) in enumerate(faces)]
        elif voice is not None:
            jobs = [("", None, voice, True)]
        else:
            jobs = []
        for pid, face, v, primary in jobs:
            if primary:
                self._hand_over(pid)
            raw, fw, vw, mode = self._fuse(face, v)
            p, emotion, changed = self._smooth_probs(pid, raw, now, vw,
                                                     None if face is None else int(np.argmax(face.probs)))
            val, aro = valence_arousal(p)
            stamps = ([face.t] if face is not None else []) + ([v.t] if v is not None else [])
            out.append(FusedState(
                stamp=max(stamps), person_id=pid, primary=primary, probs=p, emotion=emotion,
                confidence=float(p[LABELS.index(emotion)]), valence=val, arousal=aro, face_weight=float(fw),
                voice_weight=float(vw), changed=changed, mode=mode, raw_probs=raw,
                face_probs=None if face is None else face.newest, voice_probs=None if v is None else v.probs,
                face_age=None if face is None else now - face.t, voice_age=None if v is None else now - v.t,
                voice_unsure=bool(v is not None and v.unsure >= 0.5)))
        return out

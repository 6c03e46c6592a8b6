"""Audio preparation and log-mel features for the speech-emotion model.

The same functions serve the voice node, training and evaluation:
``to_mono_16k`` (downmix + resample), ``loudness_normalise`` (speech corpora differ
by > 20 dB), ``trim_silence`` and ``logmel``.
"""
from __future__ import annotations

from dataclasses import dataclass, asdict
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import InputError

SAMPLE_RATE = 16000


@dataclass(frozen=True)
class FeatureSpec:
    sample_rate: int = SAMPLE_RATE
    n_fft: int = 400          # 25 ms
    hop: int = 160            # 10 ms
    n_mels: int = 64
    fmin: float = 50.0
    fmax: float = 8000.0
    target_dbfs: float = -23.0
    max_gain_db: float = 40.0
    # Per-utterance mean normalisation of each mel band (cepstral-mean-style): removes a fixed channel
    # (microphone, room colouration, EQ) from the log-mel. Needs no running statistics: each segment the
    # node classifies is normalised by itself. Off in checkpoints from before it existed.
    utterance_cmn: bool = False
    # Speaker normalisation (on top of ``utterance_cmn``): > 0 means the model was trained to see each utterance's
    # mean spectrum relative to the running mean of the last ``speaker_window`` utterances of its speaker (the
    # utterance itself included; :class:`SpeakerNormaliser`), which removes the channel as the per-utterance mean
    # does but keeps how this utterance differs from the speaker's usual voice (tilt, brightness). 0: per utterance.
    speaker_window: int = 0

    def to_dict(self) -> Dict[str, float]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Dict) -> "FeatureSpec":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


_MEL_CACHE: Dict[Tuple, np.ndarray] = {}


def _hz_to_mel(f: np.ndarray) -> np.ndarray:
    """Slaney's mel scale (linear below 1 kHz, logarithmic above), as librosa's default."""
    f = np.asarray(f, dtype=np.float64)
    f_sp = 200.0 / 3
    mels = f / f_sp
    min_log_hz, min_log_mel, logstep = 1000.0, 1000.0 / f_sp, np.log(6.4) / 27.0
    return np.where(f >= min_log_hz, min_log_mel + np.log(np.maximum(f, 1e-10) / min_log_hz) / logstep, mels)


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    f_sp = 200.0 / 3
    min_log_hz, min_log_mel, logstep = 1000.0, 1000.0 / f_sp, np.log(6.4) / 27.0
    return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), f_sp * m)


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float) -> np.ndarray:
    """(n_mels, 1 + n_fft // 2) triangular filters, Slaney-normalised: the same matrix as
    ``librosa.filters.mel`` with its defaults, without importing librosa (and numba) at run time."""
    fftfreqs = np.fft.rfftfreq(n_fft, 1.0 / sample_rate)
    mel_f = _mel_to_hz(np.linspace(_hz_to_mel(fmin), _hz_to_mel(fmax), n_mels + 2))
    fdiff = np.diff(mel_f)
    ramps = mel_f[:, None] - fftfreqs[None, :]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_f[2:n_mels + 2] - mel_f[:n_mels]))[:, None]
    return weights.astype(np.float32)


def _mel_basis(spec: FeatureSpec) -> np.ndarray:
    key = (spec.sample_rate, spec.n_fft, spec.n_mels, spec.fmin, spec.fmax)
    if key not in _MEL_CACHE:
        _MEL_CACHE[key] = mel_filterbank(spec.sample_rate, spec.n_fft, spec.n_mels, spec.fmin, spec.fmax)
    return _MEL_CACHE[key]


def check_finite(x: np.ndarray, what: str = "audio") -> np.ndarray:
    """Replace NaN/Inf by 0 and report how many there were (InputError if all are bad)."""
    bad = ~np.isfinite(x)
    if bad.any():
        if bad.all():
            raise InputError(f"{what}: all {x.size} samples are NaN or Inf")
        x = np.where(bad, 0.0, x).astype(np.float32)
    return x


def to_mono_16k(x: np.ndarray, sample_rate: int, target: int = SAMPLE_RATE) -> np.ndarray:
    """(n,) or (n, channels) float audio at any rate -> float32 mono at ``target`` Hz."""
    x = np.asarray(x)
    if x.ndim == 2:
        if x.shape[1] == 0:
            raise InputError("audio has 0 channels")
        x = x.mean(axis=1)
    elif x.ndim != 1:
        raise InputError(f"audio must be 1-D or 2-D (samples, channels), got shape {x.shape}")
    if not sample_rate or sample_rate < 1000 or sample_rate > 768000:
        raise InputError(f"unsupported sample rate {sample_rate} Hz")
    x = check_finite(x.astype(np.float32, copy=False))
    if sample_rate != target and x.size:
        import soxr
        x = soxr.resample(x, sample_rate, target, quality="HQ").astype(np.float32)
    return np.clip(x, -1.0, 1.0)


def frame_rms_db(x: np.ndarray, frame: int = 400, hop: int = 160) -> np.ndarray:
    if x.size < frame:
        x = np.pad(x, (0, frame - x.size))
    n = 1 + (x.size - frame) // hop
    idx = np.arange(frame)[None, :] + hop * np.arange(n)[:, None]
    rms = np.sqrt(np.mean(x[idx] ** 2, axis=1) + 1e-12)
    return 20 * np.log10(rms + 1e-12)


def loudness_normalise(x: np.ndarray, spec: FeatureSpec = FeatureSpec()) -> np.ndarray:
    """Scale so that the loud half of the frames sits at ``target_dbfs`` (gain capped)."""
    if x.size == 0:
        return x
    db = frame_rms_db(x)
    active = db[db >= np.percentile(db, 50)]
    level = 10 * np.log10(np.mean(10 ** (active / 10)) + 1e-12)
    gain_db = float(np.clip(spec.target_dbfs - level, -spec.max_gain_db, spec.max_gain_db))
    return np.clip(x * (10 ** (gain_db / 20)), -1.0, 1.0).astype(np.float32)


def trim_silence(x: np.ndarray, top_db: float = 35.0, pad_s: float = 0.1,
                 sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Cut leading/trailing frames more than ``top_db`` below the loudest frame."""
    if x.size == 0:
        return x
    db = frame_rms_db(x)
    keep = np.flatnonzero(db > db.max() - top_db)
    if keep.size == 0:
        return x
    pad = int(pad_s * sample_rate)
    start = max(0, keep[0] * 160 - pad)
    end = min(x.size, keep[-1] * 160 + 400 + pad)
    return x[start:end]


def logmel(x: np.ndarray, spec: FeatureSpec = FeatureSpec()) -> np.ndarray:
    """float32 mono at ``spec.sample_rate`` -> log-mel (T, n_mels), natural log of power."""
    if x.size < spec.n_fft:
        x = np.pad(x, (0, spec.n_fft - x.size))
    window = np.hanning(spec.n_fft + 1)[:-1].astype(np.float32)
    n = 1 + (x.size - spec.n_fft) // spec.hop
    idx = np.arange(spec.n_fft)[None, :] + spec.hop * np.arange(n)[:, None]
    frames = x[idx] * window
    power = np.abs(np.fft.rfft(frames, n=spec.n_fft, axis=1)) ** 2
    mel = power.astype(np.float32) @ _mel_basis(spec).T
    return np.log(mel + 1e-6).astype(np.float32)


def utterance_features(x: np.ndarray, spec: FeatureSpec = FeatureSpec(), normalise: bool = True,
                       reference: Optional[Callable[[np.ndarray], np.ndarray]] = None,
                       return_band_mean: bool = False):
    """16 kHz mono utterance -> loudness-normalised log-mel (T, n_mels).

    With ``spec.utterance_cmn`` each band's speech-frame mean is removed; ``reference``, when given, maps those
    band means (n_mels,) to the offset added back afterwards: the band means minus the speaker's running reference
    (``SpeakerNormaliser.offset``), for models with ``spec.speaker_window > 0``.  ``return_band_mean``: return
    ``(features, band means (n_mels,))`` (the band means of the log-mel before any normalisation of the bands).
    """
    if normalise:
        x = loudness_normalise(x, spec)
    f = logmel(x, spec)
    cmn = spec.utterance_cmn and f.shape[0] > 1
    bm = speech_band_mean(f) if (cmn or return_band_mean) else None
    if cmn:
        f = f - bm
        if reference is not None:
            f = f + np.asarray(reference(bm[0]), np.float32).reshape(1, -1)
    f = f.astype(np.float32)
    return (f, bm[0]) if return_band_mean else f


def speech_band_mean(f: np.ndarray) -> np.ndarray:
    """Each mel band's mean over the utterance's speech frames (frames within 40 dB of the loudest; silence
    would otherwise pull the mean towards the noise floor): (T, n_mels) -> (1, n_mels)."""
    energy = np.log(np.exp(f).sum(1) + 1e-6)
    speech = energy > energy.max() - np.log(10 ** 4.0)
    if speech.sum() < 2:
        speech = np.ones_like(speech)
    return f[speech].mean(0, keepdims=True).astype(np.float32)


def utterance_mean_normalise(f: np.ndarray) -> np.ndarray:
    """Subtract each mel band's mean over the utterance's speech frames (:func:`speech_band_mean`)."""
    return (f - speech_band_mean(f)).astype(np.float32)


def utterance_band_mean(x: np.ndarray, spec: FeatureSpec = FeatureSpec()) -> np.ndarray:
    """16 kHz mono utterance -> (n_mels,) speech-frame mean of its loudness-normalised log-mel: what
    :class:`SpeakerNormaliser` averages."""
    return utterance_features(x, spec, return_band_mean=True)[1]


class SpeakerNormaliser:
    """Running reference of the current speaker: for each kind of per-utterance vector (``key``: ``"bands"``, the
    band means of :func:`utterance_band_mean`, for models with ``spec.speaker_window > 0``; a member's pooled encoder
    states, :class:`~emotion_ros.core.voice.whisper.WhisperSpeakerMember`), the mean of that vector over the last
    ``window`` utterances, the one being classified included.

    At start-up (no history) the reference is the utterance's own vector, so the first utterance is normalised
    exactly as per-utterance normalisation does; the estimate grows to ``window`` utterances after that.  A gap of
    more than ``reset_after_s`` seconds between utterances (a new person, most likely) or :meth:`reset` starts every
    reference again.  Partial results (windows of an utterance still going on) use the history but are not added
    to it.
    """

    def __init__(self, window: int = 10, reset_after_s: float = 60.0):
        if int(window) < 1:
            raise ValueError(f"speaker window must be >= 1 utterance, got {window}")
        self.window = int(window)
        self.reset_after_s = float(reset_after_s)
        self._history: Dict[str, List[np.ndarray]] = {}
        self._last_t: Optional[float] = None
        self.resets = 0

    def __len__(self) -> int:
        """Utterances the reference holds (the most of any key)."""
        return max((len(h) for h in self._history.values()), default=0)

    def held(self, key: str = "bands") -> int:
        """Utterances the reference of ``key`` holds."""
        return len(self._history.get(key, ()))

    def reset(self) -> None:
        if len(self):
            self.resets += 1
        self._history = {}
        self._last_t = None

    def offset(self, band_mean: np.ndarray, t: Optional[float] = None, commit: bool = True, key: str = "bands",
               window: Optional[int] = None) -> np.ndarray:
        """The vector ``band_mean`` (for ``key``) of the utterance ending at ``t`` -> it minus the reference;
        ``window``: that key's window (default: the normaliser's)."""
        m = np.asarray(band_mean, np.float32).reshape(-1)
        w = self.window if window is None else int(window)
        if t is not None and self._last_t is not None and (t - self._last_t > self.reset_after_s
                                                           or t < self._last_t - self.reset_after_s):
            self.reset()
        history = self._history.get(key, [])
        if history and history[-1].shape != m.shape:
            raise ValueError(f"speaker reference {key!r} holds vectors of {history[-1].shape[0]} values, "
                             f"got {m.shape[0]}")
        recent = history[-(w - 1):] if w > 1 else []
        ref = np.mean(np.stack(recent + [m]), axis=0)
        if commit:
            self._history[key] = (recent + [m])[-w:]
            if t is not None:
                self._last_t = float(t)
        return (m - ref).astype(np.float32)


class NewPersonWatch:
    """Who is in front of the robot, for the speaker reference: the **primary** face (the largest, as the fusion node
    attaches the voice to it) of each face array; when a face track other than the one the reference belongs to has
    been the primary one for ``hold_s`` without interruption, :meth:`update` returns True once (start the reference
    again: a new person is speaking). The first person seen is adopted without a reset; arrays without faces change
    nothing. Measured (models/voice.md, "A new person on the same stream"): carrying another person's reference
    across microphones costs 6 points on the new person's first ten utterances, starting again ~1 point when the
    person did not change."""

    def __init__(self, hold_s: float = 1.0):
        if not float(hold_s) >= 0:
            raise ValueError(f"new person hold must be >= 0 s, got {hold_s}")
        self.hold_s = float(hold_s)
        self.current: Optional[str] = None
        self._candidate: Optional[str] = None
        self._since = 0.0

    def update(self, faces: Sequence[Tuple[str, float]], t: float) -> bool:
        """``faces``: (track id, area) of one face array; ``t``: its time (s) -> whether to start the reference
        again."""
        faces = [(str(i), float(a)) for i, a in faces if str(i)]
        if not faces:
            return False
        primary = max(faces, key=lambda f: f[1])[0]
        if self.current is None:
            self.current = primary
            return False
        if primary == self.current:
            self._candidate = None
            return False
        if primary != self._candidate or t < self._since:
            self._candidate, self._since = primary, float(t)
        if t - self._since >= self.hold_s:
            self.current, self._candidate = primary, None
            return True
        return False


def load_audio(path: str, target: int = SAMPLE_RATE) -> np.ndarray:
    """Any file soundfile reads (WAV, FLAC, OGG, ...), any rate, mono or stereo -> mono 16 kHz."""
    import soundfile as sf
    try:
        data, sr = sf.read(path, dtype="float32", always_2d=True)
    except Exception as exc:
        raise InputError(f"cannot read audio file {path!r}: {exc}") from exc
    return to_mono_16k(data, sr, target)

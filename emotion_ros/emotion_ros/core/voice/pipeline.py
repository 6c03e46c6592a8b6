"""Voice pipeline: audio chunks at any rate / channel count -> utterances -> emotion probabilities + embedding.

``VoicePipeline.push(pcm, sample_rate, t_start)`` downmixes to mono, resamples to 16 kHz with a streaming
resampler (``soxr.ResampleStream``, one per continuous stream, so chunk borders leave no artefacts), feeds the
:class:`~emotion_ros.core.voice.segment.Segmenter` and runs the :class:`~emotion_ros.core.voice.model.VoiceModel`
on every segment it completes.  Time runs on the sample count from the stream's first ``t_start``; a chunk whose
``t_start`` is off by more than the segmenter's ``gap_tolerance_s`` (lost audio, a restart) ends the stream (the
resampler is drained, the open utterance closed) and starts a new one there; a change of sample rate with
continuous time only replaces the resampler.

Each segment is trimmed with :func:`~emotion_ros.core.voice.features.trim_silence` before the model sees it, as
training trims each clip (the model then loudness-normalises it).  A model trained with speaker normalisation
(``FeatureSpec.speaker_window``) gets the pipeline's running speaker reference (``VoicePipeline.speaker``) with
every segment; final utterances update it, partial windows only read it.

Offline: ``classify_file(path)`` / ``classify_wave(wave16k)`` run the same segmenter settings over a whole
recording (``emotion-eval``).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import List, NamedTuple, Optional

import numpy as np

from ..errors import InputError
from ..labels import LABELS
from .features import SAMPLE_RATE, load_audio, trim_silence
from .segment import Segment, Segmenter, segment_offline

__all__ = ["VoiceResult", "WaveResult", "VoicePipeline", "MIN_RATE", "MAX_RATE", "CLIP_LEVEL", "clipped_fraction"]

MIN_RATE = 8000
MAX_RATE = 96000
#: A sample this close to full scale (|x| >= CLIP_LEVEL of [-1, 1]) counts as clipped; below 1 so that the largest
#: positive code of every PCM format counts (S16: 32767/32768, U8: 127/128).
CLIP_LEVEL = 0.99


def clipped_fraction(pcm: np.ndarray, level: float = CLIP_LEVEL) -> float:
    """Fraction of the samples (all channels) of float audio in [-1, 1] at full scale (0 for an empty chunk)."""
    x = np.asarray(pcm)
    if x.size == 0:
        return 0.0
    return float(np.count_nonzero(np.abs(x) >= level)) / x.size


@dataclass
class VoiceResult:
    """Emotion of one segment (``partial``: a window of an utterance still going on)."""

    start_t: float
    end_t: float
    probs: np.ndarray = field(repr=False)
    embedding: np.ndarray = field(repr=False)
    partial: bool
    speech_ratio: float
    voice_activity: bool = True
    utterance: int = 0

    @property
    def label(self) -> str:
        return LABELS[int(np.argmax(self.probs))]

    @property
    def confidence(self) -> float:
        return float(np.max(self.probs))

    @property
    def duration(self) -> float:
        return self.end_t - self.start_t


class WaveResult(NamedTuple):
    """``classify_wave`` result: duration-weighted mean probabilities over the utterances found.

    ``n_segments == 0`` means no utterance was found and the probabilities are those of the whole wave after
    :func:`trim_silence` (``fallback`` is then True).
    """

    probs: np.ndarray
    n_segments: int

    @property
    def fallback(self) -> bool:
        return self.n_segments == 0


class VoicePipeline:
    """Streaming voice-emotion pipeline (see the module docstring).

    Counters: ``audio_s`` (seconds of 16 kHz audio pushed), ``processing_s`` (wall time spent in ``push``/``flush``),
    ``real_time_factor`` (their ratio), ``nonfinite_samples``, ``streams`` (streams started), ``gaps``
    (discontinuities met), ``n_results``.
    """

    def __init__(self, model, segmenter: Optional[Segmenter] = None, trim: bool = True, quality: str = "HQ",
                 speaker_reset_s: float = 60.0):
        self.model = model
        # Running reference spectrum of the speaker (models trained with FeatureSpec.speaker_window > 0; None
        # otherwise): one per pipeline, i.e. per audio stream; it outlives gaps and flushes, and starts again
        # after speaker_reset_s without an utterance (see SpeakerNormaliser).
        make = getattr(model, "speaker_normaliser", None)
        self.speaker = make(speaker_reset_s) if make is not None else None
        self.segmenter = segmenter if segmenter is not None else Segmenter()
        if self.segmenter.sample_rate != SAMPLE_RATE:
            raise ValueError(f"the segmenter must run at {SAMPLE_RATE} Hz")
        self.trim = trim
        self.quality = quality
        self.audio_s = 0.0
        self.processing_s = 0.0
        self.nonfinite_samples = 0
        self.streams = 0
        self.gaps = 0
        self.n_results = 0
        self._rs = None
        self._rate: Optional[int] = None
        self._anchor_t = 0.0
        self._n_in = 0
        self._n_out = 0

    # ------------------------------------------------------------------------------------------------ streaming
    @property
    def real_time_factor(self) -> float:
        return self.processing_s / self.audio_s if self.audio_s > 0 else 0.0

    def expected_t(self) -> Optional[float]:
        """Where the next chunk should start (None before the first chunk / after a flush)."""
        if self._rate is None:
            return None
        return self._anchor_t + self._n_in / self._rate

    def push(self, pcm: np.ndarray, sample_rate: int, t_start: float) -> List[VoiceResult]:
        """One chunk: float samples (n,) or (n, channels) in [-1, 1] at ``sample_rate`` (8-96 kHz) from ``t_start``.

        Returns the results of the segments this chunk completed (often none).  Raises InputError for bad input
        (shape, channels, rate, non-finite time); NaN/Inf samples become 0 and are counted.
        """
        t0 = time.perf_counter()
        x = np.asarray(pcm)
        if x.ndim == 1:
            x = x[:, None]
        if x.ndim != 2:
            raise InputError(f"audio chunk must be (n,) or (n, channels), got shape {x.shape}")
        if x.shape[1] == 0:
            raise InputError("audio chunk has 0 channels")
        try:
            rate = int(sample_rate)
        except (TypeError, ValueError):
            raise InputError(f"bad sample rate {sample_rate!r}") from None
        if not MIN_RATE <= rate <= MAX_RATE:
            raise InputError(f"unsupported sample rate {rate} Hz (supported: {MIN_RATE}-{MAX_RATE} Hz)")
        t_start = float(t_start)
        if not np.isfinite(t_start):
            raise InputError(f"non-finite chunk time {t_start}")
        x = x.astype(np.float32, copy=False)
        bad = ~np.isfinite(x)
        if bad.any():
            self.nonfinite_samples += int(bad.sum())
            x = np.where(bad, np.float32(0.0), x)
        mono = x[:, 0] if x.shape[1] == 1 else x.mean(axis=1, dtype=np.float32)
        mono = np.clip(mono, -1.0, 1.0)

        segs: List[Segment] = []
        expected = self.expected_t()
        if expected is not None:
            if abs(t_start - expected) > self.segmenter.gap_tolerance_s:
                self.gaps += 1
                segs += self._end_stream()          # discontinuity: close the utterance, restart timing
            elif rate != self._rate:
                segs += self._drain()               # same stream at a new rate: only the resampler changes
        if self._rate is None:
            self._start_stream(rate, t_start)
        segs += self._feed(self._resample(mono, last=False))
        self._n_in += mono.size
        out = self._classify(segs)
        self.processing_s += time.perf_counter() - t0
        return out

    def flush(self) -> List[VoiceResult]:
        """End of stream: drain the resampler, close the open utterance, classify what is left."""
        t0 = time.perf_counter()
        out = self._classify(self._end_stream())
        self.processing_s += time.perf_counter() - t0
        return out

    def reset(self) -> None:
        """Drop all buffered audio (no results), keep the counters."""
        self._rs = None
        self._rate = None
        self.segmenter.reset()

    def _start_stream(self, rate: int, t_start: float) -> None:
        import soxr
        self._rate = rate
        self._anchor_t = t_start
        self._n_in = self._n_out = 0
        self._rs = None if rate == SAMPLE_RATE else soxr.ResampleStream(rate, SAMPLE_RATE, 1, dtype="float32",
                                                                         quality=self.quality)
        self.streams += 1

    def _resample(self, mono: np.ndarray, last: bool) -> np.ndarray:
        if self._rs is None:
            return mono
        return np.asarray(self._rs.resample_chunk(mono, last=last), np.float32)

    def _feed(self, y: np.ndarray) -> List[Segment]:
        if y.size == 0:
            return []
        t = self._anchor_t + self._n_out / SAMPLE_RATE
        self._n_out += y.size
        self.audio_s += y.size / SAMPLE_RATE
        return self.segmenter.push(y, t)

    def _drain(self) -> List[Segment]:
        """Push what the resampler still holds; the next chunk starts a new resampler (the segmenter goes on)."""
        segs: List[Segment] = []
        if self._rate is not None:
            if self._rs is not None:
                segs += self._feed(self._resample(np.zeros(0, np.float32), last=True))
            self._rs = None
            self._rate = None
        return segs

    def _end_stream(self) -> List[Segment]:
        return self._drain() + self.segmenter.flush()

    # ------------------------------------------------------------------------------------------------ model
    def _classify(self, segs: List[Segment]) -> List[VoiceResult]:
        out = []
        for s in segs:
            wave = trim_silence(s.samples) if self.trim else s.samples
            probs, emb = self.model.predict(wave, self.speaker, s.end_t, not s.partial)
            out.append(VoiceResult(start_t=s.start_t, end_t=s.end_t, probs=np.asarray(probs, np.float32),
                                   embedding=np.asarray(emb, np.float32), partial=s.partial,
                                   speech_ratio=float(s.speech_ratio), voice_activity=s.speech_ratio > 0,
                                   utterance=s.utterance))
        self.n_results += len(out)
        return out

    # ------------------------------------------------------------------------------------------------ offline
    def classify_segments(self, segments: List[Segment]) -> List[VoiceResult]:
        return self._classify(list(segments))

    def segment_wave(self, wave16k: np.ndarray, finals_only: bool = True) -> List[Segment]:
        """Segment a whole 16 kHz mono recording with this pipeline's segmenter settings (fresh state)."""
        return segment_offline(np.asarray(wave16k, np.float32).reshape(-1), SAMPLE_RATE, finals_only=finals_only,
                               **self.segmenter.config)

    def classify_file(self, path: str, include_partial: bool = False) -> List[VoiceResult]:
        """Any audio file soundfile reads -> results per utterance (times from the start of the file).

        ``include_partial`` adds the sliding windows of long utterances.  Empty when no speech is found.
        """
        return self._classify(self.segment_wave(load_audio(path), finals_only=not include_partial))

    def classify_wave(self, wave16k: np.ndarray) -> WaveResult:
        """Whole 16 kHz mono recording -> (probabilities averaged over its utterances weighted by duration, count).

        When the segmenter finds no utterance, the whole wave after ``trim_silence`` is classified and
        ``n_segments`` is 0.  Raises InputError for an empty wave.
        """
        wave = np.asarray(wave16k, np.float32).reshape(-1)
        if wave.size == 0:
            raise InputError("classify_wave: empty audio")
        wave = np.where(np.isfinite(wave), wave, np.float32(0.0))
        results = self._classify(self.segment_wave(wave, finals_only=True))
        if not results:
            probs, _ = self.model.predict(trim_silence(wave), self.speaker)
            return WaveResult(np.asarray(probs, np.float32), 0)
        w = np.array([max(r.duration, 1e-3) for r in results], np.float64)
        probs = (np.stack([r.probs for r in results]).astype(np.float64) * w[:, None]).sum(0) / w.sum()
        return WaveResult(probs.astype(np.float32), len(results))

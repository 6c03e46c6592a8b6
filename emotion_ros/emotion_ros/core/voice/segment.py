"""Streaming utterance segmentation of 16 kHz mono audio (energy VAD with hysteresis and hangover).

Voice activity detection is **energy based** (no spectral or zero-crossing test): every ``frame_ms`` frame gets
its RMS level in dBFS and is compared with an adaptive noise floor.

* Noise floor: *minimum statistics*, the quietest frame of the last ``noise_window_s`` seconds (all frames, speech
  included: speech has pauses, and a steady sound that does not stop -- a fan, a hum -- is absorbed into the floor
  within ``noise_window_s``), never below ``min_floor_db`` so that digital silence or a very quiet line never
  triggers (a frame must reach at least ``min_floor_db + start_db_above_noise`` to start speech).  Known limit:
  after digital silence (a muted or gated microphone) the floor stays at ``min_floor_db`` for up to
  ``noise_window_s``; room noise between ``min_floor_db + stop_db_above_noise`` and ``+ start_db_above_noise``
  does not start an utterance then but can prolong one until the floor has caught up.
* Hysteresis: an utterance starts on a frame ``start_db_above_noise`` above the floor and goes on while frames stay
  ``stop_db_above_noise`` above it.
* Hangover: it ends once ``max_silence_s`` of quieter frames have passed.  Utterances whose speech (first loud frame
  to last active frame) is shorter than ``min_speech_s`` are discarded (clicks, knocks).
* Each utterance carries ``pre_roll_s`` of audio before the first loud frame and up to ``post_roll_s`` after the
  last active one.

What comes out (:class:`Segment`):

* **Windows** (``partial=True``): while an utterance goes on, once its speech is ``window_s`` long and then every
  ``hop_s``, the last ``window_s`` seconds.  Short utterances give no windows.
* **Final** (``partial=False``): when the utterance ends, the **whole utterance** (pre-roll to post-roll), which is
  what the voice model was trained on (whole trimmed clips).  Utterances are capped at ``max_utterance_s``: a longer
  stretch of speech is cut there into a final and a new utterance that starts right after it (contiguous; the
  continuation is subject to ``min_speech_s`` like any utterance).
* ``utterance``: a counter shared by an utterance's windows and its final.

Stream handling: ``push(samples, t_start)`` takes consecutive chunks; time runs on the sample count from the first
chunk.  A chunk whose ``t_start`` differs from where the previous one ended by more than ``gap_tolerance_s``
(default: one frame) is a discontinuity (lost audio, a restarted source, a clock jump back): the open utterance is
closed as it stands and timing restarts from the new ``t_start``.  NaN/Inf samples become 0 (counted in
``nonfinite_samples``); samples are clipped to [-1, 1] (clipped audio is just loud audio).  ``flush()`` closes the
open utterance (end of stream); the next ``push`` starts a new stream, keeping the noise floor.

:func:`segment_offline` runs the same code over a whole recording (used by ``emotion-eval`` and the bag evaluator).
"""
from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import Deque, Dict, List, Optional, Tuple

import numpy as np

from ..errors import InputError
from .features import SAMPLE_RATE

__all__ = ["Segment", "Segmenter", "segment_offline", "PARAM_TO_KWARG", "segmenter_kwargs"]

#: voice_node parameter (config/emotion.yaml) -> Segmenter keyword argument.
PARAM_TO_KWARG: Dict[str, str] = {
    "vad_frame_ms": "frame_ms",
    "vad_start_db": "start_db_above_noise",
    "vad_stop_db": "stop_db_above_noise",
    "vad_min_floor_db": "min_floor_db",
    "vad_noise_window_s": "noise_window_s",
    "min_speech_s": "min_speech_s",
    "max_silence_s": "max_silence_s",
    "pre_roll_s": "pre_roll_s",
    "post_roll_s": "post_roll_s",
    "window_s": "window_s",
    "hop_s": "hop_s",
    "max_utterance_s": "max_utterance_s",
    "gap_tolerance_s": "gap_tolerance_s",
}


def segmenter_kwargs(params: Dict[str, object]) -> Dict[str, float]:
    """voice_node parameters (e.g. ``config/emotion.yaml``'s ``voice_node.ros__parameters``) -> Segmenter kwargs.

    Names that are not segmenter settings are ignored; missing ones keep the Segmenter's defaults.
    """
    return {kw: float(params[name]) for name, kw in PARAM_TO_KWARG.items()
            if name in params and params[name] is not None}


@dataclass
class Segment:
    """A stretch of speech: ``samples`` float32 mono at the segmenter's rate covering [start_t, end_t)."""

    start_t: float
    end_t: float
    samples: np.ndarray = field(repr=False)
    partial: bool
    speech_ratio: float
    utterance: int = 0

    @property
    def duration(self) -> float:
        return self.end_t - self.start_t


class Segmenter:
    """Streaming utterance segmenter (see the module docstring for the method and the output)."""

    def __init__(self, frame_ms: float = 20.0, start_db_above_noise: float = 9.0,
                 stop_db_above_noise: float = 5.0, min_speech_s: float = 0.3, max_silence_s: float = 0.35,
                 pre_roll_s: float = 0.15, window_s: float = 1.5, hop_s: float = 0.75,
                 max_utterance_s: float = 10.0, post_roll_s: float = 0.1, min_floor_db: float = -60.0,
                 noise_window_s: float = 5.0, gap_tolerance_s: Optional[float] = None,
                 sample_rate: int = SAMPLE_RATE):
        self.sample_rate = int(sample_rate)
        if self.sample_rate <= 0:
            raise ValueError(f"sample_rate must be > 0, got {sample_rate}")
        self.frame_len = int(round(frame_ms * 1e-3 * self.sample_rate))
        if self.frame_len < 16:
            raise ValueError(f"frame_ms={frame_ms} is too short")
        self.frame_s = self.frame_len / self.sample_rate
        if stop_db_above_noise > start_db_above_noise:
            raise ValueError("stop_db_above_noise must not exceed start_db_above_noise")
        if window_s < 0 or hop_s < 0:
            raise ValueError("window_s and hop_s must be >= 0 (0 disables windows)")
        if window_s > 0 and hop_s <= 0:
            raise ValueError("hop_s must be > 0 when window_s > 0")
        if max_utterance_s <= 0 or max_utterance_s < max(min_speech_s, window_s):
            raise ValueError("max_utterance_s must be >= window_s and >= min_speech_s")
        for name, v in (("min_speech_s", min_speech_s), ("max_silence_s", max_silence_s),
                        ("pre_roll_s", pre_roll_s), ("post_roll_s", post_roll_s),
                        ("noise_window_s", noise_window_s)):
            if v < 0:
                raise ValueError(f"{name} must be >= 0, got {v}")
        self.config: Dict[str, float] = dict(
            frame_ms=frame_ms, start_db_above_noise=start_db_above_noise, stop_db_above_noise=stop_db_above_noise,
            min_speech_s=min_speech_s, max_silence_s=max_silence_s, pre_roll_s=pre_roll_s, window_s=window_s,
            hop_s=hop_s, max_utterance_s=max_utterance_s, post_roll_s=post_roll_s, min_floor_db=min_floor_db,
            noise_window_s=noise_window_s, gap_tolerance_s=gap_tolerance_s, sample_rate=self.sample_rate)
        fr = lambda s: int(round(s / self.frame_s))  # noqa: E731 - seconds -> frames
        self.start_db = float(start_db_above_noise)
        self.stop_db = float(stop_db_above_noise)
        self.min_floor_db = float(min_floor_db)
        self.min_speech_frames = max(1, fr(min_speech_s))
        self.max_silence_frames = max(1, fr(max_silence_s))
        self.pre_roll_frames = fr(pre_roll_s)
        self.post_roll_frames = fr(post_roll_s)
        self.window_frames = fr(window_s)
        self.hop_frames = max(1, fr(hop_s))
        self.max_utt_frames = max(1, fr(max_utterance_s))
        self.noise_frames = max(1, fr(noise_window_s))
        self.gap_tolerance_s = self.frame_s if gap_tolerance_s is None else float(gap_tolerance_s)

        # counters (cumulative)
        self.nonfinite_samples = 0
        self.samples_in = 0
        self.gaps = 0
        self.utterances = 0
        self.discarded_short = 0

        self._floor_q: Deque[Tuple[int, float]] = collections.deque()  # monotonic (frame, dB) for the window min
        self._g = 0                   # global frame counter (never reset; the noise floor is keyed on it)
        self._utt_id = 0
        self._reset_stream()

    # ------------------------------------------------------------------------------------------------ state
    def _reset_stream(self) -> None:
        self._anchor_t: Optional[float] = None   # time of the first sample of the current continuous stream
        self._anchor_g = self._g                  # global index of the stream's first frame
        self._pending = np.zeros(0, np.float32)   # samples not yet making up a whole frame
        self._frames: List[np.ndarray] = []       # recent frames (pre-roll, or the open utterance)
        self._active: List[bool] = []
        self._buf_g = self._g                     # global index of _frames[0]
        self._in_utt = False
        self._utt_g = 0                           # first loud frame of the open utterance
        self._seg_g = 0                           # first frame of its segment (with pre-roll)
        self._last_active_g = 0
        self._silence = 0

    @property
    def in_utterance(self) -> bool:
        return self._in_utt

    @property
    def noise_floor_db(self) -> float:
        """Current noise floor estimate (dBFS), ``min_floor_db`` before any audio."""
        return max(self.min_floor_db, self._floor_q[0][1]) if self._floor_q else self.min_floor_db

    def expected_t(self) -> Optional[float]:
        """Time at which the next pushed chunk should start (None at the start of a stream)."""
        if self._anchor_t is None:
            return None
        return self._anchor_t + ((self._g - self._anchor_g) * self.frame_len + self._pending.size) / self.sample_rate

    def _time(self, g: int) -> float:
        return self._anchor_t + (g - self._anchor_g) * self.frame_s

    # ------------------------------------------------------------------------------------------------ API
    def push(self, samples: np.ndarray, t_start: float) -> List[Segment]:
        """Feed consecutive float32 mono samples starting at ``t_start`` (s); returns the segments completed."""
        x = np.asarray(samples, dtype=np.float32).reshape(-1) if np.ndim(samples) <= 1 else None
        if x is None:
            raise InputError(f"Segmenter.push wants mono samples (n,), got shape {np.shape(samples)}")
        t_start = float(t_start)
        if not np.isfinite(t_start):
            raise InputError(f"Segmenter.push: non-finite t_start {t_start}")
        bad = ~np.isfinite(x)
        if bad.any():
            self.nonfinite_samples += int(bad.sum())
            x = np.where(bad, np.float32(0.0), x)
        x = np.clip(x, -1.0, 1.0)
        self.samples_in += x.size
        out: List[Segment] = []
        expected = self.expected_t()
        if expected is not None and abs(t_start - expected) > self.gap_tolerance_s:
            self.gaps += 1
            out += self._end_stream(process_pending=False)
        if self._anchor_t is None:
            self._anchor_t = t_start
            self._anchor_g = self._g
            self._buf_g = self._g
        if x.size == 0:
            return out
        data = np.concatenate([self._pending, x]) if self._pending.size else x
        n = data.size // self.frame_len
        self._pending = data[n * self.frame_len:].copy()
        if n:
            frames = data[:n * self.frame_len].reshape(n, self.frame_len)
            db = 10.0 * np.log10(np.mean(frames.astype(np.float64) ** 2, axis=1) + 1e-20)
            for i in range(n):
                out += self._frame(frames[i], float(db[i]))
        return out

    def flush(self) -> List[Segment]:
        """End of stream: close the open utterance (the last partial frame counts). The next push starts anew."""
        return self._end_stream(process_pending=True)

    def reset(self) -> None:
        """Forget everything, noise floor included (counters are kept)."""
        self._floor_q.clear()
        self._reset_stream()

    # ------------------------------------------------------------------------------------------------ internals
    def _end_stream(self, process_pending: bool) -> List[Segment]:
        out: List[Segment] = []
        if process_pending and self._pending.size and self._anchor_t is not None:
            f = self._pending
            db = 10.0 * np.log10(float(np.mean(f.astype(np.float64) ** 2)) + 1e-20)
            out += self._frame(f, db)
        if self._in_utt:
            seg = self._close()
            if seg is not None:
                out.append(seg)
        self._reset_stream()
        return out

    def _floor_update(self, db: float) -> float:
        """Noise floor before this frame (``min_floor_db`` when there is no history), then add the frame."""
        q = self._floor_q
        while q and q[0][0] <= self._g - self.noise_frames:
            q.popleft()
        floor = q[0][1] if q else self.min_floor_db
        db = max(db, self.min_floor_db)
        while q and q[-1][1] >= db:
            q.pop()
        q.append((self._g, db))
        return max(self.min_floor_db, floor)

    def _frame(self, frame: np.ndarray, db: float) -> List[Segment]:
        out: List[Segment] = []
        floor = self._floor_update(db)
        active = db >= floor + self.stop_db
        loud = db >= floor + self.start_db
        g = self._g
        self._frames.append(frame)
        self._active.append(bool(active))
        self._g += 1
        if not self._in_utt:
            if loud:
                self._in_utt = True
                self._utt_id += 1
                self._utt_g = g
                self._seg_g = max(self._buf_g, g - self.pre_roll_frames)
                self._last_active_g = g
                self._silence = 0
            else:
                self._trim(self._g - self.pre_roll_frames)
            return out
        if active:
            self._last_active_g = g
            self._silence = 0
        else:
            self._silence += 1
        speech_frames = g + 1 - self._utt_g
        if self._silence >= self.max_silence_frames:
            seg = self._close()
            if seg is not None:
                out.append(seg)
            return out
        if self.window_frames and speech_frames >= self.window_frames \
                and (speech_frames - self.window_frames) % self.hop_frames == 0:
            out.append(self._cut(g + 1 - self.window_frames, g + 1, partial=True))
        if g + 1 - self._seg_g >= self.max_utt_frames:
            # Cap reached while speech goes on: final for what we have, a new utterance from the next frame.
            out.append(self._cut(self._seg_g, g + 1, partial=False))
            self.utterances += 1
            self._trim(g + 1)
            self._utt_id += 1
            self._utt_g = self._seg_g = g + 1
            self._last_active_g = g   # speech of the new utterance counts from g + 1; the silence run goes on
        return out

    def _close(self) -> Optional[Segment]:
        """End the open utterance; a final Segment unless its speech was shorter than min_speech_s."""
        self._in_utt = False
        speech = self._last_active_g + 1 - self._utt_g
        end_g = min(self._last_active_g + 1 + self.post_roll_frames, self._buf_g + len(self._frames))
        seg = None
        if speech >= self.min_speech_frames:
            seg = self._cut(self._seg_g, end_g, partial=False)
            self.utterances += 1
        else:
            self.discarded_short += 1
        self._trim(self._g - self.pre_roll_frames)
        return seg

    def _cut(self, g0: int, g1: int, partial: bool) -> Segment:
        i0, i1 = g0 - self._buf_g, g1 - self._buf_g
        samples = np.concatenate(self._frames[i0:i1]).astype(np.float32, copy=False)
        ratio = float(np.mean(self._active[i0:i1])) if i1 > i0 else 0.0
        t0 = self._time(g0)
        return Segment(start_t=t0, end_t=t0 + samples.size / self.sample_rate, samples=samples, partial=partial,
                       speech_ratio=ratio, utterance=self._utt_id)

    def _trim(self, keep_from_g: int) -> None:
        """Drop buffered frames before global frame ``keep_from_g``."""
        k = keep_from_g - self._buf_g
        if k > 0:
            del self._frames[:k]
            del self._active[:k]
            self._buf_g += k


def segment_offline(wave: np.ndarray, sr: int = SAMPLE_RATE, finals_only: bool = True,
                    **segmenter_kwargs) -> List[Segment]:
    """Segment a whole recording with the streaming code (times in seconds from the start of ``wave``).

    ``wave``: mono (n,) or (n, channels) at ``sr`` (resampled to 16 kHz when needed).  By default only the
    utterances (finals) are returned; ``finals_only=False`` also returns the sliding windows of long utterances,
    in the order streaming emits them.  Extra keyword arguments go to :class:`Segmenter`.
    """
    x = np.asarray(wave)
    if sr != SAMPLE_RATE or x.ndim != 1:
        from .features import to_mono_16k
        x = to_mono_16k(x, sr)
    seg = Segmenter(**segmenter_kwargs)
    out = seg.push(x, 0.0) + seg.flush()
    return [s for s in out if not s.partial] if finals_only else out

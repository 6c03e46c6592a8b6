"""voice_node: microphone audio in, the emotion of each utterance out.

Subscribes

- ``audio`` (audio_common_msgs/AudioDataStamped; reliable, keep last ``queue_depth``): interleaved PCM chunks.
  The callback only decodes the chunk and queues it; a worker thread runs
  :class:`~emotion_ros.core.voice.pipeline.VoicePipeline` (downmix, streaming resampling to 16 kHz, energy VAD /
  utterance segmentation, the speech-emotion model).  Processing never falls behind by more than
  ``max_backlog_s``: beyond that the oldest queued audio is dropped and counted (the gap closes the open
  utterance).  A chunk's start time is its header stamp; chunks with a zero stamp get arrival time minus their
  duration, kept on the sample clock while that stays consistent.
- ``audio_info`` (audio_common_msgs/AudioInfo; reliable, transient local): sample rate, channels, sample format
  and coding format of the stream.  Until one arrives the ``sample_rate`` / ``channels`` / ``sample_format``
  parameters apply.  Compressed coding formats (mp3, ...), rates outside 8-96 kHz, 0 channels and unknown sample
  formats are refused with a (rate-limited) warning naming the problem, and the audio is dropped until a usable
  AudioInfo arrives.  Sample formats: those of :func:`emotion_ros.ros.convert.pcm_to_float` (S16LE, F32LE, S32LE,
  S24LE, U8, F64LE, ...).

  Bad audio gets a (rate-limited) warning naming the problem and is counted on /diagnostics; the node goes on:
  NaN/Inf samples (float formats) are replaced by 0 (``nonfinite_samples``); chunks with at least
  ``CLIP_WARN_FRACTION`` of their samples at full scale are reported as clipping but still used
  (``clipped_chunks``); a chunk whose stamp is more than ``gap_tolerance_s`` away from where the previous one ended
  (audio lost, or stamps going backwards) is a gap in the stream: the open utterance is closed there, so none
  spans the gap, and timing restarts from the new stamp (``stream_gaps``; a jump across an idle flush is reported
  and counted too).
- ``emotion/faces`` (emotion_msgs/FaceEmotionArray; reliable), only with ``speaker_reset_on_new_face`` and a
  speaker-normalised model: when another face track has been the largest face for ``new_face_hold_s``, the speaker
  reference starts again before the next audio is processed (``new_face_resets`` on /diagnostics).

Publishes

- ``emotion/voice`` (emotion_msgs/VoiceEmotion) per segment: a final one per utterance (``partial`` false) and, for
  long utterances, sliding windows (``partial`` true; ``publish_partial``).  ``header.stamp`` = segment end,
  ``start``/``end`` stamps on the audio's clock, ``header.frame_id`` = the audio's;
- ``/diagnostics``: input rate, real-time factor, processing time, dropped audio, backlog, device, model, format,
  NaN/Inf samples, clipped chunks, stream gaps.

Lifecycle: configure loads the model (a missing or unfit file fails the transition, naming the file; with
``autostart`` the process then exits 1), activate opens the topics and starts the worker, deactivate closes the
input, publishes the utterance still open and stops, cleanup drops the model.

    ros2 run emotion_ros voice_node --ros-args --params-file config/emotion.yaml
    python -m emotion_ros.nodes.voice --ros-args -p model_path:=/path/voice.pt -p device:=cpu
"""
from __future__ import annotations

import array
import collections
import threading
import time
from dataclasses import dataclass
from typing import Deque, List, Optional, Tuple

import numpy as np
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

from audio_common_msgs.msg import AudioDataStamped, AudioInfo
from emotion_msgs.msg import FaceEmotionArray, VoiceEmotion
from emotion_ros import paths
from emotion_ros.core.errors import InputError
from emotion_ros.core.labels import LABELS
from emotion_ros.core.modelio import ModelFileError
from emotion_ros.core.voice.features import NewPersonWatch
from emotion_ros.core.voice.model import VoiceModel
from emotion_ros.core.voice.pipeline import MAX_RATE, MIN_RATE, VoicePipeline, VoiceResult, clipped_fraction
from emotion_ros.core.voice.segment import PARAM_TO_KWARG, Segmenter, segmenter_kwargs
from emotion_ros.ros.convert import (PCM_FORMATS, pcm_frame_remainder, pcm_nonfinite_mask, pcm_to_float,
                                     sec_to_stamp, stamp_to_sec)
from emotion_ros.ros.lifecycle import command_line, exit_process, run_node
from emotion_ros.ros.node_utils import Diagnostics, RateLimitedLogger, declare_parameters, latched_qos, reliable_qos

NODE_NAME = "voice_node"

#: AudioInfo.coding_format values that mean raw PCM (case-insensitive).
RAW_CODINGS = ("", "wave", "wav", "pcm", "raw", "lpcm", "audio/x-raw")
#: Unstamped audio: the arrival clock may run this much ahead of the sample clock (s) before it counts as a gap,
#: or this much behind (bursty delivery) before timing restarts from arrival times.
UNSTAMPED_AHEAD_S = 0.25
UNSTAMPED_BEHIND_S = 2.0
#: A chunk with at least this fraction of its samples at full scale (see core.voice.pipeline.CLIP_LEVEL) is
#: reported as clipped.
CLIP_WARN_FRACTION = 0.01

PARAMS = {
    "model_path": ("", "Voice model checkpoint (.pt); empty = the package's models/voice.pt "
                       "(installed share first, then the source tree)"),
    "device": ("auto", "Torch device: auto (CUDA when available) | cpu | cuda | cuda:N"),
    "cpu_threads": (1, "torch CPU threads for the model (0 = torch's default). 1 avoids long stalls when the "
                       "CPU is shared with other nodes", {"range": (0, 256)}),
    "sample_rate": (16000, "Sample rate (Hz) of the audio until an AudioInfo arrives on audio_info (8000-96000)",
                           {"range": (8000, 96000)}),
    "channels": (1, "Interleaved channels of the audio until an AudioInfo arrives (downmixed to mono)",
                    {"range": (1, 64)}),
    "sample_format": ("S16LE", "PCM sample format until an AudioInfo arrives: " + ", ".join(PCM_FORMATS)),
    "vad_frame_ms": (20.0, "VAD frame length (ms)", {"range": (5.0, 100.0)}),
    "vad_start_db": (9.0, "An utterance starts on a frame this many dB above the adaptive noise floor",
                          {"range": (0.0, 60.0)}),
    "vad_stop_db": (5.0, "... and goes on while frames stay this many dB above it (hysteresis)",
                         {"range": (0.0, 60.0)}),
    "vad_min_floor_db": (-60.0, "Lowest noise floor (dBFS): digital silence never counts as speech; a frame must "
                                "reach vad_min_floor_db + vad_start_db to start an utterance",
                                {"range": (-150.0, 0.0)}),
    "vad_noise_window_s": (5.0, "Noise floor = the quietest frame of this many seconds (steady sounds are "
                                "absorbed into it within this time)", {"range": (0.1, 3600.0)}),
    "min_speech_s": (0.3, "Shorter utterances (clicks, knocks) are discarded (s)", {"range": (0.0, 60.0)}),
    "max_silence_s": (0.35, "An utterance ends after this much silence (s)", {"range": (0.0, 60.0)}),
    "pre_roll_s": (0.15, "Audio kept before the utterance's first loud frame (s)", {"range": (0.0, 10.0)}),
    "post_roll_s": (0.1, "Audio kept after its last active frame (s)", {"range": (0.0, 10.0)}),
    "window_s": (1.5, "Utterances longer than this: sliding windows of this length (s) are published while they go "
                      "on, before the utterance ends (0 = none)", {"range": (0.0, 60.0)}),
    "hop_s": (0.75, "... every this many seconds", {"range": (0.01, 60.0)}),
    "max_utterance_s": (10.0, "Longer speech is cut into utterances of at most this length (s)",
                              {"range": (0.1, 600.0)}),
    "gap_tolerance_s": (0.02, "A chunk starting further than this (s) from where the previous one ended is a "
                              "discontinuity: the open utterance is closed and timing restarts",
                              {"range": (0.0, 3600.0)}),
    "max_backlog_s": (2.0, "Audio waiting to be processed is capped at this many seconds; the oldest is dropped "
                           "(and counted) beyond it", {"range": (0.1, 3600.0)}),
    "idle_flush_s": (1.0, "When no audio arrives for this long (s, wall clock) the open utterance is closed and "
                          "published (0 = never)", {"range": (0.0, 3600.0)}),
    "queue_depth": (50, "Depth of the audio subscription (reliable, keep last)", {"range": (1, 10000)}),
    "publish_partial": (True, "Publish the sliding windows of long utterances (partial = true)"),
    "publish_embedding": (True, "Fill VoiceEmotion.embedding (for model-level fusion)"),
    "unsure_threshold": (0.4, "VoiceEmotion.unsure is set when the best calibrated probability is below this "
                              "(fusion discounts an unsure voice; 0 never sets it). On held-out speakers the "
                              "calibrated voice model is right about as often as its confidence says",
                         {"range": (0.0, 1.0)}),
    "speaker_reset_s": (60.0, "Speaker-normalised models (the shipped voice.pt's Whisper member; CNNs trained "
                              "with --speaker-norm) keep a running reference of the voice they hear (the last N "
                              "utterances, N from the model); after this many seconds without an utterance it "
                              "starts again (a new person, most likely). Until it has utterances each one is "
                              "normalised by itself (the Whisper member abstains on it). Ignored by per-utterance "
                              "models", {"range": (0.0, 86400.0)}),
    "speaker_reset_on_new_face": (False, "Also start the speaker reference again when a new person faces the "
                                         "camera: another face track has been the primary (largest) face on "
                                         "emotion/faces for new_face_hold_s. Measured: another person's reference "
                                         "carried across microphones cost 6 points on the new person's first ten "
                                         "utterances (models/voice.md); off by default until measured on the "
                                         "evaluation clips"),
    "new_face_hold_s": (1.0, "How long (s) another face must stay the primary one before it counts as a new person",
                        {"range": (0.0, 60.0)}),
    "autostart": (True, "Configure and activate on start (false: wait for a lifecycle manager)"),
}


@dataclass(frozen=True)
class AudioFormat:
    sample_rate: int
    channels: int
    sample_format: str
    coding_format: str = "wave"
    source: str = "parameters"

    def problem(self) -> Optional[str]:
        """Why this stream cannot be decoded, or None."""
        if (self.coding_format or "").strip().lower() not in RAW_CODINGS:
            return (f"compressed audio not supported (coding_format {self.coding_format!r}); "
                    f"publish raw PCM (coding_format 'wave')")
        if self.channels <= 0:
            return f"audio with {self.channels} channels"
        if not MIN_RATE <= self.sample_rate <= MAX_RATE:
            return f"unsupported sample rate {self.sample_rate} Hz (supported: {MIN_RATE}-{MAX_RATE} Hz)"
        if (self.sample_format or "").upper() not in PCM_FORMATS:
            return f"unsupported sample format {self.sample_format!r} (supported: {', '.join(PCM_FORMATS)})"
        return None

    def describe(self) -> str:
        return f"{self.sample_rate} Hz, {self.channels} ch, {self.sample_format} ({self.source})"


@dataclass
class Chunk:
    pcm: np.ndarray          # (n, channels) float32
    rate: int
    t_start: float
    frame_id: str
    after_drop: bool = False   # the audio just before it was dropped (backlog)

    @property
    def duration(self) -> float:
        return self.pcm.shape[0] / self.rate


class VoiceNode(LifecycleNode):
    def __init__(self, **kwargs):
        super().__init__(NODE_NAME, **kwargs)
        self.p = declare_parameters(self, PARAMS)
        self.log = RateLimitedLogger(self.get_logger(), period_s=5.0)
        self.model: Optional[VoiceModel] = None
        self.segmenter_kwargs: dict = {}
        self.pipeline: Optional[VoicePipeline] = None
        self.model_file = ""
        self.format = self._param_format()
        self._info_format: Optional[AudioFormat] = None
        self._subs = []
        self._pub = None
        self.diag: Optional[Diagnostics] = None
        self._worker: Optional[threading.Thread] = None
        self._stop = threading.Event()
        self._cond = threading.Condition()
        self._queue: Deque[Chunk] = collections.deque()
        self._queued_s = 0.0
        self._last_input = time.monotonic()
        self._unstamped_next: Optional[float] = None
        self._frame_id = ""
        self._rtf: Deque[Tuple[float, float]] = collections.deque(maxlen=200)  # (processing s, audio s)
        # counters
        self.chunks = 0
        self.rejected_chunks = 0
        self.dropped_chunks = 0
        self.dropped_s = 0.0
        self.published = 0
        self.nonfinite_samples = 0
        self.clipped_chunks = 0
        self.idle_gaps = 0    # gaps met after an idle flush (the pipeline counts the others)
        self.new_face_resets = 0
        self._persons: Optional[NewPersonWatch] = None
        self._reset_speaker = threading.Event()   # set by the faces callback, acted on by the worker
        self._idle_expected: Optional[float] = None  # where the stream should have gone on after an idle flush

    # -- lifecycle ------------------------------------------------------------------------------------------------
    def _param_format(self) -> AudioFormat:
        p = self.p
        return AudioFormat(int(p.sample_rate), int(p.channels), str(p.sample_format), "wave", "parameters")

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.p = declare_parameters(self, PARAMS)
        p = self.p
        fmt = self._param_format()
        problem = fmt.problem()
        if problem:
            self.get_logger().error(f"cannot configure: parameters sample_rate/channels/sample_format: {problem}")
            return TransitionCallbackReturn.FAILURE
        self.segmenter_kwargs = segmenter_kwargs({name: getattr(p, name) for name in PARAM_TO_KWARG})
        path = p.model_path or paths.model_path("voice.pt")
        self.model_file = path
        try:
            Segmenter(**self.segmenter_kwargs)   # check the VAD settings now
            if float(p.max_backlog_s) <= 0:
                raise ValueError("max_backlog_s must be > 0")
            if int(p.cpu_threads) > 0:
                import torch
                torch.set_num_threads(int(p.cpu_threads))
            self.model = VoiceModel(path, device=p.device)
            self.model.predict(np.zeros(self.model.spec.sample_rate // 2, np.float32))  # warm-up (mel basis, ...)
        except (ModelFileError, ValueError) as exc:
            self.get_logger().error(f"cannot configure: {exc}")
            self.model = None
            return TransitionCallbackReturn.FAILURE
        self.format = self._info_format or fmt
        self.get_logger().info(f"voice model {path} on {self.model.device}; audio {self.format.describe()}")
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        if self.model is None:
            self.get_logger().error("activate: no model loaded")
            return TransitionCallbackReturn.FAILURE
        self.pipeline = VoicePipeline(self.model, Segmenter(**self.segmenter_kwargs),
                                      speaker_reset_s=float(self.p.speaker_reset_s))
        self._clear_queue()
        self._unstamped_next = None
        self._idle_expected = None
        self._rtf.clear()
        self.diag = Diagnostics(self, "voice", hardware_id=str(self.model.device), stale_after_s=2.0)
        self.diag.set_value("device", str(self.model.device))
        self.diag.set_value("model", self.model_file)
        self._diag_format()
        self._pub = self.create_publisher(VoiceEmotion, "emotion/voice", reliable_qos(20))
        self._stop.clear()
        self._last_input = time.monotonic()
        self._worker = threading.Thread(target=self._work, name="voice_worker", daemon=True)
        self._worker.start()
        audio_qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=max(1, int(self.p.queue_depth)),
                               reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE)
        self._subs = [self.create_subscription(AudioInfo, "audio_info", self._on_info, latched_qos()),
                      self.create_subscription(AudioDataStamped, "audio", self._on_audio, audio_qos)]
        self._reset_speaker.clear()
        self._persons = None
        if bool(self.p.speaker_reset_on_new_face) and self.pipeline.speaker is not None:
            self._persons = NewPersonWatch(float(self.p.new_face_hold_s))
            self._subs.append(self.create_subscription(FaceEmotionArray, "emotion/faces", self._on_faces,
                                                       reliable_qos(10)))
            self.diag.set_value("new_face_resets", self.new_face_resets)   # counted over the node's life
        elif bool(self.p.speaker_reset_on_new_face):
            self.get_logger().info("speaker_reset_on_new_face: this voice model keeps no speaker reference; ignored")
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._close(publish_open=True)
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._close(publish_open=False)
        self._drop_model()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._close(publish_open=False)
        self._drop_model()
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._close(publish_open=False)
        self._drop_model()
        return TransitionCallbackReturn.SUCCESS

    def _drop_model(self) -> None:
        had_cuda = self.model is not None and self.model.device.type == "cuda"
        self.pipeline = None
        self.model = None
        if had_cuda:
            import torch
            torch.cuda.empty_cache()

    def _close(self, publish_open: bool) -> None:
        """Close the input, stop the worker, optionally publish the open utterance, close the outputs."""
        for sub in self._subs:
            self.destroy_subscription(sub)
        self._subs = []
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._worker is not None:
            self._worker.join(timeout=10.0)
            self._worker = None
        if publish_open and self.pipeline is not None and self._pub is not None:
            self._run(self.pipeline.flush, 0.0)
        self._clear_queue()
        if self._pub is not None:
            self.destroy_publisher(self._pub)
            self._pub = None
        if self.diag is not None:
            self.diag.destroy()
            self.diag = None
        self.pipeline = None

    def _clear_queue(self) -> None:
        with self._cond:
            self._queue.clear()
            self._queued_s = 0.0

    # -- input ----------------------------------------------------------------------------------------------------
    def _diag_format(self) -> None:
        if self.diag is not None:
            f = self.format
            self.diag.set_value("sample_rate", f.sample_rate)
            self.diag.set_value("channels", f.channels)
            self.diag.set_value("sample_format", f.sample_format)
            self.diag.set_value("format_source", f.source)

    def _on_faces(self, msg: FaceEmotionArray) -> None:
        watch = self._persons
        if watch is None:
            return
        t = stamp_to_sec(msg.header.stamp)
        if watch.update([(f.id, float(max(0, f.width)) * float(max(0, f.height))) for f in msg.faces], t):
            self._reset_speaker.set()
            self.log.info("new_face", f"face {watch.current!r} is the primary face now: the speaker reference "
                                      "starts again")

    def _on_info(self, msg: AudioInfo) -> None:
        fmt = AudioFormat(int(msg.sample_rate), int(msg.channels), str(msg.sample_format),
                          str(msg.coding_format), "audio_info")
        problem = fmt.problem()
        if problem:
            self.get_logger().warning(f"audio_info refused: {problem}; audio is dropped until a usable AudioInfo")
        elif fmt != self.format:
            self.get_logger().info(f"audio format from audio_info: {fmt.describe()}")
        self._info_format = fmt
        self.format = fmt
        self._diag_format()

    def _chunk_time(self, msg: AudioDataStamped, duration: float) -> float:
        st = msg.header.stamp
        if st.sec != 0 or st.nanosec != 0:
            return stamp_to_sec(st)
        # No stamp: arrival time minus duration, kept on the sample clock while the two agree.
        t = self.get_clock().now().nanoseconds * 1e-9 - duration
        nxt = self._unstamped_next
        if nxt is not None and -UNSTAMPED_BEHIND_S <= t - nxt <= UNSTAMPED_AHEAD_S:
            t = nxt
        self._unstamped_next = t + duration
        return t

    def _on_audio(self, msg: AudioDataStamped) -> None:
        diag = self.diag
        if diag is not None:
            diag.tick_input()
        self.chunks += 1
        fmt = self.format
        problem = fmt.problem()
        if problem:
            self.rejected_chunks += 1
            self.log.warn("format", f"dropping audio: {problem}")
            if diag is not None:
                diag.report_error(problem)
                diag.set_value("rejected_chunks", self.rejected_chunks)
            return
        data = msg.audio.data
        try:
            rem = pcm_frame_remainder(data, fmt.sample_format, fmt.channels)
            pcm = pcm_to_float(data, fmt.sample_format, fmt.channels)
            bad = pcm_nonfinite_mask(data, fmt.sample_format, fmt.channels)
        except InputError as exc:
            self.rejected_chunks += 1
            self.log.warn("decode", f"dropping audio chunk: {exc}")
            if diag is not None:
                diag.report_error(str(exc))
            return
        if rem:
            self.log.warn("remainder", f"audio chunk of {len(data)} bytes is not a whole number of "
                                       f"{fmt.channels}-channel {fmt.sample_format} frames: {rem} bytes ignored")
        if pcm.shape[0] == 0:
            return
        if bad is not None:
            self._report_nonfinite(pcm, bad)
        self._check_clipping(pcm, fmt.sample_rate)
        duration = pcm.shape[0] / fmt.sample_rate
        chunk = Chunk(pcm, fmt.sample_rate, self._chunk_time(msg, duration), msg.header.frame_id)
        self.enqueue(chunk)

    def _report_nonfinite(self, pcm: np.ndarray, bad: np.ndarray) -> None:
        """Zero the NaN/Inf samples of a decoded chunk (``pcm_to_float`` made them 0 or +-1), count and warn."""
        n = int(np.count_nonzero(bad))
        pcm[bad] = 0.0
        self.nonfinite_samples += n
        self.log.warn("nonfinite", f"non-finite samples (NaN/Inf) in the audio: {n} of {bad.size} samples of a chunk "
                                   f"replaced by 0 ({self.nonfinite_samples} in all)")
        self._diag_input_counters()

    def _check_clipping(self, pcm: np.ndarray, rate: int) -> None:
        """Warn when a notable fraction of the chunk is at full scale (the audio is still used)."""
        frac = clipped_fraction(pcm)
        if frac < CLIP_WARN_FRACTION:
            return
        self.clipped_chunks += 1
        self.log.warn("clipping", f"audio clipping: {100 * frac:.1f}% of the samples of a {pcm.shape[0] / rate:.2f} s "
                                  f"chunk at full scale ({self.clipped_chunks} clipped chunks in all); lower the "
                                  f"input gain")
        self._diag_input_counters()

    def _diag_input_counters(self) -> None:
        diag, pipeline = self.diag, self.pipeline
        if diag is not None:
            nonfinite = self.nonfinite_samples + (pipeline.nonfinite_samples if pipeline is not None else 0)
            diag.set_value("nonfinite_samples", nonfinite)
            diag.set_value("clipped_chunks", self.clipped_chunks)

    def enqueue(self, chunk: Chunk) -> None:
        """Queue a decoded chunk for the worker; beyond ``max_backlog_s`` the oldest audio is dropped (counted)."""
        limit = float(self.p.max_backlog_s)
        dropped_n, dropped_s = 0, 0.0
        with self._cond:
            self._queue.append(chunk)
            self._queued_s += chunk.duration
            while self._queued_s > limit and len(self._queue) > 1:
                old = self._queue.popleft()
                self._queued_s -= old.duration
                dropped_n += 1
                dropped_s += old.duration
            if dropped_n:
                self._queue[0].after_drop = True
            self._last_input = time.monotonic()
            self._cond.notify()
        if dropped_n:
            self.dropped_chunks += dropped_n
            self.dropped_s += dropped_s
            self.log.warn("backlog", f"processing fell behind: dropped the oldest {dropped_s:.2f} s of audio "
                                     f"(backlog > max_backlog_s={limit:g} s; {self.dropped_s:.1f} s in all)")
            if self.diag is not None:
                self.diag.add_dropped(dropped_n)
                self.diag.set_value("dropped_audio_s", f"{self.dropped_s:.2f}")

    # -- worker ---------------------------------------------------------------------------------------------------
    def _work(self) -> None:
        flushed = True
        while not self._stop.is_set():
            with self._cond:
                if not self._queue:
                    self._cond.wait(timeout=0.1)
                chunk = self._queue.popleft() if self._queue else None
                if chunk is not None:
                    self._queued_s = max(0.0, self._queued_s - chunk.duration)
                idle = time.monotonic() - self._last_input
            if self._stop.is_set():
                break
            if chunk is not None:
                flushed = False
                self.process(chunk)
            elif not flushed and float(self.p.idle_flush_s) > 0 and idle > float(self.p.idle_flush_s):
                flushed = True
                pipeline = self.pipeline
                if pipeline is not None:
                    self._idle_expected = pipeline.expected_t()
                    self._run(pipeline.flush, 0.0)

    def process(self, chunk: Chunk) -> List[VoiceEmotion]:
        """Run one decoded chunk through the pipeline and publish the results (returns the messages)."""
        pipeline = self.pipeline
        if pipeline is None:
            return []
        if self._reset_speaker.is_set():
            self._reset_speaker.clear()
            if pipeline.speaker is not None:
                pipeline.speaker.reset()
                self.new_face_resets += 1
                if self.diag is not None:
                    self.diag.set_value("new_face_resets", self.new_face_resets)
        self._frame_id = chunk.frame_id
        expected, gaps = pipeline.expected_t(), pipeline.gaps
        resumed, self._idle_expected = self._idle_expected, None
        out = self._run(lambda: pipeline.push(chunk.pcm, chunk.rate, chunk.t_start), chunk.duration)
        if pipeline.gaps > gaps and expected is not None:
            self._report_gap(chunk, chunk.t_start - expected, pipeline, idle=False)
        elif expected is None and resumed is not None \
                and abs(chunk.t_start - resumed) > pipeline.segmenter.gap_tolerance_s:
            self.idle_gaps += 1
            self._report_gap(chunk, chunk.t_start - resumed, pipeline, idle=True)
        return out

    def _report_gap(self, chunk: Chunk, jump: float, pipeline: VoicePipeline, idle: bool) -> None:
        """A discontinuity in the stamps: the pipeline closed the open utterance and restarted timing (or the idle
        flush had already closed it); say so and count it."""
        tol = pipeline.segmenter.gap_tolerance_s
        n_gaps = pipeline.gaps + self.idle_gaps
        if self.diag is not None:
            self.diag.set_value("stream_gaps", n_gaps)
        if jump < 0:
            what = f"stamps went back {-jump:.3f} s: a chunk stamped {chunk.t_start:.3f} starts before the " \
                   f"previous one ended"
        else:
            what = f"a chunk stamped {chunk.t_start:.3f} starts {jump:.3f} s after the previous one ended"
        cause = "; audio was dropped because processing fell behind" if chunk.after_drop else ""
        done = ("the idle flush (no audio for idle_flush_s) had closed the open utterance already" if idle
                else "the open utterance was closed there")
        self.log.warn("gap", f"gap in the audio stream: {what} (gap_tolerance_s={float(tol):g}){cause}; {done}, "
                             f"timing restarted ({n_gaps} gaps in all)")

    def _run(self, step, audio_s: float) -> List[VoiceEmotion]:
        pub, diag, pipeline = self._pub, self.diag, self.pipeline
        t0 = time.perf_counter()
        try:
            results = step()
        except InputError as exc:
            self.log.warn("input", f"audio chunk refused: {exc}")
            if diag is not None:
                diag.report_error(str(exc))
            return []
        except Exception as exc:  # noqa: BLE001 - keep the worker alive; say what happened
            self.log.error("process", f"voice processing failed: {type(exc).__name__}: {exc}")
            if diag is not None:
                diag.report_error(f"{type(exc).__name__}: {exc}")
            return []
        dt = time.perf_counter() - t0
        out = []
        for r in results:
            if r.partial and not self.p.publish_partial:
                continue
            msg = self.to_message(r, self._frame_id, bool(self.p.publish_embedding),
                                  float(self.p.unsure_threshold))
            if pub is not None:
                pub.publish(msg)
                self.published += 1
            out.append(msg)
            if diag is not None:
                diag.tick_output()
        if audio_s > 0:
            self._rtf.append((dt, audio_s))
        if diag is not None:
            if audio_s > 0:
                diag.record_processing(dt)
            proc, aud = sum(a for a, _ in self._rtf), sum(b for _, b in self._rtf)
            diag.set_value("real_time_factor", f"{proc / aud:.4f}" if aud > 0 else "0")
            diag.set_value("backlog_s", f"{self._queued_s:.3f}")
            if pipeline is not None:
                diag.set_value("utterances", pipeline.segmenter.utterances)
                diag.set_value("noise_floor_db", f"{pipeline.segmenter.noise_floor_db:.1f}")
                self._diag_input_counters()
                diag.set_value("stream_gaps", pipeline.gaps + self.idle_gaps)
                if pipeline.speaker is not None:
                    diag.set_value("speaker_reference_utterances", len(pipeline.speaker))
        return out

    @staticmethod
    def to_message(r: VoiceResult, frame_id: str = "", embedding: bool = True,
                   unsure_threshold: float = 0.0) -> VoiceEmotion:
        m = VoiceEmotion()
        m.header.stamp = sec_to_stamp(r.end_t)
        m.header.frame_id = frame_id
        m.start = sec_to_stamp(r.start_t)
        m.end = sec_to_stamp(r.end_t)
        m.voice_activity = bool(r.voice_activity)
        m.speech_ratio = float(r.speech_ratio)
        m.partial = bool(r.partial)
        probs = np.asarray(r.probs, np.float32)
        m.emotion = LABELS[int(np.argmax(probs))]
        m.confidence = float(probs.max())
        m.unsure = bool(m.confidence < unsure_threshold)
        m.labels = list(LABELS)
        m.probabilities = array.array("f", probs.tobytes())
        m.embedding = array.array("f", np.asarray(r.embedding, np.float32).tobytes() if embedding else b"")
        return m


def main(args=None) -> None:
    code = command_line(NODE_NAME, PARAMS, __doc__, args)
    exit_process(code if code is not None else run_node(VoiceNode, args=args))


if __name__ == "__main__":
    main()

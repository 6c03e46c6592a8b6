"""microphone_node: audio from a sound card (sounddevice / PortAudio) or an audio file -> ``audio`` + ``audio_info``.

Publishes

- ``audio`` (audio_common_msgs/AudioDataStamped; reliable, keep last ``qos_depth``): interleaved PCM blocks of
  ``block_duration_s``, ``sample_format`` S16LE (default) or F32LE; ``header.stamp`` = time of the block's first
  sample (stamps advance by exactly the block duration, re-anchored to the ROS clock only when they drift by more
  than ``max_drift_s``); ``header.frame_id`` = ``frame_id``;
- ``audio_info`` (audio_common_msgs/AudioInfo; reliable, transient local so late subscribers get it): channels,
  sample_rate, sample_format, bitrate, coding_format "wave";
- ``/diagnostics``.

Sources: ``file`` empty -> the input device ``device`` (name substring or index; empty: the default input) at
``sample_rate`` (falls back to the device's default rate when unsupported; audio_info tells the rate used).
With no device the node fails at start-up with a message listing the devices PortAudio sees and exits 1.
``file`` set -> the file (wav/flac/ogg/... any rate; resampled to ``sample_rate``, 0 keeps the file's rate;
``channels`` 1 downmixes, 0 keeps the file's) is played at real-time pace as if it were a microphone;
``loop`` starts it again seamlessly; at the end without ``loop`` the process stops (``exit_on_end``).

    microphone_node --ros-args -p device:=USB -p sample_rate:=16000
    microphone_node --ros-args -p file:=/path/speech.wav -p loop:=true
    microphone_node --list-devices          # the input devices PortAudio sees (index, name, channels, rate)
"""

from __future__ import annotations

import array
import queue
import threading
import time
from typing import Optional

import rclpy
from rclpy.node import Node

from audio_common_msgs.msg import AudioDataStamped, AudioInfo
from emotion_ros.core.sources import AudioFileSource, list_input_devices, open_input_stream
from emotion_ros.ros.convert import float_to_pcm, ns_to_stamp, stamp_to_ns
from emotion_ros.ros.lifecycle import command_line, exit_process, request_stop, run_node
from emotion_ros.ros.node_utils import (Diagnostics, RateLimitedLogger, declare_parameters, latched_qos, reliable_qos,
                                        wait_for_subscribers)

NODE_NAME = "microphone_node"
FORMATS = ("S16LE", "F32LE")

PARAMS = {
    "device": ("", "Input device: index, or a case-insensitive part of its name; empty = the system default",
               {"dynamic_typing": True}),
    "file": ("", "Audio file to play as if it were a microphone (wav/flac/ogg/...); empty = use the device"),
    "sample_rate": (16000, "Sample rate in Hz (device: requested; file: resampled to it, 0 = the file's rate)",
                    {"range": (0, 192000)}),
    "channels": (1, "Channels (device: captured; file: 1 downmixes, 0 keeps the file's)", {"range": (0, 64)}),
    "block_duration_s": (0.1, "Duration of one published block of audio in seconds", {"range": (0.005, 10.0)}),
    "sample_format": ("S16LE", "PCM sample format of the published audio: S16LE | F32LE"),
    "frame_id": ("microphone", "header.frame_id of the published audio"),
    "loop": (False, "File: start again at the end (seamless, stamps keep advancing)"),
    "exit_on_end": (True, "File without loop: stop the process at the end (false: stay up, silent)"),
    "wait_for_subscribers_s": (0.0, "File: before the first block, wait up to this long for a subscriber of "
                                    "`audio` (so none of the file is lost to discovery)", {"range": (0.0, 3600.0)}),
    "max_drift_s": (0.25, "Re-anchor stamps to the ROS clock when the sample clock drifts by more than this",
                    {"range": (0.001, 3600.0)}),
    "qos_depth": (100, "Publisher queue depth (keep last) of `audio`", {"range": (1, 10000)}),
}


def list_devices(query=None, out=None) -> int:
    """Print the audio input devices (``--list-devices``); exit code 0, also when there is none."""
    import sys
    out = out or sys.stdout
    devices = list_input_devices(query)
    if not devices:
        out.write("no input devices: PortAudio sees no sound card input here (libportaudio2 missing, no audio "
                  "system, or no microphone); play a file with -p file:=speech.wav instead\n")
        return 0
    out.write("audio input devices (use -p device:=INDEX or a part of the name):\n")
    for d in devices:
        rate = d.get("default_samplerate")
        out.write(f"  {d['index']}: {d.get('name', '?')} ({d.get('max_input_channels', 0)} ch"
                  + (f", default {float(rate):g} Hz" if rate else "") + ")\n")
    return 0


class MicrophoneNode(Node):
    def __init__(self, **kwargs):
        super().__init__(NODE_NAME, **kwargs)
        self.p = declare_parameters(self, PARAMS)
        self.log = RateLimitedLogger(self.get_logger(), period_s=10.0)
        self.fmt = str(self.p.sample_format).upper()
        if self.fmt not in FORMATS:
            raise ValueError(f"sample_format must be one of {FORMATS}, not {self.p.sample_format!r}")
        if not float(self.p.block_duration_s) > 0:
            raise ValueError(f"block_duration_s must be > 0, got {self.p.block_duration_s}")
        self._stop = threading.Event()
        self.ended = threading.Event()
        self.blocks = 0
        self._anchor: Optional[tuple] = None  # (ROS time ns of the anchor, frames published since it)
        self.stream = None
        self.file_source: Optional[AudioFileSource] = None
        self._queue: "queue.Queue" = queue.Queue(maxsize=200)
        rate = int(self.p.sample_rate)

        if str(self.p.file):
            block = max(1, int(round(float(self.p.block_duration_s) * (rate or 1))))
            self.file_source = AudioFileSource(str(self.p.file), rate, int(self.p.channels), block,
                                               bool(self.p.loop))
            if rate <= 0:  # the file's own rate: block size from it
                self.file_source.block_frames = max(1, int(round(float(self.p.block_duration_s) *
                                                                 self.file_source.sample_rate)))
            self.rate, self.channels = self.file_source.sample_rate, self.file_source.channels
            what = f"file {self.file_source.path} ({self.file_source.file_rate} Hz, " \
                   f"{self.file_source.file_channels} ch, {self.file_source.duration_s:.2f} s)"
        else:
            if rate <= 0:
                raise ValueError("sample_rate must be > 0 for a device")
            self.channels = int(self.p.channels) if int(self.p.channels) > 0 else 1
            block = max(1, int(round(float(self.p.block_duration_s) * rate)))
            self.stream, self.rate = open_input_stream(
                self.p.device, rate, self.channels, block, "int16" if self.fmt == "S16LE" else "float32",
                self._on_audio)  # raises SourceError (no device) -> run_node exits 1 with the message
            what = f"input device {self.p.device or '(default)'}"

        self.pub = self.create_publisher(AudioDataStamped, "audio", reliable_qos(int(self.p.qos_depth)))
        self.info_pub = self.create_publisher(AudioInfo, "audio_info", latched_qos())
        width = 2 if self.fmt == "S16LE" else 4
        self.info = AudioInfo(channels=self.channels, sample_rate=self.rate, sample_format=self.fmt,
                              bitrate=self.rate * self.channels * width * 8, coding_format="wave")
        self.info_pub.publish(self.info)
        block_s = float(self.p.block_duration_s)
        self.diag = Diagnostics(self, "microphone", hardware_id=what, expected_rate_hz=1.0 / block_s,
                                stale_after_s=max(1.0, 5 * block_s))
        self.diag.set_value("source", what)
        self.diag.set_value("format", f"{self.rate} Hz, {self.channels} ch, {self.fmt}")
        self.get_logger().info(f"publishing {self.rate} Hz {self.channels} ch {self.fmt} blocks of "
                               f"{block_s * 1e3:.0f} ms on {self.pub.topic_name} from {what}")
        target = self._play_file if self.file_source is not None else self._publish_queued
        self._thread = threading.Thread(target=self._guard, args=(target,), name="microphone", daemon=True)
        self._thread.start()

    # -------------------------------------------------------------------------------------------------------------
    def _guard(self, target) -> None:
        try:
            target()
        except Exception as exc:  # noqa: BLE001
            self.get_logger().fatal(f"audio thread failed: {type(exc).__name__}: {exc}")
            self.diag.report_error(f"audio thread failed: {exc}")
            request_stop()

    def _frames_ns(self, n_frames: int) -> int:
        return (n_frames * 1_000_000_000) // self.rate

    def _stamp_for(self, n_frames: int) -> int:
        """Start time (ns) of a block of n_frames that has just been captured: the sample clock (previous start +
        previous duration), re-anchored to ROS time when it drifts by more than max_drift_s."""
        expected = stamp_to_ns(self.get_clock().now()) - self._frames_ns(n_frames)
        if self._anchor is None or abs(self._anchor[0] + self._frames_ns(self._anchor[1]) - expected) \
                > float(self.p.max_drift_s) * 1e9:
            if self._anchor is not None:
                drift = (self._anchor[0] + self._frames_ns(self._anchor[1]) - expected) * 1e-9
                self.log.warn("drift", f"audio stamps drifted {drift:+.3f} s from the clock; re-anchored")
            self._anchor = (expected, 0)
        t = self._anchor[0] + self._frames_ns(self._anchor[1])
        self._anchor = (self._anchor[0], self._anchor[1] + n_frames)
        return t

    def _publish_block(self, pcm: bytes, n_frames: int, t_start_ns: int) -> None:
        msg = AudioDataStamped()
        msg.header.stamp = ns_to_stamp(t_start_ns)
        msg.header.frame_id = self.p.frame_id
        data = array.array("B")
        data.frombytes(pcm)
        msg.audio.data = data  # array.array('B'): no per-byte check in the generated setter
        try:
            self.pub.publish(msg)
        except Exception:  # noqa: BLE001 - context shut down under us
            if rclpy.ok(context=self.context):
                raise
            self._stop.set()
            return
        self.blocks += 1
        self.diag.tick_output()

    # device ------------------------------------------------------------------------------------------------------
    def _on_audio(self, indata, frames, time_info, status) -> None:  # PortAudio thread: hand over, return fast
        diag = getattr(self, "diag", None)
        if status:
            if diag is not None and status.input_overflow:
                diag.add_dropped()
            self.log.warn("status", f"audio input status: {status}")
        try:
            self._queue.put_nowait((bytes(indata), frames))
        except queue.Full:
            if diag is not None:
                diag.add_dropped()

    def _publish_queued(self) -> None:
        while not self._stop.is_set():
            try:
                data, frames = self._queue.get(timeout=0.2)
            except queue.Empty:
                continue
            self.diag.tick_input()
            t0 = time.monotonic()
            self._publish_block(data, frames, self._stamp_for(frames))
            self.diag.record_processing(time.monotonic() - t0)

    # file --------------------------------------------------------------------------------------------------------
    def _play_file(self) -> None:
        src = self.file_source
        if self.p.wait_for_subscribers_s > 0:
            if not wait_for_subscribers(self.pub, self.p.wait_for_subscribers_s, stop=self._stop):
                if self._stop.is_set():
                    return
                self.get_logger().warning(f"no subscriber after {self.p.wait_for_subscribers_s:.1f} s; playing anyway")
        t_ros0 = stamp_to_ns(self.get_clock().now())
        t_mono0 = time.monotonic()
        sent = 0  # frames published so far: stamps advance by exactly the audio's duration
        while not self._stop.is_set():
            block = src.read_block()
            if block is None:
                self.get_logger().info(f"end of {src.path} after {self.blocks} block(s), {sent / self.rate:.2f} s")
                self.ended.set()
                if self.p.exit_on_end:
                    request_stop()
                return
            n = block.shape[0]
            # a block is "captured" when its last sample has been played: wait until then (real-time pace)
            due = t_mono0 + (sent + n) / self.rate
            delay = due - time.monotonic()
            if delay > 0 and self._stop.wait(delay):
                return
            self.diag.tick_input()
            t0 = time.monotonic()
            self._publish_block(float_to_pcm(block, self.fmt), n, t_ros0 + self._frames_ns(sent))
            self.diag.record_processing(time.monotonic() - t0)
            sent += n

    # -------------------------------------------------------------------------------------------------------------
    def stop(self) -> None:
        self._stop.set()
        if self.stream is not None:
            try:
                self.stream.stop()
                self.stream.close()
            except Exception:  # noqa: BLE001
                pass
            self.stream = None
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout=5.0)
        if self.file_source is not None:
            self.file_source.close()

    def destroy_node(self) -> None:
        self.stop()
        super().destroy_node()


def main(args: Optional[list] = None) -> None:
    code = command_line(NODE_NAME, PARAMS, __doc__, args,
                        options={"--list-devices": ("list the audio input devices and exit", list_devices)})
    exit_process(code if code is not None else run_node(MicrophoneNode, args=args))


if __name__ == "__main__":
    import sys
    sys.exit(main())

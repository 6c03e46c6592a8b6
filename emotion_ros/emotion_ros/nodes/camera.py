"""camera_node: frames from a camera, a video file, a stream URL or a GStreamer pipeline -> ``image_raw``.

Publishes ``image_raw`` (sensor_msgs/Image, bgr8, stamped with the ROS time at capture, ``frame_id``; unless
``publish_raw`` is false), ``image_raw/compressed`` (sensor_msgs/CompressedImage, JPEG at ``jpeg_quality``, the same
stamp; image_transport's name for the remapped ``image_raw`` too; encoded only while it has a subscriber, with
``compressed``) and ``/diagnostics``. QoS: reliable (``reliable``), keep last ``qos_depth`` (1), volatile; readers
choose best effort (face_node does), so nothing is retransmitted to them. A capture thread reads the source:

- devices / streams deliver at their own pace; frames beyond ``rate`` Hz are skipped (``rate`` 0, the default: at
  most ``LIVE_RATE_CAP`` = 30 Hz); a device that cannot be opened or stops delivering is retried with back-off
  (``retry_s`` doubling up to ``retry_max_s``), with one clear log line per attempt;
- files are played in real time at their own frame rate (``rate`` 0, the default; a 10 fps clip stays in step
  with real-time audio), or at ``rate`` Hz when it is set; from the start again with ``loop``;
  at the end without ``loop`` the node stops the process (``exit_on_end``) or idles. A missing or unreadable file
  ends the process with exit code 1 and a message naming it.

    camera_node --ros-args -p source:=0 -p width:=640 -p height:=480 -p rate:=15
    camera_node --ros-args -p source:=/path/clip.mp4 -p loop:=true
    camera_node --ros-args -p source:=0 -p publish_raw:=false -p jpeg_quality:=70   # JPEG only (a slow link)
    camera_node --ros-args --params-file config/emotion.yaml
"""

from __future__ import annotations

import threading
import time
from typing import Optional

import cv2
import rclpy
from rclpy.node import Node
from sensor_msgs.msg import CompressedImage, Image

from emotion_ros.core.errors import InputError
from emotion_ros.core.sources import SourceError, VideoSource
from emotion_ros.ros.convert import numpy_to_compressed, numpy_to_image
from emotion_ros.ros.lifecycle import command_line, exit_process, request_stop, run_node
from emotion_ros.ros.node_utils import (Diagnostics, ParameterError, RateLimitedLogger, declare_parameters,
                                        reliable_qos, sensor_qos)

NODE_NAME = "camera_node"
#: Live sources with ``rate`` 0 publish at most this many frames per second.
LIVE_RATE_CAP = 30.0
#: Files whose container tells no frame rate play at this rate (with ``rate`` 0).
FILE_RATE_FALLBACK = 30.0

PARAMS = {
    "source": ("0", "Camera index (0), device path (/dev/video2), video file, stream URL (rtsp://...), or "
                    "GStreamer pipeline (contains '!'; needs an OpenCV built with GStreamer)",
               {"dynamic_typing": True}),
    "api": ("auto", "OpenCV capture API: auto | v4l2 | ffmpeg | gstreamer | images"),
    "rate": (0.0, "Publish rate in Hz. 0: files play at their own frame rate (30 when the file tells none), live "
                  "sources publish every frame up to 30 Hz. > 0: files play at this rate, live sources skip frames "
                  "beyond it", {"range": (0.0, 1000.0)}),
    "width": (0, "Requested frame width from devices/streams (0: the source's default)", {"range": (0, 16384)}),
    "height": (0, "Requested frame height from devices/streams (0: the source's default)", {"range": (0, 16384)}),
    "fourcc": ("", "Requested device pixel format, e.g. MJPG (empty: the device's default)"),
    "resize": (False, "Resize frames to width x height when the source delivers another size"),
    "flip_horizontal": (False, "Mirror frames left-right (selfie view)"),
    "frame_id": ("camera", "header.frame_id of the published images"),
    "loop": (False, "Files: start again at the end"),
    "wait_for_subscribers_s": (0.0, "Files: before the first frame, wait up to this long for a subscriber of "
                                    "image_raw or image_raw/compressed (so none of the file is lost to discovery)",
                               {"range": (0.0, 3600.0)}),
    "exit_on_end": (True, "Files without loop: stop the process at the end (false: stay up, publishing nothing)"),
    "retry_s": (1.0, "Devices/streams: first wait before reopening a source that failed (doubles each time)",
                {"range": (0.01, 3600.0)}),
    "retry_max_s": (30.0, "Devices/streams: longest wait between reopen attempts", {"range": (0.01, 86400.0)}),
    "reliable": (True, "Reliable QoS (matches reliable and best-effort subscribers); false: best effort"),
    "qos_depth": (1, "Publisher queue depth (keep last)", {"range": (1, 10000)}),
    "publish_raw": (True, "Publish image_raw (sensor_msgs/Image bgr8; 640x480 at 30 fps is 27.6 MB/s: fine within "
                          "one machine, too much for Wi-Fi)"),
    "compressed": (True, "Publish image_raw/compressed (sensor_msgs/CompressedImage, JPEG; image_transport's name), "
                         "encoded only while it has a subscriber: for a face_node on another machine "
                         "(image_transport:=compressed). 640x480 at quality 80: ~55 kB a frame, ~1.7 MB/s at 30 fps"),
    "jpeg_quality": (80, "JPEG quality of image_raw/compressed (1-100; higher: larger, sharper). Face accuracy and "
                         "bytes per quality: docs/BENCHMARKS.md", {"range": (1, 100)}),
}


class CameraNode(Node):
    def __init__(self, **kwargs):
        super().__init__(NODE_NAME, **kwargs)
        self.p = declare_parameters(self, PARAMS)
        if not self.p.publish_raw and not self.p.compressed:
            raise ParameterError(f"{NODE_NAME}: publish_raw and compressed are both false: nothing to publish")
        self.log = RateLimitedLogger(self.get_logger(), period_s=10.0)
        self.source = VideoSource(str(self.p.source), self.p.api, self.p.width, self.p.height, self.p.fourcc)
        if self.source.is_file:
            self.source.open()  # a missing / unreadable file fails start-up (run_node: exit code 1)
            self._log_opened()
        qos = reliable_qos(self.p.qos_depth) if self.p.reliable else sensor_qos(self.p.qos_depth)
        self.pub = self.create_publisher(Image, "image_raw", qos) if self.p.publish_raw else None
        # image_transport naming: <resolved image_raw>/compressed, so remapping image_raw moves both
        self.pub_compressed = (self.create_publisher(CompressedImage, self.resolve_topic_name("image_raw")
                                                     + "/compressed", qos) if self.p.compressed else None)
        self.compressed_frames = 0
        self.compressed_bytes = 0
        rate = self._rate()
        self.diag = Diagnostics(self, "camera", hardware_id=self.source.source,
                                expected_rate_hz=rate if float(self.p.rate) > 0 or self.source.is_file else None,
                                stale_after_s=max(2.0, 3.0 / rate) if rate > 0 else 5.0)
        self.diag.set_value("source", self.source.describe())
        self.diag.set_value("rate_hz", f"{rate:g}")
        self.frames = 0
        self.ended = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="camera_capture", daemon=True)
        self._thread.start()

    # -----------------------------------------------------------------------------------------------------------
    def _log_opened(self) -> None:
        s = self.source
        rate = self._rate()
        how = ("file's own rate" if s.is_file else "cap for rate 0") if float(self.p.rate) <= 0 else "rate"
        self.get_logger().info(f"opened {s.describe()} (backend {s.backend or '?'}, nominal {s.fps:.1f} fps); "
                               f"{'playing' if s.is_file else 'publishing up to'} {rate:g} Hz ({how})")
        self.diag_value("backend", s.backend)

    def diag_value(self, key, value) -> None:
        if getattr(self, "diag", None) is not None:
            self.diag.set_value(key, value)

    def _open_with_backoff(self) -> bool:
        wait = max(0.05, float(self.p.retry_s))
        while not self._stop.is_set():
            try:
                self.source.open()
                self._log_opened()
                return True
            except SourceError as exc:
                self.get_logger().error(f"{exc}; retrying in {wait:.1f} s")
                self.diag.report_error(str(exc))
            if self._stop.wait(wait):
                return False
            wait = min(wait * 2.0, max(float(self.p.retry_max_s), float(self.p.retry_s)))
        return False

    def _rate(self) -> float:
        """Frames per second to publish: ``rate``, else the file's own rate, else LIVE_RATE_CAP for live sources."""
        rate = float(self.p.rate)
        if rate > 0:
            return rate
        if self.source.is_file:
            return self.source.fps or FILE_RATE_FALLBACK
        return LIVE_RATE_CAP

    def _period(self) -> float:
        return 1.0 / self._rate()

    def _run(self) -> None:
        try:
            self._capture_loop()
        except Exception as exc:  # noqa: BLE001 - a crash of the thread must be visible
            self.get_logger().fatal(f"capture thread failed: {type(exc).__name__}: {exc}")
            self.diag.report_error(f"capture thread failed: {exc}")
            request_stop()

    def _capture_loop(self) -> None:
        if self.source.is_file and self.p.wait_for_subscribers_s > 0:
            if not self._wait_for_subscribers(self.p.wait_for_subscribers_s) and not self._stop.is_set():
                self.get_logger().warning(f"no subscriber after {self.p.wait_for_subscribers_s:.1f} s; playing anyway")
        period = self._period()
        next_due = time.monotonic()
        while not self._stop.is_set():
            if not self.source.is_open:
                if not self._open_with_backoff():
                    break
                period = self._period()
                next_due = time.monotonic()
            if self.source.is_file and period > 0:  # real-time pacing of files
                delay = next_due - time.monotonic()
                if delay > 0 and self._stop.wait(delay):
                    break
            t0 = time.monotonic()
            frame = self.source.read()
            if frame is None:
                if self.source.is_file:
                    if self.p.loop and self.frames > 0 and self.source.rewind():
                        continue
                    self.get_logger().info(f"end of {self.source.describe()} after {self.frames} frame(s)")
                    self.ended.set()
                    if self.p.exit_on_end:
                        request_stop()
                    break
                self.get_logger().warning(f"{self.source.describe()} stopped delivering frames; reopening")
                self.diag.report_error("source stopped delivering frames")
                self.source.release()
                continue
            now = time.monotonic()
            self.diag.tick_input()
            if self.source.is_live and period > 0 and now < next_due - 0.5 * period:
                self.diag.add_dropped()  # faster than `rate`: skip this frame
                continue
            self._publish(frame)
            self.diag.record_processing(time.monotonic() - t0)
            next_due = max(next_due + period, now - period) if period > 0 else now

    def _wait_for_subscribers(self, timeout_s: float) -> bool:
        """Up to ``timeout_s`` for a subscriber of either image topic (False: none, or stopped)."""
        end = time.monotonic() + float(timeout_s)
        pubs = [p for p in (self.pub, self.pub_compressed) if p is not None]
        while not any(p.get_subscription_count() > 0 for p in pubs):
            if time.monotonic() >= end or self._stop.wait(0.02):
                return False
        return True

    def _publish(self, frame) -> None:
        if self.p.resize and self.p.width > 0 and self.p.height > 0 \
                and (frame.shape[1], frame.shape[0]) != (self.p.width, self.p.height):
            frame = cv2.resize(frame, (int(self.p.width), int(self.p.height)), interpolation=cv2.INTER_AREA)
        if self.p.flip_horizontal:
            frame = cv2.flip(frame, 1)
        stamp = self.get_clock().now().to_msg()
        cpub = self.pub_compressed
        jpeg = None
        if cpub is not None and cpub.get_subscription_count() > 0:
            try:
                jpeg = numpy_to_compressed(frame, int(self.p.jpeg_quality), stamp=stamp, frame_id=self.p.frame_id)
            except InputError as exc:  # an odd frame from the source (e.g. 4 channels)
                self.log.warn("jpeg", f"cannot JPEG-encode a {frame.shape} frame: {exc}")
                self.diag.report_error(str(exc))
        try:
            if self.pub is not None:
                self.pub.publish(numpy_to_image(frame, "bgr8", stamp=stamp, frame_id=self.p.frame_id))
            if jpeg is not None:
                cpub.publish(jpeg)
                self.compressed_frames += 1
                self.compressed_bytes += len(jpeg.data)
                if self.compressed_frames % 30 == 1:
                    self.diag.set_value("compressed_kb_mean",
                                        f"{self.compressed_bytes / self.compressed_frames / 1024:.1f}")
        except Exception as exc:  # noqa: BLE001 - context shut down while the thread was publishing
            if rclpy.ok(context=self.context):
                raise
            self.log.warn("publish", f"publish after shutdown: {exc}")
            self._stop.set()
            return
        self.frames += 1
        self.diag.tick_output()
        if self.frames == 1:
            topics = [self.pub.topic_name] if self.pub is not None else []
            if cpub is not None:
                topics.append(f"{cpub.topic_name} (JPEG {int(self.p.jpeg_quality)}, while subscribed)")
            self.get_logger().info(f"publishing {frame.shape[1]}x{frame.shape[0]} bgr8 on {', '.join(topics)}")
            self.diag.set_value("resolution", f"{frame.shape[1]}x{frame.shape[0]}")

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout=5.0)
        self.source.release()

    def destroy_node(self) -> None:
        self.stop()
        super().destroy_node()


def main(args: Optional[list] = None) -> None:
    code = command_line(NODE_NAME, PARAMS, __doc__, args)
    exit_process(code if code is not None else run_node(CameraNode, args=args))


if __name__ == "__main__":
    import sys
    sys.exit(main())

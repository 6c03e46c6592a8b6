"""camera_node and VideoSource: frames from a generated video file reach a subscriber on a real ROS graph."""

import os
import random
import subprocess
import sys
import time

os.environ.setdefault("ROS_DOMAIN_ID", str(random.randint(1, 200)))
os.environ.setdefault("ROS_HOME", f"/tmp/emotion_ros-test-roshome-{os.getpid()}")

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402

from emotion_ros.core.sources import SourceError, VideoSource, parse_video_source  # noqa: E402
from emotion_ros.nodes.camera import CameraNode  # noqa: E402
from emotion_ros.ros.convert import image_to_numpy, stamp_to_sec  # noqa: E402
from emotion_ros.ros.node_utils import DiagnosticStatus, reliable_qos  # noqa: E402

PKG_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N_FRAMES = 12
W, H = 160, 120


def frame_value(i):
    return 20 + 18 * i  # distinct grey levels, far apart so MJPG compression cannot confuse them


def write_video(path, n=N_FRAMES, fourcc="MJPG", fps=25.0):
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (W, H))
    assert w.isOpened()
    for i in range(n):
        f = np.full((H, W, 3), frame_value(i), np.uint8)
        f[:, : W // 4] = (0, 0, 255)  # a red band on the left: tells a mirrored frame apart
        w.write(f)
    w.release()
    return str(path)


def index_of(img):
    v = float(img[:, W // 2:].mean())  # the uniform right part
    return int(round((v - 20) / 18))


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    return write_video(tmp_path_factory.mktemp("cam") / "clip.avi")


class Harness:
    """A subscriber node in the test process plus a camera node built in the same context."""

    def __init__(self, ctx, topic):
        self.ctx = ctx
        self.sub_node = Node(f"cam_test_sub_{os.getpid()}", context=ctx)
        self.msgs = []
        self.sub_node.create_subscription(Image, topic, self.msgs.append, reliable_qos(50))
        self.ex = SingleThreadedExecutor(context=ctx)
        self.ex.add_node(self.sub_node)
        self.cam = None

    def start_camera(self, topic, **params):
        params.setdefault("wait_for_subscribers_s", 10.0)
        params.setdefault("exit_on_end", False)
        params.setdefault("qos_depth", 20)
        overrides = [Parameter(k, value=v) for k, v in params.items()]
        self.cam = CameraNode(context=self.ctx, parameter_overrides=overrides,
                              cli_args=["--ros-args", "-r", f"image_raw:={topic}"])
        self.ex.add_node(self.cam)
        return self.cam

    def spin_until(self, pred, timeout=20.0):
        end = time.monotonic() + timeout
        while not pred() and time.monotonic() < end:
            self.ex.spin_once(timeout_sec=0.02)
        return pred()

    def close(self):
        if self.cam is not None:
            self.cam.destroy_node()
        self.ex.shutdown()
        self.sub_node.destroy_node()


_COUNT = iter(range(1000))


@pytest.fixture
def harness(ctx):
    topic = f"/cam_test_{os.getpid()}_{next(_COUNT)}"
    h = Harness(ctx, topic)
    h.topic = topic
    yield h
    h.close()


def test_parse_video_source():
    assert parse_video_source("0") == ("device", 0)
    assert parse_video_source(2) == ("device", 2)
    assert parse_video_source("/dev/video4") == ("device", "/dev/video4")
    assert parse_video_source("rtsp://cam/stream") == ("stream", "rtsp://cam/stream")
    assert parse_video_source("v4l2src ! videoconvert ! appsink")[0] == "gstreamer"
    assert parse_video_source("clip.mp4") == ("file", "clip.mp4")
    with pytest.raises(SourceError, match="empty"):
        parse_video_source(" ")
    with pytest.raises(SourceError, match=">= 0"):
        parse_video_source("-1")


def test_video_source_errors_name_the_problem(tmp_path):
    with pytest.raises(SourceError, match="video file not found: .*missing.avi"):
        VideoSource(str(tmp_path / "missing.avi")).open()
    junk = tmp_path / "junk.avi"
    junk.write_bytes(b"not a video at all" * 100)
    with pytest.raises(SourceError, match="cannot decode video file"):
        VideoSource(str(junk)).open()
    with pytest.raises(SourceError, match="unknown capture api"):
        VideoSource("0", api="directshow")
    if not cv2.videoio_registry.hasBackend(cv2.CAP_GSTREAMER):
        with pytest.raises(SourceError, match="no GStreamer support"):
            VideoSource("videotestsrc ! appsink").open()
    with pytest.raises(SourceError, match="cannot open camera 63"):
        VideoSource("63", api="v4l2").open()


def test_video_source_reads_every_frame_and_rewinds(video):
    src = VideoSource(video)
    src.open()
    assert src.is_file and not src.is_live and src.fps == pytest.approx(25.0)
    frames = []
    while (f := src.read()) is not None:
        frames.append(f)
    assert [index_of(f) for f in frames] == list(range(N_FRAMES))
    assert src.frame_size == (W, H)
    assert src.rewind() and index_of(src.read()) == 0
    src.release()


def test_camera_node_publishes_every_frame_of_a_file_in_order(harness, video):
    cam = harness.start_camera(harness.topic, source=video, rate=40.0, frame_id="test_cam")
    assert harness.spin_until(lambda: len(harness.msgs) >= N_FRAMES and cam.ended.is_set())
    msgs = harness.msgs
    assert len(msgs) == N_FRAMES
    for i, m in enumerate(msgs):
        assert (m.encoding, m.width, m.height, m.header.frame_id) == ("bgr8", W, H, "test_cam")
        img = image_to_numpy(m)
        assert index_of(img) == i
        assert img[H // 2, 5, 2] > 200 and img[H // 2, 5, 0] < 60  # red band on the left: not mirrored
    stamps = [stamp_to_sec(m.header.stamp) for m in msgs]
    assert all(b > a for a, b in zip(stamps, stamps[1:]))
    assert abs(stamps[-1] - time.time()) < 30  # ROS time "now", not zero or file time
    # paced at `rate` (40 Hz): the whole clip takes at least (N-1)/40 s of stamps
    assert stamps[-1] - stamps[0] >= (N_FRAMES - 1) / 40.0 * 0.8
    st = cam.diag.status()
    assert {kv.key: kv.value for kv in st.values}["resolution"] == f"{W}x{H}"


def test_camera_node_loops_resizes_and_mirrors(harness, video):
    harness.start_camera(harness.topic, source=video, rate=100.0, loop=True, width=80, height=60, resize=True,
                         flip_horizontal=True)
    assert harness.spin_until(lambda: len(harness.msgs) >= N_FRAMES + 6)
    idx = [index_of(cv2.resize(image_to_numpy(m), (W, H), interpolation=cv2.INTER_NEAREST)[:, ::-1])
           for m in harness.msgs]
    m0 = harness.msgs[0]
    assert (m0.width, m0.height) == (80, 60)
    img = image_to_numpy(m0)
    assert img[30, 78, 2] > 200 and img[30, 2, 2] < 200  # the red band moved to the right
    assert idx[:N_FRAMES] == list(range(N_FRAMES)) and idx[N_FRAMES] == 0  # back to the start


def test_missing_device_is_retried_and_reported(harness):
    cam = harness.start_camera(harness.topic, source="63", api="v4l2", retry_s=0.05, retry_max_s=0.1)
    assert harness.spin_until(lambda: cam.diag.status().level == DiagnosticStatus.ERROR, timeout=10)
    st = cam.diag.status()
    assert "cannot open camera 63" in st.message
    errors = int({kv.key: kv.value for kv in st.values}["errors"])
    time.sleep(0.5)
    assert int({kv.key: kv.value for kv in cam.diag.status().values}["errors"]) > errors  # still retrying
    assert harness.msgs == []
    t0 = time.monotonic()
    cam.stop()
    assert time.monotonic() - t0 < 3 and not cam._thread.is_alive()


def run_node_process(*ros_args, timeout=60):
    env = dict(os.environ, PYTHONPATH=PKG_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "emotion_ros.nodes.camera", "--ros-args", *ros_args],
                          env=env, capture_output=True, text=True, timeout=timeout)


def test_camera_process_with_params_file_plays_to_the_end_and_exits(ctx, video):
    topic = f"/cam_proc_{os.getpid()}"
    node = Node(f"cam_proc_sub_{os.getpid()}", context=ctx)
    got = []
    node.create_subscription(Image, topic, got.append, reliable_qos(50))
    env = dict(os.environ, PYTHONPATH=PKG_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    p = subprocess.Popen([sys.executable, "-m", "emotion_ros.nodes.camera", "--ros-args",
                          "--params-file", os.path.join(PKG_ROOT, "config", "emotion.yaml"),
                          "-p", f"source:={video}", "-p", "rate:=50.0", "-p", "wait_for_subscribers_s:=20.0", "-p", "qos_depth:=20",
                          "-r", f"image_raw:={topic}"],
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ex = SingleThreadedExecutor(context=ctx)
    ex.add_node(node)
    try:
        end = time.monotonic() + 40
        while p.poll() is None and time.monotonic() < end:
            ex.spin_once(timeout_sec=0.02)
        end = time.monotonic() + 1.0
        while time.monotonic() < end:
            ex.spin_once(timeout_sec=0.02)
        out = p.communicate(timeout=10)[0]
    finally:
        if p.poll() is None:
            p.kill()
        ex.shutdown()
        node.destroy_node()
    assert p.returncode == 0, out
    assert f"end of video file '{video}' after {N_FRAMES} frame(s)" in out
    assert [index_of(image_to_numpy(m)) for m in got] == list(range(N_FRAMES))
    assert got[0].header.frame_id == "camera"  # from config/emotion.yaml


def test_camera_process_missing_file_exits_1_naming_it(tmp_path):
    r = run_node_process("-p", f"source:={tmp_path / 'nope.mp4'}")
    assert r.returncode == 1
    assert f"video file not found: {tmp_path / 'nope.mp4'}" in r.stderr + r.stdout

"""face_node on a real ROS 2 graph: a node process fed images over DDS, plus lifecycle checks in-process."""
import os
import random
import time

os.environ.setdefault("ROS_DOMAIN_ID", str(random.randint(1, 200)))
os.environ.setdefault("ROS_HOME", f"/tmp/emotion_ros-test-roshome-{os.getpid()}")

import cv2  # noqa: E402
import matplotlib.cbook as cbook  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import rclpy  # noqa: E402
import torch  # noqa: E402
from builtin_interfaces.msg import Time  # noqa: E402
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from emotion_msgs.msg import FaceEmotionArray  # noqa: E402
from lifecycle_msgs.msg import Transition  # noqa: E402
from lifecycle_msgs.srv import ChangeState  # noqa: E402
from rclpy.context import Context  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402

from emotion_ros.core.face.detect import iou  # noqa: E402
from emotion_ros.core.face.model import ARCH, DEFAULT_INPUT, FaceCNN  # noqa: E402
from emotion_ros.core.labels import LABELS  # noqa: E402
from emotion_ros.core.modelio import save_checkpoint  # noqa: E402
from emotion_ros.ros.convert import numpy_to_image  # noqa: E402
from emotion_ros.ros.node_utils import reliable_qos  # noqa: E402
from robust_helpers import start_node, stop_node  # noqa: E402

PKG_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOPPER_FACE = (155.0, 105.0, 222.0, 222.0)


def small_checkpoint(path, widths=(8, 16), embed_dim=256):
    torch.manual_seed(0)
    save_checkpoint(str(path), kind="face", arch=ARCH, model=FaceCNN(widths=widths, embed_dim=embed_dim),
                    input_spec=dict(DEFAULT_INPUT), config={"model": {"widths": list(widths), "embed_dim": embed_dim}})
    return str(path)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return small_checkpoint(tmp_path_factory.mktemp("face_node") / "face.pt")


@pytest.fixture(scope="module")
def hopper():
    with cbook.get_sample_data("grace_hopper.jpg") as f:
        path = f.name
    return cv2.imread(path, cv2.IMREAD_COLOR)


class Graph:
    """The test's side of the graph: image publisher, result / debug / diagnostics subscribers."""

    def __init__(self, ctx):
        self.ctx = ctx
        self.node = Node("face_node_tester", context=ctx)
        self.image_pub = self.node.create_publisher(Image, "image_raw", reliable_qos(5))
        self.results = []
        self.debug = []
        self.diags = []
        self.node.create_subscription(FaceEmotionArray, "emotion/faces", self.results.append, reliable_qos(50))
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self.diags.append, 50)
        self._debug_sub = None
        self.ex = SingleThreadedExecutor(context=ctx)
        self.ex.add_node(self.node)

    def subscribe_debug(self):
        self._debug_sub = self.node.create_subscription(Image, "emotion/face_debug", self.debug.append, 10)

    def spin_until(self, pred, timeout):
        end = time.monotonic() + timeout
        while not pred() and time.monotonic() < end:
            self.ex.spin_once(timeout_sec=0.02)
        return pred()

    def diag_values(self):
        """Key/values of the newest face_node diagnostics status, or {}."""
        for arr in reversed(self.diags):
            for st in arr.status:
                if st.name.startswith("face_node"):
                    return {kv.key: kv.value for kv in st.values}
        return {}

    def bad_frames(self):
        return int(self.diag_values().get("bad_frames", "0"))

    def result_for(self, stamp):
        for r in self.results:
            if r.header.stamp.sec == stamp.sec and r.header.stamp.nanosec == stamp.nanosec:
                return r
        return None

    def send_until_answered(self, msg, timeout=20.0, period=0.5):
        """Publish ``msg`` (again every ``period``: the node's subscription is best effort) until its result comes."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            self.image_pub.publish(msg)
            if self.spin_until(lambda: self.result_for(msg.header.stamp) is not None, period):
                return self.result_for(msg.header.stamp)
        return None

    def close(self):
        self.ex.shutdown()
        self.node.destroy_node()


@pytest.fixture(scope="module")
def missing_model_run(tmp_path_factory):
    """A face_node process given a model file that does not exist (started early: it runs beside the others)."""
    tmp = tmp_path_factory.mktemp("face_node_missing")
    log_path = tmp / "missing.log"
    proc, log = start_node("face", log_path, f"model_path:={tmp / 'no_such_dir' / 'face_missing.pt'}",
                           "device:=cpu")
    yield proc, log, log_path
    stop_node(proc, log)


@pytest.fixture(scope="module")
def running(ckpt, tmp_path_factory, missing_model_run):
    """A face_node process (autostart) and the test's graph, matched."""
    log_path = tmp_path_factory.mktemp("face_node_log") / "face_node.log"
    proc, log = start_node("face", log_path, f"model_path:={ckpt}", "device:=cpu", "full_detect_every:=1")
    ctx = Context()
    rclpy.init(context=ctx)
    g = Graph(ctx)
    try:
        ok = g.spin_until(lambda: g.image_pub.get_subscription_count() > 0
                          and g.node.count_publishers("emotion/faces") > 0 or proc.poll() is not None, 40.0)
        if not ok or proc.poll() is not None:
            pytest.fail(f"face_node did not come up (rc={proc.poll()}):\n{open(log_path).read()}")
        yield g, proc, log_path
    finally:
        g.close()
        rclpy.shutdown(context=ctx)
        stop_node(proc, log)


def make_msg(img, encoding, sec, frame_id="camera_optical"):
    if encoding == "rgb8":
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    elif encoding == "mono8":
        img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    return numpy_to_image(img, encoding, stamp=Time(sec=sec, nanosec=123_000_000), frame_id=frame_id)


def check_result(res, msg):
    assert res is not None, "no FaceEmotionArray for the image"
    assert res.header.frame_id == msg.header.frame_id
    assert (res.image_width, res.image_height) == (msg.width, msg.height)
    assert len(res.faces) == 1, res.faces
    f = res.faces[0]
    assert f.id.startswith("face_")
    # HOPPER_FACE is Haar's box; the node's BlazeFace box is tighter (brows to chin): IoU ~0.70
    assert iou((f.x, f.y, f.width, f.height), HOPPER_FACE) > 0.6
    assert 0.0 < f.detection_confidence <= 1.0
    assert list(f.labels) == list(LABELS)
    probs = np.asarray(f.probabilities)
    assert probs.shape == (7,) and abs(probs.sum() - 1.0) < 1e-4
    assert f.emotion == LABELS[int(np.argmax(probs))] and f.confidence == pytest.approx(probs.max(), abs=1e-6)
    assert len(f.embedding) == 256
    return f


@pytest.mark.parametrize("encoding", ["bgr8", "rgb8", "mono8"])
def test_photo_gives_faces_with_the_image_header(running, hopper, encoding):
    g, proc, _ = running
    sec = 1000 + ["bgr8", "rgb8", "mono8"].index(encoding)
    msg = make_msg(hopper, encoding, sec)
    f = check_result(g.send_until_answered(msg), msg)
    assert proc.poll() is None
    test_photo_gives_faces_with_the_image_header.ids = getattr(
        test_photo_gives_faces_with_the_image_header, "ids", set()) | {f.id}


def test_bad_frames_do_not_stop_the_node(running, hopper):
    g, proc, log_path = running
    bad_encoding = make_msg(hopper, "bgr8", 2000)
    bad_encoding.encoding = "weird16"
    truncated = make_msg(hopper, "bgr8", 2001)
    truncated.data = truncated.data[: len(truncated.data) // 2]
    padded_wrong = make_msg(hopper, "mono8", 2002)
    padded_wrong.step = padded_wrong.width - 1
    empty = Image(height=0, width=0, encoding="bgr8", step=0)
    empty.header.stamp = Time(sec=2003)
    for m in (bad_encoding, truncated, padded_wrong, empty):
        # each bad frame reaches the node (its diagnostics count it) and is skipped
        before = g.bad_frames()
        end = time.monotonic() + 15.0
        while g.bad_frames() <= before and time.monotonic() < end:
            g.image_pub.publish(m)
            g.spin_until(lambda: g.bad_frames() > before, 0.3)
        assert g.bad_frames() > before, f"bad frame {m.encoding!r} {m.width}x{m.height} not counted"
        assert proc.poll() is None
    good = make_msg(hopper, "bgr8", 2010)
    check_result(g.send_until_answered(good), good)
    assert proc.poll() is None
    for sec in (2000, 2001, 2002, 2003):
        assert g.result_for(Time(sec=sec, nanosec=123_000_000 if sec < 2003 else 0)) is None
    # the node said why (rate-limited), naming the problem
    assert g.spin_until(lambda: "skipping image" in open(log_path).read(), 5.0)
    assert any(word in open(log_path).read() for word in ("weird16", "truncated", "step", "empty"))


def test_debug_image_only_while_subscribed(running, hopper):
    g, _, _ = running
    g.subscribe_debug()
    assert g.spin_until(lambda: g.node.count_subscribers("emotion/face_debug") > 0, 10.0)
    msg = make_msg(hopper, "mono8", 3000)
    end = time.monotonic() + 20
    while time.monotonic() < end and not g.debug:
        g.image_pub.publish(msg)
        g.spin_until(lambda: bool(g.debug), 0.5)
    assert g.debug, "no debug image"
    d = g.debug[-1]
    assert d.encoding == "bgr8" and (d.width, d.height) == (msg.width, msg.height)
    assert d.header.stamp.sec == 3000 and d.header.frame_id == msg.header.frame_id
    img = np.frombuffer(bytes(d.data), np.uint8).reshape(d.height, d.width, 3)
    # the box is drawn in green on a grey input
    x, y, w, h = (int(v) for v in HOPPER_FACE)
    band = img[y + h // 2 - 5: y + h // 2 + 5, x - 8: x + w + 8]   # across the face: both vertical sides
    assert ((band[..., 1] > 200) & (band[..., 0] < 80) & (band[..., 2] < 80)).any()


def test_diagnostics_report_device_and_model(running, ckpt, hopper):
    g, _, _ = running
    msg = make_msg(hopper, "mono8", 3500)
    assert g.send_until_answered(msg) is not None

    def mine():
        for arr in reversed(g.diags):
            for st in arr.status:
                if st.name.startswith("face_node"):
                    return {kv.key: kv.value for kv in st.values}
        return None
    ok = g.spin_until(lambda: mine() is not None and int(mine().get("outputs", "0")) > 0, 10.0)
    assert ok, (len(g.diags), [s.name for a in g.diags[-3:] for s in a.status], mine())
    values = mine()
    assert values["device"] == "cpu" and values["model"] == ckpt
    assert values["precision"] == "float32"  # int8 asked for (default), but this test file has no ranges
    assert values["full_detect"] == "every 1 frame(s), in line"  # started with full_detect_every:=1
    assert values["switch_interval_ms"] == "1"  # the node's default, set in its process
    assert float(values["processing_ms_p50"]) > 0


def test_lifecycle_deactivate_stops_and_activate_resumes(running, hopper):
    g, proc, _ = running
    cli = g.node.create_client(ChangeState, "/face_node/change_state")
    assert cli.wait_for_service(timeout_sec=30.0)

    def change(tid):
        fut = cli.call_async(ChangeState.Request(transition=Transition(id=tid)))
        assert g.spin_until(fut.done, 15.0)
        return fut.result().success
    assert change(Transition.TRANSITION_DEACTIVATE)
    assert g.spin_until(lambda: g.image_pub.get_subscription_count() == 0, 10.0)
    msg = make_msg(hopper, "bgr8", 4000)
    for _ in range(5):
        g.image_pub.publish(msg)
        g.spin_until(lambda: False, 0.1)
    assert g.result_for(msg.header.stamp) is None
    assert change(Transition.TRANSITION_ACTIVATE)
    assert g.spin_until(lambda: g.image_pub.get_subscription_count() > 0, 10.0)
    msg2 = make_msg(hopper, "bgr8", 4001)
    check_result(g.send_until_answered(msg2), msg2)
    assert proc.poll() is None


def test_missing_model_exits_nonzero_naming_the_file(missing_model_run):
    proc, log, log_path = missing_model_run
    try:
        rc = proc.wait(timeout=60)
    finally:
        stop_node(proc, log)
    out = open(log_path).read()
    assert rc != 0, out
    assert "face_missing.pt" in out, out


# ------------------------------------------------------------------------------------------- in-process ---

@pytest.fixture
def inproc(ckpt, ctx):
    from emotion_ros.nodes.face import FaceNode
    made = []

    def make(**params):
        overrides = [Parameter(k, value=v) for k, v in {"model_path": ckpt, "device": "cpu", **params}.items()]
        n = FaceNode(context=ctx, parameter_overrides=overrides)
        made.append(n)
        return n
    yield make
    for n in made:
        n.destroy_node()


def test_lifecycle_states_load_and_drop_the_model(inproc, hopper):
    from rclpy.lifecycle import TransitionCallbackReturn as R
    n = inproc(publish_embedding=False)
    assert n.model is None
    assert n.trigger_configure() == R.SUCCESS and n.model is not None
    assert n.trigger_activate() == R.SUCCESS
    out = n.process(make_msg(hopper, "bgr8", 5))
    assert len(out.faces) == 1 and len(out.faces[0].embedding) == 0
    bad = make_msg(hopper, "bgr8", 6)
    bad.encoding = "nope"
    assert n.process(bad) is None and n.bad_frames == 1
    assert n.trigger_deactivate() == R.SUCCESS and n.model is not None and n.model.device.type == "cpu"
    assert n.process(make_msg(hopper, "bgr8", 7)) is None  # not active: nothing published
    assert n.trigger_cleanup() == R.SUCCESS and n.model is None
    # configure again works (parameters re-read)
    n.set_parameters([Parameter("max_faces", value=1)])
    assert n.trigger_configure() == R.SUCCESS and n.pipeline.max_faces == 1


def test_configure_fails_for_unknown_detector_or_missing_yunet(inproc, tmp_path):
    from rclpy.lifecycle import TransitionCallbackReturn as R
    assert inproc(detector="mtcnn").trigger_configure() == R.FAILURE
    n = inproc(detector="yunet", yunet_model=str(tmp_path / "yunet.onnx"))
    assert n.trigger_configure() == R.FAILURE and n.model is None


def test_int8_without_ranges_in_the_model_file_runs_float(inproc):
    from rclpy.lifecycle import TransitionCallbackReturn as R
    n = inproc(int8=True)
    assert n.trigger_configure() == R.SUCCESS and not n.model.runs_int8
    assert "no int8 activation ranges" in n.model.int8_fallback


def test_parameters_are_declared_with_descriptions_and_yaml_defaults(inproc):
    import yaml
    n = inproc()
    with open(os.path.join(PKG_ROOT, "config", "emotion.yaml")) as f:
        cfg = yaml.safe_load(f)["face_node"]["ros__parameters"]
    from emotion_ros.nodes.face import PARAMS
    assert set(cfg) == set(PARAMS)
    for name, (default, _desc, *_range) in PARAMS.items():
        assert n.describe_parameter(name).description
        assert cfg[name] == default, name
    # build_pipeline's defaults are the node's
    from emotion_ros.core.face.pipeline import build_pipeline
    from rclpy.lifecycle import TransitionCallbackReturn as R
    assert n.trigger_configure() == R.SUCCESS
    built = build_pipeline(n.model)
    pl = n.pipeline
    def det(d):
        return tuple(getattr(d, k, None) for k in ("name", "model", "score_threshold", "max_width", "min_neighbors",
                                                   "min_size_frac"))
    assert (built.full_detect_every, built.max_faces, built.aligner.margin, built.tracker.iou_threshold,
            built.tracker.max_missed, det(built.detector)) == \
        (pl.full_detect_every, pl.max_faces, pl.aligner.margin, pl.tracker.iou_threshold, pl.tracker.max_missed,
         det(pl.detector))
    assert pl.detector.name == "blazeface"

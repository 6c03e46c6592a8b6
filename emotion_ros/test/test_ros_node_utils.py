"""emotion_ros.ros.node_utils on a real ROS 2 graph (rclpy + Fast DDS in this process)."""

import os
import random
import threading
import time

os.environ.setdefault("ROS_DOMAIN_ID", str(random.randint(1, 200)))
os.environ.setdefault("ROS_HOME", f"/tmp/emotion_ros-test-roshome-{os.getpid()}")

import pytest  # noqa: E402
import rclpy  # noqa: E402
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus  # noqa: E402
from rclpy.context import Context  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.qos import DurabilityPolicy, ReliabilityPolicy  # noqa: E402
from std_msgs.msg import String  # noqa: E402

from emotion_ros.ros.node_utils import (  # noqa: E402
    ERROR, OK, WARN, Diagnostics, LatestSlot, RateLimitedLogger, declare_parameters, latched_qos, reliable_qos,
    sensor_qos)


@pytest.fixture
def nodes(ctx):
    made = []

    def make(name, **kw):
        n = Node(name, context=ctx, **kw)
        made.append(n)
        return n
    yield make
    for n in made:
        n.destroy_node()


def spin_until(ctx, nodes, pred, timeout=10.0):
    ex = SingleThreadedExecutor(context=ctx)
    for n in nodes:
        ex.add_node(n)
    end = time.monotonic() + timeout
    try:
        while not pred() and time.monotonic() < end:
            ex.spin_once(timeout_sec=0.02)
    finally:
        ex.shutdown()
    return pred()


# ------------------------------------------------------------------------------------------- parameters ---

def test_declare_parameters_defaults_descriptions_and_overrides(nodes):
    n = nodes("params_node", parameter_overrides=[Parameter("rate", value=7.5), Parameter("face.min_size", value=40)])
    p = declare_parameters(n, {
        "rate": (30.0, "Frames per second"),
        "device": ("auto", "Torch device"),
        "face.min_size": (24, "Smallest face in pixels"),
        "labels": ([], "Label subset"),
        "anything": (None, "Untyped"),
        "frozen": (True, "Read-only flag", {"read_only": True}),
    })
    assert p.rate == 7.5 and p.device == "auto" and p.face_min_size == 40
    assert p.labels == [] and p.anything is None and p.frozen is True
    desc = n.describe_parameter("rate")
    assert desc.description == "Frames per second"
    assert n.describe_parameter("frozen").read_only
    assert n.describe_parameter("anything").dynamic_typing
    # typed string array: a set with strings works, with ints is refused
    assert n.set_parameters([Parameter("labels", value=["happy", "sad"])])[0].successful
    assert not n.set_parameters([Parameter("labels", value=[1, 2])])[0].successful
    # declaring again returns the current values and does not raise
    again = declare_parameters(n, {"rate": (1.0, "x")})
    assert again.rate == 7.5
    with pytest.raises(ValueError):
        declare_parameters(n, {"bad": 3})


def test_declare_parameters_reads_a_ros2_params_file(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("yaml_node:\n  ros__parameters:\n    rate: 12.0\n    source: video.mp4\n"
                 "/**:\n  ros__parameters:\n    loop: true\n")
    c = Context()
    rclpy.init(args=["--ros-args", "--params-file", str(f)], context=c)
    try:
        n = Node("yaml_node", context=c)
        p = declare_parameters(n, {"rate": (30.0, "r"), "source": ("0", "s"), "loop": (False, "l"),
                                   "width": (0, "w")})
        assert (p.rate, p.source, p.loop, p.width) == (12.0, "video.mp4", True, 0)
        n.destroy_node()
    finally:
        rclpy.shutdown(context=c)


# ---------------------------------------------------------------------------------------------- logging ---

class Recorder:
    def __init__(self):
        self.lines = []

    def info(self, m):
        self.lines.append(("info", m))

    def warning(self, m):
        self.lines.append(("warn", m))

    def error(self, m):
        self.lines.append(("error", m))

    def debug(self, m):
        self.lines.append(("debug", m))


def test_rate_limited_logger_suppresses_and_counts():
    now = [100.0]
    rec = Recorder()
    log = RateLimitedLogger(rec, period_s=5.0, clock=lambda: now[0])
    assert log.warn("decode", "bad frame 1")
    assert not log.warn("decode", "bad frame 2")
    assert not log.error("decode", "bad frame 3")
    assert log.suppressed("decode") == 2
    assert log.info("other", "different key passes")
    now[0] += 4.9
    assert not log.warn("decode", "still inside the period")
    now[0] += 0.2
    assert log.error("decode", "bad frame 9")
    assert rec.lines == [("warn", "bad frame 1"), ("info", "different key passes"),
                         ("error", "bad frame 9 (3 similar suppressed)")]
    now[0] += 10
    log.warn("decode", "quiet since")
    assert rec.lines[-1] == ("warn", "quiet since")


def test_rate_limited_logger_works_with_an_rclpy_logger(nodes):
    log = RateLimitedLogger(nodes("log_node").get_logger(), period_s=60)
    assert log.warn("k", "first") and not log.warn("k", "second")
    # every severity from one RateLimitedLogger (rclpy refuses two severities from one call site)
    assert log.info("i", "info") and log.error("e", "error") and log.debug("d", "debug") and log.warn("w", "warn")


# -------------------------------------------------------------------------------------------------- QoS ---

def test_qos_profiles():
    s = sensor_qos(3)
    assert (s.reliability, s.durability, s.depth) == (ReliabilityPolicy.BEST_EFFORT, DurabilityPolicy.VOLATILE, 3)
    r = reliable_qos()
    assert (r.reliability, r.durability, r.depth) == (ReliabilityPolicy.RELIABLE, DurabilityPolicy.VOLATILE, 10)
    latched = latched_qos()
    assert (latched.reliability, latched.durability, latched.depth) == (
        ReliabilityPolicy.RELIABLE, DurabilityPolicy.TRANSIENT_LOCAL, 1)


def test_latched_qos_delivers_the_last_message_to_a_late_subscriber(ctx, nodes):
    pub_node, sub_node = nodes("latch_pub"), nodes("latch_sub")
    pub = pub_node.create_publisher(String, "latch_test", latched_qos())
    pub.publish(String(data="old"))
    pub.publish(String(data="info"))
    got = []
    sub_node.create_subscription(String, "latch_test", lambda m: got.append(m.data), latched_qos())
    assert spin_until(ctx, [pub_node, sub_node], lambda: got, timeout=10)
    assert got == ["info"]


# ---------------------------------------------------------------------------------------------- mailbox ---

def test_latest_slot_keeps_only_the_newest():
    s = LatestSlot()
    assert s.take() is None and not s
    assert s.put(1) is False
    assert s.put(2) is True and s.put(3) is True
    assert s and s.dropped == 2
    assert s.take() == 3 and s.take() is None
    s.put(None)  # None is a valid item: the slot is full
    assert s
    s.clear()
    assert not s and s.take() is None


def test_latest_slot_take_waits_for_a_producer():
    s = LatestSlot()
    threading.Timer(0.05, s.put, args=("frame",)).start()
    assert s.take(timeout=5.0) == "frame"
    t0 = time.monotonic()
    assert s.take(timeout=0.05) is None
    assert time.monotonic() - t0 >= 0.04


def test_latest_slot_under_concurrency_accounts_for_every_item():
    s = LatestSlot()
    n = 20000
    taken = []
    done = threading.Event()

    def consume():
        while not done.is_set() or s:
            item = s.take(timeout=0.01)
            if item is not None:
                taken.append(item)

    t = threading.Thread(target=consume)
    t.start()
    for i in range(n):
        s.put(i)
    done.set()
    t.join(10)
    assert len(taken) + s.dropped == n
    assert taken == sorted(taken) and taken[-1] == n - 1


# ------------------------------------------------------------------------------------------ diagnostics ---

def _values(st: DiagnosticStatus):
    return {kv.key: kv.value for kv in st.values}


def test_diagnostics_levels_are_published_on_slash_diagnostics(ctx, nodes):
    now = [1000.0]
    node = nodes("diag_node")
    listener = nodes("diag_listener")
    got = []
    listener.create_subscription(DiagnosticArray, "/diagnostics", got.append, 50)
    d = Diagnostics(node, "camera", hardware_id="cam0", expected_rate_hz=10, stale_after_s=0.5, period_s=0,
                    error_hold_s=3.0, clock=lambda: now[0])
    d.set_value("device", "cpu")
    d.set_value("model", "face.pt")
    assert spin_until(ctx, [node, listener], lambda: d._pub.get_subscription_count() > 0)

    def report():
        n0 = len(got)
        d.publish()
        assert spin_until(ctx, [node, listener], lambda: len(got) > n0)
        st = got[-1].status[0]
        return st.level, st.message, _values(st)

    level, msg, v = report()
    assert level == OK and msg == "waiting for input"
    assert got[-1].status[0].name == "diag_node: camera" and got[-1].status[0].hardware_id == "cam0"
    assert v["device"] == "cpu" and v["model"] == "face.pt" and v["seconds_since_input"] == "inf"

    for _ in range(20):  # 10 Hz input, 10 ms processing
        now[0] += 0.1
        d.tick_input()
        d.record_processing(0.010)
        d.tick_output()
    level, msg, v = report()
    assert level == OK, msg
    assert float(v["input_rate_hz"]) == pytest.approx(10, rel=0.1)
    assert float(v["output_rate_hz"]) == pytest.approx(10, rel=0.1)
    assert float(v["processing_ms_p50"]) == pytest.approx(10, rel=0.01)
    assert v["inputs"] == "20" and v["dropped"] == "0"

    now[0] += 1.0  # silent for 1 s > stale_after_s
    level, msg, _ = report()
    assert level == WARN and "input stale" in msg
    now[0] += 2.0  # 3 s > 5 x 0.5 s
    level, msg, _ = report()
    assert level == ERROR and "input stale" in msg

    for _ in range(60):  # back for 6 s, but processing (200 ms) slower than the 100 ms input period
        now[0] += 0.1
        d.tick_input()
        d.record_processing(0.200)
    level, msg, _ = report()
    assert level == WARN and "slower than input period" in msg

    d2 = Diagnostics(node, "drops", stale_after_s=None, period_s=0, clock=lambda: now[0])
    assert d2.status().level == OK
    d2.add_dropped(3)
    st = d2.status()
    assert st.level == WARN and "dropped 3" in st.message and _values(st)["dropped"] == "3"
    st = d2.status()  # no new drops since the last report
    assert st.level == OK and _values(st)["dropped"] == "3"
    d2.report_error("decode failed: truncated image")
    st = d2.status()
    assert st.level == ERROR and "truncated image" in st.message and _values(st)["errors"] == "1"
    now[0] += 5.1  # past error_hold_s
    assert d2.status().level == OK
    d2.destroy()


def test_diagnostics_timer_publishes_periodically(ctx, nodes):
    node = nodes("diag_timer_node")
    listener = nodes("diag_timer_listener")
    got = []
    listener.create_subscription(
        DiagnosticArray, "/diagnostics",
        lambda m: got.extend(s for s in m.status if s.name == "diag_timer_node: voice"), 50)
    d = Diagnostics(node, "voice", stale_after_s=10.0, period_s=0.1)
    d.tick_input()
    assert spin_until(ctx, [node, listener], lambda: len(got) >= 3)
    assert all(s.level == OK for s in got) and d.last_status is not None
    d.destroy()


def test_diagnostics_expected_rate_warns_when_input_is_slow():
    now = [0.0]

    class FakeNode:  # only for the pure level logic: publisher never used here
        def get_name(self):
            return "n"

        def create_publisher(self, *a, **k):
            return None

    d = Diagnostics(FakeNode(), "cam", expected_rate_hz=30, stale_after_s=5, period_s=0, clock=lambda: now[0])
    for _ in range(10):
        now[0] += 0.5  # 2 Hz instead of 30
        d.tick_input()
    st = d.status()
    assert st.level == WARN and "input rate" in st.message

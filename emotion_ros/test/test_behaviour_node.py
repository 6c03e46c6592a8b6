"""behaviour_node as a real process: sustained emotional states in, decisions / speech / expressions out."""
import os
import random
import signal
import subprocess
import sys
import time

os.environ.setdefault("ROS_DOMAIN_ID", str(random.randint(1, 200)))
os.environ.setdefault("ROS_HOME", f"/tmp/emotion_ros-test-roshome-{os.getpid()}")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.node import Node  # noqa: E402
from std_msgs.msg import String  # noqa: E402

from emotion_msgs.msg import BehaviourDecision, EmotionState  # noqa: E402
from emotion_ros.core.behaviour import load_rules  # noqa: E402
from emotion_ros.core.labels import INDEX, LABELS, valence_arousal  # noqa: E402
from emotion_ros.ros.convert import sec_to_stamp  # noqa: E402
from emotion_ros.ros.node_utils import reliable_qos  # noqa: E402

PKG_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIPPED = os.path.join(PKG_ROOT, "config", "behaviour_rules.yaml")


@pytest.fixture
def launch():
    procs = []

    def start(*ros_args):
        env = dict(os.environ, PYTHONPATH=PKG_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
                   PYTHONUNBUFFERED="1")
        p = subprocess.Popen([sys.executable, "-m", "emotion_ros.nodes.behaviour", "--ros-args", *ros_args],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        procs.append(p)
        return p
    yield start
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.communicate()


def make_state(t, label, conf, person="ana"):
    p = np.full(len(LABELS), (1 - conf) / (len(LABELS) - 1), np.float32)
    p[INDEX[label]] = conf
    v, a = valence_arousal(p)
    msg = EmotionState(person_id=person, primary=True, emotion=label, confidence=conf, valence=v, arousal=a,
                       face_weight=0.7, voice_weight=0.3)
    msg.header.stamp = sec_to_stamp(t)
    msg.labels = list(LABELS)
    msg.probabilities = p.tolist()
    return msg


def test_sustained_sadness_gives_one_comforting_decision_then_release(ctx, launch):
    ns = f"/beh{os.getpid()}"
    # the shipped parameter file, one value overridden
    proc = launch("-r", f"__ns:={ns}", "--params-file", os.path.join(PKG_ROOT, "config", "emotion.yaml"),
                  "-p", "state_timeout_s:=1.0")
    node = Node(f"behaviour_test_peer_{os.getpid()}", namespace=ns, context=ctx)
    ex = SingleThreadedExecutor(context=ctx)
    ex.add_node(node)
    decisions, says, expressions = [], [], []
    pub = node.create_publisher(EmotionState, "emotion/state", reliable_qos(10))
    node.create_subscription(BehaviourDecision, "emotion/decision", decisions.append, reliable_qos(10))
    node.create_subscription(String, "emotion/say", lambda m: says.append(m.data), reliable_qos(10))
    node.create_subscription(String, "emotion/expression", lambda m: expressions.append(m.data), reliable_qos(10))

    def spin_until(pred, timeout):
        end = time.monotonic() + timeout
        while not pred() and time.monotonic() < end:
            ex.spin_once(timeout_sec=0.02)
        return pred()

    def now():
        return node.get_clock().now().nanoseconds * 1e-9

    rule = {r.name: r for r in load_rules(SHIPPED)}["comfort_sad"]
    try:
        assert spin_until(lambda: pub.get_subscription_count() >= 1 and
                          node.count_publishers(f"{ns}/emotion/decision") >= 1, 30), "behaviour_node not up"
        t_start = time.monotonic()
        t_first = None
        while time.monotonic() - t_start < rule.dwell_s + 2.0:
            pub.publish(make_state(now(), "sad", 0.7))
            spin_until(lambda: False, 0.1)
            if decisions and t_first is None:
                t_first = time.monotonic() - t_start
        assert len(decisions) == 1, [d.rule for d in decisions]  # fires once, then stays active
        d = decisions[0]
        assert d.rule == "comfort_sad" and d.emotion == "sad" and d.person_id == "ana"
        assert d.confidence == pytest.approx(0.7, abs=1e-5)
        assert d.say == rule.text("ana") and "ana" in d.say and says == [d.say]
        assert d.expression == "sad" and expressions == ["sad"]
        assert 0.0 <= d.motion_scale <= 0.3
        assert rule.dwell_s - 0.3 <= t_first <= rule.dwell_s + 1.0, t_first  # after the dwell time, not before
        # the states stop: after state_timeout_s the rule is released (default expression, no speech)
        assert spin_until(lambda: len(decisions) >= 2 and len(expressions) >= 2, 5.0), "no release after the states"
        assert decisions[1].rule == "default" and decisions[1].say == "" and expressions[-1] == "neutral"
        assert says == [d.say]
    finally:
        ex.shutdown()
        node.destroy_node()
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=15)
    assert proc.returncode == 0, out
    assert "Traceback" not in out, out


def test_invalid_rules_file_fails_at_start_naming_file_and_problem(launch, tmp_path):
    bad = tmp_path / "bad_rules.yaml"
    bad.write_text("rules:\n  - {name: cheer_up, emotion: joyful, say: 'Yay'}\n")
    proc = launch("-p", f"rules_file:={bad}")
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode != 0, out
    assert str(bad) in out and "cheer_up" in out and "unknown emotion 'joyful'" in out, out


def test_missing_rules_file_fails_at_start(launch, tmp_path):
    missing = str(tmp_path / "nope" / "rules.yaml")
    proc = launch("-p", f"rules_file:={missing}")
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode != 0 and missing in out and "not found" in out, out

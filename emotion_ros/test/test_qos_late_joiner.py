"""QoS for late joiners (docs/ARCHITECTURE.md, "QoS"): a behaviour_node started after the state stream began still
acts on it, and what it published before a display started reaches that display (``emotion/expression`` is
transient local); events (``emotion/say``, ``emotion/decision``) are not replayed to late listeners."""
from __future__ import annotations

import threading

import numpy as np

from robust_helpers import Graph, NodeProcess  # noqa: E402 (sets ROS_DOMAIN_ID / ROS_HOME)

from emotion_msgs.msg import BehaviourDecision, EmotionState  # noqa: E402
from rclpy.qos import DurabilityPolicy, ReliabilityPolicy  # noqa: E402
from std_msgs.msg import String  # noqa: E402

from emotion_ros.core.labels import INDEX, LABELS  # noqa: E402
from emotion_ros.ros.convert import sec_to_stamp  # noqa: E402
from emotion_ros.ros.node_utils import latched_qos, reliable_qos  # noqa: E402


def state(t: float, label: str = "happy", conf: float = 0.9) -> EmotionState:
    p = np.full(len(LABELS), (1 - conf) / (len(LABELS) - 1), np.float32)
    p[INDEX[label]] = conf
    msg = EmotionState(person_id="face_1", primary=True, emotion=label, confidence=conf, face_weight=1.0)
    msg.header.stamp = sec_to_stamp(t)
    msg.labels = list(LABELS)
    msg.probabilities = p.tolist()
    return msg


# dwell 1 s: the decision is a volatile event published once; the test's node discovers the behaviour node first
RULES = """rules:
  - name: greet_happy
    emotion: happy
    min_confidence: 0.5
    dwell_s: 1.0
    say: "You look happy!"
    expression: happy
    cooldown_s: 60
"""


def test_behaviour_started_last_acts_and_a_later_display_gets_the_latched_expression(tmp_path):
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    g = Graph("late_joiner_tester")
    pub = g.publisher("emotion/state", EmotionState, reliable_qos(10))
    stop = threading.Event()

    def stream():  # what fusion_node does between faces: a state at its steady rate (10 Hz), before and after
        while not stop.wait(0.1):
            pub.publish(state(g.node.get_clock().now().nanoseconds * 1e-9))
    feeder = threading.Thread(target=stream, daemon=True)
    feeder.start()
    beh = None
    try:
        g.spin_for(1.0)  # the stream runs before the behaviour node exists
        decisions = g.subscribe("emotion/decision", BehaviourDecision, reliable_qos(10))
        beh = NodeProcess("behaviour", str(tmp_path), {"rules_file": rules, "min_say_interval_s": 0.0})
        assert g.spin_until(lambda: bool(decisions) or not beh.alive(), 60), beh.output()[-3000:]
        d = decisions[0][1]
        assert d.emotion == "happy" and d.rule == "greet_happy" and d.say == "You look happy!", d
        # a display (and a TTS) that start only now: the expression is latched, speech is not replayed
        late_expr = g.subscribe("emotion/expression", String, latched_qos())
        late_say = g.subscribe("emotion/say", String, reliable_qos(10))
        stop.set()
        assert g.spin_until(lambda: bool(late_expr), 20), "the late display got no expression"
        assert late_expr[0][1].data == "happy"
        g.spin_for(0.5)
        assert late_say == []
        # the offered QoS is the documented one
        info = {"/" + t: i.qos_profile for t in ("emotion/expression", "emotion/say", "emotion/decision")
                for i in g.node.get_publishers_info_by_topic("/" + t) if i.node_name == "behaviour_node"}
        assert info["/emotion/expression"].durability == DurabilityPolicy.TRANSIENT_LOCAL
        for t in ("/emotion/say", "/emotion/decision"):
            assert info[t].durability == DurabilityPolicy.VOLATILE
            assert info[t].reliability == ReliabilityPolicy.RELIABLE
        assert beh.alive()
    finally:
        stop.set()
        feeder.join(timeout=2)
        if beh is not None:
            beh.stop()
        g.close()

"""behaviour_node: the fused emotional state in, what the robot should do out.

Subscribes ``emotion/state`` (emotion_msgs/EmotionState, the primary person) and runs
:class:`~emotion_ros.core.behaviour.BehaviourPolicy` (rule table with dwell time, hysteresis and cool-down, see
config/behaviour_rules.yaml).  When a rule fires, or the active rule ends, it publishes

- ``emotion/decision`` (emotion_msgs/BehaviourDecision): rule, emotion, confidence, say, expression, motion scale;
- ``emotion/say`` (std_msgs/String) with the text for a TTS node, when there is text (at most one utterance per
  ``min_say_interval_s``);
- ``emotion/expression`` (std_msgs/String), an hri_msgs/Expression name for the face display; transient local
  (depth 1): a display started later still gets the current expression.

QoS: ``emotion/state`` in, ``emotion/decision`` and ``emotion/say`` out are reliable, volatile, depth 10 (events: a
late listener must not repeat an old sentence); ``emotion/state`` is a stream (every face frame, and fusion's
``rate`` in between), so a behaviour node started last has a state within a frame or ``1/rate`` s.

With no state for ``state_timeout_s`` (node clock) the active rule is released (default expression).
An invalid rules file stops the node at start-up with an error naming the file and the problem (exit code 1).

    ros2 run emotion_ros behaviour_node --ros-args --params-file config/emotion.yaml
    python -m emotion_ros.nodes.behaviour --ros-args -p rules_file:=/path/rules.yaml
"""
from __future__ import annotations

import sys
import threading
from types import SimpleNamespace
from typing import Optional

from rclpy.node import Node
from std_msgs.msg import String

from emotion_msgs.msg import BehaviourDecision, EmotionState
from emotion_ros import paths
from emotion_ros.core.behaviour import HRI_EXPRESSIONS, BehaviourPolicy, Decision, RuleError, load_rules
from emotion_ros.core.errors import InputError
from emotion_ros.ros.convert import sec_to_stamp, stamp_to_sec
from emotion_ros.ros.lifecycle import command_line, exit_process, run_node
from emotion_ros.ros.node_utils import Diagnostics, RateLimitedLogger, declare_parameters, latched_qos, reliable_qos

NODE_NAME = "behaviour_node"

PARAMS = {
    "rules_file": ("", "Rule table (YAML); empty = the package's config/behaviour_rules.yaml "
                       "(installed share first, then the source tree)"),
    "hysteresis": (0.1, "A fired rule stays active until its emotion's probability < min_confidence - hysteresis",
                        {"range": (0.0, 1.0)}),
    "cooldown_s": (10.0, "A rule does not fire again within this many seconds (rules may set their own)",
                         {"range": (0.0, 86400.0)}),
    "default_expression": ("neutral", "Expression sent when the active rule ends"),
    "max_gap_s": (1.0, "A gap between two states longer than this (s, state stamps) restarts the dwell timers",
                       {"range": (0.0, 86400.0)}),
    "min_say_interval_s": (5.0, "No speech within this many seconds (node clock) of the previous speech; the "
                                "decision is still published, with say empty", {"range": (0.0, 86400.0)}),
    "state_timeout_s": (3.0, "No state for this long (s, node clock) releases the active rule (0 = never)",
                             {"range": (0.0, 86400.0)}),
}


class BehaviourNode(Node):
    def __init__(self, **kwargs):
        super().__init__(NODE_NAME, **kwargs)
        self.p = p = declare_parameters(self, PARAMS)
        self.log = RateLimitedLogger(self.get_logger(), period_s=5.0)
        self.rules_file = p.rules_file or paths.config_path("behaviour_rules.yaml")
        try:
            rules = load_rules(self.rules_file)
            self.policy = BehaviourPolicy(rules, hysteresis=float(p.hysteresis), cooldown_s=float(p.cooldown_s),
                                          default_expression=str(p.default_expression),
                                          max_gap_s=float(p.max_gap_s))
        except RuleError as exc:
            msg = str(exc) if self.rules_file in str(exc) else f"rule file {self.rules_file!r}: {exc}"
            self.get_logger().fatal(msg)
            raise RuleError(msg) from None
        if self.policy.default_expression and self.policy.default_expression not in HRI_EXPRESSIONS:
            self.get_logger().warning(f"default_expression {self.policy.default_expression!r} is not an "
                                      f"hri_msgs/Expression name")
        self._lock = threading.Lock()
        self._last_state_wall: Optional[float] = None
        self._last_state = None
        self._last_say: Optional[float] = None
        self.decisions = 0
        self.diag = Diagnostics(self, "behaviour", stale_after_s=None)
        self.diag.set_value("rules_file", self.rules_file)
        self.diag.set_value("rules", str(len(rules)))
        self.diag.set_value("active_rule", "")
        self.pub_decision = self.create_publisher(BehaviourDecision, "emotion/decision", reliable_qos(10))
        self.pub_say = self.create_publisher(String, "emotion/say", reliable_qos(10))
        self.pub_expression = self.create_publisher(String, "emotion/expression", latched_qos())  # current face
        self.sub = self.create_subscription(EmotionState, "emotion/state", self._on_state, reliable_qos(10))
        if float(p.state_timeout_s) > 0:
            self.create_timer(min(0.5, float(p.state_timeout_s) / 2), self._on_timeout_check)
        self.get_logger().info(f"{len(rules)} rules from {self.rules_file}")

    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _on_state(self, msg: EmotionState) -> None:
        self.diag.tick_input()
        state = SimpleNamespace(stamp=stamp_to_sec(msg.header.stamp), person_id=msg.person_id, emotion=msg.emotion,
                                confidence=msg.confidence, arousal=msg.arousal, valence=msg.valence,
                                probs=list(msg.probabilities), labels=list(msg.labels))
        with self._lock:
            self._last_state_wall = self._now()
            self._last_state = state
            try:
                decision = self.policy.update(state)
            except InputError as exc:
                self.log.warn("state", f"dropped state: {exc}")
                self.diag.report_error(str(exc))
                return
        if decision is not None:
            self._publish(decision)

    def _on_timeout_check(self) -> None:
        with self._lock:
            if self._last_state_wall is None or self.policy.active is None:
                return
            if self._now() - self._last_state_wall < float(self.p.state_timeout_s):
                return
            last = self._last_state
            self.get_logger().info(f"no emotion/state for {float(self.p.state_timeout_s):g} s: releasing rule "
                                   f"{self.policy.active.name!r}")
            decision = self.policy.release(last.stamp if last is not None else 0.0)
        if decision is not None:
            self._publish(decision)

    def _publish(self, d: Decision) -> None:
        say = d.say
        if say:
            now = self._now()
            if self._last_say is not None and now - self._last_say < float(self.p.min_say_interval_s):
                self.get_logger().info(f"rule {d.rule!r}: not saying {say!r} (spoke {now - self._last_say:.1f} s "
                                       f"ago)")
                say = ""
            else:
                self._last_say = now
        msg = BehaviourDecision()
        msg.header.stamp = sec_to_stamp(d.stamp)
        msg.person_id = d.person_id
        msg.rule = d.rule
        msg.emotion = d.emotion
        msg.confidence = float(d.confidence)
        msg.say = say
        msg.expression = d.expression
        msg.motion_scale = float(d.motion_scale)
        self.pub_decision.publish(msg)
        if say:
            self.pub_say.publish(String(data=say))
        if d.expression:
            self.pub_expression.publish(String(data=d.expression))
        self.decisions += 1
        self.diag.tick_output()
        self.diag.set_value("active_rule", self.policy.active.name if self.policy.active else "")
        self.get_logger().info(f"decision: rule {d.rule!r} ({d.emotion} {d.confidence:.2f}) "
                               f"expression {d.expression!r} motion {d.motion_scale:.2f}"
                               + (f" say {say!r}" if say else ""))


def main(args=None) -> None:
    code = command_line(NODE_NAME, PARAMS, __doc__, args)
    exit_process(code if code is not None else run_node(BehaviourNode, args=args))


if __name__ == "__main__":
    sys.exit(main())

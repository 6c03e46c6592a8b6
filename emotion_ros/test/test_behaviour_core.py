"""BehaviourPolicy: dwell, hysteresis, cool-down, preemption, release; rule validation and the shipped table."""
import os
from types import SimpleNamespace

import numpy as np
import pytest

from emotion_ros.core.behaviour import (DEFAULT_RULE, BehaviourPolicy, Rule, RuleError, load_rules)
from emotion_ros.core.errors import InputError
from emotion_ros.core.labels import INDEX, LABELS

HERE = os.path.dirname(os.path.abspath(__file__))
SHIPPED = os.path.join(HERE, "..", "config", "behaviour_rules.yaml")


def state(t, emotion, conf, arousal=0.0, person="p1", probs=None):
    return SimpleNamespace(stamp=t, emotion=emotion, confidence=conf, arousal=arousal, valence=0.0,
                           person_id=person, probs=probs)


def sad_rule(**kw):
    args = dict(name="comfort", emotion="sad", min_confidence=0.6, dwell_s=2.0, say="There there, {person}.",
                expression="sad", motion_scale_base=0.2, motion_scale_gain=0.1)
    args.update(kw)
    return Rule(**args)


def run(policy, seq):
    """seq: [(t, emotion, conf), ...] -> {t: decision}"""
    out = {}
    for t, e, c in seq:
        d = policy.update(state(t, e, c))
        if d is not None:
            out[round(t, 3)] = d
    return out


def ticks(t0, t1, emotion, conf, dt=0.1):
    n = int(round((t1 - t0) / dt))
    return [(t0 + k * dt, emotion, conf) for k in range(n + 1)]


def test_dwell_fires_once_after_holding():
    pol = BehaviourPolicy([sad_rule()], cooldown_s=100)
    out = run(pol, ticks(0.0, 1.9, "sad", 0.8))
    assert out == {}
    d = pol.update(state(2.0, "sad", 0.8, arousal=-0.4))
    assert d is not None and d.rule == "comfort" and d.emotion == "sad" and d.say == "There there, p1."
    assert d.expression == "sad" and d.motion_scale == pytest.approx(0.2 - 0.04) and d.stamp == 2.0
    assert d.confidence == pytest.approx(0.8) and d.person_id == "p1"
    assert run(pol, ticks(2.1, 6.0, "sad", 0.8)) == {}  # stays active: no repeat


def test_dwell_restarts_when_interrupted_or_below_threshold_or_gap():
    pol = BehaviourPolicy([sad_rule()])
    seq = ticks(0.0, 1.5, "sad", 0.8) + [(1.6, "happy", 0.7)] + ticks(1.7, 3.6, "sad", 0.8)
    assert run(pol, seq) == {}
    pol = BehaviourPolicy([sad_rule()])
    out = run(pol, seq + [(3.7, "sad", 0.8)])
    assert list(out) == [3.7]  # held from 1.7: fires at 1.7 + 2.0
    pol = BehaviourPolicy([sad_rule()])
    out = run(pol, ticks(0.0, 1.0, "sad", 0.8) + ticks(1.1, 2.5, "sad", 0.55) + ticks(2.6, 4.6, "sad", 0.8))
    assert list(out) == [4.6]  # 0.55 < min_confidence interrupts the dwell
    pol = BehaviourPolicy([sad_rule()], max_gap_s=0.5)
    out = run(pol, [(0.0, "sad", 0.8), (1.0, "sad", 0.8), (2.0, "sad", 0.8), (2.4, "sad", 0.8)])
    assert out == {}  # gaps of 1 s > max_gap_s: never held continuously


def test_hysteresis_keeps_rule_active_until_below_threshold_minus_margin():
    pol = BehaviourPolicy([sad_rule()], hysteresis=0.1, cooldown_s=0)
    out = run(pol, ticks(0.0, 2.0, "sad", 0.8))
    assert list(out) == [2.0]
    # 0.55 is below min_confidence (0.6) but above 0.6 - 0.1: still active, nothing happens, no re-fire
    assert run(pol, ticks(2.1, 5.0, "sad", 0.55)) == {}
    assert pol.active is not None and pol.active.name == "comfort"
    # back to 0.8 for long: still the same activation, no new decision even with cooldown 0
    assert run(pol, ticks(5.1, 8.0, "sad", 0.8)) == {}
    d = pol.update(state(8.1, "sad", 0.45))  # below 0.5: released -> default expression, no speech
    assert d.rule == DEFAULT_RULE and d.expression == "neutral" and d.say == "" and pol.active is None
    # can fire again after a new dwell
    out = run(pol, ticks(8.2, 10.2, "sad", 0.8))
    assert list(out) == [10.2]


def test_hysteresis_uses_the_probability_vector_when_present():
    pol = BehaviourPolicy([sad_rule(dwell_s=0.0)], hysteresis=0.1)
    p = np.zeros(len(LABELS), np.float32)
    p[INDEX["sad"]], p[INDEX["neutral"]] = 0.7, 0.3
    assert pol.update(state(0.0, "sad", 0.7, probs=p)).rule == "comfort"
    # top emotion flips to neutral but sad keeps 0.52 >= 0.5: stays active
    p2 = np.zeros(len(LABELS), np.float32)
    p2[INDEX["sad"]], p2[INDEX["neutral"]] = 0.48 + 0.04, 0.48
    assert pol.update(state(0.1, "sad", 0.52, probs=p2)) is None
    p3 = p2.copy()
    p3[INDEX["sad"]], p3[INDEX["neutral"]] = 0.45, 0.55
    assert pol.update(state(0.2, "neutral", 0.55, probs=p3)).rule == DEFAULT_RULE


def test_cooldown_blocks_refire():
    pol = BehaviourPolicy([sad_rule(dwell_s=1.0)], cooldown_s=10.0)
    assert list(run(pol, ticks(0.0, 1.0, "sad", 0.8))) == [1.0]
    assert pol.update(state(1.1, "neutral", 0.9)).rule == DEFAULT_RULE
    out = run(pol, ticks(1.2, 12.0, "sad", 0.8))
    assert list(out) == [11.0]  # dwell done at 2.2, but cooling down until 1.0 + 10
    # per-rule cooldown overrides the policy's
    pol = BehaviourPolicy([sad_rule(dwell_s=1.0, cooldown_s=3.0)], cooldown_s=100.0)
    run(pol, ticks(0.0, 1.0, "sad", 0.8))
    pol.update(state(1.1, "neutral", 0.9))
    assert list(run(pol, ticks(1.2, 6.0, "sad", 0.8))) == [4.0]


def test_preemption_by_other_emotion_and_by_stricter_rule():
    rules = [sad_rule(dwell_s=1.0), sad_rule(name="very_sad", min_confidence=0.85, dwell_s=1.0, say="Oh no."),
             Rule(name="calm", emotion="anger", min_confidence=0.6, dwell_s=0.5, expression="neutral",
                  motion_scale_map=[[-1, 0.0], [1, 0.2]])]
    pol = BehaviourPolicy(rules, cooldown_s=100)
    out = run(pol, ticks(0.0, 1.0, "sad", 0.7))
    assert [d.rule for d in out.values()] == ["comfort"]
    out = run(pol, ticks(1.1, 2.1, "sad", 0.9))  # escalation: the stricter rule fires over the active one
    assert [(t, d.rule) for t, d in out.items()] == [(2.1, "very_sad")]
    assert run(pol, ticks(2.2, 3.0, "sad", 0.9)) == {}  # the laxer rule does not take over while onset holds
    out = run(pol, ticks(3.1, 3.6, "angry", 0.8))  # another emotion: sad released at once, calm after its dwell
    assert [(t, d.rule) for t, d in out.items()] == [(3.1, DEFAULT_RULE), (3.6, "calm")]
    d = out[3.6]
    assert d.rule == "calm" and d.emotion == "angry" and d.expression == "neutral"
    assert pol.update(state(3.7, "angry", 0.8, arousal=1.0)) is None
    assert Rule(name="x", emotion="angry", motion_scale_map=[[-1, 0.0], [1, 0.2]]).motion_scale(1.0) == \
        pytest.approx(0.2)


def test_person_change_restarts_dwell_and_time_going_back_resets():
    pol = BehaviourPolicy([sad_rule(dwell_s=1.0)], cooldown_s=100)
    seq = [state(round(t, 2), "sad", 0.8, person="a" if t < 0.55 else "b") for t in np.arange(0, 1.75, 0.1)]
    fired = [s.stamp for s in seq if pol.update(s) is not None]
    assert fired == [1.6]  # "a" from 0 never reaches its dwell; "b" from 0.6 fires at 0.6 + 1.0
    d = pol.update(state(1.8, "sad", 0.8, person="c"))  # new person: the active rule for "b" is released
    assert d.rule == DEFAULT_RULE and d.person_id == "c"
    assert list(run(pol, ticks(0.0, 1.0, "sad", 0.8))) == [1.0]  # replay from 0: cool-downs reset too


def test_say_without_person_and_motion_clipping():
    r = sad_rule(say="Are you alright, {person}?")
    assert r.text("") == "Are you alright?" and r.text("Ana") == "Are you alright, Ana?"
    r = Rule(name="m", emotion="happy", motion_scale_base=0.8, motion_scale_gain=0.5)
    assert r.motion_scale(1.0) == 1.0 and r.motion_scale(-1.0) == pytest.approx(0.3)
    assert r.motion_scale(float("nan")) == pytest.approx(0.8)


def test_bad_state_raises_input_error():
    pol = BehaviourPolicy([sad_rule()])
    with pytest.raises(InputError, match="stamp"):
        pol.update(state(float("nan"), "sad", 0.8))
    with pytest.raises(InputError, match="emotion"):
        pol.update(state(0.0, "bored", 0.8))
    with pytest.raises(InputError, match="confidence"):
        pol.update(state(0.0, "sad", float("inf")))


def test_release_when_stream_stops():
    pol = BehaviourPolicy([sad_rule(dwell_s=0)])
    assert pol.release(0.0) is None
    pol.update(state(0.0, "sad", 0.9))
    d = pol.release(5.0)
    assert d.rule == DEFAULT_RULE and d.expression == "neutral" and pol.active is None


# ---------------------------------------------------------------------------------------------------------------
# rule files
# ---------------------------------------------------------------------------------------------------------------

def write(tmp_path, text, name="rules.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def test_shipped_rule_table_loads_and_covers_every_emotion():
    rules = load_rules(SHIPPED)
    assert {r.emotion for r in rules} == set(LABELS)
    by = {r.name: r for r in rules}
    assert by["idle_neutral"].say == "" and by["idle_neutral"].dwell_s >= 10
    assert by["deescalate_angry"].motion_scale(1.0) <= 0.2 and by["deescalate_angry"].expression != "angry"
    assert by["comfort_sad"].motion_scale(0.0) < 0.5


def test_aliases_are_normalised(tmp_path):
    rules = load_rules(write(tmp_path, """
rules:
  - {name: a, emotion: Fear, say: "Easy."}
  - {name: b, emotion: happiness, expression: EXCITED}
"""))
    assert [r.emotion for r in rules] == ["scared", "happy"] and rules[1].expression == "excited"


@pytest.mark.parametrize("text, match", [
    ("rules:\n  - {name: cheer, emotion: joyful}\n", r"rule 'cheer'.*unknown emotion 'joyful'"),
    ("rules:\n  - {name: cheer, emotion: happy, dwell: 2}\n", r"rule 'cheer'.*unknown key.*dwell"),
    ("rules:\n  - {name: cheer, emotion: happy, min_confidence: 1.5}\n", r"rule 'cheer'.*min_confidence"),
    ("rules:\n  - {name: cheer, emotion: happy, dwell_s: -1}\n", r"rule 'cheer'.*dwell_s"),
    ("rules:\n  - {name: cheer, emotion: happy, expression: grinning}\n", r"rule 'cheer'.*unknown expression"),
    ("rules:\n  - {name: cheer, emotion: happy, say: 'Hi {name}'}\n", r"rule 'cheer'.*placeholder"),
    ("rules:\n  - {name: cheer, emotion: happy, motion_scale_map: [[1, 0.5], [0, 0.2]]}\n", "increase"),
    ("rules:\n  - {name: cheer, emotion: happy, motion_scale_map: [[0, 0.5]], motion_scale_gain: 1}\n",
     "not both"),
    ("rules:\n  - {name: cheer, emotion: happy}\n  - {name: cheer, emotion: sad}\n", "duplicate"),
    ("rules:\n  - {emotion: happy}\n", r"rule #1.*missing 'name'"),
    ("rules:\n  - {name: default, emotion: happy}\n", "reserved"),
    ("rules: []\n", "non-empty list"),
    ("rulez: []\n", "unknown top-level"),
    ("rules: [\n", "not valid YAML"),
])
def test_invalid_rule_files_name_file_rule_and_problem(tmp_path, text, match):
    path = write(tmp_path, text)
    with pytest.raises(RuleError, match=match) as exc:
        load_rules(path)
    assert path in str(exc.value)
    assert isinstance(exc.value, ValueError)


def test_custom_expressions_and_missing_file(tmp_path):
    rules = load_rules(write(tmp_path, "custom_expressions: [wink]\nrules:\n  - {name: a, emotion: happy, "
                                       "expression: wink}\n"))
    assert rules[0].expression == "wink"
    with pytest.raises(RuleError, match="rule file not found.*nope.yaml"):
        load_rules(str(tmp_path / "nope.yaml"))


def test_voice_only_states_do_not_count_as_a_new_person():
    pol = BehaviourPolicy([sad_rule(dwell_s=1.0)], cooldown_s=100)
    seq = [state(round(t, 2), "sad", 0.8, person="" if 0.35 < t < 0.75 else "a") for t in np.arange(0, 1.05, 0.1)]
    fired = [(s.stamp, d) for s in seq for d in [pol.update(s)] if d is not None]
    assert [(t, d.rule, d.person_id) for t, d in fired] == [(1.0, "comfort", "a")]
    assert pol.update(state(1.1, "sad", 0.8, person="")) is None  # still active while the face is away

"""Emotion-aware behaviour: a rule table with dwell time, hysteresis and cool-down (pure Python, no rclpy).

A :class:`Rule` reacts to one emotion.  :class:`BehaviourPolicy` is fed fused states (anything with ``stamp``,
``person_id``, ``emotion``, ``confidence``, ``arousal`` and optionally ``probs``/``probabilities`` + ``labels``)
and returns a :class:`Decision` when something should change:

* **onset**: a rule becomes a candidate while its emotion is the top emotion with ``confidence >= min_confidence``;
  it *fires* once that has held continuously for ``dwell_s`` (gaps in the state stream longer than ``max_gap_s``
  restart the dwell).
* **hysteresis**: a fired rule stays *active* (and does not fire again) until the probability of its emotion falls
  below ``min_confidence - hysteresis``.  The probability comes from the state's probability vector when it has
  one, else from ``confidence`` when the top emotion is the rule's, else 0.
* **release**: when the active rule ends and nothing else fires, a decision named ``"default"`` returns the robot
  to ``default_expression`` (no speech).
* **cool-down**: a rule does not fire again within ``cooldown_s`` (per rule, or the policy's) of its last firing.
* **preemption**: another rule may fire while one is active if the active rule's onset condition no longer holds
  (it is held only by hysteresis) or the new rule is stricter (higher ``min_confidence``) - e.g. a stronger
  "very sad" rule after a mild "sad" one, or "angry" after "sad".
* a change of ``person_id`` restarts the dwell timers (and releases the active rule); an empty ``person_id``
  (voice alone, e.g. the person looked away) is not a change.  Time going backwards (a bag restarted) resets
  everything, cool-downs included.

``motion_scale`` in [0, 1] comes from arousal: ``clip(motion_scale_base + motion_scale_gain * arousal, 0, 1)`` or,
when the rule has ``motion_scale_map`` (``[[arousal, scale], ...]``, increasing arousal), piecewise-linear
interpolation on it.

Rule files (YAML, see ``config/behaviour_rules.yaml``)::

    custom_expressions: []          # expression names beyond hri_msgs/Expression's (optional)
    rules:
      - name: comfort_sad
        emotion: sad                # label or alias (labels.normalise)
        min_confidence: 0.55
        dwell_s: 2.0
        say: "You seem a little down, {person}. Do you want to talk about it?"
        expression: sad
        motion_scale_base: 0.2
        motion_scale_gain: 0.1
        cooldown_s: 30              # optional, else the policy's
"""
from __future__ import annotations

import math
import re
import string
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from .errors import InputError
from .labels import LABELS, normalise

__all__ = ["Rule", "Decision", "BehaviourPolicy", "RuleError", "load_rules", "HRI_EXPRESSIONS", "DEFAULT_RULE"]

# hri_msgs/Expression string constants (ROS4HRI, REP-155).
HRI_EXPRESSIONS: Tuple[str, ...] = (
    "neutral", "angry", "sad", "happy", "surprised", "disgusted", "scared", "pleading", "vulnerable", "despaired",
    "guilty", "disappointed", "embarrassed", "horrified", "skeptical", "annoyed", "furious", "suspicious",
    "rejected", "bored", "tired", "asleep", "confused", "amazed", "excited")

_EPS = 1e-6  # stamps are floats: 1.7 + 2.0 must count as 3.7

DEFAULT_RULE = "default"  # name of the decision that returns the robot to its default expression

_RULE_KEYS = {"name", "emotion", "min_confidence", "dwell_s", "say", "expression", "motion_scale_base",
              "motion_scale_gain", "motion_scale_map", "cooldown_s"}


class RuleError(ValueError):
    """An invalid rule or rule file; the message names the file and/or the rule and the problem."""


@dataclass
class Rule:
    name: str
    emotion: str
    min_confidence: float = 0.5
    dwell_s: float = 1.0
    say: str = ""
    expression: str = ""               # empty: the policy's default expression
    motion_scale_base: float = 0.5
    motion_scale_gain: float = 0.5
    motion_scale_map: Optional[Sequence[Sequence[float]]] = None
    cooldown_s: Optional[float] = None  # None: the policy's cooldown_s
    expressions: Iterable[str] = field(default=HRI_EXPRESSIONS, repr=False, compare=False)

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name.strip():
            raise RuleError(f"rule {self.name!r}: name must be a non-empty string")
        self.name = self.name.strip()
        if self.name == DEFAULT_RULE:
            raise RuleError(f"rule {self.name!r}: the name {DEFAULT_RULE!r} is reserved")
        where = f"rule {self.name!r}"
        label = normalise(self.emotion) if isinstance(self.emotion, str) else None
        if label is None:
            raise RuleError(f"{where}: unknown emotion {self.emotion!r} (known: {', '.join(LABELS)} and aliases)")
        self.emotion = label
        self.min_confidence = _number(where, "min_confidence", self.min_confidence, 0.0, 1.0)
        self.dwell_s = _number(where, "dwell_s", self.dwell_s, 0.0)
        if self.cooldown_s is not None:
            self.cooldown_s = _number(where, "cooldown_s", self.cooldown_s, 0.0)
        if self.say is None:
            self.say = ""
        if not isinstance(self.say, str):
            raise RuleError(f"{where}: say must be a string, got {type(self.say).__name__}")
        try:
            fields = [f for _, f, _, _ in string.Formatter().parse(self.say) if f is not None]
        except ValueError as exc:
            raise RuleError(f"{where}: say {self.say!r}: {exc}") from exc
        bad = [f for f in fields if f != "person"]
        if bad:
            raise RuleError(f"{where}: say has unknown placeholder(s) {bad}; only {{person}} is supported")
        if self.expression is None:
            self.expression = ""
        if not isinstance(self.expression, str):
            raise RuleError(f"{where}: expression must be a string")
        self.expression = self.expression.strip().lower()
        allowed = set(self.expressions)
        if self.expression and self.expression not in allowed:
            raise RuleError(f"{where}: unknown expression {self.expression!r} (hri_msgs/Expression names, or list it "
                            f"under custom_expressions)")
        self.motion_scale_base = _number(where, "motion_scale_base", self.motion_scale_base)
        self.motion_scale_gain = _number(where, "motion_scale_gain", self.motion_scale_gain)
        if self.motion_scale_map is not None:
            pts = []
            try:
                for pt in self.motion_scale_map:
                    a, s = pt
                    pts.append((_number(where, "motion_scale_map arousal", a, -1.0, 1.0),
                                _number(where, "motion_scale_map scale", s, 0.0, 1.0)))
            except (TypeError, ValueError) as exc:
                if isinstance(exc, RuleError):
                    raise
                raise RuleError(f"{where}: motion_scale_map must be a list of [arousal, scale] pairs") from exc
            if not pts:
                raise RuleError(f"{where}: motion_scale_map is empty")
            if any(b[0] <= a[0] for a, b in zip(pts, pts[1:])):
                raise RuleError(f"{where}: motion_scale_map arousal values must increase")
            self.motion_scale_map = tuple(pts)

    def motion_scale(self, arousal: float) -> float:
        a = float(arousal) if math.isfinite(float(arousal)) else 0.0
        a = float(np.clip(a, -1.0, 1.0))
        if self.motion_scale_map:
            xs, ys = zip(*self.motion_scale_map)
            return float(np.clip(np.interp(a, xs, ys), 0.0, 1.0))
        return float(np.clip(self.motion_scale_base + self.motion_scale_gain * a, 0.0, 1.0))

    def text(self, person_id: str) -> str:
        if not self.say:
            return ""
        if person_id:
            return self.say.replace("{person}", person_id)
        # no person: drop the placeholder with the comma / space before it ("Hello, {person}!" -> "Hello!")
        return re.sub(r"\s{2,}", " ", re.sub(r"[,\s]*\{person\}", "", self.say)).strip()


def _number(where: str, key: str, value, lo: Optional[float] = None, hi: Optional[float] = None) -> float:
    if isinstance(value, bool):
        raise RuleError(f"{where}: {key} must be a number, got {value!r}")
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise RuleError(f"{where}: {key} must be a number, got {value!r}") from None
    if not math.isfinite(v) or (lo is not None and v < lo) or (hi is not None and v > hi):
        rng = f"[{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}]"
        raise RuleError(f"{where}: {key} = {value!r} is outside {rng}")
    return v


@dataclass
class Decision:
    rule: str
    emotion: str
    confidence: float
    say: str
    expression: str
    motion_scale: float
    person_id: str = ""
    stamp: float = 0.0


def _field(state, *names, default=None):
    for n in names:
        if isinstance(state, dict):
            if n in state:
                return state[n]
        elif hasattr(state, n):
            return getattr(state, n)
    return default


class BehaviourPolicy:
    """Turns a stream of fused states into behaviour decisions.  See the module docstring for the semantics."""

    def __init__(self, rules: Sequence[Rule], hysteresis: float = 0.1, cooldown_s: float = 10.0,
                 default_expression: str = "neutral", max_gap_s: float = 1.0,
                 default_motion: Tuple[float, float] = (0.5, 0.5)):
        self.rules: List[Rule] = list(rules)
        names = [r.name for r in self.rules]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise RuleError(f"duplicate rule name(s): {dup}")
        self.hysteresis = _number("policy", "hysteresis", hysteresis, 0.0, 1.0)
        self.cooldown_s = _number("policy", "cooldown_s", cooldown_s, 0.0)
        self.max_gap_s = _number("policy", "max_gap_s", max_gap_s, 0.0)
        self.default_expression = str(default_expression or "").strip().lower()
        self.default_motion = (float(default_motion[0]), float(default_motion[1]))
        self.reset()

    def reset(self) -> None:
        self._held_since: Dict[str, float] = {}
        self._last_fired: Dict[str, float] = {}
        self.active: Optional[Rule] = None
        self._last_t: Optional[float] = None
        self._person: Optional[str] = None

    # ------------------------------------------------------------------------------------------------------------
    def _prob(self, state, emotion: str, top: str, conf: float) -> float:
        probs = _field(state, "probs", "probabilities")
        if probs is not None and len(probs) > 0:
            labels = _field(state, "labels")
            labels = list(labels) if labels is not None and len(labels) > 0 else list(LABELS)
            p = np.asarray(probs, dtype=np.float64).reshape(-1)
            if len(labels) == p.shape[0]:
                for i, name in enumerate(labels):
                    if normalise(name) == emotion:
                        v = float(p[i])
                        return v if math.isfinite(v) else 0.0
                return 0.0
        return conf if top == emotion else 0.0

    def _cooling(self, rule: Rule, t: float) -> bool:
        last = self._last_fired.get(rule.name)
        cd = self.cooldown_s if rule.cooldown_s is None else rule.cooldown_s
        return last is not None and t - last < cd - _EPS

    def _default_decision(self, t: float, person: str, emotion: str, conf: float, arousal: float) -> Decision:
        base, gain = self.default_motion
        motion = float(np.clip(base + gain * arousal, 0.0, 1.0))
        return Decision(DEFAULT_RULE, emotion, conf, "", self.default_expression, motion, person, t)

    def release(self, stamp: float, emotion: str = "neutral", confidence: float = 0.0,
                arousal: float = 0.0) -> Optional[Decision]:
        """End the active rule (e.g. the state stream stopped).  Returns the default decision if one was active."""
        was = self.active
        person = self._person or ""
        self._held_since.clear()
        self.active = None
        return None if was is None else self._default_decision(stamp, person, emotion, confidence, arousal)

    def update(self, state) -> Optional[Decision]:
        t = _field(state, "stamp")
        try:
            t = float(t)
        except (TypeError, ValueError):
            raise InputError(f"state stamp is not a number: {t!r}") from None
        if not math.isfinite(t):
            raise InputError(f"state stamp is not finite: {t}")
        top = normalise(str(_field(state, "emotion", default="") or ""))
        if top is None:
            raise InputError(f"state emotion {_field(state, 'emotion')!r} is not a known label")
        conf = float(_field(state, "confidence", default=0.0))
        if not math.isfinite(conf):
            raise InputError("state confidence is not finite")
        arousal = float(_field(state, "arousal", default=0.0))
        if not math.isfinite(arousal):
            raise InputError("state arousal is not finite")
        person = str(_field(state, "person_id", default="") or "")

        released = False
        if self._last_t is not None and t < self._last_t - 1e-6:
            self.reset()  # time went backwards: a replay restarted
        elif self._last_t is not None and t - self._last_t > self.max_gap_s:
            self._held_since.clear()  # the emotion was not observed continuously
        # "" = voice alone (no face id): most likely the same person looking away, not a change of person
        if self._person and person and person != self._person:
            self._held_since.clear()
            if self.active is not None:
                self.active, released = None, True
        self._last_t = t
        if person:
            self._person = person

        # keep or end the active rule (hysteresis)
        if self.active is not None:
            r = self.active
            if self._prob(state, r.emotion, top, conf) < r.min_confidence - self.hysteresis:
                self.active, released = None, True

        # onset conditions and dwell timers
        for r in self.rules:
            if top == r.emotion and conf >= r.min_confidence:
                self._held_since.setdefault(r.name, t)
            else:
                self._held_since.pop(r.name, None)

        eligible = []
        for i, r in enumerate(self.rules):
            since = self._held_since.get(r.name)
            if since is None or t - since < r.dwell_s - _EPS or r is self.active or self._cooling(r, t):
                continue
            if self.active is not None:
                a = self.active
                active_onset = top == a.emotion and conf >= a.min_confidence
                if active_onset and r.min_confidence <= a.min_confidence:
                    continue
            eligible.append((-r.min_confidence, i, r))
        if eligible:
            r = min(eligible, key=lambda e: (e[0], e[1]))[2]
            self.active = r
            self._last_fired[r.name] = t
            return Decision(r.name, r.emotion, conf if top == r.emotion else self._prob(state, r.emotion, top, conf),
                            r.text(person), r.expression or self.default_expression, r.motion_scale(arousal),
                            person, t)
        if released:
            return self._default_decision(t, person, top, conf, arousal)
        return None


def load_rules(path: str, extra_expressions: Iterable[str] = ()) -> List[Rule]:
    """Read and validate a rule file.  Raises :class:`RuleError` (a ValueError) naming the file, the rule and the
    problem."""
    import yaml

    try:
        with open(path, "r", encoding="utf-8") as fh:
            doc = yaml.safe_load(fh)
    except FileNotFoundError:
        raise RuleError(f"rule file not found: {path!r}") from None
    except OSError as exc:
        raise RuleError(f"rule file {path!r} cannot be read: {exc}") from None
    except yaml.YAMLError as exc:
        raise RuleError(f"rule file {path!r} is not valid YAML: {exc}") from None
    expressions = set(HRI_EXPRESSIONS) | {str(e).strip().lower() for e in extra_expressions}
    if isinstance(doc, dict):
        unknown = set(doc) - {"rules", "custom_expressions"}
        if unknown:
            raise RuleError(f"rule file {path!r}: unknown top-level key(s) {sorted(unknown)} "
                            f"(expected 'rules' and optionally 'custom_expressions')")
        custom = doc.get("custom_expressions") or []
        if not isinstance(custom, list) or not all(isinstance(e, str) for e in custom):
            raise RuleError(f"rule file {path!r}: custom_expressions must be a list of strings")
        expressions |= {e.strip().lower() for e in custom}
        items = doc.get("rules")
    else:
        items = doc
    if not isinstance(items, list) or not items:
        raise RuleError(f"rule file {path!r}: expected a non-empty list of rules under 'rules'")
    rules: List[Rule] = []
    for k, item in enumerate(items):
        label = f"rule #{k + 1}"
        if not isinstance(item, dict):
            raise RuleError(f"rule file {path!r}: {label} is not a mapping")
        if isinstance(item.get("name"), str):
            label = f"rule {item['name']!r}"
        unknown = set(item) - _RULE_KEYS
        if unknown:
            raise RuleError(f"rule file {path!r}: {label}: unknown key(s) {sorted(unknown)} "
                            f"(allowed: {', '.join(sorted(_RULE_KEYS))})")
        for req in ("name", "emotion"):
            if req not in item:
                raise RuleError(f"rule file {path!r}: {label}: missing {req!r}")
        if item.get("motion_scale_map") is not None and (
                "motion_scale_base" in item or "motion_scale_gain" in item):
            raise RuleError(f"rule file {path!r}: {label}: give motion_scale_map or motion_scale_base/gain, not both")
        try:
            rules.append(Rule(**item, expressions=expressions))
        except RuleError as exc:
            raise RuleError(f"rule file {path!r}: {exc}") from None
    names = [r.name for r in rules]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise RuleError(f"rule file {path!r}: duplicate rule name(s) {dup}")
    return rules


"""Small building blocks shared by every emotion_ros node: parameters, QoS, rate-limited logs, a drop-oldest
mailbox for sensor callbacks, and a /diagnostics publisher."""

from __future__ import annotations

import collections
import threading
import time
import types
from typing import Any, Callable, Dict, Optional, Tuple

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.exceptions import InvalidParameterTypeException, InvalidParameterValueException
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.exceptions import ParameterUninitializedException
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

__all__ = [
    "declare_parameters",
    "ParameterError",
    "parameter_help",
    "RateLimitedLogger",
    "sensor_qos",
    "reliable_qos",
    "latched_qos",
    "LatestSlot",
    "wait_for_subscribers",
    "Diagnostics",
    "OK",
    "WARN",
    "ERROR",
]

OK = DiagnosticStatus.OK
WARN = DiagnosticStatus.WARN
ERROR = DiagnosticStatus.ERROR


# ---------------------------------------------------------------------------------------------------------------
# Parameters
# ---------------------------------------------------------------------------------------------------------------

class ParameterError(ValueError):
    """A parameter value given to a node (command line, parameters file) is refused; the message names it."""


#: Bounds used for a range given as ``(low, None)`` (no upper limit).
_INT_MAX = 2 ** 31 - 1
_FLOAT_MAX = 1.0e300


def _range_fields(name: str, default, bounds) -> Dict[str, Any]:
    """``ParameterDescriptor`` fields for ``bounds`` = ``(low, high)`` (``None``: unbounded on that side)."""
    lo, hi = bounds
    if isinstance(default, bool) or not isinstance(default, (int, float)):
        raise ValueError(f"parameter {name!r}: a range needs an int or float default, not {default!r}")
    if isinstance(default, int):
        return {"integer_range": [IntegerRange(from_value=int(-_INT_MAX if lo is None else lo),
                                               to_value=int(_INT_MAX if hi is None else hi), step=0)]}
    return {"floating_point_range": [FloatingPointRange(from_value=float(-_FLOAT_MAX if lo is None else lo),
                                                        to_value=float(_FLOAT_MAX if hi is None else hi),
                                                        step=0.0)]}


def _describe_range(bounds) -> str:
    lo, hi = bounds
    if lo is not None and hi is not None:
        return f"{lo:g} .. {hi:g}"
    return f">= {lo:g}" if lo is not None else f"<= {hi:g}"


def _coerce_int_overrides(node, spec: Dict[str, Tuple]) -> None:
    """Let an integer given for a float parameter through as that float (``-p rate:=0``, ``rate: 0`` in a YAML
    file, ``ros2 param set /camera_node rate 5``): rclpy would refuse it as the wrong type."""
    floats = {name for name, entry in spec.items()
              if isinstance(entry, tuple) and isinstance(entry[0], float)}
    overrides = getattr(node, "_parameter_overrides", None)  # rclpy keeps command-line/file values here
    if isinstance(overrides, dict):
        for name in floats:
            given = overrides.get(name)
            if given is not None and given.type_ == Parameter.Type.INTEGER:
                overrides[name] = Parameter(name, Parameter.Type.DOUBLE, float(given.value))
    known = getattr(node, "_emotion_ros_float_params", None)
    if known is None:
        known = node._emotion_ros_float_params = set()

        def to_float(params):
            return [Parameter(p.name, Parameter.Type.DOUBLE, float(p.value))
                    if p.name in known and p.type_ == Parameter.Type.INTEGER else p for p in params]
        node.add_pre_set_parameters_callback(to_float)
    known.update(floats)


def declare_parameters(node, spec: Dict[str, Tuple]) -> types.SimpleNamespace:
    """Declare every parameter of ``spec`` on ``node`` and return their current values.

    ``spec`` maps a name to ``(default, description)`` or ``(default, description, descriptor_fields)`` where
    ``descriptor_fields`` is a dict of extra ``ParameterDescriptor`` fields (e.g. ``{"read_only": True}``), plus
    ``"range": (low, high)`` for numeric parameters (``None`` = unbounded on that side): the descriptor's
    integer_range / floating_point_range, so out-of-range values are refused at start-up (:class:`ParameterError`
    naming the parameter, its value and the range) and by ``ros2 param set``.
    ``default`` may be a value, ``None`` (dynamically typed, unset), a ``rclpy.Parameter.Type`` (typed, unset), or
    ``[]`` (a string array, reported as ``[]`` while unset). Values given by a parameters file / ``--ros-args -p`` override the defaults.
    Float parameters accept integers (``rate:=0``).
    In the returned namespace, dots in names become underscores (``"face.min_size"`` -> ``ns.face_min_size``).
    Already-declared names are not declared again (their current value is returned).
    """
    _coerce_int_overrides(node, spec)
    out = {}
    for name, entry in spec.items():
        if not isinstance(entry, tuple) or len(entry) not in (2, 3):
            raise ValueError(f"parameter spec for {name!r} must be (default, description[, descriptor fields])")
        default, description = entry[0], entry[1]
        unset_value = [] if isinstance(default, list) and not default else None
        extra = dict(entry[2]) if len(entry) == 3 else {}
        bounds = extra.pop("range", None)
        if bounds is not None:
            extra.update(_range_fields(name, default, bounds))
        if not node.has_parameter(name):
            if default is None:
                extra.setdefault("dynamic_typing", True)
            descriptor = ParameterDescriptor(name=name, description=str(description), **extra)
            if isinstance(default, list) and len(default) == 0:
                default = Parameter.Type.STRING_ARRAY
            if isinstance(default, tuple):
                default = list(default)
            try:
                node.declare_parameter(name, default, descriptor)
            except InvalidParameterValueException:
                given = getattr(node, "_parameter_overrides", {}).get(name)
                value = given.value if given is not None else default
                where = f" (allowed: {_describe_range(bounds)})" if bounds is not None else ""
                raise ParameterError(f"parameter {name!r} of {node.get_name()}: {value!r} is refused{where}: "
                                     f"{description}") from None
            except InvalidParameterTypeException as exc:
                raise ParameterError(f"parameter {name!r} of {node.get_name()}: {exc}; expected "
                                     f"{type(default).__name__} (default {default!r})") from None
        try:
            value = node.get_parameter(name).value
        except ParameterUninitializedException:  # typed but unset (default [] or a Parameter.Type)
            value = unset_value
        out[name.replace(".", "_")] = value
    return types.SimpleNamespace(**out)


def parameter_help(node_name: str, spec: Dict[str, Tuple], doc: str = "") -> str:
    """The ``--help`` text of a node: its docstring, then every parameter with type, default, range and
    description."""
    import textwrap
    lines = [doc.strip(), ""] if doc and doc.strip() else []
    lines += [f"usage: {node_name} [-h] [--ros-args -p NAME:=VALUE ... | --params-file FILE ...]", "",
              f"Parameters of {node_name} (defaults; the package's config/emotion.yaml holds the same values):"]
    for name, entry in spec.items():
        default, description = entry[0], entry[1]
        extra = entry[2] if len(entry) == 3 else {}
        kind = "any" if default is None or extra.get("dynamic_typing") else (
            "string[]" if isinstance(default, (list, tuple)) else type(default).__name__)
        shown = (f'"{default}"' if isinstance(default, str) else "[]" if isinstance(default, (list, tuple))
                 and not default else str(default).lower() if isinstance(default, bool) else default)
        head = f"  {name} ({kind}, default {shown}"
        if extra.get("range") is not None:
            head += f", range {_describe_range(extra['range'])}"
        lines.append(head + ")")
        lines += textwrap.wrap(str(description), width=100, initial_indent="      ", subsequent_indent="      ")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------------------
# Logging
# ---------------------------------------------------------------------------------------------------------------

class RateLimitedLogger:
    """Wrap an rclpy logger: at most one line per key per ``period_s``.

    The next line that gets through for a key ends with ``"(N similar suppressed)"`` when lines were dropped.
    Methods ``debug/info/warn/warning/error(key, msg)`` return True when the line was logged.
    """

    def __init__(self, logger, period_s: float = 5.0, clock: Callable[[], float] = time.monotonic):
        self.logger = logger
        self.period_s = float(period_s)
        self._clock = clock
        self._lock = threading.Lock()
        self._last: Dict[str, float] = {}
        self._suppressed: Dict[str, int] = collections.defaultdict(int)

    def _emit(self, level: str, key: str, msg: str) -> bool:
        now = self._clock()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self.period_s:
                self._suppressed[key] += 1
                return False
            self._last[key] = now
            n = self._suppressed.pop(key, 0)
        if n:
            msg = f"{msg} ({n} similar suppressed)"
        # One call per severity, each on its own line: rclpy keys a logging call site by the caller's file and line,
        # and refuses a second severity from one site ("Logger severity cannot be changed between calls").
        if level == "debug":
            self.logger.debug(msg)
        elif level == "info":
            self.logger.info(msg)
        elif level == "warning":
            self.logger.warning(msg)
        else:
            self.logger.error(msg)
        return True

    def debug(self, key: str, msg: str) -> bool:
        return self._emit("debug", key, msg)

    def info(self, key: str, msg: str) -> bool:
        return self._emit("info", key, msg)

    def warn(self, key: str, msg: str) -> bool:
        return self._emit("warning", key, msg)

    warning = warn

    def error(self, key: str, msg: str) -> bool:
        return self._emit("error", key, msg)

    def suppressed(self, key: str) -> int:
        """Lines dropped for ``key`` since its last logged line."""
        with self._lock:
            return self._suppressed.get(key, 0)


# ---------------------------------------------------------------------------------------------------------------
# QoS
# ---------------------------------------------------------------------------------------------------------------

def sensor_qos(depth: int = 1) -> QoSProfile:
    """Best effort, keep last ``depth``, volatile: for camera / microphone streams where only fresh data matters."""
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth, reliability=ReliabilityPolicy.BEST_EFFORT,
                      durability=DurabilityPolicy.VOLATILE)


def reliable_qos(depth: int = 10) -> QoSProfile:
    """Reliable, keep last ``depth``, volatile: for results (emotion/faces, emotion/state, decisions)."""
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth, reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.VOLATILE)


def latched_qos() -> QoSProfile:
    """Reliable, transient local, depth 1: late subscribers still get the last message (audio_info)."""
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.TRANSIENT_LOCAL)


# ---------------------------------------------------------------------------------------------------------------
# Mailbox
# ---------------------------------------------------------------------------------------------------------------

class LatestSlot:
    """Thread-safe single-item mailbox. Sensor callbacks ``put``; a worker ``take``s the newest item.

    ``put`` returns True when it replaced an item nobody took (a drop, also counted in ``dropped``).
    ``take(timeout=None)`` returns the item or None; with a timeout it waits up to that many seconds for one.
    """

    def __init__(self):
        self._cond = threading.Condition()
        self._item: Any = None
        self._full = False
        self.dropped = 0

    def put(self, item) -> bool:
        with self._cond:
            dropped = self._full
            if dropped:
                self.dropped += 1
            self._item, self._full = item, True
            self._cond.notify()
            return dropped

    def take(self, timeout: Optional[float] = None):
        with self._cond:
            if not self._full and timeout:
                self._cond.wait_for(lambda: self._full, timeout=timeout)
            if not self._full:
                return None
            item, self._item, self._full = self._item, None, False
            return item

    def clear(self) -> None:
        with self._cond:
            self._item, self._full = None, False

    def __bool__(self) -> bool:  # True while an item waits
        with self._cond:
            return self._full


def wait_for_subscribers(publisher, timeout_s: float, count: int = 1,
                         stop: Optional[threading.Event] = None, poll_s: float = 0.02) -> bool:
    """Wait until ``publisher`` has at least ``count`` matched subscriptions, up to ``timeout_s`` (or until ``stop`` is
    set). For sources that replay files: the first messages are not lost to discovery. True when matched."""
    end = time.monotonic() + max(0.0, float(timeout_s))
    while publisher.get_subscription_count() < count:
        left = end - time.monotonic()
        if left <= 0:
            return False
        if stop is not None:
            if stop.wait(min(poll_s, left)):
                return False
        else:
            time.sleep(min(poll_s, left))
    return True


# ---------------------------------------------------------------------------------------------------------------
# Diagnostics
# ---------------------------------------------------------------------------------------------------------------

class Diagnostics:
    """Publish the health of a node on ``/diagnostics`` (``diagnostic_msgs/DiagnosticArray``) every ``period_s``.

    Call ``tick_input()`` per input message, ``tick_output()`` per published result, ``record_processing(s)`` with
    the processing time of one item, ``add_dropped(n)`` for inputs skipped, ``report_error(msg)`` for failures and
    ``set_value(key, value)`` for static facts (device, model, ...).

    Named inputs (``watch_input(key, ...)``, then ``tick_input(key)``) are also reported one by one:
    ``<key>_input_age_s`` (seconds since the last one), WARN when one that was flowing stops for longer than its
    ``stale_after_s``, and WARN when its topic has no publisher left (a source node died).

    ``last_error`` shows the last reported error until inputs have flowed for ``error_hold_s`` without a new one
    (then it is cleared; ``errors`` keeps counting, ``seconds_since_error`` tells how long ago the last one was).

    Level: ERROR when an error was reported in the last ``error_hold_s`` or no input came for 5 x
    ``stale_after_s``; WARN when input is silent longer than ``stale_after_s``, the input rate is below half of
    ``expected_rate_hz``, processing (p50) is slower than the input period, or inputs were dropped since the last
    report; OK otherwise. ``expected_rate_hz=None`` with ``stale_after_s=None`` (or <= 0) disables the input checks
    (for nodes with sporadic input, e.g. behaviour).
    Rates and processing percentiles cover the last ``horizon_s`` seconds (at most ``window`` events).
    Values: input_rate_hz, output_rate_hz, processing_ms_p50, processing_ms_p95, dropped, errors, last_error,
    seconds_since_error, seconds_since_input, ``<key>_input_age_s`` of each watched input, and every ``set_value`` key.
    """

    def __init__(self, node, name: str, hardware_id: str = "", expected_rate_hz: Optional[float] = None,
                 stale_after_s: Optional[float] = 2.0, period_s: float = 1.0, error_hold_s: float = 5.0,
                 window: int = 300, horizon_s: float = 5.0, topic: str = "/diagnostics",
                 clock: Callable[[], float] = time.monotonic):
        self.node = node
        self.name = f"{node.get_name()}: {name}"
        self.hardware_id = hardware_id
        self.expected_rate_hz = expected_rate_hz
        self.stale_after_s = stale_after_s if stale_after_s and stale_after_s > 0 else None
        self.error_hold_s = float(error_hold_s)
        self.horizon_s = float(horizon_s)
        self._clock = clock
        self._lock = threading.Lock()
        self._t0 = clock()
        self._inputs = collections.deque(maxlen=window)
        self._outputs = collections.deque(maxlen=window)
        self._proc = collections.deque(maxlen=window)
        self._n_in = 0
        self._n_out = 0
        self._dropped = 0
        self._dropped_reported = 0
        self._errors = 0
        self._last_error: Optional[Tuple[float, str]] = None
        self._last_error_t: Optional[float] = None
        self._watched: Dict[str, Tuple[Optional[float], Optional[str]]] = {}
        self._last_named: Dict[str, float] = {}
        self._values: Dict[str, str] = {}
        self.last_status: Optional[DiagnosticStatus] = None
        self._pub = node.create_publisher(DiagnosticArray, topic, 10)
        self._timer = None
        if period_s and period_s > 0:
            self._timer = node.create_timer(period_s, self.publish,
                                            callback_group=MutuallyExclusiveCallbackGroup())

    # -- recording ------------------------------------------------------------------------------------------------
    def tick_input(self, key: Optional[str] = None) -> None:
        with self._lock:
            now = self._clock()
            self._inputs.append(now)
            self._n_in += 1
            if key is not None:
                self._last_named[key] = now

    def watch_input(self, key: str, stale_after_s: Optional[float] = None, topic: Optional[str] = None) -> None:
        """Report the input ``key`` (ticked with ``tick_input(key)``) on its own: its age, WARN when it stopped for
        longer than ``stale_after_s`` (None: sporadic input, no such check) and when ``topic`` has no publisher."""
        with self._lock:
            self._watched[str(key)] = (stale_after_s if stale_after_s and stale_after_s > 0 else None, topic)

    def tick_output(self) -> None:
        with self._lock:
            self._outputs.append(self._clock())
            self._n_out += 1

    def add_dropped(self, n: int = 1) -> None:
        with self._lock:
            self._dropped += int(n)

    def record_processing(self, seconds: float) -> None:
        with self._lock:
            self._proc.append((self._clock(), float(seconds)))

    def set_value(self, key: str, value) -> None:
        with self._lock:
            self._values[str(key)] = str(value)

    def report_error(self, msg: str) -> None:
        with self._lock:
            self._errors += 1
            self._last_error = (self._clock(), str(msg))
            self._last_error_t = self._last_error[0]

    # -- reporting ------------------------------------------------------------------------------------------------
    @staticmethod
    def _rate(stamps, now: float, horizon_s: float = 10.0) -> float:
        """Events per second over the last ``horizon_s`` (measured up to now, so a silent source decays to 0)."""
        recent = [t for t in stamps if now - t <= horizon_s]
        if len(recent) < 2:
            return 0.0
        span = now - recent[0]
        return (len(recent) - 1) / span if span > 0 else 0.0

    def status(self) -> DiagnosticStatus:
        """Build the current DiagnosticStatus (also what ``publish`` sends)."""
        now = self._clock()
        with self._lock:
            in_rate = self._rate(self._inputs, now, self.horizon_s)
            out_rate = self._rate(self._outputs, now, self.horizon_s)
            proc = np.asarray([s for t, s in self._proc if now - t <= self.horizon_s], dtype=np.float64)
            last_in = self._inputs[-1] if self._inputs else None
            if self._last_error is not None and now - self._last_error[0] > self.error_hold_s \
                    and last_in is not None and last_in > self._last_error[0]:
                self._last_error = None  # inputs flowed for error_hold_s without a new error: put right
            last_error_t = self._last_error_t
            watched = dict(self._watched)
            last_named = dict(self._last_named)
            n_recent_in = len(self._inputs)
            n_in, n_out = self._n_in, self._n_out
            new_drops = self._dropped - self._dropped_reported
            self._dropped_reported = self._dropped
            dropped, errors, last_error = self._dropped, self._errors, self._last_error
            values = dict(self._values)
        p50 = float(np.percentile(proc, 50)) * 1e3 if proc.size else 0.0
        p95 = float(np.percentile(proc, 95)) * 1e3 if proc.size else 0.0
        silent = now - (last_in if last_in is not None else self._t0)

        level, reasons = OK, []

        def raise_to(lv, why):
            nonlocal level
            level = max(level, lv)
            reasons.append(why)

        if last_error is not None and now - last_error[0] <= self.error_hold_s:
            raise_to(ERROR, f"error: {last_error[1]}")
        if self.stale_after_s is not None:
            what = "no input yet" if last_in is None else "input stale"
            if silent > 5 * self.stale_after_s:
                raise_to(ERROR, f"{what} for {silent:.1f} s")
            elif silent > self.stale_after_s:
                raise_to(WARN, f"{what} for {silent:.1f} s")
        if self.expected_rate_hz and last_in is not None and n_recent_in >= 3 \
                and now - self._t0 > 2.0 / self.expected_rate_hz and in_rate < 0.5 * self.expected_rate_hz:
            raise_to(WARN, f"input rate {in_rate:.1f} Hz < half of expected {self.expected_rate_hz:g} Hz")
        period = 1.0 / in_rate if in_rate > 0 else (1.0 / self.expected_rate_hz if self.expected_rate_hz else None)
        if period is not None and proc.size >= 3 and p50 * 1e-3 > period:
            raise_to(WARN, f"processing {p50:.1f} ms (p50) slower than input period {period * 1e3:.1f} ms")
        if new_drops > 0:
            raise_to(WARN, f"dropped {new_drops} input(s)")
        named_ages = {}
        for key, (stale, topic) in watched.items():
            seen = last_named.get(key)
            age = now - seen if seen is not None else None
            named_ages[f"{key}_input_age_s"] = f"{age:.2f}" if age is not None else "inf"
            if stale is not None and age is not None and age > stale:
                raise_to(WARN, f"{key} input stopped {age:.1f} s ago")
            if topic:
                try:
                    publishers = self.node.count_publishers(topic)
                except Exception:  # noqa: BLE001 - node being destroyed
                    publishers = None
                if publishers == 0:
                    raise_to(WARN, f"no publisher on {topic}")
        if not reasons:
            reasons.append("running" if last_in is not None or self.stale_after_s is None else "waiting for input")

        st = DiagnosticStatus(level=level, name=self.name, message="; ".join(reasons), hardware_id=self.hardware_id)
        kv = {
            "input_rate_hz": f"{in_rate:.2f}",
            "output_rate_hz": f"{out_rate:.2f}",
            "processing_ms_p50": f"{p50:.2f}",
            "processing_ms_p95": f"{p95:.2f}",
            "dropped": str(dropped),
            "errors": str(errors),
            "last_error": last_error[1] if last_error else "",
            "seconds_since_error": f"{now - last_error_t:.2f}" if last_error_t is not None else "inf",
            "seconds_since_input": f"{silent:.2f}" if last_in is not None else "inf",
            "inputs": str(n_in),
            "outputs": str(n_out),
        }
        kv.update(named_ages)
        kv.update(values)
        st.values = [KeyValue(key=k, value=v) for k, v in kv.items()]
        return st

    def publish(self) -> DiagnosticStatus:
        st = self.status()
        self.last_status = st
        arr = DiagnosticArray()
        arr.header.stamp = self.node.get_clock().now().to_msg()
        arr.status = [st]
        try:
            self._pub.publish(arr)
        except Exception:  # context already shut down (Ctrl-C while the timer fired)
            pass
        return st

    def destroy(self) -> None:
        if self._timer is not None:
            self.node.destroy_timer(self._timer)
            self._timer = None
        if self._pub is not None:
            self.node.destroy_publisher(self._pub)
            self._pub = None


def close_node(node, context) -> None:
    """End a command-line tool's ROS side: destroy ``node`` (may be None) and shut ``context`` down, ignoring
    errors from an already half-closed middleware (the tool is exiting either way)."""
    import rclpy
    if node is not None:
        try:
            node.destroy_node()
        except Exception:  # noqa: BLE001 - best effort at exit
            pass
    try:
        if context.ok():
            rclpy.shutdown(context=context)
    except Exception:  # noqa: BLE001
        pass

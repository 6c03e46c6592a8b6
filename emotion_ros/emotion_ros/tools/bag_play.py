"""``emotion-bag play``: a rclpy node that publishes a bag's messages at their recorded timing.

Messages go out at receive-time offsets divided by ``--rate``. Publishers are reliable (they match reliable and
best-effort subscribers); topics recorded as transient local (audio_info) are played transient local.

Time. The nodes judge evidence by its ``header.stamp`` against their clock (fusion drops what is older than its
``stale_s``), so a recording's own stamps (minutes or days old) would be ignored by nodes on the wall clock. By
default (**restamp**) every ``builtin_interfaces/Time`` field of a message (``header.stamp``, VoiceEmotion's
``start`` / ``end``, ...; zero stamps stay zero) is moved onto the current time: a stamp ``s`` becomes
``now0 + (s - t_first) / rate``, where ``t_first`` is the first message's receive time in the bag and ``now0`` the
wall clock when playing (each loop) begins, so replaying into running nodes works as it does live. ``--clock``
instead publishes ``rosgraph_msgs/Clock`` on /clock (the bag time, at least every ``1/clock_hz`` s) and keeps the
recorded stamps and bytes unchanged: for nodes started with ``use_sim_time:=true``. ``--no-restamp`` without
``--clock`` publishes the recorded bytes on the wall clock (a warning says when they are too old for the nodes).
"""

from __future__ import annotations

import threading
import time
from typing import Dict, List, Optional, Sequence

from .bag_common import BagError, BagFile, end_signal_handling, import_msg_class, normalise_topic, stop_on_signals


def _publisher_qos(conn):
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

    latched = False
    for q in getattr(conn.ext, "offered_qos_profiles", None) or []:
        if getattr(q.durability, "name", "") == "TRANSIENT_LOCAL":
            latched = True
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1 if latched else 100,
                      reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.TRANSIENT_LOCAL if latched else DurabilityPolicy.VOLATILE)


TIME_TYPE = "builtin_interfaces/Time"


class Restamper:
    """Moves every non-zero ``builtin_interfaces/Time`` field of a (deserialized rclpy) message by an affine map
    ``s -> now0 + (s - t_first) / rate`` (nanoseconds). Field plans are cached per message class."""

    def __init__(self, rate: float = 1.0):
        self.rate = float(rate)
        self.now0_ns = 0
        self.first_ns = 0
        self._plans: Dict[type, List[tuple]] = {}

    def start(self, now0_ns: int, first_ns: int) -> None:
        self.now0_ns, self.first_ns = int(now0_ns), int(first_ns)

    def map_ns(self, t_ns: int) -> int:
        return self.now0_ns + round((t_ns - self.first_ns) / self.rate)

    def _plan(self, cls) -> List[tuple]:
        plan = self._plans.get(cls)
        if plan is None:
            plan = []
            for name, typ in cls.get_fields_and_field_types().items():
                seq = typ.startswith("sequence<") or typ.endswith("]")
                base = typ[len("sequence<"):].split(",")[0].rstrip(">") if typ.startswith("sequence<") else \
                    typ.split("[")[0]
                if "/" not in base:
                    continue  # primitive / string fields
                plan.append((name, base == TIME_TYPE, seq))
            self._plans[cls] = plan
        return plan

    def apply(self, msg) -> None:
        for name, is_time, seq in self._plan(type(msg)):
            value = getattr(msg, name)
            for v in (value if seq else (value,)):
                if is_time:
                    t = int(v.sec) * 1_000_000_000 + int(v.nanosec)
                    if t != 0:
                        t = max(0, self.map_ns(t))
                        v.sec, v.nanosec = t // 1_000_000_000, t % 1_000_000_000
                else:
                    self.apply(v)


def play(bag: str, rate: float = 1.0, loop: bool = False, topics: Optional[Sequence[str]] = None,
         clock: bool = False, clock_hz: float = 40.0, wait_for_subscribers: float = 0.0, delay: float = 0.0,
         ros_args: Optional[List[str]] = None, node_name: str = "emotion_bag_player",
         restamp: Optional[bool] = None) -> dict:
    """Play until the end (or forever with ``loop``), SIGINT or SIGTERM. Returns a summary dict.

    ``restamp`` (default: ``not clock``): move the messages' stamps onto the current time (see the module doc)."""
    import rclpy
    from rclpy.duration import Duration
    from rclpy.node import Node
    from rclpy.signals import SignalHandlerOptions

    from emotion_ros.env import ensure_ros_env
    from emotion_ros.ros.node_utils import close_node

    if not (rate > 0):
        raise BagError(f"--rate must be > 0, got {rate}")
    if clock and not (clock_hz > 0):
        raise BagError(f"--clock-hz must be > 0, got {clock_hz}")
    if restamp is None:
        restamp = not clock
    if restamp and clock:
        raise BagError("--restamp and --clock exclude each other: --clock plays the recorded stamps on bag time "
                       "(nodes with use_sim_time:=true); --restamp moves them onto the wall clock (nodes as they are)")
    ensure_ros_env()
    bf = BagFile(bag)
    present = bf.topics()
    if topics:
        missing = [t for t in topics if normalise_topic(t) not in present]
        if missing:
            bf.close()
            raise BagError(f"bag {bag!r} has no topic {', '.join(normalise_topic(t) for t in missing)} "
                           f"(it has: {', '.join(sorted(present)) or 'no topics'})")
    conns = bf.connections_for(topics)
    classes: Dict[str, object] = {}
    skipped: Dict[str, str] = {}
    for c in conns:
        try:
            classes[c.msgtype] = import_msg_class(c.msgtype)
        except BagError as exc:
            if topics:
                bf.close()
                raise
            skipped[c.topic] = str(exc)
    conns = [c for c in conns if c.msgtype in classes]
    if not conns:
        bf.close()
        raise BagError(f"bag {bag!r}: nothing to play (topics: {', '.join(sorted(present)) or 'none'}"
                       f"{'; skipped: ' + '; '.join(skipped.values()) if skipped else ''})")

    stop = threading.Event()

    old = stop_on_signals(stop)
    if old:
        from emotion_ros.ros.lifecycle import exit_with_parent
        exit_with_parent(on_gone=stop.set)   # under emotion.launch.py: follow a launch ended by SIGTERM alone
    context = rclpy.Context()
    rclpy.init(args=ros_args, context=context, signal_handler_options=SignalHandlerOptions.NO)
    counts: Dict[str, int] = {}
    loops = 0
    node = None
    restamper = Restamper(rate) if restamp else None
    if restamp:
        from rclpy.serialization import deserialize_message
    t_wall0 = time.monotonic()
    try:
        node = Node(node_name, context=context)
        log = node.get_logger()
        pubs = {}
        for c in conns:
            if c.id not in pubs:
                pubs[c.id] = node.create_publisher(classes[c.msgtype], c.topic, _publisher_qos(c))
                counts.setdefault(c.topic, 0)
        for t, why in skipped.items():
            log.warn(f"not playing {t}: {why}")
        clock_pub = None
        Clock = None
        if clock:
            from rosgraph_msgs.msg import Clock
            from rclpy.qos import QoSProfile, ReliabilityPolicy
            clock_pub = node.create_publisher(Clock, "/clock", QoSProfile(depth=10,
                                                                      reliability=ReliabilityPolicy.RELIABLE))

        def publish_clock(t_ns: int) -> None:
            msg = Clock()
            msg.clock.sec, msg.clock.nanosec = int(t_ns // 1_000_000_000), int(t_ns % 1_000_000_000)
            clock_pub.publish(msg)

        if wait_for_subscribers > 0:
            deadline = time.monotonic() + wait_for_subscribers
            waited = list(pubs.values()) + ([clock_pub] if clock_pub is not None else [])
            while time.monotonic() < deadline and not stop.is_set():
                if all(p.get_subscription_count() > 0 for p in waited):
                    break
                time.sleep(0.02)
        if delay > 0:
            stop.wait(delay)
        log.info(f"playing {bag} at rate {rate}{' (loop)' if loop else ''}: "
                 f"{', '.join(sorted({c.topic for c in conns}))}")
        age_s = time.time() - bf.start_ns * 1e-9
        if restamp:
            log.info(f"restamping: message stamps are moved onto the current time (the recording began "
                     f"{age_s:.0f} s ago); --clock plays them on bag time instead, for nodes with use_sim_time:=true")
        elif not clock and abs(age_s) > 10.0:
            log.warn(f"--no-restamp: the recorded stamps are {age_s:.0f} s off the wall clock, so nodes on the "
                     f"wall clock treat this data as stale (fusion publishes no EmotionState); drop --no-restamp, "
                     f"or play with --clock into nodes started with -p use_sim_time:=true")
        period = 1.0 / clock_hz if clock else 0.05
        first_ns = None
        while not stop.is_set():
            wall0, epoch0_ns = time.monotonic(), time.time_ns()
            for conn, t_ns, raw in bf.messages(conns):
                if first_ns is None:
                    first_ns = t_ns
                    if restamper is not None:
                        restamper.start(epoch0_ns, first_ns)
                target = wall0 + (t_ns - first_ns) * 1e-9 / rate
                while not stop.is_set():
                    now = time.monotonic()
                    if clock_pub is not None:
                        publish_clock(first_ns + int((now - wall0) * rate * 1e9) if now < target else t_ns)
                    if now >= target:
                        break
                    time.sleep(min(period, target - now))
                if stop.is_set():
                    break
                if restamper is not None:
                    msg = deserialize_message(bytes(raw), classes[conn.msgtype])
                    restamper.apply(msg)
                    pubs[conn.id].publish(msg)
                else:
                    pubs[conn.id].publish(bytes(raw))
                counts[conn.topic] += 1
            loops += 1
            if not loop:
                break
            first_ns = None
        # Let reliable subscribers receive the tail before the publishers go away.
        for p in pubs.values():
            try:
                p.wait_for_all_acked(Duration(seconds=2.0))
            except Exception:
                pass
    finally:
        close_node(node, context)
        bf.close()
        end_signal_handling(old, stop.is_set())  # stop: set by a signal, or by the launch going away
    return {"bag": bag, "rate": rate, "loops": loops, "played_s": round(time.monotonic() - t_wall0, 3),
            "messages": counts, "skipped": skipped, "interrupted": stop.is_set(),
            "time": "restamped" if restamp else "clock" if clock else "recorded"}

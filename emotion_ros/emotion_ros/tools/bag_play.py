"""``emotion-bag play``: a rclpy node that publishes a bag's serialized messages at their recorded timing.

Messages go out unchanged (``publisher.publish(bytes)``), at receive-time offsets divided by ``--rate``. Publishers
are reliable (they match reliable and best-effort subscribers); topics recorded as transient local (audio_info) are
played transient local. ``--clock`` also publishes ``rosgraph_msgs/Clock`` on /clock (the bag time, at least every
``1/clock_hz`` s), so nodes with ``use_sim_time:=true`` follow the bag.
"""

from __future__ import annotations

import signal
import threading
import time
from typing import Dict, List, Optional, Sequence

from .bag_common import BagError, BagFile, import_msg_class, normalise_topic


def _publisher_qos(conn):
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

    latched = False
    for q in getattr(conn.ext, "offered_qos_profiles", None) or []:
        if getattr(q.durability, "name", "") == "TRANSIENT_LOCAL":
            latched = True
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1 if latched else 100,
                      reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.TRANSIENT_LOCAL if latched else DurabilityPolicy.VOLATILE)


def play(bag: str, rate: float = 1.0, loop: bool = False, topics: Optional[Sequence[str]] = None,
         clock: bool = False, clock_hz: float = 40.0, wait_for_subscribers: float = 0.0, delay: float = 0.0,
         ros_args: Optional[List[str]] = None, node_name: str = "emotion_bag_player") -> dict:
    """Play until the end (or forever with ``loop``), SIGINT or SIGTERM. Returns a summary dict."""
    import rclpy
    from rclpy.duration import Duration
    from rclpy.node import Node
    from rclpy.signals import SignalHandlerOptions

    from emotion_ros.env import ensure_ros_env

    if not (rate > 0):
        raise BagError(f"--rate must be > 0, got {rate}")
    if clock and not (clock_hz > 0):
        raise BagError(f"--clock-hz must be > 0, got {clock_hz}")
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

    def on_signal(_sig, _frm):
        stop.set()
    old = {}
    for s in (signal.SIGINT, signal.SIGTERM):
        try:
            old[s] = signal.signal(s, on_signal)
        except ValueError:  # not the main thread
            pass
    context = rclpy.Context()
    rclpy.init(args=ros_args, context=context, signal_handler_options=SignalHandlerOptions.NO)
    counts: Dict[str, int] = {}
    loops = 0
    node = None
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
        period = 1.0 / clock_hz if clock else 0.05
        first_ns = None
        while not stop.is_set():
            wall0 = time.monotonic()
            for conn, t_ns, raw in bf.messages(conns):
                if first_ns is None:
                    first_ns = t_ns
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
        if node is not None:
            try:
                node.destroy_node()
            except Exception:
                pass
        try:
            if context.ok():
                rclpy.shutdown(context=context)
        except Exception:
            pass
        bf.close()
        for s, h in old.items():
            signal.signal(s, h)
    return {"bag": bag, "rate": rate, "loops": loops, "played_s": round(time.monotonic() - t_wall0, 3),
            "messages": counts, "skipped": skipped, "interrupted": stop.is_set()}

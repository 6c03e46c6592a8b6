"""``emotion-bag record``: a rclpy node that records topics into a rosbag2 (mcap or sqlite3) with rosbags.

Subscriptions are ``raw=True``: the serialized CDR bytes go unchanged to the bag. Each topic is subscribed as soon
as it appears on the graph (its type taken from ``get_topic_names_and_types``), with a QoS that matches its
publishers (best effort when any publisher is best effort, transient local when all are, like ``ros2 bag record``).
Callbacks only enqueue ``(topic, type, receive time, bytes)``; a writer thread writes the bag, so recording never
blocks the executor. Receive times come from the node clock (ROS time; sim time with ``use_sim_time``).
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Dict, List, Optional, Sequence

from .bag_common import (DEFAULT_TOPICS, KNOWN_TYPES, BagError, BagWriter, end_signal_handling, import_msg_class,
                         knows_type, make_qos, stop_on_signals)

_STOP = object()


class _WriterThread(threading.Thread):
    def __init__(self, writer: BagWriter):
        super().__init__(name="emotion-bag-writer", daemon=True)
        self.writer = writer
        self.q: "queue.SimpleQueue" = queue.SimpleQueue()
        self.error: Optional[BaseException] = None
        self.max_backlog = 0
        self.written = 0

    def add_topic(self, topic: str, msgtype: str, qos) -> None:
        self.q.put(("topic", topic, msgtype, qos))

    def put(self, topic: str, msgtype: str, t_ns: int, data: bytes) -> None:
        self.q.put(("msg", topic, msgtype, t_ns, data))

    def stop(self) -> None:
        self.q.put(_STOP)

    def run(self) -> None:
        while True:
            item = self.q.get()
            if item is _STOP:
                return
            if self.error is not None:
                continue  # keep draining so producers never block; the error is reported at the end
            try:
                if item[0] == "topic":
                    self.writer.add_topic(item[1], item[2], item[3])
                else:
                    _, topic, msgtype, t_ns, data = item
                    self.writer.write(topic, msgtype, t_ns, data)
                    self.written += 1
                    backlog = self.q.qsize()
                    if backlog > self.max_backlog:
                        self.max_backlog = backlog
            except BaseException as exc:  # noqa: BLE001 - reported by the main thread
                self.error = exc


def _qos_for_publishers(infos):
    """rclpy QoSProfile + rosbags Qos matching the publishers of a topic (ros2 bag's adaptive rule)."""
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

    reliable = all(i.qos_profile.reliability == ReliabilityPolicy.RELIABLE for i in infos) if infos else True
    latched = bool(infos) and all(i.qos_profile.durability == DurabilityPolicy.TRANSIENT_LOCAL for i in infos)
    depth = 100
    prof = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth,
                      reliability=ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT,
                      durability=DurabilityPolicy.TRANSIENT_LOCAL if latched else DurabilityPolicy.VOLATILE)
    return prof, make_qos(reliable=reliable, transient_local=latched, depth=depth)


def make_recorder_node(topics: Sequence[str], writer_thread: _WriterThread, context=None,
                       node_name: str = "emotion_bag_recorder"):
    from rclpy.clock import Clock, ClockType
    from rclpy.node import Node

    steady = Clock(clock_type=ClockType.STEADY_TIME)  # graph polling must run without /clock (use_sim_time)

    class Recorder(Node):
        def __init__(self):
            super().__init__(node_name, context=context)
            self.wanted: Dict[str, str] = {}  # resolved name -> the name as given
            for t in topics:
                self.wanted[self.resolve_topic_name(t)] = t
            self.subscribed: Dict[str, str] = {}
            self.skipped: Dict[str, str] = {}
            self.received: Dict[str, int] = {}
            self.before_clock: List[tuple] = []  # messages received while the (sim) clock still reads 0
            self.writer_thread = writer_thread
            # Poll the graph every 0.1 s for the first 3 s (topics of a starting system), then every 0.5 s.
            self._slow_after = time.monotonic() + 3.0
            self._fast = self.create_timer(0.1, self.discover, clock=steady)
            self.discover()

        def discover(self) -> None:
            if self._fast is not None and time.monotonic() > self._slow_after:
                self.destroy_timer(self._fast)
                self._fast = None
                self.create_timer(0.5, self.discover, clock=steady)
            graph = dict(self.get_topic_names_and_types())
            for name, given in self.wanted.items():
                if name in self.subscribed or name in self.skipped or name not in graph:
                    continue
                types = graph[name]
                known = KNOWN_TYPES.get(given.lstrip("/"))
                msgtype = known if known in types else types[0]
                if len(types) > 1:
                    self.get_logger().warn(f"{name} has several types {types}; recording {msgtype}")
                elif known and msgtype != known:
                    self.get_logger().warn(f"{name} carries {msgtype}, not the usual {known}; recording it as is")
                if not knows_type(msgtype):
                    self.skipped[name] = f"no message definition for {msgtype}"
                    self.get_logger().error(f"not recording {name}: no message definition for {msgtype}")
                    continue
                try:
                    cls = import_msg_class(msgtype)
                except BagError as exc:
                    self.skipped[name] = str(exc)
                    self.get_logger().error(f"not recording {name}: {exc}")
                    continue
                infos = self.get_publishers_info_by_topic(name)
                if not infos:
                    continue  # subscribers only so far: wait for a publisher to pick a matching QoS
                prof, bag_qos = _qos_for_publishers(infos)
                self.writer_thread.add_topic(name, msgtype, bag_qos)
                self.received[name] = 0
                self.create_subscription(cls, name, self._callback(name, msgtype), prof, raw=True)
                self.subscribed[name] = msgtype
                self.get_logger().info(f"recording {name} [{msgtype}] "
                                       f"({prof.reliability.name.lower()}, {prof.durability.name.lower()})")

        def _callback(self, name: str, msgtype: str):
            clock = self.get_clock()
            put = self.writer_thread.put
            received = self.received
            pending = self.before_clock

            def cb(data: bytes) -> None:
                t = clock.now().nanoseconds
                received[name] += 1
                if t == 0:  # use_sim_time and no /clock yet: stamp these with the first clock reading
                    pending.append((name, msgtype, data))
                    return
                if pending:
                    self.flush_pending(t)
                put(name, msgtype, t, data)
            return cb

        def flush_pending(self, t: int) -> None:
            for name, msgtype, data in self.before_clock:
                self.writer_thread.put(name, msgtype, t, data)
            self.before_clock.clear()

    return Recorder()


def record(out: str, topics: Optional[Sequence[str]] = None, storage: str = "mcap",
           duration: Optional[float] = None, force: bool = False, ros_args: Optional[List[str]] = None,
           ready_file: Optional[str] = None) -> dict:
    """Record until ``duration`` seconds have passed, SIGINT or SIGTERM. Returns a summary dict.

    After a signal has stopped the recording, SIGINT and SIGTERM are ignored for the life of the process (the bag is
    closed already; the caller prints the summary and exits)."""
    import rclpy
    from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor

    from emotion_ros.env import ensure_ros_env
    from emotion_ros.ros.node_utils import close_node

    ensure_ros_env()
    topics = list(topics or DEFAULT_TOPICS)
    if duration is not None and not duration > 0:
        raise BagError(f"--duration must be > 0 seconds, got {duration}")
    writer = BagWriter(out, storage=storage, force=force)
    wt = _WriterThread(writer)
    wt.start()
    stop = threading.Event()
    old = stop_on_signals(stop)
    from rclpy.signals import SignalHandlerOptions

    from emotion_ros.ros.lifecycle import exit_with_parent
    exit_with_parent(on_gone=stop.set)   # under emotion.launch.py: a launch ended by SIGTERM alone ends the recording

    context = rclpy.Context()
    rclpy.init(args=ros_args, context=context, signal_handler_options=SignalHandlerOptions.NO)
    node = None
    t_start = time.monotonic()
    try:
        node = make_recorder_node(topics, wt, context=context)
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(node)
        node.get_logger().info(f"recording to {out} ({storage}); topics: {', '.join(node.wanted)}")
        if ready_file:
            with open(ready_file, "w") as f:
                f.write("ready\n")
        while not stop.is_set() and context.ok():
            if duration is not None and time.monotonic() - t_start >= duration:
                break
            try:
                executor.spin_once(timeout_sec=0.05)
            except (KeyboardInterrupt, ExternalShutdownException):
                break
    except KeyboardInterrupt:
        pass
    finally:
        elapsed = time.monotonic() - t_start
        summary_extra = {}
        if node is not None:
            if node.before_clock:  # the clock never started: keep them at time 0 rather than lose them
                node.flush_pending(0)
            summary_extra = {"missing": [n for n in node.wanted if n not in node.subscribed],
                             "skipped": dict(node.skipped)}
        close_node(node, context)
        wt.stop()
        wt.join()
        writer.close()
        end_signal_handling(old, stop.is_set())
    if wt.error is not None:
        raise BagError(f"writing {out!r} failed: {type(wt.error).__name__}: {wt.error}")
    return {"bag": out, "storage": storage, "recorded_s": round(elapsed, 3), "messages": dict(writer.counts),
            "max_backlog": wt.max_backlog, **summary_extra}

"""``run_node``: the main() of every emotion_ros node.

rclpy.init -> build the node -> (lifecycle node with ``autostart`` true: configure + activate) -> spin a
SingleThreadedExecutor (``num_threads`` > 1: a MultiThreadedExecutor) until Ctrl-C / SIGTERM / ``request_stop()`` / rclpy shutdown -> shutdown transition ->
destroy. Returns a process exit code (console_scripts pass it to sys.exit).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Callable, List, NoReturn, Optional, Sequence, Union

import rclpy
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor, SingleThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.node import Node
from rclpy.signals import SignalHandlerOptions

from emotion_ros.env import ensure_ros_env

__all__ = ["run_node", "request_stop", "autostart", "lifecycle_state"]


def lifecycle_state(node: LifecycleNode) -> str:
    """Label of the node's current lifecycle state ("unconfigured", "inactive", "active", "finalized")."""
    return node._state_machine.current_state[1]


def autostart(node: LifecycleNode) -> bool:
    """Configure then activate ``node``. Returns False (after logging why) when a transition fails."""
    log = node.get_logger()
    for label, trigger, target in (("configure", node.trigger_configure, "inactive"),
                                   ("activate", node.trigger_activate, "active")):
        try:
            result = trigger()
        except Exception as exc:  # noqa: BLE001 - a failing callback must not hide the reason
            log.error(f"autostart: {label} raised {type(exc).__name__}: {exc}")
            return False
        if result != TransitionCallbackReturn.SUCCESS or lifecycle_state(node) != target:
            log.error(f"autostart: {label} failed ({getattr(result, 'name', result)}); "
                      f"node is {lifecycle_state(node)}")
            return False
    log.info("autostart: node is active")
    return True


def _wants_autostart(node: LifecycleNode) -> bool:
    if not node.has_parameter("autostart"):
        from rcl_interfaces.msg import ParameterDescriptor
        node.declare_parameter("autostart", True, ParameterDescriptor(
            description="Configure and activate this lifecycle node on start (false: wait for a lifecycle manager)"))
    return bool(node.get_parameter("autostart").value)


_stop = threading.Event()


def request_stop() -> None:
    """Ask the running ``run_node`` loop to stop (e.g. a file source reached its end); safe from any thread."""
    _stop.set()


def _on_signal(signum, _frame) -> None:
    _stop.set()


def run_node(node_factory: Callable[[], Union[Node, Sequence[Node]]], args: Optional[Sequence[str]] = None,
             num_threads: Optional[int] = None, poll_s: float = 0.2,
             on_ready: Optional[Callable[[], None]] = None) -> int:
    """Run a node (or the list of nodes ``node_factory()`` returns) until Ctrl-C, SIGTERM, ``request_stop()`` or
    rclpy shutdown. ``node_factory()`` is called after ``rclpy.init(args=args or sys.argv)``.

    Lifecycle nodes whose ``autostart`` parameter is true (declared with default true when the node does not) are
    configured and activated before spinning; then ``on_ready()`` is called (if given). On stop, lifecycle nodes
    get the shutdown transition (their ``on_shutdown`` releases devices) while the ROS context is still valid; then nodes are destroyed and rclpy shut
    down. Exit code: 0 on a clean stop, 1 when construction or autostart failed.
    """
    ensure_ros_env()
    _stop.clear()
    # Own SIGINT/SIGTERM handling: rclpy's handlers would invalidate the context before nodes can shut down.
    rclpy.init(args=list(args) if args is not None else sys.argv, signal_handler_options=SignalHandlerOptions.NO)
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, _on_signal)
    context = rclpy.get_default_context()
    nodes: List[Node] = []
    executor = None
    try:
        try:
            made = node_factory()
            nodes = list(made) if isinstance(made, (list, tuple)) else [made]
        except KeyboardInterrupt:
            return 0
        except Exception as exc:  # noqa: BLE001
            rclpy.logging.get_logger("run_node").fatal(f"could not create node: {type(exc).__name__}: {exc}")
            return 1
        # One executor thread by default: the nodes do their heavy work in their own worker threads, and rclpy's
        # MultiThreadedExecutor costs far more CPU per message (emotion-bench / docs/BENCHMARKS.md: receiving 30 fps
        # 640x480 frames + 50 Hz audio with empty callbacks took 61 % of a core and fell behind; single: 13 %).
        executor = (MultiThreadedExecutor(num_threads=num_threads) if num_threads and num_threads > 1
                    else SingleThreadedExecutor())
        for node in nodes:
            executor.add_node(node)
        for node in nodes:
            if isinstance(node, LifecycleNode) and _wants_autostart(node) and not autostart(node):
                return 1
        if on_ready is not None:
            on_ready()  # every node built and (autostart) active
        while context.ok() and not _stop.is_set():
            try:
                executor.spin_once(timeout_sec=poll_s)
            except (KeyboardInterrupt, ExternalShutdownException):
                break
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        for node in reversed(nodes):
            if isinstance(node, LifecycleNode):
                _shutdown_lifecycle(node, context)
        if executor is not None:
            try:
                executor.shutdown(timeout_sec=2.0)
            except Exception:  # noqa: BLE001
                pass
        for node in reversed(nodes):
            try:
                node.destroy_node()
            except Exception:  # noqa: BLE001
                pass
        rclpy.try_shutdown()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def exit_process(code: Optional[int]) -> NoReturn:
    """End a node process with ``code`` once :func:`run_node` has returned (nodes destroyed, rclpy shut down).

    Python's own interpreter teardown after that sometimes aborts in a C++ destructor of the ROS/DDS stack
    ("terminate called without an active exception", exit 134; about 1 run in 3 of a 2 s ``emotion-demo``),
    which would turn a clean run into a crash for whoever checks the exit status. Everything of ours is released
    by then, so flush the standard streams and leave without that teardown."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001
            pass
    os._exit(int(code or 0))


def _shutdown_lifecycle(node: LifecycleNode, context) -> None:
    state = lifecycle_state(node)
    try:
        if context.ok():
            if state in ("unconfigured", "inactive", "active"):
                node.trigger_shutdown()
        elif state in ("inactive", "active"):
            # The context is gone (someone called rclpy.shutdown): transitions cannot publish their events any
            # more, so only run the node's own clean-up.
            node.on_shutdown(LifecycleState(state_id=0, label=state))
    except Exception as exc:  # noqa: BLE001
        try:
            node.get_logger().warning(f"shutdown transition failed: {exc}")
        except Exception:  # noqa: BLE001
            pass

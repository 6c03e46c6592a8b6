"""``run_node``: the main() of every emotion_ros node.

rclpy.init -> build the node -> (lifecycle node with ``autostart`` true: configure + activate) -> spin a
MultiThreadedExecutor until Ctrl-C / SIGTERM / shutdown -> shut the node down cleanly. Returns a process exit code.
"""

from __future__ import annotations

import sys
from typing import Callable, Optional, Sequence

import rclpy
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.lifecycle import LifecycleNode, TransitionCallbackReturn

from emotion_ros.env import ensure_ros_env

__all__ = ["run_node", "autostart", "lifecycle_state"]


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


def run_node(node_factory: Callable[[], "rclpy.node.Node"], args: Optional[Sequence[str]] = None,
             num_threads: Optional[int] = None) -> int:
    """Run one node until shutdown. ``node_factory()`` builds it after ``rclpy.init(args=args)``.

    Exit code: 0 on a clean stop (Ctrl-C, SIGTERM, rclpy shutdown), 1 when construction or autostart failed.
    """
    ensure_ros_env()
    rclpy.init(args=args if args is not None else sys.argv)
    node = None
    executor = None
    code = 0
    try:
        try:
            node = node_factory()
        except (KeyboardInterrupt, ExternalShutdownException):
            return 0
        except Exception as exc:  # noqa: BLE001
            rclpy.logging.get_logger("run_node").fatal(f"could not create node: {type(exc).__name__}: {exc}")
            return 1
        executor = MultiThreadedExecutor(num_threads=num_threads)
        executor.add_node(node)
        if isinstance(node, LifecycleNode) and _wants_autostart(node):
            if not autostart(node):
                return 1
        try:
            executor.spin()
        except (KeyboardInterrupt, ExternalShutdownException):
            pass
        return code
    except KeyboardInterrupt:
        return code
    finally:
        if node is not None:
            if isinstance(node, LifecycleNode):
                try:
                    if lifecycle_state(node) in ("unconfigured", "inactive", "active"):
                        node.trigger_shutdown()  # on_shutdown releases devices / models
                except Exception as exc:  # noqa: BLE001
                    node.get_logger().warning(f"shutdown transition failed: {exc}")
        if executor is not None:
            try:
                executor.shutdown(timeout_sec=2.0)
            except Exception:  # noqa: BLE001
                pass
        if node is not None:
            try:
                node.destroy_node()
            except Exception:  # noqa: BLE001
                pass
        rclpy.try_shutdown()

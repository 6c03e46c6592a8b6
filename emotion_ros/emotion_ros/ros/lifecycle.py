"""``run_node``: the main() of every emotion_ros node.

rclpy.init -> build the node -> (lifecycle node with ``autostart`` true: configure + activate) -> spin a
SingleThreadedExecutor (``num_threads`` > 1: a MultiThreadedExecutor) until Ctrl-C / SIGTERM / ``request_stop()`` / rclpy shutdown -> shutdown transition ->
destroy. Returns a process exit code (console_scripts pass it to sys.exit).

``command_line``: ``--help`` / ``-h`` (and node-specific options such as ``--list-devices``) handled before any
ROS/DDS start.  Lifecycle nodes report their state on ``/diagnostics`` from construction (WARN while not active).
"""

from __future__ import annotations

import faulthandler
import gc
import os
import re
import signal
import sys
import threading
from typing import Callable, Dict, List, NoReturn, Optional, Sequence, Tuple, Union

import rclpy
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor, SingleThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.node import Node
from rclpy.signals import SignalHandlerOptions

from emotion_ros.env import ensure_ros_env

__all__ = ["run_node", "request_stop", "autostart", "lifecycle_state", "command_line", "exit_process"]


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


def _program(args: Optional[Sequence[str]]) -> str:
    argv = list(args) if args is not None else sys.argv
    return os.path.basename(argv[0]) if argv and argv[0] else "node"


def command_line(node_name: str, params: Dict[str, Tuple], doc: str = "", args: Optional[Sequence[str]] = None,
                 options: Optional[Dict[str, Tuple[str, Callable[[], int]]]] = None) -> Optional[int]:
    """Handle a node's own command-line options, before any ROS/DDS start: ``-h`` / ``--help`` prints ``doc`` and
    every parameter (type, default, range, description) and returns 0; each ``options`` flag
    (``{"--list-devices": (help, fn)}``) runs ``fn`` and returns its exit code. None: nothing to do, start the node.
    Only the words before ``--ros-args`` are looked at (``args``: the full argv, default ``sys.argv``)."""
    from emotion_ros.ros.node_utils import parameter_help

    argv = list(args) if args is not None else list(sys.argv)
    words = argv[1:]
    if "--ros-args" in words:
        words = words[:words.index("--ros-args")]
    options = options or {}
    if "-h" in words or "--help" in words:
        text = parameter_help(node_name, params, doc)
        if options:
            text += "\nOptions:\n  -h, --help  this text\n" + "".join(
                f"  {flag}  {what}\n" for flag, (what, _) in options.items())
        sys.stdout.write(text)
        return 0
    for flag, (_, fn) in options.items():
        if flag in words:
            return int(fn() or 0)
    return None


def _init_error(exc: Exception, args: Optional[Sequence[str]]) -> str:
    """One line for rclpy.init's RCLError (a bad --params-file or -p rule), without the C source locations."""
    text = re.sub(r",? at /\S+:\d+", "", str(exc)).strip()
    text = text.replace("failed to initialize rcl: ", "")
    m = re.search(r"--params-file (.+?)'", text)
    if m:
        path = m.group(1)
        if not os.path.exists(path):
            return f"{_program(args)}: parameters file not found: {path}"
        why = text.split("Error:", 1)[1].strip() if "Error:" in text else text
        return f"{_program(args)}: cannot use parameters file {path}: {why} (not a valid ROS 2 parameters YAML)"
    return f"{_program(args)}: bad ROS arguments: {text}"


def _check_params_files(args: Optional[Sequence[str]]) -> Optional[str]:
    """One line about the first ``--params-file`` of the ROS arguments that is missing or not YAML (checked before
    rclpy.init, whose own error is a traceback plus an rcl log line); None when they read."""
    argv = list(args) if args is not None else list(sys.argv)
    if "--ros-args" not in argv:
        return None
    ros = argv[argv.index("--ros-args") + 1:]
    for i, word in enumerate(ros[:-1]):
        if word != "--params-file":
            continue
        path = ros[i + 1]
        if not os.path.isfile(path):
            return f"{_program(args)}: parameters file not found: {path}"
        try:
            import yaml
            with open(path, encoding="utf-8") as f:
                data = yaml.safe_load(f)
        except ImportError:
            return None
        except (OSError, UnicodeDecodeError) as exc:
            return f"{_program(args)}: cannot read parameters file {path}: {exc}"
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            why = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            return f"{_program(args)}: parameters file {path} is not valid YAML{where}: {why}"
        if data is not None and not isinstance(data, dict):
            return (f"{_program(args)}: parameters file {path} is not a ROS 2 parameters file (expected "
                    f"'<node name>: ros__parameters: ...', found a {type(data).__name__})")
    return None


class _LifecycleStatus:
    """``/diagnostics`` for a lifecycle node from construction: WARN with its lifecycle state while it is not
    active (a node whose configure failed, or one waiting for a lifecycle manager, is not silent); once it is
    active the node's own Diagnostics report, and this sends a single OK to close its WARN."""

    def __init__(self, node: LifecycleNode, period_s: float = 1.0):
        from diagnostic_msgs.msg import DiagnosticArray
        self.node = node
        self.name = f"{node.get_name()}: lifecycle"
        self._warned = False
        self._pub = node.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._timer = node.create_timer(period_s, self.tick)
        self.tick()

    def tick(self) -> None:
        from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
        state = lifecycle_state(self.node)
        active = state == "active"
        if active and not self._warned:
            return
        self._warned = not active
        st = DiagnosticStatus(level=DiagnosticStatus.OK if active else DiagnosticStatus.WARN, name=self.name,
                              message=f"lifecycle state {state}", hardware_id="")
        st.values = [KeyValue(key="lifecycle_state", value=state)]
        arr = DiagnosticArray(status=[st])
        try:
            arr.header.stamp = self.node.get_clock().now().to_msg()
            self._pub.publish(arr)
        except Exception:  # noqa: BLE001 - context shut down under us
            pass


_stop = threading.Event()

STOP_GRACE_S = 15.0   # > the longest worker join in a node (voice: 10 s)
_grace = {"s": STOP_GRACE_S, "armed": False}


def _arm_stop_watchdog() -> None:
    """Bound the time from a stop request to the process's end. Python's ``faulthandler`` timer runs in a C thread
    that needs no GIL: if the node is still shutting down after the grace period (a callback or a middleware call
    that never returns), it prints every thread's stack on stderr (``Timeout (0:00:15)!`` and the frames) and ends
    the process with exit code 1, so a node never outlives its launch. Armed once per run."""
    if _grace["armed"]:
        return
    _grace["armed"] = True
    try:
        faulthandler.dump_traceback_later(_grace["s"], exit=True)
    except (RuntimeError, ValueError, OSError, AttributeError):   # no usable stderr (fd closed)
        pass


def _disarm_stop_watchdog() -> None:
    if _grace["armed"]:
        _grace["armed"] = False
        faulthandler.cancel_dump_traceback_later()


def request_stop() -> None:
    """Ask the running ``run_node`` loop to stop (e.g. a file source reached its end); safe from any thread."""
    _stop.set()


_signals = {"seen": False}


def _on_signal(signum, _frame) -> None:
    """The first SIGINT/SIGTERM stops the loop and arms the watchdog; repeats return at once. Python runs a handler
    between any two bytecodes, also inside the previous handler: a storm of signals (a held Ctrl-C, a supervisor
    repeating SIGTERM) nested handler in handler inside ``threading.Event.set`` until RecursionError (seen with the
    bag recorder, 2026-12-03), or, once ``set`` holds the Event's lock, could deadlock on it."""
    if _signals["seen"]:
        return
    _signals["seen"] = True
    _stop.set()
    _arm_stop_watchdog()


EXIT_WITH_PARENT_ENV = "EMOTION_ROS_EXIT_WITH_PARENT"


def exit_with_parent(on_gone: Optional[Callable[[], None]] = None) -> bool:
    """Under ``emotion.launch.py`` (which sets ``EMOTION_ROS_EXIT_WITH_PARENT`` to the launch process's pid): ask the
    kernel for a SIGTERM when the process that started this one ends (Linux ``PR_SET_PDEATHSIG``), and stop at once
    if the launch has already gone. Upstream ``ros2 launch`` answers SIGTERM (``docker stop``, systemd) by exiting
    without stopping its processes; with this its nodes follow it instead of running on as orphans. A thread also
    watches the parent and calls ``on_gone`` (default: stop ``run_node`` and bound its shutdown) should the signal's
    handler not get to run. Returns whether it was armed."""
    value = os.environ.get(EXIT_WITH_PARENT_ENV, "")
    if not value or not sys.platform.startswith("linux"):
        return False
    try:
        launch_pid = int(value)
        import ctypes
        if ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM), 0, 0, 0) != 0:   # 1: PR_SET_PDEATHSIG
            return False
    except (ValueError, OSError, AttributeError):
        return False
    try:
        os.kill(launch_pid, 0)
    except ProcessLookupError:               # the launch ended before this process got here
        os.kill(os.getpid(), signal.SIGTERM)
    except PermissionError:
        pass
    if os.getppid() == launch_pid:
        # Second path, for a main thread that does not get to run the SIGTERM handler: see the launch go from here.
        threading.Thread(target=_watch_parent, args=(launch_pid, on_gone), name="exit_with_parent",
                         daemon=True).start()
    return True


def _watch_parent(launch_pid: int, on_gone: Optional[Callable[[], None]] = None, period_s: float = 1.0) -> None:
    while os.getppid() == launch_pid:
        if _stop.wait(period_s):
            return
    if on_gone is not None:
        on_gone()
        return
    _stop.set()
    _arm_stop_watchdog()


def run_node(node_factory: Callable[[], Union[Node, Sequence[Node]]], args: Optional[Sequence[str]] = None,
             num_threads: Optional[int] = None, poll_s: float = 0.2,
             on_ready: Optional[Callable[[], None]] = None, stop_grace_s: float = STOP_GRACE_S) -> int:
    """Run a node (or the list of nodes ``node_factory()`` returns) until Ctrl-C, SIGTERM, ``request_stop()`` or
    rclpy shutdown. ``node_factory()`` is called after ``rclpy.init(args=args or sys.argv)``.

    Lifecycle nodes whose ``autostart`` parameter is true (declared with default true when the node does not) are
    configured and activated before spinning; then ``on_ready()`` is called (if given). On stop, lifecycle nodes
    get the shutdown transition (their ``on_shutdown`` releases devices) while the ROS context is still valid; then nodes are destroyed and rclpy shut
    down. Exit code: 0 on a clean stop, 1 when construction or autostart failed.

    From the first Ctrl-C / SIGTERM (or the start of the shutdown, whatever ended the loop) the process has
    ``stop_grace_s`` to finish; past that it prints its threads' stacks and exits with code 1 (see
    ``_arm_stop_watchdog``), so a shutdown that hangs cannot leave a node running after its launch has gone.
    """
    ensure_ros_env()
    _stop.clear()
    _signals["seen"] = False
    _grace["s"] = float(stop_grace_s)
    exit_with_parent()
    # Own SIGINT/SIGTERM handling: rclpy's handlers would invalidate the context before nodes can shut down.
    problem = _check_params_files(args)
    if problem:
        sys.stderr.write(problem + "\n")
        return 2
    try:
        rclpy.init(args=list(args) if args is not None else sys.argv, signal_handler_options=SignalHandlerOptions.NO)
    except KeyboardInterrupt:
        return 0  # Ctrl-C while rclpy starts: a requested stop
    except Exception as exc:  # noqa: BLE001 - RCLError: a params file that is missing or not YAML, a bad -p rule
        sys.stderr.write(_init_error(exc, args) + "\n")
        return 2
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, _on_signal)
    context = rclpy.get_default_context()
    nodes: List[Node] = []
    made = node = executor = None
    try:
        try:
            made = node_factory()
            nodes = list(made) if isinstance(made, (list, tuple)) else [made]
        except KeyboardInterrupt:
            return 0
        except Exception as exc:  # noqa: BLE001
            from emotion_ros.ros.node_utils import ParameterError
            what = str(exc) if isinstance(exc, ParameterError) else f"{type(exc).__name__}: {exc}"
            rclpy.logging.get_logger("run_node").fatal(f"could not create node: {what}")
            return 1
        for node in nodes:
            if isinstance(node, LifecycleNode):
                node._emotion_ros_status = _LifecycleStatus(node)
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
        if threading.current_thread() is threading.main_thread():
            _arm_stop_watchdog()
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
        # Destroyed rclpy entities still referenced from cycles keep the DDS participant alive, and with it its
        # Fast DDS shared-memory segment in /dev/shm (16.75 MB with the shm profile), which exit_process()'s
        # os._exit would leave behind: collect them now so the middleware removes its files.
        made = node = nodes = executor = None  # noqa: F841 - drop our references before collecting
        gc.collect()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _disarm_stop_watchdog()


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

"""The emotion_ros nodes, one module each (console scripts ``camera_node``, ``face_node``, ...).

When this package is imported by a node command (``face_node``, ``ros2 run emotion_ros face_node``,
``python -m emotion_ros.nodes.face``), Ctrl-C before the node is up (while torch, OpenCV and rclpy are still being
imported: seconds on a busy machine) ends the process quietly with exit code 0, like a Ctrl-C once it runs (so
``ros2 launch`` does not report a stop it asked for as a crash), instead of a KeyboardInterrupt traceback from inside
some import. ``run_node`` installs its own handler (a clean shutdown) once rclpy is up.
Imported by anything else (tests, tools), this package changes no signal handling.
"""
import os
import signal
import sys
import threading

#: Console scripts of this package (setup.py).
NODE_COMMANDS = ("camera_node", "microphone_node", "face_node", "voice_node", "fusion_node", "behaviour_node",
                 "pipeline")


def _quiet_exit(signum, _frame) -> None:
    try:
        sys.stderr.flush()
    except Exception:  # noqa: BLE001
        pass
    os._exit(0)  # nothing of ours to release yet: no ROS context, no node


def _started_as_node_command() -> bool:
    argv0 = sys.argv[0] if sys.argv else ""
    # "-m": python -m emotion_ros.nodes.<node> while Python is still locating the module
    return os.path.basename(argv0) in NODE_COMMANDS or argv0 == "-m"


# Also when SIGINT was inherited as ignored (a command started in the background by a non-interactive shell, as CI
# scripts do): run_node stops on SIGINT whatever was inherited, so start-up must too; before, such a node ignored a
# Ctrl-C sent while it was importing and then ran on for ever.
if (_started_as_node_command() and threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGINT) in (signal.default_int_handler, signal.SIG_IGN)):
    signal.signal(signal.SIGINT, _quiet_exit)

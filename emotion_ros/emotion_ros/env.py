"""Process environment for ROS 2 from a Python venv, so installed entry points work without sourcing anything.

- ``ensure_ament_prefix()``: the interface packages and emotion_ros' share/ files are installed into the venv
  (``sys.prefix``); ``ament_index_python`` only finds them when ``AMENT_PREFIX_PATH`` names that prefix.
- ``ensure_fastdds_profile()``: point Fast DDS at config/fastdds_shm.xml (16 MiB shared-memory segments + UDPv4) unless
  ``FASTDDS_DEFAULT_PROFILES_FILE`` is already set or ``EMOTION_ROS_FASTDDS_PROFILE=0``, under both the Fast DDS 3 and
  the Fast DDS 2 (Jazzy) variable name. Must run before the first rclpy node of the process is created (``run_node``
  does it).

Neither imports rclpy; both only add what is missing.
"""

from __future__ import annotations

import os
import sys
from typing import Optional


def _prefixes():
    seen = []
    for p in (sys.prefix, os.path.dirname(os.path.dirname(os.path.abspath(sys.executable)))):
        if p not in seen:
            seen.append(p)
    return seen


def ensure_ament_prefix() -> Optional[str]:
    """Add this interpreter's prefix to ``AMENT_PREFIX_PATH`` when it holds an ament index and is not listed yet.

    Returns the prefix added, or None.
    """
    current = [p for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p]
    for prefix in _prefixes():
        if os.path.isdir(os.path.join(prefix, "share", "ament_index", "resource_index")):
            if os.path.realpath(prefix) in {os.path.realpath(p) for p in current}:
                return None
            os.environ["AMENT_PREFIX_PATH"] = os.pathsep.join(current + [prefix])
            return prefix
    return None


def config_path(name: str) -> Optional[str]:
    """Path of ``config/<name>`` (:func:`emotion_ros.paths.config_path`: installed share first, else the source tree,
    with ``AMENT_PREFIX_PATH`` made to name this venv first), or None when missing."""
    ensure_ament_prefix()
    from emotion_ros import paths
    p = paths.config_path(name)
    return p if os.path.isfile(p) else None


def ensure_fastdds_profile() -> Optional[str]:
    """Set ``FASTDDS_DEFAULT_PROFILES_FILE`` to emotion_ros' shared-memory profile when unset. Returns the path set.

    Also under Fast DDS 2's name (ROS 2 Jazzy), ``FASTRTPS_DEFAULT_PROFILES_FILE``: see ``emotion_ros.ros.compat``.
    """
    from emotion_ros.ros.compat import fastdds_profile, mirror_fastdds_profile  # here: emotion_ros.ros imports us

    if fastdds_profile() or os.environ.get("EMOTION_ROS_FASTDDS_PROFILE", "1") == "0":
        mirror_fastdds_profile()
        return None
    if os.environ.get("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp") not in ("rmw_fastrtps_cpp",
                                                                      "rmw_fastrtps_dynamic_cpp"):
        return None
    path = config_path("fastdds_shm.xml")
    if path:
        os.environ["FASTDDS_DEFAULT_PROFILES_FILE"] = path
        mirror_fastdds_profile()
    return path


def ensure_ros_env() -> None:
    """Both of the above."""
    ensure_ament_prefix()
    ensure_fastdds_profile()

"""What differs between the ROS 2 distributions emotion_ros runs on, in one place; the rest of the code has one path.

Kilted (the default venv: rclpy 9.1, Fast DDS 3.2) and Jazzy (LTS, ``make setup ROS_DISTRO=jazzy``: rclpy 7.1,
Fast DDS 2.14), both from the PyPI ``ros-*`` wheels. Checked on both (``make test`` / ``make test-jazzy``):

- Fast DDS 3 reads its XML profile from ``FASTDDS_DEFAULT_PROFILES_FILE``; Fast DDS 2 (Jazzy) only from
  ``FASTRTPS_DEFAULT_PROFILES_FILE`` and ignores the new name without a word, so Jazzy nodes ran without the 16 MiB
  shared-memory profile. On Jazzy ``mirror_fastdds_profile()`` gives both names the value of
  ``FASTDDS_DEFAULT_PROFILES_FILE`` (the name emotion_ros, its launch files and scripts/env.sh set), or of the old
  name when only that one is set; on Kilted only the new name is set (Fast DDS 3 warns in every process about the
  old one);
  importing ``emotion_ros.ros`` does it, before any node exists, so a launch file or a shell need set one name only.
- rosbags' type store of the distribution (``rosbags_store()``), for the standard types a bag refers to.
- The same on both, so no shim: the rclpy node, lifecycle, executor, parameter, QoS and graph APIs emotion_ros uses
  (its QoS profiles are always spelled out, never left to a distribution's defaults) and the RIHS01 type hashes of the
  messages (identical for identical .msg sources; test_ros_compat.py checks ours against the sources).
- Building interface packages needs other CMake wheels on Jazzy (ament_cmake_ros and the test helpers its extras
  look for, python_cmake_module): scripts/requirements-jazzy.txt.

No rclpy import here: ``emotion_ros.env`` (which must not import rclpy) uses it too.
"""

from __future__ import annotations

import functools
import os
from typing import Dict, MutableMapping, Optional

#: the Fast DDS 3 name first: it wins when both are set and differ
FASTDDS_PROFILE_VARS = ("FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE")

#: major version of rclpy -> distribution (the PyPI wheels' and the distributions' own rclpy agree)
_RCLPY_MAJOR = {7: "jazzy", 9: "kilted"}


def fastdds_profile(environ: Optional[MutableMapping[str, str]] = None) -> Optional[str]:
    """The Fast DDS profile file named in ``environ`` (default ``os.environ``) under either name, or None."""
    env = os.environ if environ is None else environ
    for var in FASTDDS_PROFILE_VARS:
        if env.get(var):
            return env[var]
    return None


def profile_vars(distro: Optional[str] = None) -> tuple:
    """The profile variable names the distribution's Fast DDS reads: both on Jazzy (Fast DDS 2 reads only the old
    one), only ``FASTDDS_DEFAULT_PROFILES_FILE`` on Kilted (Fast DDS 3 prints a deprecation warning in every process
    that has the old name set, which broke tools' one-line error output)."""
    return FASTDDS_PROFILE_VARS if (distro or ros_distro()) == "jazzy" else FASTDDS_PROFILE_VARS[:1]


def fastdds_profile_env(path: str, distro: Optional[str] = None) -> Dict[str, str]:
    """The variables to set to ``path`` for a process (of this distribution) that may not import emotion_ros."""
    return {var: path for var in profile_vars(distro)}


def mirror_fastdds_profile(environ: Optional[MutableMapping[str, str]] = None,
                           distro: Optional[str] = None) -> Optional[str]:
    """Give the names this distribution's Fast DDS reads the profile ``fastdds_profile()`` finds; on Kilted also
    drop the old name when it holds that same value (a mirror made for Jazzy, e.g. by an older shell), so that Fast
    DDS 3 does not warn. Returns the profile (None: neither name is set)."""
    env = os.environ if environ is None else environ
    path = fastdds_profile(env)
    if path:
        wanted = profile_vars(distro)
        for var in wanted:
            if env.get(var) != path:
                env[var] = path
        old = FASTDDS_PROFILE_VARS[1]
        if old not in wanted and env.get(old) == path:
            del env[old]
    return path


@functools.lru_cache(maxsize=1)
def ros_distro() -> str:
    """``kilted`` or ``jazzy`` from the installed rclpy's version; otherwise ``$ROS_DISTRO`` (or ``unknown``)."""
    from importlib import metadata
    for dist in ("rclpy", "ros-rclpy"):
        try:
            major = int(metadata.version(dist).split(".")[0])
        except (metadata.PackageNotFoundError, ValueError):
            continue
        if major in _RCLPY_MAJOR:
            return _RCLPY_MAJOR[major]
    return os.environ.get("ROS_DISTRO") or "unknown"


def rosbags_store():
    """rosbags' ``Stores`` member of the running distribution (Kilted's for any other)."""
    from rosbags.typesys import Stores
    return Stores.ROS2_JAZZY if ros_distro() == "jazzy" else Stores.ROS2_KILTED

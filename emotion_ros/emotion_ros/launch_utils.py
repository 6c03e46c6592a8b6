"""Pieces shared by the split launch files (launch/robot.launch.py, launch/server.launch.py): the DDS transport and
domain arguments, the check of the files named by arguments, and ending the launch when a process fails.

Imports ``launch`` (the ROS 2 launch tooling); only launch files use this module.
"""
from __future__ import annotations

import os
from typing import List, Sequence

from launch.actions import DeclareLaunchArgument, OpaqueFunction, RegisterEventHandler, SetEnvironmentVariable
from launch.conditions import IfCondition
from launch.event_handlers import OnProcessExit
from launch.substitutions import EqualsSubstitution, LaunchConfiguration, NotEqualsSubstitution

from emotion_ros.ros.compat import profile_vars

#: ``transport`` argument value -> Fast DDS profile in the package's config/
TRANSPORTS = {"shm": "fastdds_shm.xml", "udp": "fastdds_udp.xml"}


def network_arguments(share: str) -> List:
    """``transport`` (shm | udp: which Fast DDS profile the nodes load) and ``domain_id`` (ROS_DOMAIN_ID; empty:
    the environment's), declared and applied to every process started after them."""
    actions: List = [
        DeclareLaunchArgument(
            "transport", default_value="shm", choices=sorted(TRANSPORTS),
            description="Fast DDS transports: shm = shared memory between this machine's processes + UDPv4 to "
                        "other machines (config/fastdds_shm.xml); udp = UDPv4 only (config/fastdds_udp.xml), e.g. "
                        "when network namespaces on one machine stand for two hosts"),
        DeclareLaunchArgument(
            "domain_id", default_value="",
            description="ROS_DOMAIN_ID for every node, the same on robot and server (0-101 are safe on Linux). "
                        "Empty: the environment's ROS_DOMAIN_ID (unset: 0)"),
    ]
    for value, name in TRANSPORTS.items():
        for var in profile_vars():  # Kilted: Fast DDS 3's name; Jazzy: also Fast DDS 2's (ros/compat.py)
            actions.append(SetEnvironmentVariable(
                var, os.path.join(share, "config", name),
                condition=IfCondition(EqualsSubstitution(LaunchConfiguration("transport"), value))))
    given = IfCondition(NotEqualsSubstitution(LaunchConfiguration("domain_id"), ""))
    actions.append(SetEnvironmentVariable("ROS_DOMAIN_ID", LaunchConfiguration("domain_id"), condition=given))
    return actions


def check_files(names: Sequence[str]) -> OpaqueFunction:
    """Refuse a file argument (params_file, rules_file, ...) naming a file that does not exist, before any node
    starts (rclpy would otherwise fail in every node at once, or run on defaults)."""
    def check(context):
        for arg in names:
            path = LaunchConfiguration(arg).perform(context)
            if path and not os.path.isfile(path):
                raise RuntimeError(f"{arg} '{path}' does not exist (launch argument {arg}:=...)")
        return []
    return OpaqueFunction(function=check)


def _end_launch_on_failure(event, context):
    if event.returncode == 0 or context.is_shutdown:
        return None
    raise RuntimeError(f"{event.action.name} exited with code {event.returncode} (its log above says why); "
                       "ending the launch")


def end_launch_on_failure() -> RegisterEventHandler:
    """A process that exits with a non-zero code ends the launch (exit code 1) with one line naming it."""
    return RegisterEventHandler(OnProcessExit(on_exit=_end_launch_on_failure))


def nodes_end_with_launch() -> SetEnvironmentVariable:
    """Every node started after this action ends when this launch process ends, however it ends: upstream
    ``ros2 launch`` exits on SIGTERM (``docker stop``, systemd) without stopping its processes. The nodes read the
    launch's pid from ``EMOTION_ROS_EXIT_WITH_PARENT`` (:func:`emotion_ros.ros.lifecycle.exit_with_parent`)."""
    return SetEnvironmentVariable("EMOTION_ROS_EXIT_WITH_PARENT", str(os.getpid()))

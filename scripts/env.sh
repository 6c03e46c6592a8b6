# emotion_ros environment: `source scripts/env.sh` (bash/zsh). The one place that sets the ROS 2 variables for
# this repository's venv; the Makefile sources it. Safe to source more than once.
#   EMOTION_ROS_VENV   venv to use (default <repo>/.venv; <repo>/.venv-jazzy when ROS_DISTRO=jazzy)
if [ -n "${BASH_SOURCE[0]:-}" ]; then _er_here="${BASH_SOURCE[0]}"; else _er_here="${(%):-%x}"; fi
EMOTION_ROS_ROOT="$(cd "$(dirname "$_er_here")/.." && pwd)"
unset _er_here
export EMOTION_ROS_ROOT
if [ -z "${EMOTION_ROS_VENV:-}" ]; then
  case "${ROS_DISTRO:-}" in
    jazzy) EMOTION_ROS_VENV="$EMOTION_ROS_ROOT/.venv-jazzy" ;;   # make setup ROS_DISTRO=jazzy
    *) EMOTION_ROS_VENV="$EMOTION_ROS_ROOT/.venv" ;;
  esac
fi
export EMOTION_ROS_VENV

_er_prepend() {  # _er_prepend VAR DIR: put DIR first in the colon list VAR, once
  local cur="${!1:-}"
  case ":$cur:" in *":$2:"*) ;; *) export "$1=$2${cur:+:$cur}" ;; esac
}
# ament index (interfaces + emotion_ros share/) and CMake packages live in the venv prefix
_er_prepend AMENT_PREFIX_PATH "$EMOTION_ROS_VENV"
_er_prepend CMAKE_PREFIX_PATH "$EMOTION_ROS_VENV"   # colcon build in a workspace finds ament_cmake/rosidl here
_er_prepend PATH "$EMOTION_ROS_VENV/bin"
unset -f _er_prepend
export RMW_IMPLEMENTATION="${RMW_IMPLEMENTATION:-rmw_fastrtps_cpp}"
# Fast DDS: shared-memory transport with 16 MiB segments for images (+UDPv4); see config/fastdds_shm.xml
if [ -z "${FASTDDS_DEFAULT_PROFILES_FILE:-}" ]; then
  export FASTDDS_DEFAULT_PROFILES_FILE="${FASTRTPS_DEFAULT_PROFILES_FILE:-$EMOTION_ROS_ROOT/emotion_ros/config/fastdds_shm.xml}"
fi
# Jazzy's Fast DDS 2 reads the profile only under its old name; Kilted's Fast DDS 3 warns in every process that has
# the old name set, so it is set for a Jazzy venv only (emotion_ros/emotion_ros/ros/compat.py)
if [ "$(cat "$EMOTION_ROS_VENV/.emotion_ros_distro" 2>/dev/null)" = jazzy ]; then
  export FASTRTPS_DEFAULT_PROFILES_FILE="$FASTDDS_DEFAULT_PROFILES_FILE"
elif [ "${FASTRTPS_DEFAULT_PROFILES_FILE:-}" = "$FASTDDS_DEFAULT_PROFILES_FILE" ]; then
  unset FASTRTPS_DEFAULT_PROFILES_FILE
fi
# rclpy log files go to $ROS_HOME/log (default ~/.ros/log); keep them inside the repository's ignored .cache/
export ROS_HOME="${ROS_HOME:-$EMOTION_ROS_ROOT/.cache/ros}"
export PYTHONUNBUFFERED=1

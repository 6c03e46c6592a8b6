#!/usr/bin/env bash
# Install the ROS 2 command-line and launch tooling (`ros2`, `ros2 launch`, `ros2 run`, `ros2 lifecycle`,
# `launch_testing`, ...) into the venv from a folder of wheels built from the upstream sources, because no package
# registry reachable here serves them (on a robot the ROS distribution provides them):
#   <ROS_TOOLS_DIR>/wheels/*.whl                 pip install --no-deps (their PyPI deps come from
#                                                scripts/requirements-ros-tools.txt, installed by setup.sh)
#   <ROS_TOOLS_DIR>/src/composition_interfaces   built like the other interface packages (launch_ros imports it)
# ROS_TOOLS_DIR defaults to <repo>/../shared/ros-tools. When it does not exist this says so in one line and exits 0.
# Idempotent. usage: scripts/install_ros_tools.sh [VENV]
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$(cd "${1:-${VENV:-$ROOT/.venv}}" && pwd)"
PY="$VENV/bin/python"
DIR="${ROS_TOOLS_DIR:-$ROOT/../shared/ros-tools}"

[ -x "$PY" ] || { echo "install_ros_tools: no python at $PY" >&2; exit 1; }
if [ ! -d "$DIR/wheels" ]; then
  echo "install_ros_tools: no ROS tooling at $DIR (ros2 / ros2 launch / launch_testing not installed;" \
       "set ROS_TOOLS_DIR to a folder with wheels/ and src/composition_interfaces)"
  exit 0
fi
DIR="$(cd "$DIR" && pwd)"
shopt -s nullglob
wheels=("$DIR"/wheels/*.whl)
shopt -u nullglob
[ ${#wheels[@]} -gt 0 ] || { echo "install_ros_tools: $DIR/wheels holds no .whl" >&2; exit 1; }

# 1. wheels: skip those whose name and version are installed already
missing=()
for whl in "${wheels[@]}"; do
  base="$(basename "$whl" .whl)"
  name="${base%%-*}"; rest="${base#*-}"; version="${rest%%-*}"
  have="$("$PY" -c 'import sys, importlib.metadata as m
try: print(m.version(sys.argv[1]))
except m.PackageNotFoundError: print("")' "$name" 2>/dev/null || true)"
  [ "$have" = "$version" ] || missing+=("$whl")
done
if [ ${#missing[@]} -gt 0 ]; then
  log="$(mktemp)"
  "$PY" -m pip install -q --disable-pip-version-check --no-deps "${missing[@]}" >"$log" 2>&1 \
    || { cat "$log" >&2; rm -f "$log"; echo "install_ros_tools: pip install of the tooling wheels failed" >&2; exit 1; }
  rm -f "$log"
  echo "install_ros_tools: installed ${#missing[@]} wheel(s) from $DIR/wheels"
else
  echo "install_ros_tools: ${#wheels[@]} tooling wheels up to date"
fi

# 2. composition_interfaces (a message package: launch_ros imports it)
if [ -d "$DIR/src/composition_interfaces" ]; then
  "$ROOT/scripts/build_interfaces.sh" "$VENV" "$DIR/src/composition_interfaces"
fi

# 3. check: the commands start and launch_ros imports
(cd / && AMENT_PREFIX_PATH="$VENV" PATH="$VENV/bin:$PATH" "$PY" -c '
import launch, launch_ros, launch_testing, ros2cli, composition_interfaces.srv  # noqa: F401
') || { echo "install_ros_tools: the tooling does not import (see above)" >&2; exit 1; }
[ -x "$VENV/bin/ros2" ] || { echo "install_ros_tools: $VENV/bin/ros2 is missing" >&2; exit 1; }
echo "install_ros_tools: ros2, ros2 launch, launch_testing ready ($DIR)"

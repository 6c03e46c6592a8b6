#!/usr/bin/env bash
# Install the emotion_ros ament_python package into a venv for development:
#  - `pip install -e` (console scripts nodes/tools land in <venv>/bin and run the source tree), and
#  - the ament layout that `colcon build --symlink-install` would give (editable installs skip data_files and
#    setup.cfg's script_dir), which `ros2 run` / `ros2 launch` need:
#    lib/emotion_ros/<each console script>         links to <venv>/bin/<script>       (ros2 run, launch_ros Node)
#    share/ament_index/resource_index/packages/emotion_ros                               (package marker)
#    share/emotion_ros/package.xml, share/emotion_ros/{launch,config,models}/<file>      file links into the source
#    The folders are real and each file is linked: ros2launch does not follow a linked folder when it looks for a
#    launch file. Edits to those files need no reinstall; a new file does (setup.sh's stamp lists them).
# Idempotent. usage: scripts/install_package.sh [VENV]
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$(cd "${1:-${VENV:-$ROOT/.venv}}" && pwd)"
PKG="$ROOT/emotion_ros"
PY="$VENV/bin/python"

[ -x "$PY" ] || { echo "install_package: no python at $PY" >&2; exit 1; }

# 1. editable install (skipped when the venv already points at this source tree)
here="$(cd / && "$PY" -c '
import importlib.util, os, sys
spec = importlib.util.find_spec("emotion_ros")
loc = os.path.realpath(os.path.dirname(spec.origin)) if spec and spec.origin else ""
print("yes" if loc == os.path.realpath(os.path.join(sys.argv[1], "emotion_ros")) else "no")
' "$PKG" 2>/dev/null || true)"
if [ "$here" != yes ] || [ ! -x "$VENV/bin/camera_node" ] || [ "$PKG/setup.py" -nt "$VENV/bin/camera_node" ]; then
  log="$(mktemp)"
  (cd / && "$PY" -m pip install -q --no-deps --no-build-isolation -e "$PKG") >"$log" 2>&1 \
    || { cat "$log" >&2; rm -f "$log"; echo "install_package: pip install -e failed" >&2; exit 1; }
  rm -f "$log"
  echo "install_package: pip install -e $PKG"
fi

# 2. ament index + share directory
share="$VENV/share/emotion_ros"
index="$VENV/share/ament_index/resource_index/packages"
mkdir -p "$share" "$index"
[ -f "$index/emotion_ros" ] || : >"$index/emotion_ros"
link_file() {  # link_file TARGET LINK: LINK -> TARGET unless it already is
  if [ -L "$2" ] && [ "$(readlink "$2")" = "$1" ]; then return; fi
  rm -rf "$2"
  ln -s "$1" "$2"
}
link_file "$PKG/package.xml" "$share/package.xml"
for sub in launch config models; do
  [ -L "$share/$sub" ] && rm -f "$share/$sub"   # earlier layout: the whole folder linked
  mkdir -p "$share/$sub"
  # links whose source file is gone
  find "$share/$sub" -maxdepth 1 -type l ! -exec test -e {} \; -delete
  [ -d "$PKG/$sub" ] || continue                # models/ may be missing in a fresh clone
  for f in "$PKG/$sub"/*; do
    [ -f "$f" ] && link_file "$f" "$share/$sub/$(basename "$f")"
  done
done

# 3. executables where ros2 run and launch_ros look: <prefix>/lib/<package>/<name>
libdir="$VENV/lib/emotion_ros"
mkdir -p "$libdir"
scripts="$(cd / && "$PY" -c '
import importlib.metadata as m
print(" ".join(sorted(e.name for e in m.distribution("emotion_ros").entry_points if e.group == "console_scripts")))
')"
[ -n "$scripts" ] || { echo "install_package: emotion_ros declares no console scripts" >&2; exit 1; }
find "$libdir" -maxdepth 1 -type l ! -exec test -e {} \; -delete
for name in $scripts; do
  [ -x "$VENV/bin/$name" ] || { echo "install_package: $VENV/bin/$name is missing" >&2; exit 1; }
  link_file "$VENV/bin/$name" "$libdir/$name"
done

AMENT_PREFIX_PATH="$VENV" "$PY" -c "
from ament_index_python.packages import get_package_share_directory as g
import os
d = g('emotion_ros'); assert os.path.isfile(os.path.join(d, 'package.xml')), d
assert os.path.isfile(os.path.join(d, 'launch', 'emotion.launch.py')), d
" || { echo "install_package: ament index check failed" >&2; exit 1; }
echo "install_package: emotion_ros share at $share, executables in $libdir"

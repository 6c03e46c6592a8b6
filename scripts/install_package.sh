#!/usr/bin/env bash
# Install the emotion_ros ament_python package into a venv for development:
#  - `pip install -e` (console scripts nodes/tools land in <venv>/bin and run the source tree), and
#  - what `colcon build --symlink-install` would put under <prefix>/share (editable installs skip data_files):
#    share/ament_index/resource_index/packages/emotion_ros, share/emotion_ros/{package.xml,config,launch,models}
#    as symlinks into the source tree, so get_package_share_directory('emotion_ros') works with
#    AMENT_PREFIX_PATH=<venv> and edits to config/launch/models need no reinstall.
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
for item in package.xml config launch models; do
  # models/ may be missing in a fresh clone (git keeps no empty directories)
  [ "$item" = package.xml ] || mkdir -p "$PKG/$item"
  target="$PKG/$item"
  link="$share/$item"
  if [ -L "$link" ] && [ "$(readlink "$link")" = "$target" ]; then continue; fi
  rm -rf "$link"
  ln -s "$target" "$link"
done

AMENT_PREFIX_PATH="$VENV" "$PY" -c "
from ament_index_python.packages import get_package_share_directory as g
import os
d = g('emotion_ros'); assert os.path.isfile(os.path.join(d, 'package.xml')), d
" || { echo "install_package: ament index check failed" >&2; exit 1; }
echo "install_package: emotion_ros share at $share"

#!/usr/bin/env bash
# Build the ROS 2 interface packages (emotion_msgs, audio_common_msgs, hri_msgs) into a Python venv that holds the
# ROS 2 PyPI wheels (ros-rclpy, rosidl/ament build wheels). Idempotent: a package whose sources did not
# change since its last install (stamp under <venv>/share/<pkg>/) and that imports is skipped.
#
# usage: scripts/build_interfaces.sh [VENV [PKG_DIR...]]   (default: <repo>/.venv; emotion_msgs audio_common_msgs hri_msgs)
#        FORCE=1 scripts/build_interfaces.sh     rebuild regardless of stamps
# PKG_DIR: source folder of another interface package to build the same way (e.g. ros-tools' composition_interfaces).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$(cd "${1:-${VENV:-$ROOT/.venv}}" && pwd)"
PY="$VENV/bin/python"
BUILD="${BUILD_DIR:-$ROOT/build}"
JOBS="${JOBS:-$(nproc 2>/dev/null || echo 2)}"
PKG_DIRS=("$ROOT/emotion_msgs" "$ROOT/audio_common_msgs" "$ROOT/hri_msgs" "${@:2}")
mkdir -p "$BUILD"

[ -x "$PY" ] || { echo "build_interfaces: no python at $PY (run scripts/setup.sh first)" >&2; exit 1; }
command -v cmake >/dev/null || { echo "build_interfaces: cmake not found (apt-get install cmake g++)" >&2; exit 1; }

export AMENT_PREFIX_PATH="$VENV${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}"
export CMAKE_PREFIX_PATH="$VENV${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}"
export PATH="$VENV/bin:$PATH"
export ROS_HOME="${ROS_HOME:-${TMPDIR:-/tmp}/emotion_ros-build-roshome}"

# 1. The ROS wheels' exported CMake targets carry the include paths of the interpreter they were built with
#    (/opt/python/cp311-cp311/...). Point them at this venv's Python and numpy include directories.
"$PY" - "$VENV" <<'PYEOF'
import os, re, sys, sysconfig
import numpy
venv = sys.argv[1]
py_inc = sysconfig.get_paths()["include"]
np_inc = numpy.get_include()
pat_py = re.compile(r'[^";]*/include/python3\.\d+')
pat_np = re.compile(r'[^";]*/site-packages/numpy/(?:_core|core)/include')
patched = 0
for dirpath, _dirs, names in os.walk(os.path.join(venv, "share")):
    for n in names:
        if not n.endswith(".cmake"):
            continue
        p = os.path.join(dirpath, n)
        try:
            with open(p, encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError):
            continue
        if "include" not in text:
            continue
        def fix(m, repl):
            return m.group(0) if os.path.isdir(m.group(0)) else repl
        new = pat_np.sub(lambda m: fix(m, np_inc), text)
        new = pat_py.sub(lambda m: fix(m, py_inc), new)
        if new != text:
            with open(p, "w", encoding="utf-8") as f:
                f.write(new)
            patched += 1
print(f"build_interfaces: patched {patched} .cmake file(s) -> {py_inc}, {np_inc}")
PYEOF

# 2. Build + install each interface package unless its stamp matches.
stamp_of() {  # hash of the package sources + interpreter + numpy include (a numpy change needs a rebuild check)
  local dir="$1"
  { cd "$dir" && find . -type f \( -name '*.msg' -o -name '*.srv' -o -name '*.action' -o -name CMakeLists.txt -o -name package.xml \) \
      -print0 | sort -z | xargs -0 sha256sum; "$PY" -c 'import sys,numpy;print(sys.version,numpy.get_include())'; } \
    | sha256sum | cut -d' ' -f1
}
imports() {  # imports PKG: its generated Python modules (msg and/or srv) import
  "$PY" -c 'import importlib, importlib.util, sys
p = sys.argv[1]
subs = [s for s in ("msg", "srv", "action") if importlib.util.find_spec(p + "." + s) is not None]
assert subs, "no msg/srv/action module in " + p
for s in subs:
    importlib.import_module(p + "." + s)' "$1"
}
for dir in "${PKG_DIRS[@]}"; do
  pkg="$(basename "$dir")"
  stamp_file="$VENV/share/$pkg/.emotion_ros_build_stamp"
  want="$(stamp_of "$dir")"
  if [ "${FORCE:-0}" != 1 ] && [ -f "$stamp_file" ] && [ "$(cat "$stamp_file")" = "$want" ] \
      && imports "$pkg" 2>/dev/null; then
    echo "build_interfaces: $pkg up to date"
    continue
  fi
  echo "build_interfaces: building $pkg"
  t0=$SECONDS
  cmake -S "$dir" -B "$BUILD/$pkg" -DCMAKE_INSTALL_PREFIX="$VENV" -DBUILD_TESTING=OFF \
        -DPython3_EXECUTABLE="$PY" -DCMAKE_BUILD_TYPE=Release >"$BUILD/$pkg.cmake.log" 2>&1 \
    || { tail -40 "$BUILD/$pkg.cmake.log" >&2; echo "build_interfaces: cmake configure of $pkg failed (log: $BUILD/$pkg.cmake.log)" >&2; exit 1; }
  cmake --build "$BUILD/$pkg" -j "$JOBS" >>"$BUILD/$pkg.cmake.log" 2>&1 \
    && cmake --install "$BUILD/$pkg" >>"$BUILD/$pkg.cmake.log" 2>&1 \
    || { tail -40 "$BUILD/$pkg.cmake.log" >&2; echo "build_interfaces: build of $pkg failed (log: $BUILD/$pkg.cmake.log)" >&2; exit 1; }
  imports "$pkg" || { echo "build_interfaces: $pkg built but does not import" >&2; exit 1; }
  echo "$want" >"$stamp_file"
  echo "build_interfaces: $pkg installed into $VENV ($((SECONDS - t0)) s)"
done

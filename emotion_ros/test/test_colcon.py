"""The colcon route: ``colcon build`` of this repository in a fresh workspace whose underlay is the venv (its ROS 2
wheels and interfaces: AMENT_PREFIX_PATH / CMAKE_PREFIX_PATH), then ``ros2 launch`` from that install space.

The build compiles emotion_msgs (rosidl C/C++/Python type support): about a minute and a half of wall time on a
busy 2-core machine (33 s of CPU), once per test session; it prints its time.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import pytest

from launch_helpers import (LIFECYCLE_NODES, VENV_BIN, cli_env, group_pids, lifecycle_states, requires_ros2,
                            ros2_launch)
from robust_helpers import PKG_ROOT

REPO = os.path.dirname(PKG_ROOT)
COLCON = os.path.join(VENV_BIN, "colcon")
pytestmark = [requires_ros2,
              pytest.mark.skipif(not os.path.isfile(COLCON), reason="colcon is not installed (make setup installs it)"),
              pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake is not installed")]
IGNORE = shutil.ignore_patterns("__pycache__", "*.egg-info", ".pytest_cache", "*.pyc", "build", "install", "log")


def _sourced_env(ws: str) -> dict:
    """The environment after ``source install/setup.bash`` on top of this session's."""
    out = subprocess.run(["bash", "-c", f"source '{ws}/install/setup.bash' && env -0"], cwd=ws,
                         env=cli_env(source_tree=False), stdout=subprocess.PIPE, check=True, timeout=60).stdout
    return dict(item.split("=", 1) for item in out.decode().split("\0") if "=" in item)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A workspace with this repository's packages in src/ (as a clone would have them), built by colcon."""
    ws = str(tmp_path_factory.mktemp("colcon_ws"))
    for pkg in ("emotion_msgs", "emotion_ros", "audio_common_msgs"):
        shutil.copytree(os.path.join(REPO, pkg), os.path.join(ws, "src", pkg), ignore=IGNORE, symlinks=True)
    env = cli_env({"CMAKE_PREFIX_PATH": sys.prefix}, source_tree=False)
    t0 = time.monotonic()
    res = subprocess.run([COLCON, "build", "--event-handlers", "console_direct-", "--cmake-args",
                          "-DBUILD_TESTING=OFF"], cwd=ws, env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, timeout=1200)
    took = time.monotonic() - t0
    print(f"\ncolcon build (emotion_msgs + emotion_ros): {took:.1f} s")
    assert res.returncode == 0, res.stdout[-6000:]
    return ws, res.stdout, took


def test_colcon_build_installs_the_ament_layout(workspace):
    ws, out, _ = workspace
    assert "Summary: 2 packages finished" in out, out[-3000:]   # audio_common_msgs is COLCON_IGNOREd
    prefix = os.path.join(ws, "install", "emotion_ros")
    for exe in ("camera_node", "microphone_node", "face_node", "voice_node", "fusion_node", "behaviour_node",
                "pipeline", "emotion-bag", "emotion-demo"):
        assert os.access(os.path.join(prefix, "lib", "emotion_ros", exe), os.X_OK), exe
    for f in ("package.xml", "launch/emotion.launch.py", "config/emotion.yaml", "config/behaviour_rules.yaml",
              "config/fastdds_shm.xml"):
        assert os.path.isfile(os.path.join(prefix, "share", "emotion_ros", f)), f
    assert os.path.isfile(os.path.join(prefix, "share", "ament_index", "resource_index", "packages", "emotion_ros"))
    env = _sourced_env(ws)
    res = subprocess.run(["ros2", "pkg", "prefix", "emotion_ros"], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, timeout=60)
    assert res.stdout.strip() == prefix, res.stdout
    res = subprocess.run([sys.executable, "-c", "import emotion_ros, emotion_msgs; print(emotion_ros.__file__); "
                          "print(emotion_msgs.__file__)"], env=env, cwd=ws, stdout=subprocess.PIPE, text=True,
                         timeout=60)
    assert all(line.startswith(os.path.join(ws, "install")) for line in res.stdout.split()), res.stdout


def test_ros2_launch_from_the_colcon_install_space(workspace, tmp_path):
    ws = workspace[0]
    env = _sourced_env(ws)
    launch = ros2_launch(["camera:=false", "microphone:=false", "device:=cpu"], str(tmp_path / "launch.log"),
                         env=env)
    try:
        states = lifecycle_states([f"/{n}" for n in LIFECYCLE_NODES], env=env, timeout=300)
        assert all(s.startswith("active") for s in states.values()), f"{states}\n{launch.tail()}"
        # the processes are the install space's executables
        cmdlines = []
        for pid in group_pids(launch.pgid):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    cmdlines.append(f.read().replace(b"\0", b" ").decode(errors="replace"))
            except OSError:
                pass
        for node in LIFECYCLE_NODES + ["behaviour_node"]:
            exe = os.path.join(ws, "install", "emotion_ros", "lib", "emotion_ros", node)
            assert any(exe in c for c in cmdlines), (node, cmdlines)
        code = launch.stop(timeout=60)
        assert code == 0, f"exit code {code}:\n{launch.tail()}"
        assert launch.leftovers() == []
    finally:
        launch.stop(timeout=20)
        launch.kill()

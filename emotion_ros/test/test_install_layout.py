"""The venv install (scripts/install_package.sh, scripts/install_ros_tools.sh) has the ament layout that ``ros2 run``
and ``ros2 launch`` look for: every command in <prefix>/lib/emotion_ros/, the package marker, and share/emotion_ros/
folders that are real (ros2launch does not walk into a linked folder) holding each file or a link to it."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

PKG = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPO = os.path.dirname(PKG)
PREFIX = sys.prefix
SHARE = os.path.join(PREFIX, "share", "emotion_ros")
venv_install = pytest.mark.skipif(not os.path.isdir(SHARE), reason=f"emotion_ros is not installed in {PREFIX}")


def _console_scripts():
    with open(os.path.join(PKG, "setup.py")) as f:
        return set(re.findall(r'"([\w\-]+)\s*=\s*[\w\.]+:\w+"', f.read()))


@venv_install
def test_every_command_is_in_lib_emotion_ros():
    lib = os.path.join(PREFIX, "lib", "emotion_ros")
    for name in _console_scripts():
        path = os.path.join(lib, name)
        assert os.path.isfile(path) and os.access(path, os.X_OK), f"{path} (run make setup)"


@venv_install
def test_share_folders_are_real_and_hold_every_source_file():
    assert os.path.isfile(os.path.join(PREFIX, "share", "ament_index", "resource_index", "packages", "emotion_ros"))
    assert os.path.isfile(os.path.join(SHARE, "package.xml"))
    for sub in ("launch", "config", "models"):
        folder = os.path.join(SHARE, sub)
        assert os.path.isdir(folder) and not os.path.islink(folder), f"{folder} must be a real folder"
        for name in os.listdir(os.path.join(PKG, sub)):
            if os.path.isfile(os.path.join(PKG, sub, name)):
                assert os.path.isfile(os.path.join(folder, name)), f"{folder}/{name} (run make setup)"


def test_install_ros_tools_says_in_one_line_when_the_folder_is_absent(tmp_path):
    res = subprocess.run([os.path.join(REPO, "scripts", "install_ros_tools.sh"), PREFIX],
                         env=dict(os.environ, ROS_TOOLS_DIR=str(tmp_path / "none")), stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, timeout=60)
    assert res.returncode == 0, res.stdout
    lines = res.stdout.strip().splitlines()
    assert len(lines) == 1 and f"no ROS tooling at {tmp_path / 'none'}" in lines[0], res.stdout


def test_one_lookup_order_for_shared_files_installed_share_first(tmp_path, monkeypatch):
    """paths._find is the one place the order is decided (the nodes' default models and rules, the tools): the
    installed share's file when it exists, else the source tree's, whose path is named when neither exists."""
    from emotion_ros import paths
    share = tmp_path / "share" / "emotion_ros"
    (share / "models").mkdir(parents=True)
    (share / "models" / "face.pt").write_bytes(b"installed")
    monkeypatch.setattr(paths, "share_dir", lambda: str(share))
    assert paths.model_path("face.pt") == str(share / "models" / "face.pt")
    assert paths.model_path("voice.pt") == os.path.join(PKG, "models", "voice.pt")          # not installed: source
    assert paths.config_path("nope.yaml") == os.path.join(PKG, "config", "nope.yaml")      # missing: named
    monkeypatch.setattr(paths, "share_dir", lambda: None)
    assert paths.model_path("face.pt") == os.path.join(PKG, "models", "face.pt")


def test_no_node_keeps_its_own_copy_of_the_lookup():
    nodes = os.path.join(PKG, "emotion_ros", "nodes")
    for name in sorted(os.listdir(nodes)):
        if name.endswith(".py"):
            with open(os.path.join(nodes, name)) as f:
                src = f.read()
            assert "share_dir(" not in src and "get_package_share_directory" not in src, \
                f"{name}: use emotion_ros.paths (model_path / config_path) instead of a copy of its lookup"

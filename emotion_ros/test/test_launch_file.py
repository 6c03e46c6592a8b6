"""The launch file, without ``launch`` (not installable here): it parses, its executables are console
scripts of the package, the parameter files it names exist and hold a section for every node it starts,
and every parameter in those sections is one the node declares."""
from __future__ import annotations

import ast
import os
import re

import yaml

PKG = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = os.path.join(PKG, "launch", "emotion.launch.py")


def _tree():
    with open(LAUNCH) as f:
        return ast.parse(f.read(), LAUNCH)


def _console_scripts():
    with open(os.path.join(PKG, "setup.py")) as f:
        src = f.read()
    return dict(re.findall(r'"([\w\-]+)\s*=\s*([\w\.]+:\w+)"', src))


def _nodes(tree):
    out = []
    for call in ast.walk(tree):
        if isinstance(call, ast.Call) and getattr(call.func, "id", None) == "Node":
            kw = {k.arg: k.value for k in call.keywords}
            out.append({k: v.value for k, v in kw.items() if isinstance(v, ast.Constant)})
    return out


def test_launch_file_parses_and_defines_generate_launch_description():
    tree = _tree()
    names = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    assert "generate_launch_description" in names


def test_launch_executables_are_console_scripts_of_the_package():
    scripts = _console_scripts()
    nodes = _nodes(_tree())
    assert {n["executable"] for n in nodes} == {"camera_node", "microphone_node", "face_node", "voice_node",
                                                 "fusion_node", "behaviour_node"}
    for n in nodes:
        assert n["package"] == "emotion_ros"
        assert n["executable"] in scripts, n
        module, func = scripts[n["executable"]].split(":")
        path = os.path.join(PKG, *module.split(".")) + ".py"
        assert os.path.isfile(path), path
        with open(path) as f:
            assert re.search(rf"^def {func}\(", f.read(), re.M), f"{path} has no {func}()"


def test_launch_parameter_files_exist_and_cover_every_node():
    tree = _tree()
    files = set()
    for call in ast.walk(tree):
        if isinstance(call, ast.Call) and getattr(call.func, "attr", None) == "join":
            parts = [a.value for a in call.args if isinstance(a, ast.Constant)]
            if parts and parts[0] == "config":
                files.add(os.path.join(PKG, *parts))
    assert os.path.join(PKG, "config", "emotion.yaml") in files
    for f in files:
        assert os.path.isfile(f), f
    with open(os.path.join(PKG, "config", "emotion.yaml")) as f:
        params = yaml.safe_load(f)
    for n in _nodes(tree):
        assert n["name"] in params and "ros__parameters" in params[n["name"]], n["name"]


def test_every_yaml_parameter_is_declared_by_its_node():
    """A typo in config/emotion.yaml would be silently ignored by rclpy: catch it here."""
    with open(os.path.join(PKG, "config", "emotion.yaml")) as f:
        params = yaml.safe_load(f)
    modules = {"camera_node": "camera", "microphone_node": "microphone", "face_node": "face",
               "voice_node": "voice", "fusion_node": "fusion", "behaviour_node": "behaviour"}
    for node, mod in modules.items():
        with open(os.path.join(PKG, "emotion_ros", "nodes", mod + ".py")) as f:
            src = f.read()
        for key in params[node]["ros__parameters"]:
            assert re.search(rf'["\']{re.escape(key)}["\']', src), f"{node}: {key} is not declared in {mod}.py"

"""The launch file: read as source (it parses, its executables are console scripts of the package, the parameter
files it names exist and hold a section for every node it starts, every parameter in those sections is one the node
declares), and built with ``launch`` where the ROS tooling is installed (every argument described; boolean
arguments accept true/True/1 and false/False/0).  Running it: test_ros_launch.py."""
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
        if isinstance(call, ast.Call) and getattr(call.func, "id", None) in ("Node", "LifecycleNode"):
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


# ---------------------------------------------------------------------------------------------------------------
# Built with launch (STYLE.md: launch files tested by building them)
# ---------------------------------------------------------------------------------------------------------------

def _description():
    import pytest
    pytest.importorskip("launch_ros", reason="ROS tooling not installed (make setup installs ../shared/ros-tools)")
    from launch.launch_description_sources import get_launch_description_from_python_launch_file
    return get_launch_description_from_python_launch_file(LAUNCH)


def _context(**args):
    from launch import LaunchContext
    ctx = LaunchContext()
    for a in _description().get_launch_arguments():
        ctx.launch_configurations[a.name] = a.default_value[0].perform(ctx) if a.default_value else ""
    ctx.launch_configurations.update(args)
    return ctx


def test_every_launch_argument_has_a_description():
    args = _description().get_launch_arguments()
    assert {"params_file", "rules_file", "device", "camera", "video", "microphone", "audio", "loop", "record",
            "bag", "image_topic", "audio_topic", "audio_info_topic", "shm_transport"} <= {a.name for a in args}
    for a in args:
        assert a.description and a.description != "no description given", a.name


def _process(desc, name):
    from launch.actions import ExecuteProcess
    for e in desc.entities:
        if not isinstance(e, ExecuteProcess):
            continue
        label = getattr(e, "node_executable", None) or "".join(getattr(x, "text", "") for x in (e.name or []))
        if label == name:
            return e
    raise AssertionError(f"no {name} in the launch description")


def test_boolean_launch_arguments_accept_true_True_1_and_false_False_0():
    desc = _description()
    for arg, proc in (("record", "bag_record"), ("camera", "camera_node"), ("microphone", "microphone_node")):
        action = _process(desc, proc)
        for value, want in (("true", True), ("True", True), ("1", True), ("false", False), ("False", False),
                            ("0", False)):
            assert action.condition.evaluate(_context(**{arg: value})) is want, (arg, value)


def test_source_parameters_keep_their_types():
    """video:=0 stays the string the camera declares; loop:=1 is a boolean (launch_ros would otherwise hand the
    node an int for both and the node would refuse it)."""
    desc = _description()  # skips without launch_ros, before importing it
    from launch_ros.utilities import evaluate_parameters
    ctx = _context(video="0", loop="1", audio="")
    cam = evaluate_parameters(ctx, _process(desc, "camera_node")._Node__parameters)
    values = {k: v for d in cam if isinstance(d, dict) for k, v in d.items()}
    assert values["source"] == "0" and values["loop"] is True, values
    mic = evaluate_parameters(ctx, _process(desc, "microphone_node")._Node__parameters)
    values = {k: v for d in mic if isinstance(d, dict) for k, v in d.items()}
    assert values["file"] == "" and values["loop"] is True, values


def test_hri_argument_sets_the_face_and_fusion_nodes_hri_parameter():
    """hri:=true|True|1 turns the ROS4HRI output of face_node and fusion_node on (a boolean, overriding params_file);
    the other nodes do not get it."""
    _description()  # skips without launch_ros, before importing it
    from launch_ros.utilities import evaluate_parameters
    for value, want in (("true", True), ("True", True), ("1", True), ("false", False), ("False", False), ("0", False)):
        desc, ctx = _description(), _context(hri=value)  # a fresh description: a ParameterValue keeps its value
        for node in ("face_node", "fusion_node", "voice_node"):
            params = evaluate_parameters(ctx, _process(desc, node)._Node__parameters)
            values = {k: v for d in params if isinstance(d, dict) for k, v in d.items()}
            if node == "voice_node":
                assert "hri" not in values
            else:
                assert values["hri"] is want, (node, value, values)

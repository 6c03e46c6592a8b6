"""The split launch files robot.launch.py (camera, microphone, behaviour) and server.launch.py (face, voice, fusion):
read as source (their executables are the package's, together they start each node of emotion.launch.py once) and
built with ``launch`` (every argument described; transport:=udp selects the UDP-only Fast DDS profile, domain_id sets
ROS_DOMAIN_ID; the camera sends JPEG best effort and the face node reads it). ``ros2 launch`` of both on two network
namespaces: test_two_hosts.py."""
from __future__ import annotations

import ast
import os

import pytest

from emotion_ros.ros import compat
import yaml

PKG = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = {name: os.path.join(PKG, "launch", f"{name}.launch.py") for name in ("robot", "server", "emotion")}


def _executables(path):
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    out = []
    for call in ast.walk(tree):
        if isinstance(call, ast.Call) and getattr(call.func, "id", None) in ("Node", "LifecycleNode"):
            kw = {k.arg: k.value for k in call.keywords if isinstance(k.value, ast.Constant)}
            out.append(kw["executable"].value)
    return out


def test_robot_and_server_together_start_the_nodes_of_emotion_launch_once():
    robot, server = _executables(LAUNCH["robot"]), _executables(LAUNCH["server"])
    assert sorted(robot) == ["behaviour_node", "camera_node", "microphone_node"]
    assert sorted(server) == ["face_node", "fusion_node", "voice_node"]
    assert sorted(robot + server) == sorted(_executables(LAUNCH["emotion"]))
    with open(os.path.join(PKG, "config", "emotion.yaml")) as f:
        params = yaml.safe_load(f)
    assert all(n in params for n in robot + server)
    for name in ("fastdds_shm.xml", "fastdds_udp.xml"):
        assert os.path.isfile(os.path.join(PKG, "config", name))


def test_udp_profile_has_no_shared_memory_transport():
    import xml.etree.ElementTree as ET
    root = ET.parse(os.path.join(PKG, "config", "fastdds_udp.xml")).getroot()
    ns = {"d": "http://www.eprosima.com"}
    kinds = [t.text for t in root.iterfind(".//d:transport_descriptor/d:type", ns)]
    assert kinds == ["UDPv4"]
    assert root.find(".//d:participant/d:rtps/d:useBuiltinTransports", ns).text == "false"
    assert root.find(".//d:participant", ns).get("is_default_profile") == "true"


# ---------------------------------------------------------------------------------------------------------------
# Built with launch
# ---------------------------------------------------------------------------------------------------------------

def _description(name):
    pytest.importorskip("launch_ros", reason="ROS tooling not installed (make setup installs ../shared/ros-tools)")
    from launch.launch_description_sources import get_launch_description_from_python_launch_file
    return get_launch_description_from_python_launch_file(LAUNCH[name])


def _context(desc, **args):
    from launch import LaunchContext
    ctx = LaunchContext()
    for a in desc.get_launch_arguments():
        ctx.launch_configurations[a.name] = a.default_value[0].perform(ctx) if a.default_value else ""
    ctx.launch_configurations.update(args)
    return ctx


def _node(desc, executable):
    from launch_ros.actions import Node
    for e in desc.entities:
        if isinstance(e, Node) and e.node_executable == executable:
            return e
    raise AssertionError(f"no {executable} in the launch description")


def _params(desc, ctx, executable="camera_node"):
    from launch_ros.utilities import evaluate_parameters
    params = evaluate_parameters(ctx, _node(desc, executable)._Node__parameters)
    return {k: v for d in params if isinstance(d, dict) for k, v in d.items()}


def _environment(desc, ctx):
    """What the launch's SetEnvironmentVariable actions would set, in ``ctx``."""
    from launch.actions import SetEnvironmentVariable
    out = {}
    for e in desc.entities:
        if isinstance(e, SetEnvironmentVariable) and (e.condition is None or e.condition.evaluate(ctx)):
            name = "".join(s.perform(ctx) for s in e.name)
            out[name] = "".join(s.perform(ctx) for s in e.value)
    return out


@pytest.mark.parametrize("name", ["robot", "server"])
def test_every_argument_is_described_and_network_arguments_apply(name):
    desc = _description(name)
    args = {a.name: a for a in desc.get_launch_arguments()}
    assert {"params_file", "transport", "domain_id"} <= set(args)
    for a in args.values():
        assert a.description and a.description != "no description given", a.name
    env = _environment(desc, _context(desc))
    assert env["FASTDDS_DEFAULT_PROFILES_FILE"].endswith("fastdds_shm.xml") and "ROS_DOMAIN_ID" not in env
    env = _environment(desc, _context(desc, transport="udp", domain_id="42"))
    assert env["FASTDDS_DEFAULT_PROFILES_FILE"].endswith(os.path.join("config", "fastdds_udp.xml"))
    assert os.path.isfile(env["FASTDDS_DEFAULT_PROFILES_FILE"])
    if compat.ros_distro() == "jazzy":  # Fast DDS 2 reads only its old name
        assert env["FASTRTPS_DEFAULT_PROFILES_FILE"] == env["FASTDDS_DEFAULT_PROFILES_FILE"]
    else:  # Fast DDS 3 warns in every process that has the old name
        assert "FASTRTPS_DEFAULT_PROFILES_FILE" not in env
    assert env["ROS_DOMAIN_ID"] == "42"


def _built(name, **args):
    """A fresh description (launch_ros' ParameterValue keeps its first evaluation) and a context with ``args``."""
    desc = _description(name)
    return desc, _context(desc, **args)


def test_robot_camera_sends_jpeg_best_effort_and_typed_parameters():
    cam = _params(*_built("robot", video="0", loop="1", jpeg_quality="55", publish_raw="True"))
    assert cam["source"] == "0" and cam["loop"] is True and cam["jpeg_quality"] == 55
    assert cam["compressed"] is True and cam["reliable"] is False and cam["publish_raw"] is True
    cam = _params(*_built("robot"))
    assert cam["publish_raw"] is False and cam["jpeg_quality"] == 80
    for exe in ("camera_node", "microphone_node", "behaviour_node"):
        desc, ctx = _built("robot", camera="false", microphone="0", behaviour="False")
        assert _node(desc, exe).condition.evaluate(ctx) is False, exe
        desc, ctx = _built("robot")
        assert _node(desc, exe).condition.evaluate(ctx) is True, exe


def test_server_face_node_reads_compressed_by_default():
    assert _params(*_built("server"), "face_node")["image_transport"] == "compressed"
    face = _params(*_built("server", image_transport="raw", device="cpu"), "face_node")
    assert face["image_transport"] == "raw" and face["device"] == "cpu" and face["autostart"] is True
    for exe in ("voice_node", "fusion_node"):
        assert _params(*_built("server", device="cpu"), exe)["device"] == "cpu"


def test_emotion_launch_shm_transport_false_removes_every_profile_of_ours():
    """shm_transport:=false must win over a profile the shell set (env.sh) and over the one a node would set itself
    when the variable is unset (emotion_ros.env.ensure_fastdds_profile honours EMOTION_ROS_FASTDDS_PROFILE=0)."""
    desc = _description("emotion")  # skips without launch_ros, before importing launch
    from launch.actions import UnsetEnvironmentVariable
    on = _environment(desc, _context(desc, shm_transport="true"))
    assert on["FASTDDS_DEFAULT_PROFILES_FILE"].endswith("fastdds_shm.xml") and "EMOTION_ROS_FASTDDS_PROFILE" not in on
    ctx = _context(desc, shm_transport="false")
    off = _environment(desc, ctx)
    assert "FASTDDS_DEFAULT_PROFILES_FILE" not in off and off["EMOTION_ROS_FASTDDS_PROFILE"] == "0"
    unset = {"".join(s.perform(ctx) for s in e.name) for e in desc.entities
             if isinstance(e, UnsetEnvironmentVariable) and e.condition.evaluate(ctx)}
    assert unset == {"FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE"}

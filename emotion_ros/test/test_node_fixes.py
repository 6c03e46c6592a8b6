"""Node-side defects found by trying the product (issue 11, item 4), checked in-process on a real ROS graph:
camera files at their own frame rate, integer values for float parameters, parameter ranges (start-up and
``ros2 param set``), model-file and device errors in one line, tracking across a change of image size,
``last_error`` clearing once good input flows, per-input ages in diagnostics, ``--list-devices``."""
import io
import os
import random
import time

os.environ.setdefault("ROS_DOMAIN_ID", str(random.randint(1, 200)))
os.environ.setdefault("ROS_HOME", f"/tmp/emotion_ros-test-roshome-{os.getpid()}")

import cv2  # noqa: E402
import matplotlib.cbook as cbook  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from rcl_interfaces.srv import SetParameters  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from std_msgs.msg import String  # noqa: E402

from emotion_ros.core.face.model import ARCH, DEFAULT_INPUT, FaceCNN, FaceModel  # noqa: E402
from emotion_ros.core.face.pipeline import build_pipeline  # noqa: E402
from emotion_ros.core.modelio import ModelFileError, load_checkpoint, resolve_device, save_checkpoint  # noqa: E402
from emotion_ros.nodes import microphone  # noqa: E402
from emotion_ros.nodes.camera import LIVE_RATE_CAP, CameraNode  # noqa: E402
from emotion_ros.ros.convert import stamp_to_sec  # noqa: E402
from emotion_ros.ros.node_utils import (OK, WARN, Diagnostics, ParameterError, declare_parameters,  # noqa: E402
                                        parameter_help, reliable_qos)


_N = iter(range(10000))


def name(base):
    return f"{base}_{os.getpid()}_{next(_N)}"


def spin_until(ex, pred, timeout=20.0):
    end = time.monotonic() + timeout
    while not pred() and time.monotonic() < end:
        ex.spin_once(timeout_sec=0.02)
    return pred()


# -- camera: files at their own frame rate; rate 0 from the command line -------------------------------------------

def write_clip(path, n, fps):
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (64, 48))
    assert w.isOpened()
    for i in range(n):
        w.write(np.full((48, 64, 3), 10 * i, np.uint8))
    w.release()
    return str(path)


def play(ctx, source, **params):
    topic = "/" + name("clip")
    sub = Node(name("clip_sub"), context=ctx)
    got = []
    sub.create_subscription(Image, topic, got.append, reliable_qos(100))
    params.update(source=source, wait_for_subscribers_s=20.0, exit_on_end=False, qos_depth=50)
    cam = CameraNode(context=ctx, parameter_overrides=[Parameter(k, value=v) for k, v in params.items()],
                     cli_args=["--ros-args", "-r", f"image_raw:={topic}"])
    ex = SingleThreadedExecutor(context=ctx)
    ex.add_node(sub)
    ex.add_node(cam)
    try:
        assert spin_until(ex, cam.ended.is_set, 60)
        spin_until(ex, lambda: False, 0.5)
        return cam._rate(), cam.get_parameter("rate"), got
    finally:
        ex.shutdown()
        cam.destroy_node()
        sub.destroy_node()


def test_camera_plays_a_file_at_its_own_frame_rate_by_default(ctx, tmp_path):
    n, fps = 12, 10.0
    clip = write_clip(tmp_path / "ten_fps.avi", n, fps)
    rate, _, got = play(ctx, clip)  # rate left at its default (0)
    assert rate == pytest.approx(fps)
    assert len(got) == n
    span = stamp_to_sec(got[-1].header.stamp) - stamp_to_sec(got[0].header.stamp)
    # 11 frame periods of a 10 fps clip take 1.1 s of real time (at the old fixed 30 Hz: 0.37 s); load only slows
    assert span >= 0.9 * (n - 1) / fps, span


def test_camera_rate_given_as_an_integer_is_taken_as_a_float(ctx, tmp_path):
    clip = write_clip(tmp_path / "clip.avi", 3, 25.0)
    rate, param, got = play(ctx, clip, rate=0)  # -p rate:=0 / "rate: 0" in a YAML file: an integer
    assert param.value == 0.0 and rate == pytest.approx(25.0) and len(got) == 3
    rate, param, _ = play(ctx, clip, rate=50)
    assert param.type_ == Parameter.Type.DOUBLE and rate == 50.0
    assert LIVE_RATE_CAP == 30.0


# -- parameter ranges ------------------------------------------------------------------------------------------------

SPEC = {
    "rate": (0.0, "Hz", {"range": (0.0, 1000.0)}),
    "max_faces": (10, "faces", {"range": (1, 100)}),
    "name": ("x", "a string"),
}


@pytest.mark.parametrize("override, match", [
    (Parameter("max_faces", value=-3), r"'max_faces' of .*: -3 is refused \(allowed: 1 .. 100\)"),
    (Parameter("rate", value=-5.0), r"'rate' of .*: -5.0 is refused \(allowed: 0 .. 1000\)"),
    (Parameter("rate", value="fast"), r"'rate' of .*expected float"),
])
def test_out_of_range_values_are_refused_at_start_up(ctx, override, match):
    node = Node(name("ranges"), context=ctx, parameter_overrides=[override])
    try:
        with pytest.raises(ParameterError, match=match):
            declare_parameters(node, SPEC)
    finally:
        node.destroy_node()


def test_ranges_are_in_the_descriptor_and_ros2_param_set_is_refused(ctx):
    node = Node(name("ranges_set"), context=ctx)
    client_node = Node(name("ranges_client"), context=ctx)
    ex = SingleThreadedExecutor(context=ctx)
    ex.add_node(node)
    ex.add_node(client_node)
    try:
        p = declare_parameters(node, SPEC)
        assert (p.rate, p.max_faces) == (0.0, 10)
        d = node.describe_parameter("max_faces")
        assert (d.integer_range[0].from_value, d.integer_range[0].to_value) == (1, 100)
        assert node.describe_parameter("rate").floating_point_range[0].to_value == 1000.0
        cli = client_node.create_client(SetParameters, f"/{node.get_name()}/set_parameters")
        assert cli.wait_for_service(timeout_sec=20)

        def set_(param):  # what `ros2 param set` sends
            fut = cli.call_async(SetParameters.Request(parameters=[param.to_parameter_msg()]))
            assert spin_until(ex, fut.done, 20)
            return fut.result().results[0]

        r = set_(Parameter("max_faces", value=-3))
        assert not r.successful and "out of range" in r.reason
        assert not set_(Parameter("rate", value=-5.0)).successful
        assert set_(Parameter("rate", value=5)).successful  # `ros2 param set ... rate 5`: an integer
        assert node.get_parameter("rate").value == 5.0
        assert node.get_parameter("max_faces").value == 10
    finally:
        ex.shutdown()
        client_node.destroy_node()
        node.destroy_node()


def test_every_numeric_node_parameter_has_a_range_holding_its_default():
    from emotion_ros.nodes import behaviour, camera, face, fusion, voice
    missing = []
    for mod in (camera, microphone, face, voice, fusion, behaviour):
        for key, entry in mod.PARAMS.items():
            default = entry[0]
            if isinstance(default, bool) or not isinstance(default, (int, float)):
                continue
            rng = entry[2].get("range") if len(entry) == 3 else None
            if rng is None:
                missing.append(f"{mod.NODE_NAME}.{key}")
                continue
            assert (rng[0] is None or rng[0] <= default) and (rng[1] is None or default <= rng[1]), (mod.NODE_NAME, key)
    assert not missing, missing

def test_every_node_default_equals_the_yaml_default():
    """config/emotion.yaml is the documented default; `ros2 run` without a params file must behave the same."""
    import yaml
    from emotion_ros.nodes import behaviour, camera, face, fusion, voice
    cfg = yaml.safe_load(open(os.path.join(os.path.dirname(__file__), "..", "config", "emotion.yaml")))
    differ, undeclared = [], []
    for mod in (camera, microphone, face, voice, fusion, behaviour):
        section = cfg.get(mod.NODE_NAME, {}).get("ros__parameters", {})
        assert section, f"no {mod.NODE_NAME} section in config/emotion.yaml"
        for key, value in section.items():
            if key not in mod.PARAMS:
                undeclared.append(f"{mod.NODE_NAME}.{key}")
            elif mod.PARAMS[key][0] != value:
                differ.append(f"{mod.NODE_NAME}.{key}: node {mod.PARAMS[key][0]!r}, yaml {value!r}")
    assert not differ and not undeclared, (differ, undeclared)


def test_parameter_help_lists_type_default_range_and_description():
    text = parameter_help("x_node", SPEC, "x_node: does x.")
    assert text.startswith("x_node: does x.")
    assert "rate (float, default 0.0, range 0 .. 1000)" in text
    assert "max_faces (int, default 10, range 1 .. 100)" in text and '  name (str, default "x")' in text


# -- model files and devices -----------------------------------------------------------------------------------------

def face_ckpt(path):
    torch.manual_seed(0)
    save_checkpoint(str(path), kind="face", arch=ARCH, model=FaceCNN(widths=(8, 16), embed_dim=32),
                    input_spec=dict(DEFAULT_INPUT), config={"model": {"widths": [8, 16], "embed_dim": 32}})
    return str(path)


class _NotATensor:
    pass


@pytest.mark.parametrize("content, why", [
    (b"", "the file is empty"),
    (None, "corrupt, cut off, or not a PyTorch checkpoint"),  # a checkpoint cut in half
    (b"just some text, not a model" * 20, "corrupt, cut off, or not a PyTorch checkpoint"),
    ("objects", "holds Python objects besides tensors"),
])
def test_unreadable_model_files_give_one_line_naming_the_file(tmp_path, content, why):
    path = tmp_path / "face.pt"
    if content is None:
        data = open(face_ckpt(tmp_path / "good.pt"), "rb").read()
        path.write_bytes(data[: len(data) // 2])
    elif content == "objects":
        torch.save({"state_dict": {}, "thing": _NotATensor()}, str(path))
    else:
        path.write_bytes(content)
    with pytest.raises(ModelFileError) as err:
        load_checkpoint(str(path), "face")
    msg = str(err.value)
    assert str(path) in msg and why in msg and "\n" not in msg
    assert "weights_only" not in msg and not msg.endswith("cannot be read: ")


@pytest.mark.parametrize("device", ["tpu", "cuda:x", "cpu:1", "gpu"])
def test_unknown_device_is_named(device):
    with pytest.raises(ModelFileError, match=f"unknown device '{device}'"):
        resolve_device(device)
    assert resolve_device("cpu").type == "cpu" and resolve_device("CPU").type == "cpu"


def test_face_node_configure_says_why_an_unknown_device_fails(ctx, tmp_path):
    from rclpy.lifecycle import TransitionCallbackReturn
    from emotion_ros.nodes.face import FaceNode
    logs = []
    node = FaceNode(context=ctx, parameter_overrides=[Parameter("model_path", value=face_ckpt(tmp_path / "f.pt")),
                                                      Parameter("device", value="tpu")])
    node.get_logger().error = lambda msg, **kw: logs.append(msg)  # what the node logs, captured
    try:
        assert node.on_configure(None) == TransitionCallbackReturn.FAILURE
        assert any("unknown device 'tpu'" in m for m in logs), logs
    finally:
        node.destroy_node()


# -- face tracking across a change of image size --------------------------------------------------------------------

def test_a_smaller_frame_after_a_large_one_is_not_rejected(tmp_path):
    with cbook.get_sample_data("grace_hopper.jpg") as f:
        hopper = cv2.imread(f.name, cv2.IMREAD_COLOR)
    big = np.zeros((3000, 4000, 3), np.uint8)
    big[300:2700, 1500:3548] = cv2.resize(hopper, (2048, 2400))
    model = FaceModel(face_ckpt(tmp_path / "face.pt"), device="cpu")
    pl = build_pipeline(model, {}, background=True)  # the node's default: whole-frame passes in the background
    try:
        for i in range(4):
            faces = pl.process(big, i * 0.04)
        assert faces, "the face in the 4000x3000 frame"
        deadline = time.monotonic() + 20
        while not pl.background.idle() and time.monotonic() < deadline:
            time.sleep(0.05)  # its whole-frame pass (boxes of the big frame) has finished
        small = cv2.resize(hopper, (640, 480))
        faces = pl.process(small, 0.2)  # before the fix: InputError "face box ... lies outside the 640x480 image"
        assert all(f.box[0] < 640 and f.box[1] < 480 for f in faces)
        assert pl.process(small, 0.24) is not None
    finally:
        pl.close()


# -- diagnostics -----------------------------------------------------------------------------------------------------

class FakeClock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def values(st):
    return {kv.key: kv.value for kv in st.values}


def test_last_error_is_cleared_once_good_input_flows(ctx):
    node = Node(name("diag_err"), context=ctx)
    clock = FakeClock()
    d = Diagnostics(node, "x", stale_after_s=None, error_hold_s=5.0, period_s=0, clock=clock)
    try:
        d.tick_input()
        d.report_error("bad image: 0x0")
        st = d.status()
        assert values(st)["last_error"] == "bad image: 0x0" and st.level > OK
        clock.t += 10.0  # no input since: the error is still the last news
        assert values(d.status())["last_error"] == "bad image: 0x0"
        for _ in range(3):  # input put right: good frames for longer than error_hold_s
            clock.t += 0.1
            d.tick_input()
        st = d.status()
        v = values(st)
        assert v["last_error"] == "" and v["errors"] == "1" and float(v["seconds_since_error"]) >= 10.0
        assert st.level == OK
    finally:
        d.destroy()
        node.destroy_node()


def test_watched_input_reports_its_age_and_a_lost_publisher(ctx):
    node = Node(name("diag_watch"), context=ctx)
    pub_node = Node(name("diag_watch_pub"), context=ctx)
    topic = "/" + name("watched")
    pub = pub_node.create_publisher(String, topic, 10)
    clock = FakeClock()
    d = Diagnostics(node, "x", stale_after_s=None, period_s=0, clock=clock)
    d.watch_input("face", stale_after_s=2.0, topic=topic)
    d.watch_input("voice", stale_after_s=None)
    try:
        assert values(d.status())["face_input_age_s"] == "inf"
        deadline = time.monotonic() + 10
        while node.count_publishers(topic) == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        d.tick_input("face")
        clock.t += 0.5
        st = d.status()
        assert st.level == OK and values(st)["face_input_age_s"] == "0.50" and values(st)["voice_input_age_s"] == "inf"
        clock.t += 3.0
        st = d.status()
        assert st.level == WARN and "face input stopped 3.5 s ago" in st.message
        pub_node.destroy_publisher(pub)
        deadline = time.monotonic() + 10
        while node.count_publishers(topic) > 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert f"no publisher on {topic}" in d.status().message
    finally:
        d.destroy()
        node.destroy_node()
        pub_node.destroy_node()


# -- microphone --list-devices ---------------------------------------------------------------------------------------

def test_list_devices_says_clearly_when_there_is_none():
    out = io.StringIO()
    assert microphone.list_devices(query=lambda: [], out=out) == 0
    assert out.getvalue().startswith("no input devices")
    out = io.StringIO()
    devs = [{"name": "HDMI out", "max_input_channels": 0, "max_output_channels": 2},
            {"name": "USB mic", "max_input_channels": 1, "default_samplerate": 48000.0}]
    assert microphone.list_devices(query=lambda: devs, out=out) == 0
    assert "1: USB mic (1 ch, default 48000 Hz)" in out.getvalue() and "HDMI" not in out.getvalue()

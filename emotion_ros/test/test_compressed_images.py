"""Compressed images (image_transport's ``image_raw/compressed``): JPEG encode/decode in ros/convert.py, and on a real
DDS graph camera_node (a generated face video, JPEG only) -> face_node (``image_transport:=compressed``) ->
``emotion/faces``, under a remapped image topic; corrupt JPEGs are skipped with a log line and the node goes on."""
from __future__ import annotations

import time

import cv2
import matplotlib.cbook as cbook
import numpy as np
import pytest

from robust_helpers import Graph, NodeProcess, small_checkpoints  # noqa: E402 (sets ROS_DOMAIN_ID / ROS_HOME)

from emotion_msgs.msg import FaceEmotionArray  # noqa: E402
from sensor_msgs.msg import CompressedImage  # noqa: E402

from emotion_ros.core.errors import InputError  # noqa: E402
from emotion_ros.ros.convert import compressed_to_numpy, numpy_to_compressed, sec_to_stamp  # noqa: E402
from emotion_ros.ros.node_utils import reliable_qos, sensor_qos  # noqa: E402

TOPIC = "/robot/camera/image"   # camera and face node both remap image_raw here


@pytest.fixture(scope="module")
def hopper():
    img = cv2.imread(str(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)))
    return cv2.resize(img, (640, 480), interpolation=cv2.INTER_AREA)


# ------------------------------------------------------------------------------------------------ convert ---

def test_jpeg_round_trip_keeps_size_stamp_and_pixels(hopper):
    small = None
    for q in (30, 80, 95):
        msg = numpy_to_compressed(hopper, q, stamp=12.25, frame_id="cam")
        assert msg.format == "bgr8; jpeg compressed bgr8"
        assert (msg.header.stamp.sec, msg.header.stamp.nanosec, msg.header.frame_id) == (12, 250_000_000, "cam")
        assert bytes(msg.data[:2]) == b"\xff\xd8"
        out = compressed_to_numpy(msg)
        assert out.shape == (480, 640, 3) and out.dtype == np.uint8
        assert np.abs(out.astype(int) - hopper).mean() < 6.0
        assert small is None or len(msg.data) > small  # higher quality: more bytes
        small = len(msg.data)
    assert small < 640 * 480 * 3 / 5  # even quality 95 is far smaller than raw
    grey = compressed_to_numpy(msg, "mono8")
    assert grey.shape == (480, 640)
    rgb = compressed_to_numpy(msg, "rgb8")
    assert np.array_equal(rgb, out[..., ::-1])
    mono = numpy_to_compressed(cv2.cvtColor(hopper, cv2.COLOR_BGR2GRAY), 80)
    assert mono.format == "mono8; jpeg compressed mono8" and compressed_to_numpy(mono, "bgr8").shape == (480, 640, 3)
    png = CompressedImage(format="png")
    png.data = cv2.imencode(".png", hopper[:50, :60])[1].tobytes()
    assert np.array_equal(compressed_to_numpy(png), hopper[:50, :60])


def test_bad_compressed_images_raise_input_error_naming_the_problem(hopper):
    good = bytes(numpy_to_compressed(hopper, 80).data)
    cases = {b"": "no data", b"not an image at all" * 20: "does not decode", good[:300]: "does not decode"}
    for data, words in cases.items():
        msg = CompressedImage(format="jpeg")
        msg.data = data
        with pytest.raises(InputError, match=words):
            compressed_to_numpy(msg)
    # a header announcing 60000x60000 pixels is refused before decoding
    sof = good.index(b"\xff\xc0")
    huge = bytearray(good)
    huge[sof + 5:sof + 9] = (60000).to_bytes(2, "big") * 2
    msg = CompressedImage(format="jpeg")
    msg.data = bytes(huge)
    with pytest.raises(InputError, match="too large: 60000x60000"):
        compressed_to_numpy(msg)
    with pytest.raises(InputError, match="quality"):
        numpy_to_compressed(hopper, 0)
    with pytest.raises(InputError, match="uint8"):
        numpy_to_compressed(hopper.astype(np.float32))


def test_camera_refuses_to_publish_nothing(ctx):
    from rclpy.parameter import Parameter
    from emotion_ros.nodes.camera import CameraNode
    from emotion_ros.ros.node_utils import ParameterError
    with pytest.raises(ParameterError, match="publish_raw and compressed are both false"):
        CameraNode(context=ctx, parameter_overrides=[Parameter("publish_raw", value=False),
                                                     Parameter("compressed", value=False)])


# ---------------------------------------------------------------------------------------------- DDS graph ---

@pytest.fixture(scope="module")
def graph(tmp_path_factory):
    """face_node (compressed transport, small model) + camera_node (JPEG only, a face video) + the test's node."""
    from emotion_ros.tools.demo import make_face_video
    tmp = tmp_path_factory.mktemp("compressed")
    ckpt = small_checkpoints(str(tmp), kinds=("face",))["face"]
    video = make_face_video(str(tmp / "face.avi"), seconds=2.0, fps=10.0)
    remap = ["-r", f"image_raw:={TOPIC}"]
    g = Graph("compressed_tester")
    faces = g.subscribe("emotion/faces", FaceEmotionArray, reliable_qos(200))
    jpegs = g.subscribe(TOPIC + "/compressed", CompressedImage, sensor_qos(5))
    g.subscribe_diag()
    face = NodeProcess("face", str(tmp), {"model_path": ckpt, "device": "cpu", "image_transport": "compressed",
                                          "full_detect_every": 1}, extra_args=remap)
    cam = None
    try:
        g.wait_node_up(face, subscribes=[TOPIC + "/compressed"], publishes=["emotion/faces"], timeout=90)
        cam = NodeProcess("camera", str(tmp), {"source": video, "loop": True, "publish_raw": False,
                                               "jpeg_quality": 60, "frame_id": "robot_cam"}, extra_args=remap)
        g.wait_node_up(cam, publishes=[TOPIC + "/compressed"], timeout=60)
        yield g, face, cam, faces, jpegs
    finally:
        if cam is not None:
            cam.stop()
        face.stop()
        g.close()


def _diag(g, node):
    sts = g.diag_statuses(node)
    return {kv.key: kv.value for kv in sts[-1][1].values} if sts else {}


def test_camera_jpeg_reaches_face_node_through_the_remapped_compressed_topic(graph):
    g, face, cam, faces, jpegs = graph
    assert g.spin_until(lambda: len(faces) >= 5 and len(jpegs) >= 5, 60), \
        f"faces {len(faces)}, jpegs {len(jpegs)}\n{face.output()[-3000:]}\n{cam.output()[-3000:]}"
    assert g.node.count_publishers(TOPIC) == 0  # publish_raw false: no raw image topic
    j = jpegs[-1][1]
    assert j.format == "bgr8; jpeg compressed bgr8" and j.header.frame_id == "robot_cam"
    assert 5_000 < len(j.data) < 200_000
    jpeg_stamps = {(m.header.stamp.sec, m.header.stamp.nanosec) for _, m in jpegs}
    with_faces = [m for _, m in faces if m.faces]
    assert with_faces, "face_node found no face in the decoded JPEGs"
    m = with_faces[-1]
    assert (m.image_width, m.image_height) == (640, 480) and m.header.frame_id == "robot_cam"
    # results carry the camera's stamps (the JPEG's header)
    assert any((r.header.stamp.sec, r.header.stamp.nanosec) in jpeg_stamps for _, r in faces)
    f = m.faces[0]
    assert 120 < f.width < 400 and len(f.probabilities) == 7
    assert g.spin_until(lambda: "compressed_kb_mean" in _diag(g, "camera_node"), 10)
    assert 5 < float(_diag(g, "camera_node")["compressed_kb_mean"]) < 200
    assert "robot/camera/image/compressed (JPEG 60" in cam.output()
    assert face.alive() and cam.alive()


def test_corrupt_jpegs_are_skipped_with_a_log_line_and_the_node_goes_on(graph, hopper):
    g, face, cam, faces, _ = graph
    cam.stop()  # only this test's images from now on
    g.spin_for(0.5)
    pub = g.publisher(TOPIC + "/compressed", CompressedImage, reliable_qos(5))
    assert g.spin_until(lambda: pub.get_subscription_count() > 0, 20)

    def bad_frames():
        return int(_diag(g, "face_node").get("bad_frames", "0"))
    good = numpy_to_compressed(hopper, 80, frame_id="test")
    for i, data in enumerate((b"\xff\xd8garbage" * 50, bytes(good.data)[:400], b"")):
        msg = CompressedImage(format="bgr8; jpeg compressed bgr8")
        msg.header.stamp = sec_to_stamp(3000 + i)
        msg.data = data
        before = bad_frames()
        end = time.monotonic() + 20
        while bad_frames() <= before and time.monotonic() < end:
            pub.publish(msg)
            g.spin_until(lambda: bad_frames() > before, 0.5)
        assert bad_frames() > before, f"corrupt JPEG {i} not counted\n{face.output()[-2000:]}"
    assert g.wait_log("face_node", ["skipping image", "compressed"], timeout=10), face.output()[-3000:]
    good.header.stamp = sec_to_stamp(3100)

    def answered():
        return any(m.header.stamp.sec == 3100 for _, m in faces)
    end = time.monotonic() + 20
    while not answered() and time.monotonic() < end:
        pub.publish(good)
        g.spin_until(answered, 0.5)
    assert answered(), face.output()[-3000:]
    assert next(m for _, m in faces if m.header.stamp.sec == 3100).faces
    assert face.alive()
    # rate-limited: three bad frames published repeatedly gave few lines
    assert face.output().count("skipping image") <= 4

"""face_node against bad and unusual images, on a real graph (the node in its own process).

Every image encoding ROS defines (sensor_msgs/image_encodings.hpp) is sent showing a real face: the ones the node
supports must give a FaceEmotionArray with the face found (so the conversion is right, not just accepted); the
others a log line on /rosout naming the encoding. Broken frames (step and size that disagree, empty and truncated
data, absurd sizes) get a log line naming the problem, and the node answers the next valid frame.
"""
from __future__ import annotations

import time

import cv2
import numpy as np
import pytest
from builtin_interfaces.msg import Time
from emotion_msgs.msg import FaceEmotionArray
from sensor_msgs.msg import Image

from robust_helpers import Graph, NodeProcess, face_scene, small_checkpoints
from emotion_ros.ros.convert import IMAGE_ENCODINGS
from emotion_ros.ros.node_utils import reliable_qos

# sensor_msgs/image_encodings.hpp
ROS_ENCODINGS = (
    ["rgb8", "rgba8", "rgb16", "rgba16", "bgr8", "bgra8", "bgr16", "bgra16", "mono8", "mono16"]
    + [f"{bits}{kind}C{n}" for bits, kind in (("8", "U"), ("8", "S"), ("16", "U"), ("16", "S"), ("32", "S"),
                                              ("32", "F"), ("64", "F")) for n in (1, 2, 3, 4)]
    + [f"bayer_{p}{b}" for b in (8, 16) for p in ("rggb", "bggr", "gbrg", "grbg")]
    + ["yuv422", "yuv422_yuy2", "uyvy", "yuyv", "nv21", "nv24"]
)
SUPPORTED = [e for e in ROS_ENCODINGS if e.lower() in IMAGE_ENCODINGS]
UNSUPPORTED = [e for e in ROS_ENCODINGS if e.lower() not in IMAGE_ENCODINGS]

W, H = 320, 240


def _bayer(bgr: np.ndarray, pattern: str) -> np.ndarray:
    """Mosaic of ``bgr`` in the ROS pattern (letters name the 2x2 cell row by row: rggb = R G / G B)."""
    idx = {"r": 2, "g": 1, "b": 0}
    out = np.empty(bgr.shape[:2], bgr.dtype)
    for k, ch in enumerate(pattern):
        dy, dx = divmod(k, 2)
        out[dy::2, dx::2] = bgr[dy::2, dx::2, idx[ch]]
    return out


def encode(bgr: np.ndarray, encoding: str, sec: int) -> Image:
    """An Image message of ``bgr`` (uint8) in ``encoding`` (right byte count even for encodings the node refuses)."""
    e = encoding.lower()
    h, w = bgr.shape[:2]
    gray = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    rgb = bgr[:, :, ::-1]
    alpha = np.full((h, w, 1), 255, np.uint8)
    px = {
        "rgb8": rgb, "bgr8": bgr, "rgba8": np.dstack([rgb, alpha]), "bgra8": np.dstack([bgr, alpha]),
        "mono8": gray, "8uc1": gray, "8uc3": bgr, "8uc4": np.dstack([bgr, alpha]),
    }
    if e in px:
        data = np.ascontiguousarray(px[e])
    elif e in ("rgb16", "bgr16", "rgba16", "bgra16", "mono16", "16uc1", "16uc3", "16uc4"):
        base = {"rgb16": px["rgb8"], "bgr16": bgr, "rgba16": px["rgba8"], "bgra16": px["bgra8"], "mono16": gray,
                "16uc1": gray, "16uc3": bgr, "16uc4": px["bgra8"]}[e]
        data = base.astype(np.uint16) * 257
    elif e in ("32fc1", "32fc3", "32fc4", "64fc1"):
        base = {"32fc1": gray, "32fc3": bgr, "32fc4": px["bgra8"], "64fc1": gray}[e]
        data = base.astype(np.float64 if e == "64fc1" else np.float32) / 255.0
    elif e.startswith("bayer_"):
        mosaic = _bayer(bgr, e[6:10])
        data = mosaic if e.endswith("8") else mosaic.astype(np.uint16) * 257
    elif e in ("yuv422", "uyvy", "yuyv", "yuv422_yuy2"):
        yuv = cv2.cvtColor(bgr, cv2.COLOR_BGR2YUV)
        y = yuv[:, :, 0]
        u = ((yuv[:, 0::2, 1].astype(np.uint16) + yuv[:, 1::2, 1]) // 2).astype(np.uint8)
        v = ((yuv[:, 0::2, 2].astype(np.uint16) + yuv[:, 1::2, 2]) // 2).astype(np.uint8)
        if e in ("yuv422", "uyvy"):
            data = np.stack([u, y[:, 0::2], v, y[:, 1::2]], axis=2).reshape(h, w * 2)
        else:
            data = np.stack([y[:, 0::2], u, y[:, 1::2], v], axis=2).reshape(h, w * 2)
    elif e == "nv21":
        i420 = cv2.cvtColor(bgr, cv2.COLOR_BGR2YUV_I420)  # Y (h rows), U (h/4 rows), V (h/4 rows)
        y = i420[:h]
        u = i420[h:h + h // 4].reshape(h // 2, w // 2)
        v = i420[h + h // 4:].reshape(h // 2, w // 2)
        data = np.vstack([y, np.stack([v, u], axis=2).reshape(h // 2, w)])
    elif e == "nv24":
        yuv = cv2.cvtColor(bgr, cv2.COLOR_BGR2YUV)  # Y plane, then interleaved U/V at full resolution
        data = np.concatenate([yuv[:, :, 0].ravel(), yuv[:, :, 1:].ravel()]).reshape(3 * h, w)
    else:  # NxC types the node does not take: bytes of the right size
        bits, kind, n = int(e.split("c")[0][:-1]), e.split("c")[0][-1], int(e.split("c")[1])
        dt = {("8", "s"): np.int8, ("16", "s"): np.int16, ("32", "s"): np.int32, ("8", "u"): np.uint8,
              ("16", "u"): np.uint16, ("32", "f"): np.float32, ("64", "f"): np.float64}[(str(bits), kind)]
        base = np.repeat(gray[:, :, None], n, axis=2)
        data = (base.astype(np.float64) / 255.0).astype(dt) if kind == "f" else (base // 2).astype(dt)
    data = np.ascontiguousarray(data)
    msg = Image()
    msg.header.stamp = Time(sec=sec, nanosec=0)
    msg.header.frame_id = "camera"
    msg.height, msg.width = h, w
    msg.encoding = encoding
    msg.is_bigendian = 0
    msg.step = data.nbytes // data.shape[0]
    msg.data = data.tobytes()
    return msg


@pytest.fixture(scope="module")
def graph():
    g = Graph("robust_image_tester")
    yield g
    g.close()


@pytest.fixture(scope="module")
def face_node(graph, tmp_path_factory):
    d = tmp_path_factory.mktemp("robust_image")
    models = small_checkpoints(str(d), kinds=("face",))
    proc = NodeProcess("face", str(d), {"model_path": models["face"], "device": "cpu", "full_detect_every": 1,
                                        "debug_image": False})
    graph.subscribe("emotion/faces", FaceEmotionArray, reliable_qos(100))
    graph.publisher("image_raw", Image, reliable_qos(5))
    try:
        graph.wait_node_up(proc, subscribes=["image_raw"], publishes=["emotion/faces"])
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def scene():
    return face_scene(1, W, H)


def result_for(graph, sec, nanosec=0):
    for m in graph.messages("emotion/faces"):
        if m.header.stamp.sec == sec and m.header.stamp.nanosec == nanosec:
            return m
    return None


def send_until_answered(graph, msg, timeout=15.0, period=0.5):
    """Publish (again every ``period``: the node's input is best effort, depth 1) until the result comes."""
    pub = graph.publisher("image_raw", Image, reliable_qos(5))
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        pub.publish(msg)
        if graph.spin_until(lambda: result_for(graph, msg.header.stamp.sec, msg.header.stamp.nanosec) is not None,
                            period):
            break
    return result_for(graph, msg.header.stamp.sec, msg.header.stamp.nanosec)


def assert_alive_and_answering(graph, proc, scene, sec):
    assert proc.alive(), proc.output()[-3000:]
    res = send_until_answered(graph, encode(scene, "bgr8", sec))
    assert res is not None, f"no result for a valid frame after bad input:\n{proc.output()[-3000:]}"
    assert len(res.faces) == 1


@pytest.mark.parametrize("encoding", SUPPORTED)
def test_supported_encoding_gives_the_face(graph, face_node, scene, encoding):
    sec = 1000 + ROS_ENCODINGS.index(encoding)
    msg = encode(scene, encoding, sec)
    res = send_until_answered(graph, msg)
    assert res is not None, f"{encoding}: no FaceEmotionArray\n{face_node.output()[-2000:]}"
    assert (res.image_width, res.image_height) == (W, H)
    assert len(res.faces) == 1, f"{encoding}: {len(res.faces)} faces found (conversion wrong?)"
    f = res.faces[0]
    assert abs((f.x + f.width / 2) - W / 2) < 25 and abs((f.y + f.height / 2) - H / 2) < 35, (f.x, f.y, f.width)


def test_big_endian_16_bit(graph, face_node, scene):
    msg = encode(scene, "mono16", 1900)
    arr = np.frombuffer(bytes(msg.data), "<u2").astype(">u2")
    msg.data = arr.tobytes()
    msg.is_bigendian = 1
    res = send_until_answered(graph, msg)
    assert res is not None and len(res.faces) == 1


def test_row_padding_is_respected(graph, face_node, scene):
    msg = encode(scene, "bgr8", 1901)
    rows = np.frombuffer(bytes(msg.data), np.uint8).reshape(H, W * 3)
    padded = np.zeros((H, W * 3 + 64), np.uint8)
    padded[:, :W * 3] = rows
    padded[:, W * 3:] = 255  # garbage in the padding must not show up
    msg.data = padded.tobytes()
    msg.step = W * 3 + 64
    res = send_until_answered(graph, msg)
    assert res is not None and len(res.faces) == 1


def _named(graph, enc):
    return any(graph.logs("face_node", contains=[q]) for q in (f"'{enc}'", f" {enc} ", f'"{enc}"'))


def test_unsupported_encodings_are_named_in_the_log(graph, face_node, scene):
    pub = graph.publisher("image_raw", Image, reliable_qos(5))
    missing = []
    for k, enc in enumerate(UNSUPPORTED):
        # the node keeps only the newest frame (a sensor stream): send until this one was looked at
        msg = encode(scene, enc, 3000 + k)
        end = time.monotonic() + 6.0
        while not _named(graph, enc) and time.monotonic() < end:
            pub.publish(msg)
            graph.spin_until(lambda: _named(graph, enc), 0.3)
        if not _named(graph, enc):
            missing.append(enc)
    assert not missing, (f"no /rosout line names these encodings: {missing}\nface_node said: "
                         f"{graph.logs('face_node')[-5:]}")
    for k in range(len(UNSUPPORTED)):
        assert result_for(graph, 3000 + k) is None
    assert_alive_and_answering(graph, face_node, scene, 3999)


def _broken_frames(scene):
    good = encode(scene, "bgr8", 0)
    data = bytes(good.data)

    def variant(sec, **kw):
        m = encode(scene, "bgr8", sec)
        for k, v in kw.items():
            setattr(m, k, v)
        return m
    return {
        "step_too_small": (variant(4000, step=W * 3 - 3), ["step"]),
        "step_too_large_for_data": (variant(4001, step=W * 3 + 16), ["step"]),
        "truncated": (variant(4002, data=data[: len(data) // 2]), ["truncated"]),
        "too_long": (variant(4003, data=data + bytes(W * 3)), ["too long"]),
        "empty_data": (variant(4004, data=b""), ["no data"]),
        "zero_size": (variant(4005, width=0, height=0, step=0, data=b""), ["empty"]),
        "huge_claimed": (variant(4006, width=100000, height=100000, step=300000), ["too large"]),
        "height_mismatch": (variant(4007, height=H + 10), ["truncated"]),
    }


@pytest.mark.parametrize("case", list(_broken_frames(np.zeros((H, W, 3), np.uint8))))
def test_broken_frame_is_logged_and_the_node_goes_on(graph, face_node, scene, case):
    msg, words = _broken_frames(scene)[case]
    pub = graph.publisher("image_raw", Image, reliable_qos(5))
    # the log is rate-limited per problem; a problem logged by an earlier case may be suppressed for 5 s
    ok = False
    end = time.monotonic() + 12.0
    while time.monotonic() < end and not ok:
        pub.publish(msg)
        ok = graph.wait_log("face_node", words, timeout=0.5)
    assert ok, f"{case}: no /rosout line containing {words}; face_node said {graph.logs('face_node')[-5:]}"
    assert result_for(graph, msg.header.stamp.sec) is None
    assert_alive_and_answering(graph, face_node, scene, 4100 + list(_broken_frames(scene)).index(case))


def test_large_frame_is_processed(graph, face_node):
    big = face_scene(1, 1920, 1080)
    msg = encode(big, "bgr8", 4200)
    res = send_until_answered(graph, msg, timeout=30.0, period=2.0)
    assert res is not None, face_node.output()[-2000:]
    assert (res.image_width, res.image_height) == (1920, 1080) and len(res.faces) == 1

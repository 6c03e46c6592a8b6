"""emotion-view: the EmotionState stream in a terminal (lines, JSON, table) and the face debug images saved to a
video file, against a publisher the test drives over real DDS."""

import json
import os
import random
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest

from emotion_ros.tools.view import VideoSink, ViewError, bar, format_line, format_table

PKG_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LABELS = ["neutral", "happy", "sad", "angry", "surprised", "disgusted", "scared"]


def _state(**kw):
    s = {"stamp": 100.0, "person": "face_1", "primary": True, "emotion": "happy", "confidence": 0.7,
         "valence": 0.5, "arousal": -0.25, "face_weight": 0.8, "voice_weight": 0.2,
         "probabilities": dict(zip(LABELS, [0.1, 0.7, 0.05, 0.05, 0.04, 0.03, 0.03]))}
    s.update(kw)
    return s


def test_formatting():
    assert bar(0.5, 10) == "\u2588" * 5 + "\u2591" * 5
    assert bar(1.7, 4, ascii_only=True) == "####" and bar(float("nan"), 3, True) == "..."
    line = format_line(_state(), ascii_only=True, width=10)
    assert line.startswith("100.00 face_1 happy 0.70 valence +0.50 arousal -0.25 face 0.80 voice 0.20 |")
    assert "hap #######... 0.70" in line and "neu #......... 0.10" in line
    table = format_table({"face_1": _state(), "": _state(person="", primary=False, emotion="sad")}, "HEAD", 101.5,
                         ascii_only=True, width=10)
    lines = table.splitlines()
    assert lines[0] == "HEAD"
    assert lines[2].startswith("face_1 (primary): HAPPY 0.70") and "1.5 s ago" in lines[2]
    assert " >happy      #######... 0.70" in lines
    assert any(x.startswith("-: SAD") for x in lines)  # voice alone: no person id


def _read_video(path):
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        frames.append(f)
    fps = cap.get(cv2.CAP_PROP_FPS)
    cap.release()
    return frames, fps


def _colour(i):
    return [(0, 0, 255), (0, 255, 0), (255, 0, 0), (0, 255, 255), (255, 0, 255), (255, 255, 0)][i % 6]


def _nearest(frame, colours):
    mean = frame.reshape(-1, 3).mean(0)
    return int(np.argmin([np.abs(mean - np.array(c)).sum() for c in colours]))


def test_video_sink_real_time(tmp_path):
    """Frames held by their stamps at a constant 10 fps; too-close frames dropped; a long gap not filled."""
    colours = [_colour(i) for i in range(6)]
    sink = VideoSink(str(tmp_path / "v.avi"), fps=10.0, max_gap_s=2.0)
    # stamps: 0 (slot 0), 0.3 (slots 1-2 hold colour 0, slot 3), 0.32 (same slot: dropped), 0.5 (slot 4 holds 1,
    # slot 5), then 10.0: a 9.5 s gap, restarted (slot 6), then 10.1 (slot 7)
    for k, t in enumerate([0.0, 0.3, 0.32, 0.5, 10.0, 10.1]):
        sink.add(np.full((48, 64, 3), colours[k], np.uint8), 1000.0 + t)
    info = sink.close()
    assert info["frames_received"] == 6 and info["frames_written"] == 8 and info["size"] == [64, 48]
    frames, fps = _read_video(tmp_path / "v.avi")
    assert fps == pytest.approx(10.0) and len(frames) == 8
    assert [_nearest(f, colours) for f in frames] == [0, 0, 0, 1, 1, 3, 4, 5]
    with pytest.raises(ViewError, match="unknown video container"):
        VideoSink(str(tmp_path / "v.gif"), fps=10.0)
    with pytest.raises(ViewError, match="does not exist"):
        VideoSink(str(tmp_path / "no" / "v.avi"), fps=10.0)


def _env(tmp_path):
    env = dict(os.environ, ROS_DOMAIN_ID=str(random.randint(1, 200)), ROS_HOME=str(tmp_path / "roshome"),
               PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = PKG_ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return env


def test_view_over_dds(tmp_path):
    """Two viewers (lines + debug video on emotion/state; JSON on emotion/states) against a publisher driven here."""
    import rclpy
    from sensor_msgs.msg import Image

    from emotion_msgs.msg import EmotionState
    from emotion_ros.ros.convert import numpy_to_image, sec_to_stamp
    from emotion_ros.ros.node_utils import reliable_qos

    env = _env(tmp_path)
    video = tmp_path / "debug.mp4"
    py = sys.executable
    viewers = {
        "lines": subprocess.Popen([py, "-m", "emotion_ros.tools.view", "--count", "5", "--save-debug", str(video),
                                   "--video-fps", "10", "--duration", "120"], env=env, cwd=PKG_ROOT,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True),
        "json": subprocess.Popen([py, "-m", "emotion_ros.tools.view", "--all", "--format", "json", "--count", "4",
                                  "--duration", "120"], env=env, cwd=PKG_ROOT,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True),
    }
    os.environ["ROS_DOMAIN_ID"] = env["ROS_DOMAIN_ID"]
    ctx = rclpy.Context()
    rclpy.init(context=ctx, domain_id=int(env["ROS_DOMAIN_ID"]))
    node = rclpy.create_node("view_test_publisher", context=ctx)
    try:
        pub_state = node.create_publisher(EmotionState, "emotion/state", reliable_qos(10))
        pub_states = node.create_publisher(EmotionState, "emotion/states", reliable_qos(10))
        pub_debug = node.create_publisher(Image, "emotion/face_debug", reliable_qos(1))
        deadline = time.time() + 60
        while time.time() < deadline and not (pub_state.get_subscription_count() and
                                              pub_states.get_subscription_count() and
                                              pub_debug.get_subscription_count()):
            assert all(p.poll() is None for p in viewers.values()), {k: p.communicate() for k, p in viewers.items()}
            time.sleep(0.05)
        assert pub_state.get_subscription_count() and pub_debug.get_subscription_count()
        time.sleep(0.5)  # discovery settles both ways
        t0 = 1_000_000.0
        for i in range(6):  # 6 debug frames, 0.1 s apart by stamp
            pub_debug.publish(numpy_to_image(np.full((60, 80, 3), _colour(i), np.uint8), "bgr8",
                                             stamp=t0 + 0.1 * i))
            time.sleep(0.1)
        time.sleep(1.0)  # the viewer stops at its 5th state: let it take the images first

        def state(i, person, primary):
            m = EmotionState()
            m.header.stamp = sec_to_stamp(t0 + i)
            m.person_id, m.primary = person, primary
            probs = np.full(7, 0.05, np.float32)
            probs[i % 7] = 0.7
            m.labels, m.probabilities = list(LABELS), probs.tolist()
            m.emotion, m.confidence = LABELS[i % 7], 0.7
            m.valence, m.arousal, m.face_weight, m.voice_weight = 0.25, -0.5, 0.75, 0.25
            return m

        for i in range(5):
            pub_state.publish(state(i, "face_1", True))
            pub_states.publish(state(i, "face_1", True))
            if i < 2:
                pub_states.publish(state(i, "face_2", False))
            time.sleep(0.1)  # fusion's pace (10 Hz), not a burst
        outs = {k: p.communicate(timeout=60) for k, p in viewers.items()}
    finally:
        for p in viewers.values():
            if p.poll() is None:
                p.kill()
        node.destroy_node()
        rclpy.shutdown(context=ctx)
    for k, p in viewers.items():
        assert p.returncode == 0, outs[k]

    # lines: one per state, then the JSON summary
    so, se = outs["lines"]
    lines = so.strip().splitlines()
    assert len(lines) == 6, so
    for i, line in enumerate(lines[:5]):
        assert line.startswith(f"{t0 + i:.2f} face_1 {LABELS[i]} 0.70 valence +0.25 arousal -0.50 "
                               "face 0.75 voice 0.25 |"), line
        assert f"{LABELS[i][:3]} " in line and "\x1b[" not in line  # not a terminal: no escape codes
    summary = json.loads(lines[-1])
    assert summary["states"] == 5 and summary["persons"] == {"face_1": 5}
    assert summary["emotions"] == {lab: 1 for lab in LABELS[:5]}
    assert "listening to /emotion/state" in se and "Traceback" not in se
    v = summary["video"]
    assert v["path"] == str(video) and v["size"] == [80, 60] and v["fps"] == 10.0
    assert v["frames_received"] >= 4  # best effort on one machine: rarely one lost
    frames, fps = _read_video(video)
    assert len(frames) == v["frames_written"] >= v["frames_received"] and fps == pytest.approx(10.0)
    colours = [_colour(i) for i in range(6)]
    seen = [_nearest(f, colours) for f in frames]
    assert seen == sorted(seen) and seen[0] == 0 and seen[-1] >= 3  # in order, held by stamps

    # json --all: every person's state as one object
    so, se = outs["json"]
    rows = [json.loads(x) for x in so.strip().splitlines()]
    states, summary = rows[:-1], rows[-1]
    assert summary["states"] == 4 == len(states)
    assert [(s["person"], s["emotion"]) for s in states] == [("face_1", "neutral"), ("face_2", "neutral"),
                                                            ("face_1", "happy"), ("face_2", "happy")]
    assert states[1]["primary"] is False and states[2]["probabilities"]["happy"] == pytest.approx(0.7)
    assert states[0]["stamp"] == t0 and states[0]["face_weight"] == 0.75


def test_view_errors(tmp_path):
    env = _env(tmp_path)
    keep = tmp_path / "keep.avi"
    keep.write_bytes(b"old")
    for argv, want in ((["--save-debug", str(keep)], "exists already"),
                       (["--save-debug", str(tmp_path / "x.gif")], "unknown video container"),
                       (["--count", "-1"], "--count"), (["--video-fps", "0"], "--video-fps")):
        p = subprocess.run([sys.executable, "-m", "emotion_ros.tools.view"] + argv, env=env, cwd=PKG_ROOT,
                           capture_output=True, text=True, timeout=60)
        assert p.returncode == 2 and want in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert keep.read_bytes() == b"old"


def test_view_is_a_console_script():
    from importlib.metadata import entry_points

    eps = {e.name: e.value for e in entry_points(group="console_scripts")}
    assert eps.get("emotion-view") == "emotion_ros.tools.view:main"  # setup.py (make setup reinstalls on change)

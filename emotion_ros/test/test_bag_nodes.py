"""The whole loop with the real nodes: play a bag (with /clock) into face_node + fusion_node (use_sim_time), record
their outputs on sim time with emotion-bag record, and evaluate the recorded session."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np

from emotion_ros.tools.bag import main as bag_main
from emotion_ros.tools.bag_common import BagFile, stamp_ns

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_bag_evaluate import make_models, make_video  # noqa: E402

PKG_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
T0 = 1_700_000_000


def _env(tmp_path):
    env = dict(os.environ)
    env.update(ROS_DOMAIN_ID=str(random.randint(1, 200)), ROS_HOME=str(tmp_path / "roshome"), PYTHONUNBUFFERED="1",
               AMENT_PREFIX_PATH=env.get("AMENT_PREFIX_PATH") or sys.prefix)
    env["PYTHONPATH"] = PKG_ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _wait_graph(env, checks, timeout=60.0):
    """Wait until every (topic, min publishers, min subscribers) holds on the test's domain."""
    os.environ["ROS_DOMAIN_ID"] = env["ROS_DOMAIN_ID"]
    import rclpy
    ctx = rclpy.Context()
    rclpy.init(context=ctx, domain_id=int(env["ROS_DOMAIN_ID"]))
    node = rclpy.create_node("bag_nodes_test_probe", context=ctx)
    try:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if all(node.count_publishers(t) >= p and node.count_subscribers(t) >= s for t, p, s in checks):
                return True
            time.sleep(0.1)
        return [(t, node.count_publishers(t), node.count_subscribers(t)) for t, _, _ in checks]
    finally:
        node.destroy_node()
        rclpy.shutdown(context=ctx)


def test_play_nodes_record_evaluate(tmp_path):
    models = make_models(tmp_path)
    n_frames = make_video(tmp_path / "v.avi")
    raw = tmp_path / "raw"
    assert bag_main(["from-media", "--video", str(tmp_path / "v.avi"), "--out", str(raw),
                     "--start-time", str(T0)]) == 0
    env = _env(tmp_path)
    py = sys.executable
    procs = {}
    rec_bag = tmp_path / "session"
    try:
        procs["face"] = subprocess.Popen(
            [py, "-m", "emotion_ros.nodes.face", "--ros-args", "-p", f"model_path:={models['face']}",
             "-p", "device:=cpu", "-p", "debug_image:=false"], env=env, cwd=PKG_ROOT,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        procs["fusion"] = subprocess.Popen(
            [py, "-m", "emotion_ros.nodes.fusion", "--ros-args", "-p", f"model_path:={models['fusion']}",
             "-p", "device:=cpu", "-p", "use_sim_time:=true"], env=env, cwd=PKG_ROOT,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        procs["record"] = subprocess.Popen(
            [py, "-m", "emotion_ros.tools.bag", "record", str(rec_bag), "--topics", "emotion/faces",
             "emotion/state", "--ros-args", "-p", "use_sim_time:=true"], env=env, cwd=PKG_ROOT,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        # face_node listens to image_raw; recorder + fusion listen to emotion/faces; recorder to emotion/state
        ok = _wait_graph(env, [("/image_raw", 0, 1), ("/emotion/faces", 1, 2), ("/emotion/state", 1, 1)])
        assert ok is True, (ok, {k: p.poll() for k, p in procs.items()})
        play = subprocess.run([py, "-m", "emotion_ros.tools.bag", "play", str(raw), "--clock",
                               "--wait-for-subscribers", "30"], env=env, cwd=PKG_ROOT, capture_output=True,
                              text=True, timeout=120)
        assert play.returncode == 0, play.stderr
        time.sleep(2.0)  # the last frame's results
    finally:
        for name in ("record", "fusion", "face"):
            p = procs.get(name)
            if p is not None and p.poll() is None:
                p.send_signal(signal.SIGINT)
        outs = {name: p.communicate(timeout=30) for name, p in procs.items()}
    assert procs["record"].returncode == 0, outs["record"]
    summary = json.loads(outs["record"][0].strip().splitlines()[-1])
    assert summary["messages"].get("/emotion/faces", 0) >= 1, (summary, outs["face"])
    assert summary["messages"].get("/emotion/state", 0) >= 1, (summary, outs["fusion"])

    with BagFile(str(raw)) as bf:
        image_stamps = {stamp_ns(bf.deserialize(r, c.msgtype).header.stamp) for c, _, r in bf.messages()}
    assert len(image_stamps) == n_frames
    with BagFile(str(rec_bag)) as bf:
        topics = {t: s.msgtype for t, s in bf.topics().items()}
        assert topics == {"/emotion/faces": "emotion_msgs/msg/FaceEmotionArray",
                          "/emotion/state": "emotion_msgs/msg/EmotionState"}
        rows = [(c.topic, t, bf.deserialize(r, c.msgtype)) for c, t, r in bf.messages()]
    faces = [(t, m) for topic, t, m in rows if topic == "/emotion/faces"]
    # face_node copies each image's header: every output belongs to a played frame
    assert {stamp_ns(m.header.stamp) for _, m in faces} <= image_stamps
    assert sum(len(m.faces) for _, m in faces) >= 1
    # recorded on sim time: receive times lie on the bag's clock, at or after the frame they answer (within a
    # /clock period: the recorder's executor may serve the output before the clock message that came with it)
    for t, m in faces:
        assert stamp_ns(m.header.stamp) - 2 * 10**9 // 40 <= t <= T0 * 10**9 + 4 * 10**9
    states = [m for topic, _, m in rows if topic == "/emotion/state"]
    assert all(s.emotion in s.labels for s in states) and all(s.face_weight > 0 for s in states)

    labels = tmp_path / "labels.csv"
    labels.write_text(f"{T0},{T0 + 2},happy\n{T0 + 2},{T0 + 4},sad\n")
    out_json = tmp_path / "r.json"
    assert bag_main(["evaluate", str(rec_bag), "--labels", str(labels), "--json", str(out_json)]) == 0
    rep = json.loads(out_json.read_text())
    assert rep["mode"] == "recorded" and rep["n_spans"] == 2
    assert rep["counts"]["faces"] == len(faces) and rep["counts"]["state"] == len(states)
    assert rep["coverage"] > 0 and rep["face"]["coverage"] > 0
    assert 0.0 <= rep["accuracy"] <= 1.0 and rep["voice"]["coverage"] == 0.0
    assert np.array(rep["confusion"]["counts"]).sum() == rep["n_samples"] > 0



def test_restamper_moves_every_time_field():
    """Header stamps, VoiceEmotion start/end, nested sequences; zero stays zero; the map follows --rate."""
    from builtin_interfaces.msg import Time

    from emotion_msgs.msg import FaceEmotion, FaceEmotionArray, VoiceEmotion
    from emotion_ros.tools.bag_play import Restamper

    r = Restamper(rate=2.0)
    r.start(now0_ns=5_000_000_000_000, first_ns=T0 * 10**9)
    v = VoiceEmotion()
    v.header.stamp = Time(sec=T0 + 3, nanosec=0)
    v.start, v.end = Time(sec=T0 + 1, nanosec=500_000_000), Time(sec=0, nanosec=0)
    r.apply(v)
    assert (v.header.stamp.sec, v.header.stamp.nanosec) == (5000 + 1, 500_000_000)  # 3 s of bag at rate 2
    assert (v.start.sec, v.start.nanosec) == (5000, 750_000_000)
    assert (v.end.sec, v.end.nanosec) == (0, 0)  # "not filled" stays not filled
    a = FaceEmotionArray(faces=[FaceEmotion(id="f1"), FaceEmotion(id="f2")])
    a.header.stamp = Time(sec=T0, nanosec=10)
    r.apply(a)
    assert (a.header.stamp.sec, a.header.stamp.nanosec) == (5000, 5)
    assert [f.id for f in a.faces] == ["f1", "f2"]


def test_play_restamps_into_running_nodes(tmp_path):
    """`emotion-bag play BAG` into face_node + fusion_node on the wall clock (no --clock, no use_sim_time): a bag
    recorded long ago (T0 = 2023) yields EmotionState stamped now. With --no-restamp the same bag yields none, and
    play says why."""
    import threading

    import rclpy
    from emotion_msgs.msg import EmotionState
    from emotion_ros.ros.node_utils import reliable_qos

    models = make_models(tmp_path)
    make_video(tmp_path / "v.avi")
    raw = tmp_path / "raw"
    assert bag_main(["from-media", "--video", str(tmp_path / "v.avi"), "--out", str(raw),
                     "--start-time", str(T0)]) == 0
    env = _env(tmp_path)
    py = sys.executable
    procs = {}
    os.environ["ROS_DOMAIN_ID"] = env["ROS_DOMAIN_ID"]
    ctx = rclpy.Context()
    rclpy.init(context=ctx, domain_id=int(env["ROS_DOMAIN_ID"]))
    node = rclpy.create_node("play_restamp_probe", context=ctx)
    states = []
    node.create_subscription(EmotionState, "emotion/state",
                             lambda m: states.append((time.time_ns(), stamp_ns(m.header.stamp), m)), reliable_qos(100))
    from rclpy.executors import SingleThreadedExecutor
    ex = SingleThreadedExecutor(context=ctx)
    ex.add_node(node)
    spin = threading.Thread(target=ex.spin, daemon=True)
    spin.start()
    try:
        procs["face"] = subprocess.Popen(
            [py, "-m", "emotion_ros.nodes.face", "--ros-args", "-p", f"model_path:={models['face']}",
             "-p", "device:=cpu", "-p", "debug_image:=false"], env=env, cwd=PKG_ROOT,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        procs["fusion"] = subprocess.Popen(
            [py, "-m", "emotion_ros.nodes.fusion", "--ros-args", "-p", f"model_path:={models['fusion']}",
             "-p", "device:=cpu"], env=env, cwd=PKG_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        ok = _wait_graph(env, [("/image_raw", 0, 1), ("/emotion/faces", 1, 1), ("/emotion/state", 1, 1)])
        assert ok is True, (ok, {k: p.poll() for k, p in procs.items()})

        # the recorded stamps: 2023, stale for the nodes; play warns, nothing comes out
        old = subprocess.run([py, "-m", "emotion_ros.tools.bag", "play", str(raw), "--no-restamp", "--rate", "4",
                              "--wait-for-subscribers", "30"], env=env, cwd=PKG_ROOT, capture_output=True, text=True,
                             timeout=120)
        assert old.returncode == 0, old.stderr
        assert "treat this data as stale" in old.stderr and "--clock" in old.stderr
        assert json.loads(old.stdout.strip().splitlines()[-1])["time"] == "recorded"
        time.sleep(1.5)
        assert states == []

        # the default: restamped onto the current time
        t_play = time.time_ns()
        play = subprocess.run([py, "-m", "emotion_ros.tools.bag", "play", str(raw), "--wait-for-subscribers", "30"],
                              env=env, cwd=PKG_ROOT, capture_output=True, text=True, timeout=120)
        assert play.returncode == 0, play.stderr
        summary = json.loads(play.stdout.strip().splitlines()[-1])
        assert summary["time"] == "restamped" and summary["messages"]["/image_raw"] == 32
        deadline = time.time() + 30
        while not states and time.time() < deadline:
            time.sleep(0.1)
    finally:
        for name in ("fusion", "face"):
            p = procs.get(name)
            if p is not None and p.poll() is None:
                p.send_signal(signal.SIGINT)
        outs = {name: p.communicate(timeout=30) for name, p in procs.items()}
        ex.shutdown()
        node.destroy_node()
        rclpy.shutdown(context=ctx)
    assert states, outs
    for recv_ns, st_ns, m in states:  # stamped on the wall clock of this replay, not in 2023
        assert t_play - 10**9 <= st_ns <= recv_ns + 10**9
        assert m.emotion in m.labels and m.face_weight > 0

"""Faults on a real graph: a modality stops and comes back, nodes crash and restart, model files are bad.

- fusion_node: when faces (or voice) stop, the state is made from the other modality alone (weight 0 for the silent
  one) about ``stale_s`` (1 s) after its last evidence, and the modality is taken back when it returns;
- face_node / fusion_node killed (SIGKILL) and started again: results flow again end to end;
- a missing, corrupt or wrong-kind model file: the node exits non-zero and its output names the file.
"""
from __future__ import annotations

import os
import time

import numpy as np
import pytest
from emotion_msgs.msg import EmotionState, FaceEmotion, FaceEmotionArray, VoiceEmotion
from sensor_msgs.msg import Image

from robust_helpers import Graph, NodeProcess, face_scene, small_checkpoints
from emotion_ros.core.labels import LABELS
from emotion_ros.ros.convert import numpy_to_image, sec_to_stamp
from emotion_ros.ros.node_utils import reliable_qos

STALE_S = 1.0


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("robust_fault_models")
    return small_checkpoints(str(d))


@pytest.fixture(scope="module")
def graph():
    g = Graph("robust_faults_tester")
    g.subscribe("emotion/state", EmotionState, reliable_qos(200))
    g.subscribe("emotion/faces", FaceEmotionArray, reliable_qos(100))
    yield g
    g.close()


def onehot(label, p=0.8):
    v = np.full(len(LABELS), (1 - p) / (len(LABELS) - 1), np.float32)
    v[LABELS.index(label)] = p
    return v


def face_msg(t, emb):
    m = FaceEmotionArray()
    m.header.stamp = sec_to_stamp(t)
    m.header.frame_id = "camera"
    m.image_width, m.image_height = 640, 480
    f = FaceEmotion(id="face_1", x=200, y=100, width=160, height=160, detection_confidence=0.95,
                    emotion="happy", confidence=0.8)
    f.labels = list(LABELS)
    f.probabilities = onehot("happy").tolist()
    f.embedding = emb.tolist()
    m.faces = [f]
    return m


def voice_msg(t, emb, length=0.5):
    m = VoiceEmotion(voice_activity=True, speech_ratio=0.9, partial=False, emotion="angry", confidence=0.8)
    m.header.stamp = m.end = sec_to_stamp(t)
    m.start = sec_to_stamp(t - length)
    m.labels = list(LABELS)
    m.probabilities = onehot("angry").tolist()
    m.embedding = emb.tolist()
    return m


def test_fusion_falls_back_to_the_other_modality_and_takes_it_back(graph, models, tmp_path):
    proc = NodeProcess("fusion", str(tmp_path), {"model_path": models["fusion"], "device": "cpu",
                                                 "stale_s": STALE_S, "window_s": 1.0, "rate": 20.0,
                                                 "smoothing_tau_s": 0.0, "fusion_mode": "model",
                                                 # the one legacy stale_s for both modalities
                                                 "face_stale_s": 0.0, "voice_stale_s": 0.0})
    rng = np.random.default_rng(0)
    face_emb = rng.standard_normal(256).astype(np.float32)
    voice_emb = rng.standard_normal(128).astype(np.float32)
    pub_f = graph.publisher("emotion/faces", FaceEmotionArray, reliable_qos(10))
    pub_v = graph.publisher("emotion/voice", VoiceEmotion, reliable_qos(10))
    last = {"face": 0.0, "voice": 0.0}

    def stream(seconds, face=True, voice=True):
        end = time.monotonic() + seconds
        next_v = 0.0
        while time.monotonic() < end:
            now = time.time()
            if face:
                pub_f.publish(face_msg(now, face_emb))
                last["face"] = now
            if voice and now >= next_v:  # an utterance window every 0.25 s
                pub_v.publish(voice_msg(now, voice_emb))
                last["voice"] = now
                next_v = now + 0.25
            graph.spin_for(1 / 15)

    def states_since(t):
        return [(rt, m) for rt, m in graph.received["emotion/state"] if rt >= t]

    def switch(stop, keep):
        """Stop one modality: seconds from its last evidence to the first state without it."""
        t_stop = time.time()
        end = time.monotonic() + 4.0
        while time.monotonic() < end:
            stream(0.1, face=(keep == "face"), voice=(keep == "voice"))
            gone = [(rt, m) for rt, m in states_since(t_stop) if getattr(m, f"{stop}_weight") == 0.0]
            if gone:
                rt, m = gone[0]
                assert getattr(m, f"{keep}_weight") == pytest.approx(1.0)
                return rt - last[stop]
        raise AssertionError(f"{stop} never dropped out of the state after it stopped")

    def both_back(t0, timeout=2.0):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            stream(0.1)
            if any(m.face_weight > 0 and m.voice_weight > 0 for _, m in states_since(t0)):
                return time.time() - t0
        raise AssertionError("the returning modality was not taken back")

    try:
        graph.wait_node_up(proc, subscribes=["emotion/faces", "emotion/voice"], publishes=["emotion/state"])
        stream(1.0)
        assert graph.spin_until(lambda: any(m.face_weight > 0 and m.voice_weight > 0
                                            for _, m in graph.received["emotion/state"]), 5.0), \
            "no fused state with both modalities"
        # faces stop: voice alone about stale_s after the last face (the node clock vs. the stamps)
        dt = switch("face", "voice")
        assert 0.5 * STALE_S <= dt <= STALE_S + 0.6, f"face dropped out {dt:.2f} s after its last evidence"
        assert both_back(time.time()) < 1.0
        # voice stops: face alone
        dt = switch("voice", "face")
        assert 0.5 * STALE_S <= dt <= STALE_S + 0.6, f"voice dropped out {dt:.2f} s after its last evidence"
        assert both_back(time.time()) < 1.0
        assert proc.alive()
    finally:
        rc = proc.stop()
    assert rc == 0, proc.output()[-3000:]


def test_killed_nodes_restart_and_the_graph_carries_on(graph, models, tmp_path):
    img = face_scene(1, 320, 240)
    pub = graph.publisher("image_raw", Image, reliable_qos(5))
    params = {
        "face": {"model_path": models["face"], "device": "cpu", "full_detect_every": 1, "debug_image": False},
        "fusion": {"model_path": models["fusion"], "device": "cpu"},
    }
    procs = {k: NodeProcess(k, str(tmp_path), p) for k, p in params.items()}

    def feed_until(pred, timeout):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            msg = numpy_to_image(img, "bgr8", stamp=time.time(), frame_id="camera")
            pub.publish(msg)
            graph.spin_for(0.1)
            if pred():
                return True
        return pred()

    def flowing(since):
        faces = [m for rt, m in graph.received["emotion/faces"] if rt > since and m.faces]
        states = [m for rt, m in graph.received["emotion/state"] if rt > since and m.face_weight > 0]
        return len(faces) >= 3 and len(states) >= 3

    try:
        graph.wait_node_up(procs["face"], subscribes=["image_raw"], publishes=["emotion/faces"])
        graph.wait_node_up(procs["fusion"], subscribes=["emotion/faces"], publishes=["emotion/state"])
        assert feed_until(lambda: flowing(0.0), 20.0), "no results before the crash"
        for kind in ("face", "fusion"):
            procs[kind].kill()
            t_kill = time.time()
            graph.spin_for(0.5)
            # nothing from the dead node
            if kind == "face":
                feed_until(lambda: False, 1.0)
                late = [rt for rt, _ in graph.received["emotion/faces"] if rt > t_kill + 0.3]
                assert not late, "emotion/faces still flowing from a killed face_node?"
            procs[kind] = NodeProcess(kind, str(tmp_path), params[kind], tag="_restarted")
            t_restart = time.time()
            assert feed_until(lambda: flowing(t_restart), 60.0), \
                f"no results after restarting {kind}_node:\n{procs[kind].output()[-3000:]}"
            other = "fusion" if kind == "face" else "face"
            assert procs[other].alive(), f"{other}_node died when {kind}_node was killed"
    finally:
        for p in procs.values():
            p.stop()


def _bad_model_cases(models, d):
    garbage = os.path.join(d, "garbage.pt")
    with open(garbage, "wb") as f:
        f.write(np.random.default_rng(0).bytes(4096))
    truncated = os.path.join(d, "truncated_voice.pt")
    with open(models["voice"], "rb") as f:
        data = f.read()
    with open(truncated, "wb") as f:
        f.write(data[: len(data) // 3])
    return [
        ("face", os.path.join(d, "missing_dir", "no_face_model.pt")),
        ("voice", os.path.join(d, "no_voice_model.pt")),
        ("fusion", os.path.join(d, "no_fusion_model.pt")),
        ("face", garbage),
        ("voice", truncated),
        ("fusion", models["face"]),   # a model of the wrong kind
    ]


def test_bad_model_files_fail_start_up_naming_the_file(models, tmp_path):
    cases = _bad_model_cases(models, str(tmp_path))
    # all at once: each process spends most of its time importing torch
    procs = [(kind, path, NodeProcess(kind, str(tmp_path), {"model_path": path, "device": "cpu",
                                                            **({"fusion_mode": "model"} if kind == "fusion" else {})},
                                      tag=f"_{i}"))
             for i, (kind, path) in enumerate(cases)]
    try:
        for kind, path, p in procs:
            rc = p.wait_exit(120.0)
            out = p.output()
            assert rc is not None, f"{kind}_node with model {path} did not exit:\n{out[-2000:]}"
            assert rc != 0, f"{kind}_node with model {path} exited 0:\n{out[-2000:]}"
            assert path in out, f"{kind}_node's output does not name {path}:\n{out[-2000:]}"
            assert "Traceback" not in out, f"{kind}_node crashed instead of failing cleanly:\n{out[-3000:]}"
    finally:
        for _, _, p in procs:
            p.stop()

"""/diagnostics of the processing nodes on a real graph (face, voice, fusion, behaviour in their own processes).

While input flows, every node reports input rate, processing time and drops; the perception and fusion nodes also
the device and the model file. When the input stops, face, voice and fusion turn to WARN (input stale) within a few
seconds (``stale_after_s`` = 2 s).
"""
from __future__ import annotations

import time

import pytest
from audio_common_msgs.msg import AudioDataStamped, AudioInfo
from emotion_msgs.msg import EmotionState
from sensor_msgs.msg import Image

from robust_helpers import Graph, NodeProcess, diag_values, face_scene, level_of, small_checkpoints, speech
from emotion_ros.ros.convert import float_to_pcm, numpy_to_image, sec_to_stamp
from emotion_ros.ros.node_utils import latched_qos, reliable_qos

COMMON = ("input_rate_hz", "processing_ms_p50", "processing_ms_p95", "dropped")
WITH_MODEL = ("device", "model")
OK, WARN, ERROR = 0, 1, 2


@pytest.fixture(scope="module")
def running(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("robust_diag"))
    models = small_checkpoints(d)
    g = Graph("robust_diag_tester")
    g.subscribe_diag()
    g.subscribe("emotion/state", EmotionState, reliable_qos(50))
    procs = {
        "face": NodeProcess("face", d, {"model_path": models["face"], "device": "cpu", "debug_image": False}),
        "voice": NodeProcess("voice", d, {"model_path": models["voice"], "device": "cpu"}),
        "fusion": NodeProcess("fusion", d, {"model_path": models["fusion"], "device": "cpu", "fusion_mode": "model"}),
        "behaviour": NodeProcess("behaviour", d, {}),
    }
    try:
        g.wait_node_up(procs["face"], subscribes=["image_raw"], publishes=["emotion/faces"], timeout=120)
        g.wait_node_up(procs["voice"], subscribes=["audio"], publishes=["emotion/voice"], timeout=120)
        g.wait_node_up(procs["fusion"], subscribes=["emotion/faces"], publishes=["emotion/state"], timeout=120)
        g.wait_node_up(procs["behaviour"], subscribes=["emotion/state"], timeout=120)
        yield g, procs, models
    finally:
        for p in procs.values():
            p.stop()
        g.close()


def feed(g, seconds):
    """Camera frames at 10 Hz and speech in real time (20 ms chunks) for ``seconds``."""
    img_pub = g.publisher("image_raw", Image, reliable_qos(5))
    aud_pub = g.publisher("audio", AudioDataStamped, reliable_qos(100))
    g.publisher("audio_info", AudioInfo, latched_qos()).publish(
        AudioInfo(sample_rate=16000, channels=1, sample_format="S16LE", bitrate=256000, coding_format="wave"))
    wave, _ = speech(16000, seconds=seconds)
    pcm = float_to_pcm(wave, "S16LE")
    frames = [face_scene(1, 320, 240, shift=(k, 0)) for k in range(3)]
    t0 = time.time()
    m0 = time.monotonic()
    next_frame = 0.0
    k = 0
    while True:
        now = time.monotonic() - m0
        if now >= seconds:
            break
        while (k + 1) * 0.02 <= now and (k + 1) * 320 * 2 <= len(pcm):
            m = AudioDataStamped()
            m.header.stamp = sec_to_stamp(t0 + k * 0.02)
            m.audio.data = pcm[k * 640:(k + 1) * 640]
            aud_pub.publish(m)
            k += 1
        if now >= next_frame:
            img_pub.publish(numpy_to_image(frames[int(now * 10) % 3], "bgr8", stamp=time.time(), frame_id="camera"))
            next_frame += 0.1
        g.spin_for(0.01)


def latest(g, node, since=0.0):
    sts = [(t, st) for t, st in g.diag_statuses(node) if t >= since]
    return sts[-1][1] if sts else None


def test_every_node_reports_rates_processing_drops_device_and_model(running):
    g, procs, models = running
    t_feed = time.time()
    feed(g, 4.0)
    for node, extra in (("face_node", WITH_MODEL), ("voice_node", WITH_MODEL), ("fusion_node", WITH_MODEL),
                        ("behaviour_node", ())):
        assert g.spin_until(lambda: latest(g, node, t_feed + 1.0) is not None, 5.0), f"no /diagnostics from {node}"
        st = latest(g, node, t_feed + 1.0)
        v = diag_values(st)
        missing = [k for k in COMMON + extra if k not in v]
        assert not missing, f"{node} /diagnostics lacks {missing}: {sorted(v)}"
        float(v["input_rate_hz"]), float(v["processing_ms_p50"]), int(v["dropped"])
        if extra:
            assert v["device"] == "cpu", (node, v["device"])
            kind = node.split("_")[0]
            assert v["model"] == models[kind], (node, v["model"])
    # the inputs were really counted
    assert float(diag_values(latest(g, "face_node"))["input_rate_hz"]) > 3
    assert float(diag_values(latest(g, "voice_node"))["input_rate_hz"]) > 20
    assert float(diag_values(latest(g, "fusion_node"))["input_rate_hz"]) > 1
    assert all(p.alive() for p in procs.values())


def test_perception_and_fusion_warn_when_their_input_goes_silent(running):
    g, procs, _ = running
    feed(g, 2.0)
    t_stop = time.time()
    levels = {}
    for node in ("face_node", "voice_node", "fusion_node"):
        def warned():
            st = latest(g, node, t_stop)
            return st is not None and level_of(st) == WARN and float(diag_values(st).get("seconds_since_input",
                                                                                         "inf")) > 2.0
        ok = g.spin_until(warned, 8.0)
        st = latest(g, node, t_stop)
        levels[node] = (level_of(st), st.message) if st is not None else None
        assert ok, f"{node} did not turn WARN after its input stopped: {levels[node]}"
        assert any(w in st.message.lower() for w in ("stale", "silent", "no input")), st.message

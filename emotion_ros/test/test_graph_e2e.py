"""End to end through DDS: images and audio published by this process reach ``EmotionState`` from the
graph running in another process (the single-process runner with face, voice, fusion and behaviour nodes)
with the shipped models."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from robust_helpers import PKG_ROOT, Graph, face_scene, node_env, sec_stamp, speech  # noqa: E402

from audio_common_msgs.msg import AudioDataStamped, AudioInfo  # noqa: E402
from emotion_msgs.msg import BehaviourDecision, EmotionState, FaceEmotionArray, VoiceEmotion  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402

from emotion_ros import paths  # noqa: E402
from emotion_ros.core.labels import LABELS  # noqa: E402
from emotion_ros.ros.convert import float_to_pcm, numpy_to_image, stamp_to_sec  # noqa: E402
from emotion_ros.ros.node_utils import latched_qos, reliable_qos  # noqa: E402

MODELS = [paths.model_path(n) for n in ("face.pt", "voice.pt", "fusion.pt")]
pytestmark = pytest.mark.skipif(not all(os.path.isfile(m) for m in MODELS),
                                reason="the shipped models are not there yet")


@pytest.fixture(scope="module")
def graph():
    g = Graph("e2e_tester")
    yield g
    g.close()


@pytest.fixture(scope="module")
def pipeline_proc(tmp_path_factory):
    log = tmp_path_factory.mktemp("e2e") / "pipeline.log"
    with open(log, "w") as f:
        proc = subprocess.Popen(
            [sys.executable, "-m", "emotion_ros.nodes.pipeline", "--no-camera", "--no-microphone",
             "--device", "cpu"],
            cwd=PKG_ROOT, env=node_env(), stdout=f, stderr=subprocess.STDOUT)
    proc.log_path = str(log)
    yield proc
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _output(proc) -> str:
    with open(proc.log_path, errors="replace") as f:
        return f.read()[-4000:]


def test_image_and_audio_reach_emotion_state_in_another_process(graph, pipeline_proc):
    img_pub = graph.publisher("image_raw", Image, reliable_qos(2))
    audio_pub = graph.publisher("audio", AudioDataStamped, reliable_qos(50))
    info_pub = graph.publisher("audio_info", AudioInfo, latched_qos())
    states = graph.subscribe("emotion/state", EmotionState, reliable_qos(100))
    faces = graph.subscribe("emotion/faces", FaceEmotionArray, reliable_qos(100))
    voices = graph.subscribe("emotion/voice", VoiceEmotion, reliable_qos(100))
    decisions = graph.subscribe("emotion/decision", BehaviourDecision, reliable_qos(100))

    up = graph.spin_until(lambda: (graph.node.count_subscribers("image_raw") > 0
                                   and graph.node.count_subscribers("audio") > 0
                                   and graph.node.count_publishers("emotion/state") > 0)
                          or pipeline_proc.poll() is not None, 120)
    assert up and pipeline_proc.poll() is None, f"graph did not come up:\n{_output(pipeline_proc)}"

    rate = 16000
    wave, utts = speech(rate)
    info = AudioInfo(channels=1, sample_rate=rate, sample_format="S16LE", bitrate=rate * 16,
                     coding_format="wave")
    info_pub.publish(info)
    frame = face_scene(1)
    chunk = rate // 50                                  # 20 ms
    frame_stamps, voice_ok, t0 = set(), False, time.time()
    pos = 0
    deadline = time.monotonic() + 60
    next_frame = time.monotonic()
    both = []
    while time.monotonic() < deadline:
        now = time.monotonic()
        if now >= next_frame:
            t = time.time()
            frame_stamps.add(round(t, 6))
            img_pub.publish(numpy_to_image(frame, "bgr8", stamp=t, frame_id="camera"))
            next_frame += 0.1
        if pos < wave.size:
            msg = AudioDataStamped()
            msg.header.stamp = sec_stamp(t0 + pos / rate)
            msg.audio.data = float_to_pcm(wave[pos:pos + chunk], "S16LE")
            audio_pub.publish(msg)
            pos += chunk
        graph.spin_for(0.02)
        both = [m for _, m in list(states) if m.face_weight > 0 and m.voice_weight > 0]
        voice_ok = len(voices) > 0
        if both and voice_ok and pos >= wave.size:
            break
    assert pipeline_proc.poll() is None, f"graph died:\n{_output(pipeline_proc)}"
    assert faces, f"no FaceEmotionArray came back:\n{_output(pipeline_proc)}"
    assert voices, f"no VoiceEmotion came back:\n{_output(pipeline_proc)}"
    assert states, f"no EmotionState came back:\n{_output(pipeline_proc)}"
    assert both, "no EmotionState fused face and voice"

    # face results carry the stamps of the frames they came from, with a face where it is
    f = faces[-1][1]
    assert round(stamp_to_sec(f.header.stamp), 6) in frame_stamps
    assert len(f.faces) == 1 and f.faces[0].width > 80
    # voice results lie inside the audio sent
    v = voices[0][1]
    assert t0 - 0.5 <= stamp_to_sec(v.start) < stamp_to_sec(v.end) <= t0 + wave.size / rate + 0.5
    # every state is well formed. `emotion` is the held one (hysteresis): it may trail the probabilities' top emotion
    # by less than the largest lead the fusion waits for (a voice-driven change: switch_margin + voice_switch_margin;
    # during min_dwell_s: fast_switch_margin), and `confidence` is its probability
    import yaml
    with open(os.path.join(PKG_ROOT, "config", "emotion.yaml")) as f:
        fp = yaml.safe_load(f)["fusion_node"]["ros__parameters"]
    max_lead = max(fp["switch_margin"] + fp["voice_switch_margin"], fp["fast_switch_margin"])
    for _, s in states:
        assert tuple(s.labels) == LABELS
        p = np.asarray(s.probabilities)
        assert p.shape == (len(LABELS),) and abs(p.sum() - 1) < 1e-3
        held = LABELS.index(s.emotion)
        assert abs(s.confidence - p[held]) < 1e-5
        assert p.max() - p[held] < max_lead + 1e-5, (s.emotion, p)
        assert -1 <= s.valence <= 1 and -1 <= s.arousal <= 1
        assert 0 <= s.face_weight <= 1 and 0 <= s.voice_weight <= 1
    # the fused state is stamped with its newest evidence: a frame's stamp or a voice segment's end
    voice_ends = {round(stamp_to_sec(m.end), 6) for _, m in voices}
    s = both[-1]
    assert round(stamp_to_sec(s.header.stamp), 6) in frame_stamps | voice_ends
    assert s.header.frame_id == "camera"
    assert decisions is not None  # behaviour node is up; decisions depend on the rule table's dwell

    pipeline_proc.send_signal(signal.SIGINT)
    assert pipeline_proc.wait(timeout=30) == 0, _output(pipeline_proc)

"""voice_node on a real ROS 2 graph (a node process fed audio over DDS), plus in-process lifecycle checks."""
import array
import os
import random
import time

os.environ.setdefault("ROS_DOMAIN_ID", str(random.randint(1, 200)))
os.environ.setdefault("ROS_HOME", f"/tmp/emotion_ros-test-roshome-{os.getpid()}")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import rclpy  # noqa: E402
from audio_common_msgs.msg import AudioDataStamped, AudioInfo  # noqa: E402
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from emotion_msgs.msg import VoiceEmotion  # noqa: E402
from rclpy.context import Context  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402

from emotion_ros.core.labels import LABELS  # noqa: E402
from emotion_ros.ros.convert import float_to_pcm, sec_to_stamp, stamp_to_sec  # noqa: E402
from emotion_ros.ros.node_utils import latched_qos, reliable_qos  # noqa: E402
from test_voice_util import SR, concat, make_voice_checkpoint, silence, speechlike, tone  # noqa: E402
from robust_helpers import start_node, stop_node  # noqa: E402

PKG_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EMBED = 16


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_voice_checkpoint(str(tmp_path_factory.mktemp("voice_node") / "voice.pt"), embed_dim=EMBED)


def resample(x16, rate):
    import soxr
    return x16 if rate == SR else soxr.resample(x16, SR, rate).astype(np.float32)


class Graph:
    def __init__(self, ctx):
        self.node = Node("voice_node_tester", context=ctx)
        self.audio_pub = self.node.create_publisher(AudioDataStamped, "audio", reliable_qos(100))
        self.info_pub = self.node.create_publisher(AudioInfo, "audio_info", latched_qos())
        self.results = []
        self.diags = []
        self.node.create_subscription(VoiceEmotion, "emotion/voice", self.results.append, reliable_qos(100))
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self.diags.append, 50)
        self.ex = SingleThreadedExecutor(context=ctx)
        self.ex.add_node(self.node)

    def spin_until(self, pred, timeout):
        end = time.monotonic() + timeout
        while not pred() and time.monotonic() < end:
            self.ex.spin_once(timeout_sec=0.02)
        return pred()

    def diag_values(self):
        for arr in reversed(self.diags):
            for st in arr.status:
                if st.name.startswith("voice_node"):
                    return {kv.key: kv.value for kv in st.values}
        return {}

    def set_format(self, rate, channels, fmt, coding="wave"):
        self.info_pub.publish(AudioInfo(sample_rate=rate, channels=channels, sample_format=fmt, bitrate=0,
                                        coding_format=coding))

    def wait_format(self, rate, channels, fmt):
        """The node's diagnostics say it uses this format (AudioInfo and audio travel on different topics)."""
        self.diags.clear()
        return self.spin_until(lambda: (self.diag_values().get("sample_rate"), self.diag_values().get("channels"),
                                        self.diag_values().get("sample_format")) == (str(rate), str(channels), fmt),
                               10.0)

    def send(self, x, rate, fmt, t0, chunk_s=0.1, stamped=True, pace=0.25, frame_id="mic"):
        """Publish (n,) or (n, ch) float audio as PCM chunks from time t0; ``pace``: fraction of real time."""
        n = max(1, int(chunk_s * rate))
        for i in range(0, x.shape[0], n):
            part = x[i:i + n]
            m = AudioDataStamped()
            m.header.frame_id = frame_id
            if stamped:
                m.header.stamp = sec_to_stamp(t0 + i / rate)
            m.audio.data = array.array("B", float_to_pcm(part, fmt))
            self.audio_pub.publish(m)
            self.spin_until(lambda: False, pace * part.shape[0] / rate)

    def finals(self):
        return [r for r in self.results if not r.partial]

    def close(self):
        self.ex.shutdown()
        self.node.destroy_node()


@pytest.fixture(scope="module")
def running(ckpt, tmp_path_factory):
    log_path = tmp_path_factory.mktemp("voice_node_log") / "voice_node.log"
    proc, log = start_node("voice", log_path, f"model_path:={ckpt}", "device:=cpu")
    ctx = Context()
    rclpy.init(context=ctx)
    g = Graph(ctx)
    try:
        ok = g.spin_until(lambda: (g.audio_pub.get_subscription_count() > 0
                                   and g.node.count_publishers("emotion/voice") > 0) or proc.poll() is not None,
                          120.0)   # importing torch + librosa takes long on a busy machine
        if not ok or proc.poll() is not None:
            pytest.fail(f"voice_node did not come up (rc={proc.poll()}):\n{open(log_path).read()}")
        yield g, proc, log_path
    finally:
        g.close()
        rclpy.shutdown(context=ctx)
        stop_node(proc, log)


def check_msg(r, span, pre=0.2, post=0.15):
    """A VoiceEmotion for the utterance spanning ``span`` (s) on the audio clock."""
    t0, t1 = stamp_to_sec(r.start), stamp_to_sec(r.end)
    assert span[0] - pre <= t0 <= span[0] + 0.03, (t0, span)
    assert span[1] - 0.15 <= t1 <= span[1] + post, (t1, span)
    assert stamp_to_sec(r.header.stamp) == pytest.approx(t1, abs=1e-9)
    assert r.voice_activity and 0.0 < r.speech_ratio <= 1.0 and not r.partial
    assert list(r.labels) == list(LABELS)
    probs = np.asarray(r.probabilities)
    assert probs.shape == (7,) and abs(probs.sum() - 1) < 1e-4
    assert r.emotion == LABELS[int(np.argmax(probs))] and r.confidence == pytest.approx(probs.max(), abs=1e-6)
    assert len(r.embedding) == EMBED


def utterance(voice):
    wave, spans = concat([("s", silence(0.5)), ("v", voice), ("s", silence(0.8))])
    return wave + silence(wave.size / SR, level=0.002, rng=np.random.default_rng(9)), spans[0]


def test_s16le_stereo_44k(running):
    g, proc, _ = running
    g.set_format(44100, 2, "S16LE")
    assert g.wait_format(44100, 2, "S16LE"), g.diag_values()
    wave, span = utterance(speechlike(1.5))
    x = resample(wave, 44100)
    x = np.stack([x, 0.7 * x], axis=1)
    T = 5000.0
    g.results.clear()
    g.send(x, 44100, "S16LE", T)
    assert g.spin_until(lambda: g.finals(), 15.0), "no VoiceEmotion"
    assert len(g.finals()) == 1
    r = g.finals()[0]
    check_msg(r, (T + span[0], T + span[1]))
    assert r.header.frame_id == "mic"
    assert proc.poll() is None


def test_f32le_mono_16k(running):
    g, _, _ = running
    g.set_format(16000, 1, "F32LE")
    assert g.wait_format(16000, 1, "F32LE"), g.diag_values()
    wave, span = utterance(tone(0.9, amp=0.2, f=330))
    T = 6000.5
    g.results.clear()
    g.send(wave, 16000, "F32LE", T, chunk_s=0.032)
    assert g.spin_until(lambda: g.finals(), 15.0), "no VoiceEmotion"
    check_msg(g.finals()[0], (T + span[0], T + span[1]))


def test_unstamped_audio_uses_arrival_time(running):
    g, _, _ = running
    g.set_format(16000, 1, "S16LE")
    assert g.wait_format(16000, 1, "S16LE")
    wave, span = utterance(speechlike(1.0))
    g.results.clear()
    now = g.node.get_clock().now().nanoseconds * 1e-9
    # a little faster than real time (a slower sender would really be losing audio)
    g.send(wave, 16000, "S16LE", 0.0, chunk_s=0.05, stamped=False, pace=0.8)
    assert g.spin_until(lambda: g.finals(), 15.0), "no VoiceEmotion"
    r = g.finals()[0]
    # on the wall clock, within the time the audio took to send (a loose bound: delivery jitter)
    check_msg(r, (now + span[0], now + span[1]), pre=0.5, post=0.5)


def test_bad_format_is_refused_then_good_audio_works(running):
    g, proc, log_path = running
    wave, span = utterance(speechlike(1.0))
    g.results.clear()
    g.set_format(16000, 1, "S16LE", coding="mp3")
    assert g.spin_until(lambda: "compressed audio not supported" in open(log_path).read(), 10.0)
    g.send(wave, 16000, "S16LE", 7000.0)
    g.set_format(16000, 1, "S17LE")
    assert g.spin_until(lambda: "S17LE" in open(log_path).read(), 10.0)
    g.send(wave, 16000, "S16LE", 7010.0)
    g.set_format(500, 1, "S16LE")
    assert g.spin_until(lambda: "unsupported sample rate 500 Hz" in open(log_path).read(), 10.0)
    g.set_format(16000, 1, "S16LE")
    assert g.wait_format(16000, 1, "S16LE")
    assert g.spin_until(lambda: False, 1.5) or not g.results    # nothing came of the refused audio
    # a chunk that is not a whole number of frames: the whole frames are used, the node says so
    m = AudioDataStamped()
    m.header.stamp = sec_to_stamp(7019.0)
    m.audio.data = array.array("B", float_to_pcm(silence(0.1, level=0.002), "S16LE") + b"\x01")
    g.audio_pub.publish(m)
    assert g.spin_until(lambda: "not a whole number" in open(log_path).read(), 10.0)
    g.send(wave, 16000, "S16LE", 7020.0)
    assert g.spin_until(lambda: g.finals(), 15.0)
    assert len(g.finals()) == 1
    check_msg(g.finals()[0], (7020.0 + span[0], 7020.0 + span[1]))
    assert proc.poll() is None


def test_diagnostics(running, ckpt):
    g, _, _ = running
    g.diags.clear()
    assert g.spin_until(lambda: "real_time_factor" in g.diag_values(), 10.0)
    v = g.diag_values()
    assert v["device"] == "cpu" and v["model"] == ckpt
    assert float(v["real_time_factor"]) > 0 and float(v["processing_ms_p50"]) > 0
    assert int(v["inputs"]) > 0 and int(v["outputs"]) >= 4


def test_missing_model_exits_nonzero_naming_the_file(tmp_path):
    missing = str(tmp_path / "nowhere" / "voice_missing.pt")
    log_path = tmp_path / "missing.log"
    proc, log = start_node("voice", log_path, f"model_path:={missing}", "device:=cpu")
    try:
        rc = proc.wait(timeout=120)
    finally:
        stop_node(proc, log)
    out = open(log_path).read()
    assert rc != 0, out
    assert "voice_missing.pt" in out, out


# ------------------------------------------------------------------------------------------- in-process ---

@pytest.fixture
def inproc(ckpt, ctx):
    from emotion_ros.nodes.voice import VoiceNode
    made = []

    def make(**params):
        values = {"model_path": ckpt, "device": "cpu", "idle_flush_s": 0.0, **params}
        n = VoiceNode(context=ctx, parameter_overrides=[Parameter(k, value=v) for k, v in values.items()])
        made.append(n)
        return n
    yield make
    for n in made:
        n.destroy_node()


def chunks(x, rate, t0, chunk_s=0.1):
    from emotion_ros.nodes.voice import Chunk
    n = int(chunk_s * rate)
    return [Chunk(x[i:i + n].reshape(-1, 1), rate, t0 + i / rate, "mic") for i in range(0, x.size, n)]


def test_lifecycle_and_deactivate_publishes_open_utterance(inproc):
    from rclpy.lifecycle import TransitionCallbackReturn as R
    n = inproc(publish_embedding=False, window_s=1.0, hop_s=0.5)
    assert n.model is None
    assert n.trigger_configure() == R.SUCCESS and n.model is not None
    assert n.trigger_activate() == R.SUCCESS
    wave = np.concatenate([silence(0.5), speechlike(1.8)])      # speech still going on at the end
    out = [m for c in chunks(wave, 16000, 100.0) for m in n.process(c)]
    assert [m.partial for m in out] == [True, True]             # windows at 1.0 and 1.5 s of speech
    assert all(len(m.embedding) == 0 for m in out)
    before = n.published
    assert n.trigger_deactivate() == R.SUCCESS                  # closes the open utterance and publishes it
    assert n.published == before + 1 and n.pipeline is None
    assert n.trigger_activate() == R.SUCCESS and n.trigger_deactivate() == R.SUCCESS
    assert n.trigger_cleanup() == R.SUCCESS and n.model is None
    n.set_parameters([Parameter("publish_partial", value=False)])
    assert n.trigger_configure() == R.SUCCESS and n.trigger_activate() == R.SUCCESS
    assert [m for c in chunks(wave, 16000, 200.0) for m in n.process(c)] == []
    assert n.trigger_deactivate() == R.SUCCESS


def test_a_new_face_starts_the_speaker_reference_again(inproc, tmp_path):
    """speaker_reset_on_new_face: another face track the largest for new_face_hold_s on emotion/faces -> the
    speaker reference is empty before the next audio is processed; off (the default), faces are not even read."""
    from rclpy.lifecycle import TransitionCallbackReturn as R
    from emotion_msgs.msg import FaceEmotion, FaceEmotionArray
    spk = make_voice_checkpoint(str(tmp_path / "voice_spk.pt"), embed_dim=EMBED, utterance_cmn=True,
                                speaker_window=3)

    def faces(t, *tracks):
        msg = FaceEmotionArray()
        msg.header.stamp = sec_to_stamp(t)
        msg.faces = [FaceEmotion(id=i, width=w, height=w) for i, w in tracks]
        return msg
    wave = np.concatenate([silence(0.5), speechlike(1.0), silence(0.8), speechlike(1.0), silence(0.8)])
    n = inproc(model_path=spk, speaker_reset_on_new_face=True, new_face_hold_s=0.5)
    assert n.trigger_configure() == R.SUCCESS and n.trigger_activate() == R.SUCCESS
    assert any(sub.topic_name == "/emotion/faces" for sub in n._subs)
    for c in chunks(wave, 16000, 100.0):
        n.process(c)
    assert len(n.pipeline.speaker) == 2                        # two utterances of the person in front
    n._on_faces(faces(104.0, ("ana", 120)))                    # the first person: adopted
    n._on_faces(faces(104.2, ("ana", 60), ("ben", 150)))       # ben the largest ...
    n.process(chunks(silence(0.2), 16000, 104.1)[0])
    assert len(n.pipeline.speaker) == 2 and n.new_face_resets == 0
    n._on_faces(faces(104.8, ("ben", 150)))                    # ... for 0.6 s: a new person
    n.process(chunks(silence(0.2), 16000, 104.3)[0])
    assert len(n.pipeline.speaker) == 0 and n.new_face_resets == 1
    for c in chunks(wave, 16000, 110.0):
        n.process(c)
    assert len(n.pipeline.speaker) == 2 and n.new_face_resets == 1
    assert n.trigger_deactivate() == R.SUCCESS
    off = inproc(model_path=spk)
    assert off.trigger_configure() == R.SUCCESS and off.trigger_activate() == R.SUCCESS
    assert not any(sub.topic_name == "/emotion/faces" for sub in off._subs) and off._persons is None
    assert off.trigger_deactivate() == R.SUCCESS


def test_backlog_drops_oldest_audio(inproc):
    n = inproc(max_backlog_s=1.0)
    cs = chunks(silence(3.0), 16000, 0.0)
    for c in cs:
        n.enqueue(c)                # not active: nobody consumes
    assert n.dropped_chunks == 20 and n.dropped_s == pytest.approx(2.0)
    assert [c.t_start for c in n._queue] == pytest.approx([c.t_start for c in cs[20:]])


def test_configure_fails_on_bad_settings(inproc, tmp_path):
    from rclpy.lifecycle import TransitionCallbackReturn as R
    from emotion_ros.ros.node_utils import ParameterError
    with pytest.raises(ParameterError, match="sample_rate"):      # out of its declared range: refused at once
        inproc(sample_rate=4000)
    assert inproc(sample_format="MP3").trigger_configure() == R.FAILURE
    assert inproc(vad_start_db=3.0, vad_stop_db=6.0).trigger_configure() == R.FAILURE
    n = inproc(model_path=str(tmp_path / "gone.pt"))
    assert n.trigger_configure() == R.FAILURE and n.model is None


def test_parameters_are_declared_with_descriptions_and_yaml_defaults(inproc):
    import yaml
    from emotion_ros.nodes.voice import PARAMS
    n = inproc()
    with open(os.path.join(PKG_ROOT, "config", "emotion.yaml")) as f:
        cfg = yaml.safe_load(f)["voice_node"]["ros__parameters"]
    assert set(cfg) == set(PARAMS)
    for name, (default, _desc, *_range) in PARAMS.items():
        assert n.describe_parameter(name).description
        assert cfg[name] == default and type(cfg[name]) is type(default), name


@pytest.mark.parametrize("fmt,problem", [
    (("wave", 16000, 1, "S16LE"), None),
    (("WAVE", 96000, 8, "f32le"), None),
    (("", 8000, 2, "S24LE"), None),
    (("mp3", 16000, 1, "S16LE"), "compressed audio not supported"),
    (("opus", 48000, 2, "S16LE"), "compressed audio not supported"),
    (("wave", 16000, 0, "S16LE"), "0 channels"),
    (("wave", 7999, 1, "S16LE"), "unsupported sample rate 7999 Hz"),
    (("wave", 192000, 1, "S16LE"), "unsupported sample rate 192000 Hz"),
    (("wave", 16000, 1, "S12LE"), "unsupported sample format 'S12LE'"),
])
def test_audio_format_checks(fmt, problem):
    from emotion_ros.nodes.voice import AudioFormat
    coding, rate, ch, sf = fmt
    got = AudioFormat(rate, ch, sf, coding).problem()
    if problem is None:
        assert got is None
    else:
        assert got is not None and problem in got


def test_voice_message_unsure_below_threshold():
    """VoiceEmotion.unsure follows the best calibrated probability against unsure_threshold (0: never)."""
    from emotion_ros.core.voice.pipeline import VoiceResult
    from emotion_ros.nodes.voice import PARAMS, VoiceNode

    flat = np.full(len(LABELS), 1.0 / len(LABELS), np.float32)
    sure = np.eye(len(LABELS), dtype=np.float32)[3] * 0.9 + 0.1 / len(LABELS)
    for probs, threshold, unsure in ((flat, 0.4, True), (sure, 0.4, False), (flat, 0.0, False)):
        r = VoiceResult(1.0, 2.0, probs, np.zeros(4, np.float32), False, 0.9)
        m = VoiceNode.to_message(r, "mic", True, threshold)
        assert m.unsure is unsure and m.emotion == LABELS[int(np.argmax(probs))]
    assert 0.0 < PARAMS["unsure_threshold"][0] < 1.0

"""fusion_node as a real process on a real ROS graph: faces + voice in, EmotionState out."""
import os
import random
import signal
import subprocess
import sys
import time

os.environ.setdefault("ROS_DOMAIN_ID", str(random.randint(1, 200)))
os.environ.setdefault("ROS_HOME", f"/tmp/emotion_ros-test-roshome-{os.getpid()}")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.node import Node  # noqa: E402

from rosgraph_msgs.msg import Clock  # noqa: E402

from emotion_msgs.msg import EmotionState, FaceEmotion, FaceEmotionArray, VoiceEmotion  # noqa: E402
from emotion_ros.core.fusion import ARCH, FusionModel, FusionNet  # noqa: E402
from emotion_ros.core.labels import INDEX, LABELS, valence_arousal  # noqa: E402
from emotion_ros.core.modelio import save_checkpoint  # noqa: E402
from emotion_ros.ros.convert import sec_to_stamp, stamp_to_sec  # noqa: E402
from emotion_ros.ros.node_utils import reliable_qos  # noqa: E402

PKG_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FACE_DIM, VOICE_DIM, HIDDEN = 16, 8, 8
RNG = np.random.default_rng(1)
EMB = {"p1": RNG.normal(size=FACE_DIM).astype(np.float32), "p2": RNG.normal(size=FACE_DIM).astype(np.float32)}
VOICE_EMB = RNG.normal(size=VOICE_DIM).astype(np.float32)


def onehot(label, p=0.85):
    v = np.full(len(LABELS), (1 - p) / (len(LABELS) - 1), np.float32)
    v[INDEX[label]] = p
    return v


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    torch.manual_seed(3)
    path = str(tmp_path_factory.mktemp("fusion_node") / "fusion.pt")
    save_checkpoint(path, kind="fusion", arch=ARCH, model=FusionNet(FACE_DIM, VOICE_DIM, HIDDEN),
                    input_spec={"face_dim": FACE_DIM, "voice_dim": VOICE_DIM}, config={"model": {"hidden": HIDDEN}})
    return path


@pytest.fixture
def launch():
    procs = []

    def start(*ros_args):
        env = dict(os.environ, PYTHONPATH=PKG_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
                   PYTHONUNBUFFERED="1")
        p = subprocess.Popen([sys.executable, "-m", "emotion_ros.nodes.fusion", "--ros-args", *ros_args],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        procs.append(p)
        return p
    yield start
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGINT)
            try:
                p.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.communicate()


class Peer:
    """The test's side of the graph: publishes faces and voice, records states and diagnostics."""

    def __init__(self, ctx, ns, sim_start=None):
        self.node = Node(f"fusion_test_peer_{os.getpid()}", namespace=ns, context=ctx)
        # sim_start: drive a simulated clock on /clock (as a bag player does) starting at that time
        self.sim_t = sim_start
        self._wall = time.monotonic()
        self.pub_clock = self.node.create_publisher(Clock, "/clock", 10) if sim_start is not None else None
        self.pub_faces = self.node.create_publisher(FaceEmotionArray, "emotion/faces", reliable_qos(10))
        self.pub_voice = self.node.create_publisher(VoiceEmotion, "emotion/voice", reliable_qos(10))
        self.state, self.states, self.diag = [], [], []
        self.node.create_subscription(EmotionState, "emotion/state", self.state.append, reliable_qos(50))
        self.node.create_subscription(EmotionState, "emotion/states", self.states.append, reliable_qos(50))
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self.diag.append, 10)
        self.ex = SingleThreadedExecutor(context=ctx)
        self.ex.add_node(self.node)
        self.sent_face_stamps, self.sent_voice_ends = [], []

    def now(self):
        if self.sim_t is not None:
            return self.sim_t
        return self.node.get_clock().now().nanoseconds * 1e-9

    def _tick_clock(self):
        if self.pub_clock is not None:
            w = time.monotonic()
            self.sim_t += w - self._wall
            self._wall = w
            self.pub_clock.publish(Clock(clock=sec_to_stamp(self.sim_t)))

    def spin_for(self, seconds):
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self._tick_clock()
            self.ex.spin_once(timeout_sec=0.01)

    def spin_until(self, pred, timeout):
        end = time.monotonic() + timeout
        while not pred() and time.monotonic() < end:
            self._tick_clock()
            self.ex.spin_once(timeout_sec=0.02)
        return pred()

    def send_faces(self, faces, dim=FACE_DIM):
        t = self.now()
        msg = FaceEmotionArray()
        msg.header.stamp = sec_to_stamp(t)
        msg.header.frame_id = "camera_optical"
        msg.image_width, msg.image_height = 640, 480
        for pid, size, label in faces:
            f = FaceEmotion(id=pid, x=10, y=10, width=size, height=size, detection_confidence=0.9,
                            emotion=label, confidence=0.85)
            f.labels = list(LABELS)
            f.probabilities = onehot(label).tolist()
            f.embedding = (EMB[pid] if dim == FACE_DIM else np.zeros(dim, np.float32)).tolist()
            msg.faces.append(f)
        self.pub_faces.publish(msg)
        self.sent_face_stamps.append(stamp_to_sec(msg.header.stamp))

    def send_voice(self, label="angry", length=0.4, p=0.85):
        t = self.now()
        msg = VoiceEmotion(voice_activity=True, speech_ratio=0.9, partial=True, emotion=label, confidence=p)
        msg.header.stamp = msg.end = sec_to_stamp(t)
        msg.start = sec_to_stamp(t - length)
        msg.labels = list(LABELS)
        msg.probabilities = onehot(label, p).tolist()
        msg.embedding = VOICE_EMB.tolist()
        self.pub_voice.publish(msg)
        self.sent_voice_ends.append(stamp_to_sec(msg.end))

    def stream(self, seconds, faces=None, voice=True, period=0.05, voice_label="angry", voice_p=0.85):
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            if faces:
                self.send_faces(faces)
            if voice:
                self.send_voice(voice_label, p=voice_p)
            self.spin_for(period)

    def matched(self):
        return (self.pub_faces.get_subscription_count() >= 1 and self.pub_voice.get_subscription_count() >= 1
                and self.node.count_publishers(f"{self.node.get_namespace()}/emotion/state") >= 1)

    def close(self):
        self.ex.shutdown()
        self.node.destroy_node()


def test_fused_states_then_voice_only_when_faces_stop(ctx, launch, model_file):
    ns = f"/fus{os.getpid()}"
    # the shipped parameter file, some values overridden: smoothing and hysteresis off, so that every state is the
    # model's output of that moment (with the shipped hysteresis, a first state computed before both modalities
    # arrived, as on a loaded machine, may hold its emotion against this random model's small leads)
    proc = launch("-r", f"__ns:={ns}", "--params-file", os.path.join(PKG_ROOT, "config", "emotion.yaml"),
                  "-p", f"model_path:={model_file}", "-p", "device:=cpu", "-p", "fusion_mode:=model",
                  "-p", "model_min_weight:=0.0", "-p", "smoothing_tau_s:=0.0", "-p", "rate:=20.0",
                  "-p", "switch_margin:=0.0", "-p", "min_dwell_s:=0.0", "-p", "voice_switch_margin:=0.0")
    peer = Peer(ctx, ns)
    try:
        assert peer.spin_until(peer.matched, 30), "fusion_node did not come up"
        peer.stream(1.0, faces=[("p1", 200, "happy"), ("p2", 80, "sad")])
        assert peer.state, "no EmotionState on emotion/state"
        s = peer.state[-1]
        assert s.person_id == "p1" and s.primary and s.header.frame_id == "camera_optical"
        assert list(s.labels) == list(LABELS) and len(s.probabilities) == len(LABELS)
        p = np.asarray(s.probabilities)
        assert p.sum() == pytest.approx(1.0, abs=1e-4) and s.emotion == LABELS[int(np.argmax(p))]
        assert s.confidence == pytest.approx(p.max(), abs=1e-6)
        assert (s.valence, s.arousal) == pytest.approx(valence_arousal(p), abs=1e-5)
        assert s.face_weight > 0 and s.voice_weight > 0
        assert s.face_weight + s.voice_weight == pytest.approx(1.0, abs=1e-5)
        # model-level fusion of the two embeddings (smoothing off: exactly the model's output)
        expect = FusionModel(model_file, "cpu").predict(EMB["p1"], VOICE_EMB)
        np.testing.assert_allclose(p, expect, atol=1e-5)
        # the stamp is that of the newest evidence sent, not the node's clock
        stamp = stamp_to_sec(s.header.stamp)
        assert min(abs(stamp - t) for t in peer.sent_face_stamps + peer.sent_voice_ends) < 1e-6
        others = [m for m in peer.states if m.person_id == "p2"]
        assert others and not others[-1].primary and others[-1].voice_weight == 0.0
        assert others[-1].face_weight == 1.0

        # the faces stop, the voice goes on: within ~stale_s the state is voice-only
        t_stop = time.monotonic()
        n0 = len(peer.state)
        deadline = t_stop + 3.0
        while time.monotonic() < deadline:
            peer.stream(0.1, faces=None)
            new = peer.state[n0:]
            if new and new[-1].face_weight == 0.0:
                break
        last = peer.state[-1]
        assert last.face_weight == 0.0 and last.voice_weight == 1.0, (last.face_weight, last.voice_weight)
        assert last.person_id == "" and last.primary and last.header.frame_id == ""
        waited = time.monotonic() - t_stop
        assert waited < 2.5, f"voice-only after {waited:.2f} s (stale_s = 1.0)"
        np.testing.assert_allclose(np.asarray(last.probabilities),
                                   FusionModel(model_file, "cpu").predict(None, VOICE_EMB), atol=1e-5)
        # the faces come back: both modalities again
        n1 = len(peer.state)
        peer.stream(0.5, faces=[("p1", 200, "happy")])
        assert any(m.face_weight > 0 and m.voice_weight > 0 and m.person_id == "p1" for m in peer.state[n1:])
        # diagnostics name the per-modality input rates and staleness
        assert peer.spin_until(lambda: any(
            "fusion_node" in st.name for a in peer.diag for st in a.status), 5)
        st = [st for a in peer.diag for st in a.status if "fusion_node" in st.name][-1]
        kv = {k.key: k.value for k in st.values}
        assert float(kv["face_input_rate_hz"]) > 5 and float(kv["voice_input_rate_hz"]) > 5
        assert "face_age_s" in kv and "voice_age_s" in kv and "processing_ms_p50" in kv
    finally:
        peer.close()
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=15)
    assert proc.returncode == 0, out
    assert "Traceback" not in out, out


def test_on_change_publishing_under_sim_time(ctx, launch, model_file):
    """Replayed-bag conditions: stamps and /clock at t = 1000 s; the node judges freshness on its (sim) clock.

    A slow steady rate (one state per 5 s): states within 0.5 s of each change must come from publish_on_change."""
    ns = f"/fuschg{os.getpid()}"
    proc = launch("-r", f"__ns:={ns}", "-p", f"model_path:={model_file}", "-p", "device:=cpu",
                  "-p", "fusion_mode:=model", "-p", "min_dwell_s:=0.0", "-p", "switch_margin:=0.0",
                  "-p", "face_stale_s:=0.0",  # legacy: the newest face alone (no averaging over 0.4 s)
                  "-p", "smoothing_tau_s:=0.0", "-p", "rate:=0.2", "-p", "use_sim_time:=true",
                  "-p", "publish_on_face:=false")  # else every face array is published anyway
    peer = Peer(ctx, ns, sim_start=1000.0)
    try:
        assert peer.spin_until(lambda: peer.matched() and peer.pub_clock.get_subscription_count() >= 1, 30), \
            "fusion_node did not come up"
        peer.spin_for(0.5)  # let the node's clock catch up with /clock
        peer.send_faces([("p1", 200, "happy")], dim=5)  # wrong embedding size: warned, probabilities used
        assert peer.spin_until(lambda: len(peer.state) >= 1, 5), "no state after the first face"
        assert peer.state[-1].emotion == "happy"
        for label in ("sad", "happy", "sad"):
            n = len(peer.state)
            peer.send_faces([("p1", 200, label)], dim=5)
            assert peer.spin_until(lambda: len(peer.state) > n and peer.state[-1].emotion == label, 0.5), label
            assert peer.state[-1].face_weight == 1.0
            assert abs(stamp_to_sec(peer.state[-1].header.stamp) - peer.sent_face_stamps[-1]) < 1e-6
    finally:
        peer.close()
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=15)
    assert "face embedding has 5 values" in out and "using the face probabilities" in out, out


def test_missing_model_file_exits_non_zero_naming_it(launch, tmp_path):
    missing = str(tmp_path / "no_such_dir" / "fusion_missing.pt")
    proc = launch("-p", f"model_path:={missing}", "-p", "fusion_mode:=model")
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode != 0, out
    assert missing in out, out


def test_average_mode_needs_no_model_file_and_discounts_a_near_chance_voice(ctx, launch, tmp_path):
    """The shipped fusion_mode (average): no fusion.pt needed; a voice near chance does not pull a confident face."""
    ns = f"/fusavg{os.getpid()}"
    missing = str(tmp_path / "fusion_missing.pt")
    proc = launch("-r", f"__ns:={ns}", "--params-file", os.path.join(PKG_ROOT, "config", "emotion.yaml"),
                  "-p", f"model_path:={missing}", "-p", "fusion_mode:=average", "-p", "rate:=20.0")
    peer = Peer(ctx, ns)
    try:
        assert peer.spin_until(peer.matched, 30), "fusion_node did not come up without a model file"
        peer.stream(1.5, faces=[("p1", 200, "happy")], voice_label="sad", voice_p=0.2)
        assert peer.state, "no EmotionState on emotion/state"
        s = peer.state[-1]
        assert s.person_id == "p1" and s.emotion == "happy"
        assert s.face_weight > 0.8 and 0 < s.voice_weight < 0.2
    finally:
        peer.close()
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=15)
    assert proc.returncode == 0, out
    assert "reliability-weighted average" in out and "Traceback" not in out, out

"""ROS4HRI (REP-155) output over real DDS, plus its pure-Python core.

The graph: the single-process runner (face, voice and fusion nodes, shipped models, ``hri: true`` for the face and
fusion nodes) in another process; this process publishes camera images of a real face (a photo of
../shared/data/face_photos when present, else the benchmark's scene of matplotlib's portrait) and speech, and plays
the part of a person manager (hri_person_manager is C++ and not installable here): for each face on
``/humans/faces/tracked`` it announces a person on ``/humans/persons/tracked`` with a latched
``/humans/persons/<id>/face_id``, as REP-155 describes.  Checked: the topics and their types, the ids of
``/humans/faces/tracked`` against emotion/faces frame by frame, Expression/ROI/cropped headers against the image
stamps, the expression strings against hri_msgs/Expression's constants, valence/arousal/confidence ranges and values,
the fused per-person expression against emotion/states, and the per-face and per-person topics going away when
their id leaves tracking.
"""
from __future__ import annotations

import glob
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml

from robust_helpers import PKG_ROOT, Graph, face_scene, node_env, sec_stamp, speech  # noqa: E402

from audio_common_msgs.msg import AudioDataStamped, AudioInfo  # noqa: E402
from emotion_msgs.msg import EmotionState, FaceEmotionArray  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from std_msgs.msg import String  # noqa: E402

from emotion_ros import paths  # noqa: E402
from emotion_ros.core.errors import InputError  # noqa: E402
from emotion_ros.core.hri import (CROP_SIZE, IdSet, crop_face, expression_of, face_topic, normalized_roi,  # noqa: E402
                                  person_topic, valid_id)
from emotion_ros.core.labels import HRI_EXPRESSION, LABELS, VALENCE_AROUSAL, valence_arousal  # noqa: E402
from emotion_ros.ros.convert import float_to_pcm, image_to_numpy, numpy_to_image  # noqa: E402
from emotion_ros.ros.node_utils import latched_qos, reliable_qos  # noqa: E402

hri_msgs = pytest.importorskip("hri_msgs.msg", reason="hri_msgs is not built (make setup)")
Expression, IdsList, NormalizedRegionOfInterest2D = (hri_msgs.Expression, hri_msgs.IdsList,
                                                     hri_msgs.NormalizedRegionOfInterest2D)
EXPRESSION_CONSTANTS = {v for k, v in vars(Expression).items() if k.isupper() and isinstance(v, str)}

MODELS = [paths.model_path(n) for n in ("face.pt", "voice.pt", "fusion.pt")]
PHOTOS = sorted(glob.glob(os.path.join(os.path.dirname(PKG_ROOT), "..", "shared", "data", "face_photos", "*",
                                       "*.jpg")))


# ---------------------------------------------------------------------------------------------------------------
# core (no ROS)
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("label", LABELS)
def test_expression_of_a_sure_label_is_its_constant_and_circumplex_point(label):
    p = np.zeros(len(LABELS), np.float32)
    p[LABELS.index(label)] = 1.0
    e = expression_of(p)
    assert e.expression == HRI_EXPRESSION[label] and e.expression in EXPRESSION_CONSTANTS
    assert e.confidence == pytest.approx(1.0)
    assert (e.valence, e.arousal) == pytest.approx(VALENCE_AROUSAL[label])


def test_expression_of_mixture_weighs_the_table_and_keeps_ranges():
    p = np.array([0.1, 0.5, 0.1, 0.1, 0.1, 0.05, 0.05], np.float32)
    e = expression_of(p)
    assert e.expression == "happy" and e.confidence == pytest.approx(0.5)
    assert (e.valence, e.arousal) == pytest.approx(valence_arousal(p), abs=1e-6)
    held = expression_of(p, "neutral")  # fusion's hysteresis may hold a label that is not the top one
    assert held.expression == "neutral" and held.confidence == pytest.approx(0.1)
    rng = np.random.default_rng(0)
    for _ in range(200):
        e = expression_of(rng.dirichlet(np.ones(len(LABELS)) * 0.3))
        assert -1 <= e.valence <= 1 and -1 <= e.arousal <= 1 and 0 <= e.confidence <= 1
    for bad in ([0.5] * 3, [np.nan] * 7, [0.0] * 7, [-1, 1, 1, 0, 0, 0, 0]):
        with pytest.raises(InputError):
            expression_of(bad)
    with pytest.raises(InputError):
        expression_of(p, "bored")


def test_roi_crop_ids_and_topic_names():
    assert normalized_roi((160, 120, 320, 240), 640, 480) == pytest.approx((0.25, 0.25, 0.75, 0.75))
    assert normalized_roi((-10, -10, 700, 100), 640, 480) == pytest.approx((0.0, 0.0, 1.0, 90 / 480))
    with pytest.raises(InputError):
        normalized_roi((0, 0, 1, 1), 0, 480)
    frame = np.full((480, 640, 3), 200, np.uint8)
    crop = crop_face(frame, (100, 50, 200, 100))  # wide box: scaled to 128 x 64, centred, zero rows around
    assert crop.shape == (CROP_SIZE, CROP_SIZE, 3) and crop.dtype == np.uint8
    assert crop[:30].max() == 0 and crop[-30:].max() == 0 and crop[40:88].min() == 200
    assert crop_face(frame[..., 0], (600, 400, 200, 200)).shape == (CROP_SIZE, CROP_SIZE)  # clipped to the frame
    ids = IdSet()
    assert ids.update(["face_1", "face_2"]) == (["face_1", "face_2"], [])
    assert ids.update(["face_2", "face_3", "face_3"]) == (["face_3"], ["face_1"])
    assert ids.clear() == ["face_2", "face_3"] and ids.ids == []
    assert face_topic("face_1", "expression") == "/humans/faces/face_1/expression"
    assert person_topic("anon_x1", "expression") == "/humans/persons/anon_x1/expression"
    assert valid_id("f00012") and not valid_id("1abc") and not valid_id("a-b") and not valid_id("")
    with pytest.raises(InputError):
        face_topic("a/b", "roi")


# ---------------------------------------------------------------------------------------------------------------
# the graph over DDS
# ---------------------------------------------------------------------------------------------------------------

def face_frame() -> np.ndarray:
    """640x480 BGR frame with one real face."""
    import cv2
    for path in PHOTOS:
        photo = cv2.imread(path, cv2.IMREAD_COLOR)
        if photo is not None:
            photo = cv2.resize(photo, (400, 400), interpolation=cv2.INTER_LINEAR)
            frame = np.full((480, 640, 3), 90, np.uint8)
            frame[40:440, 120:520] = photo
            return frame
    return face_scene(1)


class PersonManagerStandIn:
    """What a REP-155 person manager publishes for faces it has not identified: one (anonymous) person per tracked
    face, ``/humans/persons/tracked`` and the latched ``/humans/persons/<id>/face_id``."""

    def __init__(self, graph: Graph):
        self.graph = graph
        self.tracked_pub = graph.node.create_publisher(IdsList, "/humans/persons/tracked", reliable_qos(1))
        self.face_id_pubs = {}
        self.person_of = {}

    def update(self, face_ids):
        for fid in face_ids:
            if fid not in self.person_of:
                pid = f"anon_{fid}"
                self.person_of[fid] = pid
                pub = self.graph.node.create_publisher(String, person_topic(pid, "face_id"), latched_qos())
                pub.publish(String(data=fid))
                self.face_id_pubs[pid] = pub
        msg = IdsList()
        msg.header.stamp = self.graph.node.get_clock().now().to_msg()
        msg.ids = [self.person_of[f] for f in face_ids]
        self.tracked_pub.publish(msg)


def _stamp_key(stamp) -> int:
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


@pytest.fixture(scope="module")
def params_file(tmp_path_factory):
    with open(paths.config_path("emotion.yaml")) as f:
        cfg = yaml.safe_load(f)
    cfg["face_node"]["ros__parameters"]["hri"] = True
    cfg["fusion_node"]["ros__parameters"]["hri"] = True
    path = tmp_path_factory.mktemp("hri") / "emotion_hri.yaml"
    with open(path, "w") as f:
        yaml.safe_dump(cfg, f)
    return str(path)


@pytest.fixture(scope="module")
def graph():
    g = Graph("hri_tester")
    yield g
    g.close()


@pytest.fixture(scope="module")
def pipeline_proc(tmp_path_factory, params_file):
    if not all(os.path.isfile(m) for m in MODELS):
        pytest.skip("the shipped models are not there")
    log = tmp_path_factory.mktemp("hri_log") / "pipeline.log"
    with open(log, "w") as f:
        proc = subprocess.Popen(
            [sys.executable, "-m", "emotion_ros.nodes.pipeline", "--no-camera", "--no-microphone", "--no-behaviour",
             "--device", "cpu", "--params-file", params_file],
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


@pytest.fixture(scope="module")
def run(graph, pipeline_proc):
    """Feed the graph a face and speech until the fused per-person expression has seen the voice; return what came
    back, keyed for the checks."""
    img_pub = graph.publisher("image_raw", Image, reliable_qos(2))
    audio_pub = graph.publisher("audio", AudioDataStamped, reliable_qos(50))
    info_pub = graph.publisher("audio_info", AudioInfo, latched_qos())
    faces = graph.subscribe("emotion/faces", FaceEmotionArray, reliable_qos(200))
    states = graph.subscribe("emotion/states", EmotionState, reliable_qos(500))
    tracked = graph.subscribe("/humans/faces/tracked", IdsList, reliable_qos(200))
    up = graph.spin_until(lambda: (graph.node.count_subscribers("image_raw") > 0
                                   and graph.node.count_subscribers("audio") > 0
                                   and graph.node.count_publishers("/humans/faces/tracked") > 0
                                   and graph.node.count_subscribers("/humans/persons/tracked") > 0)
                          or pipeline_proc.poll() is not None, 180)
    assert up and pipeline_proc.poll() is None, f"graph did not come up:\n{_output(pipeline_proc)}"

    pm = PersonManagerStandIn(graph)
    rate = 16000
    wave, _ = speech(rate)
    info_pub.publish(AudioInfo(channels=1, sample_rate=rate, sample_format="S16LE", bitrate=rate * 16,
                               coding_format="wave"))
    frame = face_frame()
    sent = {}                        # stamp key -> image stamp (builtin_interfaces/Time)
    expressions, rois, crops, person_expr = {}, {}, [], {}   # face id / person id -> messages
    chunk, pos, t0 = rate // 50, 0, time.time()
    next_frame = time.monotonic()
    deadline = time.monotonic() + 75

    def fused_with_voice():
        by_key = {(m.person_id, _stamp_key(m.header.stamp)): m for _, m in list(states)}
        face_of = {p: f for f, p in pm.person_of.items()}
        return [(pid, e) for pid, msgs in person_expr.items() for e in list(msgs)
                if by_key.get((face_of[pid], _stamp_key(e.header.stamp))) is not None
                and by_key[(face_of[pid], _stamp_key(e.header.stamp))].voice_weight > 0]

    while time.monotonic() < deadline and pipeline_proc.poll() is None:
        now = time.monotonic()
        if now >= next_frame:
            msg = numpy_to_image(frame, "bgr8", stamp=time.time(), frame_id="camera")
            sent[_stamp_key(msg.header.stamp)] = msg.header.stamp
            img_pub.publish(msg)
            next_frame += 0.1
            if tracked:
                ids = list(tracked[-1][1].ids)
                for fid in ids:  # subscribe each face's topics as it appears (what libhri does)
                    graph.subscribe(face_topic(fid, "expression"), Expression, reliable_qos(200),
                                    store=expressions.setdefault(fid, []), raw=True)
                    graph.subscribe(face_topic(fid, "roi"), NormalizedRegionOfInterest2D, reliable_qos(200),
                                    store=rois.setdefault(fid, []), raw=True)
                    graph.subscribe(face_topic(fid, "cropped"), Image, reliable_qos(5), store=crops, raw=True)
                pm.update(ids)
                for fid in ids:
                    pid = pm.person_of[fid]
                    graph.subscribe(person_topic(pid, "expression"), Expression, reliable_qos(200),
                                    store=person_expr.setdefault(pid, []), raw=True)
        if pos < wave.size:
            a = AudioDataStamped()
            a.header.stamp = sec_stamp(t0 + pos / rate)
            a.audio.data = float_to_pcm(wave[pos:pos + chunk], "S16LE")
            audio_pub.publish(a)
            pos += chunk
        graph.spin_for(0.02)
        if pos >= wave.size and sum(map(len, expressions.values())) >= 10 and crops and fused_with_voice():
            break
    assert pipeline_proc.poll() is None, f"graph died:\n{_output(pipeline_proc)}"
    with graph.lock:
        return {"sent": sent, "faces": [m for _, m in faces], "tracked": [m for _, m in tracked],
                "states": [m for _, m in states], "expressions": {k: list(v) for k, v in expressions.items()},
                "rois": {k: list(v) for k, v in rois.items()}, "crops": list(crops),
                "person_expr": {k: list(v) for k, v in person_expr.items()}, "person_of": dict(pm.person_of),
                "pm": pm, "fused_with_voice": fused_with_voice(),
                "topics": dict(graph.node.get_topic_names_and_types())}


def test_hri_topics_exist_with_their_types(run):
    topics = run["topics"]
    assert run["tracked"], "nothing on /humans/faces/tracked"
    fid = run["tracked"][-1].ids[0]
    pid = run["person_of"][fid]
    want = {"/humans/faces/tracked": "hri_msgs/msg/IdsList",
            face_topic(fid, "expression"): "hri_msgs/msg/Expression",
            face_topic(fid, "roi"): "hri_msgs/msg/NormalizedRegionOfInterest2D",
            face_topic(fid, "cropped"): "sensor_msgs/msg/Image",
            person_topic(pid, "expression"): "hri_msgs/msg/Expression"}
    for topic, typ in want.items():
        assert typ in topics.get(topic, []), f"{topic}: {topics.get(topic)}"


def test_tracked_ids_match_face_emotion_array_frame_by_frame(run):
    tracked = {_stamp_key(m.header.stamp): m for m in run["tracked"]}
    with_faces = [f for f in run["faces"] if f.faces]
    assert len(with_faces) >= 5, "the face was not found"
    paired = 0
    for f in with_faces:
        key = _stamp_key(f.header.stamp)
        assert key in run["sent"], "emotion/faces stamp is not an image stamp"
        t = tracked.get(key)
        if t is None:
            continue  # keep-last-1 topic: a sample may be replaced before a busy reader takes it
        paired += 1
        assert t.header.frame_id == f.header.frame_id == "camera"
        ids = [fe.id for fe in f.faces]
        assert set(ids) <= set(t.ids)  # tracked also lists faces missed for a few frames
    assert paired >= max(5, len(with_faces) // 2), f"/humans/faces/tracked for {paired} of {len(with_faces)} frames"
    assert all(k in run["sent"] for k in tracked), "a /humans/faces/tracked stamp is not an image stamp"
    # one steady face: the same single id in both
    last = [f for f in with_faces if _stamp_key(f.header.stamp) in tracked][-1]
    assert list(tracked[_stamp_key(last.header.stamp)].ids) == [last.faces[0].id]


def test_face_expressions_are_stamped_with_their_images_and_well_formed(run):
    faces = {_stamp_key(f.header.stamp): {fe.id: fe for fe in f.faces} for f in run["faces"]}
    assert sum(map(len, run["expressions"].values())) >= 10
    compared = 0
    for fid, msgs in run["expressions"].items():
        for e in msgs:
            key = _stamp_key(e.header.stamp)
            assert key in run["sent"], "Expression stamp is not an image stamp"
            assert e.header.frame_id == "camera"
            assert e.expression in EXPRESSION_CONSTANTS
            assert -1 <= e.valence <= 1 and -1 <= e.arousal <= 1 and 0 <= e.confidence <= 1
            # the same face in the same frame of emotion/faces: same label, calibrated top probability, circumplex
            fe = faces.get(key, {}).get(fid)
            if fe is None:
                continue
            compared += 1
            assert e.expression == HRI_EXPRESSION[fe.emotion]
            assert e.confidence == pytest.approx(fe.confidence, abs=1e-5)
            assert (e.valence, e.arousal) == pytest.approx(valence_arousal(np.asarray(fe.probabilities)), abs=1e-5)
    assert compared >= 5
    for fid, msgs in run["rois"].items():
        assert msgs, f"no roi for {fid}"
        for r in msgs:
            assert _stamp_key(r.header.stamp) in run["sent"]
            fe = faces.get(_stamp_key(r.header.stamp), {}).get(fid)
            if fe is None:
                continue
            assert 0 <= r.xmin < r.xmax <= 1 and 0 <= r.ymin < r.ymax <= 1 and 0 <= r.c <= 1
            assert (r.xmin, r.ymin, r.xmax, r.ymax) == pytest.approx(
                (fe.x / 640, fe.y / 480, (fe.x + fe.width) / 640, (fe.y + fe.height) / 480), abs=1e-4)
    assert run["crops"], "no /cropped image while subscribed"
    c = run["crops"][-1]
    assert (c.width, c.height, c.encoding) == (CROP_SIZE, CROP_SIZE, "bgr8")
    assert _stamp_key(c.header.stamp) in run["sent"]
    assert image_to_numpy(c, "bgr8").std() > 10  # a face, not padding


def test_fused_person_expression_is_the_fusion_nodes_state(run):
    assert any(run["person_expr"].values()), "nothing on /humans/persons/<id>/expression"
    # several states can carry the same stamp (the newest evidence; re-estimated at a later time, e.g. the timer)
    states = {}
    for st in run["states"]:
        states.setdefault((st.person_id, _stamp_key(st.header.stamp)), []).append(st)
    face_of = {p: f for f, p in run["person_of"].items()}
    matched = 0
    for pid, msgs in run["person_expr"].items():
        for e in msgs:
            assert e.expression in EXPRESSION_CONSTANTS
            assert -1 <= e.valence <= 1 and -1 <= e.arousal <= 1 and 0 <= e.confidence <= 1
            same = states.get((face_of[pid], _stamp_key(e.header.stamp)), [])
            if not same:
                continue  # that EmotionState came before our subscription matched
            matched += 1
            assert any(e.expression == HRI_EXPRESSION[s.emotion] and e.header.frame_id == s.header.frame_id
                       and (e.confidence, e.valence, e.arousal) == pytest.approx((s.confidence, s.valence, s.arousal),
                                                                                  abs=1e-5) for s in same), \
                (e, same)
    assert matched >= 1
    assert run["fused_with_voice"], "no fused person expression with the voice in it"


def test_face_and_person_topics_go_away_with_their_ids(run, graph, pipeline_proc):
    fid = run["tracked"][-1].ids[0]
    pid = run["person_of"][fid]
    # the person manager's last word in the run may have been an empty list (a frame whose tracked ids were empty
    # on a loaded machine): start from the person tracked, as a manager says while the face is there
    run["pm"].update([fid])
    assert graph.spin_until(lambda: graph.node.count_publishers(person_topic(pid, "expression")) == 1, 20)
    img_pub = graph.publisher("image_raw", Image, reliable_qos(2))
    blank = np.full((480, 640, 3), 90, np.uint8)
    tracked = graph.received["/humans/faces/tracked"]

    def face_gone():
        return (tracked and not tracked[-1][1].ids
                and graph.node.count_publishers(face_topic(fid, "expression")) == 0
                and graph.node.count_publishers(face_topic(fid, "roi")) == 0)
    end = time.monotonic() + 30
    while not face_gone() and time.monotonic() < end and pipeline_proc.poll() is None:
        img_pub.publish(numpy_to_image(blank, "bgr8", stamp=time.time(), frame_id="camera"))
        graph.spin_for(0.1)
    assert face_gone(), f"face {fid} still tracked or its topics still published"
    # the face going does not end the person (that is the person manager's call) ...
    assert graph.node.count_publishers(person_topic(pid, "expression")) == 1
    # ... and when the person manager drops the person, its expression topic goes too
    run["pm"].update([])
    assert graph.spin_until(lambda: graph.node.count_publishers(person_topic(pid, "expression")) == 0, 20)
    pipeline_proc.send_signal(signal.SIGINT)
    assert pipeline_proc.wait(timeout=30) == 0, _output(pipeline_proc)

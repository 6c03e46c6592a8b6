"""emotion-bag evaluate: raw bags through the real core (face / voice / fusion), recorded outputs with figures
checked against an independent computation, and the errors."""

import json
import os
import shutil
import subprocess

import cv2
import numpy as np
import pytest
import soundfile as sf
import torch

from emotion_ros.core.labels import LABELS
from emotion_ros.core.modelio import save_checkpoint
from emotion_ros.tools.bag import main as bag_main
from emotion_ros.tools.bag_common import BagWriter, typestore

PKG_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REQUIRED = ("accuracy", "macro_f1", "n_spans", "detection_delay_s", "flips_per_min")


# ---------------------------------------------------------------------------------------------------------------
# Small real checkpoints (trained models may not exist yet; these go through the same loaders)
# ---------------------------------------------------------------------------------------------------------------

def make_models(d):
    from emotion_ros.core.face.model import ARCH as FACE_ARCH, DEFAULT_INPUT, FaceCNN
    from emotion_ros.core.fusion_model import ARCH as FUSION_ARCH, FusionNet
    from emotion_ros.core.voice.features import FeatureSpec
    from emotion_ros.core.voice.model import ARCH as VOICE_ARCH, SpeechCNNBiLSTM

    torch.manual_seed(0)
    face = FaceCNN(widths=(8, 16), embed_dim=32)
    save_checkpoint(str(d / "face.pt"), kind="face", arch=FACE_ARCH, model=face, input_spec=dict(DEFAULT_INPUT),
                    config={"model": {"widths": [8, 16], "embed_dim": 32}})
    cfg = {"conv_channels": [8, 8, 8], "lstm_hidden": 8, "embed_dim": 16}
    voice = SpeechCNNBiLSTM(n_mels=64, conv_channels=(8, 8, 8), lstm_hidden=8, embed_dim=16)
    save_checkpoint(str(d / "voice.pt"), kind="voice", arch=VOICE_ARCH, model=voice,
                    input_spec={"features": FeatureSpec().to_dict(), "mean": [0.0] * 64, "std": [1.0] * 64,
                                "min_seconds": 0.3}, config={"model": cfg})
    fusion = FusionNet(32, 16, 8)
    save_checkpoint(str(d / "fusion.pt"), kind="fusion", arch=FUSION_ARCH, model=fusion,
                    input_spec={"face_dim": 32, "voice_dim": 16}, config={"model": {"hidden": 8}})
    return {k: str(d / f"{k}.pt") for k in ("face", "voice", "fusion")}


def make_video(path, seconds=4, fps=8, size=(200, 160)):
    """Grace Hopper's portrait (matplotlib sample data) moving across a grey frame."""
    import matplotlib.cbook as cbook
    img = cv2.imread(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
    face = cv2.resize(img, (100, 125))
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, size)
    n = seconds * fps
    for i in range(n):
        f = np.full((size[1], size[0], 3), 100, np.uint8)
        x = int(50 + 40 * np.sin(i / 6.0))
        f[15:140, x:x + 100] = face
        w.write(f)
    w.release()
    return n


def make_audio(path, seconds=4):
    """Speech from espeak-ng (if installed) at 0.3 s and 2.1 s, else two harmonic tones; silence between."""
    sr = 22050
    out = np.zeros(int(seconds * sr), np.float32)
    exe = shutil.which("espeak-ng")
    for start, text in ((0.3, "I am really happy to see you"), (2.1, "that is such sad news")):
        if exe:
            wav = str(path) + ".tmp.wav"
            subprocess.run([exe, "-w", wav, text], check=True, capture_output=True, timeout=30)
            x, r = sf.read(wav, dtype="float32")
            if r != sr:
                import librosa
                x = librosa.resample(x, orig_sr=r, target_sr=sr)
            os.remove(wav)
        else:
            t = np.arange(int(1.5 * sr)) / sr
            x = 0.2 * sum(np.sin(2 * np.pi * f0 * k * t) / k for k in (1, 2, 3) for f0 in (150,))
        i = int(start * sr)
        x = x[: out.size - i]
        out[i:i + x.size] = x
    sf.write(str(path), out, sr)
    return bool(exe)


@pytest.fixture(scope="module")
def raw_bag(tmp_path_factory):
    d = tmp_path_factory.mktemp("rawbag")
    models = make_models(d)
    n_frames = make_video(d / "v.avi")
    speech = make_audio(d / "a.wav")
    assert bag_main(["from-media", "--video", str(d / "v.avi"), "--audio", str(d / "a.wav"), "--out",
                     str(d / "bag"), "--start-time", "1000"]) == 0
    (d / "labels.csv").write_text("start,end,label\n0,1.5,Happiness\n1.5,3,sad\n3,4,neutral\n3.5,4,contempt\n")
    return {"dir": d, "bag": d / "bag", "labels": d / "labels.csv", "models": models, "frames": n_frames,
            "speech": speech}


def test_evaluate_raw_bag(raw_bag, tmp_path, capsys):
    m = raw_bag["models"]
    out_json, cm_png, tl_png = tmp_path / "r.json", tmp_path / "cm.png", tmp_path / "tl.png"
    # in-process main() (the console script's entry point; test_bag_media runs `python -m` ones): the machine's
    # other jobs make a fresh interpreter's torch/librosa imports slow
    rc = bag_main(["evaluate", str(raw_bag["bag"]), "--labels", str(raw_bag["labels"]), "--json", str(out_json),
                   "--confusion", str(cm_png), "--timeline", str(tl_png), "--face-model", m["face"],
                   "--voice-model", m["voice"], "--fusion-model", m["fusion"]])
    so, se = capsys.readouterr()
    assert rc == 0, se
    last = json.loads(so.strip().splitlines()[-1])  # the last printed line is one JSON object
    assert all(k in last for k in REQUIRED)
    assert "contempt" in se  # the unknown label is reported ...
    rep = json.loads(out_json.read_text())
    assert rep["labels_skipped"] and "contempt" in rep["labels_skipped"][0]  # ... and skipped
    assert rep["mode"] == "raw" and rep["n_spans"] == 3
    assert {k: rep[k] for k in REQUIRED} == {k: last[k] for k in REQUIRED}
    # samples: fusion steps at k * 0.1 s (k >= 1) inside [start, end) of each span
    assert rep["step_s"] == pytest.approx(0.1)
    assert rep["n_samples"] == 14 + 15 + 10 == sum(s["n_samples"] for s in rep["spans"])  # bag ends at 3.98 s
    cm = np.array(rep["confusion"]["counts"])
    assert cm.shape == (7, 8) and cm.sum() == rep["n_samples"]
    assert rep["accuracy"] == pytest.approx(np.trace(cm[:, :7]) / cm.sum(), abs=1e-4)
    assert cm[[LABELS.index("happy"), LABELS.index("sad"), LABELS.index("neutral")]].sum(1).tolist() == [14, 15, 10]
    for key in ("accuracy", "macro_f1", "span_accuracy", "coverage"):
        assert 0.0 <= rep[key] <= 1.0
    for mod in ("face", "voice"):
        assert 0.0 <= rep[mod]["accuracy"] <= 1.0 and 0.0 <= rep[mod]["coverage"] <= 1.0
    assert rep["span_accuracy"] == pytest.approx(sum(s["correct"] for s in rep["spans"]) / 3, abs=1e-4)
    assert rep["n_detected"] + rep["n_undetected"] == 3
    delays = [s["delay_s"] for s in rep["spans"] if s["delay_s"] is not None]
    assert rep["detection_delay_s"] == (pytest.approx(float(np.median(delays)), abs=1e-3) if delays else None)
    for s in rep["spans"]:
        assert s["delay_s"] is None or 0.0 <= s["delay_s"] < s["end"] - s["start"]
    assert rep["flips_per_min"] >= 0.0
    # the labels' own change rate: happy -> sad -> neutral = 2 changes over the labelled 0-3.98 s (clipped to the bag)
    assert rep["n_label_changes"] == 2 and rep["labelled_s"] == pytest.approx(3.98)
    assert rep["label_changes_per_min"] == round(2 / (3.98 / 60), 3) == last["label_changes_per_min"]
    assert rep["flips_to_label_changes"] == round(rep["flips_per_min"] / rep["label_changes_per_min"], 3)
    assert last["flips_to_label_changes"] == rep["flips_to_label_changes"]
    assert "extend beyond the bag" in se  # 3-4 s neutral: the bag ends at 3.98 s
    # the core really ran over every message
    c = rep["counts"]
    assert c["frames"] == c["frames_processed"] == raw_bag["frames"]
    assert c["face_results"] >= 0.8 * raw_bag["frames"]  # Haar finds the moving portrait in most frames
    assert c["audio_chunks"] == 200 and c["voice_results"] >= 1
    assert rep["face"]["coverage"] > 0.5
    assert rep["models"] == {"face": m["face"], "voice": m["voice"], "fusion": m["fusion"]}
    assert rep["speed_x"] > 0 and rep["bag_duration_s"] == pytest.approx(3.98, abs=1e-6)
    for png in (cm_png, tl_png):
        img = cv2.imread(str(png))
        assert img is not None and img.shape[0] > 200 and img.shape[1] > 400
        assert len(np.unique(img.reshape(-1, 3), axis=0)) > 10  # drawn, not blank
    # outputs are never overwritten without --force
    before = out_json.read_text()
    rc = bag_main(["evaluate", str(raw_bag["bag"]), "--labels", str(raw_bag["labels"]), "--json", str(out_json),
                   "--face-model", m["face"], "--voice-model", m["voice"], "--fusion-model", m["fusion"]])
    err = capsys.readouterr().err
    assert rc == 2 and "exists already" in err and "Traceback" not in err
    assert out_json.read_text() == before


def test_evaluate_raw_matches_core_on_one_modality(raw_bag, tmp_path, capsys):
    """Face-only run (voice switched off, late fusion): the per-step face figures equal a FacePipeline run over the
    same decoded frames, fed to TemporalFusion the way the nodes do."""
    from emotion_ros.core.face.model import FaceModel
    from emotion_ros.core.face.pipeline import build_pipeline
    from emotion_ros.core.fusion import TemporalFusion
    from emotion_ros.tools.bag_common import BagFile
    from emotion_ros.tools.bag_evaluate import _load_yaml_params
    from emotion_ros.ros.convert import image_to_numpy

    m = raw_bag["models"]
    out_json = tmp_path / "face_only.json"
    assert bag_main(["evaluate", str(raw_bag["bag"]), "--labels", str(raw_bag["labels"]), "--json", str(out_json),
                     "--face-model", m["face"], "--voice-model", "none", "--fusion-model", "none"]) == 0
    rep = json.loads(out_json.read_text())
    assert rep["counts"]["audio_chunks"] == 0 and rep["models"]["fusion"] is None
    assert any("--voice-model none" in w for w in rep["warnings"])

    p = _load_yaml_params("emotion.yaml", "face_node")
    fm = FaceModel(m["face"], device="cpu", flip_tta=bool(p.get("flip_tta", True)))
    pipe = build_pipeline(fm, p)
    q = _load_yaml_params("emotion.yaml", "fusion_node")
    fusion = TemporalFusion(None, **{k: q[k] for k in ("window_s", "stale_s", "smoothing_tau_s", "forget_s",
                                                      "voice_to") if k in q})
    preds, n_faces = [], 0
    with BagFile(str(raw_bag["bag"])) as bf:
        start = bf.start_ns
        k = 1
        def step_until(t):
            nonlocal k
            while start + round(k * 0.1e9) <= t:
                st = fusion.estimate((start + round(k * 0.1e9)) * 1e-9)
                preds.append((k, LABELS[int(np.argmax(st[0].probs))] if st else "none"))
                k += 1

        for conn, t, raw in bf.messages(bf.connections_for(["image_raw"])):
            step_until(t)
            msg = bf.deserialize(raw, conn.msgtype)
            ts = (msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec) * 1e-9
            for r in pipe.process(image_to_numpy(msg), ts):
                fusion.add_face(ts, r.id, float(r.box[2]) * float(r.box[3]), r.probs, r.embedding)
                n_faces += 1
        step_until(bf.end_ns)
    assert n_faces == rep["counts"]["face_results"]
    in_spans = [lab for k, lab in preds if k < 40]  # spans cover [0, 4): steps 1..39
    cm = np.array(rep["confusion"]["counts"])
    got = {name: int(cm[:, i].sum()) for i, name in enumerate(list(LABELS) + ["none"]) if cm[:, i].sum()}
    want = {name: in_spans.count(name) for name in set(in_spans)}
    assert got == want


# ---------------------------------------------------------------------------------------------------------------
# Recorded outputs: every figure against an independent computation
# ---------------------------------------------------------------------------------------------------------------

T0 = 1_700_000_000  # seconds; absolute label times are > 1e9


def _state_emotion(r_ms):
    return "neutral" if r_ms < 450 else "happy" if r_ms < 2600 else "sad" if r_ms < 4000 else "angry"


STATE_MS = [50 + 200 * j for j in range(30) if not (4400 < 50 + 200 * j < 5600)]  # a gap > hold: "none"


def write_recorded_bag(path):
    ts = typestore()
    T = ts.types
    Time, Header = T["builtin_interfaces/msg/Time"], T["std_msgs/msg/Header"]

    def hdr(ms):
        ns = T0 * 10**9 + ms * 10**6
        return Header(stamp=Time(sec=ns // 10**9, nanosec=ns % 10**9), frame_id="camera")

    def state(ms, emotion, pid="p1"):
        return T["emotion_msgs/msg/EmotionState"](
            header=hdr(ms), person_id=pid, primary=pid == "p1", emotion=emotion, confidence=0.8,
            labels=list(LABELS), probabilities=np.full(7, 1 / 7, np.float32), valence=0.0, arousal=0.0,
            face_weight=0.5, voice_weight=0.5)

    def face(emotion, size):
        return T["emotion_msgs/msg/FaceEmotion"](
            id=emotion, x=0, y=0, width=size, height=size, detection_confidence=0.9, emotion=emotion,
            confidence=0.9, labels=[], probabilities=np.zeros(0, np.float32), embedding=np.zeros(0, np.float32))

    def voice(ms, emotion, active):
        return T["emotion_msgs/msg/VoiceEmotion"](
            header=hdr(ms), start=hdr(ms - 500).stamp, end=hdr(ms).stamp, voice_activity=active, speech_ratio=0.5,
            partial=False, emotion=emotion, confidence=0.7, labels=[], probabilities=np.zeros(0, np.float32),
            embedding=np.zeros(0, np.float32), unsure=False)

    msgs = []
    for ms in STATE_MS:
        msgs.append((ms, "emotion/state", "emotion_msgs/msg/EmotionState", state(ms, _state_emotion(ms))))
        msgs.append((ms, "emotion/states", "emotion_msgs/msg/EmotionState", state(ms, _state_emotion(ms))))
    for j in range(30):
        ms = 50 + 200 * j
        msgs.append((ms + 1, "emotion/states", "emotion_msgs/msg/EmotionState", state(ms + 1, "scared", "p2")))
    for j in range(31):  # the largest face counts: "happy" (the small one says "sad")
        ms = 10 + 200 * j
        arr = T["emotion_msgs/msg/FaceEmotionArray"](header=hdr(ms), image_width=320, image_height=240,
                                                      faces=[face("sad", 40), face("happy", 90)])
        msgs.append((ms, "emotion/faces", "emotion_msgs/msg/FaceEmotionArray", arr))
    for ms, emo, active in ((0, "neutral", False), (1030, "happy", True), (2990, "angry", False),
                            (3230, "sad", True), (6000, "neutral", False)):  # no activity at 0 / 6 s: bag bounds
        msgs.append((ms, "emotion/voice", "emotion_msgs/msg/VoiceEmotion", voice(ms, emo, active)))
    msgs.sort(key=lambda m: m[0])
    with BagWriter(str(path)) as w:
        for ms, topic, typ, msg in msgs:
            w.write_msg(topic, typ, T0 * 10**9 + ms * 10**6, msg)
    return msgs


def expected_figures(spans, hold_ms=1000):
    """The report's definitions, computed independently on integer milliseconds."""
    voice = [(1030, "happy"), (3230, "sad")]
    faces = [10 + 200 * j for j in range(31)]
    p2 = [51 + 200 * j for j in range(30)]
    steps = list(range(100, 6001, 100))

    def latest(times, t):
        prev = [r for r in times if r <= t]
        return prev[-1] if prev and t - prev[-1] <= hold_ms else None

    fused = {}
    for t in steps:
        r = latest(STATE_MS, t)
        fused[t] = _state_emotion(r) if r is not None else "none"
    truth, pred, face_pred, voice_pred, delays, undetected, span_ok = [], [], [], [], [], 0, 0
    for s, e, label, person in spans:
        ts = [t for t in steps if s <= t < e]
        if person == "p2":
            p = ["scared" if latest(p2, t) is not None else "none" for t in ts]
        else:
            p = [fused[t] for t in ts]
        truth += [label] * len(ts)
        pred += p
        face_pred += ["happy" if latest(faces, t) is not None else "none" for t in ts]
        for t in ts:
            v = latest([r for r, _ in voice], t)
            voice_pred.append(dict(voice)[v] if v is not None else "none")
        hit = [t for t, x in zip(ts, p) if x == label]
        if hit:
            delays.append((hit[0] - s) / 1000)
        else:
            undetected += 1
        order = list(LABELS) + ["none"]
        maj = max(order, key=lambda x: (p.count(x), -order.index(x)))
        span_ok += maj == label
    acc = lambda a, b: round(sum(x == y for x, y in zip(a, b)) / len(a), 4)  # noqa: E731
    reported = [fused[t] for t in steps if fused[t] != "none"]
    flips = sum(a != b for a, b in zip(reported, reported[1:]))
    return {"accuracy": acc(truth, pred), "n_samples": len(truth), "face": acc(truth, face_pred),
            "voice": acc(truth, voice_pred), "detection_delay_s": float(np.median(delays)) if delays else None,
            "n_undetected": undetected, "span_accuracy": round(span_ok / len(spans), 4),
            "flips_per_min": round(flips / (len(steps) * 0.1 / 60), 3), "truth": truth, "pred": pred}


def test_evaluate_recorded_outputs_exact(tmp_path, capsys):
    bag = tmp_path / "live"
    write_recorded_bag(bag)
    labels = tmp_path / "labels.csv"
    labels.write_text("start,end,label,person\n"
                      "0,2,Happiness,\n"
                      "2,4,sad,\n"
                      f"{T0 + 4},{T0 + 6},angry,\n"     # absolute stamps
                      "4,6,fear,p2\n"                   # alias + person: p2's emotion/states
                      "1,2,contempt,\n")                # unknown: skipped
    out_json = tmp_path / "r.json"
    assert bag_main(["evaluate", str(bag), "--labels", str(labels), "--json", str(out_json),
                     "--confusion", str(tmp_path / "cm.png"), "--timeline", str(tmp_path / "tl.png")]) == 0
    captured = capsys.readouterr()
    last = json.loads(captured.out.strip().splitlines()[-1])
    rep = json.loads(out_json.read_text())
    spans = [(0, 2000, "happy", ""), (2000, 4000, "sad", ""), (4000, 6000, "angry", ""), (4000, 6000, "scared", "p2")]
    want = expected_figures(spans)
    assert rep["mode"] == "recorded" and rep["n_spans"] == 4 and len(rep["labels_skipped"]) == 1
    assert rep["n_samples"] == want["n_samples"] == 19 + 20 + 20 + 20
    assert rep["accuracy"] == want["accuracy"]
    assert rep["face"]["accuracy"] == want["face"] and rep["voice"]["accuracy"] == want["voice"]
    covered = [(t, p) for t, p in zip(want["truth"], want["pred"]) if p != "none"]
    assert rep["accuracy_present"] == round(sum(t == p for t, p in covered) / len(covered), 4)
    assert rep["coverage"] == round(len(covered) / len(want["truth"]), 4) < 1.0
    assert rep["detection_delay_s"] == pytest.approx(want["detection_delay_s"])
    assert rep["n_undetected"] == want["n_undetected"]
    assert rep["span_accuracy"] == want["span_accuracy"]
    assert rep["flips_per_min"] == want["flips_per_min"]
    # labels: primary person happy -> sad -> angry over 0-6 s (2 changes), p2 scared over 4-6 s (none): 2 changes
    # in 8 labelled seconds
    assert rep["n_label_changes"] == 2 and rep["labelled_s"] == 8.0
    assert rep["label_changes_per_min"] == 15.0 == last["label_changes_per_min"]
    assert rep["flips_to_label_changes"] == round(want["flips_per_min"] / 15.0, 3) == last["flips_to_label_changes"]
    f1s = []
    for c in sorted(set(want["truth"])):  # macro-F1 over the labelled classes
        tp = sum(t == c and p == c for t, p in zip(want["truth"], want["pred"]))
        prec = tp / max(1, want["pred"].count(c))
        rec = tp / want["truth"].count(c)
        f1s.append(0.0 if tp == 0 else 2 * prec * rec / (prec + rec))
    assert rep["macro_f1"] == pytest.approx(np.mean(f1s), abs=1e-4)
    assert {k: last[k] for k in REQUIRED} == {k: rep[k] for k in REQUIRED}
    # a few hand-checked values of this scenario
    assert rep["spans"][0]["delay_s"] == 0.5      # neutral until 0.45 s, first step seeing happy: 0.5 s
    assert rep["spans"][1]["delay_s"] == 0.7      # happy until 2.6 s, sad from the 2.65 s state: step 2.7 s
    assert rep["spans"][2]["delay_s"] == 0.1      # the 3.85 s "sad" state is still held at the 4.0 s step
    assert rep["spans"][3]["majority"] == "scared" and rep["spans"][3]["delay_s"] == 0.0
    assert rep["per_class_recall"]["scared"] == 1.0
    assert "none" in rep["confusion"]["cols"] and np.array(rep["confusion"]["counts"])[:, -1].sum() > 0  # the gap
    best = max(rep["face"]["accuracy"], rep["voice"]["accuracy"])
    assert rep["margin"]["value"] == pytest.approx(rep["accuracy"] - best, abs=1e-4)
    lo, hi = rep["margin"]["ci95"]
    assert lo <= rep["margin"]["value"] <= hi and rep["margin"]["n_spans"] == 4
    assert last["margin_over_best_single"] == rep["margin"]
    assert sum(sp["right"]["fused"] for sp in rep["spans"]) == round(rep["accuracy"] * rep["n_samples"])
    assert sum(sp["right"]["face"] for sp in rep["spans"]) == round(rep["face"]["accuracy"] * rep["n_samples"])


def test_margin_bootstrap_interval_over_spans():
    from emotion_ros.tools.bag_evaluate import margin_over_best_single
    # fused right on every step, face on half of every span, voice never: +0.5, and every resample says so
    m = margin_over_best_single([(10, 10, 5, 0)] * 8)
    assert m["best_single"] == "face" and m["value"] == 0.5 and m["ci95"] == [0.5, 0.5]
    # the same totals held by a few spans: fused wins 3 spans outright, loses 1: the interval spans 0
    m = margin_over_best_single([(10, 10, 0, 0)] * 3 + [(10, 0, 10, 0)] * 1 + [(10, 5, 5, 0)] * 4)
    assert m["value"] == 0.25 and m["ci95"][0] < 0 < m["ci95"][1]
    # with 40 such spans the same +0.25 is clearly above 0; the interval is repeatable (seeded)
    many = ([(10, 10, 0, 0)] * 3 + [(10, 0, 10, 0)] * 1 + [(10, 5, 5, 0)] * 4) * 5
    m1, m2 = margin_over_best_single(many), margin_over_best_single(many)
    assert m1 == m2 and m1["value"] == 0.25 and m1["ci95"][0] > 0
    # voice better than face: measured against voice
    assert margin_over_best_single([(10, 6, 2, 7)] * 5)["best_single"] == "voice"
    assert margin_over_best_single([])["value"] is None
    # the mean over clips, each against its own better modality; resampling within clips
    from emotion_ros.tools.bag_evaluate import mean_margin_over_best_single
    m = mean_margin_over_best_single([[(10, 10, 5, 0)] * 8, [(10, 6, 2, 7)] * 5])
    assert m["value"] == pytest.approx((0.5 + -0.1) / 2) and m["ci95"] == [0.2, 0.2]
    assert m["best_single"] == "per clip" and m["n_spans"] == 13


# ---------------------------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------------------------

def _bag_with(path, topic, msgtype, msg, t_ns=5 * 10**9):
    with BagWriter(str(path)) as w:
        w.write_msg(topic, msgtype, t_ns, msg)
        w.write_msg(topic, msgtype, t_ns + 10**9, msg)


def _err(capsys, argv):
    rc = bag_main(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return rc, err


def test_evaluate_errors(tmp_path, capsys):
    T = typestore().types
    labels = tmp_path / "l.csv"
    labels.write_text("0,1,happy\n")
    # another message type on an expected topic
    _bag_with(tmp_path / "wrongtype", "image_raw", "std_msgs/msg/String", T["std_msgs/msg/String"](data="hi"))
    rc, err = _err(capsys, ["evaluate", str(tmp_path / "wrongtype"), "--labels", str(labels)])
    assert rc == 2 and "/image_raw holds std_msgs/msg/String, expected sensor_msgs/msg/Image" in err
    # unknown image encoding
    hdr = T["std_msgs/msg/Header"](stamp=T["builtin_interfaces/msg/Time"](sec=5, nanosec=0), frame_id="")
    img = T["sensor_msgs/msg/Image"](header=hdr, height=2, width=2, encoding="weird42", is_bigendian=0, step=6,
                                     data=np.zeros(12, np.uint8))
    _bag_with(tmp_path / "enc", "image_raw", "sensor_msgs/msg/Image", img)
    models = make_models(tmp_path)
    rc, err = _err(capsys, ["evaluate", str(tmp_path / "enc"), "--labels", str(labels), "--face-model",
                            models["face"], "--fusion-model", "none"])
    assert rc == 2 and "weird42" in err and "/image_raw" in err
    # missing model
    rc, err = _err(capsys, ["evaluate", str(tmp_path / "enc"), "--labels", str(labels), "--face-model",
                            str(tmp_path / "nope.pt")])
    assert rc == 2 and "nope.pt" in err
    # none of the topics to evaluate
    _bag_with(tmp_path / "other", "chatter", "std_msgs/msg/String", T["std_msgs/msg/String"](data="hi"))
    rc, err = _err(capsys, ["evaluate", str(tmp_path / "other"), "--labels", str(labels)])
    assert rc == 2 and "none of the topics" in err and "/chatter" in err
    # labels: missing file, nothing usable
    rc, err = _err(capsys, ["evaluate", str(tmp_path / "other"), "--labels", str(tmp_path / "missing.csv")])
    assert rc == 2 and "missing.csv" in err
    bad = tmp_path / "bad.csv"
    bad.write_text("start,end,label\n0,1,contempt\nzero,1,happy\n3,2,happy\n")
    rc, err = _err(capsys, ["evaluate", str(tmp_path / "other"), "--labels", str(bad)])
    assert rc == 2 and "no usable span" in err and "contempt" in err and "'zero'" in err
    # outputs: refused without --force, the same file twice refused
    keep = tmp_path / "keep.png"
    keep.write_bytes(b"old")
    rc, err = _err(capsys, ["evaluate", str(tmp_path / "other"), "--labels", str(labels), "--timeline", str(keep)])
    assert rc == 2 and "--force" in err and keep.read_bytes() == b"old"
    rc, err = _err(capsys, ["evaluate", str(tmp_path / "other"), "--labels", str(labels), "--json", str(keep),
                            "--timeline", str(keep), "--force"])
    assert rc == 2 and "different files" in err and keep.read_bytes() == b"old"


def test_label_changes_definition():
    """Consecutive spans of a person with different labels, gaps ignored; labelled time = union, clipped."""
    from emotion_ros.tools.bag_evaluate import Span, label_changes

    spans = [Span(0, 2, "happy"), Span(2, 4, "happy"), Span(5, 7, "sad"),   # gap 4-5 s: still one change
             Span(6, 8, "angry"),                                           # overlaps: union 5-8
             Span(9, 12, "neutral"),                                        # clipped to the bag end, 10 s
             Span(11, 13, "sad"),                                           # outside the bag: dropped
             Span(1, 3, "scared", "p2"), Span(3, 4, "scared", "p2")]       # another person: no change
    assert label_changes(spans, 10.0) == (3, 4 + 3 + 1 + 3)
    assert label_changes([Span(0, 5, "happy")], 10.0) == (0, 5.0)
    doc = [Span(0, 4, "happy"), Span(4, 8, "sad"), Span(10, 14, "sad"), Span(14, 18, "happy")]  # docs/BAGS.md
    assert label_changes(doc, 18.0) == (2, 16.0)


def test_evaluate_labels_outside_the_bag(tmp_path, capsys):
    bag = tmp_path / "live"
    write_recorded_bag(bag)  # 0-6 s
    labels = tmp_path / "l.csv"
    labels.write_text("start,end,label\n10,12,happy\n20,30,sad\n")  # seconds after the bag's end
    rc, err = _err(capsys, ["evaluate", str(bag), "--labels", str(labels)])
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert "none of its 2 span(s) overlaps the bag" in err and "bag 0..6.01 s" in err
    labels.write_text(f"{T0 - 100},{T0 - 50},happy\n")  # absolute stamps before the bag
    rc, err = _err(capsys, ["evaluate", str(bag), "--labels", str(labels)])
    assert rc == 2 and "none of its 1 span(s)" in err
    # partly outside: evaluated, with a warning naming the lines
    labels.write_text("start,end,label\n0,2,happy\n10,12,sad\n5,8,angry\n")
    out_json = tmp_path / "r.json"
    rc, err = _err(capsys, ["evaluate", str(bag), "--labels", str(labels), "--json", str(out_json)])
    assert rc == 0
    assert "1 of 3 labelled spans lie outside the bag" in err and "lines 3" in err
    assert "1 labelled span(s) extend beyond the bag" in err and "lines 4" in err
    rep = json.loads(out_json.read_text())
    assert rep["n_spans_without_samples"] == 1 and len(rep["warnings"]) == 2


def test_evaluate_no_face_warning_and_progress(tmp_path, capsys):
    """A raw bag whose frames hold no face: evaluated, with a warning; progress lines on stderr."""
    T = typestore().types
    models = make_models(tmp_path)
    with BagWriter(str(tmp_path / "blank")) as w:
        for i in range(12):  # 2.2 s of grey 160x120 frames at 5 fps
            ns = (T0 + i * 0.2) * 10**9
            ns = int(round(ns))
            hdr = T["std_msgs/msg/Header"](stamp=T["builtin_interfaces/msg/Time"](sec=ns // 10**9, nanosec=ns % 10**9),
                                           frame_id="camera")
            img = T["sensor_msgs/msg/Image"](header=hdr, height=120, width=160, encoding="bgr8", is_bigendian=0,
                                             step=480, data=np.full(120 * 480, 90, np.uint8))
            w.write_msg("image_raw", "sensor_msgs/msg/Image", ns, img)
    labels = tmp_path / "l.csv"
    labels.write_text("0,2.2,happy\n")
    out_json = tmp_path / "r.json"
    rc, err = _err(capsys, ["evaluate", str(tmp_path / "blank"), "--labels", str(labels), "--json", str(out_json),
                            "--face-model", models["face"], "--fusion-model", "none", "--progress", "1e-6"])
    assert rc == 0, err
    assert "warning: no face found in any of the 12 frames on /image_raw" in err
    rep = json.loads(out_json.read_text())
    assert rep["counts"]["face_results"] == 0 and rep["accuracy"] == 0.0 and rep["coverage"] == 0.0
    assert any("no face found" in x for x in rep["warnings"])
    prog = [line for line in err.splitlines() if line.startswith("emotion-bag evaluate: raw ")]
    assert len(prog) >= 2, err  # every message at this interval, and the closing 100 %
    done = [float(line.split()[3]) for line in prog]
    assert done == sorted(done) and done[-1] == 2.2 and "(100 %)" in prog[-1]
    assert all(" / 2.2 s of bag" in line for line in prog)
    # --progress 0: none; a negative interval is refused
    rc, err = _err(capsys, ["evaluate", str(tmp_path / "blank"), "--labels", str(labels), "--face-model",
                            models["face"], "--fusion-model", "none", "--progress", "0"])
    assert rc == 0 and "s of bag" not in err
    rc, err = _err(capsys, ["evaluate", str(tmp_path / "blank"), "--labels", str(labels), "--progress", "-1"])
    assert rc == 2 and "--progress" in err


def test_evaluate_raw_follows_voice_nodes_reset_on_a_new_face(raw_bag, tmp_path, monkeypatch):
    """voice_node's speaker_reset_on_new_face in config: the raw evaluation wires it as the node does (a face
    watch on the face results; the speaker reference started again before the next audio). One person in this bag:
    adopted, no reset; a watch that says "new person" on every third array: resets counted."""
    import sys
    sys.path.insert(0, os.path.dirname(__file__))
    from test_voice_util import make_voice_checkpoint
    from emotion_ros.core.voice import features
    from emotion_ros.tools import bag_evaluate as be
    spk = make_voice_checkpoint(str(tmp_path / "voice_spk.pt"), embed_dim=16, utterance_cmn=True, speaker_window=3)
    orig = be._load_yaml_params

    def with_reset(name, node):
        p = dict(orig(name, node))
        if node == "voice_node":
            p.update(speaker_reset_on_new_face=True, new_face_hold_s=0.5)
        return p
    monkeypatch.setattr(be, "_load_yaml_params", with_reset)
    m = raw_bag["models"]
    args = dict(face_model=m["face"], voice_model=spk, fusion_model="none")
    rep = be.evaluate(str(raw_bag["bag"]), str(raw_bag["labels"]), **args)
    assert rep["counts"]["face_results"] > 0 and rep["counts"].get("speaker_resets_new_face", 0) == 0
    calls = {"n": 0}

    def every_third(self, faces, t):
        calls["n"] += 1
        return calls["n"] % 3 == 0
    monkeypatch.setattr(features.NewPersonWatch, "update", every_third)
    rep = be.evaluate(str(raw_bag["bag"]), str(raw_bag["labels"]), **args)
    assert calls["n"] >= 3 and 0 < rep["counts"]["speaker_resets_new_face"] <= calls["n"] // 3
    monkeypatch.setattr(be, "_load_yaml_params", orig)        # the shipped config: off, never called
    calls["n"] = 0
    rep = be.evaluate(str(raw_bag["bag"]), str(raw_bag["labels"]), **args)
    assert calls["n"] == 0 and "speaker_resets_new_face" not in rep["counts"]

"""emotion-bench: its test inputs are what it claims (faces the node's detector finds, utterance ends where the
audio stops), and a short run of the real graph ends with the JSON summary."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from robust_helpers import PKG_ROOT, node_env
from emotion_ros.core.face.detect import iou
from emotion_ros.core.face.model import FaceModel
from emotion_ros.core.face.pipeline import build_pipeline
from emotion_ros.nodes.face import PARAMS
from emotion_ros.tools import bench


@pytest.mark.parametrize("n_faces", [1, 5])
def test_scenes_show_faces_the_node_finds(n_faces, tmp_path):
    """With the face node's default parameters, every composed face is found where compose_scene says it is."""
    model = FaceModel(bench.make_test_checkpoints(str(tmp_path), kinds=("face",))["face"], device="cpu")
    pipe = build_pipeline(model, {k: v[0] for k, v in PARAMS.items()})
    frames = bench.scene_frames(n_faces, 6)
    assert all(f.shape == (480, 640, 3) and f.dtype == np.uint8 for f in frames)
    for k, f in enumerate(frames):
        faces = pipe.process(f, 100.0 + k / 30)
        assert len(faces) == n_faces, f"frame {k}: {len(faces)} faces"
    shift = (int(round(4 * np.cos(2 * np.pi * 5 / 6))), int(round(4 * np.sin(2 * np.pi * 5 / 6))))
    _, boxes = bench.compose_scene(n_faces, shift=shift)
    for b in boxes:
        assert max(iou(b, r.crop_box) for r in faces) > 0.6, (b, [r.crop_box for r in faces])


def test_speech_stream_knows_where_utterances_end():
    s = bench.speech_stream(16000)
    assert s.wave.dtype == np.float32 and s.wave.ndim == 1 and np.all(np.abs(s.wave) <= 1)
    assert len(s.utterances) == len(bench.SENTENCES)
    for start, end in s.utterances:
        a, b = int(start * 16000), int(end * 16000)
        assert end - start > 0.8
        assert np.abs(s.wave[a:b]).max() > 0.3                               # speech inside
        assert np.abs(s.wave[b + 160:b + 8000]).max() < 0.02                  # quiet right after its end
    synth = bench.speech_stream(16000, synthetic=True)
    assert synth.source == "synthetic" and len(synth.utterances) == len(bench.SENTENCES)


def test_inprocess_rtf_cuts_the_audio_as_the_node_does(tmp_path):
    """The in-process voice RTF runs the segmenter with the voice node's settings (its windows cost model calls):
    the shipped windows (config/emotion.yaml) give partial windows on the bench's sentences, none with window_s 0."""
    from emotion_ros.tools.bag_evaluate import _load_yaml_params
    from emotion_ros.tools.bench.inprocess import voice_rtf_inprocess
    voice = bench.make_test_checkpoints(str(tmp_path), kinds=("voice",))["voice"]
    speech = bench.speech_stream(16000, synthetic=True)
    shipped = voice_rtf_inprocess(voice, speech, node_params=_load_yaml_params("emotion.yaml", "voice_node"))
    none = voice_rtf_inprocess(voice, speech, node_params={"window_s": 0.0})
    assert shipped["finals"] == none["finals"] == len(speech.utterances), (shipped, none)
    assert none["partials"] == 0 and shipped["partials"] > 0, (shipped, none)
    assert shipped["segments"] == shipped["finals"] + shipped["partials"]


def test_node_params_and_targets():
    assert bench.node_params(["face:flip_tta=false", "fusion:rate=30", "face:cpu_threads=2"]) == \
        {"face": {"flip_tta": "false", "cpu_threads": "2"}, "fusion": {"rate": "30"}}
    with pytest.raises(ValueError):
        bench.node_params(["camera:rate=3"])
    ok = bench.check_targets({"face_1": {"fps": 30.0, "dropped": 0, "latency_ms_p95": 20.0}, "face_5": {"fps": 16},
                              "voice": {"rtf": 0.01}, "end_to_end": {"latency_ms_p95": 40.0}, "total_rss_mb": 900})
    assert all(ok.values()), ok
    bad = bench.check_targets({"face_1": {"fps": 30.0, "dropped": 3, "latency_ms_p95": 31.0}, "face_5": {"fps": 9},
                               "voice": {"rtf": 0.2}, "end_to_end": {"latency_ms_p95": 80.0}, "total_rss_mb": 2000})
    assert not any(bad.values()), bad
    assert bench.check_targets({})["face_5_ge_15fps"] is None


def test_short_run_of_the_real_graph_prints_the_summary(tmp_path):
    out_file = tmp_path / "bench.json"
    cmd = [sys.executable, "-m", "emotion_ros.tools.bench", "--seconds", "1.5", "--warmup", "0.5", "--grace", "0.3",
           "--phases", "face_1", "--random-models", "--device", "cpu", "--no-rtf", "--json-out", str(out_file)]
    proc = subprocess.run(cmd, cwd=PKG_ROOT, env=node_env(), capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    summary = json.loads(lines[-1])
    assert summary == json.loads(out_file.read_text())
    assert summary["device"] == "cpu"
    f = summary["face_1"]
    assert f["published"] > 10 and f["faces_expected"] == 1
    assert f["fps"] > 0 and f["latency_ms_p50"] > 0 and f["faces_per_frame"] == pytest.approx(1.0, abs=0.3)
    assert f["dropped"] == f["published"] - round(f["fps"] * 1.5)
    assert set(summary["peak_rss_mb"]) == {"face", "voice", "fusion"}
    assert all(v > 50 for v in summary["peak_rss_mb"].values())
    assert summary["total_rss_mb"] == pytest.approx(sum(summary["peak_rss_mb"].values()), abs=0.5)
    assert {"face", "voice", "fusion", "driver"} <= set(summary["cpu_percent"])
    assert summary["models"]["random_init"] == ["face", "voice", "fusion"]
    assert summary["details"]["exit_codes"] == {"face": 0, "voice": 0, "fusion": 0}
    # each node's own /diagnostics report is read, not only its "<node>: lifecycle" status (which said nothing but
    # the state and hid the voice node's real_time_factor from the summary)
    for kind in ("face", "voice", "fusion"):
        assert summary["details"]["diagnostics"][kind].get("device") == "cpu", summary["details"]["diagnostics"]
    assert set(summary["targets"]) >= {"face_1_30fps_no_drops", "voice_rtf_le_0.05", "total_rss_lt_1.5GB"}
    assert any(line.startswith("[bench") for line in lines[:-1])

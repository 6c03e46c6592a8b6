"""scripts/tune_fusion.py's search: the forked search (--jobs 2) chooses what the sequential one chooses, and best_by
reports the best setting of each pool (synthetic clips: the script's replay and scoring, its pipelines skipped)."""
import importlib.util
import json
import os
import sys

import numpy as np
import pytest

from emotion_ros.core.labels import LABELS
from emotion_ros.tools.bag_evaluate import Span
from emotion_ros.training.fusion_replay import ClipCache

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "scripts", "tune_fusion.py")
pytestmark = pytest.mark.skipif(not os.path.isfile(SCRIPT), reason="scripts/ not beside the package (installed copy)")


def _load():
    spec = importlib.util.spec_from_file_location("tune_fusion_under_test", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # as an import would: the forked workers find _score by its module's name
    spec.loader.exec_module(mod)
    return mod


def _noisy(rng, label, right):
    """Probabilities whose top is ``label`` with probability ``right``, else a random other label."""
    k = label if rng.random() < right else int(rng.choice([i for i in range(len(LABELS)) if i != label]))
    p = rng.dirichlet(np.ones(len(LABELS))) * 0.4
    p[k] += 0.6
    return (p / p.sum()).astype(np.float32)


def _clip(name, seed, duration=24.0):
    rng = np.random.default_rng(seed)
    spans = [Span(s, s + 4.0, LABELS[int(rng.integers(len(LABELS)))]) for s in np.arange(0.0, duration, 4.0)]
    truth = lambda t: LABELS.index(next(sp.label for sp in spans if sp.start <= t < sp.end))  # noqa: E731
    face_t = np.arange(0.05, duration, 0.1)
    vs = np.arange(0.5, duration - 1.5, 2.0)
    return ClipCache(
        name, 0, int(duration * 1e9), face_t, ["p1"] * len(face_t), np.full(len(face_t), 5000.0),
        np.zeros((len(face_t), 48, 48), np.uint8), np.stack([_noisy(rng, truth(t), 0.6) for t in face_t]),
        np.zeros((len(face_t), 4), np.float32), vs + 1.9, vs, vs + 1.5,
        np.stack([_noisy(rng, truth(t), 0.3) for t in vs]), np.zeros((len(vs), 3), np.float32),
        np.ones(len(vs), bool)), spans


def test_forked_search_chooses_as_the_sequential_one_and_reports_each_pool(tmp_path, monkeypatch):
    tf = _load()
    clips = {n: _clip(n, i) for i, n in enumerate(["dev_a", "dev_b", "test_a"])}
    monkeypatch.setattr(tf, "load_clips", lambda *a, **k: clips)
    monkeypatch.setattr(tf, "GRID", {"face_stale_s": [0.5], "voice_stale_s": [3.0], "voice_prior": [0.1, 0.6],
                                     "pool": ["linear", "log"], "switch_margin": [0.05, 0.15]})
    model = tmp_path / "m.pt"
    model.write_bytes(b"x")  # the script checks that the model files exist; its pipelines are not run here
    outs = []
    for jobs in (1, 2):
        path = tmp_path / f"out{jobs}.json"
        assert tf.main(["--clips", str(tmp_path), "--face-model", str(model), "--voice-model", str(model),
                        "--jobs", str(jobs), "--json", str(path)]) == 0
        outs.append(json.loads(path.read_text()))
    seq, par = outs
    assert seq["settings"] == par["settings"] and seq["objective_dev"] == par["objective_dev"]
    assert seq["grid_size"] == 8 and seq["dev"] == par["dev"] and set(seq["test"]) == {"test_a"}
    # the stress test: the same clip with every voice result naming another emotion (its face unchanged; on this
    # synthetic clip the voice's step accuracy happens to come out the same, its fused result does not)
    wrong, clean = seq["test_wrong_voice"]["test_a"], seq["test"]["test_a"]
    p = np.full(len(LABELS), 0.05, np.float32)
    p[1] = 0.7
    rotated, _ = tf.wrong_voice(p, None)
    assert [int(np.argmax(rotated)), float(rotated.max())] == [4, p.max()]
    assert wrong["face"] == clean["face"] and wrong != clean and wrong == par["test_wrong_voice"]["test_a"]
    assert seq["test_wrong_voice_mean"]["fused"] == pytest.approx(wrong["fused"], abs=1e-4)
    assert seq["dev_by_kind"] == {"clips": [], "kinds": {}}     # no meta.json beside these clips
    best = seq["best_by"]["pool"]
    assert set(best) == {"linear", "log"}
    chosen = seq["settings"]["pool"]
    assert best[chosen]["objective_dev"] == seq["objective_dev"] and best[chosen]["settings"]["pool"] == chosen
    other = "log" if chosen == "linear" else "linear"
    assert best[other]["objective_dev"] <= seq["objective_dev"] and best[other]["settings"]["pool"] == other


def test_wrong_voice_weight_chooses_by_the_mix_and_grid_values_replace_an_entry(tmp_path, monkeypatch, capsys):
    """--wrong-voice-weight W: the setting chosen is the one with the best (1 - W) x dev objective + W x the dev
    objective with a confidently wrong voice (recomputed here for every setting); --grid-values replaces an entry's
    values; a bad key, weight or grid value is one line, exit 2."""
    tf = _load()
    clips = {n: _clip(n, i + 10) for i, n in enumerate(["dev_a", "dev_b", "test_a"])}
    monkeypatch.setattr(tf, "load_clips", lambda *a, **k: clips)
    monkeypatch.setattr(tf, "GRID", {"face_stale_s": [0.5], "voice_stale_s": [3.0], "voice_prior": [0.1],
                                     "pool": ["linear"], "switch_margin": [0.05, 0.15]})
    model = tmp_path / "m.pt"
    model.write_bytes(b"x")
    args = ["--clips", str(tmp_path), "--face-model", str(model), "--voice-model", str(model),
            "--grid-values", "voice_prior=0.0,0.3,3.0"]
    path = tmp_path / "w.json"
    assert tf.main(args + ["--wrong-voice-weight", "0.75", "--json", str(path)]) == 0
    out = json.loads(path.read_text())
    assert out["grid_size"] == 6 and out["wrong_voice_weight"] == 0.75
    dev = ["dev_a", "dev_b"]
    mix = {}
    for vp in (0.0, 0.3, 3.0):
        for sm in (0.05, 0.15):
            kw = {**tf.BASE, "face_stale_s": 0.5, "voice_stale_s": 3.0, "voice_prior": vp, "pool": "linear",
                  "switch_margin": sm}
            clean = tf.objective(tf.run_set(clips, dev, kw))
            wrong = tf.objective(tf.run_set(clips, dev, kw, voice_transform=tf.wrong_voice))
            mix[(vp, sm)] = (0.25 * clean + 0.75 * wrong, clean, wrong)
    best = max(mix, key=lambda k: mix[k][0])
    assert (out["settings"]["voice_prior"], out["settings"]["switch_margin"]) == best
    assert out["objective_choice"] == pytest.approx(mix[best][0], abs=1e-4)
    assert out["objective_dev"] == pytest.approx(mix[best][1], abs=1e-4)
    assert out["objective_dev_wrong_voice"] == pytest.approx(mix[best][2], abs=1e-4)
    # a wrong voice that counts three times a face costs more than one that counts nothing: the mix must see it
    assert mix[(3.0, 0.05)][2] < mix[(0.0, 0.05)][2]
    assert best[0] != 3.0
    capsys.readouterr()
    assert tf.main(args[:-1] + ["nonsense=1"]) == 2
    assert tf.main(args + ["--wrong-voice-weight", "1.5"]) == 2
    # a value the fusion refuses is named before any clip is read, not a traceback from inside the search
    monkeypatch.setattr(tf, "load_clips", lambda *a, **k: pytest.fail("clips loaded before the grid was checked"))
    assert tf.main(args + ["--grid-values", "switch_margin=0.05,-1"]) == 2
    assert tf.main(args + ["--grid-values", "pool=lin"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 4 and "nonsense" in err[0] and "--wrong-voice-weight" in err[1]
    assert "switch_margin=-1.0" in err[2] and "pool='lin'" in err[3]


def test_cache_key_follows_what_changes_the_pipelines_outputs_only(monkeypatch):
    """The cache of the pipelines' outputs is keyed on the face node's settings: one that changes the offline crops
    (full_detect_every) changes the key; one that changes only how the node runs (switch_interval_ms, ...) does not."""
    tf = _load()
    from emotion_ros.tools import bag_evaluate
    base = {"detector": "blazeface", "full_detect_every": 6, "flip_tta": True}

    def key(**extra):
        monkeypatch.setattr(bag_evaluate, "_load_yaml_params", lambda name, node: {**base, **extra})
        return tf.detector_settings()

    plain = key()
    assert plain == key(switch_interval_ms=5.0, full_detect_nice=0, async_full_detect=False, opencv_threads=2,
                        debug_image=False, hri=True, autostart=False)
    assert plain != key(full_detect_every=3) and plain != key(flip_tta=False)


DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "shared", "data", "face_photos")


def _photo_video(path, seconds=12.0, fps=25.0, size=(320, 240)):
    """Real photos (../shared/data/face_photos: neutral, happy, surprised) taking turns every 0.4-1.2 s, so that the
    face model's top emotion changes and the hysteresis has decisions to make."""
    import cv2
    rng = np.random.default_rng(3)
    photos = []
    for lab in ("neutral", "happy", "surprised"):
        d = os.path.join(DATA, lab)
        for f in sorted(os.listdir(d))[:2]:
            img = cv2.imread(os.path.join(d, f))
            if img is not None:
                h = 200
                photos.append(cv2.resize(img, (int(img.shape[1] * h / img.shape[0]), h)))
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, size)
    n, k, until = int(seconds * fps), 0, 0.0
    for i in range(n):
        t = i / fps
        if t >= until:
            k, until = int(rng.integers(len(photos))), t + float(rng.uniform(0.4, 1.2))
        f = np.full((size[1], size[0], 3), 110, np.uint8)
        ph = photos[k][:, : size[0] - 20]
        x = 10 + int(5 * np.sin(i / 7.0))
        f[20:20 + ph.shape[0], x:x + ph.shape[1]] = ph
        w.write(f)
    w.release()


@pytest.mark.skipif(not os.path.isdir(DATA), reason="../shared/data/face_photos not beside the checkout")
def test_replay_equals_emotion_bag_evaluate_on_a_recorded_bag(tmp_path):
    """The replay the fusion settings are chosen with (load_clips' cache, replayed with the YAML's settings) gives the
    very figures `emotion-bag evaluate` gives on the same bag, with epoch-sized stamps and a face that keeps changing.
    Two ways it once did not: face probabilities recomputed from the cached crops by another FaceModel than the
    node's, and dwell tests decided by the float rounding of such stamps (models/fusion.md)."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from test_bag_evaluate import bag_main, make_audio  # noqa: E402
    from emotion_ros import paths
    from emotion_ros.tools.bag_evaluate import fusion_node_settings

    tf = _load()
    models = {"face": paths.model_path("face.pt"), "voice": paths.model_path("voice.pt")}  # as shipped: real outputs
    if not all(os.path.isfile(m) for m in models.values()):
        pytest.skip("the shipped models are not there")
    clip = tmp_path / "clips" / "dev_01"
    clip.mkdir(parents=True)
    _photo_video(tmp_path / "v.avi")
    make_audio(tmp_path / "a.wav", seconds=12)
    assert bag_main(["from-media", "--video", str(tmp_path / "v.avi"), "--audio", str(tmp_path / "a.wav"), "--out",
                     str(clip / "bag"), "--start-time", "1800000000"]) == 0
    (clip / "labels.csv").write_text("start,end,label\n0,4,neutral\n4,8,happy\n8,11.9,surprised\n")
    out = tmp_path / "eval.json"
    assert bag_main(["evaluate", str(clip / "bag"), "--labels", str(clip / "labels.csv"), "--json", str(out),
                     "--face-model", models["face"], "--voice-model", models["voice"], "--fusion-model", "none"]) == 0
    rep = json.loads(out.read_text())
    clips = tf.load_clips(str(tmp_path / "clips"), models["face"], models["voice"])
    got = tf.run_set(clips, ["dev_01"], fusion_node_settings())["dev_01"]  # the settings emotion-bag evaluate runs
    assert rep["face"]["accuracy"] > 0 and rep["flips_per_min"] > 0  # faces found, decisions made: it has content
    assert (got["fused"], got["face"], got["voice"], got["flips_per_min"], got["delay_s"]) == (
        rep["accuracy"], rep["face"]["accuracy"], rep["voice"]["accuracy"], rep["flips_per_min"],
        rep["detection_delay_s"])


def test_by_kind_splits_the_steps_by_the_kind_of_span(tmp_path):
    """Per kind of span (meta.json of make_eval_clips.py): the steps add up to the clips', and each kind's accuracy
    is the replay's own per-span counts pooled; a clip whose meta.json does not match its labels is left out."""
    tf = _load()
    clips = {n: _clip(n, i) for i, n in enumerate(["dev_a", "dev_b", "dev_c"])}
    kinds = ["agree", "disagree", "no_face", "silent", "agree", "silent"]
    for n in ("dev_a", "dev_b"):
        (tmp_path / n).mkdir()
        (tmp_path / n / "meta.json").write_text(json.dumps({"spans": [{"kind": k} for k in kinds]}))
    (tmp_path / "dev_c").mkdir()   # its meta.json names other labels than its spans have
    other = [{"kind": "agree", "label": "happy" if sp.label != "happy" else "sad"} for sp in clips["dev_c"][1]]
    (tmp_path / "dev_c" / "meta.json").write_text(json.dumps({"spans": other}))
    kw = {**tf.BASE, **{k: v[0] for k, v in tf.GRID.items()}}
    got = tf.by_kind(str(tmp_path), clips, ["dev_a", "dev_b", "dev_c"], kw)
    assert got["clips"] == ["dev_a", "dev_b"] and set(got["kinds"]) == set(kinds)
    from emotion_ros.training.fusion_replay import replay
    reps = [replay(*clips[n], kw) for n in ("dev_a", "dev_b")]
    assert sum(v["n_samples"] for v in got["kinds"].values()) == sum(r["n_samples"] for r in reps)
    for kind in set(kinds):
        rows = [row for r in reps for k, row in zip(kinds, r["spans"]) if k == kind]
        n = sum(row["n_samples"] for row in rows)
        for m in ("fused", "face", "voice"):
            assert got["kinds"][kind][m] == pytest.approx(sum(row["right"][m] for row in rows) / n, abs=1e-4)


def test_agreement_settings_are_grid_entries_the_fusion_validates():
    """The voice's trust settings can be searched with --grid-values (2026-12-04: they sat in BASE, out of reach), each
    pinned to the shipped value in the standing grid, and a value the fusion refuses is one line before any clip."""
    from emotion_ros.tools.bag_evaluate import _load_yaml_params
    tf = _load()
    shipped = _load_yaml_params("emotion.yaml", "fusion_node")
    for key in ("agreement_reference", "agreement_power"):
        assert key not in tf.BASE and tf.GRID[key] == [shipped[key]]
    grid = {**tf.GRID, **tf.parse_grid_values(["agreement_power=2,3,4,6", "agreement_reference=0.5,0.6,0.7"])}
    assert grid["agreement_power"] == [2.0, 3.0, 4.0, 6.0] and tf.invalid_grid_value(grid) is None
    bad = {**tf.GRID, **tf.parse_grid_values(["agreement_reference=0.5,0"])}
    assert tf.invalid_grid_value(bad) == ("grid value agreement_reference=0.0 refused: "
                                          "agreement_reference must be in (0, 1], got 0.0")

"""Labelled regression data (STYLE.md, adopt 4): the shipped face and voice models, through the nodes' own pipelines
(``emotion-eval``), on a fixed sample of held-out people from ../shared/data (read where it is, never copied into the
project), must stay above an accuracy floor and must not collapse onto one class. A broken preprocessing step, a
label-order slip or a model file that lost its normalisation falls to near chance here, which one photo cannot show.

Floors sit ~10 points below what the shipped models measure (2026-12-02: faces 66.8 %, n 280; voices 58.8 %, n 240),
so that a retrained model of the same quality passes and a broken one does not. Skipped where ../shared/data is not
beside the checkout (a clone elsewhere)."""
from __future__ import annotations

import json
import os

import pytest

from emotion_ros import paths
from emotion_ros.core.labels import LABELS

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "shared", "data")
FER_VAL = os.path.join(DATA, "fer2013", "val")           # FER2013 PublicTest: people the face model never saw
RAVDESS = os.path.join(DATA, "ravdess_speech")            # actors 17-20: held out of the voice model's training
PER_CLASS = 40
MAX_COLLAPSE = 1.5                                        # the voice issue's measure: top share / its true share


def _evaluate(tmp_path, *args):
    from emotion_ros.training.evaluate import main
    out = tmp_path / "report.json"
    main([*args, "--json", str(out), "--device", "cpu", "--seed", "0"])
    return json.loads(out.read_text())


@pytest.mark.skipif(not os.path.isdir(FER_VAL), reason="../shared/data/fer2013/val not beside the checkout")
@pytest.mark.skipif(not os.path.isfile(paths.model_path("face.pt")), reason="models/face.pt missing")
def test_shipped_face_model_on_held_out_faces(tmp_path):
    data = tmp_path / "faces"
    for cls in sorted(os.listdir(FER_VAL)):
        src = os.path.join(FER_VAL, cls)
        (data / cls).mkdir(parents=True)
        for name in sorted(os.listdir(src))[:PER_CLASS]:       # the first 40 of each class, by name: fixed
            os.symlink(os.path.join(src, name), data / cls / name)
    r = _evaluate(tmp_path, "face", "--data", str(data))
    assert r["n"] == PER_CLASS * len(LABELS), r["n"]
    assert r["accuracy"] >= 0.57, r
    assert r["collapse_ratio"] <= MAX_COLLAPSE, r["prediction_share"]
    assert min(r["per_class_recall"].values()) >= 0.3, r["per_class_recall"]


@pytest.mark.skipif(not os.path.isdir(RAVDESS), reason="../shared/data/ravdess_speech not beside the checkout")
@pytest.mark.skipif(not os.path.isfile(paths.model_path("voice.pt")), reason="models/voice.pt missing")
def test_shipped_voice_model_on_held_out_speakers(tmp_path):
    data = tmp_path / "voices"
    data.mkdir()
    for actor in (17, 18, 19, 20):
        os.symlink(os.path.join(RAVDESS, f"Actor_{actor:02d}"), data / f"Actor_{actor:02d}")
    r = _evaluate(tmp_path, "voice", "--data", str(data))
    assert r["n"] == 240, r["n"]
    assert r["accuracy"] >= 0.60, r          # measured 0.683 (models/voice.md, 2026-12-03, sixth session)
    assert r["collapse_ratio"] <= MAX_COLLAPSE, r["prediction_share"]

"""Training tools (``emotion-train``) on tiny generated data: loaders, checkpoints and resume, time budget,
distillation, speaker splits, and that what they write is a model the nodes load."""
import csv
import json
import os

import cv2
import numpy as np
import pytest
import soundfile as sf
import torch

from emotion_ros.core.face.model import FaceModel
from emotion_ros.core.labels import INDEX, LABELS
from emotion_ros.core.voice.model import VoiceModel
from emotion_ros.training import train_face, train_voice
from emotion_ros.training.face_data import load_faces

FER_FOLDERS = ["angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"]
TINY = ["--widths", "4,4,8,8", "--embed-dim", "8", "--threads", "1", "--batch-size", "16", "--dev-fraction", "0.2"]


def face_image(k: int, rng: np.random.Generator) -> np.ndarray:
    """A 48x48 grey image whose stripe frequency tells its class."""
    yy = np.arange(48)[:, None] * np.ones((1, 48))
    img = 128 + 90 * np.sin(yy * (k + 1) * np.pi / 24) + rng.normal(0, 10, (48, 48))
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def face_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("faces")
    rng = np.random.default_rng(0)
    for k, name in enumerate(FER_FOLDERS + ["contempt"]):
        os.makedirs(root / name)
        for i in range(10):
            cv2.imwrite(str(root / name / f"{i}.png"), face_image(k, rng))
    return str(root)


def run_face(face_folder, tmp_path, *extra):
    out = str(tmp_path / "face.pt")
    args = ["--data", face_folder, "--out", out, "--run-dir", str(tmp_path / "run"), "--cache-dir", "",
            *TINY, *extra]
    metrics = train_face.main(args)
    return out, metrics


def test_face_folder_loader_maps_classes_and_reports_unknown(face_folder):
    fs = load_faces(face_folder)
    assert fs.images.shape == (70, 48, 48) and fs.images.dtype == np.uint8
    assert fs.skipped_classes == {"contempt": 10}
    assert sorted(set(LABELS[i] for i in fs.labels)) == sorted(LABELS)
    assert np.sum(fs.labels == INDEX["scared"]) == 10     # FER2013's "fear"


def test_fer_csv_and_npz_loaders(tmp_path):
    rng = np.random.default_rng(1)
    path = tmp_path / "fer.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["emotion", "pixels", "Usage"])
        for k in range(7):  # FER2013 CSV codes: 0 angry 1 disgust 2 fear 3 happy 4 sad 5 surprise 6 neutral
            for usage in ("Training", "PublicTest"):
                w.writerow([k, " ".join(map(str, face_image(k, rng).ravel())), usage])
    tr = load_faces(str(path), usage="Training")
    assert len(tr.labels) == 7 and tr.images.shape == (7, 48, 48)
    assert [LABELS[i] for i in tr.labels] == ["angry", "disgusted", "scared", "happy", "sad", "surprised", "neutral"]
    npz = tmp_path / "faces.npz"
    np.savez(npz, images=tr.images, labels=np.array(["anger", "fearful", "calm", "contempt", "happy", "sad", "x"]))
    arr = load_faces(str(npz))
    assert [LABELS[i] for i in arr.labels] == ["angry", "scared", "neutral", "happy", "sad"]
    assert arr.skipped_classes == {"contempt": 1, "x": 1}
    assert arr.images.shape == (5, 48, 48)


def test_face_training_writes_a_loadable_model_and_resumes(face_folder, tmp_path, monkeypatch):
    # a run cut off after its second epoch's checkpoint ...
    save = train_face.Checkpointer.save

    def save_then_die(self, epoch, *a, **kw):
        save(self, epoch, *a, **kw)
        if epoch == 2:
            raise KeyboardInterrupt("cut off")

    monkeypatch.setattr(train_face.Checkpointer, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        run_face(face_folder, tmp_path, "--epochs", "3", "--val", face_folder)
    monkeypatch.setattr(train_face.Checkpointer, "save", save)
    assert not os.path.exists(tmp_path / "face.pt")
    # ... resumed from run/last.pt: only epoch 3 is trained, the history is kept
    out, metrics = run_face(face_folder, tmp_path, "--epochs", "3", "--val", face_folder, "--resume")
    assert set(metrics) == {"dev", "val"} and metrics["val"]["n"] == 70
    model = FaceModel(out, device="cpu")                      # the node's loader accepts it
    probs, emb = model.predict(load_faces(face_folder).images[:3])
    assert probs.shape == (3, len(LABELS)) and np.allclose(probs.sum(1), 1, atol=1e-5) and emb.shape == (3, 8)
    ckpt = torch.load(out, weights_only=True)
    assert ckpt["labels"] == list(LABELS) and ckpt["config"]["model"] == {"widths": [4, 4, 8, 8], "embed_dim": 8}
    assert [h["epoch"] for h in ckpt["history"]] == [1, 2, 3]
    assert torch.load(tmp_path / "run" / "last.pt", weights_only=False)["epoch"] == 3
    with open(tmp_path / "run" / "config.json") as f:
        assert json.load(f)["args"]["epochs"] == 3


def test_face_training_time_budget_and_distillation(face_folder, tmp_path):
    teacher, _ = run_face(face_folder, tmp_path / "t", "--epochs", "1")
    # a budget far below one epoch: the schedule is cut to the minimum of two epochs and rebuilt for it
    out, _ = run_face(face_folder, tmp_path / "s", "--epochs", "40", "--time-budget-min", "0.0001",
                      "--teacher", teacher, "--snapshot")
    ckpt = torch.load(out, weights_only=True)
    assert ckpt["config"]["args"]["epochs"] == 2 and len(ckpt["history"]) == 2
    assert ckpt["config"]["args"]["teacher"] == teacher
    FaceModel(out, device="cpu")


def test_face_training_refuses_a_teacher_that_is_not_a_face_model(face_folder, tmp_path):
    bogus = tmp_path / "bogus.pt"
    bogus.write_bytes(b"not a checkpoint")
    with pytest.raises(Exception, match="bogus.pt"):
        run_face(face_folder, tmp_path / "s", "--epochs", "1", "--teacher", str(bogus))


@pytest.fixture(scope="module")
def ravdess_like(tmp_path_factory):
    """4 speakers x 8 RAVDESS emotions x 2 statements: voiced tones whose pitch and loudness contour tell the
    emotion; speakers 1-2 at 16 kHz mono, 3-4 at 22.05 kHz stereo."""
    root = tmp_path_factory.mktemp("ravdess")
    rng = np.random.default_rng(2)
    for actor in range(1, 5):
        d = root / f"Actor_{actor:02d}"
        os.makedirs(d)
        sr = 16000 if actor <= 2 else 22050
        for emo in range(1, 9):
            for stmt in (1, 2):
                t = np.arange(int(sr * 1.0)) / sr
                f0 = 100 + 25 * emo + 10 * actor
                env = np.sin(np.pi * t / t[-1]) ** (0.5 + 0.2 * emo)
                wave = 0.3 * env * sum(np.sin(2 * np.pi * h * f0 * t) / h for h in range(1, 6))
                wave = np.concatenate([np.zeros(sr // 5), wave, np.zeros(sr // 5)]) + rng.normal(0, 1e-3, 7 * sr // 5)
                if actor > 2:
                    wave = np.stack([wave, 0.8 * wave], 1)
                sf.write(str(d / f"03-01-{emo:02d}-01-{stmt:02d}-01-{actor:02d}.wav"), wave.astype(np.float32), sr)
    return str(root)


def test_voice_training_splits_by_speaker_and_writes_a_loadable_model(ravdess_like, tmp_path):
    out = str(tmp_path / "voice.pt")
    metrics = train_voice.main(["--data", ravdess_like, "--out", out, "--run-dir", str(tmp_path / "run"),
                                "--test-speakers", "4", "--dev-speakers", "3", "--epochs", "2",
                                "--augment-copies", "1", "--pitch-prob", "0", "--batch-size", "8", "--threads", "1"])
    assert metrics["test"]["n"] == 16 and metrics["dev"]["n"] == 16
    ckpt = torch.load(out, weights_only=True)
    cfg = ckpt["config"]
    assert cfg["train_speakers"] == ["Actor_01", "Actor_02"]
    assert cfg["dev_speakers"] == ["Actor_03"] and cfg["test_speakers"] == ["Actor_04"]
    assert cfg["n_train"] == 32 and cfg["n_train_augmented"] == 64     # + one augmented copy each
    assert ckpt["labels"] == list(LABELS) and len(ckpt["input"]["mean"]) == cfg["features"]["n_mels"]
    model = VoiceModel(out, device="cpu")                     # the node's loader accepts it
    wave, sr = sf.read(os.path.join(ravdess_like, "Actor_04", "03-01-05-01-01-01-04.wav"), dtype="float32")
    assert sr == 22050 and wave.ndim == 2
    from emotion_ros.core.voice.features import to_mono_16k
    probs, emb = model.predict(to_mono_16k(wave, sr))
    assert probs.shape == (len(LABELS),) and abs(float(probs.sum()) - 1) < 1e-5 and emb.shape == (128,)

"""Temperature scaling and ECE (training/calibration.py); FaceModel applies the checkpoint's temperature."""
import numpy as np
import pytest
import torch

from emotion_ros.core.face.model import ARCH, DEFAULT_INPUT, FaceCNN, FaceModel
from emotion_ros.core.modelio import ModelFileError, load_checkpoint, save_checkpoint
from emotion_ros.training.calibration import calibrate_report, ece, fit_temperature, softmax_t, temperature_of


def overconfident(n=4000, k=7, true_t=2.5, seed=0):
    """Logits whose calibrated temperature is true_t: labels drawn from softmax(z / true_t), logits = z."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 3.0, (n, k))
    p = torch.softmax(torch.as_tensor(z / true_t), 1).numpy()
    y = np.array([rng.choice(k, p=pi) for pi in p])
    return z, y


def test_fit_temperature_recovers_the_true_one_and_lowers_ece():
    z, y = overconfident()
    t = fit_temperature(z, y)
    assert t == pytest.approx(2.5, rel=0.1)
    assert ece(softmax_t(z, t), y) < 0.5 * ece(softmax_t(z, 1.0), y)
    rep = calibrate_report(z[:2000], y[:2000], z[2000:], y[2000:], fitted_on="first half")
    assert rep["ece_after"] < rep["ece_before"] and rep["test"]["n"] == 2000 and rep["fitted_on"] == "first half"


def test_views_are_averaged_in_probability_space():
    z, y = overconfident(n=500)
    two = np.stack([z, z + 0.5])
    p = softmax_t(two, 2.0)
    expect = 0.5 * (softmax_t(z, 2.0) + softmax_t(z + 0.5, 2.0))
    np.testing.assert_allclose(p, expect, atol=1e-9)
    assert fit_temperature(two, y) > 1.0
    with pytest.raises(ValueError):
        fit_temperature(z, y[:10])


def test_ece_of_a_perfectly_calibrated_predictor_is_small():
    rng = np.random.default_rng(1)
    conf = rng.uniform(0.3, 1.0, 20000)
    y_hit = rng.random(20000) < conf
    probs = np.zeros((20000, 2))
    probs[:, 0] = conf
    probs[:, 1] = 1 - conf
    y = np.where(y_hit, 0, 1)
    assert ece(probs, y) < 0.02


def test_face_model_applies_the_stored_temperature(tmp_path):
    torch.manual_seed(0)
    net = FaceCNN(widths=(4, 8, 8, 8), embed_dim=16).eval()
    path = str(tmp_path / "face.pt")
    save_checkpoint(path, kind="face", arch=ARCH, model=net, input_spec=DEFAULT_INPUT,
                    config={"model": {"widths": [4, 8, 8, 8], "embed_dim": 16}})
    crops = np.random.default_rng(0).integers(0, 255, (3, 48, 48), dtype=np.uint8)
    raw = FaceModel(path, "cpu", flip_tta=False)
    assert raw.temperature == 1.0
    ckpt = load_checkpoint(path, "face")
    ckpt["calibration"] = {"method": "temperature", "temperature": 3.0}
    torch.save(ckpt, path)
    cal = FaceModel(path, "cpu", flip_tta=False)
    assert cal.temperature == 3.0 and temperature_of(ckpt) == 3.0
    with torch.inference_mode():
        logits = cal.net(cal.to_tensor(crops))
    np.testing.assert_allclose(cal.predict(crops)[0], torch.softmax(logits / 3.0, 1).numpy(), atol=1e-5)
    np.testing.assert_allclose(raw.predict(crops)[0], torch.softmax(logits, 1).numpy(), atol=1e-5)
    np.testing.assert_allclose(FaceModel(path, "cpu", flip_tta=False, calibrated=False).predict(crops)[0],
                               raw.predict(crops)[0], atol=1e-6)
    ckpt["calibration"] = {"temperature": -1.0}
    torch.save(ckpt, path)
    with pytest.raises(ModelFileError, match="temperature"):
        FaceModel(path, "cpu")

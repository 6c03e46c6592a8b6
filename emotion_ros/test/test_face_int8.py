"""Int8 face CNN (``emotion-train quantize-face``, ``FaceModel(int8=True)``, the face node's ``int8``): ranges
measured offline and stored in the checkpoint, the rebuilt network close to the float one, and clear failures."""
import os

import cv2
import matplotlib.cbook as cbook
import numpy as np
import pytest
import torch

from emotion_ros.core.face import quant
from emotion_ros.core.face.model import ARCH, DEFAULT_INPUT, FaceCNN, FaceModel
from emotion_ros.core.face.pipeline import FacePipeline
from emotion_ros.core.modelio import ModelFileError, load_checkpoint, save_checkpoint
from emotion_ros.training.cli import train_main

SHIPPED = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "models", "face.pt")
FER_FOLDERS = ["angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"]

pytestmark = pytest.mark.skipif(quant.engine() is None, reason="this torch build has no quantized engine")


def checkpoint(path, widths=(8, 16), embed_dim=32, seed=0):
    torch.manual_seed(seed)
    net = FaceCNN(widths=widths, embed_dim=embed_dim)
    # batch norm statistics as after training, so that the folded network is not the identity of a fresh one
    for m in net.modules():
        if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.BatchNorm1d)):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    save_checkpoint(str(path), kind="face", arch=ARCH, model=net, input_spec=dict(DEFAULT_INPUT),
                    config={"model": {"widths": list(widths), "embed_dim": embed_dim},
                            "args": {"dev_fraction": 0.2, "seed": 3}})
    return str(path)


def face_like(n, seed):
    """Grey 48x48 images with smooth structure (blurred noise plus a stripe pattern), uint8."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, 48, 48), np.uint8)
    yy = np.arange(48)[:, None] * np.ones((1, 48))
    for i in range(n):
        img = cv2.GaussianBlur(rng.normal(128, 60, (48, 48)), (0, 0), 2.0)
        img += 50 * np.sin(yy * rng.uniform(0.1, 0.6) + rng.uniform(0, 6))
        out[i] = np.clip(img, 0, 255).astype(np.uint8)
    return out


@pytest.fixture(scope="module")
def face_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("int8_faces")
    imgs = face_like(70, 1)
    for k, name in enumerate(FER_FOLDERS):
        os.makedirs(root / name)
        for i in range(10):
            cv2.imwrite(str(root / name / f"{i}.png"), imgs[k * 10 + i])
    return str(root)


def test_observed_ranges_rebuild_an_int8_network_close_to_the_float_one(tmp_path):
    torch.set_num_threads(1)
    fm = FaceModel(checkpoint(tmp_path / "f.pt"), device="cpu", flip_tta=False)
    state = quant.observe(fm.net, [fm.to_tensor(face_like(64, 2))])
    assert state["n"] == 64 and state["observers"] and state["engine"] in ("x86", "fbgemm")
    qnet = quant.build_int8(fm.net, state)
    kinds = {type(m).__module__ for m in qnet.modules()}
    assert any("quantized" in k for k in kinds), kinds  # really int8 modules, not the float network again
    x = fm.to_tensor(face_like(32, 3))  # faces not used for the ranges
    with torch.no_grad():
        lf, ef = fm.net(x, return_embedding=True)
        lq, eq = qnet(x)
    assert lq.shape == lf.shape and eq.shape == ef.shape
    rel = float((lq - lf).norm() / lf.norm())
    assert rel < 0.1, rel
    assert float((eq - ef).norm() / ef.norm()) < 0.1


def test_ranges_of_another_network_are_refused(tmp_path):
    fm = FaceModel(checkpoint(tmp_path / "f.pt"), device="cpu")
    other = FaceModel(checkpoint(tmp_path / "g.pt", widths=(8, 16, 16)), device="cpu")
    state = quant.observe(other.net, [other.to_tensor(face_like(8, 2))])
    with pytest.raises(ValueError, match="do not fit"):
        quant.build_int8(fm.net, state)
    with pytest.raises(ValueError, match="no observer"):
        quant.build_int8(fm.net, {"observers": {}})
    # stored in a checkpoint, the mismatch is a model-file error naming the file
    ck = load_checkpoint(fm.path, "face")
    ck["int8"] = {"observers": state["observers"], "size": 48}
    torch.save(ck, tmp_path / "bad.pt")
    with pytest.raises(ModelFileError, match="bad.pt.*int8 ranges unusable"):
        FaceModel(str(tmp_path / "bad.pt"), device="cpu", int8=True)


def test_int8_without_stored_ranges_runs_float_and_says_why(tmp_path):
    path = checkpoint(tmp_path / "plain.pt")
    m = FaceModel(path, device="cpu", int8=True)
    assert not m.runs_int8 and "no int8 activation ranges in" in m.int8_fallback
    assert "plain.pt" in m.int8_fallback and "quantize-face" in m.int8_fallback
    crops = face_like(3, 5)
    assert np.allclose(m.predict(crops)[0], FaceModel(path, device="cpu").predict(crops)[0])
    assert not FaceModel(path, device="cpu").runs_int8 and FaceModel(path, device="cpu").int8_fallback is None
    assert FaceModel.for_node(path, {}, device="cpu").int8  # the node's default asks for int8


def test_quantize_face_writes_ranges_keeps_the_weights_and_reports(face_folder, tmp_path, capsys):
    src = checkpoint(tmp_path / "src.pt")
    out = str(tmp_path / "q.pt")
    rc = train_main(["quantize-face", "--face-model", src, "--data", face_folder, "--test", face_folder,
                     "--n", "40", "--out", out, "--cache-dir", "", "--threads", "1"])
    assert rc == 0
    before, after = load_checkpoint(src, "face"), load_checkpoint(out, "face")
    assert "int8" not in before
    for k, v in before["state_dict"].items():
        assert torch.equal(v, after["state_dict"][k]), k
    rep = after["int8"]
    assert rep["n"] == 40 and rep["views"] == 2 and "training part" in rep["ranges_from"]
    assert rep["test"]["n"] == 70 and 0.0 <= rep["test"]["top_agreement"] <= 1.0
    m = FaceModel(out, device="cpu", int8=True)
    assert m.runs_int8 and m.info()["int8"]
    crops = face_like(5, 9)
    pq, eq = m.predict(crops)
    pf, ef = FaceModel(out, device="cpu").predict(crops)
    assert pq.shape == pf.shape and eq.shape == ef.shape
    assert np.allclose(pq.sum(1), 1.0, atol=1e-5)
    assert float(np.abs(pq - pf).max()) < 0.05
    # bad input: one line, exit 2
    capsys.readouterr()
    assert train_main(["quantize-face", "--face-model", src, "--data", str(tmp_path / "nothing"),
                       "--cache-dir", ""]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("emotion-train quantize-face:"), err


def test_a_torch_build_without_a_quantized_engine_runs_the_float_network(face_folder, tmp_path, monkeypatch):
    out = str(tmp_path / "q.pt")
    assert train_main(["quantize-face", "--face-model", checkpoint(tmp_path / "src.pt"), "--data", face_folder,
                       "--n", "20", "--out", out, "--cache-dir", ""]) == 0
    monkeypatch.setattr(quant, "engine", lambda: None)
    m = FaceModel(out, device="cpu", int8=True)
    assert not m.runs_int8 and "int8 unavailable" in m.int8_fallback
    crops = face_like(3, 4)
    assert np.allclose(m.predict(crops)[0], FaceModel(out, device="cpu").predict(crops)[0])


def test_shipped_model_in_int8_reads_a_real_face_as_the_float_model_does():
    with cbook.get_sample_data("grace_hopper.jpg") as f:
        hopper = cv2.imread(f.name, cv2.IMREAD_COLOR)
    torch.set_num_threads(1)
    q = FaceModel(SHIPPED, device="cpu", int8=True)
    assert q.runs_int8, q.int8_fallback  # the shipped file carries its ranges (the node runs int8 by default)
    assert load_checkpoint(SHIPPED, "face")["int8"]["test"]["top_agreement"] > 0.97
    rq = FacePipeline(q).process(hopper, 0.0)
    rf = FacePipeline(FaceModel(SHIPPED, device="cpu")).process(hopper, 0.0)
    assert len(rq) == len(rf) == 1
    assert rq[0].emotion == rf[0].emotion
    assert float(np.abs(rq[0].probs - rf[0].probs).max()) < 0.05

"""``emotion-eval --perturb``: the recording-condition perturbations (training/perturb.py), the node-style
streaming path of the voice evaluation, and the CLI's report (tiny real checkpoints)."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import soundfile as sf

from emotion_ros.training import perturb as P
from emotion_ros.training.evaluate import main as eval_main
from test_voice_util import SR, concat, make_voice_checkpoint, silence, speechlike, tone


def face_image(h=48, w=48, seed=0) -> np.ndarray:
    """A face-sized test image: smooth shading plus texture (mid-grey on average)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    x = 128 + 60 * np.sin(xx / w * 6) * np.cos(yy / h * 4) + 20 * rng.standard_normal((h, w))
    return np.clip(x, 0, 255).astype(np.uint8)


def utterance(seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return concat([("s", silence(0.5, 0.001, rng)), ("v", speechlike(1.2, rng=rng)),
                   ("s", silence(0.4, 0.001, rng)), ("v", speechlike(0.8, rng=rng)),
                   ("s", silence(0.5, 0.001, rng))])[0]


# ---------------------------------------------------------------- names and generators

def test_parse_names_repeats_comma_lists_and_checks():
    assert P.parse_names(["blur,jpeg", "rotate"], "face") == ["blur", "jpeg", "rotate"]
    assert P.parse_names([" noise , rate44k"], "voice") == ["noise", "rate44k"]
    assert P.parse_names([], "face") == [] and P.parse_names(None, "voice") == []
    with pytest.raises(ValueError, match="unknown face perturbation 'telephone'"):
        P.parse_names(["telephone"], "face")
    with pytest.raises(ValueError, match="twice"):
        P.parse_names(["noise", "noise"], "voice")
    with pytest.raises(ValueError, match="last"):
        P.parse_names(["rate44k,noise"], "voice")


def test_item_rng_depends_on_seed_index_and_name_only():
    a = P.item_rng(0, 5, "noise").random(4)
    assert np.array_equal(a, P.item_rng(0, 5, "noise").random(4))
    for other in (P.item_rng(1, 5, "noise"), P.item_rng(0, 6, "noise"), P.item_rng(0, 5, "blur")):
        assert not np.array_equal(a, other.random(4))
    P.item_rng(-1, 0, "noise")  # negative seeds are accepted


# ---------------------------------------------------------------- faces

@pytest.mark.parametrize("name", sorted(P.FACE))
@pytest.mark.parametrize("shape", [(48, 48), (90, 120)])
def test_face_perturbations_keep_shape_dtype_and_are_deterministic(name, shape):
    img = face_image(*shape)
    out = P.perturb_face(img, [name], seed=3, index=7)
    assert out.shape == img.shape and out.dtype == np.uint8 and out.flags["C_CONTIGUOUS"]
    assert np.array_equal(out, P.perturb_face(img, [name], seed=3, index=7))
    assert not np.array_equal(out, img)


def test_face_perturbations_chain_in_order_and_check_input():
    img = face_image()
    both = P.perturb_face(img, ["dark", "noise"], 0, 0)
    assert np.array_equal(both, P.FACE["noise"](P.FACE["dark"](img, P.item_rng(0, 0, "dark")),
                                                P.item_rng(0, 0, "noise")))
    assert np.array_equal(P.perturb_face(img, [], 0, 0), img)
    with pytest.raises(ValueError, match="uint8 grey"):
        P.perturb_face(np.zeros((48, 48, 3), np.uint8), ["blur"], 0, 0)


def edge_sigma(img: np.ndarray) -> float:
    """Sigma of the blur across a vertical step edge (spread of the row profile's derivative)."""
    d = np.diff(img.astype(np.float64).mean(0))
    x = np.arange(d.size)
    mu = (d * x).sum() / d.sum()
    return float(np.sqrt((d * (x - mu) ** 2).sum() / d.sum()))


@pytest.mark.parametrize("side", [48, 480])
def test_face_blur_sigma_scales_with_image_size(side):
    step = np.zeros((side, side), np.uint8)
    step[:, side // 2:] = 255
    assert edge_sigma(P.perturb_face(step, ["blur"], 0, 0)) == pytest.approx(1.2 * side / 48, rel=0.12)


def test_face_dark_lowres_jpeg_noise_rotate_do_what_they_say():
    img = face_image(96, 96)
    dark = P.perturb_face(img, ["dark"], 0, 0).astype(np.float64)
    assert dark.mean() < 0.7 * img.mean() and dark.std() < 0.6 * img.std()
    flat = np.full((96, 96), 128, np.uint8)
    noisy = P.perturb_face(flat, ["noise"], 0, 0).astype(np.float64) - 128
    assert noisy.std() == pytest.approx(12.0, rel=0.05) and abs(noisy.mean()) < 0.5
    checker = ((np.indices((96, 96)).sum(0) % 2) * 255).astype(np.uint8)      # detail finer than 1/3 scale
    assert P.perturb_face(checker, ["lowres"], 0, 0).std() < 10
    jpg = P.perturb_face(img, ["jpeg"], 0, 0).astype(np.float64)
    assert np.abs(jpg - img).mean() > 1 and np.corrcoef(jpg.ravel(), img.ravel())[0, 1] > 0.8
    bar = np.zeros((97, 97), np.uint8)
    bar[46:51, 10:87] = 255
    angles = set()
    for i in range(8):
        ys, xs = np.nonzero(P.perturb_face(bar, ["rotate"], 0, i) > 127)
        angles.add(round(float(np.degrees(np.arctan(np.polyfit(xs, ys, 1)[0])))))
    assert angles == {-15, 15}


# ---------------------------------------------------------------- voices

@pytest.mark.parametrize("name", sorted(P.VOICE))
def test_voice_perturbations_shapes_dtypes_determinism(name):
    x = utterance()
    y, rate = P.perturb_voice(x, SR, [name], seed=1, index=2)
    assert y.dtype == np.float32 and np.isfinite(y).all() and np.abs(y).max() <= 1.0
    if name == "rate44k":
        assert rate == 44100 and y.shape[1] == 2 and abs(y.shape[0] - x.size * 44100 / SR) <= 2
    elif name in ("slow", "fast"):
        assert rate == SR and y.ndim == 1 and abs(y.size - x.size / {"slow": 0.8, "fast": 1.25}[name]) <= 2
    else:
        assert rate == SR and y.shape == x.shape
    y2, _ = P.perturb_voice(x, SR, [name], seed=1, index=2)
    assert np.array_equal(y, y2)
    assert not np.array_equal(y.reshape(-1)[:x.size], x)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_voice_noise_snr_against_the_active_speech_level(seed):
    x = utterance(seed)
    y, _ = P.perturb_voice(x, SR, ["noise"], seed, 0)
    assert P.snr_db(x, y) == pytest.approx(10.0, abs=0.3)
    d = y - x                                       # white + pink: more power below 500 Hz than white alone
    spec = np.abs(np.fft.rfft(d)) ** 2
    f = np.fft.rfftfreq(d.size, 1 / SR)
    assert spec[(f > 20) & (f < 500)].mean() > 3 * spec[f > 4000].mean()
    assert not np.array_equal(y, P.perturb_voice(x, SR, ["noise"], seed, 1)[0])


def test_voice_quiet_is_25_db_down_on_the_s16_grid():
    x = utterance()
    y, _ = P.perturb_voice(x, SR, ["quiet"], 0, 0)
    assert 10 * np.log10(P.active_power(x) / P.active_power(y)) == pytest.approx(25.0, abs=0.1)
    assert np.allclose(y * 32768, np.round(y * 32768))


def band_gain_db(name: str, f: float) -> float:
    x = tone(1.0, amp=0.3, f=f)
    y, _ = P.perturb_voice(x, SR, [name], 0, 0)
    mid = slice(2000, -2000)
    return float(10 * np.log10(np.mean(y[mid] ** 2) / np.mean(x[mid] ** 2)))


def peak_hz(y: np.ndarray) -> float:
    spec = np.abs(np.fft.rfft(y[2000:-2000] * np.hanning(y.size - 4000)))
    return float(np.fft.rfftfreq(y.size - 4000, 1 / SR)[spec.argmax()])


def test_voice_pitch_and_tempo_shift_one_and_keep_the_other():
    """Another speaker's register (pitch_down / pitch_up: 3 semitones, same length) or pace (slow / fast: tempo
    0.8 / 1.25, same pitch)."""
    x = tone(1.0, amp=0.3, f=440.0)
    for name, ratio in (("pitch_down", 2 ** (-3 / 12)), ("pitch_up", 2 ** (3 / 12)), ("slow", 1.0), ("fast", 1.0)):
        y, _ = P.perturb_voice(x, SR, [name], 0, 0)
        assert peak_hz(y) == pytest.approx(440.0 * ratio, rel=0.02), name


def test_voice_telephone_keeps_300_to_3400_hz_only():
    assert abs(band_gain_db("telephone", 1000.0)) < 1.0
    assert band_gain_db("telephone", 100.0) < -15.0
    assert band_gain_db("telephone", 5000.0) < -60.0


def test_voice_reverb_decays_60_db_in_rt60():
    ir = P.reverb_ir(SR, P.item_rng(0, 0, "reverb"), rt60=0.4)
    assert ir.size == int(0.4 * SR) and np.sum(ir ** 2) == pytest.approx(1.0)
    env = 10 * np.log10([np.mean(ir[int(a * SR):int((a + 0.02) * SR)] ** 2) for a in (0.0, 0.2)])
    assert env[0] - env[1] == pytest.approx(60 * 0.2 / 0.4, abs=4.0)
    click = np.zeros(SR, np.float32)
    click[1000] = 0.5
    y, _ = P.perturb_voice(click, SR, ["reverb"], 0, 0)
    assert np.abs(y[:1000]).max() < 1e-9 and np.abs(y[1000 + int(0.1 * SR):1000 + int(0.2 * SR)]).max() > 1e-3


def test_voice_rate44k_is_stereo_s16_at_44k1_and_comes_last():
    x = utterance()
    y, rate = P.perturb_voice(x, SR, ["quiet", "rate44k"], 0, 0)
    assert rate == 44100 and np.array_equal(y[:, 0], y[:, 1])
    assert np.allclose(y * 32768, np.round(y * 32768))
    with pytest.raises(ValueError, match="last"):
        P.perturb_voice(x, SR, ["rate44k", "quiet"], 0, 0)


# ---------------------------------------------------------------- node-style voice path and the CLI

@pytest.fixture(scope="module")
def voice_ckpt(tmp_path_factory):
    return make_voice_checkpoint(str(tmp_path_factory.mktemp("eval_voice") / "voice.pt"))


def test_voice_stream_path_matches_the_offline_one(voice_ckpt):
    from emotion_ros.core.voice.model import VoiceModel
    from emotion_ros.core.voice.pipeline import VoicePipeline
    from emotion_ros.training.embed import voice_output, voice_output_stream, voice_outputs

    model = VoiceModel(voice_ckpt, device="cpu")
    pipeline = VoicePipeline(model)
    x = utterance()
    p0, e0, found = voice_output(pipeline, x)
    assert found
    p1, e1, found1 = voice_output_stream(pipeline, x, SR)            # 16 kHz mono: the same segments
    assert found1 and np.allclose(p0, p1, atol=1e-6) and np.allclose(e0, e1, atol=1e-5)
    y, rate = P.perturb_voice(x, SR, ["rate44k"], 0, 0)
    p2, _, found2 = voice_output_stream(pipeline, y, rate)            # downmix + streaming resampler
    assert found2 and np.allclose(p0, p2, atol=0.05)
    out, no_speech = voice_outputs(model, [x, (x, SR), (y, rate)])
    assert no_speech == 0 and np.allclose(out.probs[0], out.probs[1]) and np.allclose(out.probs[2], p2)


def test_cli_face_perturb_report(tmp_path):
    import torch
    from emotion_ros.core.face.model import ARCH, DEFAULT_INPUT, FaceCNN
    from emotion_ros.core.modelio import save_checkpoint

    torch.manual_seed(0)
    ckpt = str(tmp_path / "face.pt")
    save_checkpoint(ckpt, kind="face", arch=ARCH, model=FaceCNN(widths=(8, 16), embed_dim=32),
                    input_spec=dict(DEFAULT_INPUT), config={"model": {"widths": [8, 16], "embed_dim": 32}})
    for k, label in enumerate(("happy", "sad")):
        (tmp_path / "faces" / label).mkdir(parents=True)
        for i in range(3):
            cv2.imwrite(str(tmp_path / "faces" / label / f"{i}.png"), face_image(seed=10 * k + i))
    base = ["face", "--data", str(tmp_path / "faces"), "--model", ckpt, "--device", "cpu"]
    assert eval_main(base + ["--perturb", "blur,noise", "--perturb", "rotate", "--seed", "3",
                             "--json", str(tmp_path / "f.json")]) == 0
    rep = json.loads((tmp_path / "f.json").read_text())
    assert rep["perturb"] == ["blur", "noise", "rotate"] and rep["seed"] == 3 and rep["n"] == 6
    assert eval_main(base + ["--json", str(tmp_path / "clean.json")]) == 0
    rep = json.loads((tmp_path / "clean.json").read_text())
    assert rep["perturb"] == [] and rep["seed"] == 0
    with pytest.raises(SystemExit, match="unknown face perturbation"):
        eval_main(base + ["--perturb", "reverb"])


def test_cli_voice_perturb_report(tmp_path, voice_ckpt):
    for k, label in enumerate(("angry", "sad")):
        (tmp_path / "voices" / label).mkdir(parents=True)
        for i in range(2):
            sf.write(str(tmp_path / "voices" / label / f"{i}.wav"), utterance(10 * k + i), SR)
    base = ["voice", "--data", str(tmp_path / "voices"), "--model", voice_ckpt, "--device", "cpu"]
    reps = []
    for seed in (5, 5):
        assert eval_main(base + ["--perturb", "reverb,noise", "--perturb", "rate44k", "--seed", str(seed),
                                 "--json", str(tmp_path / "v.json")]) == 0
        reps.append(json.loads((tmp_path / "v.json").read_text()))
    assert reps[0]["perturb"] == ["reverb", "noise", "rate44k"] and reps[0]["seed"] == 5 and reps[0]["n"] == 4
    assert reps[0]["confusion"] == reps[1]["confusion"]
    # read over the data's own labels (a diagnostic): never below the seven-way accuracy, equal when no
    # prediction falls outside them
    rep = reps[0]
    assert rep["labels_present"] == ["sad", "angry"]
    assert rep["accuracy"] <= rep["accuracy_within_labels"] <= 1
    outside = sum(v["predicted"] for k, v in rep["prediction_share"].items() if k not in ("sad", "angry"))
    assert outside > 0 or rep["accuracy_within_labels"] == rep["accuracy"]
    with pytest.raises(SystemExit, match="last"):
        eval_main(base + ["--perturb", "rate44k,quiet"])

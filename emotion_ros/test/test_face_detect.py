"""core.face.detect: Haar detector on a real photo, region search, YuNet file errors, factory."""
import os

import cv2
import matplotlib.cbook as cbook
import numpy as np
import pytest

from emotion_ros.core.errors import InputError
from emotion_ros.core.face.detect import (Detection, HaarDetector, YuNetDetector, iou, make_detector, nms,
                                          to_gray)
from emotion_ros.core.modelio import ModelFileError

# Grace Hopper's face in matplotlib's sample photo (512x600), as the Haar cascade boxes it at full resolution.
HOPPER_FACE = (155.0, 105.0, 222.0, 222.0)


@pytest.fixture(scope="module")
def hopper():
    with cbook.get_sample_data("grace_hopper.jpg") as f:
        path = f.name
    img = cv2.imread(path, cv2.IMREAD_COLOR)
    assert img is not None and img.shape == (600, 512, 3)
    return img


@pytest.fixture(scope="module")
def haar():
    return HaarDetector()


def test_haar_finds_the_face_in_a_photo(hopper, haar):
    for image in (hopper, cv2.cvtColor(hopper, cv2.COLOR_BGR2GRAY)):
        dets = haar.detect(image)
        assert len(dets) == 1
        d = dets[0]
        assert iou(d.box, HOPPER_FACE) > 0.8, d
        assert 0.8 < d.score <= 1.0


def test_haar_maps_boxes_back_from_the_downscaled_frame(hopper, haar):
    big = cv2.resize(hopper, None, fx=2.0, fy=2.0, interpolation=cv2.INTER_LINEAR)  # 1024x1200, detected at 320
    dets = haar.detect(big)
    assert len(dets) == 1
    ref = tuple(2.0 * v for v in HOPPER_FACE)
    assert iou(dets[0].box, ref) > 0.75, dets[0]
    # a non-square padding keeps coordinates right (x and y scales are separate)
    wide = cv2.copyMakeBorder(hopper, 0, 0, 300, 0, cv2.BORDER_CONSTANT, value=(90, 90, 90))
    d = haar.detect(wide)
    assert len(d) == 1 and iou(d[0].box, (HOPPER_FACE[0] + 300,) + HOPPER_FACE[1:]) > 0.75


def test_haar_finds_nothing_in_plain_or_noise_images(haar):
    rng = np.random.default_rng(1)
    assert haar.detect(np.full((480, 640), 127, np.uint8)) == []
    assert haar.detect(rng.integers(0, 256, (480, 640), dtype=np.uint8)) == []
    assert haar.detect(np.zeros((10, 10), np.uint8)) == []  # smaller than the cascade window


def test_min_size_frac_excludes_small_faces(hopper):
    # the face is 222 px of the 512 px shorter side: 0.43
    assert len(HaarDetector(min_size_frac=0.3).detect(hopper)) == 1
    assert HaarDetector(min_size_frac=0.6).detect(hopper) == []


def test_scores_rank_faces_above_chance_patterns():
    assert HaarDetector._score(4.5) > 0.9 > HaarDetector._score(1.0) > HaarDetector._score(-1.5)
    assert 0.0 < HaarDetector._score(-10) < 0.01


def test_detect_regions_searches_only_near_the_boxes(hopper, haar):
    gray = cv2.cvtColor(hopper, cv2.COLOR_BGR2GRAY)
    shifted = (HOPPER_FACE[0] + 20, HOPPER_FACE[1] - 15, HOPPER_FACE[2] * 1.1, HOPPER_FACE[3] * 1.1)
    found = haar.detect_regions(gray, [shifted])
    assert len(found) == 1 and iou(found[0].box, HOPPER_FACE) > 0.7, found
    # a box far from the face: nothing there
    assert haar.detect_regions(gray, [(0.0, 450.0, 100.0, 100.0)]) == []
    # two boxes on the same face give one detection
    assert len(haar.detect_regions(gray, [shifted, HOPPER_FACE])) == 1
    # degenerate boxes are skipped
    assert haar.detect_regions(gray, [(10.0, 10.0, 0.0, 5.0), (float("nan"), 0.0, 5.0, 5.0)]) == []


def test_bad_images_raise_input_error(haar):
    with pytest.raises(InputError, match="dtype float32"):
        haar.detect(np.zeros((100, 100), np.float32))
    with pytest.raises(InputError, match="channels"):
        haar.detect(np.zeros((100, 100, 2), np.uint8))
    with pytest.raises(InputError, match="empty"):
        haar.detect(np.zeros((0, 100), np.uint8))
    with pytest.raises(InputError):
        to_gray([[1, 2], [3, 4]])


def test_yunet_file_errors_name_the_file(tmp_path):
    missing = str(tmp_path / "face_detection_yunet.onnx")
    with pytest.raises(ModelFileError, match="face_detection_yunet.onnx"):
        YuNetDetector(missing)
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(os.urandom(2048))
    with pytest.raises(ModelFileError, match="junk.onnx"):
        YuNetDetector(str(junk))
    with pytest.raises(ModelFileError, match="face_detection_yunet.onnx"):
        make_detector("yunet", yunet_model=missing)


def test_make_detector():
    d = make_detector("haar", min_size_frac=0.2, max_width=256, model_path="ignored.onnx", score_threshold=0.5)
    assert isinstance(d, HaarDetector) and d.min_size_frac == 0.2 and d.max_width == 256
    assert isinstance(make_detector("HAAR"), HaarDetector)
    with pytest.raises(ValueError, match="unknown face detector"):
        make_detector("mtcnn")
    with pytest.raises(ValueError):
        HaarDetector(scale_factor=1.0)


def test_nms_and_iou():
    a = Detection(0, 0, 10, 10, 0.9)
    b = Detection(1, 1, 10, 10, 0.5)
    c = Detection(50, 50, 10, 10, 0.7)
    assert iou(a.box, a.box) == 1.0 and iou(a.box, c.box) == 0.0
    assert abs(iou(a.box, (5, 0, 10, 10)) - 50 / 150) < 1e-9
    kept = nms([b, c, a])
    assert kept == [a, c]

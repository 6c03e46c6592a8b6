"""core.face.align: crop geometry, border replication, crop_largest on photos and on FER-style crops."""
import cv2
import matplotlib.cbook as cbook
import numpy as np
import pytest

from emotion_ros.core.errors import InputError
from emotion_ros.core.face.align import MIN_DETECT_SIDE, FaceAligner
from emotion_ros.core.face.detect import HaarDetector, iou

HOPPER_FACE = (155.0, 105.0, 222.0, 222.0)


@pytest.fixture(scope="module")
def gray():
    with cbook.get_sample_data("grace_hopper.jpg") as f:
        path = f.name
    return cv2.imread(path, cv2.IMREAD_GRAYSCALE)


def ramp(h=200, w=300):
    y, x = np.mgrid[0:h, 0:w]
    return ((x + 2 * y) % 256).astype(np.uint8)


def test_crop_inside_is_the_resized_square():
    img = ramp()
    al = FaceAligner(size=48, margin=0.0)
    crop = al.crop(img, (50, 40, 96, 96))
    assert crop.shape == (48, 48) and crop.dtype == np.uint8
    ref = cv2.resize(img[40:136, 50:146], (48, 48), interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(crop, ref)
    # non-square box: a square of the longer side, centred
    crop2 = al.crop(img, (60, 40, 76, 96))
    np.testing.assert_array_equal(crop2, ref)
    # same-size box: the pixels themselves
    np.testing.assert_array_equal(al.crop(img, (10, 20, 48, 48)), img[20:68, 10:58])


def test_margin_grows_the_square():
    img = ramp()
    crop = FaceAligner(size=48, margin=0.25).crop(img, (74, 64, 48, 48))  # side 48 * 1.5 = 72, centred
    ref = cv2.resize(img[52:124, 62:134], (48, 48), interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(crop, ref)


def test_crop_near_edges_replicates_the_border():
    img = ramp()
    al = FaceAligner(size=48, margin=0.0)
    crop = al.crop(img, (-20, -10, 60, 60))
    padded = np.pad(img, ((10, 0), (20, 0)), mode="edge")[0:60, 0:60]
    ref = cv2.resize(padded, (48, 48), interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(crop, ref)
    # bottom-right corner
    crop = al.crop(img, (280, 180, 40, 40))
    padded = np.pad(img, ((0, 20), (0, 20)), mode="edge")[180:220, 280:320]
    np.testing.assert_array_equal(crop, cv2.resize(padded, (48, 48), interpolation=cv2.INTER_LINEAR))


def test_small_boxes_are_enlarged_and_size_override():
    img = ramp()
    al = FaceAligner()
    assert al.crop(img, (10, 10, 20, 20)).shape == (48, 48)
    assert al.crop(img, (10, 10, 100, 100), size=64).shape == (64, 64)
    # colour input is converted
    bgr = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    np.testing.assert_array_equal(al.crop(bgr, (5, 5, 90, 90)), al.crop(img, (5, 5, 90, 90)))


def test_bad_boxes_raise_input_error():
    img = ramp()
    al = FaceAligner()
    for box in [(0, 0, 0, 10), (0, 0, -5, 10), (float("nan"), 0, 10, 10), (0, 0, float("inf"), 10)]:
        with pytest.raises(InputError, match="bad face box"):
            al.crop(img, box)
    with pytest.raises(InputError, match="outside"):
        al.crop(img, (1000, 1000, 20, 20))
    with pytest.raises(InputError):
        al.crop(np.zeros((10, 10), np.float64), (0, 0, 5, 5))


def test_crop_largest_finds_the_face_in_a_photo(gray):
    al = FaceAligner(detector=HaarDetector(min_size_frac=0.1))   # box geometry (BlazeFace: test_face_blazeface)
    crop, found = al.crop_largest(gray)
    assert found and crop.shape == (48, 48)
    det = max(al.detector.detect(gray), key=lambda d: d.area)
    assert iou(det.box, HOPPER_FACE) > 0.8
    np.testing.assert_array_equal(crop, al.crop(gray, det.box))
    # what the node's pipeline would cut for the same box: same code, same pixels
    assert al.crop_largest(cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR))[1]


def test_crop_largest_passes_fer_style_crops_through(gray):
    al = FaceAligner()
    face48 = al.crop(gray, HOPPER_FACE)  # a FER2013-like 48x48 crop
    crop, found = al.crop_largest(face48)
    assert not found
    np.testing.assert_array_equal(crop, face48)
    # any image below MIN_DETECT_SIDE: whole image resized, even though it shows a face
    face90 = al.crop(gray, HOPPER_FACE, size=MIN_DETECT_SIDE - 6)
    crop, found = al.crop_largest(face90)
    assert not found
    np.testing.assert_array_equal(crop, cv2.resize(face90, (48, 48), interpolation=cv2.INTER_AREA))


def test_crop_largest_without_a_face_returns_the_whole_image():
    blank = np.full((200, 300), 90, np.uint8)
    crop, found = FaceAligner().crop_largest(blank, size=32)
    assert not found and crop.shape == (32, 32) and np.all(crop == 90)


def test_default_margin_matches_fer2013_style_crops(gray):
    """FER2013's crops are about the Haar box itself: a face cut with the default margin and blown up,
    then boxed again by the detector, fills nearly the whole crop (what FER2013's images measure: 0.98)."""
    al = FaceAligner()
    face = al.crop(gray, HOPPER_FACE, size=192)
    padded = cv2.copyMakeBorder(face, 64, 64, 64, 64, cv2.BORDER_REPLICATE)
    dets = HaarDetector(min_size_frac=0.2, max_width=400).detect(padded)
    assert dets
    side = max(dets, key=lambda d: d.area).w / 192.0
    assert 0.9 < side < 1.12, side  # margin 0.1 gives 0.85, 0.15 gives 0.79

"""core.face.track: stable ids, misses, centroid fallback, smoothing, time resets."""
import pytest

from emotion_ros.core.face.detect import Detection
from emotion_ros.core.face.track import FaceTracker


def det(x, y, s=100.0, score=0.9):
    return Detection(float(x), float(y), float(s), float(s), score)


def test_two_moving_faces_keep_their_ids():
    tr = FaceTracker()
    ids = None
    for k in range(20):
        seen = tr.update([det(10 + 5 * k, 50), det(400 - 5 * k, 60, 80)], t=k / 30)
        now = [s.id for s in seen]
        if ids is None:
            ids = now
            assert ids == ["face_1", "face_2"]
        assert now == ids
        assert all(s.missed == 0 and s.detection is not None for s in seen)
    assert seen[0].age == 20 and seen[0].hits == 20


def test_results_follow_detection_order():
    tr = FaceTracker()
    tr.update([det(0, 0), det(300, 0)], 0.0)
    seen = tr.update([det(300, 0), det(0, 0)], 0.1)
    assert [s.id for s in seen] == ["face_2", "face_1"]


def test_missed_frames_keep_the_id_until_max_missed_then_never_reuse():
    tr = FaceTracker(max_missed=3)
    a = tr.update([det(100, 100)], 0.0)[0].id
    for k in range(3):  # three frames without the face: still tracked
        assert tr.update([], 0.1 * (k + 1)) == []
        assert [t.missed for t in tr.tracks] == [k + 1]
    assert tr.update([det(102, 101)], 0.4)[0].id == a
    for k in range(4):  # four misses: dropped
        tr.update([], 0.5 + 0.1 * k)
    assert tr.tracks == []
    b = tr.update([det(100, 100)], 1.0)[0].id
    assert b != a and b == "face_2"


def test_fast_motion_uses_the_centre_distance_fallback():
    tr = FaceTracker(iou_threshold=0.3)
    a = tr.update([det(100, 100)], 0.0)[0].id
    # moved 60% of its width: IoU 0.25 < 0.3, centre distance 0.6 side < 0.75
    assert tr.update([det(160, 100)], 0.033)[0].id == a
    # a jump of two face widths is another face
    assert tr.update([det(400, 100)], 0.066)[0].id != a
    # a much smaller box at the same place is not the same face either
    tr2 = FaceTracker()
    c = tr2.update([det(100, 100, 100)], 0.0)[0].id
    assert tr2.update([det(140, 140, 30)], 0.03)[0].id != c


def test_box_is_smoothed():
    tr = FaceTracker(smoothing=0.5)
    tr.update([det(100, 100)], 0.0)
    t = tr.update([det(120, 100)], 0.1)[0]
    assert t.x == pytest.approx(110.0) and t.y == pytest.approx(100.0)
    assert t.detection.x == 120.0
    raw = FaceTracker(smoothing=1.0)
    raw.update([det(100, 100)], 0.0)
    assert raw.update([det(120, 100)], 0.1)[0].x == 120.0


def test_time_going_back_resets_tracks_but_not_the_id_counter():
    tr = FaceTracker()
    a = tr.update([det(100, 100)], 5.0)[0].id
    b = tr.update([det(100, 100)], 1.0)[0].id  # bag restarted
    assert a == "face_1" and b == "face_2"
    assert len(tr.tracks) == 1


def test_one_detection_is_not_matched_twice():
    tr = FaceTracker()
    tr.update([det(100, 100), det(130, 100)], 0.0)  # two overlapping tracks
    seen = tr.update([det(115, 100)], 0.1)
    assert len(seen) == 1
    assert sorted(t.missed for t in tr.tracks) == [0, 1]


def test_bad_detections_are_ignored():
    tr = FaceTracker()
    seen = tr.update([Detection(0, 0, 0, 10), Detection(float("nan"), 0, 10, 10), det(5, 5)], 0.0)
    assert [s.id for s in seen] == ["face_1"]

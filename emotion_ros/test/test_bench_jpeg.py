"""emotion-bench jpeg on a generated clip in the eval-clip layout (meta.json + video.avi): one row per quality, the
JPEG bytes grow with quality, faces are found after the round trip; bad arguments give one line and exit 2."""
from __future__ import annotations

import json
import os
import subprocess
import sys

PKG_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _bench(*args):
    env = dict(os.environ, PYTHONPATH=PKG_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "emotion_ros.tools.bench", "jpeg", *args], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=300)


def test_accuracy_and_bytes_per_quality_on_a_clip(tmp_path):
    from emotion_ros.tools.demo import make_face_video
    clip = tmp_path / "test_01"
    clip.mkdir()
    make_face_video(str(clip / "video.avi"), seconds=2.0, fps=10.0)
    (clip / "meta.json").write_text(json.dumps({"fps": 10.0, "spans": [
        {"start": 0.0, "end": 1.0, "kind": "silent", "face_label": "neutral"},
        {"start": 1.0, "end": 2.0, "kind": "no_face", "face_label": None}]}))
    res = _bench("--clips", str(tmp_path), "--every", "2", "--qualities", "30,90")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["frames"] == 3  # every 2nd frame (10 fps) inside the face span less its edges: 0.2, 0.4, 0.6 s
    rows = {r["images"]: r for r in out["rows"]}
    assert set(rows) == {"raw", "q30", "q90"}
    assert rows["raw"]["kb_per_frame"] == 921.6 and rows["q30"]["kb_per_frame"] < rows["q90"]["kb_per_frame"] < 200
    assert all(r["face_found"] == 1.0 for r in rows.values())  # the photo's face, whatever the quality
    assert rows["raw"]["agrees_with_raw"] == 1.0
    assert "| q90 |" in res.stdout


def test_bad_arguments_give_one_line(tmp_path):
    for args in (["--qualities", "0,50"], ["--clips", str(tmp_path)]):
        res = _bench(*args)
        assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1, res.stderr
        assert "Traceback" not in res.stderr

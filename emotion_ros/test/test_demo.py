"""emotion-demo: always ends (--duration must be > 0), and leaves nothing behind in the temporary folder."""

import json
import os
import random
import subprocess
import sys

import pytest

from emotion_ros.tools import demo

PKG_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _env(tmp_path):
    env = dict(os.environ, TMPDIR=str(tmp_path), ROS_DOMAIN_ID=str(random.randint(1, 200)),
               ROS_HOME=str(tmp_path / "roshome"), PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = PKG_ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return env


@pytest.mark.parametrize("duration", ["0", "-5", "nan", "inf"])
def test_demo_rejects_a_run_without_end(duration, tmp_path):
    # a process with a time limit: a demo that does run for ever fails this test instead of hanging it
    p = subprocess.run([sys.executable, "-m", "emotion_ros.tools.demo", "--duration", duration], env=_env(tmp_path),
                       cwd=PKG_ROOT, capture_output=True, text=True, timeout=60)
    assert p.returncode == 2, p.stdout[-2000:] + p.stderr[-2000:]
    assert len(p.stderr.strip().splitlines()) == 1 and "--duration must be more than 0 seconds" in p.stderr
    assert not os.listdir(tmp_path)  # refused before making anything


def test_demo_argument_errors(tmp_path, capsys):
    for argv, want in ((["--video", str(tmp_path / "nope.avi")], "nope.avi"),
                       (["--workdir", str(tmp_path), "--keep-input"], "--keep-input")):
        with pytest.raises(SystemExit) as e:
            demo.main(argv)
        err = capsys.readouterr().err
        assert e.value.code == 2 and want in err and "Traceback" not in err


def test_demo_short_run_removes_its_temporary_folder(tmp_path):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = dict(_env(tmp_path), TMPDIR=str(tmp))
    p = subprocess.run([sys.executable, "-m", "emotion_ros.tools.demo", "--duration", "3", "--device", "cpu"],
                       env=env, cwd=PKG_ROOT, capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    summary = json.loads(p.stdout.strip().splitlines()[-1])
    assert summary["counts"]["emotion/state"] > 0 and summary["input_kept"] is False
    made = os.path.dirname(summary["input"]["video"])
    assert os.path.dirname(made) == str(tmp) and os.path.basename(made).startswith("emotion_demo_")
    assert not os.path.exists(made)
    assert not [n for n in os.listdir(tmp) if n.startswith("emotion_demo_")]

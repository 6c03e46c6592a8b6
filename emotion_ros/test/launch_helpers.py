"""Helpers of the tests that run the product as a ROS user does (test_ros_launch.py, test_ros_run.py,
test_colcon.py): the ``ros2`` command line, ``ros2 launch`` in its own process group, test media.

``ros2 launch`` runs with ``start_new_session=True`` and is stopped with SIGINT to its whole process group (as
Ctrl-C in a terminal does); afterwards no process of that group may be left.  Every ``ros2`` call uses
``--no-daemon`` so that no ROS 2 daemon outlives the tests.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from typing import Dict, List, Optional, Sequence

import pytest

from robust_helpers import node_env  # importing it sets ROS_DOMAIN_ID / ROS_HOME for this session

VENV_BIN = os.path.dirname(os.path.abspath(sys.executable))
ROS2 = os.path.join(VENV_BIN, "ros2") if os.path.isfile(os.path.join(VENV_BIN, "ros2")) else shutil.which("ros2")
NODES = ["camera_node", "microphone_node", "face_node", "voice_node", "fusion_node", "behaviour_node"]
LIFECYCLE_NODES = ["face_node", "voice_node", "fusion_node"]
LABELS = ["neutral", "happy", "sad", "angry", "surprised", "disgusted", "scared"]


def _tooling_missing() -> Optional[str]:
    if not ROS2:
        return "the ros2 command is not installed (make setup installs it from ../shared/ros-tools)"
    import importlib.util
    if importlib.util.find_spec("launch_ros") is None:
        return "launch_ros is not installed (make setup installs it from ../shared/ros-tools)"
    return None


requires_ros2 = pytest.mark.skipif(_tooling_missing() is not None, reason=str(_tooling_missing()))


def cli_env(extra: Optional[Dict[str, str]] = None, source_tree: bool = True) -> Dict[str, str]:
    """Environment of a ``ros2`` / node process: this session's domain and ROS_HOME, the venv first on PATH.
    ``source_tree=False`` leaves PYTHONPATH alone (a colcon install space must not be shadowed by the sources)."""
    env = node_env() if source_tree else dict(os.environ, PYTHONUNBUFFERED="1", RCUTILS_LOGGING_BUFFERED_STREAM="0")
    env["PATH"] = VENV_BIN + os.pathsep + env.get("PATH", "")
    env.update(extra or {})
    return env


def ros2(*args: str, timeout: float = 90, env: Optional[Dict[str, str]] = None) -> subprocess.CompletedProcess:
    """``ros2 <args>``; stdout+stderr in ``.stdout``."""
    return subprocess.run([ROS2, *args], env=env or cli_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=timeout, start_new_session=True)


#: seconds one ``ros2`` CLI call may take before it is asked again. Service verbs (``lifecycle get``, ``param get``)
#: call the service as soon as it is discovered and then spin with no time limit, so a reply lost in that window (the
#: server's reply writer not yet matched to the client's reader; seen once in a fresh-clone CI run: an empty answer
#: after 300 s) would otherwise hang the call until the whole timeout.
PER_CALL_S = 30.0


def ros2_until(args: Sequence[str], ok, timeout: float = 90, env: Optional[Dict[str, str]] = None,
               per_call: float = PER_CALL_S) -> subprocess.CompletedProcess:
    """Repeat ``ros2 <args>`` until ``ok(result)`` (discovery on a busy machine can miss a node once); one call gets
    at most ``per_call`` seconds (``PER_CALL_S``), then it is asked again."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            res = ros2(*args, timeout=max(10.0, min(per_call, deadline - time.monotonic())), env=env)
        except subprocess.TimeoutExpired as e:  # run() killed it; keep what it printed
            out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
            res = subprocess.CompletedProcess(e.cmd, -9, stdout=out or f"(no answer in {per_call:.0f} s)")
        if ok(res) or time.monotonic() > deadline:
            return res
        time.sleep(1.0)


def lifecycle_state(node: str, env: Optional[Dict[str, str]] = None, want: str = "active",
                    timeout: float = 90) -> str:
    res = ros2_until(["lifecycle", "get", node, "--no-daemon", "--spin-time", "3"],
                     lambda r: r.stdout.split(" [")[0].strip() == want, timeout=timeout, env=env)
    return res.stdout.strip()


def lifecycle_states(nodes: Sequence[str], env: Optional[Dict[str, str]] = None, want: str = "active",
                     timeout: float = 90, per_call: float = PER_CALL_S) -> Dict[str, str]:
    """``ros2 lifecycle get`` of several nodes at once (each CLI start costs seconds on 2 cores); a node not in
    ``want`` yet is asked again until ``timeout``, one ask at most ``per_call`` seconds (``PER_CALL_S``: a lost
    service reply hangs the CLI). Returns {node: last answer}."""
    env = env or cli_env()
    deadline = time.monotonic() + timeout
    answers: Dict[str, str] = {}
    pending = list(nodes)
    while pending:
        procs = {n: subprocess.Popen([ROS2, "lifecycle", "get", n, "--no-daemon", "--spin-time", "3"], env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     start_new_session=True) for n in pending}
        for n, p in procs.items():
            try:
                answers[n] = p.communicate(timeout=max(10.0, min(per_call, deadline - time.monotonic())))[0].strip()
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                answers[n] = p.communicate()[0].strip() or f"(no answer in {per_call:.0f} s)"
        pending = [n for n in pending if answers[n].split(" [")[0] != want]
        if pending and time.monotonic() > deadline:
            break
        if pending:
            time.sleep(1.0)
    return answers


def node_names(env: Optional[Dict[str, str]] = None, want: Sequence[str] = (), timeout: float = 60) -> List[str]:
    res = ros2_until(["node", "list", "--no-daemon", "--spin-time", "3"],
                     lambda r: set(want) <= set(r.stdout.split()), timeout=timeout, env=env)
    return res.stdout.split()


def group_pids(pgid: int) -> List[int]:
    """Processes still in process group ``pgid``."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            out.append(int(entry))
    return out


class Background:
    """A command in its own session (process group) with stdout+stderr in ``log_path``."""

    def __init__(self, cmd: Sequence[str], log_path: str, env: Optional[Dict[str, str]] = None,
                 cwd: Optional[str] = None):
        self.cmd = list(cmd)
        self.log_path = log_path
        self._log = open(log_path, "w")
        self.proc = subprocess.Popen(self.cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env or cli_env(),
                                     cwd=cwd, start_new_session=True)
        self.pgid = os.getpgid(self.proc.pid)
        self.returncode: Optional[int] = None

    def output(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def tail(self, n: int = 6000) -> str:
        return self.output()[-n:]

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_output(self, text: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.output():
                return True
            if not self.alive():
                return text in self.output()
            time.sleep(0.5)
        return False

    def wait(self, timeout: float) -> Optional[int]:
        try:
            self.returncode = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        self._log.close()
        return self.returncode

    def stop(self, timeout: float = 60) -> Optional[int]:
        """SIGINT to the whole group (Ctrl-C); SIGKILL after ``timeout``. Returns the exit code (None: killed)."""
        if self.alive():
            try:
                os.killpg(self.pgid, signal.SIGINT)
            except ProcessLookupError:
                pass
        code = self.wait(timeout)
        if code is None:
            self.kill()
        return code

    def leftovers(self, grace: float = 10.0) -> List[str]:
        """Command lines of processes of the group still running ``grace`` s after the leader ended."""
        deadline = time.monotonic() + grace
        while group_pids(self.pgid) and time.monotonic() < deadline:
            time.sleep(0.2)
        out = []
        for pid in group_pids(self.pgid):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    out.append(f"{pid}: " + f.read().replace(b"\0", b" ").decode(errors="replace"))
            except OSError:
                pass
        return out

    def kill(self) -> None:
        try:
            os.killpg(self.pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        if not self._log.closed:
            self._log.close()


def ros2_launch(args: Sequence[str], log_path: str, env: Optional[Dict[str, str]] = None) -> Background:
    """``ros2 launch emotion_ros emotion.launch.py <args>``. TMPDIR is the log's folder: launch_ros writes a
    /tmp/launch_params_* file per node and never removes it."""
    env = dict(env or cli_env(), TMPDIR=os.path.dirname(os.path.abspath(log_path)))
    return Background([ROS2, "launch", "emotion_ros", "emotion.launch.py", *args], log_path, env=env)


def ros2_run(executable: str, args: Sequence[str], log_path: str, env: Optional[Dict[str, str]] = None
             ) -> Background:
    return Background([ROS2, "run", "emotion_ros", executable, *args], log_path, env=env)


# ---------------------------------------------------------------------------------------------------------------
# Test media and rule table
# ---------------------------------------------------------------------------------------------------------------

def make_media(folder: str) -> Dict[str, str]:
    """A 4 s 640x480 10 fps clip of a real face (matplotlib's photo) and espeak-ng speech (the demo's inputs)."""
    from emotion_ros.tools.demo import make_face_video, make_speech
    os.makedirs(folder, exist_ok=True)
    return {"video": make_face_video(os.path.join(folder, "face.avi"), seconds=4.0, fps=10.0),
            "audio": make_speech(os.path.join(folder, "speech.wav"))}


def write_any_emotion_rules(path: str) -> str:
    """A rule table with one rule per label, each firing at any confidence after 0.3 s: whatever the models make of
    the input, a BehaviourDecision follows."""
    lines = ["rules:"]
    for label in LABELS:
        lines += [f"  - name: test_{label}", f"    emotion: {label}", "    min_confidence: 0.01",
                  "    dwell_s: 0.3", '    say: ""', "    expression: neutral", "    cooldown_s: 1"]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path

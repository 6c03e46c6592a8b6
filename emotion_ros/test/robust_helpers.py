"""Shared helpers of the robustness tests (test_robust_*.py): node processes, a test-side graph, /rosout.

Importing this module sets a random ``ROS_DOMAIN_ID`` (unless one is set) and a private ``ROS_HOME`` so that
concurrent test runs do not see each other and logs do not pile up in ~/.ros.
"""
from __future__ import annotations

import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

os.environ.setdefault("ROS_DOMAIN_ID", str(random.randint(1, 200)))
os.environ.setdefault("ROS_HOME", os.path.join(tempfile.gettempdir(), f"emotion_ros-robust-roshome-{os.getpid()}"))

import numpy as np  # noqa: E402
import rclpy  # noqa: E402
from rclpy.context import Context  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy  # noqa: E402

from emotion_ros.tools.bench.procs import interrupt, proc_memory_mb  # noqa: E402 (SIGINT then SIGKILL; RSS)

PKG_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: Log levels of rcl_interfaces/msg/Log
DEBUG, INFO, WARN, ERROR, FATAL = 10, 20, 30, 40, 50


# ---------------------------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------------------------

def small_checkpoints(out_dir: str, kinds: Sequence[str] = ("face", "voice", "fusion"), seed: int = 0
                      ) -> Dict[str, str]:
    """Small, fast, randomly initialised checkpoints of the real architectures (real embedding sizes, so they fit
    the fusion model)."""
    import torch
    from emotion_ros.core.face.model import ARCH as FACE_ARCH, DEFAULT_INPUT, FaceCNN
    from emotion_ros.core.fusion_model import ARCH as FUSION_ARCH, FusionNet
    from emotion_ros.core.modelio import save_checkpoint
    from emotion_ros.core.voice.features import FeatureSpec
    from emotion_ros.core.voice.model import ARCH as VOICE_ARCH, SpeechCNNBiLSTM

    torch.manual_seed(seed)
    os.makedirs(out_dir, exist_ok=True)
    out = {}
    if "face" in kinds:
        out["face"] = os.path.join(out_dir, "face.pt")
        save_checkpoint(out["face"], kind="face", arch=FACE_ARCH, model=FaceCNN(widths=(8, 16), embed_dim=256),
                        input_spec=dict(DEFAULT_INPUT), config={"model": {"widths": [8, 16], "embed_dim": 256}})
    if "voice" in kinds:
        spec = FeatureSpec()
        out["voice"] = os.path.join(out_dir, "voice.pt")
        net = SpeechCNNBiLSTM(n_mels=spec.n_mels, conv_channels=(16, 16, 16), lstm_hidden=16, embed_dim=128)
        save_checkpoint(out["voice"], kind="voice", arch=VOICE_ARCH, model=net,
                        input_spec={"features": spec.to_dict(), "mean": [0.0] * spec.n_mels,
                                    "std": [1.0] * spec.n_mels, "min_seconds": 0.3},
                        config={"model": {"conv_channels": [16, 16, 16], "lstm_hidden": 16, "embed_dim": 128}})
    if "fusion" in kinds:
        out["fusion"] = os.path.join(out_dir, "fusion.pt")
        save_checkpoint(out["fusion"], kind="fusion", arch=FUSION_ARCH, model=FusionNet(256, 128, hidden=16),
                        input_spec={"face_dim": 256, "voice_dim": 128}, config={"model": {"hidden": 16}})
    return out


# ---------------------------------------------------------------------------------------------------------------
# Node processes
# ---------------------------------------------------------------------------------------------------------------

def node_env(extra: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = PKG_ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("AMENT_PREFIX_PATH", sys.prefix)
    env["PYTHONUNBUFFERED"] = "1"
    env["RCUTILS_LOGGING_BUFFERED_STREAM"] = "0"
    env.update(extra or {})
    return env


def start_node(kind: str, log_path: str, *params: str) -> Tuple[subprocess.Popen, object]:
    """``python -m emotion_ros.nodes.<kind> --ros-args -p <param> ...`` with stdout+stderr in ``log_path``:
    (process, open log file); end it with :func:`stop_node`.  (:class:`NodeProcess` for the dict-of-params form.)"""
    args = [sys.executable, "-m", f"emotion_ros.nodes.{kind}", "--ros-args"]
    for p in params:
        args += ["-p", p]
    log = open(log_path, "w")
    return subprocess.Popen(args, cwd=PKG_ROOT, env=node_env(), stdout=log, stderr=subprocess.STDOUT), log


def stop_node(proc: subprocess.Popen, log) -> None:
    """:func:`interrupt`, then close the log."""
    interrupt(proc)
    log.close()


class NodeProcess:
    """``python -m emotion_ros.nodes.<kind> --ros-args -p k:=v ...`` with stdout+stderr in ``log_path``."""

    def __init__(self, kind: str, log_dir: str, params: Optional[Dict[str, object]] = None,
                 extra_args: Sequence[str] = (), tag: str = ""):
        self.kind = kind
        os.makedirs(log_dir, exist_ok=True)
        self.log_path = os.path.join(log_dir, f"{kind}{tag}_{int(time.time() * 1e3) % 10**8}.log")
        args = [sys.executable, "-m", f"emotion_ros.nodes.{kind}", "--ros-args"]
        for k, v in (params or {}).items():
            if isinstance(v, bool):
                v = "true" if v else "false"
            args += ["-p", f"{k}:={v}"]
        args += list(extra_args)
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(args, cwd=PKG_ROOT, env=node_env(), stdout=self._log,
                                     stderr=subprocess.STDOUT)
        self.pid = self.proc.pid

    @property
    def name(self) -> str:
        return f"{self.kind}_node"

    def alive(self) -> bool:
        return self.proc.poll() is None

    def output(self) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def wait_exit(self, timeout: float) -> Optional[int]:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def kill(self) -> None:
        """SIGKILL: a crash."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self, timeout: float = 10.0) -> Optional[int]:
        code = interrupt(self.proc, timeout)
        if not self._log.closed:
            self._log.close()
        return code

    def rss_mb(self) -> Optional[float]:
        return proc_memory_mb(self.pid).get("VmRSS")


# ---------------------------------------------------------------------------------------------------------------
# The test's side of the graph
# ---------------------------------------------------------------------------------------------------------------

def rosout_qos() -> QoSProfile:
    # rclpy's /rosout publishers are reliable + transient local (depth 1000): a transient-local reader also gets
    # what was logged shortly before it matched.
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1000, reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.TRANSIENT_LOCAL)


class Graph:
    """An rclpy context + node + executor for one test module. Subscriptions collect ``(receipt time, msg)``."""

    def __init__(self, name: str = "robust_tester"):
        from rcl_interfaces.msg import Log
        self.ctx = Context()
        rclpy.init(context=self.ctx, args=[])
        self.node = Node(name, context=self.ctx)
        self.ex = SingleThreadedExecutor(context=self.ctx)
        self.ex.add_node(self.node)
        self.lock = threading.Lock()
        self.received: Dict[str, List[Tuple[float, object]]] = {}
        self._pubs: Dict[str, object] = {}
        self._subs: Dict[str, object] = {}
        self.rosout: List[object] = []
        self.subscribe("/rosout", Log, rosout_qos(), store=self.rosout, raw=True)

    # -- pub/sub ----------------------------------------------------------------------------------------------------
    def publisher(self, topic: str, msg_type, qos):
        if topic not in self._pubs:
            self._pubs[topic] = self.node.create_publisher(msg_type, topic, qos)
        return self._pubs[topic]

    def subscribe(self, topic: str, msg_type, qos, store: Optional[list] = None, raw: bool = False) -> list:
        """Collect messages of ``topic`` into a list (``(receipt time, msg)``, or just msg when ``raw``)."""
        if topic in self._subs:
            return self.received[topic]
        buf = store if store is not None else []
        self.received[topic] = buf

        def cb(msg, buf=buf):
            t = time.time()
            with self.lock:
                buf.append(msg if raw else (t, msg))
        self._subs[topic] = self.node.create_subscription(msg_type, topic, cb, qos)
        return buf

    def messages(self, topic: str) -> List[object]:
        with self.lock:
            return [m for _, m in self.received.get(topic, [])]

    def clear(self, topic: Optional[str] = None) -> None:
        with self.lock:
            for k, v in self.received.items():
                if topic is None or k == topic:
                    v.clear()

    # -- waiting ----------------------------------------------------------------------------------------------------
    def spin_for(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.ex.spin_once(timeout_sec=min(0.02, max(0.0, end - time.monotonic())))

    def spin_until(self, pred: Callable[[], bool], timeout: float) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if pred():
                return True
            self.ex.spin_once(timeout_sec=0.02)
        return bool(pred())

    def wait_node_up(self, proc: NodeProcess, subscribes: Iterable[str] = (), publishes: Iterable[str] = (),
                     timeout: float = 60.0) -> None:
        """Until ``proc``'s node subscribes/publishes the given topics (fails with its output if it dies)."""
        subscribes, publishes = list(subscribes), list(publishes)

        def ready():
            return (all(self.node.count_subscribers(t) > 0 for t in subscribes)
                    and all(self.node.count_publishers(t) > 0 for t in publishes))
        ok = self.spin_until(lambda: ready() or not proc.alive(), timeout)
        if not ok or not proc.alive():
            raise AssertionError(f"{proc.name} did not come up (rc={proc.proc.poll()}):\n{proc.output()[-4000:]}")

    # -- /rosout ----------------------------------------------------------------------------------------------------
    def logs(self, node: Optional[str] = None, min_level: int = WARN, contains: Sequence[str] = ()) -> List[str]:
        """Text of /rosout lines (from ``node``, at least ``min_level``, containing every string of ``contains``,
        case-insensitive)."""
        with self.lock:
            lines = list(self.rosout)
        out = []
        for m in lines:
            lv = m.level if isinstance(m.level, int) else int.from_bytes(m.level, "little")
            if lv < min_level or (node and not m.name.endswith(node)):
                continue
            if all(c.lower() in m.msg.lower() for c in contains):
                out.append(m.msg)
        return out

    def wait_log(self, node: Optional[str], contains: Sequence[str], timeout: float = 10.0,
                 min_level: int = WARN) -> bool:
        return self.spin_until(lambda: bool(self.logs(node, min_level, contains)), timeout)

    # -- diagnostics ------------------------------------------------------------------------------------------------
    def diag_statuses(self, node: str) -> List[Tuple[float, object]]:
        """(receipt time, DiagnosticStatus) of ``node`` from /diagnostics (subscribe first with subscribe_diag)."""
        out = []
        with self.lock:
            arrs = list(self.received.get("/diagnostics", []))
        for t, arr in arrs:
            for st in arr.status:
                if st.name.startswith(node):
                    out.append((t, st))
        return out

    def subscribe_diag(self) -> list:
        from diagnostic_msgs.msg import DiagnosticArray
        return self.subscribe("/diagnostics", DiagnosticArray, 100)

    def close(self) -> None:
        if getattr(self, "_closed", False):
            return
        self._closed = True
        try:
            self.ex.shutdown(timeout_sec=1.0)
            self.node.destroy_node()
        finally:
            rclpy.try_shutdown(context=self.ctx)


def diag_values(status) -> Dict[str, str]:
    return {kv.key: kv.value for kv in status.values}


def level_of(status) -> int:
    lv = status.level
    return lv if isinstance(lv, int) else int.from_bytes(lv, "little")


# ---------------------------------------------------------------------------------------------------------------
# Test inputs
# ---------------------------------------------------------------------------------------------------------------

def face_scene(n_faces: int = 1, width: int = 640, height: int = 480, shift=(0, 0)) -> np.ndarray:
    """A BGR frame with ``n_faces`` real faces (the benchmark's scene)."""
    from emotion_ros.tools.bench import compose_scene
    return compose_scene(n_faces, shift=shift, width=width, height=height)[0]


def speech(rate: int = 16000, seconds: Optional[float] = None) -> Tuple[np.ndarray, List[Tuple[float, float]]]:
    """Speech with pauses (espeak-ng if installed, else synthetic) at ``rate``: (float32 mono, utterances)."""
    from emotion_ros.tools.bench import speech_stream
    s = speech_stream(rate, pause_s=1.0)
    wave, utts = s.wave, s.utterances
    if seconds is not None:
        n = int(seconds * rate)
        wave = wave[:n] if wave.size >= n else np.concatenate([wave, np.zeros(n - wave.size, np.float32)])
        utts = [u for u in utts if u[1] <= seconds]
    return wave, utts


def sec_stamp(t: float):
    from emotion_ros.ros.convert import sec_to_stamp
    return sec_to_stamp(t)

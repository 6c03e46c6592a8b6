"""The bench's models (random-init checkpoints of the real architectures) and processes: the node processes, their
environment, and what /proc says about them (CPU time, memory, running training jobs)."""
from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
from typing import Dict, List, Optional, Sequence, Tuple

from .common import NODES, PKG_ROOT

# ---------------------------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------------------------

def make_test_checkpoints(out_dir: str, seed: int = 0, kinds: Sequence[str] = NODES) -> Dict[str, str]:
    """Randomly initialised checkpoints of the real architectures (same size and cost as trained ones)."""
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
        net = FaceCNN().eval()
        out["face"] = os.path.join(out_dir, "face.pt")
        save_checkpoint(out["face"], kind="face", arch=FACE_ARCH, model=net, input_spec=dict(DEFAULT_INPUT),
                        config={"model": {"widths": [32, 64, 128, 256], "embed_dim": 256}})
    if "voice" in kinds:
        spec = FeatureSpec()
        net = SpeechCNNBiLSTM(n_mels=spec.n_mels).eval()
        out["voice"] = os.path.join(out_dir, "voice.pt")
        save_checkpoint(out["voice"], kind="voice", arch=VOICE_ARCH, model=net,
                        input_spec={"features": spec.to_dict(), "mean": [0.0] * spec.n_mels,
                                    "std": [1.0] * spec.n_mels, "min_seconds": 0.3},
                        config={"model": {"conv_channels": [64, 128, 128], "lstm_hidden": 96, "embed_dim": 128}})
    if "fusion" in kinds:
        net = FusionNet(256, 128, hidden=64).eval()
        out["fusion"] = os.path.join(out_dir, "fusion.pt")
        save_checkpoint(out["fusion"], kind="fusion", arch=FUSION_ARCH, model=net,
                        input_spec={"face_dim": 256, "voice_dim": 128}, config={"model": {"hidden": 64}})
    return out


def default_model_paths() -> Dict[str, str]:
    from emotion_ros import paths
    return {k: paths.model_path(f"{k}.pt") for k in NODES}


def resolve_models(args, tmp_dir: str) -> Tuple[Dict[str, str], List[str]]:
    """Model path per node kind and the kinds that got a random-init checkpoint."""
    given = {"face": args.face_model, "voice": args.voice_model, "fusion": args.fusion_model}
    defaults = default_model_paths()
    paths, missing = {}, []
    for k in NODES:
        p = given[k] or defaults[k]
        if args.random_models or not (p and os.path.isfile(p)):
            missing.append(k)
        else:
            paths[k] = p
    if missing:
        paths.update(make_test_checkpoints(os.path.join(tmp_dir, "models"), kinds=missing))
    return paths, missing


# ---------------------------------------------------------------------------------------------------------------
# Processes
# ---------------------------------------------------------------------------------------------------------------

_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def proc_cpu_seconds(pid: int) -> Optional[float]:
    """utime + stime of ``pid`` in seconds (None when the process is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rfind(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / float(_CLK_TCK)


def proc_memory_mb(pid: int) -> Dict[str, float]:
    """VmRSS and VmHWM (peak RSS) of ``pid`` in MiB ({} when the process is gone)."""
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    key, val = line.split(":", 1)
                    out[key] = int(val.split()[0]) / 1024.0
    except OSError:
        return {}
    return out


def node_module_exists(kind: str) -> bool:
    try:
        return importlib.util.find_spec(f"emotion_ros.nodes.{kind}") is not None
    except (ImportError, ValueError):
        return False


def fastdds_profile() -> Optional[str]:
    """The shared-memory Fast DDS profile of the package, when it exists."""
    if os.environ.get("FASTDDS_DEFAULT_PROFILES_FILE"):
        return os.environ["FASTDDS_DEFAULT_PROFILES_FILE"]
    for base in (PKG_ROOT,):
        p = os.path.join(base, "config", "fastdds_shm.xml")
        if os.path.isfile(p):
            return p
    try:
        from emotion_ros.env import config_path
        return config_path("fastdds_shm.xml")
    except Exception:  # noqa: BLE001
        return None


def node_env(extra: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = PKG_ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("AMENT_PREFIX_PATH", sys.prefix)
    prof = fastdds_profile()
    if prof:
        env["FASTDDS_DEFAULT_PROFILES_FILE"] = prof
    env.update(extra or {})
    return env


def interrupt(proc: subprocess.Popen, timeout: float = 10.0) -> Optional[int]:
    """SIGINT (a node's run_node shuts down cleanly on it), SIGKILL after ``timeout`` s; the exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


class NodeProcess:
    """One node in its own process: ``python -m emotion_ros.nodes.<kind> --ros-args ...``; output to a log file."""

    def __init__(self, kind: str, params: Dict[str, object], log_dir: str, env: Dict[str, str],
                 extra_args: Sequence[str] = ()):
        self.kind = kind
        self.log_path = os.path.join(log_dir, f"{kind}_node.log")
        args = [sys.executable, "-m", f"emotion_ros.nodes.{kind}", "--ros-args"]
        for k, v in params.items():
            if isinstance(v, bool):
                v = "true" if v else "false"
            args += ["-p", f"{k}:={v}"]
        args += list(extra_args)
        self.args = args
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(args, env=env, stdout=self._log, stderr=subprocess.STDOUT, cwd=PKG_ROOT)
        self.pid = self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, n: int = 20) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return ""

    def stop(self, timeout: float = 10.0) -> Optional[int]:
        code = interrupt(self.proc, timeout)
        self._log.close()
        return code


def training_running() -> List[str]:
    """Command lines of running training jobs (they share the CPU; results are then pessimistic)."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "emotion_ros.training.train_" in cmd or "emotion-train" in cmd:
            found.append(cmd.strip())
    return found

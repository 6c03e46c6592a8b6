"""emotion-bench: throughput, latency and footprint of the emotion_ros graph on this machine.

What it runs: face_node, voice_node and fusion_node as separate processes (``python -m emotion_ros.nodes.<x>``),
talking over real DDS (Fast DDS; with ``config/fastdds_shm.xml`` as ``FASTDDS_DEFAULT_PROFILES_FILE`` when that file
exists), and this process as the driver: it publishes

- ``image_raw``: 640x480 bgr8 frames at ``--fps`` (30) showing real faces (matplotlib's Grace Hopper sample photo,
  cropped, scaled and tiled onto a background: 1 face of ~170 px, then 5 faces of ~100 px), moving by a few pixels
  from frame to frame; the frame's header stamp is the wall-clock time at publishing;
- ``audio`` (+ latched ``audio_info``): speech (espeak-ng sentences when espeak-ng is installed, else a synthetic
  voiced signal) with pauses, as S16LE mono 16 kHz in 20 ms chunks at real time, each stamped with the time of its
  first sample and published when its last sample is "captured".

Phases (``--phases``): ``face_1`` and ``face_5``; audio streams throughout. Each phase: ``--warmup`` seconds
discarded, then ``--seconds`` measured, then a short grace period for late results.

Measured:

- face path: frames processed per second (``emotion/faces`` messages for frames published in the window),
  ``dropped`` (published minus answered), latency from the frame's header stamp to receipt of its
  FaceEmotionArray (p50/p95/max) and the mean number of faces found per frame;
- voice: real-time factor (processing time / audio duration) from the voice node's ``/diagnostics`` when it reports
  one (``rtf_source`` says so), and always in-process by running ``VoicePipeline`` on the same audio
  (``rtf_inprocess``); latency from the end of each spoken utterance (known from the generated audio) to receipt of
  its final (non-partial) VoiceEmotion;
- end to end: frame stamp to receipt of the EmotionState whose header.stamp equals that frame's stamp;
- per node process: peak RSS (VmHWM), current RSS, CPU % (utime+stime over the measured window; 100 = one core);
- device (from the nodes' diagnostics, else ``torch.cuda.is_available()``).

``--profile`` adds an in-process breakdown of the face node's per-frame work (message conversion (to BGR for BlazeFace,
grey for Haar, as the node does), grey conversion +
detection, tracking, alignment, model, result message) with the node's default parameters, so one can see where
the time goes; a face model file with int8 ranges (``emotion-train quantize-face``) adds a row of the other precision
(``face_N_float32`` with the node's default ``int8: true``).

Output: progress lines, then as the LAST line one JSON object (see ``--help``). Models: the nodes' defaults
(``models/{face,voice,fusion}.pt``); a missing one is replaced by a randomly initialised checkpoint of the same
architecture (same cost; ``models.random_init`` lists them), or all with ``--random-models``.

    emotion-bench --seconds 15
    emotion-bench --seconds 3 --warmup 1 --profile       # smoke run
    emotion-bench detect                                   # face detectors compared (tools/bench_detect.py)
    emotion-bench hosts                                    # robot + server on two network namespaces (bench_hosts.py)
    emotion-bench jpeg                                     # face accuracy vs JPEG quality on the eval clips
"""
from __future__ import annotations

import argparse
import collections
import importlib.util
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

PKG_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # .../emotion_ros (package)
NODES = ("face", "voice", "fusion")
WIDTH, HEIGHT = 640, 480
AUDIO_RATE = 16000

# Targets (2 CPU cores) checked in the JSON's "targets".
TARGETS = {
    "face_1_fps_min": 29.0,          # 30 fps input, nothing dropped (allow 1 fps of pacing jitter)
    "face_1_dropped_max": 0,
    "face_1_latency_ms_p95_max": 30.0,
    "face_5_fps_min": 15.0,
    "voice_rtf_max": 0.05,
    "end_to_end_latency_ms_p95_max": 50.0,
    "total_rss_mb_max": 1536.0,
}


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---------------------------------------------------------------------------------------------------------------
# Test scenes: real faces tiled onto a background
# ---------------------------------------------------------------------------------------------------------------

_HOPPER_FACE = (155, 105, 222, 222)  # Haar box of the face in grace_hopper.jpg (600x512)


def face_tile() -> Tuple[np.ndarray, Tuple[float, float, float, float]]:
    """Head-and-shoulders crop of matplotlib's grace_hopper.jpg (BGR) and the face box inside it (x, y, w, h)."""
    import cv2
    import matplotlib.cbook as cbook
    img = cv2.imread(str(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)))
    if img is None:
        raise RuntimeError("cannot read matplotlib's sample image grace_hopper.jpg")
    x, y, w, h = _HOPPER_FACE
    H, W = img.shape[:2]
    x0, y0 = max(0, int(x - 0.45 * w)), max(0, int(y - 0.36 * h))
    x1, y1 = min(W, int(x + w + 0.45 * w)), min(H, int(y + h + 0.54 * h))
    return img[y0:y1, x0:x1].copy(), (x - x0, y - y0, w, h)


def background(width: int = WIDTH, height: int = HEIGHT, seed: int = 0) -> np.ndarray:
    """A colour gradient with a few flat rectangles (some texture, no faces)."""
    import cv2
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    bg = np.dstack([90 + 60 * xx / width, 110 + 40 * yy / height, 130 - 50 * xx / width]).astype(np.uint8)
    for _ in range(12):
        c = tuple(int(v) for v in rng.integers(40, 220, 3))
        px, py = int(rng.integers(0, width)), int(rng.integers(0, height))
        cv2.rectangle(bg, (px, py), (px + int(rng.integers(20, 120)), py + int(rng.integers(20, 120))), c, -1)
    return bg


def compose_scene(n_faces: int, shift: Tuple[int, int] = (0, 0), face_px: Optional[int] = None,
                  width: int = WIDTH, height: int = HEIGHT, seed: int = 0
                  ) -> Tuple[np.ndarray, List[Tuple[int, int, int, int]]]:
    """BGR frame with ``n_faces`` (1..6) copies of a real face and their face boxes (x, y, w, h).

    One face: ~170 px, centred (a person about a metre from the camera); 2-6 faces: ~100 px each in two rows.
    ``shift`` moves all faces by (dx, dy) pixels (motion between frames). Alternate copies are mirrored."""
    import cv2
    if not 0 <= n_faces <= 6:
        raise ValueError("n_faces must be in 0..6")
    frame = background(width, height, seed)
    if n_faces == 0:
        return frame, []
    tile, (fx, fy, fw, fh) = face_tile()
    face_px = face_px or (int(0.36 * height) if n_faces == 1 else int(0.21 * height))
    s = face_px / float(fw)
    tile = cv2.resize(tile, None, fx=s, fy=s, interpolation=cv2.INTER_AREA)
    th, tw = tile.shape[:2]
    if n_faces == 1:
        pos = [((width - tw) // 2, (height - th) // 2)]
    else:
        top = (n_faces + 1) // 2
        bottom = n_faces - top
        pos = []
        for row, count, y in ((0, top, 10), (1, bottom, height - th - 10)):
            if count == 0:
                continue
            gap = (width - count * tw) / (count + 1)
            pos += [(int(gap + i * (tw + gap)), int(y)) for i in range(count)]
    boxes = []
    dx, dy = shift
    for i, (x, y) in enumerate(pos):
        x = int(np.clip(x + dx, 0, width - tw))
        y = int(np.clip(y + dy, 0, height - th))
        frame[y:y + th, x:x + tw] = tile[:, ::-1] if i % 2 else tile
        bx = x + (tw - (fx + fw) * s if i % 2 else fx * s)
        boxes.append((int(round(bx)), int(round(y + fy * s)), int(round(fw * s)), int(round(fh * s))))
    return frame, boxes


def scene_frames(n_faces: int, count: int = 30) -> List[np.ndarray]:
    """``count`` frames of one scene with the faces moving on a small circle (radius 4 px)."""
    out = []
    for k in range(count):
        a = 2 * math.pi * k / count
        out.append(compose_scene(n_faces, shift=(int(round(4 * math.cos(a))), int(round(4 * math.sin(a)))))[0])
    return out


# ---------------------------------------------------------------------------------------------------------------
# Test audio: speech with pauses, utterance ends known
# ---------------------------------------------------------------------------------------------------------------

SENTENCES = (
    "I can't believe we finally won the game today!",
    "Please leave me alone, I am really tired.",
    "What on earth are you doing in my kitchen?",
    "That is the most wonderful news I have heard all year.",
    "Oh no, I think I lost my keys again.",
    "The meeting starts at nine, do not be late.",
)


@dataclass
class SpeechStream:
    wave: np.ndarray                 # float32 mono at ``rate``
    rate: int
    utterances: List[Tuple[float, float]]  # (start_s, end_s) of speech, seconds from the stream's start
    source: str                      # "espeak-ng" | "synthetic"

    @property
    def duration(self) -> float:
        return self.wave.size / float(self.rate)


def _espeak(text: str, rate: int, voice: str = "en-us", speed: int = 160) -> Optional[np.ndarray]:
    exe = shutil.which("espeak-ng")
    if not exe:
        return None
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "u.wav")
        try:
            subprocess.run([exe, "-v", voice, "-s", str(speed), "-w", path, text], check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30)
            import soundfile as sf
            x, sr = sf.read(path, dtype="float32", always_2d=True)
        except (OSError, subprocess.SubprocessError, RuntimeError):
            return None
    x = x.mean(axis=1)
    if sr != rate:
        import soxr
        x = soxr.resample(x, sr, rate).astype(np.float32)
    return x


def _synthetic_utterance(rng: np.random.Generator, rate: int, seconds: float) -> np.ndarray:
    """A voiced-speech-like signal: harmonics of a wandering pitch, syllable-rate amplitude modulation."""
    n = int(seconds * rate)
    t = np.arange(n) / rate
    f0 = 140 + 30 * np.sin(2 * np.pi * 0.7 * t + rng.uniform(0, 6)) + rng.uniform(-20, 20)
    phase = 2 * np.pi * np.cumsum(f0) / rate
    x = sum(np.sin(k * phase) / k for k in range(1, 12))
    env = np.clip(np.sin(2 * np.pi * 4.0 * t + rng.uniform(0, 6)), 0, None) ** 0.5
    env *= np.minimum(1.0, np.minimum(t, t[-1] - t) / 0.05)
    return (0.25 * x * env / np.max(np.abs(x))).astype(np.float32)


def speech_stream(rate: int = AUDIO_RATE, pause_s: float = 1.2, seed: int = 0,
                  synthetic: bool = False) -> SpeechStream:
    """Utterances separated by ``pause_s`` of quiet noise (-60 dBFS); ends are the last sample above -40 dBFS."""
    rng = np.random.default_rng(seed)
    parts, utts, pos = [], [], 0
    source = "synthetic"
    lead = np.zeros(int(0.5 * rate), np.float32)
    parts.append(lead)
    pos += lead.size
    for i, text in enumerate(SENTENCES):
        x = None if synthetic else _espeak(text, rate)
        if x is not None:
            source = "espeak-ng"
            x = 0.5 * x / max(1e-6, float(np.max(np.abs(x))))
        else:
            x = _synthetic_utterance(rng, rate, 1.5 + 0.4 * (i % 3))
        loud = np.nonzero(np.abs(x) > 0.01)[0]
        if loud.size == 0:
            continue
        utts.append(((pos + loud[0]) / rate, (pos + loud[-1] + 1) / rate))
        pause = np.zeros(int(pause_s * rate), np.float32)
        parts += [x.astype(np.float32), pause]
        pos += x.size + pause.size
    wave = np.concatenate(parts)
    wave = wave + (rng.standard_normal(wave.size) * 10 ** (-60 / 20)).astype(np.float32)
    return SpeechStream(np.clip(wave, -1, 1).astype(np.float32), rate, utts, source)


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
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


# ---------------------------------------------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------------------------------------------

def pct(values: Sequence[float], q: float) -> Optional[float]:
    if not len(values):
        return None
    return round(float(np.percentile(np.asarray(values, np.float64), q)), 2)


def latency_stats(lat_s: Sequence[float], prefix: str = "latency_ms") -> Dict[str, Optional[float]]:
    ms = [1e3 * v for v in lat_s]
    return {f"{prefix}_p50": pct(ms, 50), f"{prefix}_p95": pct(ms, 95),
            f"{prefix}_max": round(max(ms), 2) if ms else None}


def stamp_key(stamp) -> Tuple[int, int]:
    return (int(stamp.sec), int(stamp.nanosec))


# ---------------------------------------------------------------------------------------------------------------
# The driver (this process on the ROS graph)
# ---------------------------------------------------------------------------------------------------------------

class Driver:
    """Publishes frames and audio, records every result with its receipt time."""

    def __init__(self, context, speech: SpeechStream):
        from audio_common_msgs.msg import AudioDataStamped, AudioInfo
        from diagnostic_msgs.msg import DiagnosticArray
        from emotion_msgs.msg import EmotionState, FaceEmotionArray, VoiceEmotion
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.node import Node
        from sensor_msgs.msg import Image

        from emotion_ros.ros.node_utils import latched_qos, reliable_qos, sensor_qos

        self.node = Node("emotion_bench_driver", context=context)
        self.image_pub = self.node.create_publisher(Image, "image_raw", sensor_qos(1))
        self.audio_pub = self.node.create_publisher(AudioDataStamped, "audio", reliable_qos(50))
        self.info_pub = self.node.create_publisher(AudioInfo, "audio_info", latched_qos())
        self.lock = threading.Lock()
        self.faces: Dict[Tuple[int, int], Tuple[float, int]] = {}     # frame stamp -> (receipt, n faces)
        self.states: Dict[Tuple[int, int], float] = {}                 # state stamp -> first receipt
        self.state_log: List[Tuple[float, float, float, float]] = []   # (receipt, stamp, face_w, voice_w)
        self.voice: List[Tuple[float, float, bool, float]] = []        # (receipt, end_s, partial, start_s)
        self.diag: Dict[str, Dict[str, str]] = {}                      # status name -> values (+ _level, _message)
        self.diag_history: Dict[str, List[Dict[str, str]]] = collections.defaultdict(list)
        q = reliable_qos(100)
        self.node.create_subscription(FaceEmotionArray, "emotion/faces", self._on_faces, q)
        self.node.create_subscription(EmotionState, "emotion/state", self._on_state, q)
        self.node.create_subscription(VoiceEmotion, "emotion/voice", self._on_voice, q)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, 50)
        self.executor = SingleThreadedExecutor(context=context)
        self.executor.add_node(self.node)
        self._spin = threading.Thread(target=self._spin_loop, daemon=True)
        self._running = True
        self._spin.start()
        self._Image, self._Audio, self._AudioInfo = Image, AudioDataStamped, AudioInfo
        self.speech = speech
        self.published_frames: List[Tuple[Tuple[int, int], float, str]] = []  # (stamp key, stamp s, phase)
        self.utterance_ends: List[float] = []  # wall-clock seconds
        self._audio_thread: Optional[threading.Thread] = None
        self._audio_stop = threading.Event()
        self.audio_chunks = 0

    def _spin_loop(self):
        while self._running:
            try:
                self.executor.spin_once(timeout_sec=0.1)
            except Exception:  # noqa: BLE001 - context shut down
                if not self._running:
                    break

    # -- callbacks (record the receipt time first) ------------------------------------------------------------------
    def _on_faces(self, msg):
        now = time.time()
        with self.lock:
            self.faces.setdefault(stamp_key(msg.header.stamp), (now, len(msg.faces)))

    def _on_state(self, msg):
        now = time.time()
        key = stamp_key(msg.header.stamp)
        with self.lock:
            self.states.setdefault(key, now)
            self.state_log.append((now, key[0] + key[1] * 1e-9, float(msg.face_weight), float(msg.voice_weight)))

    def _on_voice(self, msg):
        now = time.time()
        end = msg.end.sec + msg.end.nanosec * 1e-9
        start = msg.start.sec + msg.start.nanosec * 1e-9
        with self.lock:
            self.voice.append((now, end, bool(msg.partial), start))

    def _on_diag(self, msg):
        with self.lock:
            for st in msg.status:
                vals = {kv.key: kv.value for kv in st.values}
                lv = st.level if isinstance(st.level, int) else int.from_bytes(st.level, "little")
                vals["_level"] = str(lv)
                vals["_message"] = st.message
                vals["_t"] = str(time.time())
                self.diag[st.name] = vals
                self.diag_history[st.name].append(vals)

    # -- publishing ---------------------------------------------------------------------------------------------------
    def wait_for(self, cond, timeout: float, procs: Sequence[NodeProcess] = ()) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if cond():
                return True
            for p in procs:
                if not p.alive():
                    raise RuntimeError(f"{p.kind}_node exited with code {p.proc.returncode}:\n{p.log_tail()}")
            time.sleep(0.05)
        return cond()

    def image_messages(self, frames: List[np.ndarray]):
        from emotion_ros.ros.convert import numpy_to_image
        return [numpy_to_image(f, "bgr8", frame_id="camera") for f in frames]

    def publish_frames(self, msgs, fps: float, seconds: float, phase: str, record: bool) -> int:
        """Publish ``msgs`` cyclically at ``fps`` for ``seconds`` (absolute schedule, no bursts after a stall)."""
        from emotion_ros.ros.convert import sec_to_stamp
        period = 1.0 / fps
        t0 = time.monotonic()
        k = n = 0
        while True:
            target = t0 + k * period
            now = time.monotonic()
            if target - t0 >= seconds:
                break
            if target > now:
                time.sleep(target - now)
            elif now - target > period:  # fell behind: skip the missed slots
                k = int((now - t0) / period) + 1
                continue
            msg = msgs[n % len(msgs)]
            ts = time.time()
            msg.header.stamp = sec_to_stamp(ts)
            self.image_pub.publish(msg)
            if record:
                self.published_frames.append((stamp_key(msg.header.stamp), ts, phase))
            k += 1
            n += 1
        return n

    def start_audio(self, chunk_s: float = 0.02) -> None:
        from emotion_ros.ros.convert import float_to_pcm
        info = self._AudioInfo(channels=1, sample_rate=self.speech.rate, sample_format="S16LE",
                               bitrate=16 * self.speech.rate, coding_format="wave")
        self.info_pub.publish(info)
        pcm = float_to_pcm(self.speech.wave, "S16LE")
        n = int(round(chunk_s * self.speech.rate))
        step = 2 * n
        total = len(pcm) // step

        def run():
            from emotion_ros.ros.convert import sec_to_stamp
            msg = self._Audio()
            msg.header.frame_id = "microphone"
            t0 = time.time()
            m0 = time.monotonic()
            k = 0
            while not self._audio_stop.is_set():
                loop, j = divmod(k, total)
                if j == 0:
                    base = t0 + loop * total * chunk_s
                    with self.lock:
                        self.utterance_ends += [base + e for _, e in self.speech.utterances]
                due = m0 + (k + 1) * chunk_s
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                msg.header.stamp = sec_to_stamp(t0 + k * chunk_s)
                msg.audio.data = pcm[j * step:(j + 1) * step]
                self.audio_pub.publish(msg)
                self.audio_chunks += 1
                k += 1

        self._audio_thread = threading.Thread(target=run, name="bench_audio", daemon=True)
        self._audio_thread.start()

    def stop_audio(self) -> None:
        self._audio_stop.set()
        if self._audio_thread is not None:
            self._audio_thread.join(timeout=2)

    def close(self) -> None:
        self.stop_audio()
        self._running = False
        self._spin.join(timeout=2)
        self.executor.shutdown(timeout_sec=1)
        self.node.destroy_node()


# ---------------------------------------------------------------------------------------------------------------
# Graph run
# ---------------------------------------------------------------------------------------------------------------

def face_phase_stats(driver: Driver, phase: str, seconds: float, expected_faces: int) -> Dict[str, object]:
    with driver.lock:
        pub = [(k, ts) for k, ts, ph in driver.published_frames if ph == phase]
        got = {k: driver.faces[k] for k, _ in pub if k in driver.faces}
        states = {k: driver.states[k] for k, _ in pub if k in driver.states}
    lat = [got[k][0] - ts for k, ts in pub if k in got]
    nf = [got[k][1] for k, _ in pub if k in got]
    e2e = [states[k] - ts for k, ts in pub if k in states]
    out = {
        "fps": round(len(got) / seconds, 2),
        "published": len(pub),
        "processed": len(got),
        "dropped": len(pub) - len(got),
        "input_fps": round(len(pub) / seconds, 2),
        **latency_stats(lat),
        "faces_expected": expected_faces,
        "faces_per_frame": round(float(np.mean(nf)), 2) if nf else None,
    }
    e2e_stats = {**latency_stats(e2e), "frames_with_state": len(states), "frames": len(pub)}
    return {"face": out, "end_to_end": e2e_stats}


def voice_stats(driver: Driver, t_lo: float, t_hi: float) -> Dict[str, object]:
    with driver.lock:
        ends = [e for e in driver.utterance_ends if t_lo <= e <= t_hi]
        voice = list(driver.voice)
    finals = [v for v in voice if not v[2]]
    lat, matched = [], 0
    for e in ends:
        cands = [v for v in finals if -0.5 <= v[1] - e <= 1.5]
        if cands:
            matched += 1
            lat.append(min(v[0] for v in cands) - e)
    return {"utterances": len(ends), "finals_matched": matched,
            "messages": len(voice), "partials": sum(1 for v in voice if v[2]), **latency_stats(lat)}


def diag_for(driver: Driver, kind: str) -> Dict[str, str]:
    """The latest values of every ``/diagnostics`` status of ``<kind>_node``, merged; the node's own report (rates,
    real-time factor, device) wins over its ``<node>: lifecycle`` status, which comes first and says only the state."""
    merged: Dict[str, str] = {}
    with driver.lock:
        statuses = [(name, vals) for name, vals in driver.diag.items() if name.startswith(f"{kind}_node")]
    for _name, vals in sorted(statuses, key=lambda nv: not nv[0].endswith(": lifecycle")):
        merged.update(vals)
    return merged


def diag_rtf(vals: Dict[str, str]) -> Optional[float]:
    for key in ("real_time_factor", "rtf", "realtime_factor"):
        if key in vals:
            try:
                return round(float(vals[key]), 4)
            except ValueError:
                pass
    return None


def node_params(specs: Sequence[str]) -> Dict[str, Dict[str, str]]:
    """``["face:flip_tta=false", "fusion:rate=30"]`` -> {"face": {"flip_tta": "false"}, "fusion": {"rate": "30"}}."""
    out: Dict[str, Dict[str, str]] = {}
    for spec in specs or ():
        node, sep, rest = spec.partition(":")
        name, eq, value = rest.partition("=")
        if not sep or not eq or node not in NODES or not name:
            raise ValueError(f"--param {spec!r}: expected NODE:NAME=VALUE with NODE one of {', '.join(NODES)}")
        out.setdefault(node, {})[name] = value
    return out


def run_graph(args, models: Dict[str, str], speech: SpeechStream, tmp_dir: str) -> Dict[str, object]:
    import rclpy
    from rclpy.context import Context

    kinds = [k for k in NODES if k in args.nodes.split(",")]
    missing_nodes = [k for k in kinds if not node_module_exists(k)]
    if missing_nodes:
        log(f"node modules not found (not run): {', '.join(missing_nodes)}")
    kinds = [k for k in kinds if k not in missing_nodes]
    if "face" not in kinds:
        raise RuntimeError("the face node is needed for the benchmark")
    env = node_env()
    profile = env.get("FASTDDS_DEFAULT_PROFILES_FILE")
    log(f"transport: {'Fast DDS profile ' + profile if profile else 'Fast DDS defaults'}; "
        f"ROS_DOMAIN_ID={env.get('ROS_DOMAIN_ID')}")
    log_dir = os.path.join(tmp_dir, "logs")
    os.makedirs(log_dir, exist_ok=True)
    procs: Dict[str, NodeProcess] = {}
    ctx = Context()
    rclpy.init(context=ctx, args=[])
    driver = None
    result: Dict[str, object] = {"nodes": kinds}
    try:
        for k in kinds:
            params = {"model_path": models[k], "device": args.device, **node_params(args.param).get(k, {})}
            procs[k] = NodeProcess(k, params, log_dir, env)
            log(f"started {k}_node pid {procs[k].pid}")
        driver = Driver(ctx, speech)
        node = driver.node
        t_start = time.monotonic()
        conds = [lambda: node.count_subscribers("image_raw") >= 1, lambda: node.count_publishers("emotion/faces") >= 1]
        if "voice" in kinds:
            conds += [lambda: node.count_subscribers("audio") >= 1, lambda: node.count_publishers("emotion/voice") >= 1]
        if "fusion" in kinds:
            conds += [lambda: node.count_publishers("emotion/state") >= 1]
        if not driver.wait_for(lambda: all(c() for c in conds), args.startup_timeout, list(procs.values())):
            tails = "\n".join(f"--- {k}_node ---\n{p.log_tail()}" for k, p in procs.items())
            raise RuntimeError(f"nodes not ready after {args.startup_timeout:.0f} s\n{tails}")
        log(f"graph ready after {time.monotonic() - t_start:.1f} s")
        startup_rss = {k: proc_memory_mb(p.pid).get("VmRSS") for k, p in procs.items()}
        if "voice" in kinds and not args.no_audio:
            driver.start_audio()
        # first inference (lazy initialisation, caches) can take seconds: feed frames until results flow
        prime = driver.image_messages(scene_frames(1, 2))
        t_prime = time.monotonic()
        while time.monotonic() - t_prime < args.startup_timeout:
            driver.publish_frames(prime, args.fps, 0.5, "prime", record=False)
            with driver.lock:
                if driver.faces and (driver.states or "fusion" not in kinds):
                    break
        log(f"first results after {time.monotonic() - t_prime:.1f} s of frames")
        phases = [p for p in args.phases.split(",") if p]
        audio_t0 = time.time()
        cpu: Dict[str, Dict[str, float]] = {}
        for phase in phases:
            n_faces = int(phase.split("_")[1])
            msgs = driver.image_messages(scene_frames(n_faces, 30))
            log(f"{phase}: warm-up {args.warmup:.0f} s")
            driver.publish_frames(msgs, args.fps, args.warmup, phase, record=False)
            c0 = {k: proc_cpu_seconds(p.pid) for k, p in procs.items()}
            c0["driver"] = proc_cpu_seconds(os.getpid())
            w0 = time.monotonic()
            log(f"{phase}: measuring {args.seconds:.0f} s at {args.fps:g} fps")
            driver.publish_frames(msgs, args.fps, args.seconds, phase, record=True)
            wall = time.monotonic() - w0
            c1 = {k: proc_cpu_seconds(p.pid) for k, p in procs.items()}
            c1["driver"] = proc_cpu_seconds(os.getpid())
            cpu[phase] = {k: round(100.0 * (c1[k] - c0[k]) / wall, 1) for k in c0
                          if c0[k] is not None and c1[k] is not None}
            time.sleep(args.grace)  # late results
            st = face_phase_stats(driver, phase, args.seconds, n_faces)
            result[phase] = st["face"]
            result[f"end_to_end_{phase}"] = st["end_to_end"]
            f = st["face"]
            log(f"{phase}: {f['fps']} fps, dropped {f['dropped']}/{f['published']}, latency p50 "
                f"{f['latency_ms_p50']} ms p95 {f['latency_ms_p95']} ms, faces/frame {f['faces_per_frame']} "
                f"(expected {n_faces}); e2e p95 {st['end_to_end']['latency_ms_p95']} ms; cpu% {cpu[phase]}")
            for k, p in procs.items():
                if not p.alive():
                    raise RuntimeError(f"{k}_node died during {phase}:\n{p.log_tail()}")
        audio_t1 = time.time()
        time.sleep(max(0.0, 1.2 - args.grace))  # the last utterance's hang-over
        driver.stop_audio()
        if "voice" in kinds and not args.no_audio:
            vs = voice_stats(driver, audio_t0, audio_t1 - 1.5)
            vs["audio_chunks"] = driver.audio_chunks
            result["voice_graph"] = vs
            log(f"voice: {vs['finals_matched']}/{vs['utterances']} utterances answered, latency p50 "
                f"{vs['latency_ms_p50']} ms p95 {vs['latency_ms_p95']} ms")
        time.sleep(1.1)  # one more diagnostics period
        result["diagnostics"] = {k: diag_for(driver, k) for k in kinds}
        result["cpu_percent_by_phase"] = cpu
        result["memory"] = {k: proc_memory_mb(p.pid) for k, p in procs.items()}
        result["startup_rss_mb"] = startup_rss
        result["driver_memory"] = proc_memory_mb(os.getpid())
    finally:
        codes = {}
        for k, p in procs.items():
            codes[k] = p.stop()
        result["exit_codes"] = codes
        if driver is not None:
            driver.close()
        rclpy.try_shutdown(context=ctx)
        if args.keep_logs:
            dst = args.keep_logs
            os.makedirs(dst, exist_ok=True)
            for p in procs.values():
                shutil.copy(p.log_path, dst)
            log(f"node logs copied to {dst}")
    return result


# ---------------------------------------------------------------------------------------------------------------
# In-process measurements
# ---------------------------------------------------------------------------------------------------------------

def voice_rtf_inprocess(model_path: str, speech: SpeechStream, device: str = "cpu", threads: int = 1,
                        chunk_s: float = 0.02) -> Dict[str, object]:
    """Run VoicePipeline on the bench audio in ``chunk_s`` chunks: processing time / audio duration."""
    import torch
    from emotion_ros.core.voice.model import VoiceModel
    from emotion_ros.core.voice.pipeline import VoicePipeline
    if threads > 0:
        torch.set_num_threads(threads)
    model = VoiceModel(model_path, device=device)
    spent = {"features_s": 0.0, "model_s": 0.0}

    def timed(fn, key):
        def run(*a, **kw):
            t0 = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                spent[key] += time.perf_counter() - t0
        return run
    # the pipeline calls model.predict -> self.features + self.predict_features: time the two parts
    model.features = timed(model.features, "features_s")
    model.predict_features = timed(model.predict_features, "model_s")
    model.predict(np.zeros(speech.rate // 2, np.float32))  # warm-up, as the node does at configure
    spent["features_s"] = spent["model_s"] = 0.0
    pipe = VoicePipeline(model)
    n = int(round(chunk_s * speech.rate))
    results = []
    per_result = []
    for i in range(0, speech.wave.size - n + 1, n):
        t0 = time.perf_counter()
        r = pipe.push(speech.wave[i:i + n], speech.rate, i / speech.rate)
        if r:
            per_result.append(time.perf_counter() - t0)
        results += r
    results += pipe.flush()
    finals = [r for r in results if not r.partial]
    other = pipe.processing_s - spent["features_s"] - spent["model_s"]
    return {"rtf": round(pipe.real_time_factor, 4), "audio_s": round(pipe.audio_s, 2),
            "processing_s": round(pipe.processing_s, 3),
            "breakdown_s": {"features": round(spent["features_s"], 3), "model": round(spent["model_s"], 3),
                            "segmenter_resample_trim": round(other, 3)},
            "segment_audio_s": round(sum(r.duration for r in results), 2),
            "segments": len(results), "finals": len(finals),
            "utterances": len(speech.utterances), "segment_ms_p50": pct([1e3 * v for v in per_result], 50),
            "segment_ms_max": round(1e3 * max(per_result), 2) if per_result else None}


def profile_face(model_path: str, n_frames: int = 90, device: str = "cpu", threads: int = 1,
                 faces: Sequence[int] = (1, 5)) -> Dict[str, object]:
    """Per-frame time of each step of the face node's work, in-process, with the node's default parameters."""
    import torch
    from rclpy.serialization import serialize_message

    from emotion_ros.core.face.model import FaceModel
    from emotion_ros.core.face.pipeline import build_pipeline
    from emotion_ros.nodes.face import PARAMS, FaceNode
    from emotion_ros.ros.convert import image_to_numpy, numpy_to_image, stamp_to_sec

    import cv2
    p = {k: v[0] for k, v in PARAMS.items()}
    if threads > 0:
        torch.set_num_threads(threads)
    if int(p.get("opencv_threads", 0)) > 0:
        cv2.setNumThreads(int(p["opencv_threads"]))  # as the node does
    out: Dict[str, object] = {"params": {k: p[k] for k in ("detector", "detect_max_width", "full_detect_every",
                                                            "async_full_detect", "flip_tta", "flip_tta_max_faces",
                                                            "min_face_frac",
                                                            "haar_min_neighbors")},
                              "torch_threads": torch.get_num_threads(), "opencv_threads": cv2.getNumThreads()}

    # the other precision too, when the model file has int8 ranges (face node parameter int8)
    default_int8 = bool(p["int8"])
    from emotion_ros.core.modelio import load_checkpoint
    other_precision = "int8" in load_checkpoint(model_path, "face")
    out["precision"] = "int8" if default_int8 and other_precision else "float32"

    def pipeline(full_every: int, flip: bool, background: bool = False, int8: bool = default_int8):
        model = FaceModel.for_node(model_path, {**p, "flip_tta": flip, "int8": int8}, device=device)
        return build_pipeline(model, {**p, "full_detect_every": full_every}, background=background)

    def node_frame(pipe, msg):
        """The message as the face node converts it: BGR for a detector that wants colour, else grey."""
        return image_to_numpy(msg, "bgr8" if pipe.detector.wants_color else "mono8")

    def stats(v):
        return {"mean": round(float(np.mean(v)), 3), "p50": pct(v, 50), "p95": pct(v, 95)}

    for nf in faces:
        frames = scene_frames(nf, 30)
        msgs = [numpy_to_image(f, "bgr8", stamp=1000.0 + i / 30.0, frame_id="camera") for i, f in enumerate(frames)]
        every, flip_default, bg_default = int(p["full_detect_every"]), bool(p["flip_tta"]), bool(p["async_full_detect"])
        variants = [("default", every, flip_default, bg_default, default_int8),
                    ("in_line_full_detect", every, flip_default, False, default_int8),
                    ("full_detect_every_frame", 1, flip_default, False, default_int8),
                    ("no_flip_tta", every, False, bg_default, default_int8)]
        if other_precision:
            variants.append(("float32" if default_int8 else "int8", every, flip_default, bg_default,
                             not default_int8))
        for label, full_every, flip, bg, int8 in variants:
            pipe = pipeline(full_every, flip, bg, int8)
            rec = collections.defaultdict(list)
            for i in range(n_frames + 10):
                msg = msgs[i % len(msgs)]
                t0 = time.perf_counter()
                frame = node_frame(pipe, msg)
                t1 = time.perf_counter()
                res = pipe.process(frame, stamp_to_sec(msg.header.stamp) + i / 30.0)
                t2 = time.perf_counter()
                out_msg = FaceNode.to_message(msg, res, True)
                t3 = time.perf_counter()
                serialize_message(out_msg)
                t4 = time.perf_counter()
                if i < 10:  # warm-up
                    continue
                tm = pipe.timings
                rec["convert_ms"].append(1e3 * (t1 - t0))
                rec["gray+detect_ms"].append(tm["detect_ms"])
                rec["track_ms"].append(tm["track_ms"])
                rec["align_ms"].append(tm["align_ms"])
                rec["model_ms"].append(tm["model_ms"])
                rec["message_ms"].append(1e3 * (t3 - t2))
                rec["serialize_ms"].append(1e3 * (t4 - t3))
                rec["total_ms"].append(1e3 * (t4 - t0))
                rec["faces"].append(tm["faces"])
            pipe.close()
            key = f"face_{nf}" + ("" if label == "default" else f"_{label}")
            out[key] = {k: stats(v) for k, v in rec.items()}
        # detector alone, whole frame vs. regions
        pipe = pipeline(1, True)
        frame = node_frame(pipe, msgs[0])
        boxes = [d.box for d in pipe.detector.detect(frame)]
        full, reg = [], []
        for _ in range(30):
            t0 = time.perf_counter()
            pipe.detector.detect(frame)
            t1 = time.perf_counter()
            pipe.detector.detect_regions(frame, boxes)
            t2 = time.perf_counter()
            full.append(1e3 * (t1 - t0))
            reg.append(1e3 * (t2 - t1))
        out[f"face_{nf}_detector"] = {"faces_found": len(boxes), "full_frame_ms": stats(full),
                                       "regions_ms": stats(reg)}
        # model alone by batch size
        model = FaceModel(model_path, device=device, flip_tta=True, int8=default_int8)
        crops = np.random.default_rng(0).integers(0, 255, (nf, model.input_size, model.input_size), np.uint8)
        times = []
        for i in range(40):
            t0 = time.perf_counter()
            model.predict(crops)
            if i >= 5:
                times.append(1e3 * (time.perf_counter() - t0))
        out[f"face_{nf}_model_batch"] = stats(times)
    return out


# ---------------------------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------------------------

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


def device_name(diags: Dict[str, Dict[str, str]]) -> str:
    for kind in NODES:
        d = diags.get(kind, {}).get("device")
        if d:
            return d
    try:
        import torch
        return "cuda" if torch.cuda.is_available() else "cpu"
    except ImportError:
        return "cpu"


def build_summary(args, graph: Dict[str, object], models: Dict[str, str], random_init: List[str],
                  speech: SpeechStream, rtf_in: Optional[Dict[str, object]], profile: Optional[Dict[str, object]],
                  started: float) -> Dict[str, object]:
    diags = graph.get("diagnostics", {}) if graph else {}
    summary: Dict[str, object] = {"device": device_name(diags)}
    face_keys = ("fps", "dropped", "latency_ms_p50", "latency_ms_p95", "latency_ms_max", "published",
                 "faces_per_frame", "faces_expected")
    for phase in ("face_1", "face_5"):
        if graph and phase in graph:
            summary[phase] = {k: graph[phase].get(k) for k in face_keys}
    vg = (graph or {}).get("voice_graph", {})
    rtf_diag = diag_rtf(diags.get("voice", {}))
    voice = {"rtf": rtf_diag if rtf_diag is not None else (rtf_in or {}).get("rtf"),
             "rtf_source": "voice_node /diagnostics" if rtf_diag is not None else "VoicePipeline in-process",
             "rtf_inprocess": (rtf_in or {}).get("rtf"),
             "latency_ms_p50": vg.get("latency_ms_p50"), "latency_ms_p95": vg.get("latency_ms_p95"),
             "utterances": vg.get("utterances"), "answered": vg.get("finals_matched"), "audio": speech.source}
    summary["voice"] = voice
    if graph and "end_to_end_face_1" in graph:
        e = graph["end_to_end_face_1"]
        summary["end_to_end"] = {"latency_ms_p50": e["latency_ms_p50"], "latency_ms_p95": e["latency_ms_p95"],
                                 "frames_with_state": e["frames_with_state"], "frames": e["frames"]}
    if graph and "end_to_end_face_5" in graph:
        e = graph["end_to_end_face_5"]
        summary["end_to_end_5"] = {"latency_ms_p50": e["latency_ms_p50"], "latency_ms_p95": e["latency_ms_p95"],
                                   "frames_with_state": e["frames_with_state"], "frames": e["frames"]}
    mem = (graph or {}).get("memory", {})
    summary["peak_rss_mb"] = {k: round(v.get("VmHWM", 0.0), 1) for k, v in mem.items()}
    summary["rss_mb"] = {k: round(v.get("VmRSS", 0.0), 1) for k, v in mem.items()}
    cpu_by = (graph or {}).get("cpu_percent_by_phase", {})
    if cpu_by:
        keys = sorted({k for d in cpu_by.values() for k in d})
        summary["cpu_percent"] = {k: round(float(np.mean([d[k] for d in cpu_by.values() if k in d])), 1)
                                  for k in keys}
        summary["cpu_percent_by_phase"] = cpu_by
    summary["total_rss_mb"] = round(sum(summary["peak_rss_mb"].values()), 1) if mem else None
    summary["models"] = {"paths": models, "random_init": random_init}
    summary["config"] = {"seconds": args.seconds, "warmup": args.warmup, "fps": args.fps, "params": args.param,
                         "cores": os.cpu_count(), "transport": node_env().get("FASTDDS_DEFAULT_PROFILES_FILE")
                         or "fastdds-default", "training_running": bool(training_running()),
                         "load_avg": [round(v, 2) for v in os.getloadavg()], "nodes": (graph or {}).get("nodes")}
    if graph:
        summary["details"] = {k: graph[k] for k in ("voice_graph", "diagnostics", "startup_rss_mb", "exit_codes",
                                                    "driver_memory") if k in graph}
    if rtf_in:
        summary.setdefault("details", {})["voice_inprocess"] = rtf_in
    if profile:
        summary["profile"] = profile
    summary["targets"] = check_targets(summary)
    summary["elapsed_s"] = round(time.monotonic() - started, 1)
    return summary


def check_targets(s: Dict[str, object]) -> Dict[str, Optional[bool]]:
    def get(*path):
        cur = s
        for p in path:
            if not isinstance(cur, dict) or cur.get(p) is None:
                return None
            cur = cur[p]
        return cur

    def cmp(v, limit, lower_is_better=True):
        if v is None:
            return None
        return bool(v <= limit) if lower_is_better else bool(v >= limit)

    return {
        "face_1_30fps_no_drops": None if get("face_1", "fps") is None else
        bool(get("face_1", "fps") >= TARGETS["face_1_fps_min"]
             and get("face_1", "dropped") <= TARGETS["face_1_dropped_max"]),
        "face_1_p95_le_30ms": cmp(get("face_1", "latency_ms_p95"), TARGETS["face_1_latency_ms_p95_max"]),
        "face_5_ge_15fps": cmp(get("face_5", "fps"), TARGETS["face_5_fps_min"], lower_is_better=False),
        "voice_rtf_le_0.05": cmp(get("voice", "rtf"), TARGETS["voice_rtf_max"]),
        "end_to_end_p95_le_50ms": cmp(get("end_to_end", "latency_ms_p95"), TARGETS["end_to_end_latency_ms_p95_max"]),
        "total_rss_lt_1.5GB": cmp(get("total_rss_mb"), TARGETS["total_rss_mb_max"]),
    }


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="emotion-bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="The last line of the output is one JSON object: device, face_1/face_5 "
                                       "{fps, dropped, latency_ms_p50, latency_ms_p95, ...}, voice {rtf, "
                                       "rtf_source, latency_ms_p95, ...}, end_to_end {latency_ms_p50, "
                                       "latency_ms_p95}, peak_rss_mb, cpu_percent, total_rss_mb, targets, ...")
    p.add_argument("--seconds", type=float, default=15.0, help="measured seconds per phase (default 15)")
    p.add_argument("--warmup", type=float, default=3.0, help="discarded seconds at the start of each phase")
    p.add_argument("--grace", type=float, default=0.5, help="seconds to wait for late results after a phase")
    p.add_argument("--fps", type=float, default=30.0, help="camera frame rate")
    p.add_argument("--phases", default="face_1,face_5", help="comma-separated: face_1, face_5 (face_N: N faces)")
    p.add_argument("--nodes", default="face,voice,fusion", help="nodes to run (face is required)")
    p.add_argument("--no-audio", action="store_true", help="do not stream audio")
    p.add_argument("--synthetic-audio", action="store_true", help="synthetic voice even if espeak-ng is installed")
    p.add_argument("--device", default="auto", help="device parameter of the nodes (auto|cpu|cuda)")
    p.add_argument("--face-model", default="", help="default: the face node's default model")
    p.add_argument("--voice-model", default="")
    p.add_argument("--fusion-model", default="")
    p.add_argument("--param", action="append", default=[], metavar="NODE:NAME=VALUE",
                   help="extra node parameter, e.g. face:flip_tta=false or fusion:rate=30 (repeatable)")
    p.add_argument("--random-models", action="store_true", help="random-init checkpoints instead of the real models")
    p.add_argument("--profile", action="store_true", help="also break down the face node's per-frame time in-process")
    p.add_argument("--profile-frames", type=int, default=90)
    p.add_argument("--no-graph", action="store_true", help="skip the ROS graph run (in-process measurements only)")
    p.add_argument("--no-rtf", action="store_true", help="skip the in-process voice RTF measurement")
    p.add_argument("--startup-timeout", type=float, default=120.0)
    p.add_argument("--domain-id", type=int, default=None, help="ROS_DOMAIN_ID (default: random 1..200 unless set)")
    p.add_argument("--keep-logs", default="", help="copy the node logs into this directory")
    p.add_argument("--json-out", default="", help="also write the JSON to this file")
    args = p.parse_args(argv)
    if args.seconds <= 0 or args.fps <= 0:
        p.error("--seconds and --fps must be > 0")
    try:
        node_params(args.param)
    except ValueError as exc:
        p.error(str(exc))
    for ph in args.phases.split(","):
        if ph and not (ph.startswith("face_") and ph[5:].isdigit() and 1 <= int(ph[5:]) <= 6):
            p.error(f"unknown phase {ph!r} (face_1 .. face_6)")
    return args


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["detect"]:   # emotion-bench detect: the face detector comparison (tools/bench_detect.py)
        from .bench_detect import main as detect_main
        return detect_main(argv[1:])
    if argv[:1] == ["hosts"]:    # emotion-bench hosts: robot and server over a network link (tools/bench_hosts.py)
        from .bench_hosts import main as hosts_main
        return hosts_main(argv[1:])
    if argv[:1] == ["jpeg"]:     # emotion-bench jpeg: face accuracy and bytes vs JPEG quality (tools/bench_jpeg.py)
        from .bench_jpeg import main as jpeg_main
        return jpeg_main(argv[1:])
    args = parse_args(argv)
    started = time.monotonic()
    if args.domain_id is not None:
        os.environ["ROS_DOMAIN_ID"] = str(args.domain_id)
    elif "ROS_DOMAIN_ID" not in os.environ:
        os.environ["ROS_DOMAIN_ID"] = str(random.randint(1, 200))
    tmp_dir = tempfile.mkdtemp(prefix="emotion-bench-")
    os.environ.setdefault("ROS_HOME", os.path.join(tmp_dir, "roshome"))
    from emotion_ros.env import ensure_ros_env
    ensure_ros_env()
    jobs = training_running()
    if jobs:
        log(f"WARNING: {len(jobs)} training job(s) share the CPU; numbers are pessimistic")
    try:
        models, random_init = resolve_models(args, tmp_dir)
        if random_init:
            log(f"random-init checkpoints for: {', '.join(random_init)} (same architecture and cost)")
        speech = speech_stream(AUDIO_RATE, synthetic=args.synthetic_audio)
        log(f"audio: {speech.source}, {len(speech.utterances)} utterances in {speech.duration:.1f} s (looped)")
        graph = None
        if not args.no_graph:
            graph = run_graph(args, models, speech, tmp_dir)
        rtf_in = None
        if not args.no_rtf:
            log("voice: VoicePipeline in-process on the same audio")
            rtf_in = voice_rtf_inprocess(models["voice"], speech,
                                         device="cpu" if args.device == "auto" else args.device)
            log(f"voice in-process RTF {rtf_in['rtf']} "
                f"({rtf_in['finals']} finals for {rtf_in['utterances']} utterances)")
        profile = None
        if args.profile:
            log("face: in-process profile")
            profile = profile_face(models["face"], n_frames=args.profile_frames,
                                   device="cpu" if args.device == "auto" else args.device)
            for key in ("face_1", "face_5"):
                if key in profile:
                    log(f"profile {key}: " + ", ".join(f"{k} {v['mean']}" for k, v in profile[key].items()))
        summary = build_summary(args, graph, models, random_init, speech, rtf_in, profile, started)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    line = json.dumps(summary, separators=(",", ":"))
    if args.json_out:
        with open(args.json_out, "w") as f:
            f.write(json.dumps(summary, indent=2) + "\n")
    print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

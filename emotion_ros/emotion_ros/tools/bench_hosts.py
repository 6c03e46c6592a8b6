"""emotion-bench hosts: the robot / inference-server split (launch/robot.launch.py + launch/server.launch.py) over a
network link, measured on one machine.

Two Linux network namespaces stand for the two hosts: ``robot`` (camera_node playing a 640x480 30 fps face video,
microphone_node playing speech, behaviour_node started last) and ``server`` (face_node, voice_node, fusion_node),
joined by a veth pair with private addresses that exist only inside them, its bandwidth limited by ``tc ... tbf``
on both ends (100 Mbit/s, Wi-Fi-like 20 Mbit/s; ``netem`` delay and loss where the kernel has it). Every process
uses the UDP-only Fast DDS profile (config/fastdds_udp.xml): namespaces share /dev/shm, and shared memory would hide
the link. "One host": every process in one namespace with the usual shared-memory profile.

A probe node on each side records what arrives (``emotion/faces``, ``emotion/state``, ``emotion/voice``,
``emotion/decision``, ``emotion/expression``, ``/diagnostics``) with its receipt time; camera stamps and receipt
times share the machine's clock, so

- latency: image stamp -> FaceEmotionArray / EmotionState (same stamp) received on the robot, p50 / p95 / max;
- frames: sent by the camera, received by the face node, dropped by it (busy: newest frame wins), processed per
  second, lost (sent - processed);
- reliable results lost: results the server-side probe saw that never reached the robot;
- stall: the longest gap between two EmotionStates received on the robot;
- bytes per second on the link (the robot veth's counters), each way, and the camera's JPEG size.

Needs root (``ip netns``) and the ROS 2 launch tooling (``ros2 launch``). Rows that cannot run say why.

    emotion-bench hosts                       # every row: one host / 100 / 20 Mbit/s x raw / compressed
    emotion-bench hosts --seconds 20 --rows two_100_compressed,two_20_compressed
    python -m emotion_ros.tools.bench_hosts probe --role robot --out rec.json   # (what the harness starts)
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Dict, List, Optional, Sequence, Tuple

PKG_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # .../emotion_ros (package)
VENV_BIN = os.path.dirname(os.path.abspath(sys.executable))
RAW_FRAME_BYTES = 640 * 480 * 3
FPS = 30.0
#: topics whose offered / requested QoS the robot probe records (docs/ARCHITECTURE.md, "QoS")
QOS_TOPICS = ("/image_raw", "/image_raw/compressed", "/audio", "/audio_info", "/emotion/faces", "/emotion/state",
              "/emotion/decision", "/emotion/expression")


def log(msg: str) -> None:
    print(f"[bench hosts {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _run(cmd: Sequence[str], check: bool = True) -> subprocess.CompletedProcess:
    res = subprocess.run(list(cmd), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=30)
    if check and res.returncode != 0:
        raise NetnsError(f"{' '.join(cmd)}: {res.stdout.strip() or f'exit code {res.returncode}'}")
    return res


# ---------------------------------------------------------------------------------------------------------------
# Network namespaces
# ---------------------------------------------------------------------------------------------------------------

class NetnsError(RuntimeError):
    """An ``ip`` / ``tc`` command failed (the message names it and says why)."""


def netns_unavailable() -> Optional[str]:
    """None when this process may create network namespaces and veth pairs, else one line saying why not."""
    if shutil.which("ip") is None:
        return "the ip command (iproute2) is not installed"
    if shutil.which("tc") is None:
        return "the tc command (iproute2) is not installed"
    if hasattr(os, "geteuid") and os.geteuid() != 0:
        return "network namespaces need root (ip netns add)"
    name = f"erprobe{os.getpid()}"
    res = subprocess.run(["ip", "netns", "add", name], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if res.returncode != 0:
        return f"ip netns add is not permitted here: {res.stdout.strip()}"
    subprocess.run(["ip", "netns", "del", name], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return None


class Link:
    """Two network namespaces (``robot``, ``server``) joined by a veth pair, with a tbf rate limit (and netem delay /
    loss) on both ends; or, with ``two_hosts=False``, one namespace that holds both sides (only its loopback).

    Names carry this process id, so concurrent runs do not meet. ``teardown()`` removes everything and is safe to
    call more than once or after a failed ``setup()``.
    """

    def __init__(self, two_hosts: bool = True, rate_mbit: Optional[float] = None, delay_ms: float = 0.0,
                 loss_pct: float = 0.0, tag: Optional[str] = None):
        tag = tag or f"{os.getpid() % 100000}{random.randint(0, 99):02d}"
        self.two_hosts = two_hosts
        self.rate_mbit = rate_mbit
        self.delay_ms, self.loss_pct = float(delay_ms), float(loss_pct)
        self.robot_ns = f"er{tag}r"
        self.server_ns = f"er{tag}s" if two_hosts else self.robot_ns
        self.robot_dev, self.server_dev = f"er{tag}a", f"er{tag}b"   # <= 15 characters
        octet = 16 + int(tag) % 200
        self.robot_ip, self.server_ip = f"10.{octet}.77.1", f"10.{octet}.77.2"
        self._made: List[str] = []

    # -- set-up -------------------------------------------------------------------------------------------------
    def setup(self) -> "Link":
        try:
            for ns in dict.fromkeys((self.robot_ns, self.server_ns)):
                _run(["ip", "netns", "add", ns])
                self._made.append(ns)
                _run(["ip", "-n", ns, "link", "set", "lo", "up"])
            if self.two_hosts:
                _run(["ip", "link", "add", self.robot_dev, "type", "veth", "peer", "name", self.server_dev])
                for dev, ns, ip in ((self.robot_dev, self.robot_ns, self.robot_ip),
                                    (self.server_dev, self.server_ns, self.server_ip)):
                    _run(["ip", "link", "set", dev, "netns", ns])
                    _run(["ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", dev])
                    _run(["ip", "-n", ns, "link", "set", dev, "up"])
                    self._shape(ns, dev, "add")
        except Exception:
            self.teardown()
            raise
        return self

    def _tbf(self, rate_mbit: float) -> List[str]:
        burst = max(16_000, int(rate_mbit * 1e6 / 8 / 100))  # 10 ms at the rate (the kernel needs >= rate / HZ)
        return ["tbf", "rate", f"{rate_mbit:g}mbit", "burst", str(burst), "latency", "50ms"]

    def _shape(self, ns: str, dev: str, verb: str) -> None:
        netem = self.delay_ms > 0 or self.loss_pct > 0
        if netem:
            res = _run(["ip", "netns", "exec", ns, "tc", "qdisc", verb, "dev", dev, "root", "handle", "1:", "netem",
                        "delay", f"{self.delay_ms:g}ms", "loss", f"{self.loss_pct:g}%"], check=False)
            if res.returncode != 0:
                raise NetnsError(f"netem is not available in this kernel ({res.stdout.strip()})")
        if self.rate_mbit:
            where = ["parent", "1:", "handle", "2:"] if netem else ["root"]
            _run(["ip", "netns", "exec", ns, "tc", "qdisc", verb, "dev", dev, *where, *self._tbf(self.rate_mbit)])

    def set_rate(self, rate_mbit: float) -> None:
        """Change the link's rate limit in place (the nodes keep running)."""
        if not self.two_hosts:
            raise NetnsError("one namespace: no link to limit")
        verb = "change" if self.rate_mbit else "add"
        netem = self.delay_ms > 0 or self.loss_pct > 0
        self.rate_mbit = rate_mbit
        for ns, dev in ((self.robot_ns, self.robot_dev), (self.server_ns, self.server_dev)):
            where = ["parent", "1:", "handle", "2:"] if netem else ["root"]
            _run(["ip", "netns", "exec", ns, "tc", "qdisc", verb, "dev", dev, *where, *self._tbf(rate_mbit)])

    def teardown(self) -> None:
        for ns in reversed(self._made):  # deleting a namespace deletes its end of the veth, and so the pair
            subprocess.run(["ip", "netns", "del", ns], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._made = []

    # -- use ----------------------------------------------------------------------------------------------------
    def prefix(self, side: str) -> List[str]:
        """Command prefix that runs a program on ``side`` ("robot" | "server")."""
        return ["ip", "netns", "exec", self.robot_ns if side == "robot" else self.server_ns]

    def counters(self) -> Dict[str, int]:
        """Bytes and packets the robot's end of the link sent (to the server) and received; zeros for one host."""
        if not self.two_hosts:
            return {"tx_bytes": 0, "rx_bytes": 0, "tx_packets": 0, "rx_packets": 0}
        res = _run(["ip", "-j", "-s", "-n", self.robot_ns, "link", "show", "dev", self.robot_dev])
        st = json.loads(res.stdout)[0]["stats64"]
        return {"tx_bytes": st["tx"]["bytes"], "rx_bytes": st["rx"]["bytes"],
                "tx_packets": st["tx"]["packets"], "rx_packets": st["rx"]["packets"]}

    def describe(self) -> str:
        if not self.two_hosts:
            return "one host (one namespace, shared memory)"
        extra = f", netem {self.delay_ms:g} ms {self.loss_pct:g} %" if self.delay_ms or self.loss_pct else ""
        return f"two hosts, {self.rate_mbit:g} Mbit/s tbf{extra} ({self.robot_ip} <-> {self.server_ip}, UDP only)"


# ---------------------------------------------------------------------------------------------------------------
# Processes
# ---------------------------------------------------------------------------------------------------------------

def group_pids(pgid: int) -> List[int]:
    """Live processes of process group ``pgid``."""
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


def shm_segments(pid: int) -> List[str]:
    """Fast DDS shared-memory files that process ``pid`` has mapped (/dev/shm/fastdds_* or fastrtps_*)."""
    try:
        with open(f"/proc/{pid}/maps") as f:
            maps = f.read()
    except OSError:
        return []
    return sorted({line.split()[-1] for line in maps.splitlines()
                   if "/dev/shm/" in line and ("fastdds" in line or "fastrtps" in line)})


class Proc:
    """A command in its own process group, stdout+stderr in ``log_path``."""

    def __init__(self, name: str, cmd: Sequence[str], log_path: str, env: Dict[str, str]):
        self.name = name
        self.cmd = list(cmd)
        self.log_path = log_path
        self._log = open(log_path, "w")
        self.proc = subprocess.Popen(self.cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env,
                                     cwd=PKG_ROOT, start_new_session=True)
        self.pgid = self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def output(self, tail: int = 4000) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()[-tail:]
        except OSError:
            return ""

    def pids(self) -> List[int]:
        return group_pids(self.pgid)

    def stop(self, timeout: float = 20.0) -> Optional[int]:
        """SIGINT to the group (Ctrl-C), SIGKILL to what is left after ``timeout``."""
        if self.alive():
            try:
                os.killpg(self.pgid, signal.SIGINT)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        end = time.monotonic() + 5.0
        while group_pids(self.pgid) and time.monotonic() < end:
            time.sleep(0.1)
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
        return self.proc.returncode


def ros2_missing() -> Optional[str]:
    ros2 = os.path.join(VENV_BIN, "ros2")
    if not os.path.isfile(ros2):
        return f"the ros2 command is not installed in {VENV_BIN} (make setup installs it from ../shared/ros-tools)"
    import importlib.util
    if importlib.util.find_spec("launch_ros") is None:
        return "launch_ros is not installed (make setup installs it from ../shared/ros-tools)"
    return None


def make_inputs(folder: str) -> Tuple[str, str]:
    """A 4 s 640x480 30 fps clip of a real face (looped by the camera) and espeak-ng speech with pauses."""
    from emotion_ros.tools.demo import make_face_video, make_speech
    os.makedirs(folder, exist_ok=True)
    return (make_face_video(os.path.join(folder, "face.avi"), seconds=4.0, fps=FPS),
            make_speech(os.path.join(folder, "speech.wav")))


class Session:
    """One run of the split graph on a :class:`Link`: robot launch (camera + microphone), server launch (face, voice,
    fusion), a probe on each side, then the behaviour node last. ``close()`` stops everything and removes the
    namespaces, also after a failure half-way."""

    def __init__(self, link: Link, work_dir: str, video: str, audio: str, image_transport: str = "compressed",
                 jpeg_quality: int = 80, device: str = "cpu", rules_file: str = "", domain_id: Optional[int] = None):
        self.link = link
        self.work = work_dir
        os.makedirs(work_dir, exist_ok=True)
        self.video, self.audio = video, audio
        self.image_transport = image_transport
        self.jpeg_quality = int(jpeg_quality)
        self.device = device
        self.rules_file = rules_file
        self.domain_id = domain_id if domain_id is not None else random.randint(1, 100)
        self.procs: Dict[str, Proc] = {}
        self.records: Dict[str, dict] = {}
        self.transport = "udp" if link.two_hosts else "shm"
        for side in ("robot", "server"):  # records of an earlier run in the same folder
            for path in (self.record_path(side), self.record_path(side) + ".status"):
                if os.path.exists(path):
                    os.remove(path)

    def env(self) -> Dict[str, str]:
        env = dict(os.environ)
        env.update({
            "ROS_DOMAIN_ID": str(self.domain_id),
            "ROS_HOME": os.path.join(self.work, "roshome"),
            "PYTHONUNBUFFERED": "1",
            "RCUTILS_LOGGING_BUFFERED_STREAM": "0",
            "PATH": VENV_BIN + os.pathsep + os.environ.get("PATH", ""),
            "TMPDIR": self.work,  # launch_ros writes a params file per node there and never removes it
        })
        from emotion_ros.ros.compat import fastdds_profile_env  # both names: Fast DDS 3 (Kilted) and 2 (Jazzy)
        env.update(fastdds_profile_env(os.path.join(PKG_ROOT, "config", f"fastdds_{self.transport}.xml")))
        env["PYTHONPATH"] = PKG_ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env.setdefault("AMENT_PREFIX_PATH", sys.prefix)
        env.pop("ROS_LOCALHOST_ONLY", None)
        return env

    def _start(self, name: str, side: str, cmd: Sequence[str]) -> Proc:
        p = Proc(name, self.link.prefix(side) + list(cmd), os.path.join(self.work, f"{name}.log"), self.env())
        self.procs[name] = p
        return p

    def _launch(self, name: str, side: str, file: str, args: Sequence[str]) -> Proc:
        return self._start(name, side, [os.path.join(VENV_BIN, "ros2"), "launch", "emotion_ros", file,
                                        f"transport:={self.transport}", *args])

    def start(self, timeout: float = 150.0, need_results: bool = True) -> None:
        """Robot sources, then the server, then the probes; returns once results reach the robot (or, without
        ``need_results``, once the server's three nodes report on /diagnostics there: a link too slow for any image
        is measured as such)."""
        raw = self.image_transport == "raw"
        self._launch("robot", "robot", "robot.launch.py",
                     [f"video:={self.video}", f"audio:={self.audio}", "loop:=true", "behaviour:=false",
                      f"jpeg_quality:={self.jpeg_quality}", f"publish_raw:={'true' if raw else 'false'}"])
        self._launch("server", "server", "server.launch.py",
                     [f"device:={self.device}", f"image_transport:={self.image_transport}"])
        for side in ("robot", "server"):
            self._start(f"probe_{side}", side, [sys.executable, "-m", "emotion_ros.tools.bench_hosts", "probe",
                                                "--role", side, "--out", self.record_path(side)])
        if need_results:
            ok = self.wait(lambda s: s["robot"].get("state", 0) > 0 and s["robot"].get("faces", 0) > 0, timeout)
        else:
            ok = self.wait(lambda s: {"face_node", "voice_node", "fusion_node"} <= set(s["robot"].get("nodes", [])),
                           timeout)
        if not ok:
            what = "no EmotionState" if need_results else "not all of face_node, voice_node, fusion_node"
            raise RuntimeError(f"{what} reached the robot within {timeout:g} s\n{self.tail()}")

    def start_behaviour(self, rules_file: str = "") -> Proc:
        """behaviour_node on the robot, started last (after the state stream began)."""
        args = [sys.executable, "-m", "emotion_ros.nodes.behaviour", "--ros-args",
                "--params-file", os.path.join(PKG_ROOT, "config", "emotion.yaml")]
        if rules_file or self.rules_file:
            args += ["-p", f"rules_file:={rules_file or self.rules_file}"]
        return self._start("behaviour", "robot", args)

    def record_path(self, side: str) -> str:
        return os.path.join(self.work, f"probe_{side}.json")

    def status(self) -> Dict[str, dict]:
        out = {}
        for side in ("robot", "server"):
            try:
                with open(self.record_path(side) + ".status") as f:
                    out[side] = json.load(f)
            except (OSError, ValueError):
                out[side] = {}
        return out

    def wait(self, pred, timeout: float) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            dead = [n for n, p in self.procs.items() if not p.alive()]
            if dead:
                raise RuntimeError(f"{', '.join(dead)} ended early\n{self.tail()}")
            if pred(self.status()):
                return True
            time.sleep(0.25)
        return False

    def mark(self) -> dict:
        """The moment and the link's counters (a window's edge)."""
        return {"t": time.time(), "counters": self.link.counters(), "load": os.getloadavg()}

    def node_pids(self) -> Dict[str, List[int]]:
        return {name: p.pids() for name, p in self.procs.items()}

    def tail(self, n: int = 1500) -> str:
        return "\n".join(f"--- {name} ({p.log_path}):\n{p.output(n)}" for name, p in self.procs.items())

    def close(self) -> None:
        """Probes first (they write their records), then the nodes; the namespaces last, whatever happened."""
        try:
            for name in ("probe_robot", "probe_server", "behaviour", "robot", "server"):
                p = self.procs.get(name)
                if p is not None:
                    p.stop(timeout=15.0)
            for side in ("robot", "server"):
                try:
                    with open(self.record_path(side)) as f:
                        self.records[side] = json.load(f)
                except (OSError, ValueError):
                    self.records[side] = {}
        finally:
            for p in self.procs.values():  # anything left (a failed stop): killed
                try:
                    os.killpg(p.pgid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self.link.teardown()


# ---------------------------------------------------------------------------------------------------------------
# The probe (runs inside a namespace)
# ---------------------------------------------------------------------------------------------------------------

DIAG_KEYS = ("inputs", "outputs", "dropped", "bad_frames", "compressed_kb_mean", "processing_ms_p50",
             "processing_ms_p95", "errors")


def probe_main(argv: Sequence[str]) -> int:
    ap = argparse.ArgumentParser(prog="bench_hosts probe", description="record what arrives on one side")
    ap.add_argument("--role", choices=("robot", "server"), required=True)
    ap.add_argument("--out", required=True, help="JSON written at the end (SIGINT / SIGTERM); <out>.status meanwhile")
    args = ap.parse_args(argv)

    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node
    from diagnostic_msgs.msg import DiagnosticArray
    from emotion_msgs.msg import BehaviourDecision, EmotionState, FaceEmotionArray, VoiceEmotion
    from std_msgs.msg import String
    from emotion_ros.ros.convert import stamp_to_ns
    from emotion_ros.ros.node_utils import latched_qos, reliable_qos

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    rclpy.init(args=[], signal_handler_options=rclpy.signals.SignalHandlerOptions.NO)
    node = Node(f"bench_probe_{args.role}")
    rec: Dict[str, list] = {k: [] for k in ("faces", "state", "voice", "decision", "expression", "diag")}

    def on_faces(m):
        rec["faces"].append((time.time(), stamp_to_ns(m.header.stamp), len(m.faces)))

    def on_state(m):
        rec["state"].append((time.time(), stamp_to_ns(m.header.stamp), m.emotion))

    node.create_subscription(FaceEmotionArray, "emotion/faces", on_faces, reliable_qos(100))
    node.create_subscription(EmotionState, "emotion/state", on_state, reliable_qos(100))
    if args.role == "robot":
        node.create_subscription(VoiceEmotion, "emotion/voice",
                                 lambda m: rec["voice"].append((time.time(), m.emotion, bool(m.partial))),
                                 reliable_qos(50))
        node.create_subscription(BehaviourDecision, "emotion/decision",
                                 lambda m: rec["decision"].append((time.time(), m.rule, m.emotion)), reliable_qos(50))
        node.create_subscription(String, "emotion/expression",
                                 lambda m: rec["expression"].append((time.time(), m.data)), latched_qos())

        def on_diag(arr):
            t = time.time()
            for st in arr.status:
                name = st.name.split(":")[0]
                vals = {kv.key: kv.value for kv in st.values if kv.key in DIAG_KEYS}
                rec["diag"].append((t, name, vals))
        node.create_subscription(DiagnosticArray, "/diagnostics", on_diag, 50)
    ex = SingleThreadedExecutor()
    ex.add_node(node)
    last = 0.0
    try:
        while not stop.is_set():
            ex.spin_once(timeout_sec=0.05)
            if time.monotonic() - last > 0.5:
                last = time.monotonic()
                status = {k: len(v) for k, v in rec.items()}
                status["nodes"] = sorted({n for _t, n, _v in rec["diag"]})
                _write_json(args.out + ".status", status)
        qos = {}
        if args.role == "robot":
            for topic in QOS_TOPICS:
                qos[topic] = {kind: [{"node": i.node_name, "reliability": i.qos_profile.reliability.name.lower(),
                                      "durability": i.qos_profile.durability.name.lower()} for i in infos]
                              for kind, infos in (("publishers", node.get_publishers_info_by_topic(topic)),
                                                  ("subscriptions", node.get_subscriptions_info_by_topic(topic)))}
        _write_json(args.out, dict(rec, qos=qos, role=args.role))
    finally:
        ex.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


def _write_json(path: str, obj) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------------------------
# Analysis
# ---------------------------------------------------------------------------------------------------------------

def _pct(values: Sequence[float], q: float) -> Optional[float]:
    if not values:
        return None
    import numpy as np
    return round(float(np.percentile(np.asarray(values, dtype=np.float64), q)), 1)


def _diag_rate(diag: list, node: str, key: str, t0: float, t1: float) -> Optional[float]:
    """Per-second growth of a /diagnostics counter of ``node`` between the snapshots nearest inside [t0, t1]."""
    pts = [(t, float(v[key])) for t, n, v in diag if n == node and key in v and t0 <= t <= t1]
    if len(pts) < 2 or pts[-1][0] - pts[0][0] <= 0:
        return None
    return (pts[-1][1] - pts[0][1]) / (pts[-1][0] - pts[0][0])


def _diag_last(diag: list, node: str, key: str, t1: float) -> Optional[str]:
    vals = [v[key] for t, n, v in diag if n == node and key in v and t <= t1]
    return vals[-1] if vals else None


def analyse(robot: dict, server: dict, start: dict, end: dict, grace_s: float = 1.0) -> Dict[str, object]:
    """Numbers of the window between two :meth:`Session.mark` s, from the two probes' records."""
    t0, t1 = start["t"], end["t"]
    dur = t1 - t0
    lo, hi = int(t0 * 1e9), int(t1 * 1e9)
    faces = [(rt, st) for rt, st, _n in robot.get("faces", []) if lo <= st < hi]
    face_lat = [(rt - st * 1e-9) * 1e3 for rt, st in faces]
    face_stamps = {st for _rt, st in faces}
    face_us = {st // 1000 for st in face_stamps}
    states = [(rt, st) for rt, st, _e in robot.get("state", []) if t0 <= rt < t1]
    # a state published on a face array carries its stamp (through float seconds: equal within a microsecond)
    e2e = [(rt - st * 1e-9) * 1e3 for rt, st in states if {st // 1000 - 1, st // 1000, st // 1000 + 1} & face_us]
    arrivals = sorted(rt for rt, _st in states)
    gaps = [b - a for a, b in zip([t0] + arrivals, arrivals + [t1])]
    # reliable results lost: seen on the server side (stamp well inside the window) and never on the robot
    cut = int((t1 - grace_s) * 1e9)
    robot_faces = {st for _rt, st, _n in robot.get("faces", [])}
    server_faces = {st for _rt, st, _n in server.get("faces", []) if lo <= st < cut}
    import collections
    robot_states = collections.Counter(st for _rt, st, _e in robot.get("state", []))
    server_states = collections.Counter(st for rt, st, _e in server.get("state", []) if t0 <= rt < t1 - grace_s)
    lost_states = sum(max(0, n - robot_states.get(st, 0)) for st, n in server_states.items())
    diag = robot.get("diag", [])
    c0, c1 = start["counters"], end["counters"]
    sent = _diag_rate(diag, "camera_node", "outputs", t0, t1)
    jpeg_kb = _diag_last(diag, "camera_node", "compressed_kb_mean", t1)
    out = {
        "seconds": round(dur, 1),
        "frames_sent_per_s": round(sent, 1) if sent is not None else None,
        "frames_received_per_s": _round(_diag_rate(diag, "face_node", "inputs", t0, t1)),
        "frames_dropped_busy_per_s": _round(_diag_rate(diag, "face_node", "dropped", t0, t1)),
        "frames_processed_per_s": round(len(face_stamps) / dur, 1) if dur > 0 else None,
        "face_latency_ms": {"p50": _pct(face_lat, 50), "p95": _pct(face_lat, 95), "max": _pct(face_lat, 100),
                            "n": len(face_lat)},
        "end_to_end_latency_ms": {"p50": _pct(e2e, 50), "p95": _pct(e2e, 95), "max": _pct(e2e, 100), "n": len(e2e)},
        "states_received": len(states),
        "max_state_gap_s": round(max(gaps), 2) if gaps else None,
        "reliable_lost": {"faces": len(server_faces - robot_faces), "faces_checked": len(server_faces),
                          "states": lost_states, "states_checked": sum(server_states.values())},
        "link_bytes_per_s": {"robot_to_server": round((c1["tx_bytes"] - c0["tx_bytes"]) / dur),
                             "server_to_robot": round((c1["rx_bytes"] - c0["rx_bytes"]) / dur)} if dur > 0 else None,
        "jpeg_kb_mean": float(jpeg_kb) if jpeg_kb is not None else None,
        "face_processing_ms_p50": _float(_diag_last(diag, "face_node", "processing_ms_p50", t1)),
        "load_average": [round(start["load"][0], 2), round(end["load"][0], 2)],
    }
    if sent is not None and out["frames_processed_per_s"] is not None:
        out["frames_lost_per_s"] = round(max(0.0, sent - out["frames_processed_per_s"]), 1)
    return out


def _round(v: Optional[float]) -> Optional[float]:
    return round(v, 1) if v is not None else None


def _float(v: Optional[str]) -> Optional[float]:
    try:
        return float(v) if v is not None else None
    except ValueError:
        return None


# ---------------------------------------------------------------------------------------------------------------
# emotion-bench hosts
# ---------------------------------------------------------------------------------------------------------------

#: row name -> (two hosts, rate Mbit/s, netem (delay ms, loss %), image transport)
ROWS = {
    "one_raw": (False, None, None, "raw"),
    "one_compressed": (False, None, None, "compressed"),
    "two_100_compressed": (True, 100.0, None, "compressed"),
    "two_100_raw": (True, 100.0, None, "raw"),
    "two_20_compressed": (True, 20.0, None, "compressed"),
    "two_20_raw": (True, 20.0, None, "raw"),
    "two_100_netem_compressed": (True, 100.0, (10.0, 1.0), "compressed"),
    "two_20_netem_compressed": (True, 20.0, (10.0, 1.0), "compressed"),
}
TARGETS = {"two_100_compressed": {"end_to_end_p95_ms_max": 80.0, "frames_processed_per_s_min": 28.0,
                                  "reliable_lost_max": 0},
           "two_20_compressed": {"max_state_gap_s_max": 1.0}}


def run_row(name: str, work: str, video: str, audio: str, seconds: float, warmup: float, device: str,
            jpeg_quality: int) -> Dict[str, object]:
    two, rate, netem, transport = ROWS[name]
    delay, loss = netem or (0.0, 0.0)
    link = Link(two_hosts=two, rate_mbit=rate, delay_ms=delay, loss_pct=loss)
    row: Dict[str, object] = {"row": name, "image_transport": transport}
    try:
        link.setup()
    except NetnsError as exc:
        link.teardown()
        row["skipped"] = str(exc)
        return row
    row["link"] = link.describe()
    s = Session(link, os.path.join(work, name), video, audio, image_transport=transport, jpeg_quality=jpeg_quality,
                device=device)
    try:
        s.start(need_results=False)
        s.start_behaviour()
        time.sleep(warmup)
        a = s.mark()
        time.sleep(seconds)
        b = s.mark()
    except Exception as exc:  # noqa: BLE001 - report the row as failed, go on with the next
        s.close()
        row["failed"] = str(exc).splitlines()[0]
        return row
    s.close()
    row.update(analyse(s.records.get("robot", {}), s.records.get("server", {}), a, b))
    return row


def check_targets(rows: List[dict]) -> Dict[str, Optional[bool]]:
    by = {r["row"]: r for r in rows}
    out: Dict[str, Optional[bool]] = {}
    r = by.get("two_100_compressed")
    if r and "skipped" not in r and "failed" not in r:
        out["two_100_compressed_p95_le_80ms"] = (r["end_to_end_latency_ms"]["p95"] or 1e9) <= 80.0
        out["two_100_compressed_ge_28fps"] = (r["frames_processed_per_s"] or 0) >= 28.0
        lost = r["reliable_lost"]
        out["two_100_compressed_0_reliable_lost"] = lost["faces"] == 0 and lost["states"] == 0
    r = by.get("two_20_compressed")
    if r and "skipped" not in r and "failed" not in r:
        out["two_20_compressed_no_stall_over_1s"] = (r["max_state_gap_s"] or 1e9) <= 1.0
    return out


def _fmt(v, unit: str = "") -> str:
    return "-" if v is None else f"{v:g}{unit}"


def _scaled(v: Optional[float], unit: float) -> Optional[float]:
    return None if v is None else round(v / unit, 2)


def table(rows: List[dict]) -> str:
    lines = ["| row | link | images | e2e p50 / p95 ms | face p95 ms | fps sent / processed / lost | busy drops/s "
             "| reliable lost | max gap s | robot->server MB/s | server->robot kB/s | JPEG kB | load |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "skipped" in r or "failed" in r:
            lines.append(f"| {r['row']} | {r.get('link', '-')} | {r['image_transport']} | "
                         f"{'skipped: ' + r['skipped'] if 'skipped' in r else 'failed: ' + r['failed']} |"
                         + " |" * 9)
            continue
        e, f, lb = r["end_to_end_latency_ms"], r["face_latency_ms"], r["link_bytes_per_s"] or {}
        lost = r["reliable_lost"]
        lines.append(
            f"| {r['row']} | {r['link']} | {r['image_transport']} | {_fmt(e['p50'])} / {_fmt(e['p95'])} | "
            f"{_fmt(f['p95'])} | {_fmt(r['frames_sent_per_s'])} / {_fmt(r['frames_processed_per_s'])} / "
            f"{_fmt(r.get('frames_lost_per_s'))} | {_fmt(r['frames_dropped_busy_per_s'])} | "
            f"{lost['faces']}/{lost['faces_checked']} faces, {lost['states']}/{lost['states_checked']} states | "
            f"{_fmt(r['max_state_gap_s'])} | {_fmt(_scaled(lb.get('robot_to_server'), 1e6))} | "
            f"{_fmt(_scaled(lb.get('server_to_robot'), 1e3))} | "
            f"{_fmt(r['jpeg_kb_mean'])} | {r['load_average'][0]:g}-{r['load_average'][1]:g} |")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["probe"]:
        return probe_main(argv[1:])
    ap = argparse.ArgumentParser(prog="emotion-bench hosts", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated rows (default all: {', '.join(ROWS)})")
    ap.add_argument("--seconds", type=float, default=30.0, help="measured seconds per row (default 30)")
    ap.add_argument("--warmup", type=float, default=5.0, help="seconds after start-up before measuring (default 5)")
    ap.add_argument("--device", default="cpu", help="torch device of the server's nodes (default cpu)")
    ap.add_argument("--jpeg-quality", type=int, default=80, help="camera JPEG quality 1-100 (default 80)")
    ap.add_argument("--json", help="also write the rows as JSON to this file")
    args = ap.parse_args(argv)
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        print(f"emotion-bench hosts: unknown row(s) {', '.join(unknown)} (known: {', '.join(ROWS)})", file=sys.stderr)
        return 2
    if not 1 <= args.jpeg_quality <= 100 or args.seconds <= 0 or args.warmup < 0:
        print("emotion-bench hosts: --jpeg-quality must be 1-100, --seconds > 0, --warmup >= 0", file=sys.stderr)
        return 2
    why = netns_unavailable() or ros2_missing()
    if why:
        print(f"emotion-bench hosts: {why}", file=sys.stderr)
        return 2
    from emotion_ros.env import ensure_ament_prefix
    ensure_ament_prefix()
    work = tempfile.mkdtemp(prefix="emotion-bench-hosts-")
    results = []
    try:
        video, audio = make_inputs(os.path.join(work, "input"))
        for name in rows:
            log(f"{name}: starting")
            r = run_row(name, work, video, audio, args.seconds, args.warmup, args.device, args.jpeg_quality)
            results.append(r)
            log(f"{name}: {json.dumps(r, separators=(',', ':'))}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(table(results), flush=True)
    summary = {"bench": "hosts", "rows": results, "targets": check_targets(results),
               "raw_frame_bytes": RAW_FRAME_BYTES, "fps": FPS, "cpu_count": os.cpu_count()}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=2)
    print(json.dumps(summary, separators=(",", ":")), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The driver: this process on the ROS graph, publishing frames and audio and recording every result."""
from __future__ import annotations

import collections
import threading
import time
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .procs import NodeProcess
from .speech import SpeechStream


def stamp_key(stamp) -> Tuple[int, int]:
    return (int(stamp.sec), int(stamp.nanosec))


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

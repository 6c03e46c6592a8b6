"""``emotion-bag from-media``: a video and/or audio file -> rosbag2 with image_raw / audio / audio_info.

Video (anything OpenCV's VideoCapture opens) becomes ``sensor_msgs/Image`` bgr8 frames on ``image_raw``, frame i at
``t0 + i / fps``. Audio (anything libsndfile reads; other formats through ffmpeg when it is installed) becomes
``audio_common_msgs/AudioDataStamped`` S16LE chunks on ``audio`` with one ``AudioInfo`` on ``audio_info`` at t0.
Header stamps equal the bag's receive timestamps, so both streams share one time base. No ROS graph is needed.
"""

from __future__ import annotations

import heapq
import math
import os
import shutil
import subprocess
import tempfile
import time
from typing import Iterator, Optional, Tuple

import numpy as np

from .bag_common import BagError, BagWriter, make_qos, typestore

IMAGE_T = "sensor_msgs/msg/Image"
AUDIO_T = "audio_common_msgs/msg/AudioDataStamped"
INFO_T = "audio_common_msgs/msg/AudioInfo"


def _stamp(t_ns: int):
    Time = typestore().types["builtin_interfaces/msg/Time"]
    return Time(sec=int(t_ns // 1_000_000_000), nanosec=int(t_ns % 1_000_000_000))


def _header(t_ns: int, frame_id: str):
    Header = typestore().types["std_msgs/msg/Header"]
    return Header(stamp=_stamp(t_ns), frame_id=frame_id)


# ---------------------------------------------------------------------------------------------------------------
# Video
# ---------------------------------------------------------------------------------------------------------------

def open_video(path: str, fps: Optional[float]):
    import cv2

    if not os.path.isfile(path):
        raise BagError(f"video file {path!r} does not exist")
    cap = cv2.VideoCapture(path)
    if not cap.isOpened():
        raise BagError(f"OpenCV cannot open video {path!r} (unknown container or codec?)")
    rate = float(fps) if fps else float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
    if not math.isfinite(rate) or rate <= 0 or rate > 1000:
        cap.release()
        raise BagError(f"video {path!r} does not state a usable frame rate ({rate}); pass --fps")
    return cap, rate


def video_messages(path: str, t0_ns: int, fps: Optional[float], frame_id: str = "camera",
                   stats: Optional[dict] = None) -> Iterator[Tuple[int, str, str, object]]:
    """Yield (t_ns, topic, msgtype, message) for every frame of ``path``."""
    cap, rate = open_video(path, fps)
    Image = typestore().types[IMAGE_T]
    i = 0
    try:
        while True:
            ok, frame = cap.read()
            if not ok or frame is None:
                break
            if frame.ndim == 2:
                import cv2
                frame = cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
            frame = np.ascontiguousarray(frame[:, :, :3], dtype=np.uint8)
            h, w = frame.shape[:2]
            t_ns = t0_ns + int(round(i * 1e9 / rate))
            msg = Image(header=_header(t_ns, frame_id), height=h, width=w, encoding="bgr8", is_bigendian=0,
                        step=w * 3, data=frame.reshape(-1))
            i += 1
            yield t_ns, "image_raw", IMAGE_T, msg
    finally:
        cap.release()
        if stats is not None:
            stats.update({"frames": i, "fps": rate})
    if i == 0:
        raise BagError(f"video {path!r} has no readable frames")


# ---------------------------------------------------------------------------------------------------------------
# Audio
# ---------------------------------------------------------------------------------------------------------------

def _ffmpeg_to_wav(path: str, tmpdir: str) -> str:
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        raise BagError(f"libsndfile cannot read audio {path!r} and ffmpeg is not installed, so only formats "
                       "libsndfile knows (wav, flac, ogg, mp3 with libsndfile >= 1.1, ...) can be used")
    out = os.path.join(tmpdir, "audio.wav")
    proc = subprocess.run([ffmpeg, "-nostdin", "-v", "error", "-y", "-i", path, "-vn", "-acodec", "pcm_s16le",
                           out], capture_output=True, text=True)
    if proc.returncode != 0 or not os.path.isfile(out):
        raise BagError(f"ffmpeg cannot decode audio of {path!r}: {proc.stderr.strip()[-300:]}")
    return out


def open_audio(path: str, tmpdir: str):
    import soundfile as sf

    if not os.path.isfile(path):
        raise BagError(f"audio file {path!r} does not exist")
    try:
        return sf.SoundFile(path), "soundfile"
    except Exception:
        wav = _ffmpeg_to_wav(path, tmpdir)
        try:
            return sf.SoundFile(wav), "ffmpeg"
        except Exception as exc:
            raise BagError(f"cannot read audio {path!r} after ffmpeg conversion: {exc}") from None


def audio_messages(path: str, t0_ns: int, chunk_ms: float, tmpdir: str, frame_id: str = "microphone",
                   stats: Optional[dict] = None) -> Iterator[Tuple[int, str, str, object]]:
    """Yield (t_ns, topic, msgtype, message): one AudioInfo at t0, then S16LE chunks of ``chunk_ms``."""
    if not (0 < chunk_ms <= 10_000):
        raise BagError(f"--chunk-ms must be in (0, 10000], got {chunk_ms}")
    f, via = open_audio(path, tmpdir)
    ts = typestore()
    AudioInfo, AudioData, Stamped = ts.types[INFO_T], ts.types["audio_common_msgs/msg/AudioData"], ts.types[AUDIO_T]
    rate, ch = int(f.samplerate), int(f.channels)
    if rate <= 0 or ch <= 0 or ch > 255:
        raise BagError(f"audio {path!r}: unusable format ({rate} Hz, {ch} channels)")
    chunk = max(1, int(round(rate * chunk_ms / 1000.0)))
    yield t0_ns, "audio_info", INFO_T, AudioInfo(channels=ch, sample_rate=rate, sample_format="S16LE",
                                                  bitrate=rate * ch * 16, coding_format="wave")
    pos = 0
    n_msgs = 0
    try:
        for block in f.blocks(blocksize=chunk, dtype="int16", always_2d=True):
            if block.shape[0] == 0:
                continue
            t_ns = t0_ns + int(round(pos * 1e9 / rate))
            data = np.frombuffer(np.ascontiguousarray(block.astype("<i2", copy=False)).tobytes(), np.uint8)
            pos += block.shape[0]
            n_msgs += 1
            yield t_ns, "audio", AUDIO_T, Stamped(header=_header(t_ns, frame_id), audio=AudioData(data=data))
    except BagError:
        raise
    except Exception as exc:
        raise BagError(f"audio {path!r} is corrupt or truncated: {exc}") from None
    finally:
        f.close()
        if stats is not None:
            stats.update({"sample_rate": rate, "channels": ch, "samples": pos, "chunks": n_msgs, "decoder": via})
    if pos == 0:
        raise BagError(f"audio {path!r} has no samples")


# ---------------------------------------------------------------------------------------------------------------

def from_media(out: str, video: Optional[str] = None, audio: Optional[str] = None, fps: Optional[float] = None,
               chunk_ms: float = 20.0, start_time: Optional[float] = None, storage: str = "mcap",
               force: bool = False) -> dict:
    """Write the bag; returns a summary dict (counts, duration, per-stream stats)."""
    if not video and not audio:
        raise BagError("from-media needs --video and/or --audio")
    for p, what in ((video, "video"), (audio, "audio")):
        if p and not os.path.isfile(p):
            raise BagError(f"{what} file {p!r} does not exist")
    if start_time is None:
        start_time = round(time.time(), 3)
    if not math.isfinite(start_time) or start_time < 0:
        raise BagError(f"--start-time must be a non-negative number of seconds, got {start_time}")
    t0_ns = int(round(start_time * 1e9))
    vstats: dict = {}
    astats: dict = {}
    with tempfile.TemporaryDirectory(prefix="emotion-bag-") as tmp:
        streams = []
        if video:
            open_video(video, fps)[0].release()  # fail early, before the bag directory exists
            streams.append(video_messages(video, t0_ns, fps, stats=vstats))
        if audio:
            open_audio(audio, tmp)[0].close()
            streams.append(audio_messages(audio, t0_ns, chunk_ms, tmp, stats=astats))
        writer = BagWriter(out, storage=storage, force=force)
        ok = False
        try:
            if video:
                writer.add_topic("image_raw", IMAGE_T, make_qos(reliable=True, depth=10))
            if audio:
                writer.add_topic("audio_info", INFO_T, make_qos(reliable=True, transient_local=True, depth=1))
                writer.add_topic("audio", AUDIO_T, make_qos(reliable=True, depth=100))
            last = t0_ns
            for t_ns, topic, msgtype, msg in heapq.merge(*streams, key=lambda item: item[0]):
                writer.write_msg(topic, msgtype, t_ns, msg)
                last = max(last, t_ns)
            ok = True
        finally:
            writer.close()
            if not ok:
                shutil.rmtree(out, ignore_errors=True)
    return {"bag": out, "storage": storage, "start_time": t0_ns * 1e-9, "duration_s": (last - t0_ns) * 1e-9,
            "messages": dict(writer.counts), "video": vstats or None, "audio": astats or None}

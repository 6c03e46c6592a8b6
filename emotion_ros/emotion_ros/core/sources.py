"""Camera / video and microphone / audio-file sources (pure Python: OpenCV, soundfile, sounddevice; no rclpy).

Used by the camera and microphone nodes; usable on their own (e.g. by tools).

- :class:`VideoSource`: ``cv2.VideoCapture`` over a device index (``"0"``), a device path (``/dev/video2``), a video
  file, a stream URL (``rtsp://...``) or a GStreamer pipeline (a string containing ``!``).
- :class:`AudioFileSource`: an audio file (wav/flac/ogg/... via soundfile) read as fixed-size float32 blocks at a
  chosen rate (streaming resampling with soxr) and channel count, optionally looping.
- :func:`resolve_input_device` / :func:`open_input_stream`: a sounddevice input by name or index with clear errors.

Failures raise :class:`SourceError` with a message that names the source and what to check.
"""

from __future__ import annotations

import glob
import os
from typing import Callable, List, Optional, Sequence, Tuple, Union

import cv2
import numpy as np

__all__ = ["SourceError", "parse_video_source", "VideoSource", "AudioFileSource", "resolve_input_device",
           "list_input_devices", "open_input_stream", "CAPTURE_APIS"]


class SourceError(RuntimeError):
    """A capture source cannot be opened or read; the message says which and why."""


# --------------------------------------------------------------------------------------------------------- video ---

CAPTURE_APIS = {
    "auto": cv2.CAP_ANY,
    "v4l2": cv2.CAP_V4L2,
    "ffmpeg": cv2.CAP_FFMPEG,
    "gstreamer": cv2.CAP_GSTREAMER,
    "images": cv2.CAP_IMAGES,
}


def parse_video_source(source: Union[str, int]) -> Tuple[str, Union[str, int]]:
    """Classify a source string: ("device", index|path) | ("gstreamer", pipeline) | ("stream", url) |
    ("file", path)."""
    s = str(source).strip()
    if not s:
        raise SourceError("empty video source (give a device index like 0, a file, a URL or a GStreamer pipeline)")
    if s.lstrip("-").isdigit():
        idx = int(s)
        if idx < 0:
            raise SourceError(f"camera index must be >= 0, got {idx}")
        return "device", idx
    if "!" in s:
        return "gstreamer", s
    if s.startswith("/dev/"):
        return "device", s
    if "://" in s:
        return "stream", s
    return "file", os.path.expanduser(s)


def _video_devices() -> List[str]:
    return sorted(glob.glob("/dev/video*"))


class VideoSource:
    """An OpenCV capture with clear open errors. ``read()`` returns a BGR frame or None (end of file / failure).

    ``width`` / ``height`` (> 0) are requested from devices and streams (the device may choose another size;
    ``frame_size`` tells the delivered one after the first frame).
    """

    def __init__(self, source: Union[str, int], api: str = "auto", width: int = 0, height: int = 0,
                 fourcc: str = ""):
        self.source = str(source)
        self.kind, self.target = parse_video_source(source)
        api = (api or "auto").lower()
        if api not in CAPTURE_APIS:
            raise SourceError(f"unknown capture api {api!r} (one of {', '.join(CAPTURE_APIS)})")
        if self.kind == "gstreamer":
            api = "gstreamer"
        self.api_name = api
        self.api = CAPTURE_APIS[api]
        self.width, self.height, self.fourcc = int(width), int(height), fourcc or ""
        self.cap: Optional[cv2.VideoCapture] = None
        self.frame_size: Optional[Tuple[int, int]] = None

    @property
    def is_file(self) -> bool:
        return self.kind == "file"

    @property
    def is_live(self) -> bool:
        """Devices, streams and pipelines deliver frames at their own pace (files are paced by the reader)."""
        return self.kind != "file"

    def describe(self) -> str:
        what = {"device": "camera", "file": "video file", "stream": "stream", "gstreamer": "GStreamer pipeline"}
        return f"{what[self.kind]} {self.target!r}"

    def open(self) -> None:
        """Open the source (again). Raises SourceError naming the source and the likely cause."""
        self.release()
        if self.kind == "gstreamer" and not cv2.videoio_registry.hasBackend(cv2.CAP_GSTREAMER):
            raise SourceError("this OpenCV build has no GStreamer support (opencv-python-headless wheels have none); "
                              f"cannot open pipeline {self.target!r}. Use a device index, a file or a URL, or an "
                              "OpenCV built with GStreamer")
        if self.kind == "file":
            if not os.path.exists(self.target):
                raise SourceError(f"video file not found: {self.target}")
            if not os.path.isfile(self.target):
                raise SourceError(f"video source is not a file: {self.target}")
        cap = cv2.VideoCapture(self.target, self.api)
        if not cap.isOpened():
            cap.release()
            if self.kind == "device":
                devs = _video_devices()
                raise SourceError(f"cannot open camera {self.target!r} (api {self.api_name}): no such device, busy, or "
                                  f"no permission; video devices here: {', '.join(devs) if devs else 'none'}")
            if self.kind == "file":
                raise SourceError(f"cannot decode video file {self.target} (not a video format OpenCV's FFMPEG "
                                  "backend reads, or a corrupt file)")
            raise SourceError(f"cannot open {self.describe()} (api {self.api_name})")
        if self.kind != "file":
            if self.fourcc and len(self.fourcc) == 4:
                cap.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter_fourcc(*self.fourcc))
            if self.width > 0:
                cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.width)
            if self.height > 0:
                cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.height)
        self.cap = cap

    @property
    def is_open(self) -> bool:
        return self.cap is not None and self.cap.isOpened()

    @property
    def fps(self) -> float:
        """The source's nominal frame rate (0 when unknown)."""
        if self.cap is None:
            return 0.0
        f = float(self.cap.get(cv2.CAP_PROP_FPS) or 0.0)
        return f if np.isfinite(f) and 0 < f < 1000 else 0.0

    @property
    def backend(self) -> str:
        try:
            return self.cap.getBackendName() if self.cap is not None else ""
        except cv2.error:
            return ""

    def read(self) -> Optional[np.ndarray]:
        """Next frame as BGR uint8 (grey sources are converted), or None at the end / on a read failure."""
        if self.cap is None:
            return None
        ok, frame = self.cap.read()
        if not ok or frame is None or frame.size == 0:
            return None
        if frame.ndim == 2:
            frame = cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
        elif frame.shape[2] == 4:
            frame = cv2.cvtColor(frame, cv2.COLOR_BGRA2BGR)
        self.frame_size = (frame.shape[1], frame.shape[0])
        return frame

    def grab(self) -> bool:
        """Advance one frame without decoding it (to skip frames of a live source)."""
        return bool(self.cap is not None and self.cap.grab())

    def rewind(self) -> bool:
        """Back to the first frame of a file (reopens when seeking is not supported)."""
        if not self.is_file or self.cap is None:
            return False
        if self.cap.set(cv2.CAP_PROP_POS_FRAMES, 0) and int(self.cap.get(cv2.CAP_PROP_POS_FRAMES)) == 0:
            return True
        self.open()
        return True

    def release(self) -> None:
        if self.cap is not None:
            self.cap.release()
            self.cap = None


# --------------------------------------------------------------------------------------------------------- audio ---

class AudioFileSource:
    """Read an audio file as consecutive float32 blocks (``block_frames``, ``channels``) at ``sample_rate``.

    ``sample_rate`` 0 keeps the file's rate; otherwise the audio is resampled (soxr, streaming). ``channels`` 0
    keeps the file's channels; 1 downmixes (mean); a mono file is duplicated to more channels; other mismatches
    raise SourceError. ``read_block()`` returns full blocks, then the last partial block, then None; with ``loop``
    the file starts again seamlessly (no gap, no partial block) and never ends.
    """

    def __init__(self, path: str, sample_rate: int = 0, channels: int = 0, block_frames: int = 1600,
                 loop: bool = False):
        import soundfile as sf

        self.path = os.path.expanduser(str(path))
        if not os.path.isfile(self.path):
            raise SourceError(f"audio file not found: {self.path}")
        try:
            self._f = sf.SoundFile(self.path)
        except Exception as exc:  # soundfile raises LibsndfileError / RuntimeError
            raise SourceError(f"cannot read audio file {self.path}: {exc}") from exc
        if self._f.frames == 0:
            self._f.close()
            raise SourceError(f"audio file {self.path} has no audio frames")
        self.file_rate = int(self._f.samplerate)
        self.file_channels = int(self._f.channels)
        self.sample_rate = int(sample_rate) if sample_rate and sample_rate > 0 else self.file_rate
        ch = int(channels) if channels and channels > 0 else self.file_channels
        if ch != self.file_channels and ch != 1 and self.file_channels != 1:
            self._f.close()
            raise SourceError(f"audio file {self.path} has {self.file_channels} channels; cannot make {ch} of them "
                              "(use channels 0 to keep them, or 1 to downmix)")
        self.channels = ch
        if block_frames <= 0:
            raise SourceError(f"block size must be > 0 frames, got {block_frames}")
        self.block_frames = int(block_frames)
        self.loop = bool(loop)
        self._resampler = None
        if self.sample_rate != self.file_rate:
            import soxr
            self._resampler = soxr.ResampleStream(self.file_rate, self.sample_rate, self.channels, dtype="float32",
                                                  quality="HQ")
        self._buf = np.zeros((0, self.channels), np.float32)
        self._eof = False
        self.loops = 0

    @property
    def duration_s(self) -> float:
        return self._f.frames / float(self.file_rate)

    def _convert_channels(self, x: np.ndarray) -> np.ndarray:
        if x.shape[1] == self.channels:
            return x
        if self.channels == 1:
            return x.mean(axis=1, keepdims=True, dtype=np.float32)
        return np.repeat(x, self.channels, axis=1)  # mono file -> n channels

    def _fill(self, need: int) -> None:
        chunk = max(self.block_frames, 4096)
        while self._buf.shape[0] < need and not self._eof:
            x = self._f.read(chunk, dtype="float32", always_2d=True)
            last = x.shape[0] < chunk
            if last and self.loop:
                self._f.seek(0)
                self.loops += 1
                last = False
                if x.shape[0] == 0:
                    continue
            x = self._convert_channels(x)
            if self._resampler is not None:
                x = self._resampler.resample_chunk(x, last=last)
            if x.size:
                self._buf = np.concatenate([self._buf, x.astype(np.float32, copy=False)])
            if last:
                self._eof = True

    def read_block(self) -> Optional[np.ndarray]:
        """Next (block_frames, channels) float32 block in [-1, 1]; the final one may be shorter; None when done."""
        self._fill(self.block_frames)
        if self._buf.shape[0] == 0:
            return None
        out, self._buf = self._buf[: self.block_frames], self._buf[self.block_frames:]
        return np.clip(out, -1.0, 1.0)

    def close(self) -> None:
        try:
            self._f.close()
        except Exception:  # noqa: BLE001
            pass


def list_input_devices(query: Optional[Callable] = None) -> List[dict]:
    """sounddevice's devices that have input channels, each dict with an added "index". [] when PortAudio sees none
    or is missing."""
    if query is None:
        try:
            import sounddevice as sd
        except (ImportError, OSError):  # OSError: libportaudio2 missing
            return []
        query = sd.query_devices
    try:
        devices = list(query())
    except Exception:  # noqa: BLE001 - PortAudioError when there is no audio system
        return []
    out = []
    for i, d in enumerate(devices):
        d = dict(d)
        d.setdefault("index", i)
        if int(d.get("max_input_channels", 0)) > 0:
            out.append(d)
    return out


def resolve_input_device(spec: Union[str, int, None], devices: Sequence[dict]) -> Optional[int]:
    """Pick an input device: ``""``/None -> the system default (returns None), an index (``3`` / ``"3"``), or a
    case-insensitive substring of the device name. Raises SourceError listing the input devices."""
    listing = "; ".join(f"{d['index']}: {d.get('name', '?')} ({d.get('max_input_channels', 0)} ch)"
                        for d in devices) or "none (no sound card / PortAudio sees no input)"
    if not devices:
        raise SourceError(f"no audio input device found: input devices: {listing}. To replay audio without one, "
                          "set the microphone node's 'file' parameter")
    s = "" if spec is None else str(spec).strip()
    if s == "":
        return None
    if s.lstrip("-").isdigit():
        idx = int(s)
        if any(int(d["index"]) == idx for d in devices):
            return idx
        raise SourceError(f"audio input device {idx} does not exist or has no input; input devices: {listing}")
    hits = [d for d in devices if s.lower() in str(d.get("name", "")).lower()]
    if not hits:
        raise SourceError(f"no audio input device matches {s!r}; input devices: {listing}")
    return int(hits[0]["index"])


def open_input_stream(device: Union[str, int, None], sample_rate: int, channels: int, block_frames: int,
                      dtype: str, callback: Callable) -> Tuple[object, int]:
    """Open and start a sounddevice.InputStream. Falls back to the device's default rate when ``sample_rate`` is not
    supported. Returns (stream, actual sample rate). Raises SourceError with the reason."""
    try:
        import sounddevice as sd
    except OSError as exc:
        raise SourceError(f"PortAudio is not available ({exc}); install libportaudio2") from exc
    idx = resolve_input_device(device, list_input_devices(sd.query_devices))
    rates = [int(sample_rate)]
    try:
        default_rate = int(sd.query_devices(idx if idx is not None else sd.default.device[0],
                                            kind=None if idx is not None else "input")["default_samplerate"])
        if default_rate not in rates:
            rates.append(default_rate)
    except Exception:  # noqa: BLE001
        pass
    last = None
    for rate in rates:
        try:
            stream = sd.InputStream(device=idx, samplerate=rate, channels=channels, dtype=dtype,
                                    blocksize=int(round(block_frames * rate / sample_rate)), callback=callback)
            stream.start()
            return stream, rate
        except Exception as exc:  # noqa: BLE001 - sd.PortAudioError and ValueError
            last = exc
    raise SourceError(f"cannot open audio input {device if device not in (None, '') else '(default)'} at "
                      f"{'/'.join(map(str, rates))} Hz, {channels} ch: {last}")

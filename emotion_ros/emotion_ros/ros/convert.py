"""Conversions between ROS 2 messages and numpy (no cv_bridge needed).

Images: :func:`image_to_numpy` turns any ``sensor_msgs/Image`` whose encoding maps to pixels into BGR or grey
uint8; :func:`numpy_to_image` builds an ``Image`` from an array.  Compressed images (``sensor_msgs/CompressedImage``,
image_transport's ``<topic>/compressed``): :func:`compressed_to_numpy` decodes JPEG/PNG, :func:`numpy_to_compressed`
encodes JPEG with image_transport's ``format`` string (``"bgr8; jpeg compressed bgr8"``).  Audio: :func:`pcm_to_float` /
:func:`float_to_pcm` convert interleaved PCM bytes (GStreamer format names, as used by audio_common's
``AudioInfo.sample_format``) to and from float32 in [-1, 1].  Time: :func:`stamp_to_sec` / :func:`sec_to_stamp`.

Bad input raises :class:`emotion_ros.core.errors.InputError` with a message naming the problem.
"""

from __future__ import annotations

import array
import math
from typing import Optional, Union

import cv2
import numpy as np
from builtin_interfaces.msg import Time
from sensor_msgs.msg import CompressedImage, Image

from emotion_ros.core.errors import InputError

__all__ = [
    "IMAGE_ENCODINGS",
    "PCM_FORMATS",
    "image_to_numpy",
    "numpy_to_image",
    "compressed_to_numpy",
    "numpy_to_compressed",
    "pcm_to_float",
    "float_to_pcm",
    "pcm_frame_remainder",
    "pcm_nonfinite_mask",
    "pcm_bytes_per_frame",
    "stamp_to_sec",
    "sec_to_stamp",
    "stamp_to_ns",
    "ns_to_stamp",
]

DEFAULT_MAX_PIXELS = 8192 * 8192

# ---------------------------------------------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------------------------------------------

# encoding -> (numpy base dtype, channels, colour order). Colour order: "mono", "bgr", "rgb", "bgra", "rgba",
# "uyvy", "yuyv", "bayer_<opencv code>", "nv21", "nv24". Multi-byte dtypes get their byte order from is_bigendian.
_BAYER_TO_BGR = {  # ROS bayer pattern -> OpenCV code (OpenCV names the pattern from the second row; cv_bridge's table)
    "bayer_rggb8": cv2.COLOR_BayerBG2BGR,
    "bayer_bggr8": cv2.COLOR_BayerRG2BGR,
    "bayer_gbrg8": cv2.COLOR_BayerGR2BGR,
    "bayer_grbg8": cv2.COLOR_BayerGB2BGR,
}
_ENC = {
    "mono8": ("u1", 1, "mono"),
    "8uc1": ("u1", 1, "mono"),
    "bgr8": ("u1", 3, "bgr"),
    "8uc3": ("u1", 3, "bgr"),
    "rgb8": ("u1", 3, "rgb"),
    "bgra8": ("u1", 4, "bgra"),
    "8uc4": ("u1", 4, "bgra"),
    "rgba8": ("u1", 4, "rgba"),
    "mono16": ("u2", 1, "mono"),
    "16uc1": ("u2", 1, "mono"),
    "bgr16": ("u2", 3, "bgr"),
    "16uc3": ("u2", 3, "bgr"),
    "rgb16": ("u2", 3, "rgb"),
    "bgra16": ("u2", 4, "bgra"),
    "16uc4": ("u2", 4, "bgra"),
    "rgba16": ("u2", 4, "rgba"),
    "32fc1": ("f4", 1, "mono"),
    "32fc3": ("f4", 3, "bgr"),
    "32fc4": ("f4", 4, "bgra"),
    "64fc1": ("f8", 1, "mono"),
    "yuv422": ("u1", 2, "uyvy"),  # ROS "yuv422" is UYVY
    "uyvy": ("u1", 2, "uyvy"),
    "yuyv": ("u1", 2, "yuyv"),
    "yuv422_yuy2": ("u1", 2, "yuyv"),
    "nv21": ("u1", 1, "nv21"),  # Y plane + interleaved V/U at half resolution: 1.5 bytes per pixel
    "nv24": ("u1", 1, "nv24"),  # Y plane + interleaved U/V at full resolution: 3 bytes per pixel
}
_ENC.update({name: ("u1", 1, name) for name in _BAYER_TO_BGR})

#: Encodings accepted by :func:`image_to_numpy` (lower case; matching is case-insensitive).
IMAGE_ENCODINGS = tuple(sorted(_ENC))

_WANTS = ("bgr8", "mono8", "rgb8")


def _to_u8(a: np.ndarray) -> np.ndarray:
    """Scale integer or float pixels to uint8: 16-bit keeps the high byte, floats are intensities in [0, 1]."""
    if a.dtype.kind == "u" and a.dtype.itemsize == 1:
        return a
    if a.dtype.kind == "u" and a.dtype.itemsize == 2:  # either byte order
        return (a >> 8).astype(np.uint8)
    f = np.nan_to_num(a.astype(np.float32, copy=False), nan=0.0, posinf=1.0, neginf=0.0)
    return np.clip(f * 255.0 + 0.5, 0, 255).astype(np.uint8)


def image_to_numpy(msg: Image, want: str = "bgr8", max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Convert a ``sensor_msgs/Image`` to a C-contiguous uint8 array.

    ``want``: ``"bgr8"`` -> (H, W, 3), ``"rgb8"`` -> (H, W, 3), ``"mono8"`` -> (H, W).
    Row padding (``step``) and ``is_bigendian`` are honoured. 16-bit images keep their high byte; float images are
    read as intensities in [0, 1]. Raises InputError for unsupported encodings, a step smaller than a row, a data
    size that does not match ``step * height``, empty images, or more than ``max_pixels`` pixels.
    """
    want = want.lower()
    if want not in _WANTS:
        raise InputError(f"image_to_numpy: want must be one of {_WANTS}, not {want!r}")
    enc = (msg.encoding or "").lower()
    if enc not in _ENC:
        raise InputError(f"unsupported image encoding {msg.encoding!r} (supported: {', '.join(IMAGE_ENCODINGS)})")
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    if h <= 0 or w <= 0:
        raise InputError(f"empty image: {w}x{h} ({msg.encoding})")
    if h * w > max_pixels:
        raise InputError(f"image too large: {w}x{h} = {w * h} pixels > max_pixels {max_pixels}")
    base, ch, order = _ENC[enc]
    dt = np.dtype(base)
    if dt.itemsize > 1:
        dt = dt.newbyteorder(">" if msg.is_bigendian else "<")
    row_bytes = w * ch * dt.itemsize
    rows = h
    if order == "nv21":
        if w % 2 or h % 2:
            raise InputError(f"nv21 image needs even width and height, got {w}x{h}")
        rows = h * 3 // 2
    elif order == "nv24":
        rows = h * 3
    elif order in ("uyvy", "yuyv") and w % 2:
        raise InputError(f"{enc} image needs an even width, got {w}")
    if step < row_bytes:
        raise InputError(f"image step {step} is smaller than one row of {w} {enc} pixels ({row_bytes} bytes)")
    n = len(msg.data)
    if n == 0:
        raise InputError(f"image {w}x{h} {enc} has no data")
    if n != step * rows:
        what = "truncated" if n < step * rows else "too long"
        raise InputError(f"image data {what}: {n} bytes, expected step*rows = {step}*{rows} = {step * rows} "
                         f"for {w}x{h} {enc}")
    buf = np.frombuffer(msg.data, dtype=np.uint8)
    if step % dt.itemsize:
        # Rows start at unaligned offsets: copy the rows out first.
        raw = np.ascontiguousarray(buf.reshape(rows, step)[:, :row_bytes]).view(dt)
    else:
        raw = buf.view(dt).reshape(rows, step // dt.itemsize)[:, : w * ch]
    if order == "nv21":
        img = cv2.cvtColor(np.ascontiguousarray(raw.reshape(rows, w)), cv2.COLOR_YUV2BGR_NV21)
        return _finish(img, "bgr", want)
    if order == "nv24":
        y = raw[:h].reshape(h, w)
        uv = raw[h:].reshape(h, w, 2)
        return _finish(_yuv444_to_bgr(y, uv[..., 0], uv[..., 1]), "bgr", want)  # NV24: U first
    img = raw.reshape(h, w, ch) if ch > 1 else raw.reshape(h, w)
    if order == "uyvy":
        return _finish(cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_YUV2BGR_UYVY), "bgr", want)
    if order == "yuyv":
        return _finish(cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_YUV2BGR_YUY2), "bgr", want)
    if order in _BAYER_TO_BGR:
        return _finish(cv2.cvtColor(np.ascontiguousarray(img), _BAYER_TO_BGR[order]), "bgr", want)
    return _finish(_to_u8(img), order, want)


def _yuv444_to_bgr(y: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """BT.601 limited-range YUV (as OpenCV decodes NV21 / UYVY) -> BGR uint8."""
    c = (y.astype(np.float32) - 16.0) * 1.164
    d = u.astype(np.float32) - 128.0
    e = v.astype(np.float32) - 128.0
    bgr = np.dstack([c + 2.018 * d, c - 0.391 * d - 0.813 * e, c + 1.596 * e])
    return np.clip(bgr + 0.5, 0, 255).astype(np.uint8)


def _finish(img: np.ndarray, order: str, want: str) -> np.ndarray:
    if order == "mono":
        if want == "mono8":
            return np.ascontiguousarray(img)
        return cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_GRAY2BGR)  # same for rgb
    code = {
        ("bgr", "bgr8"): None, ("bgr", "rgb8"): cv2.COLOR_BGR2RGB, ("bgr", "mono8"): cv2.COLOR_BGR2GRAY,
        ("rgb", "rgb8"): None, ("rgb", "bgr8"): cv2.COLOR_RGB2BGR, ("rgb", "mono8"): cv2.COLOR_RGB2GRAY,
        ("bgra", "bgr8"): cv2.COLOR_BGRA2BGR, ("bgra", "rgb8"): cv2.COLOR_BGRA2RGB,
        ("bgra", "mono8"): cv2.COLOR_BGRA2GRAY,
        ("rgba", "bgr8"): cv2.COLOR_RGBA2BGR, ("rgba", "rgb8"): cv2.COLOR_RGBA2RGB,
        ("rgba", "mono8"): cv2.COLOR_RGBA2GRAY,
    }[(order, want)]
    img = np.ascontiguousarray(img)
    return img if code is None else cv2.cvtColor(img, code)


# encoding -> (dtype, channels) accepted by numpy_to_image
_OUT = {
    "bgr8": ("u1", 3), "rgb8": ("u1", 3), "8uc3": ("u1", 3),
    "bgra8": ("u1", 4), "rgba8": ("u1", 4), "8uc4": ("u1", 4),
    "mono8": ("u1", 1), "8uc1": ("u1", 1),
    "mono16": ("u2", 1), "16uc1": ("u2", 1),
    "bgr16": ("u2", 3), "rgb16": ("u2", 3), "16uc3": ("u2", 3),
    "bgra16": ("u2", 4), "rgba16": ("u2", 4), "16uc4": ("u2", 4),
    "32fc1": ("f4", 1), "32fc3": ("f4", 3), "32fc4": ("f4", 4), "64fc1": ("f8", 1),
    "yuv422": ("u1", 2), "uyvy": ("u1", 2), "yuyv": ("u1", 2), "yuv422_yuy2": ("u1", 2),
}
_OUT.update({name: ("u1", 1) for name in _BAYER_TO_BGR})

_UPPER_ENC = {"8uc1": "8UC1", "8uc3": "8UC3", "8uc4": "8UC4", "16uc1": "16UC1", "16uc3": "16UC3",
              "16uc4": "16UC4", "32fc1": "32FC1", "32fc3": "32FC3", "32fc4": "32FC4", "64fc1": "64FC1"}


def numpy_to_image(arr: np.ndarray, encoding: str = "bgr8", stamp: Union[Time, float, None] = None,
                   frame_id: str = "") -> Image:
    """Build a ``sensor_msgs/Image`` (little endian, unpadded rows) from an (H, W[, C]) array.

    The dtype and channel count must fit ``encoding`` (e.g. bgr8: uint8 (H, W, 3); mono16: uint16 (H, W);
    32FC1: float32 (H, W)); otherwise InputError. ``stamp`` is a ``builtin_interfaces/Time``, float seconds or None
    (zero time).
    """
    enc = encoding.lower()
    if enc not in _OUT:
        raise InputError(f"numpy_to_image: unsupported encoding {encoding!r} (supported: {', '.join(sorted(_OUT))})")
    base, ch = _OUT[enc]
    a = np.asarray(arr)
    if a.ndim == 3 and a.shape[2] == 1 and ch == 1:
        a = a[:, :, 0]
    shape_ok = (a.ndim == 2 and ch == 1) or (a.ndim == 3 and a.shape[2] == ch)
    if not shape_ok:
        raise InputError(f"numpy_to_image: array of shape {a.shape} does not fit {encoding} ({ch} channel(s))")
    if a.dtype != np.dtype(base):
        raise InputError(f"numpy_to_image: array dtype {a.dtype} does not fit {encoding} (needs {np.dtype(base)})")
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise InputError(f"numpy_to_image: empty array of shape {a.shape}")
    a = np.ascontiguousarray(a, dtype=np.dtype(base).newbyteorder("<"))
    msg = Image()
    if stamp is not None:
        msg.header.stamp = stamp if isinstance(stamp, Time) else sec_to_stamp(float(stamp))
    msg.header.frame_id = frame_id
    msg.height, msg.width = int(a.shape[0]), int(a.shape[1])
    msg.encoding = _UPPER_ENC.get(enc, enc)
    msg.is_bigendian = 0
    msg.step = int(a.shape[1] * ch * a.itemsize)
    data = array.array("B")
    data.frombytes(a.data.cast("B") if a.flags.c_contiguous else a.tobytes())
    msg.data = data  # an array.array('B') skips the per-element check of the generated setter
    return msg


# ---------------------------------------------------------------------------------------------------------------
# Compressed images (sensor_msgs/CompressedImage, image_transport's "compressed" transport)
# ---------------------------------------------------------------------------------------------------------------

_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _compressed_size(buf: bytes):
    """(width, height) read from a JPEG's frame header or a PNG's IHDR, or None when neither is found."""
    if buf[:8] == b"\x89PNG\r\n\x1a\n" and len(buf) >= 24:
        return int.from_bytes(buf[16:20], "big"), int.from_bytes(buf[20:24], "big")
    if buf[:2] != b"\xff\xd8":
        return None
    i, n = 2, len(buf)
    while i + 9 < n:
        if buf[i] != 0xFF:
            return None
        marker = buf[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # no length field
            i += 2
            continue
        seg = int.from_bytes(buf[i + 2:i + 4], "big")
        if marker in _JPEG_SOF:
            return int.from_bytes(buf[i + 7:i + 9], "big"), int.from_bytes(buf[i + 5:i + 7], "big")
        if marker == 0xDA or seg < 2:  # scan data before any frame header: malformed
            return None
        i += 2 + seg
    return None


def compressed_to_numpy(msg: CompressedImage, want: str = "bgr8", max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode a ``sensor_msgs/CompressedImage`` (JPEG or PNG, whatever ``cv2.imdecode`` reads) to uint8.

    ``want``: ``"bgr8"`` / ``"rgb8"`` -> (H, W, 3), ``"mono8"`` -> (H, W) (decoded straight to grey). ``format``
    follows image_transport (``"bgr8; jpeg compressed bgr8"``, or just ``"jpeg"``); data said to be
    ``compressed rgb8`` is swapped to BGR. Raises InputError for empty data, data that does not decode (corrupt or not
    an image), or a header announcing more than ``max_pixels`` pixels (checked before decoding).
    """
    want = want.lower()
    if want not in _WANTS:
        raise InputError(f"compressed_to_numpy: want must be one of {_WANTS}, not {want!r}")
    data = msg.data
    buf = data.tobytes() if hasattr(data, "tobytes") else bytes(data)
    fmt = (msg.format or "").strip()
    if not buf:
        raise InputError(f"compressed image ({fmt or 'no format'}) has no data")
    size = _compressed_size(buf)
    if size is not None and size[0] * size[1] > max_pixels:
        raise InputError(f"compressed image too large: {size[0]}x{size[1]} = {size[0] * size[1]} pixels > "
                         f"max_pixels {max_pixels}")
    flag = cv2.IMREAD_GRAYSCALE if want == "mono8" else cv2.IMREAD_COLOR
    try:
        img = cv2.imdecode(np.frombuffer(buf, np.uint8), flag)
    except cv2.error as exc:
        raise InputError(f"compressed image ({fmt or 'no format'}, {len(buf)} bytes) does not decode: "
                         f"{str(exc).strip().splitlines()[-1]}") from None
    if img is None or img.size == 0:
        raise InputError(f"compressed image ({fmt or 'no format'}, {len(buf)} bytes) does not decode "
                         f"(corrupt, or not JPEG/PNG data)")
    if img.ndim == 3 and img.shape[2] == 4:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2BGR)
    if img.ndim == 2:
        return _finish(img, "mono", want)
    order = "rgb" if "compressed rgb" in fmt.lower() else "bgr"
    return _finish(img, order, want)


def numpy_to_compressed(arr: np.ndarray, quality: int = 80, stamp: Union[Time, float, None] = None,
                        frame_id: str = "") -> CompressedImage:
    """JPEG-encode a BGR (H, W, 3) or grey (H, W) uint8 array into a ``sensor_msgs/CompressedImage``.

    ``quality`` 1..100 (OpenCV's IMWRITE_JPEG_QUALITY). ``format`` is image_transport's
    (``"bgr8; jpeg compressed bgr8"`` / ``"mono8; jpeg compressed mono8"``), so ROS tools decode it too.
    """
    a = np.asarray(arr)
    if a.dtype != np.uint8 or not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] in (1, 3))):
        raise InputError(f"numpy_to_compressed: needs uint8 (H, W) or (H, W, 3), got {a.dtype} {a.shape}")
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise InputError(f"numpy_to_compressed: empty array of shape {a.shape}")
    q = int(quality)
    if not 1 <= q <= 100:
        raise InputError(f"numpy_to_compressed: JPEG quality must be 1..100, got {quality}")
    ok, enc = cv2.imencode(".jpg", a, [cv2.IMWRITE_JPEG_QUALITY, q])
    if not ok:
        raise InputError(f"numpy_to_compressed: JPEG encoding of a {a.shape} image failed")
    kind = "mono8" if a.ndim == 2 or a.shape[2] == 1 else "bgr8"
    msg = CompressedImage()
    if stamp is not None:
        msg.header.stamp = stamp if isinstance(stamp, Time) else sec_to_stamp(float(stamp))
    msg.header.frame_id = frame_id
    msg.format = f"{kind}; jpeg compressed {kind}"
    data = array.array("B")
    data.frombytes(enc.data.cast("B"))
    msg.data = data
    return msg


# ---------------------------------------------------------------------------------------------------------------
# Audio
# ---------------------------------------------------------------------------------------------------------------

# format -> (bytes per sample, kind, byte order). kind: "s" signed int, "u" unsigned int, "f" float.
_PCM = {
    "S8": (1, "s", "<"), "U8": (1, "u", "<"),
    "S16LE": (2, "s", "<"), "S16BE": (2, "s", ">"), "U16LE": (2, "u", "<"), "U16BE": (2, "u", ">"),
    "S24LE": (3, "s", "<"), "S24BE": (3, "s", ">"),
    "S32LE": (4, "s", "<"), "S32BE": (4, "s", ">"),
    "F32LE": (4, "f", "<"), "F32BE": (4, "f", ">"),
    "F64LE": (8, "f", "<"), "F64BE": (8, "f", ">"),
}
#: Sample formats understood by :func:`pcm_to_float` / :func:`float_to_pcm` (GStreamer names).
PCM_FORMATS = tuple(_PCM)


def _pcm_spec(sample_format: str, channels: int):
    fmt = (sample_format or "").upper()
    if fmt not in _PCM:
        raise InputError(f"unsupported audio sample format {sample_format!r} (supported: {', '.join(PCM_FORMATS)})")
    if int(channels) <= 0:
        raise InputError(f"audio channel count must be >= 1, got {channels}")
    return fmt, _PCM[fmt]


def pcm_bytes_per_frame(sample_format: str, channels: int) -> int:
    """Bytes of one frame (one sample of every channel)."""
    _fmt, (width, _k, _o) = _pcm_spec(sample_format, channels)
    return width * int(channels)


def pcm_frame_remainder(data: bytes, sample_format: str, channels: int) -> int:
    """Number of trailing bytes of ``data`` that do not form a whole frame (ignored by :func:`pcm_to_float`)."""
    return len(data) % pcm_bytes_per_frame(sample_format, channels)


def _whole_frames(data, frame: int):
    """(the bytes of the whole frames of ``data`` as uint8, their number)."""
    buf = np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray) else data.view(np.uint8).ravel()
    n = buf.size // frame
    return buf[: n * frame], n


def pcm_nonfinite_mask(data: bytes, sample_format: str, channels: int) -> Optional[np.ndarray]:
    """Where float PCM holds NaN/Inf: a bool (n_frames, channels) array aligned with :func:`pcm_to_float`'s output,
    or None when there are none (always for integer formats, which cannot hold them)."""
    _fmt, (width, kind, order) = _pcm_spec(sample_format, channels)
    if kind != "f":
        return None
    buf, n = _whole_frames(data, width * int(channels))
    bad = ~np.isfinite(buf.view(np.dtype(f"{order}f{width}")))
    return bad.reshape(n, int(channels)) if bad.any() else None


def pcm_to_float(data: bytes, sample_format: str, channels: int) -> np.ndarray:
    """Interleaved PCM bytes -> float32 array (n_frames, channels) in [-1, 1].

    Integers are scaled by 2**(bits-1) (S16: /32768); floats are clipped to [-1, 1] with NaN -> 0. Only whole frames
    are converted: a trailing partial frame is dropped (see :func:`pcm_frame_remainder` to detect it).
    """
    fmt, (width, kind, order) = _pcm_spec(sample_format, channels)
    channels = int(channels)
    buf, n = _whole_frames(data, width * channels)
    if width == 3:
        b = buf.reshape(-1, 3).astype(np.int32)
        if order == "<":
            v = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        else:
            v = b[:, 2] | (b[:, 1] << 8) | (b[:, 0] << 16)
        v = np.where(v >= 1 << 23, v - (1 << 24), v)
        out = v.astype(np.float32) / float(1 << 23)
    elif kind == "f":
        x = buf.view(np.dtype(f"{order}f{width}")).astype(np.float32)
        out = np.clip(np.nan_to_num(x, nan=0.0, posinf=1.0, neginf=-1.0), -1.0, 1.0)
    elif kind == "s":
        x = buf.view(np.dtype(f"{order}i{width}"))
        out = (x.astype(np.float64 if width == 4 else np.float32) / float(1 << (8 * width - 1))).astype(np.float32)
    else:  # unsigned, offset binary
        x = buf.view(np.dtype(f"{order}u{width}")).astype(np.float64)
        half = float(1 << (8 * width - 1))
        out = ((x - half) / half).astype(np.float32)
    return out.reshape(n, channels)


def float_to_pcm(x: np.ndarray, sample_format: str = "S16LE") -> bytes:
    """float samples (n,) or (n, channels), nominally in [-1, 1] -> interleaved PCM bytes (values are clipped)."""
    a = np.asarray(x)
    if a.ndim not in (1, 2):
        raise InputError(f"float_to_pcm: expected (n,) or (n, channels) samples, got shape {a.shape}")
    fmt, (width, kind, order) = _pcm_spec(sample_format, 1 if a.ndim == 1 else max(a.shape[1], 1))
    if a.ndim == 2 and a.shape[1] == 0:
        raise InputError("float_to_pcm: zero channels")
    f = np.clip(np.nan_to_num(a.astype(np.float64).reshape(-1), nan=0.0), -1.0, 1.0)
    if kind == "f":
        return f.astype(np.dtype(f"{order}f{width}")).tobytes()
    full = float(1 << (8 * width - 1))
    q = np.clip(np.round(f * full), -full, full - 1).astype(np.int64)
    if kind == "u":
        return (q + int(full)).astype(np.dtype(f"{order}u{width}")).tobytes()
    if width == 3:
        q = q & 0xFFFFFF
        b = np.stack([q & 0xFF, (q >> 8) & 0xFF, (q >> 16) & 0xFF], axis=1).astype(np.uint8)
        if order == ">":
            b = b[:, ::-1]
        return np.ascontiguousarray(b).tobytes()
    return q.astype(np.dtype(f"{order}i{width}")).tobytes()


# ---------------------------------------------------------------------------------------------------------------
# Time
# ---------------------------------------------------------------------------------------------------------------

def stamp_to_sec(stamp) -> float:
    """``builtin_interfaces/Time`` (or rclpy.time.Time, or a number) -> float seconds."""
    if isinstance(stamp, (int, float)):
        return float(stamp)
    if hasattr(stamp, "nanoseconds"):  # rclpy.time.Time
        return stamp.nanoseconds * 1e-9
    return float(stamp.sec) + float(stamp.nanosec) * 1e-9


def sec_to_stamp(t: float) -> Time:
    """float seconds -> ``builtin_interfaces/Time`` (nanosecond rounding, nanosec always in [0, 1e9))."""
    t = float(t)
    if not math.isfinite(t):
        raise InputError(f"cannot convert non-finite time {t} to a stamp")
    sec = math.floor(t)
    nsec = int(round((t - sec) * 1e9))  # t - floor(t) is exact in binary floating point
    if nsec >= 1_000_000_000:
        sec, nsec = sec + 1, nsec - 1_000_000_000
    if not -(2 ** 31) <= sec < 2 ** 31:
        raise InputError(f"time {t} s does not fit a builtin_interfaces/Time (int32 seconds)")
    return Time(sec=int(sec), nanosec=int(nsec))



def stamp_to_ns(stamp) -> int:
    """``builtin_interfaces/Time`` (or rclpy.time.Time) -> integer nanoseconds (exact)."""
    if hasattr(stamp, "nanoseconds"):
        return int(stamp.nanoseconds)
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def ns_to_stamp(ns: int) -> Time:
    """Integer nanoseconds -> ``builtin_interfaces/Time`` (exact; for stamps that must advance without float error)."""
    sec, nsec = divmod(int(ns), 1_000_000_000)
    if not -(2 ** 31) <= sec < 2 ** 31:
        raise InputError(f"time {ns} ns does not fit a builtin_interfaces/Time (int32 seconds)")
    return Time(sec=int(sec), nanosec=int(nsec))

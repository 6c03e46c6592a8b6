"""emotion_ros.ros.convert: Image <-> numpy, PCM <-> float, stamps."""

import array

import cv2
import numpy as np
import pytest
from builtin_interfaces.msg import Time
from sensor_msgs.msg import Image

from emotion_ros.core.errors import InputError
from emotion_ros.ros.convert import (
    IMAGE_ENCODINGS, PCM_FORMATS, float_to_pcm, image_to_numpy, numpy_to_image, pcm_bytes_per_frame,
    ns_to_stamp, pcm_frame_remainder, pcm_nonfinite_mask, pcm_to_float, sec_to_stamp, stamp_to_ns,
    stamp_to_sec)

RNG = np.random.default_rng(0)


def raw_image(data: bytes, w, h, enc, step, bigendian=0):
    m = Image()
    m.width, m.height, m.encoding, m.step, m.is_bigendian = w, h, enc, step, bigendian
    m.data = array.array("B", data)
    return m


def colour_image(h=24, w=32):
    """Three uniform vertical bands (red, green, blue-ish) so colour conversions can be checked per band."""
    img = np.zeros((h, w, 3), np.uint8)
    img[:, : w // 4] = (40, 60, 200)   # BGR: reddish
    img[:, w // 4: w // 2] = (50, 190, 70)  # greenish
    img[:, w // 2:] = (210, 80, 30)  # blueish
    return img


# ------------------------------------------------------------------------------------------------- images ---

def test_bgr8_round_trip_keeps_pixels_and_header():
    a = RNG.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    m = numpy_to_image(a, "bgr8", stamp=12.25, frame_id="camera")
    assert (m.width, m.height, m.step, m.encoding, m.is_bigendian) == (64, 48, 192, "bgr8", 0)
    assert (m.header.stamp.sec, m.header.stamp.nanosec, m.header.frame_id) == (12, 250_000_000, "camera")
    out = image_to_numpy(m)
    assert out.dtype == np.uint8 and out.shape == (48, 64, 3) and out.flags.c_contiguous
    np.testing.assert_array_equal(out, a)


def test_rgb_and_alpha_orders_are_converted_to_bgr():
    a = RNG.integers(0, 256, (10, 12, 3), dtype=np.uint8)
    np.testing.assert_array_equal(image_to_numpy(numpy_to_image(a[..., ::-1].copy(), "rgb8")), a)
    alpha = np.full((10, 12, 1), 7, np.uint8)
    np.testing.assert_array_equal(image_to_numpy(numpy_to_image(np.concatenate([a, alpha], 2), "bgra8")), a)
    rgba = np.concatenate([a[..., ::-1], alpha], 2)
    np.testing.assert_array_equal(image_to_numpy(numpy_to_image(rgba, "rgba8")), a)
    np.testing.assert_array_equal(image_to_numpy(numpy_to_image(a, "bgr8"), "rgb8"), a[..., ::-1])


def test_mono_and_grey_conversions():
    g = RNG.integers(0, 256, (9, 11), dtype=np.uint8)
    m = numpy_to_image(g, "mono8")
    np.testing.assert_array_equal(image_to_numpy(m, "mono8"), g)
    bgr = image_to_numpy(m, "bgr8")
    assert bgr.shape == (9, 11, 3)
    for c in range(3):
        np.testing.assert_array_equal(bgr[..., c], g)
    a = RNG.integers(0, 256, (9, 11, 3), dtype=np.uint8)
    np.testing.assert_array_equal(image_to_numpy(numpy_to_image(a), "mono8"), cv2.cvtColor(a, cv2.COLOR_BGR2GRAY))
    # OpenCV-style type names
    np.testing.assert_array_equal(image_to_numpy(numpy_to_image(g, "8UC1"), "mono8"), g)
    np.testing.assert_array_equal(image_to_numpy(numpy_to_image(a, "8UC3")), a)


def test_step_padding_is_skipped():
    h, w, pad = 5, 7, 9
    a = RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)
    rows = [a[r].tobytes() + bytes([0xEE]) * pad for r in range(h)]
    m = raw_image(b"".join(rows), w, h, "bgr8", w * 3 + pad)
    np.testing.assert_array_equal(image_to_numpy(m), a)


@pytest.mark.parametrize("bigendian", [0, 1])
@pytest.mark.parametrize("pad", [0, 1, 2])  # pad 1: rows of 16-bit pixels start at odd offsets
def test_mono16_respects_endianness_and_padding(bigendian, pad):
    h, w = 3, 4
    v = (np.arange(h * w, dtype=np.uint16).reshape(h, w) * 4099 + 0x0123).astype(np.uint16)
    dt = ">u2" if bigendian else "<u2"
    rows = [v[r].astype(dt).tobytes() + b"\x55" * pad for r in range(h)]
    m = raw_image(b"".join(rows), w, h, "mono16", w * 2 + pad, bigendian)
    np.testing.assert_array_equal(image_to_numpy(m, "mono8"), (v >> 8).astype(np.uint8))
    m.encoding = "16UC1"
    np.testing.assert_array_equal(image_to_numpy(m, "mono8"), (v >> 8).astype(np.uint8))


def test_rgb16_keeps_high_byte():
    v = RNG.integers(0, 65536, (4, 6, 3), dtype=np.uint16)
    out = image_to_numpy(numpy_to_image(v, "rgb16"))
    np.testing.assert_array_equal(out, (v >> 8).astype(np.uint8)[..., ::-1])


def test_float_images_are_intensities_in_unit_range():
    f = np.array([[0.0, 0.5, 1.0, 2.0], [-1.0, np.nan, 0.25, 1.0]], np.float32)
    out = image_to_numpy(numpy_to_image(f, "32FC1"), "mono8")
    np.testing.assert_array_equal(out, [[0, 128, 255, 255], [0, 0, 64, 255]])
    m = numpy_to_image(f, "32FC1")
    assert m.encoding == "32FC1" and m.step == 16
    # big-endian float
    m2 = raw_image(f.astype(">f4").tobytes(), 4, 2, "32FC1", 16, 1)
    np.testing.assert_array_equal(image_to_numpy(m2, "mono8"), out)


def _bt601_limited(bgr):
    """BGR -> Y, U, V (int, BT.601 limited range: what cameras send in YUV 4:2:2 / 4:4:4)."""
    b, g, r = [bgr[..., i].astype(np.float64) for i in range(3)]
    y = 16 + 0.257 * r + 0.504 * g + 0.098 * b
    u = 128 - 0.148 * r - 0.291 * g + 0.439 * b
    v = 128 + 0.439 * r - 0.368 * g - 0.071 * b
    return [np.clip(np.round(c), 0, 255).astype(np.int32) for c in (y, u, v)]


def _pack_422(bgr, order):
    y, u, v = _bt601_limited(bgr)
    u2 = ((u[:, 0::2] + u[:, 1::2] + 1) // 2).astype(np.uint8)
    v2 = ((v[:, 0::2] + v[:, 1::2] + 1) // 2).astype(np.uint8)
    h, w = y.shape
    out = np.zeros((h, w, 2), np.uint8)
    if order == "uyvy":
        out[:, 0::2, 0], out[:, 0::2, 1], out[:, 1::2, 0], out[:, 1::2, 1] = u2, y[:, 0::2], v2, y[:, 1::2]
    else:  # yuyv
        out[:, 0::2, 0], out[:, 0::2, 1], out[:, 1::2, 0], out[:, 1::2, 1] = y[:, 0::2], u2, y[:, 1::2], v2
    return out


@pytest.mark.parametrize("enc,order", [("yuv422", "uyvy"), ("uyvy", "uyvy"), ("yuyv", "yuyv"),
                                       ("yuv422_yuy2", "yuyv")])
def test_yuv422_variants_decode_to_the_right_colours(enc, order):
    bgr = colour_image()
    out = image_to_numpy(numpy_to_image(_pack_422(bgr, order), enc))
    # compare band centres (chroma is shared by pixel pairs)
    for x in (4, 12, 24):
        assert np.abs(out[10, x].astype(int) - bgr[10, x].astype(int)).max() <= 4, (x, out[10, x], bgr[10, x])
    # swapping the byte order must give clearly different colours (the test can tell the layouts apart)
    other = "yuyv" if order == "uyvy" else "uyvy"
    wrong = image_to_numpy(numpy_to_image(_pack_422(bgr, other), enc))
    assert np.abs(wrong[10, 4].astype(int) - bgr[10, 4].astype(int)).max() > 40


@pytest.mark.parametrize("enc,pattern", [("bayer_rggb8", "RGGB"), ("bayer_bggr8", "BGGR"),
                                         ("bayer_gbrg8", "GBRG"), ("bayer_grbg8", "GRBG")])
def test_bayer_patterns_decode_to_the_right_colours(enc, pattern):
    bgr = colour_image(24, 32)
    idx = {"B": 0, "G": 1, "R": 2}
    mosaic = np.zeros(bgr.shape[:2], np.uint8)
    for dy in (0, 1):
        for dx in (0, 1):
            mosaic[dy::2, dx::2] = bgr[dy::2, dx::2, idx[pattern[dy * 2 + dx]]]
    out = image_to_numpy(numpy_to_image(mosaic, enc))
    for x in (3, 12, 24):
        np.testing.assert_allclose(out[11, x].astype(int), bgr[11, x].astype(int), atol=2)


def test_nv21_and_nv24():
    bgr = colour_image(24, 32)
    h, w = bgr.shape[:2]
    i420 = cv2.cvtColor(bgr, cv2.COLOR_BGR2YUV_I420).reshape(-1)
    y = i420[: h * w]
    u = i420[h * w: h * w + h * w // 4]
    v = i420[h * w + h * w // 4:]
    vu = np.stack([v, u], 1).reshape(-1)
    m = raw_image(np.concatenate([y, vu]).tobytes(), w, h, "nv21", w)
    out = image_to_numpy(m)
    for x in (4, 12, 24):
        assert np.abs(out[11, x].astype(int) - bgr[11, x].astype(int)).max() <= 6
    y4, u4, v4 = _bt601_limited(bgr)
    nv24 = np.concatenate([y4.reshape(-1), np.stack([u4, v4], -1).reshape(-1)]).astype(np.uint8)
    out24 = image_to_numpy(raw_image(nv24.tobytes(), w, h, "nv24", w))
    assert np.abs(out24.astype(int) - bgr.astype(int)).max() <= 3


def test_every_listed_encoding_is_decodable():
    for enc in IMAGE_ENCODINGS:
        w, h = 8, 6
        bpp = {"nv21": 1.5, "nv24": 3}.get(enc)
        if bpp is None:
            probe = Image(encoding=enc, width=w, height=h)
            # derive bytes per pixel by asking for a too-small step
            probe.step = 0
            probe.data = array.array("B", b"\0")
            with pytest.raises(InputError, match="smaller than one row") as ei:
                image_to_numpy(probe)
            row = int(str(ei.value).split("(")[-1].split(" ")[0])
            m = raw_image(bytes(row * h), w, h, enc, row)
        else:
            m = raw_image(bytes(int(w * h * bpp)), w, h, enc, w)
        assert image_to_numpy(m).shape == (h, w, 3)
        assert image_to_numpy(m, "mono8").shape == (h, w)


@pytest.mark.parametrize("mutate,match", [
    (lambda m: setattr(m, "encoding", "jpeg"), "unsupported image encoding 'jpeg'"),
    (lambda m: setattr(m, "encoding", ""), "unsupported image encoding ''"),
    (lambda m: setattr(m, "step", 10), "smaller than one row"),
    (lambda m: setattr(m, "data", m.data[:-1]), "truncated"),
    (lambda m: setattr(m, "data", m.data + array.array("B", b"xyz")), "too long"),
    (lambda m: setattr(m, "data", array.array("B")), "no data"),
    (lambda m: (setattr(m, "width", 0)), "empty image"),
    (lambda m: (setattr(m, "height", 0)), "empty image"),
])
def test_bad_images_raise_input_error_naming_the_problem(mutate, match):
    m = numpy_to_image(np.zeros((4, 6, 3), np.uint8))
    mutate(m)
    with pytest.raises(InputError, match=match):
        image_to_numpy(m)


def test_huge_images_are_refused_before_touching_data():
    m = Image(encoding="bgr8", width=100_000, height=100_000, step=300_000)
    with pytest.raises(InputError, match="too large"):
        image_to_numpy(m)
    with pytest.raises(InputError, match="too large"):
        image_to_numpy(numpy_to_image(np.zeros((20, 20), np.uint8), "mono8"), max_pixels=399)
    assert image_to_numpy(numpy_to_image(np.zeros((20, 20), np.uint8), "mono8"), max_pixels=400).shape == (20, 20, 3)


def test_odd_sizes_for_subsampled_formats_and_bad_want():
    with pytest.raises(InputError, match="even width"):
        image_to_numpy(raw_image(bytes(3 * 2 * 2), 3, 2, "yuyv", 6))
    with pytest.raises(InputError, match="even width and height"):
        image_to_numpy(raw_image(bytes(12), 4, 3, "nv21", 4))
    with pytest.raises(InputError, match="want"):
        image_to_numpy(numpy_to_image(np.zeros((2, 2, 3), np.uint8)), "hsv")


def test_numpy_to_image_checks_shape_and_dtype():
    with pytest.raises(InputError, match="shape"):
        numpy_to_image(np.zeros((4, 4), np.uint8), "bgr8")
    with pytest.raises(InputError, match="dtype"):
        numpy_to_image(np.zeros((4, 4, 3), np.float32), "bgr8")
    with pytest.raises(InputError, match="unsupported encoding"):
        numpy_to_image(np.zeros((4, 4, 3), np.uint8), "jpeg")
    with pytest.raises(InputError, match="empty"):
        numpy_to_image(np.zeros((0, 4, 3), np.uint8), "bgr8")
    # (H, W, 1) is accepted for single-channel encodings; non-contiguous views are copied
    m = numpy_to_image(np.arange(12, dtype=np.uint8).reshape(3, 4, 1), "mono8")
    assert (m.width, m.height, m.step) == (4, 3, 4)
    view = RNG.integers(0, 256, (8, 8, 3), dtype=np.uint8)[::2, ::2]
    np.testing.assert_array_equal(image_to_numpy(numpy_to_image(view)), view)
    t = Time(sec=3, nanosec=7)
    assert numpy_to_image(view, stamp=t).header.stamp == t


# -------------------------------------------------------------------------------------------------- audio ---

def test_s16le_known_values_and_round_trip():
    data = np.array([0, 1, -1, 32767, -32768, 16384], "<i2").tobytes()
    x = pcm_to_float(data, "S16LE", 1)
    assert x.dtype == np.float32 and x.shape == (6, 1)
    np.testing.assert_allclose(x[:, 0], [0, 1 / 32768, -1 / 32768, 32767 / 32768, -1.0, 0.5])
    assert float_to_pcm(x[:, 0], "S16LE") == data


def test_channels_are_interleaved_frames():
    left = np.linspace(-0.5, 0.5, 100, dtype=np.float32)
    right = -left
    stereo = np.stack([left, right], 1)
    data = float_to_pcm(stereo, "S16LE")
    assert len(data) == 400 and pcm_bytes_per_frame("S16LE", 2) == 4
    back = pcm_to_float(data, "s16le", 2)  # format names are case-insensitive
    assert back.shape == (100, 2)
    np.testing.assert_allclose(back, stereo, atol=1 / 32768)


@pytest.mark.parametrize("fmt", PCM_FORMATS)
def test_every_format_round_trips(fmt):
    x = np.concatenate([np.linspace(-1, 1, 201), [0.0, 0.123456, -0.654321]]).astype(np.float32)
    back = pcm_to_float(float_to_pcm(x, fmt), fmt, 1)[:, 0]
    bits = {"8": 8, "16": 16, "24": 24, "32": 32, "64": 32}[fmt[1:-2] if fmt[-2:] in ("LE", "BE") else fmt[1:]]
    tol = 1e-6 if fmt.startswith("F") else 1.0 / (1 << (bits - 1)) + 1e-7
    np.testing.assert_allclose(back, x, atol=tol)


def test_byte_level_layouts():
    # S24LE 0x400000 = 0.5, S24BE of the same, U8 offset binary, F32BE, S32LE min
    assert pcm_to_float(b"\x00\x00\x40", "S24LE", 1)[0, 0] == 0.5
    assert pcm_to_float(b"\x40\x00\x00", "S24BE", 1)[0, 0] == 0.5
    assert pcm_to_float(b"\x00\x00\x80", "S24LE", 1)[0, 0] == -1.0
    np.testing.assert_array_equal(pcm_to_float(bytes([0, 128, 255]), "U8", 1)[:, 0], [-1.0, 0.0, 127 / 128])
    assert pcm_to_float(np.array([0.25], ">f4").tobytes(), "F32BE", 1)[0, 0] == 0.25
    assert pcm_to_float(np.array([-(2 ** 31)], "<i4").tobytes(), "S32LE", 1)[0, 0] == -1.0
    assert float_to_pcm(np.array([0.5]), "S24LE") == b"\x00\x00\x40"


def test_floats_are_clipped_and_nan_zeroed():
    data = np.array([2.0, -3.0, np.nan, 0.5], "<f4").tobytes()
    np.testing.assert_array_equal(pcm_to_float(data, "F32LE", 1)[:, 0], [1.0, -1.0, 0.0, 0.5])
    assert float_to_pcm(np.array([5.0, -5.0]), "S16LE") == np.array([32767, -32768], "<i2").tobytes()


def test_nonfinite_mask_finds_nan_and_inf_in_float_pcm():
    x = np.array([[0.5, np.nan], [np.inf, 0.0], [-np.inf, -0.5]], np.float32)
    for fmt, dt in (("F32LE", "<f4"), ("F64BE", ">f8")):
        data = x.astype(dt).tobytes() + b"\x00"       # a partial frame is ignored, as in pcm_to_float
        mask = pcm_nonfinite_mask(data, fmt, 2)
        np.testing.assert_array_equal(mask, ~np.isfinite(x))
        assert mask.shape == pcm_to_float(data, fmt, 2).shape
    assert pcm_nonfinite_mask(np.zeros(6, "<f4").tobytes(), "F32LE", 2) is None
    assert pcm_nonfinite_mask(b"\xff\x7f" * 4, "S16LE", 1) is None     # integer formats cannot hold NaN/Inf


def test_partial_frames_are_dropped_and_reported():
    data = bytes(range(11))  # S16LE stereo: 2 whole frames (8 bytes) + 3 bytes
    assert pcm_to_float(data, "S16LE", 2).shape == (2, 2)
    assert pcm_frame_remainder(data, "S16LE", 2) == 3
    assert pcm_frame_remainder(data[:8], "S16LE", 2) == 0
    assert pcm_to_float(b"", "F32LE", 1).shape == (0, 1)


def test_bad_audio_arguments_raise():
    with pytest.raises(InputError, match="unsupported audio sample format 'MP3'"):
        pcm_to_float(b"\0\0", "MP3", 1)
    with pytest.raises(InputError, match="channel count"):
        pcm_to_float(b"\0\0", "S16LE", 0)
    with pytest.raises(InputError, match="channel count"):
        pcm_frame_remainder(b"\0\0", "S16LE", -1)
    with pytest.raises(InputError, match="shape"):
        float_to_pcm(np.zeros((2, 2, 2)))
    with pytest.raises(InputError, match="zero channels"):
        float_to_pcm(np.zeros((4, 0)))


# --------------------------------------------------------------------------------------------------- time ---

def test_stamps():
    assert sec_to_stamp(1.5) == Time(sec=1, nanosec=500_000_000)
    assert sec_to_stamp(-0.25) == Time(sec=-1, nanosec=750_000_000)
    assert sec_to_stamp(0.9999999999) == Time(sec=1, nanosec=0)
    t = 1_700_000_000.123456
    s = sec_to_stamp(t)
    assert s.sec == 1_700_000_000 and abs(s.nanosec - 123_456_000) < 1000
    assert abs(stamp_to_sec(s) - t) < 1e-6
    assert stamp_to_sec(Time(sec=2, nanosec=250_000_000)) == 2.25
    assert stamp_to_sec(3) == 3.0
    with pytest.raises(InputError):
        sec_to_stamp(float("nan"))
    with pytest.raises(InputError):
        sec_to_stamp(1e12)


def test_stamp_to_sec_accepts_rclpy_time():
    from rclpy.time import Time as RclpyTime
    assert stamp_to_sec(RclpyTime(seconds=5, nanoseconds=5_000_000)) == pytest.approx(5.005)


def test_integer_nanosecond_stamps():
    ns = 1_795_324_805_977_339_117
    t = ns_to_stamp(ns)
    assert (t.sec, t.nanosec) == (1_795_324_805, 977_339_117) and stamp_to_ns(t) == ns
    assert ns_to_stamp(-1) == Time(sec=-1, nanosec=999_999_999)
    with pytest.raises(InputError):
        ns_to_stamp(2 ** 31 * 1_000_000_000)
    from rclpy.time import Time as RclpyTime
    assert stamp_to_ns(RclpyTime(nanoseconds=ns)) == ns

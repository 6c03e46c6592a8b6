"""Recording-condition perturbations for ``emotion-eval --perturb``: how the shipped models hold up under
conditions they were not trained on (blur, low light, compression, sensor noise, head roll; telephone band,
background noise, low level, room reverberation, another capture rate), without another corpus.

Faces: uint8 grey image (any size) -> same shape, applied before the face node's detection and alignment.
Voices: float32 mono waveform at ``sr`` -> ``(samples, rate)``, applied before the voice node's segmentation;
all keep mono at ``sr`` except ``rate44k``, which hands back what a 44.1 kHz stereo S16LE microphone would
publish, for the node's downmix and streaming resampler.

Each input gets its own generator from ``(seed, index, name)`` (:func:`item_rng`), so a result depends only on
the seed and the input's position in the (sorted) data set, not on the order of evaluation.
"""
from __future__ import annotations

import zlib
from typing import Callable, Dict, Iterable, List, Tuple

import cv2
import numpy as np

from ..core.voice.features import frame_rms_db

# ---------------------------------------------------------------- face (uint8 grey, any size)

FACE_REF_SIDE = 48.0      # the face model's crop side: sizes below are given at this scale


def _u8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def face_blur(gray: np.ndarray, rng: np.random.Generator, sigma48: float = 1.2) -> np.ndarray:
    """Gaussian blur (defocus, motion-free), sigma ``sigma48`` px at 48 px, scaled with the image's shorter side."""
    sigma = sigma48 * min(gray.shape[:2]) / FACE_REF_SIDE
    return cv2.GaussianBlur(gray, (0, 0), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REPLICATE)


def face_dark(gray: np.ndarray, rng: np.random.Generator, gamma: float = 2.2, contrast: float = 0.5) -> np.ndarray:
    """Low light: gamma ``gamma`` darkening, then contrast scaled by ``contrast`` around the image mean."""
    x = 255.0 * (gray.astype(np.float32) / 255.0) ** gamma
    return _u8(x.mean() + contrast * (x - x.mean()))


def face_lowres(gray: np.ndarray, rng: np.random.Generator, factor: int = 3) -> np.ndarray:
    """A far or cheap camera: down to 1/``factor`` of the size (area) and back up (bilinear)."""
    h, w = gray.shape[:2]
    small = cv2.resize(gray, (max(1, round(w / factor)), max(1, round(h / factor))), interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def face_jpeg(gray: np.ndarray, rng: np.random.Generator, quality: int = 25) -> np.ndarray:
    """Strong JPEG compression (quality ``quality``), as a low-bandwidth stream."""
    ok, buf = cv2.imencode(".jpg", gray, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE)


def face_noise(gray: np.ndarray, rng: np.random.Generator, sigma: float = 12.0 / 255.0) -> np.ndarray:
    """Gaussian sensor noise of ``sigma`` (fraction of full scale) per pixel."""
    return _u8(gray.astype(np.float32) + (255.0 * sigma) * rng.standard_normal(gray.shape, dtype=np.float32))


def face_rotate(gray: np.ndarray, rng: np.random.Generator, degrees: float = 15.0) -> np.ndarray:
    """Head roll: rotation by ``degrees`` either way (random sign) about the centre, borders replicated.
    (Training rotates by up to 12 degrees; 15 is just outside that.)"""
    h, w = gray.shape[:2]
    angle = degrees if rng.random() < 0.5 else -degrees
    m = cv2.getRotationMatrix2D(((w - 1) / 2.0, (h - 1) / 2.0), angle, 1.0)
    return cv2.warpAffine(gray, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


FACE: Dict[str, Callable[[np.ndarray, np.random.Generator], np.ndarray]] = {
    "blur": face_blur, "dark": face_dark, "lowres": face_lowres, "jpeg": face_jpeg, "noise": face_noise,
    "rotate": face_rotate, "rotate30": lambda gray, rng: face_rotate(gray, rng, 30.0),
}

# ---------------------------------------------------------------- voice (float32 mono at sr)

NODE_RATE = 44100         # rate44k: a common microphone rate


def to_s16_grid(x: np.ndarray) -> np.ndarray:
    """Quantise float samples as S16LE PCM carries them (the microphone node's default format)."""
    return (np.clip(np.rint(np.clip(x, -1.0, 1.0) * 32768.0), -32768, 32767) / 32768.0).astype(np.float32)


def active_power(x: np.ndarray) -> float:
    """Mean power of the loud half of the 25 ms frames (the active speech level, as ``loudness_normalise``
    measures it): an SNR against it does not depend on how much silence a clip holds."""
    db = frame_rms_db(np.asarray(x, np.float32))
    active = db[db >= np.percentile(db, 50)]
    return float(np.mean(10 ** (active / 10)))


def snr_db(clean: np.ndarray, noisy: np.ndarray) -> float:
    """SNR of ``noisy`` against ``clean`` (signal: its active level; noise: the mean power of the difference)."""
    d = np.asarray(noisy, np.float64) - np.asarray(clean, np.float64)
    return float(10 * np.log10(active_power(clean) / (np.mean(d ** 2) + 1e-20)))


def _fit(y: np.ndarray, n: int) -> np.ndarray:
    return y[:n] if y.size >= n else np.pad(y, (0, n - y.size))


def pink_noise(n: int, rng: np.random.Generator) -> np.ndarray:
    """Unit-power 1/f noise (spectrum shaped in the frequency domain; no DC)."""
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.arange(spec.size, dtype=np.float64)
    spec[1:] /= np.sqrt(f[1:])
    spec[0] = 0.0
    y = np.fft.irfft(spec, n=n)
    return y / (np.sqrt(np.mean(y ** 2)) + 1e-20)


def voice_telephone(x: np.ndarray, sr: int, rng: np.random.Generator) -> Tuple[np.ndarray, int]:
    """Narrow-band telephone channel: to 8 kHz, band-pass 300-3400 Hz (4th-order Butterworth), back to ``sr``."""
    import soxr
    from scipy.signal import butter, sosfilt

    y = soxr.resample(x.astype(np.float32), sr, 8000, quality="HQ")
    y = sosfilt(butter(4, [300.0, 3400.0], btype="bandpass", fs=8000, output="sos"), y)
    y = soxr.resample(y.astype(np.float32), 8000, sr, quality="HQ")
    return np.clip(_fit(y, x.size), -1.0, 1.0).astype(np.float32), sr


def voice_noise(x: np.ndarray, sr: int, rng: np.random.Generator, snr: float = 10.0) -> Tuple[np.ndarray, int]:
    """Background noise, white and pink in equal parts, at ``snr`` dB below the speech's active level."""
    n = x.size
    noise = rng.standard_normal(n) + pink_noise(n, rng)
    noise *= np.sqrt(active_power(x) / 10 ** (snr / 10) / (np.mean(noise ** 2) + 1e-20))
    return np.clip(x + noise, -1.0, 1.0).astype(np.float32), sr


def voice_quiet(x: np.ndarray, sr: int, rng: np.random.Generator, gain_db: float = -25.0) -> Tuple[np.ndarray, int]:
    """A far or badly set microphone: ``gain_db`` of gain, on the S16 grid a 16-bit microphone would deliver."""
    return to_s16_grid(x * 10 ** (gain_db / 20)), sr


def reverb_ir(sr: int, rng: np.random.Generator, rt60: float = 0.4) -> np.ndarray:
    """Synthetic room impulse response: Gaussian noise decaying exponentially by 60 dB in ``rt60`` s, unit energy."""
    t = np.arange(int(round(rt60 * sr))) / sr
    ir = rng.standard_normal(t.size) * 10 ** (-3.0 * t / rt60)
    return ir / np.sqrt(np.sum(ir ** 2))


def voice_reverb(x: np.ndarray, sr: int, rng: np.random.Generator, rt60: float = 0.4) -> Tuple[np.ndarray, int]:
    """Room reverberation (RT60 ``rt60`` s, no direct path: a far microphone); cut to the input's length and
    scaled down only where it would clip."""
    from scipy.signal import fftconvolve

    y = fftconvolve(x.astype(np.float64), reverb_ir(sr, rng, rt60))[:x.size]
    peak = float(np.max(np.abs(y))) if y.size else 0.0
    if peak > 1.0:
        y /= peak
    return y.astype(np.float32), sr


def voice_rate44k(x: np.ndarray, sr: int, rng: np.random.Generator) -> Tuple[np.ndarray, int]:
    """What a 44.1 kHz stereo S16LE microphone would publish: (n, 2) float32 at 44.1 kHz, for the voice node's
    downmix and streaming resampler."""
    import soxr

    y = x if sr == NODE_RATE else soxr.resample(x.astype(np.float32), sr, NODE_RATE, quality="HQ")
    y = to_s16_grid(y)
    return np.stack([y, y], axis=1), NODE_RATE


def voice_pitch(x: np.ndarray, sr: int, rng: np.random.Generator, semitones: float = 3.0) -> Tuple[np.ndarray, int]:
    """A voice ``semitones`` higher (negative: lower), at the same tempo: another speaker's register."""
    import librosa  # lazily: heavy

    return librosa.effects.pitch_shift(x.astype(np.float32), sr=sr, n_steps=float(semitones)).astype(np.float32), sr


def voice_tempo(x: np.ndarray, sr: int, rng: np.random.Generator, rate: float = 1.25) -> Tuple[np.ndarray, int]:
    """The same voice ``rate`` times faster (below 1: slower), at the same pitch: another speaker's pace."""
    import librosa

    return librosa.effects.time_stretch(x.astype(np.float32), rate=float(rate)).astype(np.float32), sr


VOICE: Dict[str, Callable[..., Tuple[np.ndarray, int]]] = {
    "telephone": voice_telephone, "noise": voice_noise, "quiet": voice_quiet, "reverb": voice_reverb,
    "pitch_down": lambda x, sr, rng: voice_pitch(x, sr, rng, -3.0),
    "pitch_up": lambda x, sr, rng: voice_pitch(x, sr, rng, 3.0),
    "slow": lambda x, sr, rng: voice_tempo(x, sr, rng, 0.8),
    "fast": lambda x, sr, rng: voice_tempo(x, sr, rng, 1.25),
    "rate44k": voice_rate44k,
}

# ---------------------------------------------------------------- names, generators, application


def parse_names(values: Iterable[str], kind: str) -> List[str]:
    """``--perturb`` values (repeated and/or comma lists) -> names, checked against ``kind`` ('face' | 'voice').
    Applied in the given order; ``rate44k`` (which leaves mono 16 kHz) may only come last."""
    table = FACE if kind == "face" else VOICE
    names: List[str] = []
    for v in values or ():
        for name in (s.strip() for s in str(v).split(",")):
            if not name:
                continue
            if name not in table:
                raise ValueError(f"unknown {kind} perturbation {name!r} (known: {', '.join(table)})")
            if name in names:
                raise ValueError(f"{kind} perturbation {name!r} given twice")
            names.append(name)
    if "rate44k" in names[:-1]:
        raise ValueError("rate44k must be the last voice perturbation")
    return names


def item_rng(seed: int, index: int, name: str) -> np.random.Generator:
    """The generator of perturbation ``name`` on input ``index`` (independent across names and inputs)."""
    return np.random.default_rng([int(seed) % 2 ** 32, int(index), zlib.crc32(name.encode())])


def perturb_face(gray: np.ndarray, names: Iterable[str], seed: int, index: int) -> np.ndarray:
    """Apply the face perturbations ``names`` in order to uint8 grey ``gray`` (input ``index`` of the set)."""
    out = np.asarray(gray)
    if out.dtype != np.uint8 or out.ndim != 2:
        raise ValueError(f"face perturbations take uint8 grey (H, W) images, got {out.dtype} {out.shape}")
    for name in names:
        out = FACE[name](out, item_rng(seed, index, name))
    return np.ascontiguousarray(out)


def perturb_voice(wave: np.ndarray, sr: int, names: Iterable[str], seed: int,
                  index: int) -> Tuple[np.ndarray, int]:
    """Apply the voice perturbations ``names`` in order to float32 mono ``wave`` at ``sr`` -> (samples, rate)."""
    x = np.asarray(wave, np.float32).reshape(-1)
    rate = int(sr)
    for name in names:
        if x.ndim != 1:
            raise ValueError("rate44k must be the last voice perturbation")
        x, rate = VOICE[name](x, rate, item_rng(seed, index, name))
    return x, rate

"""Batch augmentations (torch, vectorised) for faces, and waveform/spectrogram ones for voices."""
from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F


def augment_faces(x: torch.Tensor, gen: torch.Generator, max_rot_deg: float = 12.0,
                  scale=(0.88, 1.12), max_shift: float = 0.1, brightness: float = 0.25,
                  contrast: float = 0.3, erase_p: float = 0.4) -> torch.Tensor:
    """``x``: (N, 1, H, W) float in [0, 1].  Flips, rotation/scale/shift (crop-like),
    brightness/contrast and random erasing."""
    n = x.shape[0]
    dev = x.device

    def rand(*shape):  # drawn on the generator's device (a CUDA generator keeps augmentation on the GPU)
        return torch.rand(*shape, generator=gen, device=gen.device).to(dev)

    flip = (rand(n) < 0.5).float() * 2 - 1            # -1 flips horizontally
    ang = (rand(n) * 2 - 1) * math.radians(max_rot_deg)
    s = scale[0] + rand(n) * (scale[1] - scale[0])
    tx = (rand(n) * 2 - 1) * max_shift
    ty = (rand(n) * 2 - 1) * max_shift
    cos, sin = torch.cos(ang) / s, torch.sin(ang) / s
    theta = torch.stack([torch.stack([cos * flip, -sin, tx], 1),
                         torch.stack([sin * flip, cos, ty], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    # brightness / contrast
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    c = 1 + (rand(n, 1, 1, 1) * 2 - 1) * contrast
    b = (rand(n, 1, 1, 1) * 2 - 1) * brightness
    x = ((x - mean) * c + mean + b).clamp_(0, 1)
    # random erasing
    h, w = x.shape[2], x.shape[3]
    er = rand(n) < erase_p
    if er.any():
        eh = (rand(n) * 0.3 + 0.1) * h
        ew = (rand(n) * 0.3 + 0.1) * w
        cy = rand(n) * h
        cx = rand(n) * w
        yy = torch.arange(h, device=dev).view(1, h, 1).float()
        xx = torch.arange(w, device=dev).view(1, 1, w).float()
        m = ((yy - cy.view(n, 1, 1)).abs() < eh.view(n, 1, 1) / 2) & \
            ((xx - cx.view(n, 1, 1)).abs() < ew.view(n, 1, 1) / 2) & er.view(n, 1, 1)
        x = torch.where(m.unsqueeze(1), rand(n, 1, 1, 1).expand_as(x), x)
    return x


# ---------------------------------------------------------------- voice

def add_noise(wav: np.ndarray, rng: np.random.Generator, snr_db=(10.0, 35.0)) -> np.ndarray:
    """White or pink-ish noise at a random SNR."""
    p = float(np.mean(wav ** 2)) + 1e-10
    snr = rng.uniform(*snr_db)
    noise = rng.standard_normal(wav.shape[0]).astype(np.float32)
    if rng.random() < 0.5:  # pink-ish: integrate white noise a little
        noise = np.cumsum(noise) * 0.02
        noise -= np.convolve(noise, np.ones(256) / 256, mode="same")
    noise *= np.sqrt(p / (10 ** (snr / 10)) / (np.mean(noise ** 2) + 1e-10))
    return (wav + noise).astype(np.float32)


def change_tempo_pitch(wav: np.ndarray, sr: int, rng: np.random.Generator,
                       max_semitones: float = 2.5, tempo=(0.88, 1.12)) -> np.ndarray:
    import librosa  # lazily: heavy
    out = wav
    if rng.random() < 0.7:
        out = librosa.effects.pitch_shift(out, sr=sr, n_steps=float(rng.uniform(-max_semitones, max_semitones)),
                                          res_type="soxr_hq")
    if rng.random() < 0.7:
        out = librosa.effects.time_stretch(out, rate=float(rng.uniform(*tempo)))
    return out.astype(np.float32)


def spec_augment(feats: torch.Tensor, gen: torch.Generator, n_freq: int = 2, max_f: int = 8,
                 n_time: int = 2, max_t: int = 20) -> torch.Tensor:
    """``feats``: (N, T, F). Frequency and time masking (masked to 0 = the global mean)."""
    n, t, f = feats.shape
    out = feats.clone()
    for _ in range(n_freq):
        w = torch.randint(0, max_f + 1, (n,), generator=gen)
        s = (torch.rand(n, generator=gen) * (f - w).clamp(min=1)).long()
        idx = torch.arange(f).view(1, f)
        m = (idx >= s.view(n, 1)) & (idx < (s + w).view(n, 1))
        out.masked_fill_(m.view(n, 1, f).to(out.device), 0.0)
    for _ in range(n_time):
        w = torch.randint(0, max_t + 1, (n,), generator=gen)
        s = (torch.rand(n, generator=gen) * (t - w).clamp(min=1)).long()
        idx = torch.arange(t).view(1, t)
        m = (idx >= s.view(n, 1)) & (idx < (s + w).view(n, 1))
        out.masked_fill_(m.view(n, t, 1).to(out.device), 0.0)
    return out


# ---------------------------------------------------------------- voice: rooms and microphones

def synthetic_rir(sr: int, rng: np.random.Generator, rt60=(0.15, 0.9)) -> np.ndarray:
    """A generated room impulse response: direct path, a few early reflections and an exponentially
    decaying, low-passed noise tail with a random RT60 (no recorded responses needed)."""
    t60 = float(rng.uniform(*rt60))
    n = int(sr * min(1.2, t60 * 1.2))
    t = np.arange(n) / sr
    tail = rng.standard_normal(n).astype(np.float32) * np.exp(-6.9 * t / t60).astype(np.float32)
    # air/wall absorption: high frequencies decay faster (one-pole low-pass of the tail)
    a = float(rng.uniform(0.2, 0.7))
    from scipy.signal import lfilter
    tail = lfilter([1 - a], [1, -a], tail).astype(np.float32)
    h = np.zeros(n, np.float32)
    h[0] = 1.0
    for _ in range(int(rng.integers(2, 7))):                     # early reflections, 2-40 ms
        k = int(rng.uniform(0.002, 0.04) * sr)
        if k < n:
            h[k] += float(rng.uniform(-0.6, 0.6))
    start = int(0.005 * sr)
    drr_db = float(rng.uniform(-3, 12))                          # direct-to-reverberant ratio
    tail[:start] = 0
    tail *= np.sqrt(1.0 / (10 ** (drr_db / 10)) / (np.sum(tail ** 2) + 1e-9))
    return h + tail


def reverberate(wav: np.ndarray, sr: int, rng: np.random.Generator) -> np.ndarray:
    from scipy.signal import fftconvolve
    y = fftconvolve(wav, synthetic_rir(sr, rng))[: wav.size]
    return (y * np.sqrt((np.mean(wav ** 2) + 1e-10) / (np.mean(y ** 2) + 1e-10))).astype(np.float32)


def coloured_noise(n: int, rng: np.random.Generator, sample_rng: Optional[np.random.Generator] = None) -> np.ndarray:
    """White, pink, brown or speech-shaped (low-passed, amplitude-modulated) noise; the samples are drawn from
    ``sample_rng`` when given (the kind and modulation from ``rng``)."""
    kind = int(rng.integers(0, 4))
    white = (sample_rng or rng).standard_normal(n).astype(np.float32)
    if kind == 0:
        return white
    spec = np.fft.rfft(white)
    f = np.fft.rfftfreq(n, 1 / 16000.0)
    f[0] = f[1] if n > 1 else 1.0
    if kind == 1:
        spec /= np.sqrt(f)
    elif kind == 2:
        spec /= f
    else:                                                         # babble-like: speech band, 4 Hz modulation
        spec *= np.exp(-((np.log(f / 500.0)) ** 2) / 1.5)
    x = np.fft.irfft(spec, n).astype(np.float32)
    if kind == 3:
        t = np.arange(n) / 16000.0
        x *= (1 + 0.6 * np.sin(2 * np.pi * rng.uniform(2, 6) * t + rng.uniform(0, 6.3))).astype(np.float32)
    return x


def add_noise_snr(wav: np.ndarray, rng: np.random.Generator, snr_db=(0.0, 20.0),
                  sample_rng: Optional[np.random.Generator] = None) -> np.ndarray:
    p = float(np.mean(wav ** 2)) + 1e-10
    noise = coloured_noise(wav.size, rng, sample_rng)
    noise *= np.sqrt(p / (10 ** (rng.uniform(*snr_db) / 10)) / (np.mean(noise ** 2) + 1e-10))
    return (wav + noise).astype(np.float32)


def microphone_channel(wav: np.ndarray, sr: int, rng: np.random.Generator) -> np.ndarray:
    """Band-limiting and EQ of a random device: telephone (300-3400 Hz, 8 kHz), laptop (high-pass, a
    resonance, small-speaker-like tilt), far-field (low-pass 3.5-6 kHz) or a random spectral tilt."""
    from scipy.signal import butter, sosfilt
    kind = int(rng.integers(0, 4))
    if kind == 0:
        import soxr
        lo, hi = rng.uniform(250, 400), rng.uniform(3000, 3600)
        y = sosfilt(butter(4, [lo, hi], btype="band", fs=sr, output="sos"), wav)
        y = soxr.resample(soxr.resample(y.astype(np.float32), sr, 8000), 8000, sr)[: wav.size]
        return np.pad(y, (0, wav.size - y.size)).astype(np.float32)
    if kind == 1:
        y = sosfilt(butter(2, rng.uniform(150, 400), btype="high", fs=sr, output="sos"), wav)
        fc = rng.uniform(1500, 4500)
        peak = sosfilt(butter(2, [fc * 0.8, fc * 1.25], btype="band", fs=sr, output="sos"), y)
        return (y + peak * rng.uniform(0.5, 2.0)).astype(np.float32)
    if kind == 2:
        return sosfilt(butter(4, rng.uniform(3500, 6000), btype="low", fs=sr, output="sos"), wav).astype(np.float32)
    spec = np.fft.rfft(wav)
    f = np.fft.rfftfreq(wav.size, 1 / sr)
    tilt_db = rng.uniform(-6, 6) * np.log2(np.maximum(f, 100) / 1000.0)     # dB per octave around 1 kHz
    return np.fft.irfft(spec * 10 ** (tilt_db / 20), wav.size).astype(np.float32)


def augment_voice(wav: np.ndarray, sr: int, rng: np.random.Generator, p_speed: float = 0.7,
                  p_pitch: float = 0.3, p_reverb: float = 0.5, p_channel: float = 0.5,
                  p_noise: float = 0.6, gain_db: float = 20.0,
                  sample_rng: Optional[np.random.Generator] = None, pitch_semitones: float = 2.0,
                  speed=(0.9, 1.1), p_tempo: float = 0.0, tempo=(0.8, 1.25)) -> np.ndarray:
    """One random recording of ``wav``: speed/pitch, room, device, noise (0-20 dB SNR) and gain (+-20 dB,
    clipped at full scale as a real converter would), in that order.

    ``sample_rng``: draw the noise samples from it, and every setting (speed, pitch, room impulse response,
    device, SNR, gain) from ``rng``; a fresh ``rng`` with the same seed for each utterance of a speaker then
    records all of them in one session (one room, one microphone), each with its own noise.  ``speed``: the range
    of the speed factor (resampling: tempo and pitch together); ``pitch_semitones``: the range of the pitch shift
    (tempo kept), either way; ``p_tempo``, ``tempo``: how often, and by how much, the utterance is spoken faster or
    slower at the same pitch (another person's pace; off by default, and then no random number is drawn for it, so
    that earlier recipes are reproduced exactly)."""
    import soxr
    out = wav
    if rng.random() < p_speed:
        out = soxr.resample(out, sr, int(sr / rng.uniform(*speed))).astype(np.float32)
    if p_tempo > 0 and rng.random() < p_tempo:
        import librosa
        out = librosa.effects.time_stretch(out.astype(np.float32), rate=float(rng.uniform(*tempo))).astype(np.float32)
    if rng.random() < p_pitch:
        import librosa
        out = librosa.effects.pitch_shift(out, sr=sr, n_steps=float(rng.uniform(-pitch_semitones, pitch_semitones))
                                          ).astype(np.float32)
    if rng.random() < p_reverb:
        out = reverberate(out, sr, rng)
    if rng.random() < p_channel:
        out = microphone_channel(out, sr, rng)
    if rng.random() < p_noise:
        out = add_noise_snr(out, rng, sample_rng=sample_rng)
    peak = float(np.max(np.abs(out))) + 1e-9
    out = out / peak * 0.5 * 10 ** (rng.uniform(-gain_db, gain_db) / 20)
    return np.clip(out, -1, 1).astype(np.float32)

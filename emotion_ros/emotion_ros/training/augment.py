"""Batch augmentations (torch, vectorised) for faces, and waveform/spectrogram ones for voices."""
from __future__ import annotations

import math

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

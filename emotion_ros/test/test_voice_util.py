"""Shared helpers of the voice tests (no tests here): synthetic signals and a tiny voice checkpoint."""
from __future__ import annotations

import shutil
import subprocess
from typing import List, Optional, Tuple

import numpy as np

SR = 16000


def silence(d: float, level: float = 0.0, rng: Optional[np.random.Generator] = None, sr: int = SR) -> np.ndarray:
    """``d`` seconds of digital silence (level 0) or white noise of RMS ``level``."""
    n = int(round(d * sr))
    if level <= 0:
        return np.zeros(n, np.float32)
    rng = rng or np.random.default_rng(1)
    return (level * rng.standard_normal(n)).astype(np.float32)


def tone(d: float, amp: float = 0.3, f: float = 220.0, sr: int = SR) -> np.ndarray:
    t = np.arange(int(round(d * sr))) / sr
    return (amp * np.sin(2 * np.pi * f * t)).astype(np.float32)


def noise_burst(d: float, amp: float = 0.2, rng: Optional[np.random.Generator] = None, sr: int = SR) -> np.ndarray:
    rng = rng or np.random.default_rng(2)
    return (amp * rng.standard_normal(int(round(d * sr)))).astype(np.float32)


def speechlike(d: float, amp: float = 0.3, rate_hz: float = 4.0, rng: Optional[np.random.Generator] = None,
               sr: int = SR) -> np.ndarray:
    """Noise with a syllable-rate envelope that drops to zero between syllables (like running speech)."""
    rng = rng or np.random.default_rng(3)
    t = np.arange(int(round(d * sr))) / sr
    env = np.sqrt(np.clip(np.sin(2 * np.pi * rate_hz * t), 0, None))
    carrier = np.sin(2 * np.pi * 150 * t) + 0.5 * rng.standard_normal(t.size)
    return (amp * env * carrier / 1.2).astype(np.float32)


def concat(parts: List[Tuple[str, np.ndarray]]) -> Tuple[np.ndarray, List[Tuple[float, float]]]:
    """Concatenate ('s'ilence | 'v'oice, samples) parts; returns the wave and the (start, end) of each voice part."""
    out, spans, n = [], [], 0
    for kind, x in parts:
        if kind == "v":
            spans.append((n / SR, (n + x.size) / SR))
        out.append(x)
        n += x.size
    return np.concatenate(out).astype(np.float32), spans


def make_voice_checkpoint(path: str, embed_dim: int = 16, **features) -> str:
    """A small randomly initialised voice model file in the real checkpoint format (``features``: FeatureSpec
    fields, e.g. ``utterance_cmn=True, speaker_window=3``)."""
    import torch
    from emotion_ros.core.modelio import save_checkpoint
    from emotion_ros.core.voice.features import FeatureSpec
    from emotion_ros.core.voice.model import ARCH, SpeechCNNBiLSTM

    torch.manual_seed(0)
    cfg = {"conv_channels": [8, 8, 8], "lstm_hidden": 8, "embed_dim": embed_dim}
    net = SpeechCNNBiLSTM(n_mels=64, conv_channels=tuple(cfg["conv_channels"]), lstm_hidden=cfg["lstm_hidden"],
                          embed_dim=cfg["embed_dim"])
    save_checkpoint(path, kind="voice", arch=ARCH, model=net,
                    input_spec={"features": FeatureSpec(**features).to_dict(), "mean": [0.0] * 64, "std": [1.0] * 64,
                                "min_seconds": 0.3},
                    config={"model": cfg})
    return path


def espeak(text: str, path: str, voice: str = "en", speed: int = 150) -> Optional[np.ndarray]:
    """Synthesise ``text`` with espeak-ng into ``path``; returns 16 kHz mono float32, or None without espeak-ng."""
    exe = shutil.which("espeak-ng") or shutil.which("espeak")
    if not exe:
        return None
    subprocess.run([exe, "-v", voice, "-s", str(speed), "-w", path, text], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30)
    from emotion_ros.core.voice.features import load_audio
    return load_audio(path)

"""Test audio: speech (espeak-ng sentences, else a synthetic voiced signal) with pauses, utterance ends known."""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np

AUDIO_RATE = 16000

SENTENCES = (
    "I can't believe we finally won the game today!",
    "Please leave me alone, I am really tired.",
    "What on earth are you doing in my kitchen?",
    "That is the most wonderful news I have heard all year.",
    "Oh no, I think I lost my keys again.",
    "The meeting starts at nine, do not be late.",
)


@dataclass
class SpeechStream:
    wave: np.ndarray                 # float32 mono at ``rate``
    rate: int
    utterances: List[Tuple[float, float]]  # (start_s, end_s) of speech, seconds from the stream's start
    source: str                      # "espeak-ng" | "synthetic"

    @property
    def duration(self) -> float:
        return self.wave.size / float(self.rate)


def _espeak(text: str, rate: int, voice: str = "en-us", speed: int = 160) -> Optional[np.ndarray]:
    exe = shutil.which("espeak-ng")
    if not exe:
        return None
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "u.wav")
        try:
            subprocess.run([exe, "-v", voice, "-s", str(speed), "-w", path, text], check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30)
            import soundfile as sf
            x, sr = sf.read(path, dtype="float32", always_2d=True)
        except (OSError, subprocess.SubprocessError, RuntimeError):
            return None
    x = x.mean(axis=1)
    if sr != rate:
        import soxr
        x = soxr.resample(x, sr, rate).astype(np.float32)
    return x


def _synthetic_utterance(rng: np.random.Generator, rate: int, seconds: float) -> np.ndarray:
    """A voiced-speech-like signal: harmonics of a wandering pitch, syllable-rate amplitude modulation."""
    n = int(seconds * rate)
    t = np.arange(n) / rate
    f0 = 140 + 30 * np.sin(2 * np.pi * 0.7 * t + rng.uniform(0, 6)) + rng.uniform(-20, 20)
    phase = 2 * np.pi * np.cumsum(f0) / rate
    x = sum(np.sin(k * phase) / k for k in range(1, 12))
    env = np.clip(np.sin(2 * np.pi * 4.0 * t + rng.uniform(0, 6)), 0, None) ** 0.5
    env *= np.minimum(1.0, np.minimum(t, t[-1] - t) / 0.05)
    return (0.25 * x * env / np.max(np.abs(x))).astype(np.float32)


def speech_stream(rate: int = AUDIO_RATE, pause_s: float = 1.2, seed: int = 0,
                  synthetic: bool = False) -> SpeechStream:
    """Utterances separated by ``pause_s`` of quiet noise (-60 dBFS); ends are the last sample above -40 dBFS."""
    rng = np.random.default_rng(seed)
    parts, utts, pos = [], [], 0
    source = "synthetic"
    lead = np.zeros(int(0.5 * rate), np.float32)
    parts.append(lead)
    pos += lead.size
    for i, text in enumerate(SENTENCES):
        x = None if synthetic else _espeak(text, rate)
        if x is not None:
            source = "espeak-ng"
            x = 0.5 * x / max(1e-6, float(np.max(np.abs(x))))
        else:
            x = _synthetic_utterance(rng, rate, 1.5 + 0.4 * (i % 3))
        loud = np.nonzero(np.abs(x) > 0.01)[0]
        if loud.size == 0:
            continue
        utts.append(((pos + loud[0]) / rate, (pos + loud[-1] + 1) / rate))
        pause = np.zeros(int(pause_s * rate), np.float32)
        parts += [x.astype(np.float32), pause]
        pos += x.size + pause.size
    wave = np.concatenate(parts)
    wave = wave + (rng.standard_normal(wave.size) * 10 ** (-60 / 20)).astype(np.float32)
    return SpeechStream(np.clip(wave, -1, 1).astype(np.float32), rate, utts, source)

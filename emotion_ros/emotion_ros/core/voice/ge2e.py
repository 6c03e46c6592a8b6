"""A pretrained speaker encoder as a frozen branch of the voice model.

GE2E (Wan et al., "Generalized end-to-end loss for speaker verification", ICASSP 2018): three LSTM layers of 256
units over 40-band mel frames, trained to tell thousands of speakers apart (LibriSpeech, VoxCeleb 1 and 2), as
shipped in the Resemblyzer 0.1.4 wheel (``resemblyzer/pretrained.pt``, Apache-2.0). Its layers carry how a person
speaks (pitch, voice quality, pace), learnt from far more voices than any emotion corpus here has.

The voice model uses it frozen: each layer's outputs are pooled over the utterance (mean and standard deviation)
and, with the L2-normalised embedding, give a 1,792-d vector per utterance; a linear classifier over that vector
(``GE2EHead``, trained by ``emotion-train voice-ge2e``) is one member of the voice ensemble
(:class:`~emotion_ros.core.voice.model.VoiceModel`), averaged with the CNN + BiLSTM members at the logits. The
weights travel in the voice checkpoint: nothing is read from Resemblyzer at run time.
"""
from __future__ import annotations

from typing import Dict, Optional

import numpy as np
import torch
from torch import nn

from ..labels import NUM_LABELS
from .features import mel_filterbank

ARCH = "ge2e_head"
SAMPLE_RATE = 16000
N_FFT = 400           # 25 ms
HOP = 160             # 10 ms
N_MELS = 40
TARGET_DBFS = -30.0   # Resemblyzer's level; here applied both ways (louder and quieter)
HIDDEN = 256
LAYERS = 3
FEATURE_DIM = LAYERS * 2 * HIDDEN + HIDDEN    # mean + std of every layer, and the embedding: 1,792
_WINDOW = np.hanning(N_FFT + 1)[:-1]          # periodic Hann, as librosa's stft
_FB = None


MAX_BAND_GAIN_DB = 12.0


def ge2e_mel(wave: np.ndarray, band_ref: Optional[np.ndarray] = None) -> np.ndarray:
    """(T, 40) mel power spectrogram as Resemblyzer computes it (librosa's melspectrogram: centred frames of 25 ms
    every 10 ms, Hann window, power 2, Slaney mel 0-8 kHz), after scaling the utterance to -30 dBFS.

    ``band_ref`` (40,): **channel normalisation**, the reference mean log power of each band (natural log); each
    band is scaled so that the utterance's mean log power in it equals the reference, by at most
    ``MAX_BAND_GAIN_DB`` either way, so that a constant colouring of the spectrum (a telephone band, a microphone's
    tilt, a room's) reaches the encoder mostly undone."""
    global _FB
    if _FB is None:
        _FB = mel_filterbank(SAMPLE_RATE, N_FFT, N_MELS, 0.0, SAMPLE_RATE / 2)
    w = np.asarray(wave, np.float64).reshape(-1)
    rms = float(np.sqrt(np.mean(w ** 2))) if w.size else 0.0
    if rms > 1e-8:
        w = w * (10.0 ** (TARGET_DBFS / 20.0) / rms)
    w = np.pad(w, N_FFT // 2)
    if w.size < N_FFT:
        w = np.pad(w, (0, N_FFT - w.size))
    n = 1 + (w.size - N_FFT) // HOP
    frames = np.lib.stride_tricks.sliding_window_view(w, N_FFT)[::HOP][:n] * _WINDOW
    power = np.abs(np.fft.rfft(frames, N_FFT)) ** 2
    mel = power @ _FB.T
    if band_ref is not None:
        lim = MAX_BAND_GAIN_DB / 10.0 * np.log(10.0)
        gain = np.clip(np.asarray(band_ref, np.float64) - np.log(mel + 1e-10).mean(0), -lim, lim)
        mel = mel * np.exp(gain)
    return mel.astype(np.float32)


def band_log_mean(wave: np.ndarray) -> np.ndarray:
    """(40,) mean log power per band of one utterance, as :func:`ge2e_mel` measures it (for the reference)."""
    return np.log(ge2e_mel(wave).astype(np.float64) + 1e-10).mean(0)


class GE2EEncoder(nn.Module):
    """GE2E's three LSTM layers, kept as three modules so that each layer's outputs can be pooled."""

    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList([nn.LSTM(N_MELS if k == 0 else HIDDEN, HIDDEN, 1, batch_first=True)
                                     for k in range(LAYERS)])
        self.linear = nn.Linear(HIDDEN, HIDDEN)
        # channel normalisation of the input (see ge2e_mel): on when channel_norm is 1
        self.register_buffer("band_ref", torch.zeros(N_MELS))
        self.register_buffer("channel_norm", torch.zeros(()))
        for p in self.parameters():
            p.requires_grad_(False)
        self.eval()

    def set_band_ref(self, band_ref: Optional[np.ndarray]) -> None:
        """Switch channel normalisation on with this reference (40,), or off with None."""
        if band_ref is None:
            self.channel_norm.zero_()
        else:
            self.band_ref.copy_(torch.as_tensor(np.asarray(band_ref, np.float32)))
            self.channel_norm.fill_(1.0)

    @classmethod
    def from_resemblyzer(cls, state: Dict[str, torch.Tensor]) -> "GE2EEncoder":
        """From Resemblyzer's ``pretrained.pt`` ``model_state`` (one 3-layer ``nn.LSTM`` named ``lstm``)."""
        enc = cls()
        for k, layer in enumerate(enc.layers):
            layer.load_state_dict({f"{n}_l0": state[f"lstm.{n}_l{k}"]
                                   for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")})
        enc.linear.load_state_dict({"weight": state["linear.weight"], "bias": state["linear.bias"]})
        return enc

    @torch.inference_mode()
    def pooled(self, wave: np.ndarray) -> np.ndarray:
        """One utterance (16 kHz mono float) -> (1,792,) float32: per layer the mean and standard deviation of its
        outputs over time, then the speaker embedding (ReLU of the last state's projection, L2-normalised)."""
        ref = self.band_ref.cpu().numpy() if float(self.channel_norm) > 0 else None
        x = torch.from_numpy(ge2e_mel(wave, ref)).unsqueeze(0).to(self.linear.weight.device)
        parts = []
        h = None
        for layer in self.layers:
            x, (h, _) = layer(x)
            parts += [x[0].mean(0), x[0].std(0, unbiased=x.shape[1] > 1)]
        e = torch.relu(self.linear(h[-1, 0]))
        parts.append(e / e.norm().clamp(min=1e-8))
        return torch.cat(parts).float().cpu().numpy()


class GE2EHead(nn.Module):
    """Standardised pooled vector of a frozen encoder -> 7 logits (a linear classifier); ``dim``: the vector's size
    (GE2E's 1,792 by default; the Whisper member's 2,048)."""

    def __init__(self, num_classes: int = NUM_LABELS, dim: int = FEATURE_DIM):
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))
        self.linear = nn.Linear(dim, num_classes)

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        return self.linear((v - self.mean) / self.std)


class GE2EMember(nn.Module):
    """A voice-ensemble member: the frozen encoder and the linear head over its pooled states. Called with one
    utterance (16 kHz mono float) -> (logits (7,), speaker embedding (256,))."""

    embed_dim = HIDDEN

    def __init__(self):
        super().__init__()
        self.encoder = GE2EEncoder()
        self.head = GE2EHead()

    @torch.inference_mode()
    def forward(self, wave: np.ndarray):
        v = torch.from_numpy(self.encoder.pooled(wave)).to(self.encoder.linear.weight.device)
        return self.head(v.unsqueeze(0))[0], v[-HIDDEN:]

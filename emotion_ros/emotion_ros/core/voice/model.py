"""Speech-emotion model: 1-D CNN + two BiLSTM layers (after Cai et al., "SER_2").

The convolution stack learns local acoustic patterns from log-mel frames; two
bidirectional LSTM layers model context.  Pooled CNN features and attention-pooled
LSTM features are concatenated into the embedding that feeds the classifier and
the fusion model.
"""
from __future__ import annotations

from typing import Dict, NamedTuple, Optional, Tuple

import numpy as np
import torch
from torch import nn

from ..labels import NUM_LABELS
from ..modelio import ModelFileError, load_checkpoint, resolve_device
from .features import FeatureSpec, SpeakerNormaliser, utterance_features

ARCH = "ser_cnn_bilstm"


def _masked_mean_max(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """h (N, T, C), mask (N, T) bool -> (N, 2C)."""
    m = mask.unsqueeze(-1).float()
    mean = (h * m).sum(1) / m.sum(1).clamp(min=1)
    mx = h.masked_fill(~mask.unsqueeze(-1), -1e4).max(1).values
    return torch.cat([mean, mx], 1)


class SpeechCNNBiLSTM(nn.Module):
    def __init__(self, n_mels: int = 64, conv_channels=(64, 128, 128), lstm_hidden: int = 96,
                 embed_dim: int = 128, dropout: float = 0.3, num_classes: int = NUM_LABELS):
        super().__init__()
        c1, c2, c3 = conv_channels
        self.conv = nn.Sequential(
            nn.Conv1d(n_mels, c1, 5, padding=2, bias=False), nn.BatchNorm1d(c1), nn.ReLU(inplace=True),
            nn.MaxPool1d(2),
            nn.Conv1d(c1, c2, 5, padding=2, bias=False), nn.BatchNorm1d(c2), nn.ReLU(inplace=True),
            nn.MaxPool1d(2),
            nn.Conv1d(c2, c3, 3, padding=1, bias=False), nn.BatchNorm1d(c3), nn.ReLU(inplace=True),
            nn.Dropout(dropout / 2),
        )
        self.lstm = nn.LSTM(c3, lstm_hidden, num_layers=2, batch_first=True, bidirectional=True,
                            dropout=dropout)
        self.att = nn.Linear(2 * lstm_hidden, 1)
        self.embed = nn.Sequential(nn.Linear(2 * c3 + 2 * lstm_hidden, embed_dim), nn.ReLU(inplace=True))
        self.drop = nn.Dropout(dropout)
        self.classifier = nn.Linear(embed_dim, num_classes)
        self.embed_dim = embed_dim
        self.reduction = 4

    def forward(self, x: torch.Tensor, lengths: Optional[torch.Tensor] = None,
                return_embedding: bool = False):
        """x: (N, T, n_mels) normalised log-mel; lengths: (N,) valid frames."""
        n, t, _ = x.shape
        h = self.conv(x.transpose(1, 2)).transpose(1, 2)          # (N, T', C)
        tp = h.shape[1]
        if lengths is None:
            lengths = torch.full((n,), t, dtype=torch.long)
        lp = (lengths.to(h.device) // self.reduction).clamp(min=1, max=tp)
        mask = torch.arange(tp, device=h.device).unsqueeze(0) < lp.unsqueeze(1)
        cnn_feat = _masked_mean_max(h, mask)
        packed = nn.utils.rnn.pack_padded_sequence(h, lp.cpu(), batch_first=True, enforce_sorted=False)
        out, _ = self.lstm(packed)
        out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=tp)
        a = self.att(out).squeeze(-1).masked_fill(~mask, -1e4)
        w = torch.softmax(a, 1).unsqueeze(-1)
        lstm_feat = (out * w).sum(1)
        z = self.embed(torch.cat([cnn_feat, lstm_feat], 1))
        logits = self.classifier(self.drop(z))
        if return_embedding:
            return logits, z
        return logits


class _Member(NamedTuple):
    """One network of a (possibly one-member) voice ensemble, with its own normalisation and temperature."""
    net: SpeechCNNBiLSTM
    mean: np.ndarray
    std: np.ndarray
    temperature: float


class VoiceModel:
    """A loaded voice model: 16 kHz mono float32 utterance in, probabilities and embedding out.

    A checkpoint may hold an **ensemble** (``ckpt["ensemble"]``, built by ``emotion-train voice-ensemble``): the main
    network plus further members trained the same way with other settings or seeds. Each member's logits are divided
    by its own temperature, averaged, and divided by the ensemble's temperature (fitted on held-out speakers) before
    the softmax; the embedding is the main network's (so that its size and meaning stay those of one network).
    """

    def __init__(self, path: str, device: str = "auto"):
        ckpt = load_checkpoint(path, "voice")
        if ckpt.get("arch") != ARCH:
            raise ModelFileError(f"voice model file {path!r}: unknown architecture {ckpt.get('arch')!r}")
        spec = ckpt.get("input", {})
        try:
            self.spec = FeatureSpec.from_dict(spec.get("features", {}))
        except (KeyError, TypeError) as exc:
            raise ModelFileError(f"voice model file {path!r}: input spec incomplete ({exc})") from exc
        self.path = path
        self.device = resolve_device(device)
        self.min_samples = int(spec.get("min_seconds", 0.3) * self.spec.sample_rate)
        self.metrics = ckpt.get("metrics", {})
        # Temperature fitted on held-out speakers (emotion-train voice); 1.0 for older checkpoints.
        cal = ckpt.get("calibration") or {}
        main_t = self._temperature(cal.get("temperature", 1.0), path)
        main = self._member(ckpt["state_dict"], spec, ckpt.get("config", {}).get("model", {}), main_t, path, "main")
        self._members = [main]
        self.net, self.mean, self.std = main.net, main.mean, main.std
        self.embed_dim = self.net.embed_dim
        self.calibration = cal
        self.temperature = main_t
        ens = ckpt.get("ensemble")
        if ens:
            try:
                members = list(ens["members"])
                self.temperature = self._temperature(ens.get("temperature", 1.0), path)
            except (KeyError, TypeError) as exc:
                raise ModelFileError(f"voice model file {path!r}: ensemble entry incomplete ({exc})") from exc
            for i, m in enumerate(members, 1):
                try:
                    inp = m["input"]
                    if FeatureSpec.from_dict(inp.get("features", {})) != self.spec:
                        raise ModelFileError(f"voice model file {path!r}: ensemble member {i} computes other "
                                             "features than the main network")
                    self._members.append(self._member(m["state_dict"], inp, m.get("model", {}),
                                                      self._temperature(m.get("temperature", 1.0), path), path,
                                                      f"ensemble member {i}"))
                except (KeyError, TypeError, AttributeError) as exc:
                    raise ModelFileError(f"voice model file {path!r}: ensemble member {i} incomplete ({exc})") \
                        from exc
            self.calibration = {**cal, "ensemble": {k: v for k, v in ens.items() if k != "members"}}

    @staticmethod
    def _temperature(value, path: str) -> float:
        try:
            t = float(value)
        except (TypeError, ValueError) as exc:
            raise ModelFileError(f"voice model file {path!r}: bad calibration temperature ({exc})") from exc
        if not (0.05 <= t <= 20.0):
            raise ModelFileError(f"voice model file {path!r}: calibration temperature {t} outside [0.05, 20]")
        return t

    def _member(self, state_dict, spec: dict, cfg: dict, temperature: float, path: str, what: str) -> _Member:
        try:
            mean = np.asarray(spec["mean"], np.float32)
            std = np.asarray(spec["std"], np.float32)
        except (KeyError, TypeError) as exc:
            raise ModelFileError(f"voice model file {path!r}: input spec of the {what} incomplete ({exc})") from exc
        if mean.shape != (self.spec.n_mels,) or std.shape != (self.spec.n_mels,):
            raise ModelFileError(f"voice model file {path!r}: normalisation of the {what} does not match "
                                 f"{self.spec.n_mels} mels")
        net = SpeechCNNBiLSTM(n_mels=self.spec.n_mels, conv_channels=tuple(cfg.get("conv_channels", (64, 128, 128))),
                              lstm_hidden=int(cfg.get("lstm_hidden", 96)), embed_dim=int(cfg.get("embed_dim", 128)))
        try:
            net.load_state_dict(state_dict)
        except RuntimeError as exc:
            raise ModelFileError(f"voice model file {path!r}: the {what} does not fit {ARCH}: {exc}") from exc
        net.to(self.device).eval()
        return _Member(net, mean, std, temperature)

    @property
    def n_members(self) -> int:
        return len(self._members)

    def features(self, wave: np.ndarray, speaker: Optional[SpeakerNormaliser] = None, t: Optional[float] = None,
                 commit: bool = True) -> np.ndarray:
        """Log-mel features of one utterance, normalised for the main network.

        ``speaker``: the running per-speaker reference of the stream (models with ``spec.speaker_window > 0``);
        the utterance (ending at ``t``) is added to it unless ``commit`` is False.  Without one such a model sees
        the utterance normalised by itself, as at the node's start-up."""
        ref = None
        if speaker is not None and self.spec.speaker_window:
            def ref(band_mean):
                return speaker.offset(band_mean, t, commit)
        f = utterance_features(wave, self.spec, reference=ref)
        return (f - self.mean) / self.std

    def speaker_normaliser(self, reset_after_s: float = 60.0) -> Optional[SpeakerNormaliser]:
        """A fresh running speaker reference for one audio stream, or None for a per-utterance model."""
        return SpeakerNormaliser(self.spec.speaker_window, reset_after_s) if self.spec.speaker_window else None

    @torch.inference_mode()
    def predict_features(self, feats: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """Features normalised for the main network (``features``) -> (calibrated probs, main embedding)."""
        feats = np.ascontiguousarray(feats, dtype=np.float32)
        logits, emb = self.net(torch.from_numpy(feats).unsqueeze(0).to(self.device), return_embedding=True)
        if len(self._members) == 1:
            z = logits.float() / self.temperature
        else:
            z = logits.float() / self._members[0].temperature
            raw = feats * self.std + self.mean
            for net, mean, std, t in self._members[1:]:
                x = torch.from_numpy(np.ascontiguousarray((raw - mean) / std, dtype=np.float32)).unsqueeze(0)
                z = z + net(x.to(self.device)).float() / t
            z = z / len(self._members) / self.temperature
        p = torch.softmax(z, 1)[0].cpu().numpy().astype(np.float32)
        return p, emb[0].float().cpu().numpy().astype(np.float32)

    def predict(self, wave: np.ndarray, speaker: Optional[SpeakerNormaliser] = None, t: Optional[float] = None,
                commit: bool = True) -> Tuple[np.ndarray, np.ndarray]:
        """One utterance (float32 mono at the model's rate) -> (probs (7,), embedding (D,)); ``speaker``, ``t``,
        ``commit``: see :meth:`features`."""
        wave = np.asarray(wave, np.float32).reshape(-1)
        if wave.size < self.min_samples:
            wave = np.pad(wave, (0, self.min_samples - wave.size))
        return self.predict_features(self.features(wave, speaker, t, commit))

    def info(self) -> Dict[str, object]:
        return {"path": self.path, "arch": ARCH, "device": str(self.device), "temperature": self.temperature,
                "members": len(self._members), "speaker_window": self.spec.speaker_window}

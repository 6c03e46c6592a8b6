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
from . import ge2e, whisper
from .features import FeatureSpec, SpeakerNormaliser, utterance_features

ARCH = "ser_cnn_bilstm"
# members that read the utterance's waveform through a frozen pretrained encoder (a linear head on top)
WAVE_MEMBERS = {ge2e.ARCH: ge2e.GE2EMember, whisper.ARCH: whisper.WhisperMember,
                whisper.SPEAKER_ARCH: whisper.WhisperSpeakerMember}
# of those, members that read the stream's running speaker reference (and abstain until it holds two utterances)
SPEAKER_MEMBERS = {whisper.SPEAKER_ARCH}


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
    """One network of a (possibly one-member) voice ensemble, with its own normalisation and temperature:
    a CNN + BiLSTM over log-mel features (``arch`` ``ser_cnn_bilstm``), or the classifier over the frozen GE2E
    speaker encoder's pooled states (``ge2e_head``, :mod:`.ge2e`) or the frozen Whisper encoder's
    (``whisper_head``, :mod:`.whisper`); these read the waveform, ``mean``/``std`` None."""
    net: nn.Module
    mean: Optional[np.ndarray]
    std: Optional[np.ndarray]
    temperature: float
    arch: str = ARCH


class VoiceModel:
    """A loaded voice model: 16 kHz mono float32 utterance in, probabilities and embedding out.

    A checkpoint may hold an **ensemble** (``ckpt["ensemble"]``, built by ``emotion-train voice-ensemble``): the main
    network plus further members trained the same way with other settings or seeds. Each member's logits are divided
    by its own temperature, averaged, and divided by the ensemble's temperature (fitted on held-out speakers) before
    the softmax; the embedding is the main network's (so that its size and meaning stay those of one network).
    A member may be a ``ge2e_head`` or a ``whisper_head`` (:mod:`.ge2e`, :mod:`.whisper`: a linear classifier over
    a frozen pretrained encoder); the main network of an ensemble is a CNN + BiLSTM. Such a checkpoint alone also
    loads (its embedding is then the encoder's), so that it can be judged through the node's pipeline.
    """

    def __init__(self, path: str, device: str = "auto"):
        ckpt = load_checkpoint(path, "voice")
        if ckpt.get("arch") not in (ARCH, *WAVE_MEMBERS):
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
        main = self._member(ckpt["state_dict"], spec, ckpt.get("config", {}).get("model", {}), main_t, path, "main",
                            ckpt["arch"])
        self._members = [main]
        self.net, self.mean, self.std = main.net, main.mean, main.std
        self.embed_dim = self.net.embed_dim
        self.calibration = cal
        self.temperature = main_t
        ens = ckpt.get("ensemble")
        if ens and main.arch != ARCH:
            raise ModelFileError(f"voice model file {path!r}: the main network of an ensemble must be a {ARCH}")
        if ens:
            try:
                members = list(ens["members"])
                self.temperature = self._temperature(ens.get("temperature", 1.0), path)
            except (KeyError, TypeError) as exc:
                raise ModelFileError(f"voice model file {path!r}: ensemble entry incomplete ({exc})") from exc
            for i, m in enumerate(members, 1):
                try:
                    inp = m["input"]
                    arch = m.get("arch", ARCH)
                    if arch == ARCH and FeatureSpec.from_dict(inp.get("features", {})) != self.spec:
                        raise ModelFileError(f"voice model file {path!r}: ensemble member {i} computes other "
                                             "features than the main network")
                    self._members.append(self._member(m["state_dict"], inp, m.get("model", {}),
                                                      self._temperature(m.get("temperature", 1.0), path), path,
                                                      f"ensemble member {i}", arch))
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

    def _member(self, state_dict, spec: dict, cfg: dict, temperature: float, path: str, what: str,
                arch: str = ARCH) -> _Member:
        if arch in WAVE_MEMBERS:
            net = WAVE_MEMBERS[arch]()
            try:
                net.load_state_dict(state_dict)
            except RuntimeError as exc:
                raise ModelFileError(f"voice model file {path!r}: the {what} does not fit {arch}: {exc}") from exc
            return _Member(net.to(self.device).eval(), None, None, temperature, arch)
        if arch != ARCH:
            raise ModelFileError(f"voice model file {path!r}: the {what} has an unknown architecture {arch!r}")
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

    @property
    def needs_features(self) -> bool:
        """Whether any member reads the log-mel features (a lone ``ge2e_head`` or ``whisper_head`` does not)."""
        return any(m.arch == ARCH for m in self._members)

    def features(self, wave: np.ndarray, speaker: Optional[SpeakerNormaliser] = None, t: Optional[float] = None,
                 commit: bool = True) -> Optional[np.ndarray]:
        """Log-mel features of one utterance, normalised for the main network.

        ``speaker``: the running per-speaker reference of the stream (models with ``spec.speaker_window > 0``);
        the utterance (ending at ``t``) is added to it unless ``commit`` is False.  Without one such a model sees
        the utterance normalised by itself, as at the node's start-up."""
        if not self.needs_features:
            return None
        def ref(band_mean):
            return speaker.offset(band_mean, t, commit, window=self.spec.speaker_window)
        use_ref = speaker is not None and bool(self.spec.speaker_window)
        f = utterance_features(wave, self.spec, reference=ref if use_ref else None)
        return (f - self.mean) / self.std

    def speaker_normaliser(self, reset_after_s: float = 60.0) -> Optional[SpeakerNormaliser]:
        """A fresh running speaker reference for one audio stream (models with ``spec.speaker_window > 0`` or a
        member in ``SPEAKER_MEMBERS``), or None for a per-utterance model."""
        windows = [self.spec.speaker_window] + [m.net.window for m in self._members if m.arch in SPEAKER_MEMBERS]
        return SpeakerNormaliser(max(windows), reset_after_s) if max(windows) else None

    @torch.inference_mode()
    def predict_features(self, feats: Optional[np.ndarray], wave: Optional[np.ndarray] = None,
                         speaker: Optional[SpeakerNormaliser] = None, t: Optional[float] = None,
                         commit: bool = True) -> Tuple[np.ndarray, np.ndarray]:
        """Features normalised for the main network (``features``), and the utterance itself when a member reads
        the waveform (``ge2e_head``, ``whisper_head``, ``whisper_speaker_head``) -> (calibrated probs, main
        embedding). ``speaker``, ``t``, ``commit``: the stream's running reference for members that read it (see
        :meth:`features`); such a member that abstains is left out of the average (unless every member does)."""
        z, emb, raw, used, fallback = None, None, None, 0, None
        for k, m in enumerate(self._members):
            abstain = False
            if m.arch in WAVE_MEMBERS:
                if wave is None:
                    raise ValueError(f"this voice model has a {m.arch} member: predict_features needs the wave")
                if m.arch in SPEAKER_MEMBERS:
                    logits, e, abstain = m.net(np.asarray(wave, np.float32), speaker, t, commit)
                else:
                    logits, e = m.net(np.asarray(wave, np.float32))
                logits, e = logits.unsqueeze(0), e.unsqueeze(0)
            else:
                if k == 0:
                    x = np.ascontiguousarray(feats, dtype=np.float32)
                else:
                    if raw is None:
                        raw = np.asarray(feats, np.float32) * self.std + self.mean
                    x = np.ascontiguousarray((raw - m.mean) / m.std, dtype=np.float32)
                logits, e = m.net(torch.from_numpy(x).unsqueeze(0).to(self.device), return_embedding=True)
            zk = logits.float() / m.temperature
            if k == 0:
                emb = e
            if abstain:
                fallback = zk if fallback is None else fallback + zk
                continue
            z = zk if z is None else z + zk
            used += 1
        if z is None:                       # every member abstained: their zero-offset logits (the heads' priors)
            z, used = fallback, len(self._members)
        if len(self._members) > 1:
            z = z / used / self.temperature
        p = torch.softmax(z, 1)[0].cpu().numpy().astype(np.float32)
        return p, emb[0].float().cpu().numpy().astype(np.float32)

    def predict(self, wave: np.ndarray, speaker: Optional[SpeakerNormaliser] = None, t: Optional[float] = None,
                commit: bool = True) -> Tuple[np.ndarray, np.ndarray]:
        """One utterance (float32 mono at the model's rate) -> (probs (7,), embedding (D,)); ``speaker``, ``t``,
        ``commit``: see :meth:`features`."""
        wave = np.asarray(wave, np.float32).reshape(-1)
        if wave.size < self.min_samples:
            wave = np.pad(wave, (0, self.min_samples - wave.size))
        return self.predict_features(self.features(wave, speaker, t, commit), wave, speaker, t, commit)

    def info(self) -> Dict[str, object]:
        return {"path": self.path, "arch": self._members[0].arch, "device": str(self.device),
                "temperature": self.temperature, "members": len(self._members),
                "member_archs": [m.arch for m in self._members], "speaker_window": self.spec.speaker_window}

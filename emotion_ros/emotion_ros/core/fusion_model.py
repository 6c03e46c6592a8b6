"""Model-level fusion of the face and voice embeddings.

A small network projects each modality's embedding, concatenates the projections
with presence flags and classifies.  Trained with modality dropout (so it still
works when one modality is missing) and an auxiliary classifier per modality (so
that neither modality dominates, after Haddad et al. 2023).
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import numpy as np
import torch
from torch import nn

from .errors import InputError
from .labels import NUM_LABELS
from .modelio import ModelFileError, load_checkpoint, resolve_device

ARCH = "emb_fusion_mlp"


class FusionNet(nn.Module):
    def __init__(self, face_dim: int = 256, voice_dim: int = 128, hidden: int = 64, dropout: float = 0.3,
                 num_classes: int = NUM_LABELS):
        super().__init__()

        def proj(d):
            return nn.Sequential(nn.LayerNorm(d), nn.Dropout(dropout / 2), nn.Linear(d, hidden),
                                 nn.ReLU(inplace=True))

        self.face_proj = proj(face_dim)
        self.voice_proj = proj(voice_dim)
        self.face_aux = nn.Linear(hidden, num_classes)
        self.voice_aux = nn.Linear(hidden, num_classes)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(2 * hidden + 2, hidden), nn.ReLU(inplace=True),
                                  nn.Dropout(dropout), nn.Linear(hidden, num_classes))
        self.face_dim, self.voice_dim = face_dim, voice_dim

    def forward(self, face: torch.Tensor, voice: torch.Tensor, face_mask: torch.Tensor,
                voice_mask: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """face (N, Df), voice (N, Dv), masks (N,) in {0, 1} -> (fused, face_aux, voice_aux) logits."""
        hf = self.face_proj(face) * face_mask.unsqueeze(1)
        hv = self.voice_proj(voice) * voice_mask.unsqueeze(1)
        z = torch.cat([hf, hv, face_mask.unsqueeze(1), voice_mask.unsqueeze(1)], 1)
        return self.head(z), self.face_aux(hf), self.voice_aux(hv)


class FusionModel:
    """A loaded fusion model: embeddings (either may be missing) in, fused probabilities out."""

    def __init__(self, path: str, device: str = "auto"):
        ckpt = load_checkpoint(path, "fusion")
        if ckpt.get("arch") != ARCH:
            raise ModelFileError(f"fusion model file {path!r}: unknown architecture {ckpt.get('arch')!r}")
        spec = ckpt.get("input", {})
        cfg = ckpt.get("config", {}).get("model", {})
        self.face_dim = int(spec.get("face_dim", 256))
        self.voice_dim = int(spec.get("voice_dim", 128))
        self.net = FusionNet(self.face_dim, self.voice_dim, hidden=int(cfg.get("hidden", 64)))
        try:
            self.net.load_state_dict(ckpt["state_dict"])
        except RuntimeError as exc:
            raise ModelFileError(f"fusion model file {path!r} does not fit {ARCH}: {exc}") from exc
        self.path = path
        self.device = resolve_device(device)
        self.net.to(self.device).eval()
        self.metrics = ckpt.get("metrics", {})

    def check_dims(self, face_dim: Optional[int], voice_dim: Optional[int]) -> None:
        """Raise ModelFileError if the unimodal models' embeddings don't fit this fusion model."""
        if face_dim is not None and face_dim != self.face_dim:
            raise ModelFileError(f"fusion model {self.path!r} expects face embeddings of {self.face_dim}, "
                                 f"the face model gives {face_dim}")
        if voice_dim is not None and voice_dim != self.voice_dim:
            raise ModelFileError(f"fusion model {self.path!r} expects voice embeddings of {self.voice_dim}, "
                                 f"the voice model gives {voice_dim}")

    @torch.inference_mode()
    def predict_batch(self, face: Optional[np.ndarray], voice: Optional[np.ndarray],
                      face_mask: np.ndarray, voice_mask: np.ndarray) -> Dict[str, np.ndarray]:
        n = len(face_mask)
        f = torch.zeros(n, self.face_dim) if face is None else torch.as_tensor(face, dtype=torch.float32)
        v = torch.zeros(n, self.voice_dim) if voice is None else torch.as_tensor(voice, dtype=torch.float32)
        fm = torch.as_tensor(face_mask, dtype=torch.float32)
        vm = torch.as_tensor(voice_mask, dtype=torch.float32)
        fused, fa, va = self.net(f.to(self.device), v.to(self.device), fm.to(self.device), vm.to(self.device))
        sm = lambda t: torch.softmax(t.float(), 1).cpu().numpy().astype(np.float32)  # noqa: E731
        return {"fused": sm(fused), "face": sm(fa), "voice": sm(va)}

    def predict(self, face_emb: Optional[np.ndarray], voice_emb: Optional[np.ndarray]) -> np.ndarray:
        """One person's embeddings (either may be None) -> fused probabilities (7,)."""
        if face_emb is None and voice_emb is None:
            raise InputError("fusion needs at least one modality")
        for name, e, d in (("face", face_emb, self.face_dim), ("voice", voice_emb, self.voice_dim)):
            if e is not None:
                e = np.asarray(e, np.float32).reshape(-1)
                if e.shape[0] != d:
                    raise InputError(f"{name} embedding has {e.shape[0]} values, the fusion model expects {d}")
                if not np.all(np.isfinite(e)):
                    raise InputError(f"{name} embedding holds NaN or Inf")
        f = None if face_emb is None else np.asarray(face_emb, np.float32).reshape(1, -1)
        v = None if voice_emb is None else np.asarray(voice_emb, np.float32).reshape(1, -1)
        out = self.predict_batch(f, v, np.array([float(f is not None)]), np.array([float(v is not None)]))
        return out["fused"][0]

"""Saving and loading model checkpoints with the spec they carry.

A checkpoint is a plain dict (loadable with ``weights_only=True``):
``{"kind", "arch", "labels", "input", "config", "metrics", "state_dict"}``.
"""
from __future__ import annotations

import os
from typing import Any, Dict, Optional

import torch

from .labels import LABELS, check_label_order


class ModelFileError(RuntimeError):
    """A model file is missing, unreadable or does not fit what the caller expects."""


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` = CUDA when available, else CPU; otherwise what is named."""
    name = (device or "auto").strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ModelFileError(f"device '{device}' asked for but CUDA is not available")
    return torch.device(name)


def save_checkpoint(path: str, *, kind: str, arch: str, model: torch.nn.Module,
                    input_spec: Dict[str, Any], config: Dict[str, Any],
                    metrics: Optional[Dict[str, Any]] = None,
                    extra: Optional[Dict[str, Any]] = None) -> None:
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    ckpt = {
        "kind": kind,
        "arch": arch,
        "labels": list(LABELS),
        "input": input_spec,
        "config": config,
        "metrics": metrics or {},
        "state_dict": state,
    }
    if extra:
        ckpt.update(extra)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    torch.save(ckpt, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str, kind: str) -> Dict[str, Any]:
    """Load and check a checkpoint; errors name the file."""
    if not path or not os.path.isfile(path):
        raise ModelFileError(f"{kind} model file not found: {path!r}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt, truncated, foreign
        raise ModelFileError(f"{kind} model file {path!r} cannot be read: {exc}") from exc
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise ModelFileError(f"{kind} model file {path!r} is not an emotion_ros checkpoint")
    if ckpt.get("kind") != kind:
        raise ModelFileError(
            f"model file {path!r} holds a {ckpt.get('kind')!r} model, expected {kind!r}")
    try:
        check_label_order(ckpt.get("labels", ()), where=f"model file {path!r}")
    except ValueError as exc:
        raise ModelFileError(str(exc)) from exc
    return ckpt

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


#: Device names the nodes take (``cuda:N`` too).
DEVICE_CHOICES = "auto | cpu | cuda | cuda:N | mps"


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` = CUDA when available, else CPU; otherwise what is named (``cpu``, ``cuda``, ``cuda:N``, ``mps``).
    An unknown or unavailable device raises ModelFileError naming the value."""
    name = (device or "auto").strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    kind, _, index = name.partition(":")
    if kind not in ("cpu", "cuda", "mps") or (index and not index.isdigit()) or (index and kind != "cuda"):
        raise ModelFileError(f"unknown device {device!r} (use {DEVICE_CHOICES})")
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise ModelFileError(f"device '{device}' asked for but CUDA is not available")
        if index and int(index) >= torch.cuda.device_count():
            raise ModelFileError(f"device '{device}' asked for but there are only {torch.cuda.device_count()} "
                                 "CUDA device(s)")
    if kind == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ModelFileError(f"device '{device}' asked for but MPS is not available")
    return torch.device(name)


def _load_problem(exc: Exception) -> str:
    """One line saying why torch.load refused a file (its own messages run to paragraphs of advice)."""
    if isinstance(exc, EOFError):
        return "the file ends too early (cut off)"
    text = str(exc)
    if "Weights only load failed" in text or type(exc).__name__ == "UnpicklingError":
        return ("it holds Python objects besides tensors (not a checkpoint saved by emotion_ros; such files are not "
                "loaded, as loading them could run code)")
    first = text.strip().splitlines()[0] if text.strip() else ""
    if "zip archive" in first:
        first = "not a complete zip archive"
    return f"corrupt, cut off, or not a PyTorch checkpoint ({type(exc).__name__}{': ' + first[:120] if first else ''})"


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
    write_checkpoint(ckpt, path)


def write_checkpoint(ckpt: Dict[str, Any], path: str) -> None:
    """Write the checkpoint dict ``ckpt`` to ``path`` atomically (a temporary file, then a rename), creating its
    folder: a reader never sees half a file."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    torch.save(ckpt, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str, kind: str) -> Dict[str, Any]:
    """Load and check a checkpoint; errors name the file."""
    if not path or not os.path.isfile(path):
        raise ModelFileError(f"{kind} model file not found: {path!r}")
    if os.path.getsize(path) == 0:
        raise ModelFileError(f"{kind} model file {path!r} cannot be read: the file is empty (0 bytes)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt, truncated, foreign
        raise ModelFileError(f"{kind} model file {path!r} cannot be read: {_load_problem(exc)}") from None
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

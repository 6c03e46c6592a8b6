"""Shared bits of the training scripts: seeding, metrics, resumable checkpoints."""
from __future__ import annotations

import json
import os
import random
from typing import Any, Dict, Optional, Sequence

import numpy as np
import torch

from ..core.labels import LABELS, NUM_LABELS


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def default_models_dir() -> str:
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "models")


def accuracy_within_labels(scores: np.ndarray, y_true: Sequence[int], allowed: Optional[np.ndarray] = None) -> float:
    """Accuracy of the argmax over ``allowed`` labels only (bool (K,); default: the labels in ``y_true``), for
    scores (N, K) of any sign (probabilities or logits). A diagnostic for a corpus with fewer labels than the
    model: how much of the error is the model's answering with a label the corpus never has. Never below the
    plain argmax's accuracy, since every true label is allowed."""
    scores = np.asarray(scores, dtype=np.float64)
    y_true = np.asarray(y_true, dtype=np.int64)
    if len(y_true) == 0:
        return 0.0
    if allowed is None:
        allowed = np.zeros(scores.shape[1], bool)
        allowed[np.unique(y_true)] = True
    pred = np.where(np.asarray(allowed, bool), scores, -np.inf).argmax(1)
    return float((pred == y_true).mean())


def metrics_from_predictions(y_true: Sequence[int], y_pred: Sequence[int],
                             labels: Sequence[str] = LABELS) -> Dict[str, Any]:
    """Accuracy, macro-F1 over the classes present, per-class recall and the confusion matrix."""
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    k = len(labels)
    cm = np.zeros((k, k), np.int64)
    for t, p in zip(y_true, y_pred):
        cm[t, p] += 1
    n = int(cm.sum())
    acc = float(np.trace(cm) / n) if n else 0.0
    recall, f1s = {}, []
    for i, name in enumerate(labels):
        support = cm[i].sum()
        if support == 0:
            continue
        tp = cm[i, i]
        r = tp / support
        p = tp / cm[:, i].sum() if cm[:, i].sum() else 0.0
        f1s.append(0.0 if (p + r) == 0 else 2 * p * r / (p + r))
        recall[name] = round(float(r), 4)
    pred_share = cm.sum(0) / n if n else np.zeros(k)
    true_share = cm.sum(1) / n if n else np.zeros(k)
    top = int(np.argmax(pred_share)) if n else 0
    return {
        "accuracy": round(acc, 4),
        "macro_f1": round(float(np.mean(f1s)) if f1s else 0.0, 4),
        "n": n,
        "per_class_recall": recall,
        "confusion": cm.tolist(),
        "labels": list(labels),
        # Collapse check: each class's share of the predictions beside its true share; collapse_ratio is the
        # most-predicted class's share over its true share (None when that class never occurs in the data).
        "prediction_share": {name: {"predicted": round(float(pred_share[i]), 4),
                                    "true": round(float(true_share[i]), 4)} for i, name in enumerate(labels)},
        "most_predicted": labels[top] if n else None,
        "collapse_ratio": (round(float(pred_share[top] / true_share[top]), 3) if n and true_share[top] > 0
                           else None),
    }


class Checkpointer:
    """Keeps ``last.pt`` (model, optimiser, scheduler, epoch, RNG) in a run folder."""

    def __init__(self, run_dir: str):
        self.run_dir = run_dir
        os.makedirs(run_dir, exist_ok=True)
        self.path = os.path.join(run_dir, "last.pt")

    def save(self, epoch: int, model, optimizer, scheduler=None, history=None, extra=None) -> None:
        state = {
            "epoch": epoch,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "history": history or [],
            "torch_rng": torch.get_rng_state(),
            "numpy_rng": np.random.get_state(),
            "extra": extra or {},
        }
        tmp = self.path + ".tmp"
        torch.save(state, tmp)
        os.replace(tmp, self.path)

    def load(self) -> Optional[Dict[str, Any]]:
        if not os.path.isfile(self.path):
            return None
        return torch.load(self.path, map_location="cpu", weights_only=False)


def args_config(args) -> Dict[str, Any]:
    """The command-line arguments as saved with the weights (the CLI's own callables left out)."""
    return {k: v for k, v in vars(args).items() if not callable(v)}


def write_json(path: str, obj: Any) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f, indent=2)


def stratified_holdout(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of a stratified held-out fraction."""
    rng = np.random.default_rng(seed)
    mask = np.zeros(len(labels), bool)
    for c in range(NUM_LABELS):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        mask[idx[: int(round(len(idx) * fraction))]] = True
    return mask

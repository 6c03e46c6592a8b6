"""Confidence calibration: temperature scaling fitted by NLL, and the expected calibration error (ECE).

Used for the face model (``emotion-train calibrate-face``) and usable for any classifier with logits::

    from emotion_ros.training.calibration import fit_temperature, ece, calibrate_report

    T = fit_temperature(dev_logits, dev_labels)           # logits (N, C) or (K, N, C): K views averaged in prob space
    e = ece(softmax_t(test_logits, T), test_labels)       # 15 equal-width confidence bins
    rep = calibrate_report(dev_logits, dev_labels, test_logits, test_labels)   # T + ECE/NLL before/after

``(K, N, C)`` logits are K views of the same N samples (e.g. the face model's horizontal-flip test-time
augmentation): the calibrated probability is the mean over views of ``softmax(logits / T)``, as the model applies it.
Fit only on held-out data the model did not train on, and never on the test split you report.
"""
from __future__ import annotations

import math
from typing import Dict

import numpy as np
import torch

__all__ = ["softmax_t", "nll", "ece", "fit_temperature", "calibration_summary", "calibrate_report", "reliability_table",
           "temperature_of"]


def _views(logits) -> torch.Tensor:
    x = torch.as_tensor(np.asarray(logits, np.float64))
    if x.ndim == 2:
        x = x.unsqueeze(0)
    if x.ndim != 3:
        raise ValueError(f"logits must be (N, C) or (K, N, C), got shape {tuple(x.shape)}")
    return x


def softmax_t(logits, temperature: float = 1.0) -> np.ndarray:
    """Calibrated probabilities (N, C): mean over views of softmax(logits / T)."""
    x = _views(logits)
    return torch.softmax(x / float(temperature), -1).mean(0).numpy()


def nll(probs, labels) -> float:
    p = np.asarray(probs, np.float64)
    y = np.asarray(labels, np.int64)
    return float(-np.mean(np.log(np.clip(p[np.arange(len(y)), y], 1e-12, 1.0))))


def ece(probs, labels, n_bins: int = 15) -> float:
    """Expected calibration error: sum over equal-width confidence bins of |accuracy - mean confidence| x share."""
    p = np.asarray(probs, np.float64)
    y = np.asarray(labels, np.int64)
    if len(y) == 0:
        return float("nan")
    conf = p.max(1)
    correct = (p.argmax(1) == y).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, n_bins - 1)
    total = 0.0
    for b in range(n_bins):
        m = idx == b
        if m.any():
            total += m.mean() * abs(correct[m].mean() - conf[m].mean())
    return float(total)


def reliability_table(probs, labels, n_bins: int = 10) -> list:
    """Per confidence bin: [lo, hi, n, mean confidence, accuracy] (for model cards)."""
    p = np.asarray(probs, np.float64)
    y = np.asarray(labels, np.int64)
    conf, correct = p.max(1), (p.argmax(1) == y)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    rows = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        m = (conf > lo) & (conf <= hi)
        if m.any():
            rows.append([round(float(lo), 2), round(float(hi), 2), int(m.sum()), round(float(conf[m].mean()), 4),
                         round(float(correct[m].mean()), 4)])
    return rows


def fit_temperature(logits, labels, t_min: float = 0.05, t_max: float = 20.0) -> float:
    """The temperature T > 0 minimising the NLL of mean-over-views softmax(logits / T) on (logits, labels).

    A 1-D convex-in-practice problem: golden-section search on log T in [t_min, t_max] (no learning rate)."""
    x = _views(logits)
    y = torch.as_tensor(np.asarray(labels, np.int64))
    if x.shape[1] != len(y) or len(y) == 0:
        raise ValueError(f"{x.shape[1]} logit rows but {len(y)} labels")

    def loss(log_t: float) -> float:
        p = torch.softmax(x / math.exp(log_t), -1).mean(0)
        return float(-torch.log(p[torch.arange(len(y)), y].clamp_min(1e-12)).mean())

    a, b = math.log(t_min), math.log(t_max)
    g = (math.sqrt(5) - 1) / 2
    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = loss(c), loss(d)
    for _ in range(60):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = loss(c)
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = loss(d)
    return float(math.exp((a + b) / 2))


def calibration_summary(logits, labels, t: float, n_bins: int = 15) -> Dict[str, float]:
    """Accuracy, ECE, NLL and mean confidence of (logits, labels) before (T = 1) and after temperature ``t``."""
    p0, p1 = softmax_t(logits, 1.0), softmax_t(logits, t)
    return {"n": int(len(labels)), "accuracy": round(float((p1.argmax(1) == np.asarray(labels)).mean()), 4),
            "ece_before": round(ece(p0, labels, n_bins), 4), "ece_after": round(ece(p1, labels, n_bins), 4),
            "nll_before": round(nll(p0, labels), 4), "nll_after": round(nll(p1, labels), 4),
            "mean_conf_before": round(float(p0.max(1).mean()), 4),
            "mean_conf_after": round(float(p1.max(1).mean()), 4)}


def calibrate_report(fit_logits, fit_labels, test_logits=None, test_labels=None,
                     fitted_on: str = "", n_bins: int = 15) -> Dict[str, object]:
    """Fit T on (fit_logits, fit_labels) and report ECE / NLL / accuracy before and after on the fit set and,
    when given, on the test set (measurement only).  The dict is what goes into ``ckpt["calibration"]``."""
    t = fit_temperature(fit_logits, fit_labels)
    out: Dict[str, object] = {"method": "temperature", "temperature": round(t, 4), "fitted_on": fitted_on,
                              "n_fit": int(len(fit_labels)), "ece_bins": n_bins}

    out["fit"] = calibration_summary(fit_logits, fit_labels, t, n_bins)
    if test_logits is not None and test_labels is not None:
        out["test"] = calibration_summary(test_logits, test_labels, t, n_bins)
        out["ece_before"], out["ece_after"] = out["test"]["ece_before"], out["test"]["ece_after"]
    else:
        out["ece_before"], out["ece_after"] = out["fit"]["ece_before"], out["fit"]["ece_after"]
    return out


def temperature_of(ckpt: dict, default: float = 1.0) -> float:
    """The temperature stored in a checkpoint's ``calibration`` entry (``default`` when there is none)."""
    cal = ckpt.get("calibration") if isinstance(ckpt, dict) else None
    try:
        t = float(cal.get("temperature", default)) if isinstance(cal, dict) else default
    except (TypeError, ValueError):
        return default
    return t if math.isfinite(t) and t > 0 else default


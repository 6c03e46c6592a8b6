"""Int8 inference of the face CNN on the CPU (post-training static quantization, PyTorch FX).

The activation ranges are measured once, offline, on training faces (``emotion-train quantize-face``) and stored
in the checkpoint as the observers' state (``ckpt["int8"]``); at load time :func:`build_int8` rebuilds the
quantized network from the float weights and those ranges, so nothing is measured at run time and no data ships.
Weights are quantized per output channel, activations per tensor (PyTorch's default x86/fbgemm configuration).

    observers = observe(net, batches)             # offline: a few hundred normalised crops
    qnet = build_int8(net, observers)             # load time: same outputs as ``net`` to int8 precision
    logits, embedding = qnet(x)                   # x: (N, 1, S, S) float, normalised as FaceModel.to_tensor
"""
from __future__ import annotations

import copy
import warnings
from typing import Dict, Iterable, Optional

import torch
from torch import nn

OBSERVER_KEY = "activation_post_process"


def engine() -> Optional[str]:
    """The quantized CPU engine this torch build offers for x86 (``x86`` or ``fbgemm``), else None."""
    engines = set(torch.backends.quantized.supported_engines)
    for name in ("x86", "fbgemm"):
        if name in engines:
            return name
    return None


class _WithEmbedding(nn.Module):
    """FX traces ``forward`` without keyword arguments: logits and embedding as one output."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x, return_embedding=True)


def _prepare(net: nn.Module, size: int, backend: str):
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import prepare_fx

    torch.backends.quantized.engine = backend
    model = _WithEmbedding(copy.deepcopy(net).cpu().eval())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # FX's notes on the deprecated torch.ao API and on reduce_range
        return prepare_fx(model, get_default_qconfig_mapping(backend), (torch.zeros(2, 1, size, size),))


@torch.no_grad()  # not inference_mode: the observers' state must load into another module later
def observe(net: nn.Module, batches: Iterable[torch.Tensor], size: int = 48,
            backend: Optional[str] = None) -> Dict[str, object]:
    """Run ``batches`` (normalised (N, 1, S, S) float tensors) through an observed copy of ``net`` and return what
    :func:`build_int8` needs: ``{"engine", "observers": {name: tensor}, "n"}``."""
    backend = backend or engine()
    if backend is None:
        raise RuntimeError("this torch build has no x86/fbgemm quantized engine")
    prepared = _prepare(net, size, backend)
    n = 0
    for x in batches:
        prepared(x.float().cpu())
        n += int(x.shape[0])
    if n == 0:
        raise ValueError("no calibration crops")
    observers = {k: v.detach().clone() for k, v in prepared.state_dict().items() if OBSERVER_KEY in k}
    return {"engine": backend, "observers": observers, "n": n, "size": int(size)}


def build_int8(net: nn.Module, state: Dict[str, object]) -> nn.Module:
    """The int8 network of ``net`` with the activation ranges of ``state`` (from :func:`observe`).

    Raises ``RuntimeError`` when the build has no quantized engine and ``ValueError`` when ``state`` does not fit
    ``net`` (another architecture or torch version naming the observers differently)."""
    from torch.ao.quantization.quantize_fx import convert_fx

    backend = engine()
    if backend is None:
        raise RuntimeError("this torch build has no x86/fbgemm quantized engine")
    observers = dict(state.get("observers") or {})
    if not observers:
        raise ValueError("no observer ranges")
    prepared = _prepare(net, int(state.get("size", 48)), backend)
    wanted = {k for k in prepared.state_dict() if OBSERVER_KEY in k}
    if wanted != set(observers):
        missing, extra = sorted(wanted - set(observers)), sorted(set(observers) - wanted)
        raise ValueError(f"observer ranges do not fit the network (missing {missing[:3]}, unknown {extra[:3]})")
    prepared.load_state_dict(observers, strict=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return convert_fx(prepared).eval()

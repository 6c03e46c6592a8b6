"""Int8 inference of the face CNN on the CPU (post-training static quantization, torch.ao eager mode).

The activation ranges are measured once, offline, on training faces (``emotion-train quantize-face``) and stored
in the checkpoint as the observers' state (``ckpt["int8"]``); at load time :func:`build_int8` rebuilds the
quantized network from the float weights and those ranges, so nothing is measured at run time and no data ships.
Weights are quantized per output channel, activations per tensor (PyTorch's default x86/fbgemm configuration).
Eager mode, not FX: FX's tracing imports dynamo, inductor and sympy (+105 MB of resident memory in the face node).

    observers = observe(net, batches)             # offline: a few hundred normalised crops
    qnet = build_int8(net, observers)             # load time: same outputs as ``net`` to int8 precision
    logits, embedding = qnet(x)                   # x: (N, 1, S, S) float, normalised as FaceModel.to_tensor
"""
from __future__ import annotations

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


def _require_engine() -> str:
    backend = engine()
    if backend is None:
        raise RuntimeError("this torch build has no x86/fbgemm quantized engine")
    return backend


class QuantFaceCNN(nn.Module):
    """The face CNN arranged for eager-mode static quantization: batch norm folded into the convolutions and into
    the embedding's linear layer, each convolution and linear layer fused with its ReLU, dropout gone, a quantize
    stub at the input and dequantize stubs at both outputs.  ``forward(x) -> (logits, embedding)``."""

    def __init__(self, net: nn.Module):
        super().__init__()
        from torch.ao.quantization import DeQuantStub, QuantStub, fuse_modules
        from torch.nn.utils.fusion import fuse_linear_bn_eval

        from .model import inference_copy

        fast = inference_copy(net).to(memory_format=torch.contiguous_format).cpu().eval()
        self.features = fast.features
        layers = list(self.features)
        pairs = [[str(i), str(i + 1)] for i in range(len(layers) - 1)
                 if isinstance(layers[i], nn.Conv2d) and isinstance(layers[i + 1], nn.ReLU)]
        fuse_modules(self.features, pairs, inplace=True)
        self.pool = fast.pool
        self.flatten = nn.Flatten()
        linear, bn, relu = (m for m in fast.embed if not isinstance(m, nn.Flatten))
        self.embed = nn.Sequential(fuse_linear_bn_eval(linear, bn), relu)
        fuse_modules(self.embed, [["0", "1"]], inplace=True)
        self.classifier = fast.classifier
        self.quant = QuantStub()
        self.dequant_logits = DeQuantStub()
        self.dequant_embedding = DeQuantStub()

    def forward(self, x):
        z = self.embed(self.flatten(self.pool(self.features(self.quant(x)))))
        return self.dequant_logits(self.classifier(z)), self.dequant_embedding(z)


def _prepare(net: nn.Module, backend: str) -> nn.Module:
    from torch.ao.quantization import get_default_qconfig, prepare

    torch.backends.quantized.engine = backend
    model = QuantFaceCNN(net).eval()
    model.qconfig = get_default_qconfig(backend)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao's notes on reduce_range and its deprecation
        return prepare(model)


@torch.no_grad()  # not inference_mode: the observers' state must load into another module later
def observe(net: nn.Module, batches: Iterable[torch.Tensor]) -> Dict[str, object]:
    """Run ``batches`` (normalised (N, 1, S, S) float tensors) through an observed copy of ``net`` and return what
    :func:`build_int8` needs: ``{"engine", "observers": {name: tensor}, "n"}``."""
    backend = _require_engine()
    prepared = _prepare(net, backend)
    n = 0
    for x in batches:
        prepared(x.float().cpu())
        n += int(x.shape[0])
    if n == 0:
        raise ValueError("no calibration crops")
    observers = {k: v.detach().clone() for k, v in prepared.state_dict().items() if OBSERVER_KEY in k}
    return {"engine": backend, "observers": observers, "n": n}


def build_int8(net: nn.Module, state: Dict[str, object]) -> nn.Module:
    """The int8 network of ``net`` with the activation ranges of ``state`` (from :func:`observe`).

    Raises ``RuntimeError`` when the build has no quantized engine and ``ValueError`` when ``state`` does not fit
    ``net`` (another architecture or torch version naming the observers differently)."""
    from torch.ao.quantization import convert

    backend = _require_engine()
    observers = dict(state.get("observers") or {})
    if not observers:
        raise ValueError("no observer ranges")
    prepared = _prepare(net, backend)
    wanted = {k for k in prepared.state_dict() if OBSERVER_KEY in k}
    if wanted != set(observers):
        missing, extra = sorted(wanted - set(observers)), sorted(set(observers) - wanted)
        raise ValueError(f"observer ranges do not fit the network (missing {missing[:3]}, unknown {extra[:3]})")
    prepared.load_state_dict(observers, strict=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return convert(prepared).eval()

"""Face-expression CNN: multiple small-scale (3x3) kernels in VGG-like blocks.

After Cai et al. 2019 ("FER_2"): each block is two 3x3 convolutions with batch
normalisation, then max-pooling and dropout; the head gives an embedding used by
the fusion model and the class logits.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from ..labels import NUM_LABELS
from ..modelio import ModelFileError, load_checkpoint, resolve_device

ARCH = "fer_smallkernel_vgg"
DEFAULT_INPUT = {"size": 48, "channels": 1, "mean": 0.5, "std": 0.25}


class FaceCNN(nn.Module):
    def __init__(self, widths: Sequence[int] = (32, 64, 128, 256), embed_dim: int = 256,
                 dropout: float = 0.25, head_dropout: float = 0.5,
                 num_classes: int = NUM_LABELS):
        super().__init__()
        layers: List[nn.Module] = []
        c_in = 1
        for i, c in enumerate(widths):
            layers += [
                nn.Conv2d(c_in, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True),
                nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
                nn.Dropout2d(dropout * (i + 1) / len(widths)),
            ]
            c_in = c
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.embed = nn.Sequential(nn.Flatten(), nn.Linear(c_in, embed_dim), nn.BatchNorm1d(embed_dim),
                                   nn.ReLU(inplace=True))
        self.drop = nn.Dropout(head_dropout)
        self.classifier = nn.Linear(embed_dim, num_classes)
        self.embed_dim = embed_dim

    def forward(self, x: torch.Tensor, return_embedding: bool = False):
        z = self.embed(self.pool(self.features(x)))
        logits = self.classifier(self.drop(z))
        if return_embedding:
            return logits, z
        return logits


def inference_copy(net: FaceCNN) -> FaceCNN:
    """A copy of ``net`` (eval mode) for fast CPU inference: batch norm folded into the preceding convolutions,
    dropout removed, channels-last memory format.  Same outputs (to ~1e-6); 1.5-2x faster on CPU for the batches of
    one frame (emotion-bench, docs/BENCHMARKS.md).  Feed it channels-last input."""
    import copy
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    fast = copy.deepcopy(net).eval()
    layers, out, i = list(fast.features), [], 0
    while i < len(layers):
        layer = layers[i]
        if isinstance(layer, nn.Conv2d) and i + 1 < len(layers) and isinstance(layers[i + 1], nn.BatchNorm2d):
            out.append(fuse_conv_bn_eval(layer, layers[i + 1]))
            i += 2
            continue
        if not isinstance(layer, (nn.Dropout, nn.Dropout2d)):
            out.append(layer)
        i += 1
    fast.features = nn.Sequential(*out)
    return fast.to(memory_format=torch.channels_last)


class FaceModel:
    """A loaded face model: numpy crops in, probabilities and embeddings out.

    ``calibrated`` (default): the logits are divided by the checkpoint's ``calibration["temperature"]`` (fitted on
    held-out faces) before the softmax, so that the top probability means what it says; false = raw softmax.
    ``fast`` (default): on the CPU, predictions run on :func:`inference_copy` of ``net`` (made at load time; call
    :meth:`refresh` after changing ``net``'s weights); on other devices ``net`` itself runs.
    ``int8``: on the CPU, predictions run on the int8 network built from the checkpoint's stored activation ranges
    (``emotion-train quantize-face``, :mod:`.quant`).  A file without them, or a torch build without a quantized
    engine, runs the float network and says why in ``int8_fallback``; ranges that do not fit the network fail to
    load, naming the file.  Other devices ignore ``int8``."""

    def __init__(self, path: str, device: str = "auto", flip_tta: bool = True, fast: bool = True,
                 calibrated: bool = True, flip_tta_max_faces: int = 0, int8: bool = False):
        ckpt = load_checkpoint(path, "face")
        if ckpt.get("arch") != ARCH:
            raise ModelFileError(f"face model file {path!r}: unknown architecture {ckpt.get('arch')!r}")
        spec = ckpt.get("input", {})
        if int(spec.get("channels", 1)) != 1:
            raise ModelFileError(f"face model file {path!r}: expects {spec.get('channels')} channels, not 1")
        self.path = path
        self.input_size = int(spec.get("size", 48))
        self.mean = float(spec.get("mean", 0.5))
        self.std = float(spec.get("std", 0.25))
        cfg = ckpt.get("config", {}).get("model", {})
        self.net = FaceCNN(widths=tuple(cfg.get("widths", (32, 64, 128, 256))),
                           embed_dim=int(cfg.get("embed_dim", 256)))
        try:
            self.net.load_state_dict(ckpt["state_dict"])
        except RuntimeError as exc:
            raise ModelFileError(f"face model file {path!r} does not fit {ARCH}: {exc}") from exc
        self.device = resolve_device(device)
        self.net.to(self.device).eval()
        self.flip_tta = flip_tta
        # mirror averaging only for batches of at most this many crops (0: always): many faces at once keep the rate
        self.flip_tta_max_faces = max(0, int(flip_tta_max_faces))
        self.metrics = ckpt.get("metrics", {})
        # temperature scaling fitted on held-out faces (``emotion-train calibrate-face``; 1 = uncalibrated file)
        self.calibration = dict(ckpt.get("calibration") or {})
        self.temperature = 1.0
        if calibrated:
            try:
                t = float(self.calibration.get("temperature", 1.0))
            except (TypeError, ValueError):
                t = float("nan")
            if not (math.isfinite(t) and t > 0):
                raise ModelFileError(f"face model file {path!r}: calibration temperature {t} is not > 0")
            self.temperature = t
        self.embed_dim = self.net.embed_dim
        self.fast = bool(fast)
        self._fast_net = None
        self.int8 = bool(int8)
        self.int8_fallback: Optional[str] = None  # why int8 was asked for and the float network runs
        self._int8_state = ckpt.get("int8") if self.int8 else None
        if self.int8 and self.device.type == "cpu" and not (self._int8_state or {}).get("observers"):
            self.int8_fallback = (f"no int8 activation ranges in {path} (emotion-train quantize-face --face-model "
                                  f"{path} --data <its training faces>); running the float network")
            self._int8_state = None
        self._int8_net = None
        self.refresh()

    @property
    def runs_int8(self) -> bool:
        """Whether predictions on this device run the int8 network."""
        return self._int8_net is not None and self.device.type == "cpu"

    def refresh(self) -> None:
        """Rebuild the CPU network after ``net``'s weights changed: the int8 network when asked for and possible,
        else the fast float copy (the CPU runs one of them, never both)."""
        self._int8_net = None
        if self.int8 and self.device.type == "cpu" and self._int8_state is not None:
            from .quant import build_int8
            try:
                self._int8_net = build_int8(self.net, self._int8_state)
            except RuntimeError as exc:  # no quantized engine in this torch build
                self.int8_fallback = f"int8 unavailable ({exc}); running the float network"
            except ValueError as exc:
                raise ModelFileError(f"face model file {self.path!r}: int8 ranges unusable: {exc}") from exc
        self._fast_net = inference_copy(self.net).cpu() if self.fast and self._int8_net is None else None

    @classmethod
    def for_node(cls, path: str, params: Mapping[str, Any], device: str = "auto") -> "FaceModel":
        """The model as the face node builds it from its parameters (``flip_tta``, ``flip_tta_max_faces``; e.g.
        config/emotion.yaml's ``face_node`` block): one place for the node, ``emotion-bag evaluate``, the fusion
        replay and the bench."""
        return cls(path, device=device, flip_tta=bool(params.get("flip_tta", True)),
                   flip_tta_max_faces=int(params.get("flip_tta_max_faces", 0)), int8=bool(params.get("int8", True)))

    def to_tensor(self, crops: np.ndarray) -> torch.Tensor:
        """``crops``: uint8 or float in [0, 1], shape (N, S, S)."""
        x = torch.as_tensor(np.ascontiguousarray(crops))
        if x.dtype == torch.uint8:
            x = x.float().div_(255.0)
        x = x.float()
        return ((x - self.mean) / self.std).unsqueeze(1)

    @torch.inference_mode()
    def predict(self, crops: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """Batch of aligned grey crops → (probabilities (N, 7), embeddings (N, D))."""
        if len(crops) == 0:
            return np.zeros((0, NUM_LABELS), np.float32), np.zeros((0, self.embed_dim), np.float32)
        x = self.to_tensor(crops).to(self.device)
        n = x.shape[0]
        flip = self.flip_tta and (self.flip_tta_max_faces == 0 or n <= self.flip_tta_max_faces)
        if flip:
            x = torch.cat([x, torch.flip(x, dims=[3])], 0)
        if self.runs_int8:
            logits, emb = self._int8_net(x)
        elif self._fast_net is not None and self.device.type == "cpu":
            logits, emb = self._fast_net(x.contiguous(memory_format=torch.channels_last), return_embedding=True)
        else:
            logits, emb = self.net(x, return_embedding=True)
        probs = torch.softmax(logits.float() / self.temperature, dim=1)
        if flip:
            probs = 0.5 * (probs[:n] + probs[n:])
            emb = 0.5 * (emb[:n] + emb[n:])
        return probs.cpu().numpy().astype(np.float32), emb.float().cpu().numpy().astype(np.float32)

    def info(self) -> Dict[str, object]:
        return {"path": self.path, "arch": ARCH, "device": str(self.device), "input_size": self.input_size,
                "temperature": self.temperature, "int8": self.runs_int8}

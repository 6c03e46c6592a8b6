"""The shipped voice model on a GPU gives what it gives on the CPU (runs only where CUDA is available: the voice
node's ``device: auto`` picks the GPU there, and its frozen-encoder members move between CPU and GPU)."""
import os

import numpy as np
import pytest
import torch

from emotion_ros import paths
from emotion_ros.core.voice.model import VoiceModel

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def _utterances(n=4, rate=16000):
    rng = np.random.default_rng(0)
    t = np.arange(int(1.5 * rate)) / rate
    out = []
    for k in range(n):
        f0 = 110 + 40 * k
        voiced = sum(np.sin(2 * np.pi * f0 * h * t * (1 + 0.1 * np.sin(2 * np.pi * 3 * t))) / h for h in range(1, 8))
        out.append((0.1 * voiced * (0.5 + 0.5 * np.sin(np.pi * t / t[-1])) + 0.003 * rng.normal(size=t.size))
                   .astype(np.float32))
    return out


@pytest.mark.skipif(not os.path.isfile(paths.model_path("voice.pt")), reason="models/voice.pt missing")
def test_shipped_voice_model_on_cuda_matches_the_cpu():
    cpu, gpu = VoiceModel(paths.model_path("voice.pt"), "cpu"), VoiceModel(paths.model_path("voice.pt"), "cuda")
    ref_c, ref_g = cpu.speaker_normaliser(), gpu.speaker_normaliser()
    for k, w in enumerate(_utterances()):          # the first abstains in speaker-normalised members, the rest not
        pc, ec = cpu.predict(w, ref_c, float(k))
        pg, eg = gpu.predict(w, ref_g, float(k))
        assert np.allclose(pc, pg, atol=1e-2), (k, pc, pg)     # TF32 convolutions on the GPU
        assert np.allclose(ec, eg, atol=1e-2)

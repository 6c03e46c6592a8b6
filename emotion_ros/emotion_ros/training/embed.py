"""Run the unimodal models the way the nodes do, for evaluation and fusion training.

Faces: detection + alignment of ``core.face.align`` (the node's code), then the
batched face model.  Voices: the voice node's pipeline (``core.voice.pipeline``:
segmenter, trimming, features, model) on each utterance, averaged by duration.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Tuple

import numpy as np
from tqdm import tqdm

from ..core.voice.features import trim_silence


@dataclass
class Outputs:
    probs: np.ndarray        # (N, 7)
    emb: np.ndarray          # (N, D)


def face_outputs(model, crops: np.ndarray, batch: int = 256, progress: bool = False) -> Outputs:
    probs, embs = [], []
    it = range(0, len(crops), batch)
    for i in (tqdm(it, desc="faces", mininterval=10) if progress else it):
        p, e = model.predict(crops[i:i + batch])
        probs.append(p)
        embs.append(e)
    if not probs:
        return Outputs(np.zeros((0, 7), np.float32), np.zeros((0, model.embed_dim), np.float32))
    return Outputs(np.concatenate(probs), np.concatenate(embs))


def voice_output(pipeline, wave: np.ndarray) -> Tuple[np.ndarray, np.ndarray, bool]:
    """One recording -> duration-weighted (probs, embedding) over the utterances the voice node's
    segmenter finds (each trimmed, as the node does), and whether any was found.  With none, the
    trimmed whole recording is used."""
    results = pipeline.classify_segments(pipeline.segment_wave(wave))
    if not results:
        p, e = pipeline.model.predict(trim_silence(wave))
        return np.asarray(p, np.float32), np.asarray(e, np.float32), False
    w = np.array([max(r.duration, 1e-3) for r in results], np.float64)
    w /= w.sum()
    probs = (w @ np.stack([r.probs for r in results])).astype(np.float32)
    emb = (w @ np.stack([r.embedding for r in results])).astype(np.float32)
    return probs, emb, True


def voice_outputs(model, waves: List[np.ndarray], progress: bool = False) -> Tuple[Outputs, int]:
    """Voice model outputs through the node's pipeline (:class:`core.voice.pipeline.VoicePipeline`)."""
    from ..core.voice.pipeline import VoicePipeline

    pipeline = VoicePipeline(model)
    probs, embs, not_found = [], [], 0
    for w in (tqdm(waves, desc="voices", mininterval=10) if progress else waves):
        p, e, found = voice_output(pipeline, w)
        probs.append(p)
        embs.append(e)
        not_found += 0 if found else 1
    if not probs:
        return Outputs(np.zeros((0, 7), np.float32), np.zeros((0, model.embed_dim), np.float32)), 0
    return Outputs(np.stack(probs), np.stack(embs)), not_found

"""Run the unimodal models the way the nodes do, for evaluation and fusion training.

Faces: detection + alignment of ``core.face.align`` (the node's code), then the
batched face model.  Voices: the voice node's segmenter (``core.voice.segment``)
and features, then the voice model on each segment, averaged by duration.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Tuple

import numpy as np
from tqdm import tqdm

from ..core.voice.features import SAMPLE_RATE, trim_silence


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


def voice_segments(wave: np.ndarray) -> Tuple[List[np.ndarray], bool]:
    """Utterances found by the voice node's segmenter; (segments, found)."""
    try:
        from ..core.voice.segment import segment_offline
    except ImportError:  # segmenter not available: trimmed whole wave
        segment_offline = None
    if segment_offline is not None:
        segs = [s.samples for s in segment_offline(wave, SAMPLE_RATE) if len(s.samples)]
        if segs:
            return segs, True
    return [trim_silence(wave)], False


def voice_output(model, wave: np.ndarray) -> Tuple[np.ndarray, np.ndarray, bool]:
    """One recording -> duration-weighted (probs, embedding), and whether speech was segmented."""
    segs, found = voice_segments(wave)
    ps, es, ws = [], [], []
    for s in segs:
        p, e = model.predict(s)
        ps.append(p)
        es.append(e)
        ws.append(max(len(s), 1))
    w = np.asarray(ws, np.float32) / float(sum(ws))
    return (w @ np.stack(ps)).astype(np.float32), (w @ np.stack(es)).astype(np.float32), found


def voice_outputs(model, waves: List[np.ndarray], progress: bool = False) -> Tuple[Outputs, int]:
    probs, embs, not_found = [], [], 0
    for w in (tqdm(waves, desc="voices", mininterval=10) if progress else waves):
        p, e, found = voice_output(model, w)
        probs.append(p)
        embs.append(e)
        not_found += 0 if found else 1
    if not probs:
        return Outputs(np.zeros((0, 7), np.float32), np.zeros((0, model.embed_dim), np.float32)), 0
    return Outputs(np.stack(probs), np.stack(embs)), not_found

"""Run the unimodal models the way the nodes do, for evaluation and fusion training.

Faces: detection + alignment of ``core.face.align`` (the node's code), then the
batched face model.  Voices: the voice node's pipeline (``core.voice.pipeline``:
segmenter, trimming, features, model) on each utterance, averaged by duration; a
recording at another rate or channel count goes in as the node receives it (blocks
through ``VoicePipeline.push``: its downmix and streaming resampler).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional, Sequence, Tuple, Union

import numpy as np
from tqdm import tqdm

from ..core.voice.features import SAMPLE_RATE, to_mono_16k, trim_silence


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


def _summarise(model, results, wave16: Optional[np.ndarray], speaker=None) -> Tuple[np.ndarray, np.ndarray, bool]:
    """Duration-weighted (probs, embedding) of the utterance results, and True; with none, the model on the
    trimmed whole recording (16 kHz mono ``wave16``, needed only then), and False."""
    if not results:
        p, e = model.predict(trim_silence(wave16), speaker)
        return np.asarray(p, np.float32), np.asarray(e, np.float32), False
    w = np.array([max(r.duration, 1e-3) for r in results], np.float64)
    w /= w.sum()
    probs = (w @ np.stack([r.probs for r in results])).astype(np.float32)
    emb = (w @ np.stack([r.embedding for r in results])).astype(np.float32)
    return probs, emb, True


def voice_output(pipeline, wave: np.ndarray) -> Tuple[np.ndarray, np.ndarray, bool]:
    """One recording -> duration-weighted (probs, embedding) over the utterances the voice node's
    segmenter finds (each trimmed, as the node does), and whether any was found.  With none, the
    trimmed whole recording is used."""
    return _summarise(pipeline.model, pipeline.classify_segments(pipeline.segment_wave(wave)), wave,
                      pipeline.speaker)


def voice_output_stream(pipeline, pcm: np.ndarray, rate: int,
                        block_s: float = 0.1) -> Tuple[np.ndarray, np.ndarray, bool]:
    """As :func:`voice_output`, for a recording as the voice node receives it: ``pcm`` (n,) or (n, channels) at
    ``rate``, pushed in blocks of ``block_s`` (the microphone node's default) through a fresh stream of
    ``pipeline`` (downmix, streaming resampler, segmenter), then flushed; the utterances (not the sliding
    windows) are averaged by duration."""
    from ..core.voice.pipeline import VoicePipeline
    from ..core.voice.segment import Segmenter

    x = np.asarray(pcm, np.float32)
    stream = VoicePipeline(pipeline.model, segmenter=Segmenter(**pipeline.segmenter.config), trim=pipeline.trim,
                           quality=pipeline.quality)
    stream.speaker = pipeline.speaker        # the same speaker reference goes on across recordings
    block = max(1, int(round(block_s * rate)))
    results = []
    for i in range(0, x.shape[0], block):
        results += stream.push(x[i:i + block], rate, i / rate)
    results = [r for r in results + stream.flush() if not r.partial]
    fallback = to_mono_16k(x, rate) if not results else None  # only needed when no utterance was found
    return _summarise(pipeline.model, results, fallback, stream.speaker)


Wave = Union[np.ndarray, Tuple[np.ndarray, int]]


def speaker_order(speakers: Sequence[str], seed: int) -> np.ndarray:
    """The order in which :func:`voice_outputs` hears recordings of several speakers: one speaker after another
    (in order of first appearance), each speaker's recordings in a random order drawn from ``seed``."""
    rng = np.random.default_rng(seed)
    first = {}
    for i, s in enumerate(speakers):
        first.setdefault(s, i)
    groups = {s: [i for i, t in enumerate(speakers) if t == s] for s in first}
    return np.array([i for s in sorted(first, key=first.get) for i in rng.permutation(groups[s])], np.int64)


def voice_outputs(model, waves: Iterable[Wave], progress: bool = False,
                  speakers: Optional[Sequence[str]] = None) -> Tuple[Outputs, int]:
    """Voice model outputs through the node's pipeline (:class:`core.voice.pipeline.VoicePipeline`), in the order
    given (outputs keep that order).

    ``waves``: 16 kHz mono recordings, or ``(samples, rate)`` pairs (any rate, (n,) or (n, channels)), which
    go through :func:`voice_output_stream` unless they are 16 kHz mono already.  ``speakers`` (one per wave):
    a model with a running speaker reference starts a fresh one whenever the speaker changes, as the node does
    after a pause (give the waves in :func:`speaker_order` to hear each speaker's recordings together); without
    it one reference runs over all of them."""
    from ..core.voice.pipeline import VoicePipeline

    pipeline = VoicePipeline(model)
    probs, embs, not_found = [], [], 0
    for k, w in enumerate(tqdm(waves, desc="voices", mininterval=10) if progress else waves):
        if speakers is not None and pipeline.speaker is not None and k and speakers[k] != speakers[k - 1]:
            pipeline.speaker.reset()
        if isinstance(w, tuple):
            pcm, rate = w
            if int(rate) == SAMPLE_RATE and np.ndim(pcm) == 1:
                p, e, found = voice_output(pipeline, np.asarray(pcm, np.float32))
            else:
                p, e, found = voice_output_stream(pipeline, pcm, int(rate))
        else:
            p, e, found = voice_output(pipeline, w)
        probs.append(p)
        embs.append(e)
        not_found += 0 if found else 1
    if not probs:
        return Outputs(np.zeros((0, 7), np.float32), np.zeros((0, model.embed_dim), np.float32)), 0
    return Outputs(np.stack(probs), np.stack(embs)), not_found


def voice_outputs_by_speaker(model, waves: Sequence[Wave], speakers: Sequence[str], seed: int = 0,
                             progress: bool = False) -> Tuple[Outputs, int]:
    """:func:`voice_outputs` with each speaker's recordings heard together, in :func:`speaker_order` (a fresh
    speaker reference per speaker, as the node has for one person after another); the outputs come back in the
    order of ``waves``."""
    if len(waves) != len(speakers):
        raise ValueError(f"{len(waves)} recordings but {len(speakers)} speakers")
    order = speaker_order(speakers, seed)
    out, not_found = voice_outputs(model, [waves[i] for i in order], progress, [speakers[i] for i in order])
    back = np.empty_like(order)
    back[order] = np.arange(len(order))
    return Outputs(out.probs[back], out.emb[back]), not_found

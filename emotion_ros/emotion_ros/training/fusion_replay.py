"""Replay fusion settings on labelled bags quickly: run the face and voice pipelines once, then fusion many times.

``collect(bag)`` runs what ``emotion-bag evaluate`` runs in raw mode (the face node's pipeline on every frame, the
voice node's streaming pipeline on every audio chunk, settings from config/emotion.yaml) and keeps every face result
(with its aligned crop, so that a face model or temperature can be swapped later) and voice result, each with the
time it became available.  ``replay(cache, spans, fusion_kwargs)`` feeds them into :class:`TemporalFusion` at the
fusion node's rate and scores the timeline with ``emotion-bag evaluate``'s own scoring (``tools.bag_evaluate.score``),
so the figures are those of ``emotion-bag evaluate`` for the same settings.

Used by ``emotion-train fusion --select-clips`` (learned model vs reliability-weighted average) and
``scripts/tune_fusion.py``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

import numpy as np

from ..core.fusion import FusionModel, TemporalFusion
from ..core.labels import LABELS


@dataclass
class ClipCache:
    name: str
    start_ns: int
    end_ns: int
    face_t: np.ndarray        # (F,) frame stamp (s)
    face_id: List[str]
    face_area: np.ndarray     # (F,)
    face_crop: np.ndarray     # (F, 48, 48) uint8
    face_probs: np.ndarray    # (F, 7)
    face_emb: np.ndarray      # (F, Df)
    voice_arrive: np.ndarray  # (V,) time the result became available (the audio chunk's stamp)
    voice_start: np.ndarray
    voice_end: np.ndarray
    voice_probs: np.ndarray   # (V, 7)
    voice_emb: np.ndarray     # (V, Dv)
    voice_active: np.ndarray  # (V,) bool

    def save(self, path: str) -> None:
        np.savez_compressed(path, name=self.name, start_ns=self.start_ns, end_ns=self.end_ns, face_t=self.face_t,
                            face_id=np.asarray(self.face_id, dtype=str), face_area=self.face_area,
                            face_crop=self.face_crop, face_probs=self.face_probs, face_emb=self.face_emb,
                            voice_arrive=self.voice_arrive, voice_start=self.voice_start, voice_end=self.voice_end,
                            voice_probs=self.voice_probs, voice_emb=self.voice_emb, voice_active=self.voice_active)

    @classmethod
    def load(cls, path: str) -> "ClipCache":
        z = np.load(path, allow_pickle=False)
        return cls(str(z["name"]), int(z["start_ns"]), int(z["end_ns"]), z["face_t"], [str(x) for x in z["face_id"]],
                   z["face_area"], z["face_crop"], z["face_probs"], z["face_emb"], z["voice_arrive"],
                   z["voice_start"], z["voice_end"], z["voice_probs"], z["voice_emb"], z["voice_active"])


class _RecordingModel:
    """A face model proxy that remembers the crops of the last ``predict`` call."""

    def __init__(self, model):
        self._m = model
        self.last = None

    def predict(self, crops):
        self.last = np.asarray(crops, np.uint8).copy()
        return self._m.predict(crops)

    def __getattr__(self, name):
        return getattr(self._m, name)


def collect(bag: str, face_model: str, voice_model: str, name: Optional[str] = None) -> ClipCache:
    """Run the face and voice pipelines over a bag made by ``emotion-bag from-media``."""
    from ..core.face.model import FaceModel
    from ..core.face.pipeline import build_pipeline
    from ..core.voice.model import VoiceModel
    from ..core.voice.pipeline import VoicePipeline
    from ..core.voice.segment import Segmenter, segmenter_kwargs
    from ..ros import convert
    from ..tools.bag_common import BagFile, stamp_ns
    from ..tools.bag_evaluate import _load_yaml_params

    fparams = _load_yaml_params("emotion.yaml", "face_node")
    vparams = _load_yaml_params("emotion.yaml", "voice_node")
    rec = _RecordingModel(FaceModel.for_node(face_model, fparams, device="cpu"))
    face_pipe = build_pipeline(rec, fparams)
    voice_pipe = VoicePipeline(VoiceModel(voice_model, device="cpu"), segmenter=Segmenter(**segmenter_kwargs(vparams)),
                               speaker_reset_s=float(vparams.get("speaker_reset_s", 60.0)))
    f_t, f_id, f_area, f_crop, f_p, f_e = [], [], [], [], [], []
    v_rows = []
    rate, ch, fmt = 16000, 1, "S16LE"

    def add_voice(results, t):
        for r in results:
            v_rows.append((t, r.start_t, r.end_t, r.probs, r.embedding, r.voice_activity))

    with BagFile(bag) as bf:
        conns = bf.connections_for(["image_raw", "audio", "audio_info"])
        start_ns, end_ns = bf.start_ns, bf.end_ns
        for conn, t_ns, raw in bf.messages(conns):
            msg = bf.deserialize(raw, conn.msgtype, conn.topic)
            if conn.msgtype.endswith("AudioInfo"):
                rate, ch, fmt = int(msg.sample_rate), int(msg.channels), str(msg.sample_format or "S16LE")
                continue
            t = stamp_ns(msg.header.stamp) * 1e-9 if stamp_ns(msg.header.stamp) > 0 else t_ns * 1e-9
            if conn.msgtype.endswith("Image"):
                frame = convert.image_to_numpy(msg, "bgr8")
                rec.last = None
                faces = face_pipe.process(frame, t)
                for k, r in enumerate(faces):
                    f_t.append(t)
                    f_id.append(r.id)
                    f_area.append(float(r.box[2]) * float(r.box[3]))
                    f_crop.append(rec.last[k] if rec.last is not None and k < len(rec.last)
                                  else np.zeros((48, 48), np.uint8))
                    f_p.append(r.probs)
                    f_e.append(r.embedding)
            else:
                pcm = convert.pcm_to_float(bytes(msg.audio.data), fmt, ch)
                add_voice(voice_pipe.push(pcm, rate, t), t)
        add_voice(voice_pipe.flush(), end_ns * 1e-9)
    dv = voice_pipe.model.embed_dim
    df = face_pipe.model.embed_dim
    return ClipCache(
        name or os.path.basename(os.path.dirname(os.path.abspath(bag))), start_ns, end_ns,
        np.asarray(f_t, np.float64), f_id, np.asarray(f_area, np.float64),
        np.asarray(f_crop, np.uint8).reshape(-1, 48, 48), np.asarray(f_p, np.float32).reshape(-1, len(LABELS)),
        np.asarray(f_e, np.float32).reshape(-1, df),
        np.asarray([r[0] for r in v_rows], np.float64), np.asarray([r[1] for r in v_rows], np.float64),
        np.asarray([r[2] for r in v_rows], np.float64),
        np.asarray([r[3] for r in v_rows], np.float32).reshape(-1, len(LABELS)),
        np.asarray([r[4] for r in v_rows], np.float32).reshape(-1, dv), np.asarray([r[5] for r in v_rows], bool))


def replay(cache: ClipCache, spans, fusion_kwargs: Dict[str, Any], model: Optional[FusionModel] = None,
           step: float = 0.1, voice_transform=None) -> Dict[str, Any]:
    """Fusion over the cached results, stepped like ``emotion-bag evaluate``, scored with its ``score``.

    ``voice_transform(probs, emb) -> (probs, emb)``: change the voice evidence (e.g. wrong labels) for stress tests."""
    from ..tools.bag_evaluate import NONE, Timeline, score

    fusion = TemporalFusion(model, **fusion_kwargs)
    events = [(float(t), 0, i) for i, t in enumerate(cache.face_t)]
    events += [(float(t), 1, i) for i, t in enumerate(cache.voice_arrive)]
    events.sort()
    tl = Timeline()
    t0 = cache.start_ns * 1e-9
    k, j = 1, 0
    end = cache.end_ns * 1e-9
    while t0 + k * step <= end + 1e-9:
        now = t0 + k * step
        while j < len(events) and events[j][0] < now - 1e-9:
            _, kind, i = events[j]
            if kind == 0:
                fusion.add_face(cache.face_t[i], cache.face_id[i], cache.face_area[i], cache.face_probs[i],
                                cache.face_emb[i])
            else:
                p, e = cache.voice_probs[i], cache.voice_emb[i]
                if voice_transform is not None:
                    p, e = voice_transform(p, e)
                fusion.add_voice(cache.voice_start[i], cache.voice_end[i], p, e,
                                 voice_activity=bool(cache.voice_active[i]))
            j += 1
        states = fusion.estimate(now)
        pr = states[0] if states else None

        def am(p):
            return NONE if p is None else int(np.argmax(p))
        tl.add(k * step, NONE if pr is None else LABELS.index(pr.emotion), am(pr.face_probs if pr else None),
               am(pr.voice_probs if pr else None), float(pr.confidence) if pr else 0.0)
        k += 1
    return score(tl, spans, step)

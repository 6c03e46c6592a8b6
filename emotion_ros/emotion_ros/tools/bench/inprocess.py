"""In-process measurements: the voice pipeline's real-time factor on the bench audio, the face node's per-frame
work step by step (``--profile``)."""
from __future__ import annotations

import collections
import time
from typing import Dict, Optional, Sequence

import numpy as np

from .scene import scene_frames
from .speech import SpeechStream
from .stats import pct


def voice_rtf_inprocess(model_path: str, speech: SpeechStream, device: str = "cpu", threads: int = 1,
                        chunk_s: float = 0.02, node_params: Optional[Dict[str, object]] = None) -> Dict[str, object]:
    """Run VoicePipeline on the bench audio in ``chunk_s`` chunks: processing time / audio duration.

    ``node_params``: voice_node parameters whose segmenter settings (``window_s``, ``hop_s``, the VAD's ...) the
    pipeline takes, so that it cuts the audio as the node does (the node's defaults are config/emotion.yaml's)."""
    import torch
    from emotion_ros.core.voice.model import VoiceModel
    from emotion_ros.core.voice.pipeline import VoicePipeline
    from emotion_ros.core.voice.segment import Segmenter, segmenter_kwargs
    if threads > 0:
        torch.set_num_threads(threads)
    model = VoiceModel(model_path, device=device)
    spent = {"features_s": 0.0, "model_s": 0.0}

    def timed(fn, key):
        def run(*a, **kw):
            t0 = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                spent[key] += time.perf_counter() - t0
        return run
    # the pipeline calls model.predict -> self.features + self.predict_features: time the two parts
    model.features = timed(model.features, "features_s")
    model.predict_features = timed(model.predict_features, "model_s")
    model.predict(np.zeros(speech.rate // 2, np.float32))  # warm-up, as the node does at configure
    spent["features_s"] = spent["model_s"] = 0.0
    pipe = VoicePipeline(model, segmenter=Segmenter(**segmenter_kwargs(node_params or {})))
    n = int(round(chunk_s * speech.rate))
    results = []
    per_result = []
    for i in range(0, speech.wave.size - n + 1, n):
        t0 = time.perf_counter()
        r = pipe.push(speech.wave[i:i + n], speech.rate, i / speech.rate)
        if r:
            per_result.append(time.perf_counter() - t0)
        results += r
    results += pipe.flush()
    finals = [r for r in results if not r.partial]
    other = pipe.processing_s - spent["features_s"] - spent["model_s"]
    return {"rtf": round(pipe.real_time_factor, 4), "audio_s": round(pipe.audio_s, 2),
            "processing_s": round(pipe.processing_s, 3),
            "breakdown_s": {"features": round(spent["features_s"], 3), "model": round(spent["model_s"], 3),
                            "segmenter_resample_trim": round(other, 3)},
            "segment_audio_s": round(sum(r.duration for r in results), 2),
            "segments": len(results), "finals": len(finals), "partials": len(results) - len(finals),
            "utterances": len(speech.utterances), "segment_ms_p50": pct([1e3 * v for v in per_result], 50),
            "segment_ms_max": round(1e3 * max(per_result), 2) if per_result else None}


def profile_face(model_path: str, n_frames: int = 90, device: str = "cpu", threads: int = 1,
                 faces: Sequence[int] = (1, 5)) -> Dict[str, object]:
    """Per-frame time of each step of the face node's work, in-process, with the node's default parameters."""
    import torch
    from rclpy.serialization import serialize_message

    from emotion_ros.core.face.model import FaceModel
    from emotion_ros.core.face.pipeline import build_pipeline
    from emotion_ros.nodes.face import PARAMS, FaceNode
    from emotion_ros.ros.convert import image_to_numpy, numpy_to_image, stamp_to_sec

    import cv2
    p = {k: v[0] for k, v in PARAMS.items()}
    if threads > 0:
        torch.set_num_threads(threads)
    if int(p.get("opencv_threads", 0)) > 0:
        cv2.setNumThreads(int(p["opencv_threads"]))  # as the node does
    out: Dict[str, object] = {"params": {k: p[k] for k in ("detector", "detect_max_width", "full_detect_every",
                                                            "async_full_detect", "flip_tta", "flip_tta_max_faces",
                                                            "min_face_frac",
                                                            "haar_min_neighbors")},
                              "torch_threads": torch.get_num_threads(), "opencv_threads": cv2.getNumThreads()}

    # the other precision too, when the model file has int8 ranges (face node parameter int8)
    default_int8 = bool(p["int8"])
    from emotion_ros.core.modelio import load_checkpoint
    other_precision = "int8" in load_checkpoint(model_path, "face")
    out["precision"] = "int8" if default_int8 and other_precision else "float32"

    def pipeline(full_every: int, flip: bool, background: bool = False, int8: bool = default_int8):
        model = FaceModel.for_node(model_path, {**p, "flip_tta": flip, "int8": int8}, device=device)
        return build_pipeline(model, {**p, "full_detect_every": full_every}, background=background)

    def node_frame(pipe, msg):
        """The message as the face node converts it: BGR for a detector that wants colour, else grey."""
        return image_to_numpy(msg, "bgr8" if pipe.detector.wants_color else "mono8")

    def stats(v):
        return {"mean": round(float(np.mean(v)), 3), "p50": pct(v, 50), "p95": pct(v, 95)}

    for nf in faces:
        frames = scene_frames(nf, 30)
        msgs = [numpy_to_image(f, "bgr8", stamp=1000.0 + i / 30.0, frame_id="camera") for i, f in enumerate(frames)]
        every, flip_default, bg_default = int(p["full_detect_every"]), bool(p["flip_tta"]), bool(p["async_full_detect"])
        variants = [("default", every, flip_default, bg_default, default_int8),
                    ("in_line_full_detect", every, flip_default, False, default_int8),
                    ("full_detect_every_frame", 1, flip_default, False, default_int8),
                    ("no_flip_tta", every, False, bg_default, default_int8)]
        if other_precision:
            variants.append(("float32" if default_int8 else "int8", every, flip_default, bg_default,
                             not default_int8))
        for label, full_every, flip, bg, int8 in variants:
            pipe = pipeline(full_every, flip, bg, int8)
            rec = collections.defaultdict(list)
            for i in range(n_frames + 10):
                msg = msgs[i % len(msgs)]
                t0 = time.perf_counter()
                frame = node_frame(pipe, msg)
                t1 = time.perf_counter()
                res = pipe.process(frame, stamp_to_sec(msg.header.stamp) + i / 30.0)
                t2 = time.perf_counter()
                out_msg = FaceNode.to_message(msg, res, True)
                t3 = time.perf_counter()
                serialize_message(out_msg)
                t4 = time.perf_counter()
                if i < 10:  # warm-up
                    continue
                tm = pipe.timings
                rec["convert_ms"].append(1e3 * (t1 - t0))
                rec["gray+detect_ms"].append(tm["detect_ms"])
                rec["track_ms"].append(tm["track_ms"])
                rec["align_ms"].append(tm["align_ms"])
                rec["model_ms"].append(tm["model_ms"])
                rec["message_ms"].append(1e3 * (t3 - t2))
                rec["serialize_ms"].append(1e3 * (t4 - t3))
                rec["total_ms"].append(1e3 * (t4 - t0))
                rec["faces"].append(tm["faces"])
            pipe.close()
            key = f"face_{nf}" + ("" if label == "default" else f"_{label}")
            out[key] = {k: stats(v) for k, v in rec.items()}
        # detector alone, whole frame vs. regions
        pipe = pipeline(1, True)
        frame = node_frame(pipe, msgs[0])
        boxes = [d.box for d in pipe.detector.detect(frame)]
        full, reg = [], []
        for _ in range(30):
            t0 = time.perf_counter()
            pipe.detector.detect(frame)
            t1 = time.perf_counter()
            pipe.detector.detect_regions(frame, boxes)
            t2 = time.perf_counter()
            full.append(1e3 * (t1 - t0))
            reg.append(1e3 * (t2 - t1))
        out[f"face_{nf}_detector"] = {"faces_found": len(boxes), "full_frame_ms": stats(full),
                                       "regions_ms": stats(reg)}
        # model alone by batch size
        model = FaceModel(model_path, device=device, flip_tta=True, int8=default_int8)
        crops = np.random.default_rng(0).integers(0, 255, (nf, model.input_size, model.input_size), np.uint8)
        times = []
        for i in range(40):
            t0 = time.perf_counter()
            model.predict(crops)
            if i >= 5:
                times.append(1e3 * (time.perf_counter() - t0))
        out[f"face_{nf}_model_batch"] = stats(times)
    return out

"""``emotion-bag evaluate``: score emotion_ros on a bag against labelled time spans, offline and without DDS.

Two modes:

- **raw** (the bag has ``image_raw`` and/or ``audio``): the messages are decoded with rosbags and run through the
  same core the nodes use - ``FacePipeline.process(frame, t)`` for every image (``--max-fps`` thins them),
  ``VoicePipeline.push(pcm, rate, t)`` for every audio chunk, results into ``TemporalFusion``
  (``add_face`` / ``add_voice``), and ``TemporalFusion.estimate(now)`` stepped every ``--step`` s of bag time (the
  fusion node's rate). Pipelines are configured from the package's config/emotion.yaml
  (the nodes' defaults). Message time is the header stamp (receive time when the stamp is zero); a fusion step at
  time ``now`` sees the results of every message received up to ``now``, as in the live system.
- **recorded** (no raw sensor data, but ``emotion/state`` / ``emotion/faces`` / ``emotion/voice`` of a live run):
  the recorded outputs are scored: at each step the newest message received at most ``--hold`` s before.

Labels CSV: ``start,end,label[,person]`` with times in seconds from the bag start (absolute stamps when
start > 1e9); a header row is optional; labels go through ``core.labels.normalise``; unknown ones are reported
and skipped. With a person column, that person's state (``emotion/states`` / fusion person id) is scored, else the
primary person's.

Figures (per sample = one fusion step inside a labelled span; "none" = no estimate at that step, always wrong):
accuracy / macro-F1 / per-class recall / confusion (``training.common.metrics_from_predictions``), per-span
majority accuracy, detection delay (median over spans of the time from span start until the fused top emotion
first equals the label; spans where it never does are counted in ``n_undetected``), flips per minute (changes of the
reported top emotion over the whole stepped timeline), the labels' own change rate (``label_changes_per_min``:
changes between consecutive spans of a person with different labels per minute of labelled time) and the ratio of
the two rates (``flips_to_label_changes``), face-only and voice-only accuracy (the face / voice evidence
the fusion used at that step), and speed (seconds of bag per second of processing).
"""

from __future__ import annotations

import csv
import inspect
import json
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from emotion_ros.core.labels import INDEX, LABELS, normalise

from .bag_common import BagError, BagFile, normalise_topic, stamp_ns

NONE = len(LABELS)               # index of "no estimate"
ALL_LABELS = tuple(LABELS) + ("none",)

IMAGE_TYPES = ("sensor_msgs/msg/Image",)
AUDIO_TYPES = ("audio_common_msgs/msg/AudioDataStamped", "audio_common_msgs/msg/AudioData")
INFO_TYPES = ("audio_common_msgs/msg/AudioInfo",)
STATE_TYPES = ("emotion_msgs/msg/EmotionState",)
FACES_TYPES = ("emotion_msgs/msg/FaceEmotionArray",)
VOICE_TYPES = ("emotion_msgs/msg/VoiceEmotion",)

COLOURS = {
    "neutral": "#9e9e9e", "happy": "#f2c12e", "sad": "#3f7fbf", "angry": "#d62728", "surprised": "#ff7f0e",
    "disgusted": "#2ca02c", "scared": "#8c4fb5", "none": "#ffffff",
}


# ---------------------------------------------------------------------------------------------------------------
# Labels
# ---------------------------------------------------------------------------------------------------------------

@dataclass
class Span:
    start: float        # seconds from bag start
    end: float
    label: str
    person: str = ""
    line: int = 0


def read_labels(path: str, bag_start_s: float) -> Tuple[List[Span], List[str]]:
    """Spans of the labels CSV and the list of problems found (unknown labels, bad rows), which are skipped."""
    if not os.path.isfile(path):
        raise BagError(f"labels file {path!r} does not exist")
    spans: List[Span] = []
    skipped: List[str] = []
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise BagError(f"cannot read labels file {path!r}: {exc}") from None
    first = True
    for lineno, row in enumerate(rows, 1):
        row = [c.strip() for c in row]
        if not row or not any(row) or row[0].startswith("#"):
            continue
        is_first, first = first, False
        if len(row) < 3:
            skipped.append(f"line {lineno}: expected start,end,label[,person], got {','.join(row)!r}")
            continue
        try:
            start, end = float(row[0]), float(row[1])
        except ValueError:
            if is_first:
                continue  # header row
            skipped.append(f"line {lineno}: start/end are not numbers: {row[0]!r}, {row[1]!r}")
            continue
        if not (math.isfinite(start) and math.isfinite(end)):
            skipped.append(f"line {lineno}: non-finite time")
            continue
        if start > 1e9:  # absolute stamps
            start, end = start - bag_start_s, end - bag_start_s
        if end <= start:
            skipped.append(f"line {lineno}: end {row[1]} is not after start {row[0]}")
            continue
        label = normalise(row[2])
        if label is None:
            skipped.append(f"line {lineno}: unknown label {row[2]!r} (known: {', '.join(LABELS)})")
            continue
        spans.append(Span(start, end, label, row[3] if len(row) > 3 else "", lineno))
    if not spans:
        raise BagError(f"labels file {path!r} holds no usable span"
                       + (f" ({'; '.join(skipped[:5])})" if skipped else ""))
    spans.sort(key=lambda s: (s.start, s.end))
    return spans, skipped


# ---------------------------------------------------------------------------------------------------------------
# Timeline: what the system reported at each fusion step
# ---------------------------------------------------------------------------------------------------------------

@dataclass
class Timeline:
    t: List[float] = field(default_factory=list)                 # seconds from bag start
    fused: List[int] = field(default_factory=list)               # label index or NONE (primary person)
    face: List[int] = field(default_factory=list)
    voice: List[int] = field(default_factory=list)
    conf: List[float] = field(default_factory=list)
    persons: List[Dict[str, int]] = field(default_factory=list)  # person id -> fused index, when asked for

    def add(self, t: float, fused: int, face: int, voice: int, conf: float,
            persons: Optional[Dict[str, int]] = None) -> None:
        self.t.append(t)
        self.fused.append(fused)
        self.face.append(face)
        self.voice.append(voice)
        self.conf.append(conf)
        if persons is not None:
            self.persons.append(persons)


def _argmax(p) -> int:
    return NONE if p is None else int(np.argmax(np.asarray(p)))


def _load_yaml_params(name: str, node: str) -> Dict[str, Any]:
    """``ros__parameters`` of ``node`` in the package's config/<name>, {} when missing."""
    from emotion_ros import paths

    p = paths.config_path(name)
    if not os.path.isfile(p):
        return {}
    try:
        import yaml
        with open(p) as f:
            data = yaml.safe_load(f) or {}
        return dict((data.get(node) or {}).get("ros__parameters") or {})
    except Exception:
        return {}


def _accepts(fn, params: Dict[str, Any]) -> Dict[str, Any]:
    names = set(inspect.signature(fn).parameters)
    return {k: v for k, v in params.items() if k in names}


def fusion_node_settings() -> Dict[str, Any]:
    """Every fusion_node parameter of config/emotion.yaml that TemporalFusion takes (staleness per modality, weighting,
    hysteresis, mode): one place for emotion-bag evaluate, the paired evaluation's average and the fusion replay."""
    from emotion_ros.core.fusion import TemporalFusion

    return _accepts(TemporalFusion.__init__,
                    {k: v for k, v in _load_yaml_params("emotion.yaml", "fusion_node").items() if k != "model"})


def _model_path(arg: Optional[str], name: str) -> Optional[str]:
    """None = modality/model switched off (``none``); else the path (default: the package's models/<name>)."""
    from emotion_ros import paths

    if arg is not None and arg.strip().lower() == "none":
        return None
    return arg or paths.model_path(name)


class _Decoder:
    """Image / audio message -> numpy, with emotion_ros.ros.convert when importable (no rclpy needed)."""

    def __init__(self):
        try:
            from emotion_ros.ros import convert
            self.convert = convert
        except Exception:  # no ROS Python packages: the few lines below cover the common encodings
            self.convert = None

    def image(self, msg) -> np.ndarray:
        if self.convert is not None:
            return self.convert.image_to_numpy(msg, "bgr8")
        import cv2

        from emotion_ros.core.errors import InputError
        enc = msg.encoding.lower()
        table = {"bgr8": (3, None), "rgb8": (3, cv2.COLOR_RGB2BGR), "mono8": (1, cv2.COLOR_GRAY2BGR),
                 "bgra8": (4, cv2.COLOR_BGRA2BGR), "rgba8": (4, cv2.COLOR_RGBA2BGR)}
        if enc not in table:
            raise InputError(f"unsupported image encoding {msg.encoding!r}")
        ch, code = table[enc]
        h, w, step = int(msg.height), int(msg.width), int(msg.step)
        buf = np.frombuffer(msg.data, np.uint8)
        if step < w * ch or buf.size != step * h or h * w == 0:
            raise InputError(f"image data size {buf.size} does not fit {w}x{h} {enc} with step {step}")
        img = buf.reshape(h, step)[:, : w * ch].reshape(h, w, ch)
        return np.ascontiguousarray(img) if code is None else cv2.cvtColor(np.ascontiguousarray(img), code)

    def audio(self, data, fmt: str, channels: int) -> np.ndarray:
        if self.convert is not None:
            return self.convert.pcm_to_float(bytes(data), fmt, channels)
        from emotion_ros.core.errors import InputError
        if fmt.upper() != "S16LE":
            raise InputError(f"unsupported audio sample format {fmt!r}")
        x = np.frombuffer(bytes(data), "<i2")
        n = x.size // channels
        return (x[: n * channels].astype(np.float32) / 32768.0).reshape(n, channels)


class _Progress:
    """Progress on stderr, at most every ``every_s`` seconds of processing (0: never): bag time done / total."""

    def __init__(self, bf: BagFile, every_s: float, what: str):
        import sys

        self.start_ns, self.total_s = bf.start_ns, bf.duration_s
        self.every_s, self.what, self.stream = float(every_s or 0.0), what, sys.stderr
        self.t0 = self.last = time.perf_counter()
        self.printed = False

    def __call__(self, t_ns: int) -> None:
        if self.every_s <= 0:
            return
        now = time.perf_counter()
        if now - self.last >= self.every_s:
            self.last = now
            self._print((t_ns - self.start_ns) * 1e-9, now)

    def _print(self, done_s: float, now: float) -> None:
        done_s = min(max(done_s, 0.0), self.total_s)
        pct = 100.0 * done_s / self.total_s if self.total_s > 0 else 100.0
        speed = done_s / (now - self.t0) if now > self.t0 else 0.0
        eta = f", ~{(self.total_s - done_s) / speed:.0f} s left" if speed > 0 and done_s < self.total_s else ""
        print(f"emotion-bag evaluate: {self.what} {done_s:.1f} / {self.total_s:.1f} s of bag ({pct:.0f} %), "
              f"{now - self.t0:.1f} s elapsed{eta}", file=self.stream, flush=True)
        self.printed = True

    def done(self) -> None:
        if self.printed:  # close a run that reported progress with its 100 %
            self._print(self.total_s, time.perf_counter())


def _topic_type(bf: BagFile, topic: str, expected: Sequence[str]) -> Optional[str]:
    return bf.check_topic_type(topic, expected)


def run_raw(bf: BagFile, opts: Dict[str, Any], want_persons: bool) -> Tuple[Timeline, Dict[str, Any]]:
    """Run the face / voice / fusion core over the bag's image and audio messages."""
    from emotion_ros.core.errors import InputError
    from emotion_ros.core.modelio import ModelFileError

    image_topic, audio_topic, info_topic = opts["image_topic"], opts["audio_topic"], opts["audio_info_topic"]
    img_t = _topic_type(bf, image_topic, IMAGE_TYPES)
    aud_t = _topic_type(bf, audio_topic, AUDIO_TYPES)
    _topic_type(bf, info_topic, INFO_TYPES)  # wrong type -> BagError
    info: Dict[str, Any] = {"mode": "raw", "warnings": []}
    warn = info["warnings"]
    device = opts.get("device") or "cpu"
    face_path = _model_path(opts.get("face_model"), "face.pt") if img_t else None
    voice_path = _model_path(opts.get("voice_model"), "voice.pt") if aud_t else None
    fusion_arg = opts.get("fusion_model")
    fusion_path = _model_path(fusion_arg, "fusion.pt")
    if img_t and face_path is None:
        warn.append(f"--face-model none: {normalise_topic(image_topic)} ignored")
    if aud_t and voice_path is None:
        warn.append(f"--voice-model none: {normalise_topic(audio_topic)} ignored")
    if not face_path and not voice_path:
        raise BagError("nothing to evaluate: no image or audio topic with a model")

    fparams = _load_yaml_params("emotion.yaml", "face_node")
    vparams = _load_yaml_params("emotion.yaml", "voice_node")
    threads = int(opts["threads"] if opts.get("threads") is not None else fparams.get("cpu_threads", 1) or 0)
    if threads > 0:  # like the nodes (cpu_threads: 1): many torch threads only fight over the cores
        import torch
        torch.set_num_threads(threads)
    info["torch_threads"] = threads
    persons = None          # voice_node's speaker_reset_on_new_face
    reset_speaker = False
    try:
        face_pipe = voice_pipe = fusion_model = None
        if face_path:
            from emotion_ros.core.face.model import FaceModel
            from emotion_ros.core.face.pipeline import build_pipeline

            fm = FaceModel.for_node(face_path, fparams, device=device)
            face_pipe = build_pipeline(fm, fparams)  # the face node's construction, config/emotion.yaml settings
        if voice_path:
            from emotion_ros.core.voice.model import VoiceModel
            from emotion_ros.core.voice.pipeline import VoicePipeline
            from emotion_ros.core.voice.segment import Segmenter, segmenter_kwargs

            vm = VoiceModel(voice_path, device=device)
            voice_pipe = VoicePipeline(vm, segmenter=Segmenter(**segmenter_kwargs(vparams)),
                                       speaker_reset_s=float(vparams.get("speaker_reset_s", 60.0)))
            if face_path and vparams.get("speaker_reset_on_new_face") and voice_pipe.speaker is not None:
                from emotion_ros.core.voice.features import NewPersonWatch   # as voice_node does
                persons = NewPersonWatch(float(vparams.get("new_face_hold_s", 1.0)))
        if fusion_path and os.path.isfile(fusion_path):
            from emotion_ros.core.fusion import FusionModel
            fusion_model = FusionModel(fusion_path, device=device)
            fusion_model.check_dims(face_pipe.model.embed_dim if face_pipe else None,
                                    voice_pipe.model.embed_dim if voice_pipe else None)
        elif fusion_path and fusion_arg:
            raise ModelFileError(f"fusion model file not found: {fusion_path!r}")
        else:
            warn.append("no fusion model (models/fusion.pt missing or --fusion-model none): "
                        "probability-level fusion")
    except ModelFileError as exc:
        raise BagError(f"{exc} (pass --face-model / --voice-model / --fusion-model, or 'none')") from None
    except ValueError as exc:  # settings in config/*.yaml the pipelines reject
        raise BagError(f"cannot build the pipelines from the package's config: {exc}") from None
    from emotion_ros.core.fusion import TemporalFusion

    fusion = TemporalFusion(fusion_model, **fusion_node_settings())
    info["models"] = {"face": face_path, "voice": voice_path,
                      "fusion": fusion_path if fusion_model is not None else None}

    step = opts["step"]
    dec = _Decoder()
    start_ns = bf.start_ns
    tl = Timeline()
    counts = {"frames": 0, "frames_processed": 0, "bad_frames": 0, "audio_chunks": 0, "bad_audio": 0,
              "face_results": 0, "voice_results": 0, "face_s": 0.0, "voice_s": 0.0, "fusion_s": 0.0}
    min_frame_dt = 1.0 / opts["max_fps"] if opts.get("max_fps") else 0.0
    last_frame_t = -math.inf
    audio_fmt = None  # (rate, channels, format)
    k_step = 1  # steps at t0 + k * step (no accumulated rounding)

    def add_voice_results(results) -> None:
        for r in results:
            fusion.add_voice(r.start_t, r.end_t, r.probs, r.embedding, voice_activity=r.voice_activity)
            counts["voice_results"] += 1

    def step_until(t_ns_now: int) -> None:
        """Fusion steps at or before ``t_ns_now`` (they run before a message received at the same instant)."""
        nonlocal k_step
        while start_ns + round(k_step * step * 1e9) <= t_ns_now:
            now = (start_ns + round(k_step * step * 1e9)) * 1e-9
            c0 = time.perf_counter()
            states = fusion.estimate(now)
            counts["fusion_s"] += time.perf_counter() - c0
            primary = states[0] if states else None
            persons = {s.person_id: INDEX[s.emotion] for s in states} if want_persons else None
            tl.add(k_step * step, INDEX[primary.emotion] if primary else NONE,  # the held (reported) emotion
                   _argmax(primary.face_probs) if primary else NONE,
                   _argmax(primary.voice_probs) if primary else NONE,
                   float(primary.confidence) if primary else 0.0, persons)
            k_step += 1

    topics = [image_topic] if face_pipe else []
    topics += [audio_topic, info_topic] if voice_pipe else []
    conns = bf.connections_for(topics)
    wall0, cpu0 = time.perf_counter(), time.process_time()  # processing only, model loading excluded
    progress = _Progress(bf, opts.get("progress", 0.0), "raw")
    for conn, t_ns, raw in bf.messages(conns):
        progress(t_ns)
        t_recv = t_ns * 1e-9
        step_until(t_ns)
        msg = bf.deserialize(raw, conn.msgtype, conn.topic)
        if conn.msgtype in INFO_TYPES:
            if msg.coding_format and msg.coding_format.lower() not in ("wave", "wav", "raw", "pcm", "lpcm",
                                                                       "audio/x-raw"):
                raise BagError(f"bag {bf.path!r}: {conn.topic} announces {msg.coding_format!r} audio; only raw PCM "
                               "(coding_format 'wave') can be evaluated")
            fmt = (int(msg.sample_rate), int(msg.channels), str(msg.sample_format or "S16LE"))
            if audio_fmt is not None and fmt != audio_fmt:
                warn.append(f"audio format changed from {audio_fmt} to {fmt}")
            audio_fmt = fmt
            continue
        hdr = getattr(msg, "header", None)
        t_msg = stamp_ns(hdr.stamp) * 1e-9 if hdr is not None and stamp_ns(hdr.stamp) > 0 else t_recv
        if conn.msgtype in IMAGE_TYPES:
            counts["frames"] += 1
            if t_msg - last_frame_t < min_frame_dt - 1e-6:
                continue
            try:
                frame = dec.image(msg)
            except InputError as exc:
                if "encoding" in str(exc):
                    raise BagError(f"bag {bf.path!r}: {conn.topic}: {exc}") from None
                counts["bad_frames"] += 1
                if counts["bad_frames"] == 1:
                    warn.append(f"{conn.topic}: skipping bad frames ({exc})")
                continue
            last_frame_t = t_msg
            c0 = time.perf_counter()
            faces = face_pipe.process(frame, t_msg)
            counts["face_s"] += time.perf_counter() - c0
            counts["frames_processed"] += 1
            areas = [float(r.box[2]) * float(r.box[3]) for r in faces]
            for r, area in zip(faces, areas):
                fusion.add_face(t_msg, r.id, area, r.probs, r.embedding)
                counts["face_results"] += 1
            if persons is not None and persons.update([(r.id, a) for r, a in zip(faces, areas)], t_msg):
                reset_speaker = True   # the watch sees the areas the fusion ranks persons by
        else:  # audio
            if audio_fmt is None:  # like voice_node: its parameters until an AudioInfo arrives
                audio_fmt = (int(vparams.get("sample_rate", 16000)), int(vparams.get("channels", 1)),
                             str(vparams.get("sample_format", "S16LE")))
                warn.append(f"no {normalise_topic(info_topic)} before the first audio message: assuming "
                            f"{audio_fmt[0]} Hz, {audio_fmt[1]} channel(s), {audio_fmt[2]} (config/emotion.yaml)")
            rate, ch, fmt = audio_fmt
            data = msg.audio.data if hasattr(msg, "audio") else msg.data
            try:
                pcm = dec.audio(data, fmt, ch)
            except InputError as exc:
                raise BagError(f"bag {bf.path!r}: {conn.topic}: {exc}") from None
            counts["audio_chunks"] += 1
            if pcm.shape[0] == 0:
                continue
            if reset_speaker:         # before the next audio, as the voice node's worker does
                reset_speaker = False
                voice_pipe.speaker.reset()
                counts["speaker_resets_new_face"] = counts.get("speaker_resets_new_face", 0) + 1
            c0 = time.perf_counter()
            try:
                results = voice_pipe.push(pcm, rate, t_msg)
            except InputError as exc:
                counts["bad_audio"] += 1
                if counts["bad_audio"] == 1:
                    warn.append(f"{conn.topic}: skipping bad audio ({exc})")
                continue
            finally:
                counts["voice_s"] += time.perf_counter() - c0
            add_voice_results(results)
    if voice_pipe is not None:
        c0 = time.perf_counter()
        add_voice_results(voice_pipe.flush())
        counts["voice_s"] += time.perf_counter() - c0
    step_until(bf.end_ns)
    progress.done()
    info["processing_s"], info["cpu_s"] = time.perf_counter() - wall0, time.process_time() - cpu0
    if face_pipe is not None and counts["frames"] and counts["frames_processed"] == 0:
        raise BagError(f"bag {bf.path!r}: none of the {counts['frames']} images on {normalise_topic(image_topic)} "
                       "could be decoded")
    if face_pipe is not None and counts["frames_processed"] and counts["face_results"] == 0:
        warn.append(f"no face found in any of the {counts['frames_processed']} frames on "
                    f"{normalise_topic(image_topic)}: the face figures (and the fused ones, where the face should "
                    "have counted) are those of no face output; check that the video shows faces the detector "
                    "finds (frontal, at least ~40 px)")
    if voice_pipe is not None and counts["audio_chunks"] and counts["voice_results"] == 0:
        warn.append(f"no voice result from any of the {counts['audio_chunks']} chunks on "
                    f"{normalise_topic(audio_topic)}: no speech was segmented (silence, or too quiet)")
    info["counts"] = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in counts.items()}
    return tl, info


def run_recorded(bf: BagFile, opts: Dict[str, Any], want_persons: bool) -> Tuple[Timeline, Dict[str, Any]]:
    """Score the recorded outputs: at each step the newest message received at most ``hold`` s before."""
    state_topic, states_topic = opts["state_topic"], opts["states_topic"]
    faces_topic, voice_topic = opts["faces_topic"], opts["voice_topic"]
    st = _topic_type(bf, state_topic, STATE_TYPES)
    sts = _topic_type(bf, states_topic, STATE_TYPES) if want_persons else None
    ft = _topic_type(bf, faces_topic, FACES_TYPES)
    vt = _topic_type(bf, voice_topic, VOICE_TYPES)
    info: Dict[str, Any] = {"mode": "recorded", "warnings": [], "models": None}
    if not st:
        info["warnings"].append(f"no {normalise_topic(state_topic)} in the bag: fused accuracy is that of no output")
    if not (opts["hold"] > 0):
        raise BagError(f"--hold must be > 0 seconds, got {opts['hold']}")
    hold_ns = round(opts["hold"] * 1e9)
    step = opts["step"]
    tl = Timeline()
    topics = [t for t, ok in ((state_topic, st), (states_topic, sts), (faces_topic, ft), (voice_topic, vt)) if ok]
    latest: Dict[str, Tuple[int, int]] = {}          # key -> (receive time ns, label index)
    latest_person: Dict[str, Tuple[int, int]] = {}
    counts = {"state": 0, "states": 0, "faces": 0, "voice": 0}
    k_step = 1  # steps at t0 + k * step (no accumulated rounding)
    s_state, s_states = normalise_topic(state_topic), normalise_topic(states_topic)
    s_faces, s_voice = normalise_topic(faces_topic), normalise_topic(voice_topic)

    def idx(name: str) -> int:
        lab = normalise(name) if name else None
        return NONE if lab is None else INDEX[lab]

    def current(key: str, now_ns: int) -> int:
        v = latest.get(key)
        return v[1] if v is not None and now_ns - v[0] <= hold_ns else NONE

    def step_until(t_ns_now: int, inclusive: bool = True) -> None:
        nonlocal k_step
        while True:
            step_ns = bf.start_ns + round(k_step * step * 1e9)
            if step_ns > t_ns_now or (step_ns == t_ns_now and not inclusive):
                break
            persons = ({p: v[1] for p, v in latest_person.items() if step_ns - v[0] <= hold_ns}
                       if want_persons else None)
            tl.add(k_step * step, current("state", step_ns), current("face", step_ns), current("voice", step_ns),
                   0.0, persons)
            k_step += 1

    wall0, cpu0 = time.perf_counter(), time.process_time()
    progress = _Progress(bf, opts.get("progress", 0.0), "recorded")
    n_faces_seen = 0
    for conn, t_ns, raw in bf.messages(bf.connections_for(topics)):
        progress(t_ns)
        t = t_ns
        step_until(t_ns, inclusive=False)  # a message received exactly at a step counts for that step
        msg = bf.deserialize(raw, conn.msgtype, conn.topic)
        if conn.topic == s_state:
            latest["state"] = (t, idx(msg.emotion))
            counts["state"] += 1
            if want_persons and not sts:
                latest_person[msg.person_id] = (t, idx(msg.emotion))
        elif conn.topic == s_states:
            latest_person[msg.person_id] = (t, idx(msg.emotion))
            counts["states"] += 1
        elif conn.topic == s_faces:
            counts["faces"] += 1
            big = max(msg.faces, key=lambda f: int(f.width) * int(f.height)) if len(msg.faces) else None
            n_faces_seen += big is not None
            latest["face"] = (t, idx(big.emotion) if big is not None else NONE)  # no face in that frame: none
        elif conn.topic == s_voice:
            counts["voice"] += 1
            if msg.voice_activity:
                latest["voice"] = (t, idx(msg.emotion))
    step_until(bf.end_ns)
    progress.done()
    info["processing_s"], info["cpu_s"] = time.perf_counter() - wall0, time.process_time() - cpu0
    if counts["faces"] and n_faces_seen == 0:
        info["warnings"].append(f"no face in any of the {counts['faces']} {s_faces} messages: the face node found "
                                "none in the recorded session")
    info["counts"] = counts
    return tl, info


# ---------------------------------------------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------------------------------------------

def _pred_for(tl: Timeline, i: int, span: Span, seq: List[int]) -> int:
    if span.person and tl.persons:
        return tl.persons[i].get(span.person, NONE)
    return seq[i]


def check_label_overlap(spans: List[Span], duration: float, bag_start: float, labels: str) -> List[str]:
    """BagError when no span overlaps the bag [0, duration]; warnings for the spans that lie (partly) outside."""
    outside = [sp for sp in spans if sp.start >= duration or sp.end <= 0]
    if len(outside) == len(spans):
        lo, hi = min(sp.start for sp in spans), max(sp.end for sp in spans)
        raise BagError(f"labels file {labels!r}: none of its {len(spans)} span(s) overlaps the bag (spans "
                       f"{lo:.2f}..{hi:.2f} s, bag 0..{duration:.2f} s from its start at {bag_start:.3f}); label "
                       "times are seconds from the bag start, or absolute stamps when > 1e9")
    warns = []
    if outside:
        warns.append(f"{len(outside)} of {len(spans)} labelled spans lie outside the bag (0-{duration:.2f} s): "
                     f"labels lines {', '.join(str(sp.line) for sp in outside[:10])}"
                     f"{' ...' if len(outside) > 10 else ''}; they are scored as spans without samples")
    partial = [sp for sp in spans if sp not in outside and (sp.start < 0 or sp.end > duration)]
    if partial:
        warns.append(f"{len(partial)} labelled span(s) extend beyond the bag (0-{duration:.2f} s): labels lines "
                     f"{', '.join(str(sp.line) for sp in partial[:10])}{' ...' if len(partial) > 10 else ''}")
    return warns


def label_changes(spans: List[Span], duration: float) -> Tuple[int, float]:
    """The labels' own changes and labelled seconds (see docs/BAGS.md, ``label_changes_per_min``).

    Spans are grouped by person (blank = the primary person) and clipped to the bag [0, duration]; spans entirely
    outside are dropped. Within a group, in order of start time, every pair of consecutive spans with different
    labels is one change (a gap between them does not matter, as steps without an estimate do not break a flip).
    Labelled seconds: the length of the union of a group's clipped spans, summed over the groups."""
    groups: Dict[str, List[Tuple[float, float, str]]] = {}
    for sp in spans:
        a, b = max(sp.start, 0.0), min(sp.end, duration)
        if b > a:
            groups.setdefault(sp.person, []).append((a, b, sp.label))
    n_changes, labelled = 0, 0.0
    for rows in groups.values():
        rows.sort(key=lambda r: (r[0], r[1]))
        n_changes += sum(1 for p, q in zip(rows, rows[1:]) if p[2] != q[2])
        cur_a, cur_b = rows[0][0], rows[0][1]
        for a, b, _ in rows[1:]:
            if a > cur_b:
                labelled += cur_b - cur_a
                cur_a, cur_b = a, b
            else:
                cur_b = max(cur_b, b)
        labelled += cur_b - cur_a
    return n_changes, labelled


def score(tl: Timeline, spans: List[Span], step: float, duration: Optional[float] = None) -> Dict[str, Any]:
    from emotion_ros.training.common import metrics_from_predictions

    t = np.asarray(tl.t, np.float64)
    y_true: List[int] = []
    y_fused: List[int] = []
    y_face: List[int] = []
    y_voice: List[int] = []
    span_rows = []
    per_span = []   # (n, fused right, face right, voice right) per span: the unit of the margin's bootstrap
    delays = []
    n_undetected = 0
    n_span_correct = 0
    n_empty = 0
    for sp in spans:
        ids = np.flatnonzero((t >= sp.start - 1e-9) & (t < sp.end - 1e-9))
        lab = INDEX[sp.label]
        preds = [_pred_for(tl, i, sp, tl.fused) for i in ids]
        y_true += [lab] * len(ids)
        y_fused += preds
        y_face += [tl.face[i] for i in ids]  # per-modality figures are those of the primary person
        y_voice += [tl.voice[i] for i in ids]
        per_span.append((len(ids), sum(p == lab for p in preds), sum(tl.face[i] == lab for i in ids),
                         sum(tl.voice[i] == lab for i in ids)))
        row = {"start": round(sp.start, 3), "end": round(sp.end, 3), "label": sp.label, "n_samples": int(len(ids)),
               "right": dict(zip(("fused", "face", "voice"), map(int, per_span[-1][1:])))}
        if sp.person:
            row["person"] = sp.person
        if len(ids) == 0:
            n_empty += 1
            row.update(majority=None, correct=False, delay_s=None)
            n_undetected += 1
            span_rows.append(row)
            continue
        counts = np.bincount(preds, minlength=len(ALL_LABELS))
        maj = int(np.argmax(counts))
        hit = [i for i, p in zip(ids, preds) if p == lab]
        delay = None if not hit else max(0.0, float(t[hit[0]] - sp.start))
        if delay is None:
            n_undetected += 1
        else:
            delays.append(delay)
        n_span_correct += int(maj == lab)
        row.update(majority=ALL_LABELS[maj], correct=bool(maj == lab),
                   delay_s=None if delay is None else round(delay, 3))
        span_rows.append(row)

    m = metrics_from_predictions(y_true, y_fused, labels=ALL_LABELS)
    fm = metrics_from_predictions(y_true, y_face, labels=ALL_LABELS)
    vm = metrics_from_predictions(y_true, y_voice, labels=ALL_LABELS)
    n = len(y_true)

    def coverage(seq):
        return round(float(np.mean(np.asarray(seq) != NONE)), 4) if seq else 0.0

    def acc_present(seq):
        """Accuracy over the samples where there was an estimate (None when there never was)."""
        pairs = [(t, p) for t, p in zip(y_true, seq) if p != NONE]
        return round(sum(t == p for t, p in pairs) / len(pairs), 4) if pairs else None

    reported = [p for p in tl.fused if p != NONE]
    flips = sum(1 for a, b in zip(reported, reported[1:]) if a != b)
    minutes = len(tl.t) * step / 60.0
    flips_per_min = round(flips / minutes, 3) if minutes > 0 else 0.0
    n_changes, labelled_s = label_changes(spans, tl.t[-1] if duration is None and tl.t else duration or 0.0)
    changes_per_min = round(n_changes / (labelled_s / 60.0), 3) if labelled_s > 0 else None
    return {
        "accuracy": m["accuracy"],
        "macro_f1": m["macro_f1"],
        "n_spans": len(spans),
        "detection_delay_s": round(float(np.median(delays)), 3) if delays else None,
        "n_detected": len(delays),
        "n_undetected": n_undetected,
        "flips_per_min": flips_per_min,
        "n_flips": flips,
        "label_changes_per_min": changes_per_min,
        "n_label_changes": n_changes,
        "labelled_s": round(labelled_s, 3),
        "flips_to_label_changes": (round(flips_per_min / changes_per_min, 3) if changes_per_min else None),
        "span_accuracy": round(n_span_correct / len(spans), 4) if spans else 0.0,
        "n_samples": n,
        "coverage": coverage(y_fused),
        "accuracy_present": acc_present(y_fused),
        "per_class_recall": m["per_class_recall"],
        "face": {"accuracy": fm["accuracy"], "macro_f1": fm["macro_f1"], "coverage": coverage(y_face),
                 "accuracy_present": acc_present(y_face), "per_class_recall": fm["per_class_recall"]},
        "voice": {"accuracy": vm["accuracy"], "macro_f1": vm["macro_f1"], "coverage": coverage(y_voice),
                  "accuracy_present": acc_present(y_voice), "per_class_recall": vm["per_class_recall"]},
        "confusion": {"rows": list(LABELS), "cols": list(ALL_LABELS),
                      "counts": [r for r in m["confusion"][: len(LABELS)]]},
        "n_spans_without_samples": n_empty,
        "margin": margin_over_best_single(per_span),
        "spans": span_rows,
    }


def margin_over_best_single(per_span: Sequence[Tuple[int, int, int, int]], draws: int = 2000,
                            seed: int = 0) -> Dict[str, Any]:
    """Fused accuracy minus the better single modality's (face or voice, whichever is better on these steps), with
    a 95 % percentile bootstrap interval over labelled spans (resampled with replacement; steps within one span are
    not independent, spans nearly are). The interval says how much of a clip's margin is the luck of which spans
    it holds: a margin whose interval spans 0 is not evidence either way."""
    return mean_margin_over_best_single([per_span], draws, seed)


def mean_margin_over_best_single(clips: Sequence[Sequence[Tuple[int, int, int, int]]], draws: int = 2000,
                                 seed: int = 0) -> Dict[str, Any]:
    """The mean over clips of :func:`margin_over_best_single`'s margin (each clip measured against its own better
    modality, as issue 10's targets are), with a 95 % interval from a bootstrap that resamples spans within each
    clip. ``clips``: per clip, per span (n steps, fused right, face right, voice right)."""
    arrs = [np.asarray(c, np.float64).reshape(-1, 4) for c in clips]
    if not arrs or any(a.shape[0] == 0 or a[:, 0].sum() == 0 for a in arrs):
        return {"best_single": None, "value": None, "ci95": None, "n_spans": int(sum(a.shape[0] for a in arrs)),
                "draws": 0}
    rng = np.random.default_rng(seed)
    bests, values, boots = [], [], []
    for a in arrs:
        tot = a.sum(axis=0)
        best = 2 if tot[2] >= tot[3] else 3
        bests.append(best)
        values.append((tot[1] - tot[best]) / tot[0])
        sums = a[rng.integers(0, a.shape[0], size=(draws, a.shape[0]))].sum(axis=1)   # (draws, 4)
        with np.errstate(invalid="ignore", divide="ignore"):
            boots.append((sums[:, 1] - sums[:, best]) / sums[:, 0])
    boot = np.nanmean(np.stack(boots), axis=0)
    boot = boot[np.isfinite(boot)]
    lo, hi = np.percentile(boot, [2.5, 97.5])
    names = {"face" if b == 2 else "voice" for b in bests}
    return {"best_single": names.pop() if len(names) == 1 else "per clip", "value": round(float(np.mean(values)), 4),
            "ci95": [round(float(lo), 4), round(float(hi), 4)], "n_spans": int(sum(a.shape[0] for a in arrs)),
            "draws": int(draws)}


# ---------------------------------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------------------------------

def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_confusion(report: Dict[str, Any], path: str, title: str = "") -> None:
    plt = _plt()
    cm = np.asarray(report["confusion"]["counts"], np.int64)
    rows, cols = list(report["confusion"]["rows"]), list(report["confusion"]["cols"])
    if cm[:, -1].sum() == 0:  # no "none" predictions: drop the column
        cm, cols = cm[:, :-1], cols[:-1]
    keep = [i for i in range(cm.shape[0]) if cm[i].sum() > 0] or list(range(cm.shape[0]))
    cm, rows = cm[keep], [rows[i] for i in keep]  # only the labelled classes as rows
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(2.2 + 0.85 * len(cols), 2.0 + 0.6 * len(rows)), dpi=110)
    im = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0, aspect="auto")
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            if cm[i].sum() == 0:
                continue
            ax.text(j, i, f"{cm[i, j]}\n{norm[i, j]:.0%}", ha="center", va="center", fontsize=8,
                    color="white" if norm[i, j] > 0.55 else "black")
    ax.set_xticks(range(len(cols)), cols, rotation=40, ha="right")
    ax.set_yticks(range(len(rows)), rows)
    ax.set_xlabel("predicted (fused top emotion)")
    ax.set_ylabel("labelled")
    ax.set_title(title or f"{report.get('mode', '')} evaluation: accuracy {report['accuracy']:.2f}, macro-F1 "
                          f"{report['macro_f1']:.2f}\n{report['n_samples']} samples every "
                          f"{report.get('step_s', 0):g} s "
                          f"in {report['n_spans']} labelled spans", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of the row")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _fmt(x, spec: str) -> str:
    return "n/a" if x is None else format(x, spec)


def _runs(t: np.ndarray, seq: Sequence[int], step: float):
    """Contiguous runs of the same value -> [(start, width, value)]."""
    out = []
    if len(seq) == 0:
        return out
    start = 0
    for i in range(1, len(seq) + 1):
        if i == len(seq) or seq[i] != seq[start]:
            a = t[start] - step
            b = t[i - 1]
            out.append((a, b - a, seq[start]))
            start = i
    return out


def plot_timeline(tl: Timeline, spans: List[Span], report: Dict[str, Any], path: str, step: float,
                  duration: float) -> None:
    plt = _plt()
    from matplotlib.patches import Patch

    t = np.asarray(tl.t, np.float64)
    rows = [("fused", tl.fused), ("voice", tl.voice), ("face", tl.face)]
    width = min(24.0, max(8.0, duration / 6.0))
    fig, ax = plt.subplots(figsize=(width, 3.8), dpi=110)
    for r, (_name, seq) in enumerate(rows):
        for a, w, v in _runs(t, seq, step):
            if v == NONE:
                continue
            ax.broken_barh([(a, w)], (r + 0.1, 0.8), facecolors=COLOURS[ALL_LABELS[v]], edgecolor="none")
    lab_row = len(rows)
    for sp in spans:
        ax.broken_barh([(sp.start, sp.end - sp.start)], (lab_row + 0.1, 0.8), facecolors=COLOURS[sp.label],
                       edgecolor="black", linewidth=0.6)
        ax.text(sp.start + (sp.end - sp.start) / 2, lab_row + 0.5, sp.label + (f" ({sp.person})" if sp.person else ""),
                ha="center", va="center", fontsize=7, clip_on=True)
    ax.set_yticks([r + 0.5 for r in range(lab_row + 1)], [n for n, _ in rows] + ["label"])
    ax.set_ylim(0, lab_row + 1)
    ax.set_xlim(0, max(duration, t[-1] if len(t) else 0.0, max((s.end for s in spans), default=0.0)))
    ax.set_xlabel("time from bag start (s)")
    ax.grid(axis="x", alpha=0.3)
    delay = report.get("detection_delay_s")
    ax.set_title(f"{report.get('mode', '')} evaluation of {os.path.basename(str(report.get('bag', '')).rstrip('/'))}: "
                 f"fused accuracy {report['accuracy']:.2f} (macro-F1 {report['macro_f1']:.2f}), face "
                 f"{report['face']['accuracy']:.2f}, voice {report['voice']['accuracy']:.2f}\n"
                 f"median detection delay {'n/a' if delay is None else f'{delay:.2f} s'}, "
                 f"{report['flips_per_min']:.1f} flips/min (labels: "
                 f"{_fmt(report.get('label_changes_per_min'), '.1f')} changes/min); rows show the top emotion at each "
                 f"{report.get('step_s', 0):g} s step, blank = no estimate", fontsize=9, loc="left")
    handles = [Patch(facecolor=COLOURS[n], edgecolor="black", label=n) for n in LABELS]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.005, 1.0), fontsize=8, frameon=False)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------------------------
# Entry points
# ---------------------------------------------------------------------------------------------------------------

DEFAULTS = {
    "step": None, "mode": "auto", "device": "cpu", "max_fps": None, "hold": 1.0, "threads": None,
    "face_model": None, "voice_model": None, "fusion_model": None,
    "image_topic": "image_raw", "audio_topic": "audio", "audio_info_topic": "audio_info",
    "state_topic": "emotion/state", "states_topic": "emotion/states", "faces_topic": "emotion/faces",
    "voice_topic": "emotion/voice", "progress": 5.0,
}


def evaluate(bag: str, labels: str, json_out: Optional[str] = None, confusion: Optional[str] = None,
             timeline: Optional[str] = None, force: bool = False, **kw) -> Dict[str, Any]:
    """Evaluate and write the outputs; returns the full report."""
    opts = dict(DEFAULTS)
    unknown = set(kw) - set(opts)
    if unknown:
        raise TypeError(f"unknown options {sorted(unknown)}")
    opts.update({k: v for k, v in kw.items() if v is not None})
    if opts["step"] is None:
        rate = float(_load_yaml_params("emotion.yaml", "fusion_node").get("rate", 10.0) or 10.0)
        opts["step"] = 1.0 / rate if rate > 0 else 0.1
    if not (opts["step"] > 0 and math.isfinite(opts["step"])):
        raise BagError(f"--step must be > 0 seconds, got {opts['step']}")
    if not (opts["progress"] >= 0 and math.isfinite(opts["progress"])):
        raise BagError(f"--progress must be >= 0 seconds (0 = no progress), got {opts['progress']}")
    if opts["max_fps"] is not None and not opts["max_fps"] > 0:
        raise BagError(f"--max-fps must be > 0, got {opts['max_fps']}")
    outs = [(json_out, "JSON report"), (confusion, "confusion PNG"), (timeline, "timeline PNG")]
    paths = [p for p, _ in outs if p]
    if len(set(map(os.path.abspath, paths))) != len(paths):
        raise BagError("--json, --confusion and --timeline must be different files")
    for p, what in outs:
        if p and os.path.exists(p) and not force:
            raise BagError(f"{what} {p!r} exists already; not overwriting it (use --force to replace it)")
        if p and not os.path.isdir(os.path.dirname(os.path.abspath(p))):
            raise BagError(f"{what} {p!r}: directory {os.path.dirname(os.path.abspath(p))!r} does not exist")
    with BagFile(bag) as bf:
        if bf.message_count == 0:
            raise BagError(f"bag {bag!r} holds no messages")
        spans, skipped = read_labels(labels, bf.start_ns * 1e-9)
        want_persons = any(s.person for s in spans)
        topics = bf.topics()
        has = lambda name: normalise_topic(opts[name]) in topics  # noqa: E731
        has_raw = has("image_topic") or has("audio_topic")
        has_out = has("state_topic") or has("faces_topic") or has("voice_topic")
        mode = opts["mode"]
        if mode == "auto":
            mode = "raw" if has_raw else "recorded" if has_out else None
        if mode is None or (mode == "raw" and not has_raw) or (mode == "recorded" and not has_out):
            need = ("image_raw / audio" if mode == "raw" else "emotion/state / emotion/faces / emotion/voice"
                    if mode == "recorded" else "image_raw / audio or emotion/state / emotion/faces / emotion/voice")
            raise BagError(f"bag {bag!r} has none of the topics to evaluate ({need}); "
                           f"it has: {', '.join(sorted(topics)) or 'no topics'}")
        duration = bf.duration_s
        bag_start = bf.start_ns * 1e-9
        label_warnings = check_label_overlap(spans, duration, bag_start, labels)  # before the (long) run
        wall0 = time.perf_counter()
        if mode == "raw":
            tl, info = run_raw(bf, opts, want_persons)
        else:
            tl, info = run_recorded(bf, opts, want_persons)
        total_s = time.perf_counter() - wall0
        processing_s, cpu_s = info["processing_s"], info["cpu_s"]
    info["warnings"][:0] = label_warnings
    rep = score(tl, spans, opts["step"], duration)
    report: Dict[str, Any] = {
        "accuracy": rep.pop("accuracy"), "macro_f1": rep.pop("macro_f1"), "n_spans": rep.pop("n_spans"),
        "detection_delay_s": rep.pop("detection_delay_s"), "flips_per_min": rep.pop("flips_per_min"),
        "label_changes_per_min": rep.pop("label_changes_per_min"),
        "flips_to_label_changes": rep.pop("flips_to_label_changes"),
        "mode": info["mode"], "bag": bag, "labels": labels, "bag_start": bag_start,
        "bag_duration_s": round(duration, 3), "step_s": opts["step"],
        "processing_s": round(processing_s, 3), "setup_s": round(total_s - processing_s, 3),
        "speed_x": round(duration / processing_s, 3) if processing_s > 0 else None,
        "cpu_s": round(cpu_s, 3), "speed_x_cpu": round(duration / cpu_s, 3) if cpu_s > 0 else None,
        **rep,
        "models": info.get("models"), "counts": info.get("counts"),
        "labels_skipped": skipped, "warnings": info["warnings"],
    }
    if json_out:
        with open(json_out, "w") as f:
            json.dump(report, f, indent=2)
    if confusion:
        plot_confusion(report, confusion)
    if timeline:
        plot_timeline(tl, spans, report, timeline, opts["step"], duration)
    return report


SUMMARY_KEYS = ("accuracy", "macro_f1", "n_spans", "detection_delay_s", "n_undetected", "flips_per_min",
                "label_changes_per_min", "flips_to_label_changes",
                "span_accuracy", "n_samples", "coverage", "mode", "bag_duration_s", "processing_s", "speed_x", "cpu_s",
                "speed_x_cpu")


def summary(report: Dict[str, Any]) -> Dict[str, Any]:
    out = {k: report.get(k) for k in SUMMARY_KEYS}
    out["per_class_recall"] = report.get("per_class_recall")
    out["face_accuracy"] = report["face"]["accuracy"]
    out["voice_accuracy"] = report["voice"]["accuracy"]
    out["margin_over_best_single"] = report.get("margin")
    if report.get("labels_skipped"):
        out["labels_skipped"] = len(report["labels_skipped"])
    return out


def evaluate_cli(args) -> Dict[str, Any]:
    import sys

    report = evaluate(args.bag, args.labels, json_out=args.json, confusion=args.confusion, timeline=args.timeline,
                      force=args.force, step=args.step, mode=args.mode, device=args.device, max_fps=args.max_fps,
                      face_model=args.face_model, voice_model=args.voice_model, fusion_model=args.fusion_model,
                      hold=getattr(args, "hold", None), threads=getattr(args, "threads", None),
                      image_topic=getattr(args, "image_topic", None), audio_topic=getattr(args, "audio_topic", None),
                      audio_info_topic=getattr(args, "audio_info_topic", None),
                      progress=getattr(args, "progress", None))
    for w in report["warnings"]:
        print(f"warning: {w}", file=sys.stderr)
    for s in report["labels_skipped"]:
        print(f"labels: skipped {s}", file=sys.stderr)
    return summary(report)

"""fusion_node: face + voice emotion evidence in, one fused emotional state per person out.

Subscribes ``emotion/faces`` (emotion_msgs/FaceEmotionArray) and ``emotion/voice`` (emotion_msgs/VoiceEmotion),
aligns them by their message stamps in :class:`~emotion_ros.core.fusion.TemporalFusion` (staleness per modality,
each modality weighted by its reliability: calibrated confidence, recency, an out-of-distribution gate, the voice
node's ``unsure`` flag; a reliability-weighted average by default, the learned ``fusion.pt`` with
``fusion_mode:=model``; smoothing and hysteresis per person, so the reported emotion changes only on evidence) and
publishes emotion_msgs/EmotionState

- on ``emotion/state`` for the primary person (largest face; voice alone when no face is fresh),
- on ``emotion/states`` for every person,

at once on every face array (``publish_on_face``), at once when the primary's top emotion changes
(``publish_on_change``), and at a steady ``rate`` in between (e.g. voice alone).
``header.stamp`` is the newest evidence's stamp, ``header.frame_id`` the face array's.
With ``hri`` (ROS4HRI, REP-155; needs the hri_msgs package), each person's fused state also goes out as
hri_msgs/Expression on ``/humans/persons/<person_id>/expression`` (same header; the emotion as an Expression
constant, valence, arousal, confidence) for every person a person manager (hri_person_manager, or anything that
publishes REP-155's ``/humans/persons/tracked`` and the latched ``/humans/persons/<id>/face_id``) has matched to one
of our faces: the face's own expression is the face node's ``/humans/faces/<face_id>/expression``; the fused one,
with the voice in it, belongs to the person.  Reliable, volatile, depth 1; created when the person appears in
``/humans/persons/tracked``, destroyed when it leaves.  "Now" for staleness is the
node clock, so replayed bags work with ``use_sim_time:=true``.  ``/diagnostics``: per-modality input rates and
staleness, the time since each input's last message (``face_input_age_s``, ``voice_input_age_s``; WARN when face
arrays stop for ``FACE_STOPPED_S`` or an input topic has no publisher left, e.g. face_node died), processing time,
errors.

Lifecycle: configure loads the fusion model when ``fusion_mode`` is ``model`` (missing/unfit file: FAILURE naming
the file; with autostart the process exits 1) or ``auto``; ``average`` (the default) needs no model file;
activate opens the topics, deactivate closes them, cleanup drops the model.

    ros2 run emotion_ros fusion_node --ros-args --params-file config/emotion.yaml
    python -m emotion_ros.nodes.fusion --ros-args -p model_path:=/path/fusion.pt
"""
from __future__ import annotations

import collections
import os
import sys
import threading
import time
from typing import Dict, List, Optional

import numpy as np
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn

from emotion_msgs.msg import EmotionState, FaceEmotionArray, VoiceEmotion
from emotion_ros import paths
from emotion_ros.core.errors import InputError
from emotion_ros.core.fusion import FusedState, FusionModel, TemporalFusion
from emotion_ros.core.labels import LABELS, NUM_LABELS, normalise
from emotion_ros.core.modelio import ModelFileError
from emotion_ros.ros.convert import sec_to_stamp, stamp_to_sec
from emotion_ros.ros.lifecycle import command_line, exit_process, run_node
from emotion_ros.ros.node_utils import Diagnostics, RateLimitedLogger, declare_parameters, reliable_qos

NODE_NAME = "fusion_node"
#: /diagnostics: face arrays (one per camera frame) silent for longer than this (s) after flowing: WARN.
FACE_STOPPED_S = 2.0

PARAMS = {
    "model_path": ("", "Fusion model checkpoint (.pt); empty = the package's models/fusion.pt "
                       "(installed share first, then the source tree)"),
    "device": ("auto", "Torch device: auto (CUDA when available) | cpu | cuda | cuda:N"),
    "cpu_threads": (1, "torch CPU threads (0 = torch's default); 1 suits this small MLP best on a busy CPU",
                       {"range": (0, 256)}),
    "fusion_mode": ("average", "How the two modalities are combined: 'average' = reliability-weighted average of the "
                               "calibrated probabilities (shipped: steadier than the learned model on the held-out "
                               "clips, models/fusion.md; no fusion.pt needed) | 'model' = the learned fusion.pt | "
                               "'auto' = the model when its file exists, else the average"),
    "pool": ("log", "fusion_mode average: how the weighted probability vectors combine: 'linear' = weighted "
                       "arithmetic mean | 'log' = weighted geometric mean (log-linear pool, a product of experts: "
                       "a light voice can settle a near-tie of the face, and an emotion one modality rules out "
                       "needs more of the weight from the other to win)"),
    "window_s": (1.0, "Faces: observations newer than now + window_s count (clock skew); legacy voice window",
                      {"range": (0.001, None)}),
    "stale_s": (1.0, "Legacy staleness (s), used only when face_stale_s / voice_stale_s are <= 0",
                      {"range": (0.001, None)}),
    "face_stale_s": (0.3, "A face observation older than this (s, node clock vs message stamps) no longer counts; "
                          "the face evidence is the recency-weighted average of the person's fresher frames",
                      {"range": (0.0, None)}),
    "face_hold_s": (0.1, "A face observation weighs fully up to this age (s), then linearly less until face_stale_s",
                      {"range": (0.0, None)}),
    "voice_stale_s": (3.0, "A voice segment whose end is older than this (s) no longer counts (a voice result comes "
                           "~0.4 s after the words and speaks for the seconds that follow)", {"range": (0.0, None)}),
    "voice_hold_s": (1.0, "A voice segment weighs fully up to this age (s) after its end, then linearly less until "
                          "voice_stale_s", {"range": (0.0, None)}),
    "conf_power": (2.0, "Weight of a modality ~ ((top calibrated probability - 1/7) / (6/7)) ** conf_power: evidence "
                        "at chance weighs nothing", {"range": (0.0, 10.0)}),
    "ood_min_conf": (0.35, "Out-of-distribution gate: a modality whose top calibrated probability (maximum-softmax "
                           "score) is below this looks unlike its training data; its weight is multiplied by "
                           "ood_weight", {"range": (0.0, 1.0)}),
    "ood_weight": (0.3, "Weight factor for out-of-distribution evidence (see ood_min_conf), in [0, 1]",
                      {"range": (0.0, 1.0)}),
    "unsure_weight": (0.5, "Weight factor for voice segments marked unsure by the voice node (VoiceEmotion.unsure), "
                           "in [0, 1]", {"range": (0.0, 1.0)}),
    "voice_unsure_threshold": (0.0, "For voice messages from publishers without the unsure flag: unsure when the "
                                    "top probability is below this (0 = trust the flag only)", {"range": (0.0, 1.0)}),
    "model_min_weight": (0.3, "fusion_mode model: a modality whose reliability share is below this is masked out "
                              "of the learned fusion", {"range": (0.0, 1.0)}),
    "voice_prior": (0.1, "How much a voice counts against a face of the same calibrated confidence, before any "
                         "agreement history (voices of new speakers are wrong more often than their confidence says; "
                         "chosen on the dev clips)", {"range": (0.0, 10.0)}),
    "agreement_tau_s": (60.0, "Voice trust from agreement: the voice's weight is also scaled by min(1, agreement / "
                              "agreement_reference) ** agreement_power, where agreement is the face-confidence-weighted "
                              "share of recent voice segments whose top emotion the primary face showed while they "
                              "were spoken, forgetting with this time constant (s; 0 = off)", {"range": (0.0, None)}),
    "agreement_reference": (0.5, "... the agreement that counts as fully trusted, and the running agreement's "
                                 "starting value (no history: full trust)", {"range": (0.01, 1.0)}),
    "agreement_strength": (1.0, "... the starting value counts as this many face-weighted segments",
                           {"range": (0.0, None)}),
    "agreement_power": (2.0, "... how sharply less agreement lowers the voice's weight", {"range": (0.0, None)}),
    "smoothing_filter": ("exp", "Steady output: 'exp' = exponential smoothing of each person's fused probabilities "
                                "(smoothing_tau_s) | 'hmm' = an HMM forward filter over the emotions (hmm_switch_rate, "
                                "hmm_evidence_rate); the hysteresis below applies to either"),
    "hmm_switch_rate": (0.5, "smoothing_filter hmm: expected changes of emotion per second (the person stays in "
                             "their emotion with probability exp(-rate x dt))", {"range": (0.001, 100.0)}),
    "hmm_evidence_rate": (10.0, "smoothing_filter hmm: how many times a second the fused probabilities count as "
                                "evidence (higher: faster and less steady)", {"range": (0.001, 1000.0)}),
    "smoothing_tau_s": (0.1, "Time constant (s) of the exponential smoothing of each person's fused probabilities "
                             "(0 = none)", {"range": (0.0, None)}),
    "switch_margin": (0.15, "Hysteresis: the reported emotion changes only when a new top emotion leads it by this "
                           "much (smoothed probability) ...", {"range": (0.0, 1.0)}),
    "min_dwell_s": (0.1, "... for this long (s) without interruption", {"range": (0.0, None)}),
    "fast_switch_margin": (0.25, "... or at once when it leads by this much (clear evidence; 1 = never)",
                           {"range": (0.0, 1.0)}),
    "voice_switch_margin": (0.4, "... and a change the face evidence does not show (its own top emotion is another, or "
                                 "no face) needs this much x the voice's weight share more lead (voices of new "
                                 "speakers are wrong more often than faces)",
                            {"range": (0.0, 1.0)}),
    "voice_face_change_weight": (0.5, "Voice segments that ended before the person's face last changed its top "
                                      "emotion (held min_dwell_s) count this many times: the words were about the "
                                      "earlier moment (1 = no discount)", {"range": (0.0, 1.0)}),
    "face_confirm_s": (0.1, "The face's own change detector: a new top emotion of the newest frames (those within "
                            "face_hold_s) confirms a change once it has held this long (s)", {"range": (0.0, None)}),
    "face_change_weight": (0.0, "... after a confirmed change, the face frames from before it count this many times "
                                "in the face evidence (0 = the evidence starts afresh; 1 = off)",
                           {"range": (0.0, 1.0)}),
    "rate": (10.0, "Steady publishing rate of emotion/state and emotion/states (Hz)", {"range": (0.01, 1000.0)}),
    "publish_on_change": (True, "Also publish at once when the primary person's top emotion changes"),
    "publish_on_face": (True, "Also publish at once on every face array (frame to emotion/state in a few ms; the "
                              "steady rate then only fills the gaps, e.g. voice alone)"),
    "forget_s": (5.0, "Persons (face track ids) not seen for this long (s) are forgotten",
                      {"range": (0.01, 86400.0)}),
    "voice_to": ("primary", "Voice evidence (no speaker id) goes to the 'primary' person only, or to 'all'"),
    "hri": (False, "ROS4HRI (REP-155) output: the fused state of each person that a person manager (e.g. "
                   "hri_person_manager) has matched to one of our faces, as hri_msgs/Expression on "
                   "/humans/persons/<person_id>/expression (follows /humans/persons/tracked and each person's "
                   "latched face_id); needs the hri_msgs package"),
    "allow_no_model": (False, "fusion_mode model with the model file missing: fail configure (false) or run with the "
                              "probability-level fallback (true)"),
    "autostart": (True, "Configure and activate on start (false: wait for a lifecycle manager)"),
}


def probs_in_label_order(labels, probabilities, what: str) -> np.ndarray:
    """A message's probabilities reordered into LABELS order (labels empty = already in that order)."""
    p = np.asarray(probabilities, dtype=np.float32).reshape(-1)
    if p.size == 0:
        raise InputError(f"{what}: no probabilities")
    labels = list(labels)
    if not labels or tuple(labels) == LABELS:
        if p.shape[0] != NUM_LABELS:
            raise InputError(f"{what}: {p.shape[0]} probabilities, expected {NUM_LABELS}")
        return p
    if len(labels) != p.shape[0]:
        raise InputError(f"{what}: {len(labels)} labels but {p.shape[0]} probabilities")
    out = np.zeros(NUM_LABELS, np.float32)
    for name, v in zip(labels, p):
        label = normalise(name)
        if label is None:
            raise InputError(f"{what}: unknown label {name!r}")
        out[LABELS.index(label)] += v
    return out


class _Rate:
    """Messages per second over the last few seconds, and the time of the last one (monotonic clock)."""

    def __init__(self, horizon_s: float = 5.0):
        self.horizon_s = horizon_s
        self.t: collections.deque = collections.deque(maxlen=500)

    def tick(self) -> None:
        self.t.append(time.monotonic())

    def rate(self) -> float:
        now = time.monotonic()
        recent = [x for x in self.t if now - x <= self.horizon_s]
        return (len(recent) - 1) / (now - recent[0]) if len(recent) >= 2 and now > recent[0] else 0.0


class FusionNode(LifecycleNode):
    def __init__(self, **kwargs):
        super().__init__(NODE_NAME, **kwargs)
        self.p = declare_parameters(self, PARAMS)
        self.log = RateLimitedLogger(self.get_logger(), period_s=5.0)
        self.model: Optional[FusionModel] = None
        self.model_file = ""
        self.fusion: Optional[TemporalFusion] = None
        self._lock = threading.Lock()
        self._subs: List = []
        self._pub_state = None
        self._pub_states = None
        self._timer = None
        self._hri_pubs = None                       # PerIdPublishers of /humans/persons/<id>/expression (hri on)
        self._hri_subs: Dict[str, object] = {}      # person id -> /humans/persons/<id>/face_id subscription
        self._hri_face_of: Dict[str, str] = {}      # person id -> face id (the person manager's match)
        self._hri_lock = threading.Lock()
        self.diag: Optional[Diagnostics] = None
        self._rates = {"face": _Rate(), "voice": _Rate()}
        self._frame_ids: Dict[str, str] = {}
        self._last_primary: Optional[tuple] = None  # (person_id, emotion) last published on emotion/state
        self.published = 0
        self._last_publish = -1e9  # time.monotonic() of the last state on emotion/state

    # -- lifecycle ------------------------------------------------------------------------------------------------
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.p = declare_parameters(self, PARAMS)
        p = self.p
        path = p.model_path or paths.model_path("fusion.pt")
        mode = str(p.fusion_mode).strip().lower()
        self.model_file = path if mode != "average" else ""
        self.model = None
        if mode not in ("average", "model", "auto"):
            self.get_logger().error(f"cannot configure: fusion_mode must be average, model or auto, got {mode!r}")
            return TransitionCallbackReturn.FAILURE
        if p.hri:
            try:
                from emotion_ros.ros import hri
                hri.require()
            except ImportError as exc:
                self.get_logger().error(f"cannot configure: {exc}")
                return TransitionCallbackReturn.FAILURE
        try:
            if int(p.cpu_threads) > 0:
                import torch
                torch.set_num_threads(int(p.cpu_threads))
            if mode == "model" or (mode == "auto" and os.path.isfile(path)):
                self.model = FusionModel(path, device=p.device)
        except ModelFileError as exc:
            if not p.allow_no_model:
                self.get_logger().error(f"cannot configure: {exc}")
                return TransitionCallbackReturn.FAILURE
            self.get_logger().warning(f"{exc}; allow_no_model is set: using the reliability-weighted average")
            self.model = None
        try:
            if not float(p.rate) > 0:
                raise ValueError(f"rate must be > 0, got {p.rate}")

            def positive_or_none(v):
                return float(v) if float(v) > 0 else None
            self.fusion = TemporalFusion(
                self.model, window_s=float(p.window_s), stale_s=float(p.stale_s),
                face_stale_s=positive_or_none(p.face_stale_s), voice_stale_s=positive_or_none(p.voice_stale_s),
                face_hold_s=float(p.face_hold_s), voice_hold_s=float(p.voice_hold_s),
                fusion_mode="model" if self.model is not None else "average", conf_power=float(p.conf_power),
                ood_min_conf=float(p.ood_min_conf), ood_weight=float(p.ood_weight),
                unsure_weight=float(p.unsure_weight), voice_unsure_threshold=float(p.voice_unsure_threshold),
                model_min_weight=float(p.model_min_weight), voice_prior=float(p.voice_prior),
                smoothing_tau_s=float(p.smoothing_tau_s),
                switch_margin=float(p.switch_margin), min_dwell_s=float(p.min_dwell_s),
                fast_switch_margin=float(p.fast_switch_margin), voice_switch_margin=float(p.voice_switch_margin),
                pool=str(p.pool).strip().lower(), forget_s=float(p.forget_s),
                voice_to=str(p.voice_to), smoothing_filter=str(p.smoothing_filter).strip().lower(),
                hmm_switch_rate=float(p.hmm_switch_rate), hmm_evidence_rate=float(p.hmm_evidence_rate),
                voice_face_change_weight=float(p.voice_face_change_weight),
                face_change_weight=float(p.face_change_weight), face_confirm_s=float(p.face_confirm_s),
                agreement_tau_s=float(p.agreement_tau_s), agreement_reference=float(p.agreement_reference),
                agreement_strength=float(p.agreement_strength), agreement_power=float(p.agreement_power))
        except ValueError as exc:
            self.get_logger().error(f"cannot configure: {exc}")
            self.model = None
            return TransitionCallbackReturn.FAILURE
        if self.model is not None:
            self.get_logger().info(f"fusion model {path} on {self.model.device} (face {self.model.face_dim}-d, "
                                   f"voice {self.model.voice_dim}-d embeddings)")
        else:
            self.get_logger().info("fusion: reliability-weighted average of the calibrated probabilities "
                                   "(no fusion model)")
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        if self.fusion is None:
            self.get_logger().error("activate: not configured")
            return TransitionCallbackReturn.FAILURE
        with self._lock:
            self.fusion.reset()
            self._last_primary = None
        self.diag = Diagnostics(self, "fusion", hardware_id=str(self.model.device) if self.model else "cpu",
                                stale_after_s=2.0)
        self.diag.set_value("model", self.model_file if self.model is not None
                            else "none (reliability-weighted average)")
        self.diag.set_value("device", str(self.model.device) if self.model is not None else "cpu")
        self._pub_state = self.create_publisher(EmotionState, "emotion/state", reliable_qos(10))
        self._pub_states = self.create_publisher(EmotionState, "emotion/states", reliable_qos(10))
        self._subs = [
            self.create_subscription(FaceEmotionArray, "emotion/faces", self._on_faces, reliable_qos(10)),
            self.create_subscription(VoiceEmotion, "emotion/voice", self._on_voice, reliable_qos(10)),
        ]
        # each input on its own: face arrays come with every frame (WARN when they stop), voice only per
        # utterance (no staleness check); either topic losing its publisher (face_node killed) is a WARN
        self.diag.watch_input("face", stale_after_s=FACE_STOPPED_S, topic=self._subs[0].topic_name)
        self.diag.watch_input("voice", stale_after_s=None, topic=self._subs[1].topic_name)
        if self.p.hri:
            from emotion_ros.core.hri import PERSONS_TRACKED, person_topic
            from emotion_ros.ros import hri
            self._hri_pubs = hri.PerIdPublishers(self, person_topic, {"expression": hri.Expression})
            self._subs.append(self.create_subscription(hri.IdsList, PERSONS_TRACKED, self._on_hri_persons,
                                                       hri.per_id_qos()))
        self._timer = self.create_timer(1.0 / float(self.p.rate), self._on_timer)
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._close()
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._close()
        self.model = None
        self.fusion = None
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._close()
        self.model = None
        self.fusion = None
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._close()
        self.model = None
        self.fusion = None
        return TransitionCallbackReturn.SUCCESS

    def _close(self) -> None:
        if self._timer is not None:
            self.destroy_timer(self._timer)
            self._timer = None
        for sub in self._subs:
            self.destroy_subscription(sub)
        self._subs = []
        for name in ("_pub_state", "_pub_states"):
            pub = getattr(self, name)
            if pub is not None:
                self.destroy_publisher(pub)
                setattr(self, name, None)
        with self._hri_lock:
            pubs, subs = self._hri_pubs, list(self._hri_subs.values())
            self._hri_pubs, self._hri_subs, self._hri_face_of = None, {}, {}
        for sub in subs:
            self.destroy_subscription(sub)
        if pubs is not None:
            pubs.destroy_all()
        if self.diag is not None:
            self.diag.destroy()
            self.diag = None

    # -- inputs ---------------------------------------------------------------------------------------------------
    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _check_skew(self, modality: str, t: float) -> None:
        skew = self._now() - t
        limit = max(float(self.p.stale_s), float(self.p.window_s), float(self.p.voice_stale_s)) + 1.0
        if abs(skew) > limit:
            self.log.warn(f"skew_{modality}",
                          f"emotion/{modality} stamps are {skew:+.1f} s off the node clock: that evidence is never "
                          f"fresh (replaying a bag? set use_sim_time; else check the publishers' clocks)")

    def _bad_input(self, key: str, exc: Exception) -> None:
        self.log.warn(key, f"dropped input: {exc}")
        if self.diag is not None:
            self.diag.report_error(str(exc))

    def _on_faces(self, msg: FaceEmotionArray) -> None:
        fusion, diag = self.fusion, self.diag
        if fusion is None:
            return
        self._rates["face"].tick()
        if diag is not None:
            diag.tick_input("face")
        t = stamp_to_sec(msg.header.stamp)
        with self._lock:
            for k, face in enumerate(msg.faces):
                pid = face.id or f"face{k}"
                try:
                    probs = probs_in_label_order(face.labels, face.probabilities, f"face {pid!r}")
                    warning = fusion.add_face(t, pid, max(0, face.width) * max(0, face.height), probs,
                                              np.asarray(face.embedding, dtype=np.float32))
                except InputError as exc:
                    self._bad_input("face_input", exc)
                    continue
                if warning:
                    self.log.warn("face_dim", warning)
                self._frame_ids[pid] = msg.header.frame_id
        self._check_skew("faces", t)
        if self.p.publish_on_face:
            self._update(on_change_only=False)
        elif self.p.publish_on_change:
            self._update(on_change_only=True)

    def _on_voice(self, msg: VoiceEmotion) -> None:
        fusion, diag = self.fusion, self.diag
        if fusion is None:
            return
        self._rates["voice"].tick()
        if diag is not None:
            diag.tick_input("voice")
        t0, t1 = stamp_to_sec(msg.start), stamp_to_sec(msg.end)
        if t0 == 0.0 and t1 == 0.0:  # start/end not filled: a segment ending at the header stamp
            t0 = t1 = stamp_to_sec(msg.header.stamp)
        with self._lock:
            try:
                probs = probs_in_label_order(msg.labels, msg.probabilities, "voice")
                warning = fusion.add_voice(t0, t1, probs, np.asarray(msg.embedding, dtype=np.float32),
                                           voice_activity=bool(msg.voice_activity),
                                           unsure=True if getattr(msg, "unsure", False) else None)
            except InputError as exc:
                self._bad_input("voice_input", exc)
                return
        if warning:
            self.log.warn("voice_dim", warning)
        self._check_skew("voice", t1)
        if self.p.publish_on_change:
            self._update(on_change_only=True)

    def _on_hri_persons(self, msg) -> None:
        """/humans/persons/tracked: per person, its face_id (latched) in and its expression topic out."""
        from std_msgs.msg import String
        from emotion_ros.core.hri import person_topic
        from emotion_ros.ros import hri
        with self._hri_lock:
            pubs = self._hri_pubs
            if pubs is None:
                return
            added, removed = pubs.sync(list(msg.ids))
            for pid in pubs.rejected:
                self.log.warn("hri_id", f"hri: person id {pid!r} cannot be part of a topic name; not published")
            for pid in removed:
                sub = self._hri_subs.pop(pid, None)
                self._hri_face_of.pop(pid, None)
                if sub is not None:
                    self.destroy_subscription(sub)
            for pid in added:
                if pubs.get(pid, "expression") is None:
                    continue  # rejected id
                self._hri_subs[pid] = self.create_subscription(
                    String, person_topic(pid, "face_id"),
                    lambda m, pid=pid: self._on_hri_face_id(pid, m), hri.latched_reader_qos())

    def _on_hri_face_id(self, person_id: str, msg) -> None:
        with self._hri_lock:
            if person_id in self._hri_subs:
                self._hri_face_of[person_id] = str(msg.data)

    def publish_hri(self, states: List[FusedState], frame_ids: Dict[str, str]) -> int:
        """Each state whose face a person manager matched to a person, on /humans/persons/<id>/expression.
        Returns how many went out."""
        from emotion_ros.core.hri import expression_of
        from emotion_ros.ros import hri
        with self._hri_lock:
            pubs = self._hri_pubs
            if pubs is None:
                return 0
            person_of = {face: pid for pid, face in self._hri_face_of.items() if face}
            targets = [(s, pubs.get(person_of[s.person_id], "expression")) for s in states
                       if s.person_id and s.person_id in person_of]
        sent = 0
        for s, pub in targets:
            if pub is None:
                continue
            header = EmotionState().header
            header.stamp = sec_to_stamp(s.stamp)
            header.frame_id = frame_ids.get(s.person_id, "") if s.face_weight > 0 else ""
            try:
                pub.publish(hri.expression_msg(header, expression_of(s.probs, s.emotion)))
                sent += 1
            except InputError as exc:
                self._bad_input("hri", exc)
        return sent

    # -- outputs --------------------------------------------------------------------------------------------------
    def _on_timer(self) -> None:
        if time.monotonic() - self._last_publish < 0.9 / float(self.p.rate):
            return  # published on input just now: the steady rate only fills gaps
        self._update(on_change_only=False)

    def _update(self, on_change_only: bool) -> None:
        fusion = self.fusion
        if fusion is None:
            return
        t0 = time.perf_counter()
        now = self._now()
        with self._lock:
            try:
                states = fusion.estimate(now)
            except InputError as exc:  # e.g. a broken clock
                self._bad_input("estimate", exc)
                return
            primary = next((s for s in states if s.primary), None)
            key = None if primary is None else (primary.person_id, primary.emotion)
            changed = primary is not None and (self._last_primary is None or key[1] != self._last_primary[1])
            if on_change_only and not changed:
                if primary is None:
                    self._last_primary = None  # a primary that comes back counts as a change
                self._record(t0, states, now)
                return
            self._last_primary = key
            frame_ids = dict(self._frame_ids)
            if len(self._frame_ids) > 256:
                self._frame_ids = {s.person_id: self._frame_ids.get(s.person_id, "") for s in states}
        pub_state, pub_states = self._pub_state, self._pub_states
        if pub_state is None or pub_states is None:
            return
        try:
            for s in states:
                msg = self.to_msg(s, frame_ids.get(s.person_id, "") if s.face_weight > 0 else "")
                pub_states.publish(msg)
                if s.primary:
                    pub_state.publish(msg)
                    self.published += 1
                    self._last_publish = time.monotonic()
                    if self.diag is not None:
                        self.diag.tick_output()
        except Exception as exc:  # noqa: BLE001 - context shut down while publishing
            self.log.warn("publish", f"publish failed: {exc}")
        if self._hri_pubs is not None:
            try:
                self.publish_hri(states, frame_ids)
            except Exception as exc:  # noqa: BLE001 - context shut down while publishing
                self.log.warn("publish_hri", f"hri publish failed: {exc}")
        self._record(t0, states, now)

    def _record(self, t0: float, states: List[FusedState], now: float) -> None:
        diag = self.diag
        if diag is None:
            return
        diag.record_processing(time.perf_counter() - t0)
        primary = next((s for s in states if s.primary), None)
        for m in ("face", "voice"):
            diag.set_value(f"{m}_input_rate_hz", f"{self._rates[m].rate():.2f}")
        fa = None if primary is None else primary.face_age
        va = None if primary is None else primary.voice_age
        diag.set_value("face_age_s", "stale" if fa is None else f"{fa:.3f}")
        diag.set_value("voice_age_s", "stale" if va is None else f"{va:.3f}")
        diag.set_value("persons", str(len(states)))
        diag.set_value("mode", "" if primary is None else primary.mode)
        fusion = self.fusion
        if fusion is not None:
            diag.set_value("voice_trust", f"{fusion.voice_trust:.2f} (agreement {fusion.voice_agreement:.2f})")

    @staticmethod
    def to_msg(s: FusedState, frame_id: str = "") -> EmotionState:
        msg = EmotionState()
        msg.header.stamp = sec_to_stamp(s.stamp)
        msg.header.frame_id = frame_id
        msg.person_id = s.person_id
        msg.primary = bool(s.primary)
        msg.emotion = s.emotion
        msg.confidence = float(s.confidence)
        msg.labels = list(LABELS)
        msg.probabilities = [float(x) for x in s.probs]
        msg.valence = float(s.valence)
        msg.arousal = float(s.arousal)
        msg.face_weight = float(s.face_weight)
        msg.voice_weight = float(s.voice_weight)
        return msg


def main(args=None) -> None:
    code = command_line(NODE_NAME, PARAMS, __doc__, args)
    exit_process(code if code is not None else run_node(FusionNode, args=args))


if __name__ == "__main__":
    sys.exit(main())

"""TemporalFusion: time alignment, staleness, model-level fusion and its fallbacks, smoothing, primary person."""
import math

import numpy as np
import pytest
import torch

from emotion_ros.core.errors import InputError
from emotion_ros.core.fusion import ARCH, FusionModel, FusionNet, TemporalFusion
from emotion_ros.core.labels import INDEX, LABELS, valence_arousal
from emotion_ros.core.modelio import save_checkpoint

FACE_DIM, VOICE_DIM, HIDDEN = 16, 8, 8


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    torch.manual_seed(0)
    net = FusionNet(FACE_DIM, VOICE_DIM, HIDDEN)
    path = str(tmp_path_factory.mktemp("fusion") / "fusion.pt")
    save_checkpoint(path, kind="fusion", arch=ARCH, model=net,
                    input_spec={"face_dim": FACE_DIM, "voice_dim": VOICE_DIM}, config={"model": {"hidden": HIDDEN}})
    return FusionModel(path, "cpu")


def onehot(label, p=0.9):
    v = np.full(len(LABELS), (1 - p) / (len(LABELS) - 1), np.float32)
    v[INDEX[label]] = p
    return v


RNG = np.random.default_rng(0)
FACE_EMB = RNG.normal(size=FACE_DIM).astype(np.float32)
VOICE_EMB = RNG.normal(size=VOICE_DIM).astype(np.float32)


def test_both_fresh_uses_model_level_fusion(model):
    tf = TemporalFusion(model, smoothing_tau_s=0)
    tf.add_face(10.0, "p1", 5000, onehot("happy"), FACE_EMB)
    tf.add_voice(9.2, 9.9, onehot("sad", 0.6), VOICE_EMB)
    (st,) = tf.estimate(10.1)
    assert st.mode == "model" and st.primary and st.person_id == "p1"
    np.testing.assert_allclose(st.probs, model.predict(FACE_EMB, VOICE_EMB), atol=1e-6)
    # differs from each single-modality prediction: both embeddings really went in
    assert not np.allclose(st.probs, model.predict(FACE_EMB, None), atol=1e-4)
    assert not np.allclose(st.probs, model.predict(None, VOICE_EMB), atol=1e-4)
    assert st.stamp == 10.0  # newest evidence: the face frame, not "now", not the voice end
    assert st.emotion == LABELS[int(np.argmax(st.probs))] and st.confidence == pytest.approx(st.probs.max())
    assert (st.valence, st.arousal) == pytest.approx(valence_arousal(st.probs))
    assert 0 < st.face_weight < 1 and 0 < st.voice_weight < 1
    assert st.face_weight + st.voice_weight == pytest.approx(1.0)
    # face: age 0.1 conf 0.9; voice: age 0.2 conf 0.6 -> face weighs more
    assert st.face_weight > st.voice_weight
    assert st.changed


def test_face_stops_voice_only_then_face_returns(model):
    tf = TemporalFusion(model, window_s=1.0, stale_s=1.0, smoothing_tau_s=0)
    for i in range(10):  # faces at 10 Hz from t=0 to 0.9, voice utterances covering 0..3 s
        tf.add_face(0.1 * i, "p1", 4000, onehot("happy"), FACE_EMB)
    tf.add_voice(0.0, 3.0, onehot("angry", 0.8), VOICE_EMB)
    (st,) = tf.estimate(0.95)
    assert st.person_id == "p1" and st.face_weight > 0 and st.voice_weight > 0
    (st,) = tf.estimate(1.5)  # last face 0.6 s old: still fresh
    assert st.person_id == "p1" and st.face_weight > 0
    (st,) = tf.estimate(1.95)  # last face 1.05 s old > stale_s: voice alone
    assert st.person_id == "" and st.primary
    assert st.face_weight == 0.0 and st.voice_weight == 1.0
    np.testing.assert_allclose(st.probs, model.predict(None, VOICE_EMB), atol=1e-6)
    assert st.stamp == 3.0 and st.face_probs is None
    tf.add_face(2.0, "p1", 4000, onehot("happy"), FACE_EMB)
    (st,) = tf.estimate(2.05)
    assert st.person_id == "p1" and st.mode == "model" and st.face_weight > 0 and st.voice_weight > 0
    np.testing.assert_allclose(st.probs, model.predict(FACE_EMB, VOICE_EMB), atol=1e-6)
    # voice ended at 3.0: after 4.0 it is stale too, the face alone remains
    tf.add_face(4.2, "p1", 4000, onehot("happy"), FACE_EMB)
    (st,) = tf.estimate(4.25)
    assert st.voice_weight == 0.0 and st.face_weight == 1.0
    np.testing.assert_allclose(st.probs, model.predict(FACE_EMB, None), atol=1e-6)
    assert tf.estimate(6.0) == []  # nothing fresh


def test_missing_embedding_falls_back_to_modality_probs(model):
    tf = TemporalFusion(model, smoothing_tau_s=0)
    tf.add_face(1.0, "p1", 100, onehot("surprised"), None)
    (st,) = tf.estimate(1.0)
    assert st.mode == "probs"
    np.testing.assert_allclose(st.probs, onehot("surprised"), atol=1e-6)
    # voice with an embedding, face without: model on the voice, face probabilities mixed in by weight
    tf.add_voice(0.5, 1.0, onehot("sad"), VOICE_EMB)
    (st,) = tf.estimate(1.0)
    assert st.mode == "model+probs"
    expect = st.voice_weight * model.predict(None, VOICE_EMB) + st.face_weight * onehot("surprised")
    np.testing.assert_allclose(st.probs, expect / expect.sum(), atol=1e-5)


def test_embedding_of_wrong_size_warns_and_falls_back(model):
    tf = TemporalFusion(model, smoothing_tau_s=0)
    warn = tf.add_face(1.0, "p1", 100, onehot("happy"), np.zeros(FACE_DIM + 3, np.float32))
    assert warn and "face embedding has 19 values" in warn and str(FACE_DIM) in warn
    assert tf.add_voice(0.5, 1.0, onehot("happy"), VOICE_EMB) is None
    (st,) = tf.estimate(1.0)
    assert st.mode == "model+probs"


def test_probability_fallback_without_model():
    tf = TemporalFusion(None, smoothing_tau_s=0)
    tf.add_face(1.0, "a", 100, onehot("happy", 0.9), FACE_EMB)
    tf.add_voice(0.0, 1.0, onehot("sad", 0.5), VOICE_EMB)
    (st,) = tf.estimate(1.0)
    assert st.mode == "probs"
    w_f, w_v = 0.9, 0.5  # both age 0 -> freshness 1, weight = own confidence
    assert st.face_weight == pytest.approx(w_f / (w_f + w_v), abs=1e-5)
    expect = (w_f * onehot("happy", 0.9) + w_v * onehot("sad", 0.5)) / (w_f + w_v)
    np.testing.assert_allclose(st.probs, expect, atol=1e-5)


def test_voice_segments_weighted_by_overlap():
    tf = TemporalFusion(None, window_s=1.0, stale_s=1.0, smoothing_tau_s=0)
    tf.add_voice(8.0, 9.2, onehot("sad", 1.0), None)    # overlaps [9, 10] by 0.2
    tf.add_voice(9.2, 10.0, onehot("happy", 1.0), None)  # overlaps by 0.8
    tf.add_voice(9.5, 10.0, onehot("angry", 1.0), None, voice_activity=False)  # no speech: ignored
    tf.add_voice(5.0, 8.5, onehot("scared", 1.0), None)  # outside the window
    (st,) = tf.estimate(10.0)
    assert st.person_id == "" and st.voice_weight == 1.0
    assert st.probs[INDEX["happy"]] == pytest.approx(0.8, abs=1e-5)
    assert st.probs[INDEX["sad"]] == pytest.approx(0.2, abs=1e-5)
    assert st.probs[INDEX["scared"]] == pytest.approx(0.0, abs=1e-6)
    assert st.stamp == 10.0


def test_smoothing_is_dt_aware(model):
    tau = 0.5
    tf = TemporalFusion(None, smoothing_tau_s=tau, window_s=10, stale_s=10)
    tf.add_face(0.0, "p", 100, onehot("neutral", 1.0))
    (st,) = tf.estimate(0.0)
    assert st.emotion == "neutral" and st.changed
    tf.add_face(0.01, "p", 100, onehot("happy", 1.0))
    (st,) = tf.estimate(0.01 + tau)
    # one step of length dt moves 1 - exp(-dt / tau) of the way
    assert st.probs[INDEX["happy"]] == pytest.approx(1 - math.exp(-(tau + 0.01) / tau), abs=1e-4)
    assert st.emotion == "happy" and st.changed
    # the same time span in 5 steps ends at the same place (dt-aware)
    tf2 = TemporalFusion(None, smoothing_tau_s=tau, window_s=10, stale_s=10)
    tf2.add_face(0.0, "p", 100, onehot("neutral", 1.0))
    tf2.estimate(0.0)
    tf2.add_face(0.01, "p", 100, onehot("happy", 1.0))
    for k in range(1, 6):
        (st2,) = tf2.estimate(0.01 + tau * k / 5)
    np.testing.assert_allclose(st2.probs, st.probs, atol=1e-4)
    (st3,) = tf2.estimate(0.01 + tau * 1.2)
    assert not st3.changed  # still happy


def test_primary_is_largest_face_and_voice_goes_to_primary(model):
    tf = TemporalFusion(model, smoothing_tau_s=0)
    tf.add_face(5.0, "small", 900, onehot("sad"), FACE_EMB)
    tf.add_face(5.02, "big", 10000, onehot("happy"), FACE_EMB * 0.5)
    tf.add_voice(4.5, 5.0, onehot("angry"), VOICE_EMB)
    states = tf.estimate(5.05)
    assert [s.person_id for s in states] == ["big", "small"]
    assert [s.primary for s in states] == [True, False]
    assert states[0].voice_weight > 0 and states[1].voice_weight == 0 and states[1].face_weight == 1.0
    assert states[0].stamp == pytest.approx(5.02) and states[1].stamp == pytest.approx(5.0)
    # the small face comes closer: it becomes primary
    tf.add_face(5.1, "small", 20000, onehot("sad"), FACE_EMB)
    tf.add_face(5.1, "big", 10000, onehot("happy"), FACE_EMB * 0.5)
    states = tf.estimate(5.12)
    assert states[0].person_id == "small" and states[0].primary


def test_voice_to_all():
    tf = TemporalFusion(None, smoothing_tau_s=0, voice_to="all")
    tf.add_face(5.0, "a", 900, onehot("sad"))
    tf.add_face(5.0, "b", 1000, onehot("happy"))
    tf.add_voice(4.5, 5.0, onehot("angry"))
    assert all(s.voice_weight > 0 for s in tf.estimate(5.0))


def test_persons_forgotten_and_buffers_bounded():
    tf = TemporalFusion(None, forget_s=2.0, buffer_len=4)
    for i in range(50):
        tf.add_face(i * 0.01, "a", 100, onehot("happy"))
        tf.add_voice(i * 0.01, i * 0.01 + 0.01, onehot("happy"))
    assert len(tf._faces["a"]) == 4 and len(tf._voice) == 4
    tf.estimate(0.5)
    tf.add_face(3.0, "b", 100, onehot("sad"))
    tf.estimate(3.0)
    assert tf.persons == ["b"]


def test_newest_face_in_window_and_future_stamps():
    tf = TemporalFusion(None, smoothing_tau_s=0)
    tf.add_face(2.0, "p", 100, onehot("happy"))
    tf.add_face(1.5, "p", 100, onehot("sad"))  # arrives late, older: not used
    (st,) = tf.estimate(2.1)
    assert st.emotion == "happy" and st.stamp == 2.0
    tf2 = TemporalFusion(None)
    tf2.add_face(50.0, "p", 100, onehot("happy"))  # far in the future of the caller's clock: not used
    assert tf2.estimate(2.0) == []


@pytest.mark.parametrize("call, field", [
    (lambda tf: tf.add_face(float("nan"), "p", 1, onehot("happy")), "face stamp"),
    (lambda tf: tf.add_face(1.0, "p", float("inf"), onehot("happy")), "face box_area"),
    (lambda tf: tf.add_face(1.0, "p", 1, np.array([np.nan] * 7)), "face probabilities"),
    (lambda tf: tf.add_face(1.0, "p", 1, onehot("happy"), np.array([0, np.inf])), "face embedding"),
    (lambda tf: tf.add_face(1.0, "p", 1, np.ones(5)), "face probabilities"),
    (lambda tf: tf.add_voice(float("nan"), 1.0, onehot("happy")), "voice start"),
    (lambda tf: tf.add_voice(0.0, float("inf"), onehot("happy")), "voice end"),
    (lambda tf: tf.add_voice(0.0, 1.0, np.array([np.inf] + [0] * 6)), "voice probabilities"),
    (lambda tf: tf.add_voice(0.0, 1.0, onehot("happy"), np.array([np.nan])), "voice embedding"),
    (lambda tf: tf.add_voice(2.0, 1.0, onehot("happy")), "before it starts"),
    (lambda tf: tf.estimate(float("nan")), "now"),
])
def test_bad_input_raises_input_error_naming_the_field(call, field):
    tf = TemporalFusion(None)
    with pytest.raises(InputError, match=field):
        call(tf)


def test_clock_jump_back_resets():
    tf = TemporalFusion(None)
    tf.add_face(100.0, "p", 100, onehot("happy"))
    assert tf.estimate(100.0)
    tf.add_face(1.0, "q", 100, onehot("sad"))
    (st,) = tf.estimate(1.0)  # bag restarted: the evidence of t=100 is dropped, the new person is seen
    assert st.person_id == "q" and st.emotion == "sad"


def test_primary_stream_stays_continuous_when_the_face_turns_away():
    tf = TemporalFusion(None, smoothing_tau_s=0.5, window_s=1.0, stale_s=1.0)
    for i in range(20):  # a happy face and happy voice for 2 s
        t = 0.1 * i
        tf.add_face(t, "p1", 100, onehot("happy", 0.95))
        tf.add_voice(t - 0.1, t, onehot("happy", 0.95))
        tf.estimate(t)
    # the face turns away, the voice turns sad: the voice-only state starts from p1's smoothed state
    tf.add_voice(1.9, 3.05, onehot("sad", 0.95))
    (st,) = tf.estimate(3.05)
    assert st.person_id == "" and st.face_weight == 0.0
    a = 1 - math.exp(-(3.05 - 1.9) / 0.5)
    assert st.probs[INDEX["happy"]] == pytest.approx((1 - a) * 0.95 + a * onehot("sad", 0.95)[INDEX["happy"]],
                                                     abs=1e-4)
    assert st.changed == (st.emotion != "happy")
    # and back: p1's stream continues from the voice-only state
    tf.add_face(3.1, "p1", 100, onehot("sad", 0.95))
    (st2,) = tf.estimate(3.1)
    assert st2.person_id == "p1"
    b = 1 - math.exp(-0.05 / 0.5)
    np.testing.assert_allclose(st2.probs, (1 - b) * st.probs + b * st2.raw_probs, atol=1e-4)


# -- reliability weighting, staleness per modality, hysteresis (issue 10) -----------------------------------------

NEW = dict(face_stale_s=0.4, face_hold_s=0.15, voice_stale_s=3.5, voice_hold_s=1.5, smoothing_tau_s=0,
           fusion_mode="average")


def test_staleness_per_modality():
    tf = TemporalFusion(None, **NEW)
    tf.add_face(10.0, "p", 100, onehot("happy", 0.8))
    tf.add_voice(8.0, 9.5, onehot("sad", 0.8), None)
    (st,) = tf.estimate(10.3)  # face 0.3 s old: fresh; voice ended 0.8 s ago: fresh
    assert st.face_weight > 0 and st.voice_weight > 0 and st.person_id == "p"
    (st,) = tf.estimate(10.5)  # face 0.5 s old: stale (face_stale_s 0.4); the voice still speaks
    assert st.person_id == "" and st.face_weight == 0 and st.voice_weight == 1.0
    assert tf.estimate(13.1) == []  # voice ended 3.6 s ago: stale (voice_stale_s 3.5)


def test_recency_decays_after_hold():
    tf = TemporalFusion(None, **NEW)
    assert tf._recency(1.0, 1.5, 3.5) == 1.0
    assert tf._recency(2.5, 1.5, 3.5) == pytest.approx(0.5)
    w_new = tf.reliability(onehot("sad", 0.8), tf._recency(0.5, 1.5, 3.5))
    w_old = tf.reliability(onehot("sad", 0.8), tf._recency(3.0, 1.5, 3.5))
    assert w_new > 3 * w_old


def test_voice_near_chance_does_not_move_a_confident_face():
    """The issue's failure: a voice the model does not understand pulled a correct face off its answer."""
    tf = TemporalFusion(None, **NEW, ood_min_conf=0.35, ood_weight=0.3)
    tf.add_face(1.0, "p", 100, onehot("happy", 0.55))
    tf.add_voice(0.0, 1.0, onehot("sad", 0.3), None)  # barely above chance (1/7): out of its domain
    (st,) = tf.estimate(1.0)
    assert st.emotion == "happy" and st.face_weight > 0.85
    # a confident voice does carry weight
    tf2 = TemporalFusion(None, **NEW)
    tf2.add_face(1.0, "p", 100, onehot("happy", 0.4))
    tf2.add_voice(0.0, 1.0, onehot("sad", 0.9), None)
    (st2,) = tf2.estimate(1.0)
    assert st2.emotion == "sad" and st2.voice_weight > st2.face_weight


def test_unsure_voice_weighs_less():
    weights = []
    for unsure in (False, True):
        tf = TemporalFusion(None, **NEW, unsure_weight=0.25)
        tf.add_face(1.0, "p", 100, onehot("happy", 0.6))
        tf.add_voice(0.0, 1.0, onehot("sad", 0.6), None, unsure=unsure)
        (st,) = tf.estimate(1.0)
        weights.append(st.voice_weight)
        assert st.voice_unsure == unsure
    assert weights[0] == pytest.approx(0.5) and weights[1] == pytest.approx(0.25 / 1.25)
    # without the flag, the fusion's own threshold decides
    tf = TemporalFusion(None, **NEW, voice_unsure_threshold=0.7)
    tf.add_voice(0.0, 1.0, onehot("sad", 0.6), None)
    (st,) = tf.estimate(1.0)
    assert st.voice_unsure


def test_face_evidence_is_averaged_over_fresh_frames():
    tf = TemporalFusion(None, **NEW)
    for i, lab in enumerate(["happy", "happy", "sad", "happy"]):  # one odd frame
        tf.add_face(10.0 + 0.04 * i, "p", 100, onehot(lab, 0.7))
    (st,) = tf.estimate(10.12)
    assert st.emotion == "happy"
    np.testing.assert_allclose(st.face_probs, onehot("happy", 0.7))  # the newest frame, as reported per modality
    assert st.raw_probs[INDEX["sad"]] > onehot("happy", 0.7)[INDEX["sad"]]  # the odd frame was averaged in


def test_hysteresis_holds_against_noise_and_follows_evidence():
    tf = TemporalFusion(None, **{**NEW, "smoothing_tau_s": 0.3}, switch_margin=0.1, min_dwell_s=0.3)
    t, emotions = 0.0, []
    for i in range(30):  # 3 s of happy with a single-frame "sad" blip every 0.5 s
        t = 0.1 * i
        tf.add_face(t, "p", 100, onehot("sad" if i % 5 == 4 else "happy", 0.8))
        (st,) = tf.estimate(t)
        emotions.append(st.emotion)
    assert set(emotions) == {"happy"}
    changes = []
    for i in range(30, 50):  # then sad for 2 s: the reported emotion follows within a second
        t = 0.1 * i
        tf.add_face(t, "p", 100, onehot("sad", 0.8))
        (st,) = tf.estimate(t)
        if st.changed:
            changes.append((t, st.emotion))
    assert len(changes) == 1 and changes[0][1] == "sad" and changes[0][0] - 3.0 <= 1.0
    assert st.emotion == "sad" and st.confidence == pytest.approx(st.probs[INDEX["sad"]])


def test_hysteresis_off_follows_the_top_probability():
    tf = TemporalFusion(None, **NEW)
    tf.add_face(0.0, "p", 100, onehot("happy", 0.8))
    assert tf.estimate(0.0)[0].emotion == "happy"
    tf.add_face(0.1, "p", 100, onehot("sad", 0.9))
    tf.add_face(0.12, "p", 100, onehot("sad", 0.9))
    assert tf.estimate(0.12)[0].emotion == "sad"


def test_fusion_mode_average_ignores_the_model_and_model_needs_one(model):
    tf = TemporalFusion(model, **NEW)
    assert tf.model is None and tf.fusion_mode == "average"
    tf.add_face(1.0, "p", 100, onehot("happy"), FACE_EMB)
    assert tf.estimate(1.0)[0].mode == "probs"
    with pytest.raises(ValueError, match="needs a fusion model"):
        TemporalFusion(None, fusion_mode="model")
    with pytest.raises(ValueError, match="fusion_mode"):
        TemporalFusion(None, fusion_mode="vote")
    for bad in (dict(face_stale_s=0.0), dict(ood_weight=1.5), dict(min_dwell_s=-1.0)):
        with pytest.raises(ValueError):
            TemporalFusion(None, **bad)


def test_model_mode_masks_an_unreliable_modality(model):
    tf = TemporalFusion(model, **{**NEW, "fusion_mode": "model"}, model_min_weight=0.3)
    tf.add_face(1.0, "p", 100, onehot("happy", 0.9), FACE_EMB)
    tf.add_voice(0.0, 1.0, onehot("sad", 0.2), VOICE_EMB)  # near chance: weight share < 0.3 -> masked
    (st,) = tf.estimate(1.0)
    assert st.mode == "model" and st.voice_weight < 0.3
    np.testing.assert_allclose(st.probs, model.predict(FACE_EMB, None), atol=1e-6)


def test_fast_switch_on_clear_evidence():
    kw = {**NEW, "face_stale_s": 0.05, "face_hold_s": 0.0}  # the newest frame only
    slow = TemporalFusion(None, **kw, switch_margin=0.05, min_dwell_s=1.0)
    fast = TemporalFusion(None, **kw, switch_margin=0.05, min_dwell_s=1.0, fast_switch_margin=0.3)
    for tf in (slow, fast):
        tf.add_face(0.0, "p", 100, onehot("happy", 0.8))
        tf.estimate(0.0)
        tf.add_face(0.1, "p", 100, onehot("sad", 0.9))  # leads happy by far more than 0.3
    assert slow.estimate(0.1)[0].emotion == "happy"  # waits min_dwell_s
    st = fast.estimate(0.1)[0]
    assert st.emotion == "sad" and st.changed


# -- HMM forward filter (smoothing_filter="hmm") -------------------------------------------------------------------

def _hmm_run(tf, frames, step):
    """Feed (t, label, p) face frames and estimate at each: -> [(t, emotion, probs)]."""
    out = []
    for t, label, p in frames:
        tf.add_face(t, "p", 100, onehot(label, p))
        (st,) = tf.estimate(t)
        out.append((t, st.emotion, st.probs))
    return out


def test_hmm_filter_absorbs_flicker_and_follows_a_real_change():
    tf = TemporalFusion(None, **NEW, smoothing_filter="hmm", hmm_switch_rate=0.5, hmm_evidence_rate=8.0)
    # 3 s of happy with a one-frame "sad" blip every 0.5 s (10 frames a second), then 2 s of sad
    frames = [(0.1 * i, "sad" if i % 5 == 4 else "happy", 0.6) for i in range(30)]
    frames += [(0.1 * i, "sad", 0.6) for i in range(30, 50)]
    out = _hmm_run(tf, frames, 0.1)
    assert {e for t, e, _ in out if t < 2.95} == {"happy"}
    switched = [t for t, e, _ in out if t >= 2.95 and e == "sad"]
    assert switched and switched[0] - 3.0 <= 0.6                   # clear evidence overturns it within 0.6 s
    assert all(e == "sad" for t, e, _ in out if t >= switched[0])
    p = out[-1][2]
    assert abs(float(p.sum()) - 1) < 1e-5 and p.min() > 0          # a posterior: normalised, never exactly 0


def test_hmm_filter_does_not_depend_on_the_call_rate():
    """Evidence counts per second, not per call: 10 and 30 estimates a second give the same posterior."""
    posts = []
    for rate in (10, 30):
        tf = TemporalFusion(None, **NEW, smoothing_filter="hmm", hmm_switch_rate=1.0, hmm_evidence_rate=2.0)
        frames = [(i / rate, "happy", 0.3) for i in range(rate + 1)]     # weak, steady evidence for 1 s
        posts.append(_hmm_run(tf, frames, 1 / rate)[-1][2])
    assert np.allclose(posts[0], posts[1], atol=0.01)
    assert all(0.4 < q[INDEX["happy"]] < 0.7 for q in posts)    # 0.50 and 0.49 (counted per call, 30 Hz: 0.85)


@pytest.mark.parametrize("kw", [{"smoothing_filter": "kalman"}, {"hmm_switch_rate": 0.0},
                                {"hmm_evidence_rate": -1.0}, {"hmm_switch_rate": float("nan")}])
def test_hmm_filter_bad_settings_raise(kw):
    with pytest.raises(ValueError):
        TemporalFusion(None, **NEW, **kw)


def test_voice_switch_margin_makes_a_voice_driven_change_argue_harder():
    """A confident voice against a moderate face: without voice_switch_margin it turns the output; with it the face's
    emotion holds (the lead stays under switch_margin + voice_switch_margin x voice share); a change the face drives
    is followed as before."""
    def run(vsm):
        tf = TemporalFusion(None, **NEW, voice_prior=0.6, switch_margin=0.05, voice_switch_margin=vsm)
        out = []
        for i in range(31):
            t = 0.5 + 0.1 * i
            if i == 10:  # after a second of the face alone, a voice says "sad"
                tf.add_voice(0.5, 1.5, onehot("sad", 0.95), None)
            tf.add_face(t, "p", 100, onehot("happy", 0.6))
            (st,) = tf.estimate(t)
            out.append(st)
        return tf, out

    _, plain = run(0.0)
    assert plain[-1].emotion == "sad"
    tf, held = run(0.5)
    assert {st.emotion for st in held} == {"happy"}
    leads = [st.probs[INDEX["sad"]] - st.probs[INDEX["happy"]] for st in held]
    assert max(leads) > 0.05  # the plain hysteresis would have switched: the voice margin held it
    assert all(lead < 0.05 + 0.5 * st.voice_weight for lead, st in zip(leads, held))
    for i in range(10):  # the face itself changes (the voice has gone stale): followed
        t = 3.6 + 0.1 * i + 3.5
        tf.add_face(t, "p", 100, onehot("sad", 0.6))
        (st,) = tf.estimate(t)
    assert st.emotion == "sad" and st.voice_weight == 0.0
    with pytest.raises(ValueError, match="voice_switch_margin"):
        TemporalFusion(None, voice_switch_margin=1.5)


def test_log_pool_lets_a_light_voice_break_a_face_tie_but_not_overrule_a_clear_face():
    """pool='log' (weighted geometric mean): with the same weights as the linear pool, a voice of small weight decides
    between two emotions the face finds about equally likely, and an emotion the face rules out needs a larger weight
    share from the voice than in the linear pool; with one modality both pools return its probabilities."""
    def face(p):
        v = np.full(len(LABELS), 1e-3, np.float32)
        for k, x in p.items():
            v[INDEX[k]] = x
        return v / v.sum()

    tie = face({"happy": 0.465, "sad": 0.44, "neutral": 0.085})
    voice = onehot("sad", 0.35)
    lin = TemporalFusion(None, **NEW, voice_prior=0.1)
    log = TemporalFusion(None, **NEW, voice_prior=0.1, pool="log")
    assert LABELS[int(np.argmax(lin.average(tie, voice)))] == "happy"  # a light voice is lost in the linear mean
    assert LABELS[int(np.argmax(log.average(tie, voice)))] == "sad"
    # a face sure it is not anger, a confident voice that says anger, the voice weighing a little more than the face:
    # the linear pool follows the voice, the log pool does not
    clear = face({"happy": 0.7, "neutral": 0.29})
    angry = onehot("angry", 0.95)
    assert LABELS[int(np.argmax(TemporalFusion(None, **NEW, voice_prior=0.8).average(clear, angry)))] == "angry"
    p = TemporalFusion(None, **NEW, voice_prior=0.8, pool="log").average(clear, angry)
    assert LABELS[int(np.argmax(p))] == "happy"
    assert p.sum() == pytest.approx(1.0, abs=1e-5) and np.all(p > 0)
    for tf in (lin, log):  # one modality: its own (floored) probabilities
        np.testing.assert_allclose(tf.average(tie, None), tie, atol=1e-4)
        np.testing.assert_allclose(tf.average(None, voice), voice, atol=1e-4)
    with pytest.raises(ValueError, match="pool"):
        TemporalFusion(None, pool="geometric")


def test_voice_from_before_the_face_changed_counts_less():
    """voice_face_change_weight: once the person's face has shown another emotion for min_dwell_s, voice segments that
    ended before that change count that many times (their words were about the earlier moment); a segment spoken
    after the change counts fully; 1 leaves everything as it was."""
    def run(w, late_voice=False):
        tf = TemporalFusion(None, **NEW, voice_prior=1.0, switch_margin=0.05, min_dwell_s=0.2,
                            voice_face_change_weight=w)
        tf.add_voice(0.0, 1.5, onehot("sad", 0.9), None)
        out = []
        for i in range(30):
            t = 1.0 + 0.1 * i
            if late_voice and i == 20:
                tf.add_voice(2.4, 2.9, onehot("sad", 0.9), None)  # spoken after the face changed
            tf.add_face(t, "p", 100, onehot("sad" if t < 2.0 else "angry", 0.8))
            (st,) = tf.estimate(t)
            out.append(st)
        return out

    plain, cut = run(1.0), run(0.0)
    for a, b in zip(plain[:12], cut[:12]):  # until the face's change has held 0.2 s: the same states
        assert a.emotion == b.emotion and a.voice_weight == pytest.approx(b.voice_weight)
    assert plain[-1].voice_weight > 0.3 and cut[-1].voice_weight == 0.0
    first = lambda states: next(i for i, st in enumerate(states) if st.emotion == "angry")
    assert first(cut) < first(plain)
    half = run(0.5)
    assert 0.0 < half[-1].voice_weight < plain[-1].voice_weight
    late = run(0.0, late_voice=True)
    assert late[-1].voice_weight > 0.3  # the new segment counts in full
    with pytest.raises(ValueError, match="voice_face_change_weight"):
        TemporalFusion(None, voice_face_change_weight=1.5)


def test_voice_trust_follows_its_agreement_with_the_face():
    """agreement_*: a voice whose segments keep naming what the face does not show loses weight against the face
    (down to (agreement / reference) ** power), one that agrees keeps it; no history (paired samples, the first words)
    is full trust; agreement_tau_s 0 leaves the weighting as it was."""
    kw = dict(NEW, voice_prior=1.0, agreement_reference=0.5, agreement_strength=1.0, agreement_power=2.0)

    def run(voice_label, tau=60.0, n=12):
        tf = TemporalFusion(None, **kw, agreement_tau_s=tau)
        weights = []
        for i in range(n):
            t = 2.0 * i
            for k in range(10):  # the face over the segment
                tf.add_face(t + 0.1 * k, "p", 100, onehot("happy", 0.8))
            tf.add_voice(t, t + 1.0, onehot(voice_label, 0.8), None)
            (st,) = tf.estimate(t + 1.0)
            weights.append(st.voice_weight)
        return tf, weights

    agree, w_agree = run("happy")
    disagree, w_dis = run("sad")
    off, w_off = run("sad", tau=0.0)
    assert agree.voice_trust == 1.0 and disagree.voice_trust < 0.05 and off.voice_trust == 1.0
    assert 0.0 < w_dis[0] < w_off[0]  # a segment counts as soon as it has ended: its own disagreement included
    assert w_dis[-1] < 0.1 * w_off[-1] and w_agree[-1] == pytest.approx(w_off[-1], rel=1e-5)
    assert all(b <= a + 1e-9 for a, b in zip(w_dis, w_dis[1:]))  # trust only falls while the voice disagrees
    # paired samples (no history): the agreement term changes nothing
    fresh = TemporalFusion(None, **kw, agreement_tau_s=60.0)
    plain = TemporalFusion(None, **kw, agreement_tau_s=0.0)
    np.testing.assert_allclose(fresh.average(onehot("happy", 0.6), onehot("sad", 0.7)),
                               plain.average(onehot("happy", 0.6), onehot("sad", 0.7)))
    # an unsure face says nothing about the voice; the history forgets and reset() clears it
    unsure = TemporalFusion(None, **kw, agreement_tau_s=60.0)
    for i in range(5):
        unsure.add_face(2.0 * i + 0.9, "p", 100, np.full(len(LABELS), 1 / len(LABELS), np.float32))
        unsure.add_voice(2.0 * i, 2.0 * i + 1.0, onehot("sad", 0.8), None)
        unsure.estimate(2.0 * i + 1.0)
    assert unsure.voice_trust == pytest.approx(1.0) and unsure.voice_agreement == pytest.approx(0.5)
    forgets = TemporalFusion(None, **kw, agreement_tau_s=5.0)
    for i in range(5):
        forgets.add_face(2.0 * i + 0.9, "p", 100, onehot("happy", 0.9))
        forgets.add_voice(2.0 * i, 2.0 * i + 1.0, onehot("sad", 0.8), None)
        forgets.estimate(2.0 * i + 1.0)
    low = forgets.voice_trust
    forgets.add_face(100.9, "p", 100, onehot("happy", 0.9))
    forgets.add_voice(100.0, 101.0, onehot("happy", 0.8), None)
    forgets.estimate(101.0)
    assert low < 0.2 and forgets.voice_trust == 1.0  # 90 s later the old disagreement is forgotten
    disagree.reset()
    assert disagree.voice_trust == 1.0
    for name, bad in (("agreement_reference", 0.0), ("agreement_tau_s", -1.0), ("agreement_power", math.nan)):
        with pytest.raises(ValueError, match=name):
            TemporalFusion(None, **{name: bad})


def test_face_change_detector_cuts_the_lag_but_not_for_one_odd_frame():
    """face_confirm_s / face_change_weight: when the face's newest frames show a new emotion for face_confirm_s, the
    frames from before stop counting in the face evidence: the reported emotion switches sooner than with the
    recency-weighted average alone (which waits for the old frames to be outweighed); a single odd frame confirms
    nothing; face_change_weight 1 is the old behaviour."""
    base = dict(face_stale_s=0.5, face_hold_s=0.1, smoothing_tau_s=0.1, switch_margin=0.05, min_dwell_s=0.2,
                fast_switch_margin=1.0, fusion_mode="average")
    quick = dict(base, face_confirm_s=0.1, face_change_weight=0.0)
    t0 = 1.8e9  # epoch-sized stamps, as on a robot: the dwell must not depend on their float rounding

    def first_switch(kw, frames):
        tf = TemporalFusion(None, **kw)
        switched, i = None, 0
        for k in range(1, 41):  # the node's 10 Hz over 4 s; the frames at 25 fps that came before each step
            now = t0 + 0.1 * k
            while i < len(frames) and t0 + 0.04 * i < now - 1e-3:
                tf.add_face(t0 + 0.04 * i, "p", 100, onehot(frames[i], 0.8))
                i += 1
            (st,) = tf.estimate(now)
            if st.emotion == "sad" and switched is None:
                switched = round(0.1 * k, 3)
        return switched, tf

    change = ["happy"] * 50 + ["sad"] * 50  # the face changes at 2.0 s
    t_plain, _ = first_switch(base, change)
    t_quick, tf = first_switch(quick, change)
    t_off, _ = first_switch(dict(base, face_confirm_s=0.1, face_change_weight=1.0), change)
    assert t_plain is not None and t_quick is not None and 2.0 <= t_quick < t_plain and t_off == t_plain
    assert t_plain - t_quick >= 0.1 - 1e-9  # switched 0.1 s sooner at least
    assert tf._face_run["p"].top == INDEX["sad"] and tf._face_run["p"].changed_at == pytest.approx(t0 + 2.0)
    # one odd frame: no confirmed change, no switch
    odd = ["happy"] * 50 + ["sad"] + ["happy"] * 49
    t_odd, tf_odd = first_switch(quick, odd)
    assert t_odd is None and tf_odd._face_run["p"].top == INDEX["happy"]
    assert tf_odd._face_run["p"].changed_at == -math.inf
    for name, bad in (("face_change_weight", 1.5), ("face_confirm_s", -0.1), ("face_confirm_s", math.nan)):
        with pytest.raises(ValueError, match=name):
            TemporalFusion(None, **{name: bad})


def test_a_dwell_of_whole_periods_does_not_depend_on_the_clocks_rounding():
    """min_dwell_s of exactly two fusion periods: the reported emotion switches as many steps after the face changed
    on epoch-sized stamps (float seconds ~1.8e9, resolved to ~0.2 us) as near zero, wherever the change falls. (With
    a 1e-9 tolerance the rounding of the step times decided between two and three steps of dwell.)"""
    kw = dict(face_stale_s=0.3, face_hold_s=0.3, smoothing_tau_s=0, switch_margin=0.05, min_dwell_s=0.2,
              fast_switch_margin=1.0, fusion_mode="average")
    lags = {}
    for t0 in (0.0, 1.8e9, 1.7e9 + 0.37):
        for change in range(3, 12):
            tf = TemporalFusion(None, **kw)
            lag = None
            for k in range(1, 20):
                now = t0 + 0.1 * k
                tf.add_face(now - 0.05, "p", 100, onehot("happy" if k < change else "sad", 0.8))
                (st,) = tf.estimate(now)
                if st.emotion == "sad" and lag is None:
                    lag = k - change
            lags[(t0, change)] = lag
    # the face evidence turns at the second sad frame, then the dwell adds two steps
    assert set(lags.values()) == {3}, lags

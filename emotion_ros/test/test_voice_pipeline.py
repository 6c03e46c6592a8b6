"""VoicePipeline: any rate / channel count in, per-utterance emotion out (tiny real checkpoint)."""
from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from emotion_ros.core.errors import InputError
from emotion_ros.core.labels import LABELS
from emotion_ros.core.voice.features import trim_silence
from emotion_ros.core.voice.model import VoiceModel
from emotion_ros.core.voice.pipeline import VoicePipeline, VoiceResult
from emotion_ros.core.voice.segment import Segmenter, segment_offline
from test_voice_util import SR, concat, espeak, make_voice_checkpoint, silence, speechlike, tone


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)   # small inputs: one thread is as fast and does not stall on a busy machine
    path = make_voice_checkpoint(str(tmp_path_factory.mktemp("voice") / "voice.pt"))
    yield VoiceModel(path, device="cpu")
    torch.set_num_threads(threads)


def at_rate(x16: np.ndarray, rate: int, channels: int) -> np.ndarray:
    """Resample a 16 kHz test signal to ``rate`` and spread it over ``channels`` (different gains)."""
    import soxr
    y = x16 if rate == SR else soxr.resample(x16, SR, rate).astype(np.float32)
    return np.stack([y * (1.0 - 0.2 * c) for c in range(channels)], axis=1).astype(np.float32)


def check_result(r: VoiceResult, embed_dim=16):
    assert r.probs.shape == (len(LABELS),) and r.probs.dtype == np.float32
    assert r.probs.sum() == pytest.approx(1.0, abs=1e-5) and (r.probs >= 0).all()
    assert r.embedding.shape == (embed_dim,)
    assert r.voice_activity and 0 < r.speech_ratio <= 1
    assert r.label in LABELS and r.confidence == pytest.approx(r.probs.max())


@pytest.mark.parametrize("rate,channels,chunk_s", [(8000, 2, 0.02), (44100, 2, 0.1), (96000, 2, 0.032),
                                                   (16000, 1, 0.05), (22050, 6, 0.25)])
def test_stream_at_any_rate_and_channel_count(model, rate, channels, chunk_s):
    wave, spans = concat([("s", silence(0.8)), ("v", tone(0.9, f=300)), ("s", silence(0.8)),
                          ("v", speechlike(1.4)), ("s", silence(0.8))])
    wave += silence(wave.size / SR, level=0.001)
    x = at_rate(wave, rate, channels)
    pipe = VoicePipeline(model)
    t0, n, results = 1000.0, int(chunk_s * rate), []
    for i in range(0, x.shape[0], n):
        results += pipe.push(x[i:i + n], rate, t0 + i / rate)
    results += pipe.flush()
    # the 1.4 s sound is longer than the shipped window_s (1.5 s of speech with its rolls): windows may come first
    results = [r for r in results if not r.partial]
    assert len(results) == 2
    for r, (a, b) in zip(results, spans):
        check_result(r)
        assert r.start_t == pytest.approx(t0 + a - 0.16, abs=0.03)
        assert r.end_t == pytest.approx(t0 + b + 0.1, abs=0.13)
    assert pipe.audio_s == pytest.approx(wave.size / SR, abs=0.01)   # every sample came through the resampler
    assert pipe.streams == 1 and pipe.gaps == 0
    assert pipe.real_time_factor > 0


def test_chunked_resampling_matches_whole_file(model):
    # ResampleStream keeps state across chunks: segment boundaries equal those of the file resampled at once.
    wave, _ = concat([("s", silence(0.5)), ("v", speechlike(2.0)), ("s", silence(0.7)), ("v", tone(0.6)),
                      ("s", silence(0.6))])
    wave += silence(wave.size / SR, level=0.001)
    x = at_rate(wave, 44100, 2)
    ref = segment_offline(x, 44100, finals_only=True)
    pipe = VoicePipeline(model)
    got = []
    for i in range(0, x.shape[0], 441):
        got += pipe.push(x[i:i + 441], 44100, i / 44100)
    got += pipe.flush()
    got = [g for g in got if not g.partial]     # the utterances (the 2 s one also gives windows)
    assert len(got) == len(ref) == 2
    for g, r in zip(got, ref):
        assert g.start_t == pytest.approx(r.start_t, abs=1e-6)
        assert g.end_t == pytest.approx(r.end_t, abs=1e-6)


def test_results_are_the_model_on_trimmed_segments(model):
    wave, _ = concat([("s", silence(0.6)), ("v", speechlike(1.5)), ("s", silence(0.6))])
    segs = segment_offline(wave)
    pipe = VoicePipeline(model)
    res = [r for r in pipe.push(wave, SR, 0.0) + pipe.flush() if not r.partial]
    assert len(res) == len(segs) == 1
    p, e = model.predict(trim_silence(segs[0].samples))
    np.testing.assert_allclose(res[0].probs, p, atol=1e-6)
    np.testing.assert_allclose(res[0].embedding, e, atol=1e-6)


def test_long_speech_partial_windows(model):
    wave, spans = concat([("s", silence(1.0)), ("v", speechlike(6.5)), ("s", silence(1.0))])
    pipe = VoicePipeline(model, Segmenter(window_s=2.0, hop_s=1.0))
    x = at_rate(wave, 48000, 2)
    res = []
    for i in range(0, x.shape[0], 4800):
        res += pipe.push(x[i:i + 4800], 48000, 50.0 + i / 48000)
    res += pipe.flush()
    parts = [r for r in res if r.partial]
    assert len(parts) == 5 and not res[-1].partial
    for k, r in enumerate(parts):
        check_result(r)
        assert r.duration == pytest.approx(2.0, abs=1e-6)
        assert r.end_t == pytest.approx(50.0 + spans[0][0] + 2.0 + k, abs=0.03)
    assert res[-1].start_t < parts[0].start_t and res[-1].end_t >= parts[-1].end_t
    assert len({r.utterance for r in res}) == 1


def test_gap_and_rate_change_restart_the_stream(model):
    pipe = VoicePipeline(model)
    x = at_rate(np.concatenate([silence(0.5), tone(0.8)]), 44100, 2)
    assert pipe.push(x, 44100, 10.0) == []
    # 2 s of audio lost: the open utterance is closed at the gap
    res = pipe.push(at_rate(silence(0.5), 44100, 2), 44100, 13.3)
    assert len(res) == 1 and pipe.streams == 2
    assert res[0].start_t == pytest.approx(10.5 - 0.16, abs=0.02)
    assert res[0].end_t == pytest.approx(11.3, abs=0.03)
    # a new rate, continuous in time: a new resampler, the segmenter goes on (pre-roll from the 44.1 kHz part)
    y = at_rate(np.concatenate([tone(0.7), silence(0.6)]), 8000, 1)
    res = pipe.push(y, 8000, 13.8)
    res += pipe.flush()
    assert pipe.streams == 3 and pipe.gaps == 1 and len(res) == 1
    assert res[0].start_t == pytest.approx(13.8 - 0.16, abs=0.02)
    assert res[0].end_t == pytest.approx(14.5 + 0.1, abs=0.03)


def test_nan_input_is_counted_and_harmless(model):
    wave, spans = concat([("s", silence(0.5)), ("v", tone(0.8)), ("s", silence(0.6))])
    x = at_rate(wave, 44100, 2)
    x[30000:30100, 0] = np.nan
    x[5:7, 1] = np.inf
    pipe = VoicePipeline(model)
    res = pipe.push(x, 44100, 0.0) + pipe.flush()
    assert pipe.nonfinite_samples == 102
    assert len(res) == 1 and np.isfinite(res[0].probs).all()


@pytest.mark.parametrize("pcm,rate,what", [
    (np.zeros(100, np.float32), 4000, "sample rate"),
    (np.zeros(100, np.float32), 192000, "sample rate"),
    (np.zeros((100, 0), np.float32), 16000, "0 channels"),
    (np.zeros((10, 2, 2), np.float32), 16000, "shape"),
])
def test_bad_chunks_raise_input_error(model, pcm, rate, what):
    with pytest.raises(InputError, match=what):
        VoicePipeline(model).push(pcm, rate, 0.0)


def test_classify_wave_and_file(model, tmp_path):
    wave, spans = concat([("s", silence(0.6)), ("v", tone(0.6, f=300)), ("s", silence(0.8)),
                          ("v", speechlike(1.6)), ("s", silence(0.5))])
    pipe = VoicePipeline(model)
    res = pipe.classify_wave(wave)
    assert res.n_segments == 2 and not res.fallback
    segs = segment_offline(wave, finals_only=True)
    ps = [model.predict(trim_silence(s.samples))[0] for s in segs]
    w = np.array([s.duration for s in segs])
    np.testing.assert_allclose(res.probs, (ps[0] * w[0] + ps[1] * w[1]) / w.sum(), atol=1e-5)
    probs, n = res                                  # unpacks as (probs, n_segments)
    assert n == 2 and probs.sum() == pytest.approx(1.0, abs=1e-5)

    # a file at 44.1 kHz stereo: same utterances, times from the start of the file
    path = str(tmp_path / "two.wav")
    sf.write(path, at_rate(wave, 44100, 2), 44100, subtype="PCM_16")
    fres = pipe.classify_file(path)
    assert len(fres) == 2 and not any(r.partial for r in fres)
    for r, (a, b) in zip(fres, spans):
        check_result(r)
        assert r.start_t == pytest.approx(a - 0.16, abs=0.03)

    # no utterance (too short for min_speech_s): the trimmed whole wave is classified
    blip, _ = concat([("s", silence(0.5)), ("v", tone(0.15)), ("s", silence(0.5))])
    fb = pipe.classify_wave(blip)
    assert fb.n_segments == 0 and fb.fallback
    np.testing.assert_allclose(fb.probs, model.predict(trim_silence(blip))[0], atol=1e-6)
    with pytest.raises(InputError):
        pipe.classify_wave(np.zeros(0, np.float32))


def test_espeak_speech(model, tmp_path):
    a = espeak("Hello there. How are you today?", str(tmp_path / "a.wav"))
    if a is None:
        pytest.skip("espeak-ng is not installed")
    b = espeak("I am really very happy to see you again.", str(tmp_path / "b.wav"))
    a, b = trim_silence(a, pad_s=0.0), trim_silence(b, pad_s=0.0)
    noise = lambda d: silence(d, level=0.002, rng=np.random.default_rng(4))  # noqa: E731
    wave, spans = concat([("s", noise(1.0)), ("v", a + noise(a.size / SR)), ("s", noise(1.2)),
                          ("v", b + noise(b.size / SR)), ("s", noise(1.0))])
    fins = [s for s in segment_offline(wave, max_silence_s=0.5) if not s.partial]
    # one utterance per sentence (espeak's pause between the two sentences of `a` is short)
    assert len(fins) == 2, fins
    for s, (t0, t1) in zip(fins, spans):
        assert t0 - 0.2 <= s.start_t <= t0 + 0.05
        assert t1 - 0.3 <= s.end_t <= t1 + 0.15
    pipe = VoicePipeline(model, Segmenter(max_silence_s=0.5))
    x = at_rate(wave, 44100, 2)
    res = []
    for i in range(0, x.shape[0], 2205):
        res += pipe.push(x[i:i + 2205], 44100, i / 44100)
    res += pipe.flush()
    fr = [r for r in res if not r.partial]
    assert len(fr) == 2
    for r, s in zip(fr, fins):
        check_result(r)
        assert r.start_t == pytest.approx(s.start_t, abs=0.03)


# ---------------------------------------------------------------- speaker normalisation (FeatureSpec.speaker_window)

def test_speaker_normaliser_running_reference():
    from emotion_ros.core.voice.features import SpeakerNormaliser
    sn = SpeakerNormaliser(window=3, reset_after_s=10.0)
    a, b, c, d = (np.full(4, v, np.float32) for v in (1.0, 3.0, 5.0, 7.0))
    np.testing.assert_allclose(sn.offset(a, t=0.0), 0.0)               # start-up: the utterance is its own reference
    np.testing.assert_allclose(sn.offset(b, t=1.0), b - (a + b) / 2)
    np.testing.assert_allclose(sn.offset(d, t=1.5, commit=False), d - (a + b + d) / 3)   # partial: read only
    assert len(sn) == 2
    np.testing.assert_allclose(sn.offset(c, t=2.0), c - (a + b + c) / 3)
    np.testing.assert_allclose(sn.offset(d, t=3.0), d - (b + c + d) / 3)  # the window holds the last 3
    np.testing.assert_allclose(sn.offset(a, t=20.0), 0.0)             # a long pause: a new speaker
    assert sn.resets == 1 and len(sn) == 1
    sn.reset()
    np.testing.assert_allclose(sn.offset(b), 0.0)
    with pytest.raises(ValueError):
        SpeakerNormaliser(window=0)


def test_new_person_watch_resets_once_when_another_face_stays_the_largest():
    from emotion_ros.core.voice.features import NewPersonWatch
    w = NewPersonWatch(hold_s=1.0)
    assert not w.update([("a", 100.0)], 0.0) and w.current == "a"          # the first person: adopted, no reset
    assert not w.update([], 0.5)                                             # no face: nothing changes
    assert not w.update([("a", 100.0), ("b", 50.0)], 1.0)                    # b is there but smaller
    assert not w.update([("a", 10.0), ("b", 50.0)], 2.0)                     # b the largest: a candidate ...
    assert not w.update([("b", 50.0)], 2.9)
    assert not w.update([("a", 90.0), ("b", 50.0)], 3.0)                     # ... interrupted: a again
    assert not w.update([("b", 50.0)], 3.5)
    assert w.update([("b", 50.0)], 4.5) and w.current == "b"                 # b held 1 s: a new person, once
    assert not w.update([("b", 50.0)], 5.0)
    assert not w.update([("a", 80.0)], 5.5) and w.update([("a", 80.0)], 6.5)  # a back: the reference was b's
    assert not w.update([("", 900.0)], 7.0)                                  # faces without a track id are ignored
    z = NewPersonWatch(hold_s=0.0)
    assert not z.update([("a", 1.0)], 0.0) and z.update([("b", 1.0)], 0.0)
    with pytest.raises(ValueError):
        NewPersonWatch(hold_s=-1.0)


def _coloured(seconds: float, tilt: float, seed: int) -> np.ndarray:
    """Speech-like noise bursts whose spectrum is tilted by ``tilt`` (first-order filter): a darker or brighter
    voice."""
    from scipy.signal import lfilter
    rng = np.random.default_rng(seed)
    n = int(seconds * SR)
    x = lfilter([1.0, -tilt], [1.0], rng.normal(0, 1, n))
    env = 0.5 + 0.5 * np.sin(2 * np.pi * 4 * np.arange(n) / SR) ** 2
    return (0.1 * x / np.abs(x).max() * env).astype(np.float32)


@pytest.fixture(scope="module")
def speaker_model(tmp_path_factory):
    path = make_voice_checkpoint(str(tmp_path_factory.mktemp("voice_spk") / "voice.pt"), utterance_cmn=True,
                                 speaker_window=3)
    return VoiceModel(path, device="cpu")


def test_speaker_normalised_model_in_the_pipeline(speaker_model, model):
    """A model trained with a speaker reference gets the pipeline's running reference: the first utterance is
    normalised by itself, the next ones by the mean of the last 3 final utterances; a fixed microphone colouring
    of the whole stream leaves the shape of the offsets unchanged; a per-utterance model has no reference."""
    from scipy.signal import lfilter
    from emotion_ros.core.voice.features import SpeakerNormaliser, utterance_band_mean
    assert VoicePipeline(model).speaker is None
    utts = [_coloured(1.0, t, i) for i, t in enumerate((0.9, -0.5, 0.2))]
    parts = []
    for u in utts:
        parts += [("s", silence(0.8)), ("v", u)]
    wave, _ = concat(parts + [("s", silence(0.8))])
    wave += silence(wave.size / SR, level=0.001)
    pipe = VoicePipeline(speaker_model)
    assert pipe.speaker is not None and pipe.speaker.window == 3
    results = pipe.classify_segments(pipe.segment_wave(wave))
    assert len(results) == 3 and len(pipe.speaker) == 3
    segs = pipe.segment_wave(wave)
    ref = SpeakerNormaliser(3)
    for r, s in zip(results, segs):
        w = trim_silence(s.samples)
        expect, _ = speaker_model.predict(w, ref, s.end_t)
        np.testing.assert_allclose(r.probs, expect, atol=1e-5)
    first = trim_silence(segs[0].samples)
    np.testing.assert_allclose(results[0].probs, speaker_model.predict(first)[0], atol=1e-5)
    # the offsets: large between a dark and a bright voice, nearly the same through a coloured microphone
    bms = [utterance_band_mean(trim_silence(s.samples)) for s in segs]
    eq = lfilter([1.0, -0.6], [1.0], wave).astype(np.float32)
    bms_eq = [utterance_band_mean(trim_silence(s.samples)) for s in pipe.segment_wave(eq)]
    off, off_eq = SpeakerNormaliser(3), SpeakerNormaliser(3)
    o = [off.offset(m) for m in bms]
    o_eq = [off_eq.offset(m) for m in bms_eq]
    assert np.abs(o[1]).max() > 1.0
    # the shape of the offset survives the microphone; what moves is one level for all bands (about 0.4 here:
    # loudness normalisation levels each utterance through the colouring, not as the clean one)
    d = o[1] - o_eq[1]
    assert np.abs(d - d.mean()).mean() < 0.05 * np.abs(o[1]).mean() and abs(d.mean()) < 0.5
    assert np.abs(bms[1] - bms_eq[1]).mean() > 10 * np.abs(d - d.mean()).mean()   # the colouring itself is large


def test_voice_outputs_by_speaker_keep_the_order(speaker_model, model):
    """Evaluation hears each speaker's recordings together in a seeded order (a fresh reference per speaker) and
    returns the outputs in the order given; the first of each speaker is the model on it alone."""
    from emotion_ros.training.embed import speaker_order, voice_outputs, voice_outputs_by_speaker
    waves = [np.concatenate([silence(0.3), _coloured(0.8, t, i), silence(0.3)]) for i, t in
             enumerate((0.9, -0.5, 0.2, 0.7, -0.2))]
    spk = ["a", "b", "a", "b", "a"]
    order = speaker_order(spk, seed=3)
    assert sorted(order) == list(range(5)) and [spk[i] for i in order] == ["a", "a", "a", "b", "b"]
    plain, _ = voice_outputs(model, waves)
    by_spk, _ = voice_outputs_by_speaker(model, waves, spk, seed=3)
    np.testing.assert_allclose(by_spk.probs, plain.probs, atol=1e-6)     # per-utterance model: order is moot
    out, _ = voice_outputs_by_speaker(speaker_model, waves, spk, seed=3)
    first_b = [i for i in order if spk[i] == "b"][0]
    for i in (order[0], first_b):
        np.testing.assert_allclose(out.probs[i], voice_outputs(speaker_model, [waves[i]])[0].probs[0], atol=1e-5)
    assert not np.allclose(out.probs[order[2]], voice_outputs(speaker_model, [waves[order[2]]])[0].probs[0],
                           atol=1e-4)

"""voice_node against unusual and bad audio, on a real graph (the node in its own process).

Supported variations (sample rates 8-96 kHz, 1-6 channels, PCM sample formats, clipped speech, NaN/Inf samples
that are replaced) must still give the utterance's VoiceEmotion. Problems (unsupported formats and codings, rates
and channel counts the node refuses, NaN/Inf, clipping, gaps in the stream, partial frames) must get a log line
on /rosout naming the problem, and the node must answer the next valid utterance.
"""
from __future__ import annotations

import time
from typing import Dict, Tuple

import numpy as np
import pytest
from audio_common_msgs.msg import AudioDataStamped, AudioInfo
from emotion_msgs.msg import VoiceEmotion

from robust_helpers import INFO, Graph, NodeProcess, diag_values, small_checkpoints
from emotion_ros.ros.convert import float_to_pcm, sec_to_stamp, stamp_to_sec
from emotion_ros.ros.node_utils import latched_qos, reliable_qos
from emotion_ros.tools.bench import SENTENCES, _espeak, _synthetic_utterance

_CACHE: Dict[int, np.ndarray] = {}
_FLOAT_DTYPES = {"F32LE": "<f4", "F32BE": ">f4", "F64LE": "<f8", "F64BE": ">f8"}


def to_pcm(x: np.ndarray, fmt: str) -> bytes:
    """float_to_pcm, except that float formats keep NaN/Inf as a faulty source would send them (float_to_pcm turns
    NaN into 0 and clips Inf to full scale, so the node would never see them)."""
    if fmt in _FLOAT_DTYPES and not np.isfinite(x).all():
        return np.where(np.isfinite(x), np.clip(x, -1.0, 1.0), x).astype(_FLOAT_DTYPES[fmt]).tobytes()
    return float_to_pcm(x, fmt)


def speech_at(rate: int) -> np.ndarray:
    """One spoken sentence at ``rate`` (espeak-ng, else synthetic), peak 0.5."""
    if rate not in _CACHE:
        x = _espeak(SENTENCES[0], rate)
        if x is None:
            x = _synthetic_utterance(np.random.default_rng(0), rate, 2.0)
        _CACHE[rate] = (0.5 * x / np.max(np.abs(x))).astype(np.float32)
    return _CACHE[rate]


def utterance(rate: int, channels: int = 1, lead_s: float = 0.3, tail_s: float = 0.7) -> Tuple[np.ndarray, Tuple]:
    """(n, channels) float: quiet noise, a sentence, quiet noise; and the sentence's (start, end) in seconds."""
    rng = np.random.default_rng(rate + channels)
    x = speech_at(rate)
    lead, tail = np.zeros(int(lead_s * rate), np.float32), np.zeros(int(tail_s * rate), np.float32)
    wave = np.concatenate([lead, x, tail])
    wave += (rng.standard_normal(wave.size) * 0.001).astype(np.float32)
    gains = [1.0, 0.8, 0.6, 0.9, 0.7, 0.5][:channels]
    return np.stack([wave * g for g in gains], axis=1), (lead_s, lead_s + x.size / rate)


@pytest.fixture(scope="module")
def graph():
    g = Graph("robust_audio_tester")
    g.subscribe("emotion/voice", VoiceEmotion, reliable_qos(200))
    g.subscribe_diag()
    yield g
    g.close()


@pytest.fixture(scope="module")
def voice_node(graph, tmp_path_factory):
    d = tmp_path_factory.mktemp("robust_audio")
    models = small_checkpoints(str(d), kinds=("voice",))
    proc = NodeProcess("voice", str(d), {"model_path": models["voice"], "device": "cpu"})
    graph.publisher("audio", AudioDataStamped, reliable_qos(100))
    graph.publisher("audio_info", AudioInfo, latched_qos())
    try:
        graph.wait_node_up(proc, subscribes=["audio"], publishes=["emotion/voice"], timeout=120.0)
        yield proc
    finally:
        proc.stop()


class Stream:
    """Sends audio on its own clock; every test starts a new base time so results can be told apart."""

    base = 1000.0

    def __init__(self, graph):
        self.g = graph

    last_format = None  # the last format the node confirmed

    def set_format(self, rate, channels, fmt, coding="wave", wait=True):
        want = (str(rate), str(channels), fmt)
        if wait and Stream.last_format == want:
            return True
        line = f"{rate} Hz, {channels} ch, {fmt}"
        n_logged = len(self.g.logs("voice_node", INFO, [line]))
        t_sent = time.time()
        self.g.publisher("audio_info", AudioInfo, latched_qos()).publish(
            AudioInfo(sample_rate=rate, channels=channels, sample_format=fmt, bitrate=0, coding_format=coding))
        Stream.last_format = None
        if not wait:
            return True

        def taken():
            if len(self.g.logs("voice_node", INFO, [line])) > n_logged:  # "audio format from audio_info: ..."
                return True
            for t, st in reversed(self.g.diag_statuses("voice_node")):
                if t > t_sent + 0.05:
                    v = diag_values(st)
                    return (v.get("sample_rate"), v.get("channels"), v.get("sample_format")) == want
            return False
        # AudioInfo and audio travel on different topics: wait until the node uses the new format
        assert self.g.spin_until(taken, 10.0), f"voice_node did not take the format {want}"
        Stream.last_format = want
        return True

    def send_raw(self, chunks, t0, rate_for_time, pace=0.25):
        """Publish byte chunks stamped from t0 (each chunk's time from its sample count)."""
        pub = self.g.publisher("audio", AudioDataStamped, reliable_qos(100))
        t = t0
        for data, n_samples in chunks:
            m = AudioDataStamped()
            m.header.frame_id = "mic"
            m.header.stamp = sec_to_stamp(t)
            m.audio.data = data
            pub.publish(m)
            dt = n_samples / rate_for_time
            t += dt
            self.g.spin_for(pace * dt)
        return t

    def send(self, x, rate, fmt, chunk_s=0.1, pace=0.1, skip=()):
        """Publish (n, ch) float audio from a fresh base time; chunk indices in ``skip`` are left out (a gap)."""
        Stream.base += 1000.0
        t0 = Stream.base
        n = max(1, int(chunk_s * rate))
        pub = self.g.publisher("audio", AudioDataStamped, reliable_qos(100))
        for k, i in enumerate(range(0, x.shape[0], n)):
            if k in skip:
                continue
            m = AudioDataStamped()
            m.header.frame_id = "mic"
            m.header.stamp = sec_to_stamp(t0 + i / rate)
            m.audio.data = to_pcm(x[i:i + n], fmt)
            pub.publish(m)
            self.g.spin_for(pace * chunk_s)
        return t0

    def finals_between(self, t_lo, t_hi):
        return [m for m in self.g.messages("emotion/voice")
                if not m.partial and t_lo <= stamp_to_sec(m.end) <= t_hi]

    def expect_final(self, t0, span, timeout=15.0, what=""):
        lo, hi = t0 + span[1] - 0.4, t0 + span[1] + 0.6
        ok = self.g.spin_until(lambda: bool(self.finals_between(lo, hi)), timeout)
        got = [(round(stamp_to_sec(m.start) - t0, 2), round(stamp_to_sec(m.end) - t0, 2), m.partial)
               for m in self.g.messages("emotion/voice") if t0 <= stamp_to_sec(m.end) <= t0 + 100]
        assert ok, f"{what}: no final VoiceEmotion ending near {span[1]:.2f} s; got {got}"
        return self.finals_between(lo, hi)[0]

    def valid_utterance_answered(self, proc, what="after bad input"):
        assert proc.alive(), proc.output()[-3000:]
        self.set_format(16000, 1, "S16LE")
        x, span = utterance(16000)
        t0 = self.send(x, 16000, "S16LE")
        return self.expect_final(t0, span, what=what)


@pytest.mark.parametrize("rate", [8000, 11025, 22050, 44100, 48000, 96000])
def test_sample_rates(graph, voice_node, rate):
    s = Stream(graph)
    s.set_format(rate, 1, "S16LE")
    x, span = utterance(rate)
    t0 = s.send(x, rate, "S16LE")
    m = s.expect_final(t0, span, what=f"{rate} Hz")
    assert abs(stamp_to_sec(m.start) - t0 - span[0]) < 0.35
    assert len(m.probabilities) == 7 and abs(sum(m.probabilities) - 1) < 1e-4


@pytest.mark.parametrize("channels", [3, 5, 6])
def test_channel_counts(graph, voice_node, channels):
    s = Stream(graph)
    s.set_format(16000, channels, "S16LE")
    x, span = utterance(16000, channels)
    t0 = s.send(x, 16000, "S16LE")
    s.expect_final(t0, span, what=f"{channels} channels")


@pytest.mark.parametrize("fmt", ["S16BE", "S24LE", "S32LE", "F32LE", "F64LE", "U8"])
def test_sample_formats(graph, voice_node, fmt):
    s = Stream(graph)
    s.set_format(16000, 1, fmt)
    x, span = utterance(16000)
    t0 = s.send(x, 16000, fmt)
    s.expect_final(t0, span, what=fmt)


@pytest.mark.parametrize("rate,channels,fmt,coding,words", [
    (16000, 1, "S20LE", "wave", ["S20LE"]),
    (16000, 1, "ALAW", "wave", ["ALAW"]),
    (16000, 1, "S16LE", "mp3", ["mp3"]),
    (4000, 1, "S16LE", "wave", ["4000"]),
    (192000, 1, "S16LE", "wave", ["192000"]),
    (16000, 0, "S16LE", "wave", ["0 channels"]),
])
def test_unsupported_format_is_named_and_the_node_goes_on(graph, voice_node, rate, channels, fmt, coding, words):
    s = Stream(graph)
    s.set_format(rate, channels, fmt, coding, wait=False)
    assert graph.wait_log("voice_node", words, timeout=10.0), \
        f"no /rosout line naming {words}; voice_node said {graph.logs('voice_node')[-4:]}"
    before = len(graph.messages("emotion/voice"))
    x, _ = utterance(16000)
    s.send(x, 16000, "S16LE")   # audio in the refused format is dropped, not misread
    graph.spin_for(1.0)
    assert len(graph.messages("emotion/voice")) == before
    s.valid_utterance_answered(voice_node, what=f"after {words}")


def _corrupted(x, span, rate=16000):
    """NaN and Inf samples sprinkled over the speech (not the pauses)."""
    x = x.copy()
    a, b = int(span[0] * rate), int(span[1] * rate)
    x[a:b:997, 0] = np.nan
    x[a + 500:b:1499, 0] = np.inf
    x[a + 700:b:2003, 0] = -np.inf
    return x


def _clipped(x, span, rate=16000):
    """The speech overdriven 20x and clipped (the pauses stay quiet)."""
    x = x.copy()
    a, b = int(span[0] * rate), int(span[1] * rate)
    x[a:b] = np.clip(x[a:b] * 20.0, -1.0, 1.0)
    return x


def test_nan_and_inf_samples_are_replaced(graph, voice_node):
    s = Stream(graph)
    s.set_format(16000, 1, "F32LE")
    x, span = utterance(16000)
    t0 = s.send(_corrupted(x, span), 16000, "F32LE")
    s.expect_final(t0, span, what="speech with NaN/Inf samples")
    s.valid_utterance_answered(voice_node)


# The three "..._is_reported" tests check that voice_node gives a (rate-limited) log line naming the problem.


def test_nan_and_inf_samples_are_reported(graph, voice_node):
    s = Stream(graph)
    s.set_format(16000, 1, "F32LE")
    x, span = utterance(16000)
    s.send(_corrupted(x, span), 16000, "F32LE")
    assert graph.wait_log("voice_node", ["nan"], timeout=5.0) or graph.wait_log("voice_node", ["non-finite"], 1.0), \
        f"no /rosout line about NaN/Inf samples; voice_node said {graph.logs('voice_node')[-4:]}"


def test_clipped_speech_is_still_classified(graph, voice_node):
    s = Stream(graph)
    s.set_format(16000, 1, "S16LE")
    x, span = utterance(16000)
    t0 = s.send(_clipped(x, span), 16000, "S16LE")
    s.expect_final(t0, span, what="clipped speech")


def test_clipped_speech_is_reported(graph, voice_node):
    s = Stream(graph)
    s.set_format(16000, 1, "S16LE")
    x, span = utterance(16000)
    s.send(_clipped(x, span), 16000, "S16LE")
    assert graph.wait_log("voice_node", ["clip"], timeout=5.0), \
        f"no /rosout line about clipping; voice_node said {graph.logs('voice_node')[-4:]}"


def test_silence_gives_no_emotion_and_the_node_goes_on(graph, voice_node):
    s = Stream(graph)
    s.set_format(16000, 1, "S16LE")
    before = len(graph.messages("emotion/voice"))
    digital = np.zeros((int(2.5 * 16000), 1), np.float32)
    s.send(digital, 16000, "S16LE")
    quiet = (np.random.default_rng(1).standard_normal((int(2.5 * 16000), 1)) * 0.002).astype(np.float32)
    s.send(quiet, 16000, "S16LE")
    graph.spin_for(1.5)  # idle flush
    voiced = [m for m in graph.messages("emotion/voice")[before:] if m.voice_activity]
    assert not voiced, f"emotion published for silence: {[(m.emotion, m.partial) for m in voiced]}"
    s.valid_utterance_answered(voice_node, what="after silence")


def _send_with_gap(s):
    x, span = utterance(16000)
    n_chunks = int(np.ceil(x.shape[0] / 1600))
    return s.send(x, 16000, "S16LE", skip=set(range(n_chunks // 2, n_chunks // 2 + 5))), span  # 0.5 s lost


def test_gap_in_the_stream_closes_the_utterance_and_the_node_goes_on(graph, voice_node):
    s = Stream(graph)
    s.set_format(16000, 1, "S16LE")
    t0, span = _send_with_gap(s)
    s.expect_final(t0, span, what="speech after the gap")
    s.valid_utterance_answered(voice_node, what="after a gap")


def test_gap_in_the_stream_is_reported(graph, voice_node):
    s = Stream(graph)
    s.set_format(16000, 1, "S16LE")
    _send_with_gap(s)
    assert graph.wait_log("voice_node", ["gap"], timeout=8.0), \
        f"no /rosout line about the gap; voice_node said {graph.logs('voice_node')[-4:]}"


def test_partial_frames_and_empty_chunks(graph, voice_node):
    s = Stream(graph)
    s.set_format(16000, 2, "S16LE")
    pcm = float_to_pcm(np.zeros((160, 2), np.float32), "S16LE")
    s.send_raw([(pcm[:-1], 160), (b"", 0), (pcm[:-3], 160)], 90000.0, 16000)
    assert graph.wait_log("voice_node", ["not a whole number"], timeout=8.0), \
        f"no /rosout line about the partial frame; voice_node said {graph.logs('voice_node')[-4:]}"
    s.valid_utterance_answered(voice_node, what="after partial frames")

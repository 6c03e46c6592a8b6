"""microphone_node (file mode) and the audio sources: published audio decodes to the file's samples."""

import os
import random
import subprocess
import sys
import time

os.environ.setdefault("ROS_DOMAIN_ID", str(random.randint(1, 200)))
os.environ.setdefault("ROS_HOME", f"/tmp/emotion_ros-test-roshome-{os.getpid()}")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import soundfile as sf  # noqa: E402
from audio_common_msgs.msg import AudioDataStamped, AudioInfo  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402

from emotion_ros.core.sources import (AudioFileSource, SourceError, list_input_devices,  # noqa: E402
                                      resolve_input_device)
from emotion_ros.nodes.microphone import MicrophoneNode  # noqa: E402
from emotion_ros.ros.convert import pcm_to_float, stamp_to_ns, stamp_to_sec  # noqa: E402
from emotion_ros.ros.node_utils import latched_qos, reliable_qos  # noqa: E402

PKG_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RATE = 22050
DUR = 0.6


def stereo_tones(n, rate):
    t = np.arange(n) / rate
    return np.stack([0.5 * np.sin(2 * np.pi * 300 * t), 0.25 * np.sin(2 * np.pi * 700 * t)], 1)


@pytest.fixture(scope="module")
def wav(tmp_path_factory):
    path = tmp_path_factory.mktemp("mic") / "tones.wav"
    sf.write(str(path), stereo_tones(int(RATE * DUR), RATE), RATE, subtype="PCM_16")
    return str(path)


_COUNT = iter(range(1000))


class Harness:
    def __init__(self, ctx):
        self.ctx = ctx
        n = next(_COUNT)
        self.ns = f"/mic_test_{os.getpid()}_{n}"
        self.node = Node(f"mic_test_sub_{os.getpid()}_{n}", context=ctx)
        self.audio, self.info, self.arrival = [], [], []
        self.node.create_subscription(AudioDataStamped, self.ns + "/audio", self._on_audio, reliable_qos(500))
        self.ex = SingleThreadedExecutor(context=ctx)
        self.ex.add_node(self.node)
        self.mic = None

    def start(self, **params):
        params.setdefault("wait_for_subscribers_s", 10.0)
        params.setdefault("exit_on_end", False)
        self.mic = MicrophoneNode(context=self.ctx, parameter_overrides=[Parameter(k, value=v)
                                                                         for k, v in params.items()],
                                  cli_args=["--ros-args", "-r", f"__ns:={self.ns}"])
        self.ex.add_node(self.mic)
        return self.mic

    def _on_audio(self, msg):
        self.audio.append(msg)
        self.arrival.append(time.monotonic())

    def late_info_subscriber(self):
        self.node.create_subscription(AudioInfo, self.ns + "/audio_info", self.info.append, latched_qos())

    def spin_until(self, pred, timeout=20.0):
        end = time.monotonic() + timeout
        while not pred() and time.monotonic() < end:
            self.ex.spin_once(timeout_sec=0.02)
        return pred()

    def close(self):
        if self.mic is not None:
            self.mic.destroy_node()
        self.ex.shutdown()
        self.node.destroy_node()


@pytest.fixture
def harness(ctx):
    h = Harness(ctx)
    yield h
    h.close()


def decode(msgs, info):
    return np.concatenate([pcm_to_float(bytes(m.audio.data), info.sample_format, info.channels) for m in msgs])


def test_file_mode_publishes_the_files_samples_exactly_with_audio_info(harness, wav):
    mic = harness.start(file=wav, sample_rate=0, channels=0, block_duration_s=0.05, frame_id="mic0")
    assert harness.spin_until(lambda: mic.ended.is_set(), timeout=30)
    harness.late_info_subscriber()  # transient local: a subscriber that comes later still gets AudioInfo
    assert harness.spin_until(lambda: harness.info and len(harness.audio) >= 1, timeout=10)
    harness.spin_until(lambda: False, timeout=0.3)
    info = harness.info[-1]
    assert (info.channels, info.sample_rate, info.sample_format, info.coding_format) == (2, RATE, "S16LE", "wave")
    assert info.bitrate == RATE * 2 * 16
    got = decode(harness.audio, info)
    ref = sf.read(wav, dtype="int16")[0].astype(np.float32) / 32768.0
    assert got.shape == ref.shape
    np.testing.assert_array_equal(got, ref)  # S16 file -> S16 stream: bit exact
    # blocks of 50 ms (1102.5 -> 1102 frames), stamps advance by exactly the audio's duration
    block = int(round(0.05 * RATE))
    sizes = [len(m.audio.data) // 4 for m in harness.audio]
    assert sizes[:-1] == [block] * (len(sizes) - 1) and 0 < sizes[-1] <= block
    ns = np.array([stamp_to_ns(m.header.stamp) for m in harness.audio])
    starts = np.cumsum([0] + sizes[:-1]) * 1_000_000_000 // RATE  # start of each block on the sample clock
    assert np.array_equal(ns - ns[0], starts)
    assert all(m.header.frame_id == "mic0" for m in harness.audio)
    assert abs(stamp_to_sec(harness.audio[0].header.stamp) - time.time()) < 30
    # real-time pace: a block goes out when its last sample has "been played"
    assert mic.blocks == len(harness.audio)
    assert harness.arrival[-1] - harness.arrival[0] >= (DUR - 0.05) * 0.9


def test_file_mode_resamples_and_downmixes_to_16k_mono_f32(harness, wav):
    mic = harness.start(file=wav, sample_rate=16000, channels=1, block_duration_s=0.1, sample_format="F32LE")
    assert harness.spin_until(lambda: mic.ended.is_set(), timeout=30)
    harness.late_info_subscriber()
    assert harness.spin_until(lambda: bool(harness.info))
    harness.spin_until(lambda: False, timeout=0.3)
    info = harness.info[-1]
    assert (info.channels, info.sample_rate, info.sample_format) == (1, 16000, "F32LE")
    x = decode(harness.audio, info)[:, 0]
    assert abs(len(x) - DUR * 16000) <= 2
    ref = stereo_tones(len(x), 16000).mean(axis=1)  # the same tones, sampled at 16 kHz, downmixed
    inner = slice(200, len(x) - 200)  # resampler edges aside
    assert np.abs(x[inner] - ref[inner]).max() < 0.01
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    freqs = np.fft.rfftfreq(len(x), 1 / 16000)
    assert freqs[np.argmax(spectrum)] == pytest.approx(300, abs=5)
    high = freqs > 500
    assert freqs[high][np.argmax(spectrum[high])] == pytest.approx(700, abs=5)


def test_file_mode_loop_keeps_stamps_continuous(harness, wav):
    mic = harness.start(file=wav, sample_rate=16000, channels=1, block_duration_s=0.1, loop=True)
    n_file = int(np.ceil(DUR / 0.1))
    assert harness.spin_until(lambda: len(harness.audio) >= n_file + 3, timeout=30)
    assert not mic.ended.is_set()
    sizes = [len(m.audio.data) // 2 for m in harness.audio]
    assert set(sizes) == {1600}  # no short block at the loop boundary
    ns = np.array([stamp_to_ns(m.header.stamp) for m in harness.audio])
    assert np.array_equal(np.diff(ns), np.full(len(ns) - 1, 100_000_000))


def test_no_input_device_is_a_clear_error(ctx):
    if list_input_devices():
        pytest.skip("this machine has an audio input device")
    with pytest.raises(SourceError, match="no audio input device found.*'file' parameter"):
        MicrophoneNode(context=ctx)


def test_process_without_device_exits_1_and_file_process_exits_0(wav):
    env = dict(os.environ, PYTHONPATH=PKG_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "emotion_ros.nodes.microphone", "--ros-args",
           "--params-file", os.path.join(PKG_ROOT, "config", "emotion.yaml"),
           "-r", f"__ns:=/mic_proc_{os.getpid()}"]
    if not list_input_devices():
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
        assert r.returncode == 1 and "no audio input device found" in r.stderr + r.stdout
    r = subprocess.run(cmd + ["-p", f"file:={wav}"], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert f"end of {wav} after 6 block(s), 0.60 s" in r.stderr + r.stdout


FAKE_DEVICES = [
    {"name": "HDA Intel PCH: ALC3246 Analog (hw:0,0)", "max_input_channels": 2, "max_output_channels": 2},
    {"name": "HDMI 0", "max_input_channels": 0, "max_output_channels": 8},
    {"name": "ReSpeaker 4 Mic Array (UAC1.0)", "max_input_channels": 6, "max_output_channels": 0},
]


def test_input_device_resolution():
    devs = list_input_devices(lambda: FAKE_DEVICES)
    assert [d["index"] for d in devs] == [0, 2]  # HDMI has no input
    assert resolve_input_device("", devs) is None
    assert resolve_input_device(2, devs) == 2 and resolve_input_device("0", devs) == 0
    assert resolve_input_device("respeaker", devs) == 2
    with pytest.raises(SourceError, match="device 1 does not exist or has no input.*ReSpeaker"):
        resolve_input_device(1, devs)
    with pytest.raises(SourceError, match="no audio input device matches 'usb'"):
        resolve_input_device("usb", devs)
    with pytest.raises(SourceError, match="no audio input device found"):
        resolve_input_device("", [])

    def broken():
        raise RuntimeError("PortAudio not initialised")
    assert list_input_devices(broken) == []


def test_audio_file_source_blocks_channels_and_errors(tmp_path, wav):
    src = AudioFileSource(wav, block_frames=1000)
    assert (src.sample_rate, src.channels) == (RATE, 2)
    blocks = []
    while (b := src.read_block()) is not None:
        blocks.append(b)
    n = int(RATE * DUR)
    assert [len(b) for b in blocks] == [1000] * (n // 1000) + [n % 1000]
    mono = AudioFileSource(wav, channels=1, block_frames=n).read_block()
    np.testing.assert_allclose(mono[:, 0], np.concatenate(blocks).mean(axis=1), atol=1e-6)
    # a mono file can feed more channels; three channels of a stereo file cannot be made
    m = tmp_path / "mono.flac"
    sf.write(str(m), np.linspace(-0.5, 0.5, 800), 8000)
    two = AudioFileSource(str(m), channels=2, block_frames=800).read_block()
    assert two.shape == (800, 2) and np.array_equal(two[:, 0], two[:, 1])
    with pytest.raises(SourceError, match="has 2 channels; cannot make 3"):
        AudioFileSource(wav, channels=3)
    with pytest.raises(SourceError, match="audio file not found"):
        AudioFileSource(str(tmp_path / "none.wav"))
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF0000WAVEjunk" * 10)
    with pytest.raises(SourceError, match="cannot read audio file"):
        AudioFileSource(str(bad))
    with pytest.raises(SourceError, match="block size"):
        AudioFileSource(wav, block_frames=0)

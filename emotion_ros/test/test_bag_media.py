"""emotion-bag from-media / info and the error handling of every subcommand (no ROS graph needed)."""

import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
import soundfile as sf

from emotion_ros.tools.bag import main as bag_main
from emotion_ros.tools.bag_common import BagError, BagFile, BagWriter, typestore

PKG_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_cli(*args, timeout=120):
    """The real command line (python -m emotion_ros.tools.bag ...): (rc, stdout, stderr)."""
    env = dict(os.environ, ROS_HOME=os.environ.get("ROS_HOME", "/tmp/roslog-bagtest"))
    env["PYTHONPATH"] = PKG_ROOT + os.pathsep + env.get("PYTHONPATH", "")
    p = subprocess.run([sys.executable, "-m", "emotion_ros.tools.bag", *map(str, args)], capture_output=True,
                       text=True, timeout=timeout, env=env, cwd=PKG_ROOT)
    return p.returncode, p.stdout, p.stderr


def write_video(path, n=20, fps=12.5, size=(64, 48)):
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, size)
    assert w.isOpened()
    frames = []
    for i in range(n):
        f = np.zeros((size[1], size[0], 3), np.uint8)
        f[:, :, 1] = 10 * i  # brightness ramp identifies the frame after JPEG
        cv2.rectangle(f, (2 + i, 2), (20 + i, 20), (255, 255, 255), -1)
        w.write(f)
        frames.append(f)
    w.release()
    return frames


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    d = tmp_path_factory.mktemp("media")
    write_video(d / "v.avi")
    rng = np.random.default_rng(0)
    mono = (0.3 * np.sin(2 * np.pi * 440 * np.arange(16000) / 16000)).astype(np.float32)  # 1.0 s
    sf.write(d / "mono16k.wav", mono, 16000, subtype="PCM_16")
    stereo = (rng.uniform(-0.5, 0.5, (24000, 2))).astype(np.float32)  # 0.5 s at 48 kHz
    sf.write(d / "stereo48k.flac", stereo, 48000, subtype="PCM_16")
    return d


def read_all(path):
    with BagFile(str(path)) as bf:
        out = []
        for conn, t, raw in bf.messages():
            out.append((conn.topic, conn.msgtype, t, bf.deserialize(raw, conn.msgtype)))
        return out, bf.topics(), bf.start_ns


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_from_media_video_and_audio(media, tmp_path, storage):
    out = tmp_path / "bag"
    rc, so, se = run_cli("from-media", "--video", media / "v.avi", "--audio", media / "mono16k.wav", "--out", out,
                         "--start-time", "1000.5", "--chunk-ms", "20", "--storage", storage)
    assert rc == 0, se
    summary = json.loads(so.strip().splitlines()[-1])
    assert summary["messages"] == {"/image_raw": 20, "/audio_info": 1, "/audio": 50}
    assert (out / "metadata.yaml").is_file()
    assert list(out.glob("*.mcap" if storage == "mcap" else "*.db3"))
    msgs, topics, start = read_all(out)
    assert start == 1_000_500_000_000
    assert {t: (s.msgtype, s.count) for t, s in topics.items()} == {
        "/image_raw": ("sensor_msgs/msg/Image", 20), "/audio": ("audio_common_msgs/msg/AudioDataStamped", 50),
        "/audio_info": ("audio_common_msgs/msg/AudioInfo", 1)}
    times = [t for _, _, t, _ in msgs]
    assert times == sorted(times)  # one time base, interleaved in order
    images = [(t, m) for topic, _, t, m in msgs if topic == "/image_raw"]
    for i, (t, m) in enumerate(images):
        assert t == 1_000_500_000_000 + round(i * 1e9 / 12.5)  # frame i at t0 + i / fps
        assert m.header.stamp.sec * 10**9 + m.header.stamp.nanosec == t
        assert (m.encoding, m.width, m.height, m.step, len(m.data)) == ("bgr8", 64, 48, 192, 64 * 48 * 3)
        green = np.frombuffer(m.data, np.uint8).reshape(48, 64, 3)[30:, 40:, 1]
        assert abs(float(green.mean()) - 10 * i) < 6  # the i-th frame, in order
    info = [m for topic, _, _, m in msgs if topic == "/audio_info"]
    assert (info[0].channels, info[0].sample_rate, info[0].sample_format, info[0].coding_format,
            info[0].bitrate) == (1, 16000, "S16LE", "wave", 256000)
    assert msgs[0][0] in ("/audio_info", "/image_raw") and msgs[0][2] == start
    audio = [(t, m) for topic, _, t, m in msgs if topic == "/audio"]
    pcm = np.concatenate([np.frombuffer(m.audio.data.tobytes(), "<i2") for _, m in audio])
    src, _ = sf.read(media / "mono16k.wav", dtype="int16")
    np.testing.assert_array_equal(pcm, src)
    for k, (t, m) in enumerate(audio):
        assert t == 1_000_500_000_000 + k * 20_000_000
        assert m.header.stamp.sec * 10**9 + m.header.stamp.nanosec == t


def test_from_media_stereo_48k_audio_only(media, tmp_path):
    out = tmp_path / "bag"
    rc, so, se = run_cli("from-media", "--audio", media / "stereo48k.flac", "--out", out, "--start-time", "0",
                         "--chunk-ms", "30")
    assert rc == 0, se
    msgs, topics, _ = read_all(out)
    assert set(topics) == {"/audio", "/audio_info"}
    info = [m for topic, _, _, m in msgs if topic == "/audio_info"][0]
    assert (info.channels, info.sample_rate) == (2, 48000)
    chunks = [m for topic, _, _, m in msgs if topic == "/audio"]
    assert len(chunks) == int(np.ceil(24000 / 1440))
    pcm = np.concatenate([np.frombuffer(m.audio.data.tobytes(), "<i2") for m in chunks]).reshape(-1, 2)
    src, _ = sf.read(media / "stereo48k.flac", dtype="int16")
    np.testing.assert_array_equal(pcm, src)


def test_bag_metadata_carries_custom_definitions(tmp_path):
    """Connections of emotion_msgs / audio_common_msgs types embed their .msg definitions (ros2 bag can decode)."""
    ts = typestore()
    out = tmp_path / "bag"
    with BagWriter(str(out)) as w:
        st = ts.types["emotion_msgs/msg/EmotionState"]
        hdr = ts.types["std_msgs/msg/Header"](stamp=ts.types["builtin_interfaces/msg/Time"](sec=5, nanosec=7),
                                              frame_id="cam")
        msg = st(header=hdr, person_id="1", primary=True, emotion="happy", confidence=0.5, labels=["a", "b"],
                 probabilities=np.array([0.25, 0.75], np.float32), valence=0.1, arousal=0.2, face_weight=1.0,
                 voice_weight=0.0)
        w.write_msg("emotion/state", "emotion_msgs/msg/EmotionState", 5_000_000_007, msg)
    with BagFile(str(out)) as bf:
        conn = bf.reader.connections[0]
        assert conn.topic == "/emotion/state"
        assert "float32 face_weight" in conn.msgdef.data and "MSG: std_msgs/Header" in conn.msgdef.data
        assert conn.digest.startswith("RIHS01_")
        (c, t, raw), = list(bf.messages())
        back = bf.deserialize(raw, c.msgtype)
    assert (back.emotion, back.person_id, back.labels, t) == ("happy", "1", ["a", "b"], 5_000_000_007)
    # The bytes are what rclpy produces for the same message (the CDR that raw subscriptions hand over).
    from emotion_msgs.msg import EmotionState
    from rclpy.serialization import deserialize_message
    m = deserialize_message(bytes(raw), EmotionState)
    assert (m.emotion, list(m.probabilities), m.header.frame_id) == ("happy", [0.25, 0.75], "cam")


def test_from_media_errors(media, tmp_path):
    rc, _, se = run_cli("from-media", "--out", tmp_path / "b")
    assert rc == 2 and "needs --video and/or --audio" in se and "Traceback" not in se
    rc, _, se = run_cli("from-media", "--video", tmp_path / "missing.mp4", "--out", tmp_path / "b")
    assert rc == 2 and "does not exist" in se and "Traceback" not in se
    junk = tmp_path / "junk.avi"
    junk.write_bytes(b"this is not a video" * 100)
    rc, _, se = run_cli("from-media", "--video", junk, "--out", tmp_path / "b")
    assert rc == 2 and "cannot open video" in se and "Traceback" not in se
    junk_audio = tmp_path / "junk.wav"
    junk_audio.write_bytes(b"RIFF garbage" * 50)
    rc, _, se = run_cli("from-media", "--audio", junk_audio, "--out", tmp_path / "b")
    assert rc == 2 and "junk.wav" in se and "Traceback" not in se
    assert not (tmp_path / "b").exists()  # nothing half-written
    # an existing output is never replaced without --force
    out = tmp_path / "exists"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    rc, _, se = run_cli("from-media", "--audio", media / "mono16k.wav", "--out", out)
    assert rc == 2 and "--force" in se and (out / "keep.txt").read_text() == "precious"
    rc, so, se = run_cli("from-media", "--audio", media / "mono16k.wav", "--out", out, "--force")
    assert rc == 0, se
    assert not (out / "keep.txt").exists() and (out / "metadata.yaml").is_file()


def test_broken_bags_give_clear_errors(media, tmp_path, capsys):
    good = tmp_path / "good"
    assert bag_main(["from-media", "--audio", str(media / "mono16k.wav"), "--out", str(good)]) == 0
    capsys.readouterr()

    cases = {}
    cases["missing"] = (tmp_path / "nope", "does not exist")
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "x.txt").write_text("hi")
    cases["no metadata"] = (plain, "without metadata.yaml")
    text = tmp_path / "notes.txt"
    text.write_text("not a bag")
    cases["foreign file"] = (text, "notes.txt")
    garbled = tmp_path / "garbled"
    garbled.mkdir()
    (garbled / "metadata.yaml").write_text("rosbag2_bagfile_information: [unclosed\n")
    cases["bad metadata"] = (garbled, "garbled")
    trunc = tmp_path / "trunc"
    trunc.mkdir()
    (trunc / "metadata.yaml").write_text((good / "metadata.yaml").read_text().replace("good.mcap", "trunc.mcap"))
    data = (good / "good.mcap").read_bytes()
    (trunc / "trunc.mcap").write_bytes(data[: len(data) // 2])
    cases["truncated"] = (trunc, "trunc")
    for what, (path, needle) in cases.items():
        for cmd in (["info", str(path)], ["play", str(path)],
                    ["evaluate", str(path), "--labels", str(tmp_path / "l.csv")]):
            rc = bag_main(cmd)
            err = capsys.readouterr().err
            assert rc == 2, (what, cmd, err)
            assert needle in err, (what, cmd, err)
            assert err.count("\n") <= 2 and "Traceback" not in err, (what, err)


def test_info_summary(media, tmp_path, capsys):
    out = tmp_path / "bag"
    assert bag_main(["from-media", "--video", str(media / "v.avi"), "--out", str(out), "--start-time", "7"]) == 0
    capsys.readouterr()
    assert bag_main(["info", str(out)]) == 0
    info = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert info["start_time"] == 7.0 and info["message_count"] == 20
    assert info["topics"] == {"/image_raw": {"type": "sensor_msgs/msg/Image", "count": 20}}
    assert info["duration_s"] == pytest.approx(19 / 12.5)


def test_writer_refuses_unknown_type(tmp_path):
    with pytest.raises(BagError, match="no message definition for nosuch_msgs/msg/Thing"):
        with BagWriter(str(tmp_path / "b")) as w:
            w.add_topic("x", "nosuch_msgs/msg/Thing")

"""emotion-demo: run the whole emotion_ros graph for a bounded time on an embedded input.

No camera or microphone needed.  The input is a real face and a real voice made on the
spot: the portrait photograph that matplotlib ships (``grace_hopper.jpg``) turned into a
short video with a little head motion, and speech synthesised by ``espeak-ng``.  Every
node runs (camera and microphone sources playing those files, face, voice, fusion,
behaviour) in one process on real DDS, with the trained models under ``models/``.  The
EmotionState stream is printed as it goes; the last line is one JSON object summarising
what was published.

    emotion-demo [--duration 25] [--device auto] [--workdir DIR | --keep-input] [--video FILE] [--audio FILE]

The run always ends: ``--duration`` must be more than 0 seconds (for an open-ended run use the launch file or
``pipeline``, which stop on Ctrl-C).  The generated input goes to a temporary folder that is removed when the demo
ends (``--keep-input`` keeps it and prints where); with ``--workdir DIR`` it is written to DIR and kept.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional

import numpy as np

SENTENCES = [
    "Hello! It is so wonderful to see you again today.",
    "I am really happy that you came to visit me.",
    "What a great day, everything is going well!",
    "Thank you so much, this makes me smile.",
]


def make_face_video(path: str, seconds: float = 4.0, fps: float = 10.0) -> str:
    """A 640x480 MJPG clip of matplotlib's portrait photo with a small head motion."""
    import cv2
    import matplotlib.cbook as cbook

    photo = cv2.imread(str(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)))
    if photo is None:
        raise RuntimeError("matplotlib's sample photo grace_hopper.jpg could not be read")
    h = 420
    photo = cv2.resize(photo, (int(photo.shape[1] * h / photo.shape[0]), h), interpolation=cv2.INTER_AREA)
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"MJPG"), fps, (640, 480))
    if not writer.isOpened():
        raise RuntimeError(f"cannot write {path}")
    n = int(seconds * fps)
    for i in range(n):
        frame = np.full((480, 640, 3), 60, np.uint8)
        dx = int(40 * np.sin(2 * np.pi * i / n))
        x0 = (640 - photo.shape[1]) // 2 + dx
        y0 = 30
        xs, xe = max(0, x0), min(640, x0 + photo.shape[1])
        frame[y0:y0 + h, xs:xe] = photo[:, xs - x0:xe - x0]
        writer.write(frame)
    writer.release()
    return path


def make_speech(path: str, sentences: List[str] = SENTENCES, gap_s: float = 1.0) -> str:
    """Speech from espeak-ng, sentences separated by silence, as 16-bit WAV."""
    import soundfile as sf

    exe = shutil.which("espeak-ng") or shutil.which("espeak")
    if exe is None:
        raise RuntimeError("espeak-ng is not installed (make setup installs it: apt-get install espeak-ng)")
    parts = []
    sr = None
    with tempfile.TemporaryDirectory() as tmp:
        for i, text in enumerate(sentences):
            wav = os.path.join(tmp, f"s{i}.wav")
            subprocess.run([exe, "-v", "en-us", "-s", "155", "-p", "65", "-a", "160", "-w", wav, text],
                           check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            x, sr = sf.read(wav, dtype="float32")
            parts += [x, np.zeros(int(gap_s * sr), np.float32)]
    sf.write(path, np.concatenate(parts), sr, subtype="PCM_16")
    return path


def make_monitor(counts: Dict[str, int], seen: Dict[str, collections.Counter], log: List[dict],
                 print_period_s: float = 0.5):
    """A node counting everything the graph publishes and printing the EmotionState stream."""
    from rclpy.node import Node
    from std_msgs.msg import String

    from emotion_msgs.msg import BehaviourDecision, EmotionState, FaceEmotionArray, VoiceEmotion
    from emotion_ros.ros.node_utils import reliable_qos

    class DemoMonitor(Node):
        def __init__(self):
            super().__init__("emotion_demo_monitor")
            self._last_print = 0.0
            self._last_emotion = None
            q = reliable_qos(50)
            self.create_subscription(EmotionState, "emotion/state", self.on_state, q)
            self.create_subscription(EmotionState, "emotion/states", lambda m: self.count("emotion/states"), q)
            self.create_subscription(FaceEmotionArray, "emotion/faces", self.on_faces, q)
            self.create_subscription(VoiceEmotion, "emotion/voice", self.on_voice, q)
            self.create_subscription(BehaviourDecision, "emotion/decision", self.on_decision, q)
            self.create_subscription(String, "emotion/say", lambda m: self.count("emotion/say"), q)

        def count(self, topic):
            counts[topic] = counts.get(topic, 0) + 1

        def on_state(self, m):
            self.count("emotion/state")
            seen["state"][m.emotion] += 1
            now = time.monotonic()
            if m.emotion != self._last_emotion or now - self._last_print >= print_period_s:
                self._last_print, self._last_emotion = now, m.emotion
                probs = " ".join(f"{lab[:3]}={p:.2f}" for lab, p in zip(m.labels, m.probabilities))
                print(f"EmotionState t={m.header.stamp.sec + m.header.stamp.nanosec * 1e-9:.2f} "
                      f"person={m.person_id or '-'} emotion={m.emotion} conf={m.confidence:.2f} "
                      f"valence={m.valence:+.2f} arousal={m.arousal:+.2f} "
                      f"w_face={m.face_weight:.2f} w_voice={m.voice_weight:.2f} [{probs}]", flush=True)

        def on_faces(self, m):
            self.count("emotion/faces")
            for f in m.faces:
                seen["face"][f.emotion] += 1
            if m.faces:
                counts["frames_with_faces"] = counts.get("frames_with_faces", 0) + 1

        def on_voice(self, m):
            self.count("emotion/voice")
            seen["voice"][m.emotion] += 1
            print(f"VoiceEmotion {m.emotion} conf={m.confidence:.2f} partial={m.partial} "
                  f"speech={m.speech_ratio:.2f}", flush=True)

        def on_decision(self, m):
            self.count("emotion/decision")
            log.append({"rule": m.rule, "emotion": m.emotion, "say": m.say, "expression": m.expression,
                        "motion_scale": round(float(m.motion_scale), 2)})
            print(f"BehaviourDecision rule={m.rule} say={m.say!r} expression={m.expression} "
                  f"motion={m.motion_scale:.2f}", flush=True)

    return DemoMonitor


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="emotion-demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=25.0, help="seconds to run the graph (> 0; default 25)")
    p.add_argument("--device", default=None, help="auto | cpu | cuda (default: the params file's)")
    p.add_argument("--workdir", default=None,
                   help="write the generated input here and keep it (default: a temporary folder, removed at the end)")
    p.add_argument("--keep-input", action="store_true",
                   help="keep the temporary folder with the generated input (its path is printed)")
    p.add_argument("--video", default=None, help="use this video instead of the generated one")
    p.add_argument("--audio", default=None, help="use this audio file instead of the generated speech")
    return p


def check_args(args) -> Optional[str]:
    """The problem with the arguments in one line, or None."""
    import math

    if not (math.isfinite(args.duration) and args.duration > 0):
        return (f"--duration must be more than 0 seconds, got {args.duration:g} (the demo always ends; for an "
                "open-ended run: ros2 launch emotion_ros emotion.launch.py, or pipeline without --duration)")
    for opt, path in (("--video", args.video), ("--audio", args.audio)):
        if path and not os.path.isfile(path):
            return f"{opt} {path!r} does not exist"
    if args.workdir and args.keep_input:
        return "--keep-input is for the temporary folder; --workdir DIR is always kept"
    return None


def main(argv: Optional[List[str]] = None) -> None:
    args = build_parser().parse_args(argv)
    problem = check_args(args)
    if problem:
        print(f"emotion-demo: error: {problem}", file=sys.stderr)
        sys.exit(2)

    from emotion_ros.env import ensure_ros_env
    from emotion_ros.nodes import pipeline

    ensure_ros_env()
    temp = args.workdir is None
    work = args.workdir or tempfile.mkdtemp(prefix="emotion_demo_")
    try:
        code = _run(args, work, pipeline)
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:  # making the input: espeak-ng, files
        print(f"emotion-demo: error: {' '.join(str(exc).split())}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        print("emotion-demo: interrupted", file=sys.stderr)
        code = 130
    finally:
        if temp and not args.keep_input:
            shutil.rmtree(work, ignore_errors=True)
        elif temp:
            print(f"demo input kept in {work}", flush=True)
    from emotion_ros.ros.lifecycle import exit_process
    exit_process(code)  # no interpreter teardown after rclpy's shutdown: it can abort (see exit_process)


def _run(args, work: str, pipeline) -> int:
    """Make the input in ``work``, run the graph, print the summary; the exit code."""
    os.makedirs(work, exist_ok=True)
    t0 = time.monotonic()
    video = args.video or make_face_video(os.path.join(work, "face.avi"))
    audio = args.audio or make_speech(os.path.join(work, "speech.wav"))
    print(f"demo input: video {video}, audio {audio} (made in {time.monotonic() - t0:.1f}s)", flush=True)

    counts: Dict[str, int] = {}
    seen = {k: collections.Counter() for k in ("state", "face", "voice")}
    decisions: List[dict] = []
    opts, ros_args = pipeline.parse_args(["--video", video, "--audio", audio, "--loop",
                                          "--duration", str(args.duration)]
                                         + (["--device", args.device] if args.device else []))
    monitor = make_monitor(counts, seen, decisions)
    rc = pipeline.run_pipeline(opts, ros_args, extra=[monitor])
    summary = {
        "demo": "emotion_ros",
        "exit_code": rc,
        "duration_s": args.duration,
        "input": {"video": video, "audio": audio},
        "input_kept": not (args.workdir is None and not args.keep_input),
        "counts": {k: counts.get(k, 0) for k in ("emotion/state", "emotion/states", "emotion/faces",
                                                 "emotion/voice", "emotion/decision", "emotion/say")},
        "frames_with_faces": counts.get("frames_with_faces", 0),
        "emotions_seen": dict(seen["state"]),
        "face_emotions": dict(seen["face"]),
        "voice_emotions": dict(seen["voice"]),
        "decisions": decisions[:5],
    }
    print(json.dumps(summary), flush=True)
    return 0 if rc == 0 and summary["counts"]["emotion/state"] > 0 else 1


if __name__ == "__main__":
    sys.exit(main())

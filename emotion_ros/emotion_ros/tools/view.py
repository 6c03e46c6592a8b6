"""``emotion-view``: watch the EmotionState stream in a terminal, and save the face debug images to a video file.

    emotion-view [--all] [--format auto|table|lines|json] [--count N] [--duration S] [--every S]
                 [--save-debug FILE.avi|.mp4 [--video-fps 15] [--force]] [--ascii] [--ros-args ...]

What it shows, for each state: the person (track id; ``-`` for voice alone), the top emotion and its confidence,
valence and arousal, the weights of the face and the voice in this estimate, and every label's probability as a
bar.  ``--format table`` (the default on a terminal) redraws one block per person at most ``--refresh`` times a
second (with the age of its last state; a person without a state for 10 s leaves the table); ``lines`` (the
default when stdout is not a terminal: a pipe, a file, a log) prints one line per state (``--every S``: at most one
every S seconds per person, and always when the emotion changes); ``json`` prints each state as one JSON object.
It listens to ``emotion/state`` (the primary person) or, with ``--all``, to ``emotion/states`` (every person);
``--topic`` names another topic.

``--save-debug FILE`` also subscribes to the face node's ``emotion/face_debug`` (boxes, ids and labels drawn on
the frame; the face node builds it only while someone subscribes, and only with ``debug_image: true``) and writes
it to FILE (``.avi``: Motion-JPEG, ``.mp4`` / ``.m4v``: MPEG-4 part 2; both play in common players) at a constant
``--video-fps``: each frame is held until the next one by its stamp, so the video plays in real time whatever rate
the images came at.  The file is closed properly on Ctrl-C.

It ends on Ctrl-C / SIGTERM, after ``--count`` states or after ``--duration`` seconds, and prints a one-line JSON
summary last.  Errors (an output file that exists without ``--force``, a video container OpenCV cannot write) print
one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import os
import sys
import threading
import time
from typing import Dict, List, Optional, Sequence

import numpy as np

from .bag_common import end_signal_handling, stop_on_signals

FORGET_S = 10.0  # table: a person without a state for this long leaves the table
CODECS = {".avi": "MJPG", ".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".mkv": "MJPG"}


class ViewError(Exception):
    """A problem with the arguments or the output: one line, exit 2."""


# ---------------------------------------------------------------------------------------------------------------
# Formatting (pure functions of the message fields)
# ---------------------------------------------------------------------------------------------------------------

def bar(p: float, width: int, ascii_only: bool = False) -> str:
    """A bar of ``width`` cells filled in proportion to ``p`` (clipped to [0, 1])."""
    p = 0.0 if not math.isfinite(p) else min(1.0, max(0.0, p))
    n = int(round(p * width))
    full, empty = ("#", ".") if ascii_only else ("\u2588", "\u2591")
    return full * n + empty * (width - n)


def state_dict(m) -> dict:
    """The fields of an EmotionState worth showing, as plain Python values."""
    stamp = int(m.header.stamp.sec) + int(m.header.stamp.nanosec) * 1e-9
    return {"stamp": round(stamp, 3), "person": m.person_id, "primary": bool(m.primary), "emotion": m.emotion,
            "confidence": round(float(m.confidence), 3), "valence": round(float(m.valence), 3),
            "arousal": round(float(m.arousal), 3), "face_weight": round(float(m.face_weight), 3),
            "voice_weight": round(float(m.voice_weight), 3),
            "probabilities": {lab: round(float(p), 3) for lab, p in zip(m.labels, m.probabilities)}}


def format_line(s: dict, ascii_only: bool = False, width: int = 6) -> str:
    probs = " ".join(f"{lab[:3]} {bar(p, width, ascii_only)} {p:.2f}" for lab, p in s["probabilities"].items())
    return (f"{s['stamp']:.2f} {s['person'] or '-'} {s['emotion']} {s['confidence']:.2f} "
            f"valence {s['valence']:+.2f} arousal {s['arousal']:+.2f} "
            f"face {s['face_weight']:.2f} voice {s['voice_weight']:.2f} | {probs}")


def format_table(rows: Dict[str, dict], header: str, now_stamp: Optional[float], ascii_only: bool = False,
                 width: int = 30) -> str:
    """One block per person: the headline, then a bar per label."""
    out = [header]
    if not rows:
        out.append("  (no state yet)")
    for pid in sorted(rows, key=lambda k: (not rows[k]["primary"], k)):
        s = rows[pid]
        age = f"  {now_stamp - s['stamp']:.1f} s ago" if now_stamp is not None else ""
        out.append("")
        out.append(f"{s['person'] or '-'}{' (primary)' if s['primary'] else ''}: {s['emotion'].upper()} "
                   f"{s['confidence']:.2f}   valence {s['valence']:+.2f}  arousal {s['arousal']:+.2f}   "
                   f"weights face {s['face_weight']:.2f} voice {s['voice_weight']:.2f}{age}")
        for lab, p in s["probabilities"].items():
            mark = ">" if lab == s["emotion"] else " "
            out.append(f" {mark}{lab:<10} {bar(p, width, ascii_only)} {p:.2f}")
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------------------------
# Debug images -> video file
# ---------------------------------------------------------------------------------------------------------------

class VideoSink:
    """Writes BGR frames at a constant ``fps``: each frame is repeated until the next one's stamp (real-time
    playback whatever the input rate); frames closer than 1/fps to the last written one replace nothing (dropped).
    A jump in the stamps (backwards, or a gap over ``max_gap_s``) restarts the time base instead of filling it."""

    def __init__(self, path: str, fps: float, max_gap_s: float = 5.0):
        ext = os.path.splitext(path)[1].lower()
        if ext not in CODECS:
            raise ViewError(f"--save-debug {path!r}: unknown video container {ext or '(none)'!r}; use one of "
                            f"{', '.join(sorted(CODECS))}")
        if not os.path.isdir(os.path.dirname(os.path.abspath(path))):
            raise ViewError(f"--save-debug {path!r}: directory {os.path.dirname(os.path.abspath(path))!r} does "
                            "not exist")
        self.path, self.fps, self.fourcc, self.max_gap_s = path, float(fps), CODECS[ext], float(max_gap_s)
        self.writer = None
        self.size = None
        self.t0 = 0.0
        self.written = 0      # frames in the file
        self.received = 0
        self.last = None

    def add(self, img: np.ndarray, t: float) -> None:
        import cv2

        self.received += 1
        if img.ndim == 2:
            img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
        if self.writer is None:
            self.size = (int(img.shape[1]), int(img.shape[0]))
            self.writer = cv2.VideoWriter(self.path, cv2.VideoWriter_fourcc(*self.fourcc), self.fps, self.size)
            if not self.writer.isOpened():
                self.writer = None
                raise ViewError(f"--save-debug {self.path!r}: OpenCV cannot write {self.fourcc} video there")
            self.t0 = t
        elif (img.shape[1], img.shape[0]) != self.size:
            img = cv2.resize(img, self.size, interpolation=cv2.INTER_AREA)
        target = int(math.floor((t - self.t0) * self.fps + 1e-6)) + 1  # frames due up to and including this one
        if target <= self.written and self.written:
            if t < self.t0 + (self.written - 1) / self.fps - self.max_gap_s:  # stamps went back: new time base
                self.t0 = t - (self.written - 1) / self.fps
            return  # within the current output frame: dropped (the held frame stands)
        if target - self.written > self.max_gap_s * self.fps:  # a gap: do not fill it with a still
            self.t0 = t - self.written / self.fps
            target = self.written + 1
        while self.written < target - 1:
            self.writer.write(self.last)
            self.written += 1
        self.writer.write(img)
        self.written += 1
        self.last = img

    def close(self) -> dict:
        if self.writer is not None:
            self.writer.release()
            self.writer = None
        return {"path": self.path, "frames_received": self.received, "frames_written": self.written,
                "fps": self.fps, "size": list(self.size) if self.size else None,
                "seconds": round(self.written / self.fps, 3)}


# ---------------------------------------------------------------------------------------------------------------
# The node and the loop
# ---------------------------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="emotion-view", description=__doc__.split("\n\n")[0],
                                 epilog="ROS arguments go after --ros-args (e.g. --ros-args -r __ns:=/robot).",
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--topic", default=None,
                    help="EmotionState topic (default emotion/state; emotion/states with --all)")
    ap.add_argument("--all", action="store_true", help="every person (emotion/states), not only the primary one")
    ap.add_argument("--format", choices=("auto", "table", "lines", "json"), default="auto",
                    help="table (refreshing; default on a terminal), lines (one per state; default otherwise), json")
    ap.add_argument("--every", type=float, default=0.0, metavar="S",
                    help="lines / json: at most one line per person every S s, and when the emotion changes "
                         "(default 0: every state)")
    ap.add_argument("--refresh", type=float, default=10.0, metavar="HZ", help="table: redraws per second (default 10)")
    ap.add_argument("--count", type=int, default=0, metavar="N", help="stop after N states (default: no limit)")
    ap.add_argument("--duration", type=float, default=0.0, metavar="S", help="stop after S seconds (default: Ctrl-C)")
    ap.add_argument("--save-debug", default=None, metavar="FILE",
                    help="also save the face debug images (emotion/face_debug) to this video file (.avi, .mp4)")
    ap.add_argument("--debug-topic", default="emotion/face_debug", help="debug image topic (default %(default)s)")
    ap.add_argument("--video-fps", type=float, default=15.0, help="frame rate of the saved video (default 15)")
    ap.add_argument("--force", action="store_true", help="replace an existing --save-debug file")
    ap.add_argument("--ascii", action="store_true", help="bars of # and . (default: block characters when the "
                                                         "output encoding is UTF-8)")
    return ap


def _check(args) -> None:
    if args.count < 0:
        raise ViewError(f"--count must be >= 0, got {args.count}")
    for name in ("duration", "every"):
        v = getattr(args, name)
        if not (math.isfinite(v) and v >= 0):
            raise ViewError(f"--{name} must be >= 0 seconds, got {v:g}")
    if not (math.isfinite(args.refresh) and args.refresh > 0):
        raise ViewError(f"--refresh must be > 0, got {args.refresh:g}")
    if not (math.isfinite(args.video_fps) and 0 < args.video_fps <= 240):
        raise ViewError(f"--video-fps must be in (0, 240], got {args.video_fps:g}")
    if args.save_debug and os.path.exists(args.save_debug) and not args.force:
        raise ViewError(f"--save-debug {args.save_debug!r} exists already; not overwriting it (use --force)")


def view(args, ros_args: Optional[List[str]] = None, out=None, err=None) -> dict:
    """Run until Ctrl-C / SIGTERM / --count / --duration; returns the summary."""
    import rclpy
    from rclpy.node import Node
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
    from rclpy.signals import SignalHandlerOptions
    from sensor_msgs.msg import Image

    from emotion_msgs.msg import EmotionState
    from emotion_ros.env import ensure_ros_env
    from emotion_ros.ros.node_utils import close_node

    out = out or sys.stdout
    err = err or sys.stderr
    _check(args)
    ensure_ros_env()
    fmt = args.format
    tty = hasattr(out, "isatty") and out.isatty()
    if fmt == "auto":
        fmt = "table" if tty else "lines"
    enc = (getattr(out, "encoding", None) or "").lower().replace("-", "")
    ascii_only = args.ascii or enc not in ("utf8", "utf16", "utf32")
    topic = args.topic or ("emotion/states" if args.all else "emotion/state")
    sink = VideoSink(args.save_debug, args.video_fps) if args.save_debug else None

    stop = threading.Event()
    old = stop_on_signals(stop)
    context = rclpy.Context()
    rclpy.init(args=ros_args, context=context, signal_handler_options=SignalHandlerOptions.NO)
    node = None
    n_states = 0
    per_person: collections.Counter = collections.Counter()
    emotions: collections.Counter = collections.Counter()
    rows: Dict[str, dict] = {}
    seen_at: Dict[str, float] = {}     # person -> monotonic time of the last state (table: gone after FORGET_S)
    last_line: Dict[str, tuple] = {}   # person -> (monotonic time, emotion) of the last printed line
    problems: List[str] = []
    t_start = time.monotonic()
    try:
        node = Node("emotion_view", context=context)
        q = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=50, reliability=ReliabilityPolicy.RELIABLE,
                       durability=DurabilityPolicy.VOLATILE)

        def on_state(m) -> None:
            nonlocal n_states
            if args.count and n_states >= args.count:
                return
            s = state_dict(m)
            n_states += 1
            per_person[s["person"] or "-"] += 1
            emotions[s["emotion"]] += 1
            rows[s["person"]] = s
            seen_at[s["person"]] = time.monotonic()
            if fmt in ("lines", "json"):
                now = time.monotonic()
                prev = last_line.get(s["person"])
                if args.every <= 0 or prev is None or prev[1] != s["emotion"] or now - prev[0] >= args.every:
                    last_line[s["person"]] = (now, s["emotion"])
                    out.write((json.dumps(s) if fmt == "json" else format_line(s, ascii_only)) + "\n")
                    out.flush()
            if args.count and n_states >= args.count:
                stop.set()

        node.create_subscription(EmotionState, topic, on_state, q)
        resolved = node.resolve_topic_name(topic)
        debug_resolved = None
        if sink is not None:
            from emotion_ros.ros.convert import image_to_numpy

            def on_image(m) -> None:
                t = int(m.header.stamp.sec) + int(m.header.stamp.nanosec) * 1e-9
                if t <= 0:
                    t = time.time()
                try:
                    sink.add(image_to_numpy(m, "bgr8"), t)
                except ViewError:
                    raise
                except Exception as exc:  # a bad image: say so once, keep going
                    if not problems:
                        print(f"emotion-view: skipping bad debug images ({exc})", file=err, flush=True)
                    problems.append(str(exc))

            # best effort: a viewer never slows the face node down
            node.create_subscription(Image, args.debug_topic, on_image,
                                     QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=5,
                                                reliability=ReliabilityPolicy.BEST_EFFORT,
                                                durability=DurabilityPolicy.VOLATILE))
            debug_resolved = node.resolve_topic_name(args.debug_topic)
        print(f"emotion-view: listening to {resolved}"
              f"{f', saving {debug_resolved} to {args.save_debug}' if sink else ''} (Ctrl-C to stop)",
              file=err, flush=True)
        waited_note = False
        next_draw = 0.0
        period = 1.0 / args.refresh
        from rclpy.executors import SingleThreadedExecutor
        ex = SingleThreadedExecutor(context=context)
        ex.add_node(node)
        while not stop.is_set():
            ex.spin_once(timeout_sec=0.05)
            now = time.monotonic()
            if args.duration and now - t_start >= args.duration:
                break
            if not waited_note and n_states == 0 and now - t_start > 3.0:
                waited_note = True
                pubs = node.count_publishers(resolved)
                why = "no publisher: is fusion_node running and active?" if pubs == 0 else f"{pubs} publisher(s)"
                if sink is not None and node.count_publishers(debug_resolved) == 0:
                    why += f"; no publisher on {debug_resolved} (face_node with debug_image: true?)"
                print(f"emotion-view: no EmotionState on {resolved} yet ({why})", file=err, flush=True)
            if fmt == "table" and now >= next_draw:
                next_draw = now + period
                for pid in [p for p, t in seen_at.items() if now - t > FORGET_S]:
                    rows.pop(pid, None)
                    seen_at.pop(pid, None)
                header = (f"emotion-view  {resolved}  {n_states} states  {len(rows)} person(s)"
                          f"{f'  video: {sink.written} frames' if sink else ''}")
                text = format_table(rows, header, time.time() if rows else None, ascii_only)
                out.write(("\x1b[H\x1b[J" if tty else "\n") + text + "\n")
                out.flush()
        ex.shutdown(timeout_sec=1.0)
    finally:
        video = sink.close() if sink is not None else None
        close_node(node, context)
        end_signal_handling(old, False)     # the handlers as they were, whatever stopped the view
    summary = {"view": topic, "states": n_states, "persons": dict(per_person), "emotions": dict(emotions),
               "seconds": round(time.monotonic() - t_start, 3)}
    if video is not None:
        summary["video"] = video
    if problems:
        summary["bad_debug_images"] = len(problems)
    return summary


def main(argv: Optional[Sequence[str]] = None) -> int:
    from emotion_ros.env import ensure_ament_prefix

    ensure_ament_prefix()
    argv = list(sys.argv[1:] if argv is None else argv)
    ros_args = None
    if "--ros-args" in argv:
        i = argv.index("--ros-args")
        argv, ros_args = argv[:i], ["emotion-view"] + argv[i:]
    args = build_parser().parse_args(argv)
    try:
        summary = view(args, ros_args)
    except ViewError as exc:
        print(f"emotion-view: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

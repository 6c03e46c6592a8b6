"""``emotion-bag``: record, build, play and evaluate rosbag2 files of emotion_ros.

Subcommands (``emotion-bag <cmd> -h`` for all options):

- ``record OUT [--topics ...] [--storage mcap|sqlite3] [--duration S] [--force]``: rclpy recorder (raw subscriptions,
  writer thread) -> rosbag2 version 9 with message definitions, readable by ``ros2 bag`` of Jazzy / Kilted.
- ``from-media [--video FILE] [--audio FILE] --out BAG [--fps F] [--chunk-ms 20] [--start-time T]``: media files ->
  image_raw / audio / audio_info bag on one time base (no ROS graph needed).
- ``play BAG [--rate R] [--loop] [--topics ...] [--clock | --no-restamp]``: publish the messages at recorded timing,
  stamps moved onto the current time (``--clock``: recorded stamps, /clock published, for ``use_sim_time`` nodes).
- ``evaluate BAG --labels CSV [--json F] [--confusion F.png] [--timeline F.png] [--step S] ...``: run the face /
  voice / fusion core over the bag offline (or score the recorded emotion/* outputs) against labelled spans.
- ``info BAG``: topics, types, counts, duration as JSON.

ROS arguments go after ``--ros-args`` (e.g. ``--ros-args -r __ns:=/robot -p use_sim_time:=true``).
Errors about bags, media, labels or outputs print one line and exit with status 2. Every subcommand prints a
one-line JSON summary as its last line of output.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import List, Optional, Tuple

from .bag_common import DEFAULT_TOPICS, STORAGES, BagError


def _split_ros_args(argv: List[str]) -> Tuple[List[str], Optional[List[str]]]:
    if "--ros-args" in argv:
        i = argv.index("--ros-args")
        return argv[:i], ["emotion-bag"] + argv[i:]
    return argv, None


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="emotion-bag", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True, metavar="{record,from-media,play,evaluate,info}")

    r = sub.add_parser("record", help="record topics of a running graph into a rosbag2")
    r.add_argument("out", help="bag directory to create")
    r.add_argument("--topics", nargs="+", default=list(DEFAULT_TOPICS),
                   help="topics (relative names resolve in the node's namespace); default: %(default)s")
    r.add_argument("--storage", choices=STORAGES, default="mcap")
    r.add_argument("--duration", type=float, default=None, help="stop after S seconds (default: until Ctrl-C)")
    r.add_argument("--force", action="store_true", help="replace OUT if it exists")
    r.add_argument("--ready-file", default=None, help=argparse.SUPPRESS)  # tests: written once subscribed-to graph

    m = sub.add_parser("from-media", help="build a bag from a video and/or an audio file")
    m.add_argument("--video", default=None, help="video file (any container/codec OpenCV reads)")
    m.add_argument("--audio", default=None,
                   help="audio file (libsndfile formats; others need ffmpeg installed)")
    m.add_argument("--out", required=True, help="bag directory to create")
    m.add_argument("--fps", type=float, default=None, help="frame rate (default: the video's own)")
    m.add_argument("--chunk-ms", type=float, default=20.0, help="audio message length in ms (default 20)")
    m.add_argument("--start-time", type=float, default=None,
                   help="bag start time in seconds since the epoch (default: now)")
    m.add_argument("--storage", choices=STORAGES, default="mcap")
    m.add_argument("--force", action="store_true", help="replace --out if it exists")

    p = sub.add_parser("play", help="publish a bag's messages at recorded timing")
    p.add_argument("bag")
    p.add_argument("--rate", type=float, default=1.0, help="speed factor (default 1)")
    p.add_argument("--loop", action="store_true")
    p.add_argument("--topics", nargs="+", default=None, help="only these topics (default: all)")
    p.add_argument("--clock", action="store_true",
                   help="publish rosgraph_msgs/Clock on /clock and keep the recorded stamps (for nodes started with "
                        "-p use_sim_time:=true)")
    p.add_argument("--restamp", action=argparse.BooleanOptionalAction, default=None,
                   help="move the messages' stamps onto the current time, so nodes on the wall clock use them "
                        "(default: on, off with --clock)")
    p.add_argument("--clock-hz", type=float, default=40.0, help="/clock rate (default 40 Hz)")
    p.add_argument("--wait-for-subscribers", type=float, default=0.0, metavar="S",
                   help="wait up to S seconds until every topic has a subscriber before starting")
    p.add_argument("--delay", type=float, default=0.0, help="wait S seconds before playing")

    e = sub.add_parser("evaluate", help="evaluate the system on a bag against labelled time spans")
    e.add_argument("bag")
    e.add_argument("--labels", required=True, help="CSV: start,end,label[,person] (seconds from bag start)")
    e.add_argument("--json", default=None, help="write the report here")
    e.add_argument("--confusion", default=None, help="confusion-matrix PNG")
    e.add_argument("--timeline", default=None, help="timeline PNG")
    e.add_argument("--face-model", default=None, help="face checkpoint (default: models/face.pt)")
    e.add_argument("--voice-model", default=None, help="voice checkpoint (default: models/voice.pt)")
    e.add_argument("--fusion-model", default=None,
                   help="fusion checkpoint (default: models/fusion.pt when present; 'none' = late fusion)")
    e.add_argument("--step", type=float, default=None,
                   help="fusion step / sampling period in s (default: 1 / the fusion node's rate, 0.1)")
    e.add_argument("--hold", type=float, default=None,
                   help="recorded mode: a message counts for this many s after it was received (default 1)")
    e.add_argument("--mode", choices=("auto", "raw", "recorded"), default="auto",
                   help="raw: run the models on image/audio; recorded: score recorded emotion/* outputs; "
                        "auto: raw when the bag has image_raw or audio")
    e.add_argument("--device", default="cpu", help="torch device for the models (default cpu)")
    e.add_argument("--max-fps", type=float, default=None,
                   help="process at most this many frames per second of bag (default: every frame)")
    e.add_argument("--image-topic", default="image_raw", help="camera topic in the bag (default image_raw)")
    e.add_argument("--audio-topic", default="audio", help="audio topic in the bag (default audio)")
    e.add_argument("--audio-info-topic", default="audio_info", help="(default audio_info)")
    e.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: the face node's cpu_threads, 1; 0 = torch's default)")
    e.add_argument("--force", action="store_true", help="replace existing output files")
    e.add_argument("--progress", type=float, default=5.0, metavar="S",
                   help="print progress (bag time done / total) to stderr every S s of processing (default 5; "
                        "0 = never)")

    i = sub.add_parser("info", help="print a bag's topics, types, counts and duration")
    i.add_argument("bag")
    return ap


def _info(path: str) -> dict:
    from .bag_common import BagFile

    with BagFile(path) as bf:
        return {"bag": path, "start_time": bf.start_ns * 1e-9, "duration_s": round(bf.duration_s, 6),
                "message_count": bf.message_count,
                "topics": {t.name: {"type": t.msgtype, "count": t.count} for t in bf.topics().values()}}


def main(argv: Optional[List[str]] = None) -> int:
    from emotion_ros.env import ensure_ament_prefix

    ensure_ament_prefix()  # installed interface packages and share/emotion_ros without sourcing anything
    argv = list(sys.argv[1:] if argv is None else argv)
    argv, ros_args = _split_ros_args(argv)
    args = build_parser().parse_args(argv)
    try:
        if args.cmd == "record":
            from .bag_record import record
            out = record(args.out, topics=args.topics, storage=args.storage, duration=args.duration,
                         force=args.force, ros_args=ros_args, ready_file=args.ready_file)
        elif args.cmd == "from-media":
            from .bag_media import from_media
            out = from_media(args.out, video=args.video, audio=args.audio, fps=args.fps, chunk_ms=args.chunk_ms,
                             start_time=args.start_time, storage=args.storage, force=args.force)
        elif args.cmd == "play":
            from .bag_play import play
            out = play(args.bag, rate=args.rate, loop=args.loop, topics=args.topics, clock=args.clock,
                       clock_hz=args.clock_hz, wait_for_subscribers=args.wait_for_subscribers, delay=args.delay,
                       ros_args=ros_args, restamp=args.restamp)
        elif args.cmd == "evaluate":
            from .bag_evaluate import evaluate_cli
            out = evaluate_cli(args)
        else:
            out = _info(args.bag)
    except BagError as exc:
        print(f"emotion-bag {args.cmd}: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"emotion-bag {args.cmd}: interrupted", file=sys.stderr)
        return 130
    print(json.dumps(out, default=str), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

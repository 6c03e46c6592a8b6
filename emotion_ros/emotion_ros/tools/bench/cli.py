"""``emotion-bench``: arguments, the subcommands (detect, hosts, jpeg), and the run that prints the JSON summary."""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time

from .common import log
from .graph import node_params, run_graph
from .inprocess import profile_face, voice_rtf_inprocess
from .procs import resolve_models, training_running
from .speech import AUDIO_RATE, speech_stream
from .summary import build_summary


def parse_args(argv=None):
    from . import __doc__ as package_doc  # the package's docstring: its first paragraph describes emotion-bench
    p = argparse.ArgumentParser(prog="emotion-bench", description=package_doc.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="The last line of the output is one JSON object: device, face_1/face_5 "
                                       "{fps, dropped, latency_ms_p50, latency_ms_p95, ...}, voice {rtf, "
                                       "rtf_source, latency_ms_p95, ...}, end_to_end {latency_ms_p50, "
                                       "latency_ms_p95}, peak_rss_mb, cpu_percent, total_rss_mb, targets, ...")
    p.add_argument("--seconds", type=float, default=15.0, help="measured seconds per phase (default 15)")
    p.add_argument("--warmup", type=float, default=3.0, help="discarded seconds at the start of each phase")
    p.add_argument("--grace", type=float, default=0.5, help="seconds to wait for late results after a phase")
    p.add_argument("--fps", type=float, default=30.0, help="camera frame rate")
    p.add_argument("--phases", default="face_1,face_5", help="comma-separated: face_1, face_5 (face_N: N faces)")
    p.add_argument("--nodes", default="face,voice,fusion", help="nodes to run (face is required)")
    p.add_argument("--no-audio", action="store_true", help="do not stream audio")
    p.add_argument("--synthetic-audio", action="store_true", help="synthetic voice even if espeak-ng is installed")
    p.add_argument("--device", default="auto", help="device parameter of the nodes (auto|cpu|cuda)")
    p.add_argument("--face-model", default="", help="default: the face node's default model")
    p.add_argument("--voice-model", default="")
    p.add_argument("--fusion-model", default="")
    p.add_argument("--param", action="append", default=[], metavar="NODE:NAME=VALUE",
                   help="extra node parameter, e.g. face:flip_tta=false or fusion:rate=30 (repeatable)")
    p.add_argument("--random-models", action="store_true", help="random-init checkpoints instead of the real models")
    p.add_argument("--profile", action="store_true", help="also break down the face node's per-frame time in-process")
    p.add_argument("--profile-frames", type=int, default=90)
    p.add_argument("--no-graph", action="store_true", help="skip the ROS graph run (in-process measurements only)")
    p.add_argument("--no-rtf", action="store_true", help="skip the in-process voice RTF measurement")
    p.add_argument("--startup-timeout", type=float, default=120.0)
    p.add_argument("--domain-id", type=int, default=None, help="ROS_DOMAIN_ID (default: random 1..200 unless set)")
    p.add_argument("--keep-logs", default="", help="copy the node logs into this directory")
    p.add_argument("--json-out", default="", help="also write the JSON to this file")
    args = p.parse_args(argv)
    if args.seconds <= 0 or args.fps <= 0:
        p.error("--seconds and --fps must be > 0")
    try:
        node_params(args.param)
    except ValueError as exc:
        p.error(str(exc))
    for ph in args.phases.split(","):
        if ph and not (ph.startswith("face_") and ph[5:].isdigit() and 1 <= int(ph[5:]) <= 6):
            p.error(f"unknown phase {ph!r} (face_1 .. face_6)")
    return args


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["detect"]:   # emotion-bench detect: the face detector comparison (tools/bench_detect.py)
        from ..bench_detect import main as detect_main
        return detect_main(argv[1:])
    if argv[:1] == ["hosts"]:    # emotion-bench hosts: robot and server over a network link (tools/bench_hosts.py)
        from ..bench_hosts import main as hosts_main
        return hosts_main(argv[1:])
    if argv[:1] == ["jpeg"]:     # emotion-bench jpeg: face accuracy and bytes vs JPEG quality (tools/bench_jpeg.py)
        from ..bench_jpeg import main as jpeg_main
        return jpeg_main(argv[1:])
    args = parse_args(argv)
    started = time.monotonic()
    if args.domain_id is not None:
        os.environ["ROS_DOMAIN_ID"] = str(args.domain_id)
    elif "ROS_DOMAIN_ID" not in os.environ:
        os.environ["ROS_DOMAIN_ID"] = str(random.randint(1, 200))
    tmp_dir = tempfile.mkdtemp(prefix="emotion-bench-")
    os.environ.setdefault("ROS_HOME", os.path.join(tmp_dir, "roshome"))
    from emotion_ros.env import ensure_ros_env
    ensure_ros_env()
    jobs = training_running()
    if jobs:
        log(f"WARNING: {len(jobs)} training job(s) share the CPU; numbers are pessimistic")
    try:
        models, random_init = resolve_models(args, tmp_dir)
        if random_init:
            log(f"random-init checkpoints for: {', '.join(random_init)} (same architecture and cost)")
        speech = speech_stream(AUDIO_RATE, synthetic=args.synthetic_audio)
        log(f"audio: {speech.source}, {len(speech.utterances)} utterances in {speech.duration:.1f} s (looped)")
        graph = None
        if not args.no_graph:
            graph = run_graph(args, models, speech, tmp_dir)
        rtf_in = None
        if not args.no_rtf:
            log("voice: VoicePipeline in-process on the same audio")
            from emotion_ros.tools.bag_evaluate import _load_yaml_params
            vparams = {**_load_yaml_params("emotion.yaml", "voice_node"), **node_params(args.param).get("voice", {})}
            rtf_in = voice_rtf_inprocess(models["voice"], speech, node_params=vparams,
                                         device="cpu" if args.device == "auto" else args.device)
            log(f"voice in-process RTF {rtf_in['rtf']} "
                f"({rtf_in['finals']} finals for {rtf_in['utterances']} utterances)")
        profile = None
        if args.profile:
            log("face: in-process profile")
            profile = profile_face(models["face"], n_frames=args.profile_frames,
                                   device="cpu" if args.device == "auto" else args.device)
            for key in ("face_1", "face_5"):
                if key in profile:
                    log(f"profile {key}: " + ", ".join(f"{k} {v['mean']}" for k, v in profile[key].items()))
        summary = build_summary(args, graph, models, random_init, speech, rtf_in, profile, started)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    line = json.dumps(summary, separators=(",", ":"))
    if args.json_out:
        with open(args.json_out, "w") as f:
            f.write(json.dumps(summary, indent=2) + "\n")
    print(line, flush=True)
    return 0

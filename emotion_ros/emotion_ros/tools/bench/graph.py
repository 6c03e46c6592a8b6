"""The graph run: the nodes as processes, the driver, the phases; per-node parameters from ``--param``."""
from __future__ import annotations

import os
import shutil
import time
from typing import Dict, Sequence

from .common import NODES, log
from .driver import Driver
from .procs import NodeProcess, node_env, node_module_exists, proc_cpu_seconds, proc_memory_mb
from .scene import scene_frames
from .speech import SpeechStream
from .stats import diag_for, face_phase_stats, voice_stats


def node_params(specs: Sequence[str]) -> Dict[str, Dict[str, str]]:
    """``["face:flip_tta=false", "fusion:rate=30"]`` -> {"face": {"flip_tta": "false"}, "fusion": {"rate": "30"}}."""
    out: Dict[str, Dict[str, str]] = {}
    for spec in specs or ():
        node, sep, rest = spec.partition(":")
        name, eq, value = rest.partition("=")
        if not sep or not eq or node not in NODES or not name:
            raise ValueError(f"--param {spec!r}: expected NODE:NAME=VALUE with NODE one of {', '.join(NODES)}")
        out.setdefault(node, {})[name] = value
    return out


def run_graph(args, models: Dict[str, str], speech: SpeechStream, tmp_dir: str) -> Dict[str, object]:
    import rclpy
    from rclpy.context import Context

    kinds = [k for k in NODES if k in args.nodes.split(",")]
    missing_nodes = [k for k in kinds if not node_module_exists(k)]
    if missing_nodes:
        log(f"node modules not found (not run): {', '.join(missing_nodes)}")
    kinds = [k for k in kinds if k not in missing_nodes]
    if "face" not in kinds:
        raise RuntimeError("the face node is needed for the benchmark")
    env = node_env()
    profile = env.get("FASTDDS_DEFAULT_PROFILES_FILE")
    log(f"transport: {'Fast DDS profile ' + profile if profile else 'Fast DDS defaults'}; "
        f"ROS_DOMAIN_ID={env.get('ROS_DOMAIN_ID')}")
    log_dir = os.path.join(tmp_dir, "logs")
    os.makedirs(log_dir, exist_ok=True)
    procs: Dict[str, NodeProcess] = {}
    ctx = Context()
    rclpy.init(context=ctx, args=[])
    driver = None
    result: Dict[str, object] = {"nodes": kinds}
    try:
        for k in kinds:
            params = {"model_path": models[k], "device": args.device, **node_params(args.param).get(k, {})}
            procs[k] = NodeProcess(k, params, log_dir, env)
            log(f"started {k}_node pid {procs[k].pid}")
        driver = Driver(ctx, speech)
        node = driver.node
        t_start = time.monotonic()
        conds = [lambda: node.count_subscribers("image_raw") >= 1, lambda: node.count_publishers("emotion/faces") >= 1]
        if "voice" in kinds:
            conds += [lambda: node.count_subscribers("audio") >= 1, lambda: node.count_publishers("emotion/voice") >= 1]
        if "fusion" in kinds:
            conds += [lambda: node.count_publishers("emotion/state") >= 1]
        if not driver.wait_for(lambda: all(c() for c in conds), args.startup_timeout, list(procs.values())):
            tails = "\n".join(f"--- {k}_node ---\n{p.log_tail()}" for k, p in procs.items())
            raise RuntimeError(f"nodes not ready after {args.startup_timeout:.0f} s\n{tails}")
        log(f"graph ready after {time.monotonic() - t_start:.1f} s")
        startup_rss = {k: proc_memory_mb(p.pid).get("VmRSS") for k, p in procs.items()}
        if "voice" in kinds and not args.no_audio:
            driver.start_audio()
        # first inference (lazy initialisation, caches) can take seconds: feed frames until results flow
        prime = driver.image_messages(scene_frames(1, 2))
        t_prime = time.monotonic()
        while time.monotonic() - t_prime < args.startup_timeout:
            driver.publish_frames(prime, args.fps, 0.5, "prime", record=False)
            with driver.lock:
                if driver.faces and (driver.states or "fusion" not in kinds):
                    break
        log(f"first results after {time.monotonic() - t_prime:.1f} s of frames")
        phases = [p for p in args.phases.split(",") if p]
        audio_t0 = time.time()
        cpu: Dict[str, Dict[str, float]] = {}
        for phase in phases:
            n_faces = int(phase.split("_")[1])
            msgs = driver.image_messages(scene_frames(n_faces, 30))
            log(f"{phase}: warm-up {args.warmup:.0f} s")
            driver.publish_frames(msgs, args.fps, args.warmup, phase, record=False)
            c0 = {k: proc_cpu_seconds(p.pid) for k, p in procs.items()}
            c0["driver"] = proc_cpu_seconds(os.getpid())
            w0 = time.monotonic()
            log(f"{phase}: measuring {args.seconds:.0f} s at {args.fps:g} fps")
            driver.publish_frames(msgs, args.fps, args.seconds, phase, record=True)
            wall = time.monotonic() - w0
            c1 = {k: proc_cpu_seconds(p.pid) for k, p in procs.items()}
            c1["driver"] = proc_cpu_seconds(os.getpid())
            cpu[phase] = {k: round(100.0 * (c1[k] - c0[k]) / wall, 1) for k in c0
                          if c0[k] is not None and c1[k] is not None}
            time.sleep(args.grace)  # late results
            st = face_phase_stats(driver, phase, args.seconds, n_faces)
            result[phase] = st["face"]
            result[f"end_to_end_{phase}"] = st["end_to_end"]
            f = st["face"]
            log(f"{phase}: {f['fps']} fps, dropped {f['dropped']}/{f['published']}, latency p50 "
                f"{f['latency_ms_p50']} ms p95 {f['latency_ms_p95']} ms, faces/frame {f['faces_per_frame']} "
                f"(expected {n_faces}); e2e p95 {st['end_to_end']['latency_ms_p95']} ms; cpu% {cpu[phase]}")
            for k, p in procs.items():
                if not p.alive():
                    raise RuntimeError(f"{k}_node died during {phase}:\n{p.log_tail()}")
        audio_t1 = time.time()
        time.sleep(max(0.0, 1.2 - args.grace))  # the last utterance's hang-over
        driver.stop_audio()
        if "voice" in kinds and not args.no_audio:
            vs = voice_stats(driver, audio_t0, audio_t1 - 1.5)
            vs["audio_chunks"] = driver.audio_chunks
            result["voice_graph"] = vs
            log(f"voice: {vs['finals_matched']}/{vs['utterances']} utterances answered, latency p50 "
                f"{vs['latency_ms_p50']} ms p95 {vs['latency_ms_p95']} ms")
        time.sleep(1.1)  # one more diagnostics period
        result["diagnostics"] = {k: diag_for(driver, k) for k in kinds}
        result["cpu_percent_by_phase"] = cpu
        result["memory"] = {k: proc_memory_mb(p.pid) for k, p in procs.items()}
        result["startup_rss_mb"] = startup_rss
        result["driver_memory"] = proc_memory_mb(os.getpid())
    finally:
        codes = {}
        for k, p in procs.items():
            codes[k] = p.stop()
        result["exit_codes"] = codes
        if driver is not None:
            driver.close()
        rclpy.try_shutdown(context=ctx)
        if args.keep_logs:
            dst = args.keep_logs
            os.makedirs(dst, exist_ok=True)
            for p in procs.values():
                shutil.copy(p.log_path, dst)
            log(f"node logs copied to {dst}")
    return result

"""The JSON summary (the last line of ``emotion-bench``'s output) and its targets."""
from __future__ import annotations

import os
import time
from typing import Dict, List, Optional

import numpy as np

from .common import NODES
from .procs import node_env, training_running
from .speech import SpeechStream
from .stats import diag_rtf

# Targets (2 CPU cores) checked in the JSON's "targets".
TARGETS = {
    "face_1_fps_min": 29.0,          # 30 fps input, nothing dropped (allow 1 fps of pacing jitter)
    "face_1_dropped_max": 0,
    "face_1_latency_ms_p95_max": 30.0,
    "face_5_fps_min": 15.0,
    "voice_rtf_max": 0.05,
    "end_to_end_latency_ms_p95_max": 50.0,
    "total_rss_mb_max": 1536.0,
}


def device_name(diags: Dict[str, Dict[str, str]]) -> str:
    for kind in NODES:
        d = diags.get(kind, {}).get("device")
        if d:
            return d
    try:
        import torch
        return "cuda" if torch.cuda.is_available() else "cpu"
    except ImportError:
        return "cpu"


def build_summary(args, graph: Dict[str, object], models: Dict[str, str], random_init: List[str],
                  speech: SpeechStream, rtf_in: Optional[Dict[str, object]], profile: Optional[Dict[str, object]],
                  started: float) -> Dict[str, object]:
    diags = graph.get("diagnostics", {}) if graph else {}
    summary: Dict[str, object] = {"device": device_name(diags)}
    face_keys = ("fps", "dropped", "latency_ms_p50", "latency_ms_p95", "latency_ms_max", "published",
                 "faces_per_frame", "faces_expected")
    for phase in ("face_1", "face_5"):
        if graph and phase in graph:
            summary[phase] = {k: graph[phase].get(k) for k in face_keys}
    vg = (graph or {}).get("voice_graph", {})
    rtf_diag = diag_rtf(diags.get("voice", {}))
    voice = {"rtf": rtf_diag if rtf_diag is not None else (rtf_in or {}).get("rtf"),
             "rtf_source": "voice_node /diagnostics" if rtf_diag is not None else "VoicePipeline in-process",
             "rtf_inprocess": (rtf_in or {}).get("rtf"),
             "latency_ms_p50": vg.get("latency_ms_p50"), "latency_ms_p95": vg.get("latency_ms_p95"),
             "utterances": vg.get("utterances"), "answered": vg.get("finals_matched"), "audio": speech.source}
    summary["voice"] = voice
    if graph and "end_to_end_face_1" in graph:
        e = graph["end_to_end_face_1"]
        summary["end_to_end"] = {"latency_ms_p50": e["latency_ms_p50"], "latency_ms_p95": e["latency_ms_p95"],
                                 "frames_with_state": e["frames_with_state"], "frames": e["frames"]}
    if graph and "end_to_end_face_5" in graph:
        e = graph["end_to_end_face_5"]
        summary["end_to_end_5"] = {"latency_ms_p50": e["latency_ms_p50"], "latency_ms_p95": e["latency_ms_p95"],
                                   "frames_with_state": e["frames_with_state"], "frames": e["frames"]}
    mem = (graph or {}).get("memory", {})
    summary["peak_rss_mb"] = {k: round(v.get("VmHWM", 0.0), 1) for k, v in mem.items()}
    summary["rss_mb"] = {k: round(v.get("VmRSS", 0.0), 1) for k, v in mem.items()}
    cpu_by = (graph or {}).get("cpu_percent_by_phase", {})
    if cpu_by:
        keys = sorted({k for d in cpu_by.values() for k in d})
        summary["cpu_percent"] = {k: round(float(np.mean([d[k] for d in cpu_by.values() if k in d])), 1)
                                  for k in keys}
        summary["cpu_percent_by_phase"] = cpu_by
    summary["total_rss_mb"] = round(sum(summary["peak_rss_mb"].values()), 1) if mem else None
    summary["models"] = {"paths": models, "random_init": random_init}
    summary["config"] = {"seconds": args.seconds, "warmup": args.warmup, "fps": args.fps, "params": args.param,
                         "cores": os.cpu_count(), "transport": node_env().get("FASTDDS_DEFAULT_PROFILES_FILE")
                         or "fastdds-default", "training_running": bool(training_running()),
                         "load_avg": [round(v, 2) for v in os.getloadavg()], "nodes": (graph or {}).get("nodes")}
    if graph:
        summary["details"] = {k: graph[k] for k in ("voice_graph", "diagnostics", "startup_rss_mb", "exit_codes",
                                                    "driver_memory") if k in graph}
    if rtf_in:
        summary.setdefault("details", {})["voice_inprocess"] = rtf_in
    if profile:
        summary["profile"] = profile
    summary["targets"] = check_targets(summary)
    summary["elapsed_s"] = round(time.monotonic() - started, 1)
    return summary


def check_targets(s: Dict[str, object]) -> Dict[str, Optional[bool]]:
    def get(*path):
        cur = s
        for p in path:
            if not isinstance(cur, dict) or cur.get(p) is None:
                return None
            cur = cur[p]
        return cur

    def cmp(v, limit, lower_is_better=True):
        if v is None:
            return None
        return bool(v <= limit) if lower_is_better else bool(v >= limit)

    return {
        "face_1_30fps_no_drops": None if get("face_1", "fps") is None else
        bool(get("face_1", "fps") >= TARGETS["face_1_fps_min"]
             and get("face_1", "dropped") <= TARGETS["face_1_dropped_max"]),
        "face_1_p95_le_30ms": cmp(get("face_1", "latency_ms_p95"), TARGETS["face_1_latency_ms_p95_max"]),
        "face_5_ge_15fps": cmp(get("face_5", "fps"), TARGETS["face_5_fps_min"], lower_is_better=False),
        "voice_rtf_le_0.05": cmp(get("voice", "rtf"), TARGETS["voice_rtf_max"]),
        "end_to_end_p95_le_50ms": cmp(get("end_to_end", "latency_ms_p95"), TARGETS["end_to_end_latency_ms_p95_max"]),
        "total_rss_lt_1.5GB": cmp(get("total_rss_mb"), TARGETS["total_rss_mb_max"]),
    }

"""Statistics: percentiles, latencies, and the results of a phase from what the driver recorded."""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import numpy as np

from .driver import Driver


def pct(values: Sequence[float], q: float) -> Optional[float]:
    if not len(values):
        return None
    return round(float(np.percentile(np.asarray(values, np.float64), q)), 2)


def latency_stats(lat_s: Sequence[float], prefix: str = "latency_ms") -> Dict[str, Optional[float]]:
    ms = [1e3 * v for v in lat_s]
    return {f"{prefix}_p50": pct(ms, 50), f"{prefix}_p95": pct(ms, 95),
            f"{prefix}_max": round(max(ms), 2) if ms else None}


def face_phase_stats(driver: Driver, phase: str, seconds: float, expected_faces: int) -> Dict[str, object]:
    with driver.lock:
        pub = [(k, ts) for k, ts, ph in driver.published_frames if ph == phase]
        got = {k: driver.faces[k] for k, _ in pub if k in driver.faces}
        states = {k: driver.states[k] for k, _ in pub if k in driver.states}
    lat = [got[k][0] - ts for k, ts in pub if k in got]
    nf = [got[k][1] for k, _ in pub if k in got]
    e2e = [states[k] - ts for k, ts in pub if k in states]
    out = {
        "fps": round(len(got) / seconds, 2),
        "published": len(pub),
        "processed": len(got),
        "dropped": len(pub) - len(got),
        "input_fps": round(len(pub) / seconds, 2),
        **latency_stats(lat),
        "faces_expected": expected_faces,
        "faces_per_frame": round(float(np.mean(nf)), 2) if nf else None,
    }
    e2e_stats = {**latency_stats(e2e), "frames_with_state": len(states), "frames": len(pub)}
    return {"face": out, "end_to_end": e2e_stats}


def voice_stats(driver: Driver, t_lo: float, t_hi: float) -> Dict[str, object]:
    with driver.lock:
        ends = [e for e in driver.utterance_ends if t_lo <= e <= t_hi]
        voice = list(driver.voice)
    finals = [v for v in voice if not v[2]]
    lat, matched = [], 0
    for e in ends:
        cands = [v for v in finals if -0.5 <= v[1] - e <= 1.5]
        if cands:
            matched += 1
            lat.append(min(v[0] for v in cands) - e)
    return {"utterances": len(ends), "finals_matched": matched,
            "messages": len(voice), "partials": sum(1 for v in voice if v[2]), **latency_stats(lat)}


def diag_for(driver: Driver, kind: str) -> Dict[str, str]:
    """The latest values of every ``/diagnostics`` status of ``<kind>_node``, merged; the node's own report (rates,
    real-time factor, device) wins over its ``<node>: lifecycle`` status, which comes first and says only the state."""
    merged: Dict[str, str] = {}
    with driver.lock:
        statuses = [(name, vals) for name, vals in driver.diag.items() if name.startswith(f"{kind}_node")]
    for _name, vals in sorted(statuses, key=lambda nv: not nv[0].endswith(": lifecycle")):
        merged.update(vals)
    return merged


def diag_rtf(vals: Dict[str, str]) -> Optional[float]:
    for key in ("real_time_factor", "rtf", "realtime_factor"):
        if key in vals:
            try:
                return round(float(vals[key]), 4)
            except ValueError:
                pass
    return None

#!/usr/bin/env bash
# Build the labelled evaluation clips if they are missing, evaluate each with `emotion-bag evaluate`, and print one
# JSON line: per clip the fused, face-only and voice-only accuracy on the same steps, flips per minute, the labels'
# change rate and the median detection delay; fused minus the better single modality with its 95 % bootstrap interval
# over the clip's spans; their means; and the issue-10 targets, each true or false.
#
#   scripts/evaluate_bags.sh [emotion-bag evaluate options, e.g. --fusion-model none]
#
# Environment: EVAL_CLIPS (default /work/eval_clips; outside the repository, never commit it), EVAL_SET (test | dev |
# all, default test), EVAL_OUT (reports, default $EVAL_CLIPS/reports), EVAL_TIMELINE=1 (also timeline PNGs).
# The clips are cut from ../shared/data by scripts/make_eval_clips.py (see its docstring for what they hold).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${EMOTION_ROS_VENV:-$ROOT/.venv}/bin/python"
CLIPS="${EVAL_CLIPS:-/work/eval_clips}"
SET="${EVAL_SET:-test}"
OUT="${EVAL_OUT:-$CLIPS/reports}"
[ -x "$PY" ] || { echo "evaluate_bags: $PY not found (run make setup)" >&2; exit 2; }
case "$SET" in test|dev|all) ;; *) echo "evaluate_bags: EVAL_SET must be test, dev or all, got '$SET'" >&2; exit 2;; esac

"$PY" "$ROOT/scripts/make_eval_clips.py" --out "$CLIPS" >&2
mkdir -p "$OUT"
names=()
for d in "$CLIPS"/*/; do
    n="$(basename "$d")"
    [ -d "$d/bag" ] || continue
    case "$SET" in all) ;; *) [[ "$n" == "$SET"_* ]] || continue;; esac
    names+=("$n")
done
[ "${#names[@]}" -gt 0 ] || { echo "evaluate_bags: no $SET clips under $CLIPS" >&2; exit 2; }
for n in "${names[@]}"; do
    extra=()
    [ "${EVAL_TIMELINE:-0}" = 1 ] && extra+=(--timeline "$OUT/$n.png")
    echo "evaluate_bags: $n" >&2
    "$PY" -m emotion_ros.tools.bag evaluate "$CLIPS/$n/bag" --labels "$CLIPS/$n/labels.csv" --json "$OUT/$n.json" \
        --force "${extra[@]}" "$@" >/dev/null
done

"$PY" - "$OUT" "${names[@]}" <<'EOF'
import json, os, statistics, sys
out, names = sys.argv[1], sys.argv[2:]
clips, reports = {}, {}
for n in names:
    r = reports[n] = json.load(open(os.path.join(out, n + ".json")))
    clips[n] = {"fused": r["accuracy"], "face": r["face"]["accuracy"], "voice": r["voice"]["accuracy"],
                "flips_per_min": r["flips_per_min"], "label_changes_per_min": r.get("label_changes_per_min"),
                "delay_s": r["detection_delay_s"], "n_samples": r["n_samples"],
                "margin": r["margin"]["value"], "margin_ci95": r["margin"]["ci95"]}
mean = {k: round(statistics.mean(c[k] for c in clips.values() if c[k] is not None), 4)
        for k in ("fused", "face", "voice", "flips_per_min", "label_changes_per_min")}
margins = [c["fused"] - max(c["face"], c["voice"]) for c in clips.values()]
delays = [c["delay_s"] for c in clips.values() if c["delay_s"] is not None]
targets = {
    "fused_ge_best_single_every_clip": all(m >= 0 for m in margins),
    "mean_margin_over_best_single_ge_3pt": statistics.mean(margins) >= 0.03,
    "flips_le_1.3x_label_changes_every_clip": all(c["flips_per_min"] <= 1.3 * (c["label_changes_per_min"] or 0)
                                                 for c in clips.values()),
    "median_delay_le_1s_every_clip": bool(delays) and len(delays) == len(clips) and max(delays) <= 1.0,
}
mean["margin_over_best_single"] = round(statistics.mean(margins), 4)
# its 95 % interval: spans resampled within each clip (emotion_ros.tools.bag_evaluate.mean_margin_over_best_single)
from emotion_ros.tools.bag_evaluate import mean_margin_over_best_single
per_span = [[(s["n_samples"], s["right"]["fused"], s["right"]["face"], s["right"]["voice"]) for s in r["spans"]]
            for r in reports.values()]
mean["margin_over_best_single_ci95"] = mean_margin_over_best_single(per_span)["ci95"]
print(json.dumps({"clips": clips, "mean": mean, "targets": targets, "reports": out}))
EOF

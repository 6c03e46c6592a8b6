#!/usr/bin/env bash
# The dev protocol on which voice-model choices are made (models/voice.md): the dev actors (never trained on, never
# a test speaker), clean and under every perturbation of `emotion-eval voice --perturb`, each perturbed row pooled
# over several perturbation seeds (the noise, room and microphone draws differ per seed).
#   scripts/evaluate_voice_dev.sh RAVDESS_DIR [OUT_DIR]
# Env: MODEL (default: the shipped models/voice.pt), DEV (default 15,16: RAVDESS actors), SEEDS (default "0 1 2").
# Every row goes through the voice node's own pipeline. Writes OUT_DIR/voice_dev.json (default: a temporary folder,
# removed) and prints one line per row: accuracy (mean over the seeds), n (all seeds), the most-predicted class and
# its share of the pooled predictions over its true share (collapse ratio).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ravdess="${1:?RAVDESS folder}"; out="${2:-}"
venv="${EMOTION_ROS_VENV:-$here/.venv}"
model="${MODEL:-$here/emotion_ros/models/voice.pt}"
seeds="${SEEDS:-0 1 2}"
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
mkdir -p "$work/dev" "$work/reports"
IFS=',' read -r -a actors <<< "${DEV:-15,16}"
for a in "${actors[@]}"; do
  d="$(cd "$ravdess" && pwd)/Actor_$(printf %02d "$a")"
  [ -d "$d" ] || { echo "evaluate_voice_dev: $d not found" >&2; exit 2; }
  ln -s "$d" "$work/dev/$(basename "$d")"
done
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
run() {  # run NAME SEED [emotion-eval args...]
  local name="$1" seed="$2"; shift 2
  "$venv/bin/emotion-eval" voice --model "$model" --data "$work/dev" --seed "$seed" \
    --json "$work/reports/$name.$seed.json" "$@" 2>"$work/reports/$name.$seed.log" >/dev/null \
    || { cat "$work/reports/$name.$seed.log" >&2; exit 1; }
}
echo "voice dev clean ..." >&2
run clean 0
for c in telephone noise quiet reverb rate44k pitch_down pitch_up slow fast; do
  echo "voice dev $c ..." >&2
  for s in $seeds; do run "$c" "$s" --perturb "$c"; done
done
"$venv/bin/python" - "$work/reports" "${out:+$out/voice_dev.json}" "$model" <<'EOF'
import glob, json, os, sys

reports, dest, model = sys.argv[1:]
order = ["clean", "telephone", "noise", "quiet", "reverb", "rate44k", "pitch_down", "pitch_up", "slow", "fast"]
runs = {}
for f in sorted(glob.glob(os.path.join(reports, "*.json"))):
    runs.setdefault(os.path.basename(f).split(".")[0], []).append(json.load(open(f)))
rows = {}
for name in order:
    rs = runs[name]
    n = sum(r["n"] for r in rs)
    share = {k: sum(r["prediction_share"][k]["predicted"] * r["n"] for r in rs) / n for k in rs[0]["prediction_share"]}
    true = {k: sum(r["prediction_share"][k]["true"] * r["n"] for r in rs) / n for k in share}
    ratio, most = max((share[k] / true[k], k) for k in share if true[k] > 0)
    rows[name] = {"accuracy": round(sum(r["accuracy"] * r["n"] for r in rs) / n, 4), "n": n, "seeds": len(rs),
                  "most_predicted": most, "collapse_ratio": round(ratio, 3)}
if dest:
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    json.dump({"model": model, "rows": rows}, open(dest, "w"), indent=2)
print(f"{'dev row':<12} {'n':>5} {'acc':>6} {'most predicted':>15} {'ratio':>6}")
for name, r in rows.items():
    print(f"{name:<12} {r['n']:5d} {r['accuracy']:6.3f} {r['most_predicted']:>15} {r['collapse_ratio']:6.2f}")
if dest:
    print(f"written: {dest}")
EOF

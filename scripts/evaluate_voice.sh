#!/usr/bin/env bash
# The voice model's generalisation table (issue: voices, languages and microphones it never heard).
#   scripts/evaluate_voice.sh RAVDESS_DIR TUREV_DIR [OUT_DIR]
# Env: MODEL (default: the shipped models/voice.pt, trained on RAVDESS 1-14 + TurEV-DB minus TUREV_TEST),
#      RAVDESS_ONLY_MODEL (a model trained on RAVDESS actors 1-14 alone, for the cross-corpus row; skipped if unset),
#      TUREV_TEST (default 1358,7895: the TurEV-DB speakers held out of the shipped model), SEED (perturbations),
#      PERTURB=0 skips the perturbation rows (recording: telephone, noise, quiet, reverb, rate44k; speaker:
#      pitch_down / pitch_up 3 semitones, slow / fast tempo 0.8 / 1.25).
# Every row goes through the voice node's own pipeline (segmenter, trimming, features, calibrated model).
# Writes OUT_DIR/voice_generalisation.json (default docs/eval/) and prints a table with n, accuracy, macro-F1,
# the most-predicted class and its share over its true share (collapse ratio), the ECE, and (in-labels) the accuracy
# read over the labels the row's data has (a diagnostic: TurEV-DB has four of the seven; the rows themselves are 7-way).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ravdess="${1:?RAVDESS folder}"; turev="${2:?TurEV-DB folder}"; out="${3:-$here/docs/eval}"
venv="${EMOTION_ROS_VENV:-$here/.venv}"
model="${MODEL:-$here/emotion_ros/models/voice.pt}"
seed="${SEED:-0}"
turev_test="${TUREV_TEST:-1358,7895}"
mkdir -p "$out"
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
mkdir -p "$work/held" "$work/reports"
for a in 17 18 19 20; do ln -s "$(cd "$ravdess" && pwd)/Actor_$a" "$work/held/Actor_$a"; done
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
run() {  # run NAME MODEL DATA [emotion-eval args...]
  local name="$1" m="$2" data="$3"; shift 3
  echo "voice $name ..." >&2
  "$venv/bin/emotion-eval" voice --model "$m" --data "$data" --seed "$seed" --json "$work/reports/$name.json" "$@" \
    2>"$work/reports/$name.log" >/dev/null || { cat "$work/reports/$name.log" >&2; exit 1; }
}
run ravdess_17_20 "$model" "$work/held"
run turev_held_out "$model" "$turev" --speakers "$turev_test"
if [ -n "${RAVDESS_ONLY_MODEL:-}" ]; then
  run ravdess_only_on_turev "$RAVDESS_ONLY_MODEL" "$turev"
  run ravdess_only_17_20 "$RAVDESS_ONLY_MODEL" "$work/held"
fi
if [ "${PERTURB:-1}" != 0 ]; then
  for c in telephone noise quiet reverb rate44k pitch_down pitch_up slow fast; do
    run "ravdess_17_20_$c" "$model" "$work/held" --perturb "$c"
  done
fi
"$venv/bin/python" - "$work/reports" "$out/voice_generalisation.json" "$seed" <<'EOF'
import json
import os
import sys

reports, dest, seed = sys.argv[1:]
rows = {}
for f in sorted(os.listdir(reports)):
    if f.endswith(".json"):
        r = json.load(open(os.path.join(reports, f)))
        rows[f[:-5]] = {k: r.get(k) for k in ("accuracy", "macro_f1", "n", "most_predicted", "collapse_ratio",
                                               "prediction_share", "per_class_recall", "ece", "temperature",
                                               "accuracy_within_labels", "labels_present",
                                               "no_speech_found", "speakers", "speaker_filter", "perturb",
                                               "data", "model", "model_file")}
json.dump({"seed": int(seed), "rows": rows}, open(dest, "w"), indent=2)
print(f"{'row':<26} {'n':>5} {'acc':>6} {'mF1':>6} {'most predicted':>15} {'ratio':>6} {'ECE':>6} {'in-labels':>9}")
for name, r in rows.items():
    ratio = "n/a" if r["collapse_ratio"] is None else f"{r['collapse_ratio']:.2f}"
    print(f"{name:<26} {r['n']:5d} {r['accuracy']:6.3f} {r['macro_f1']:6.3f} {str(r['most_predicted']):>15} "
          f"{ratio:>6} {r['ece']:6.3f} {r['accuracy_within_labels']:9.3f}")
print(f"written: {dest}")
EOF

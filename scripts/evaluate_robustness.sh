#!/usr/bin/env bash
# How the shipped models hold up under recording conditions they were not trained on (emotion-eval --perturb).
#   scripts/evaluate_robustness.sh FER_VAL_DIR RAVDESS_DIR [OUT_DIR]
# FER_VAL_DIR: faces, one folder per class (e.g. ../shared/data/fer2013/val).
# RAVDESS_DIR: RAVDESS-named audio; actors 17-20 (never seen in training) are evaluated.
# Face: clean + blur, dark, lowres, jpeg, noise, rotate, rotate30; voice: clean + telephone, noise, quiet, reverb, rate44k.
# Writes OUT_DIR/robustness.json ({"face": {condition: {accuracy, macro_f1, n}}, "voice": {... no_speech_found},
# "seed", "models": the model files' sizes and mtimes}; default docs/eval/) and prints a table.
# SEED (default 0) seeds the perturbations.  no_speech_found: clips where the voice node's segmenter found no
# utterance (the node would publish nothing; the evaluation then classifies the whole trimmed clip).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
faces="${1:?faces folder}"; ravdess="${2:?RAVDESS folder}"; out="${3:-$here/docs/eval}"
venv="${EMOTION_ROS_VENV:-$here/.venv}"
seed="${SEED:-0}"
face_conds=(clean blur dark lowres jpeg noise rotate rotate30)
voice_conds=(clean telephone noise quiet reverb rate44k)
mkdir -p "$out"
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
mkdir -p "$work/held" "$work/reports"
for a in 17 18 19 20; do ln -s "$(cd "$ravdess" && pwd)/Actor_$a" "$work/held/Actor_$a"; done
run() {  # run TASK DATA CONDITION
  local extra=(); [ "$3" = clean ] || extra=(--perturb "$3")
  echo "$1 $3 ..." >&2
  "$venv/bin/emotion-eval" "$1" --data "$2" "${extra[@]}" --seed "$seed" --json "$work/reports/$1_$3.json" \
    2>"$work/reports/$1_$3.log" >/dev/null || { cat "$work/reports/$1_$3.log" >&2; exit 1; }
}
for c in "${face_conds[@]}"; do run face "$faces" "$c"; done
for c in "${voice_conds[@]}"; do run voice "$work/held" "$c"; done
"$venv/bin/python" - "$work/reports" "$out/robustness.json" "$seed" "$faces" "$ravdess" \
    "${face_conds[*]}" "${voice_conds[*]}" <<'EOF'
import json
import os
import sys

reports, dest, seed, faces, ravdess, face_conds, voice_conds = sys.argv[1:]
result, models = {}, {}
for task, conds in (("face", face_conds.split()), ("voice", voice_conds.split())):
    result[task] = {}
    for c in conds:
        with open(os.path.join(reports, f"{task}_{c}.json")) as f:
            r = json.load(f)
        result[task][c] = {"accuracy": r["accuracy"], "macro_f1": r["macro_f1"], "n": r["n"]}
        if task == "voice":  # recordings where the node's segmenter found no utterance (the whole clip was used)
            result[task][c]["no_speech_found"] = r["no_speech_found"]
        m = {"path": r["model"], **r["model_file"]}
        if m not in models.setdefault(task, []):
            models[task].append(m)
result.update({"seed": int(seed), "models": models,
               "data": {"face": faces, "voice": f"{ravdess} (actors 17-20)"}})
with open(dest, "w") as f:
    json.dump(result, f, indent=2)
for task in ("face", "voice"):
    if len(models[task]) > 1:
        print(f"WARNING: the {task} model file changed during the evaluation: {models[task]}", file=sys.stderr)
    clean = result[task]["clean"]["accuracy"]
    m = models[task][-1]
    print(f"{task}: {m['path']} ({m['bytes']} bytes, modified {m['mtime']})")
    print(f"  {'condition':<10} {'accuracy':>8} {'vs clean':>8} {'macro_f1':>8} {'n':>6}"
          + (f" {'no speech':>9}" if task == "voice" else ""))
    for c, r in result[task].items():
        print(f"  {c:<10} {r['accuracy']:8.3f} {r['accuracy'] - clean:+8.3f} {r['macro_f1']:8.3f} {r['n']:6d}"
              + (f" {r['no_speech_found']:9d}" if task == "voice" else ""))
print(f"written: {dest}")
EOF

#!/usr/bin/env bash
# Measure the shipped models on held-out data, as the model cards report them.
#   scripts/evaluate_models.sh FER_VAL_DIR RAVDESS_DIR [OUT_DIR]
# FER_VAL_DIR: faces, one folder per class (e.g. ../shared/data/fer2013/val).
# RAVDESS_DIR: RAVDESS-named audio; actors 17-20 (never seen in training) are evaluated.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
faces="${1:?faces folder}"; ravdess="${2:?RAVDESS folder}"; out="${3:-$here/docs/eval}"
venv="${EMOTION_ROS_VENV:-$here/.venv}"
mkdir -p "$out"
held=$(mktemp -d); trap 'rm -rf "$held"' EXIT
for a in 17 18 19 20; do ln -s "$(cd "$ravdess" && pwd)/Actor_$a" "$held/Actor_$a"; done
"$venv/bin/emotion-eval" face --data "$faces" --json "$out/face.json" --confusion "$out/face_confusion.png" | tail -1
"$venv/bin/emotion-eval" voice --data "$held" --json "$out/voice.json" --confusion "$out/voice_confusion.png" | tail -1
"$venv/bin/emotion-eval" fused --face-data "$faces" --voice-data "$held" --pairs 3000 --seed 0 \
    --json "$out/fused.json" --confusion "$out/fused_confusion.png" | tail -1

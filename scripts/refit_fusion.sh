#!/usr/bin/env bash
# After a face or voice model changes: retrain the learned fusion (corrupted-modality pairs), re-choose the fusion
# node's settings on the dev clips (written into config/emotion.yaml; fusion_mode = whichever of the learned model
# and the reliability-weighted average does better on the test clips), then evaluate the test clips (one JSON line).
#
#   scripts/refit_fusion.sh            # RETRAIN=0 skips step 1; EVAL_CLIPS as for evaluate_bags.sh
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${EMOTION_ROS_VENV:-$ROOT/.venv}"
DATA="${DATA:-$ROOT/../shared/data}"
CLIPS="${EVAL_CLIPS:-/work/eval_clips}"
M="$ROOT/emotion_ros/models"
"$VENV/bin/python" "$ROOT/scripts/make_eval_clips.py" --out "$CLIPS" >&2
if [ "${RETRAIN:-1}" = 1 ]; then
    "$VENV/bin/emotion-train" fusion --face-model "$M/face.pt" --voice-model "$M/voice.pt" \
        --face-data "$DATA/fer2013/train" --voice-data "$DATA/ravdess_speech" --face-test "$DATA/fer2013/val" \
        --voice-augment-copies 4 --corrupt-face 0.1 --corrupt-voice 0.3 --out "$M/fusion.pt" \
        --run-dir "${RUN_DIR:-$ROOT/runs/fusion}" >&2
fi
"$VENV/bin/python" "$ROOT/scripts/tune_fusion.py" --clips "$CLIPS" --fusion-model "$M/fusion.pt" --write-config \
    --json "${TUNE_JSON:-$CLIPS/tune_fusion.json}" >&2
EVAL_CLIPS="$CLIPS" "$ROOT/scripts/evaluate_bags.sh"

#!/usr/bin/env bash
# The MT50 headline, end to end and resumable, on one protocol: record that protocol's
# demonstrations, train metaworld/mt50 (vision-only: camera + instruction + 4-d state), evaluate all
# 500 protocol episodes, then train and evaluate the no-camera MLP baseline on the same data, steps
# and episodes. Run it again after an interruption: recording resumes per task, training from its
# last checkpoint, and a finished stage is skipped.
#   OUT=runs/mt50 STEPS=20000 bash scripts/mt50_headline.sh                                # starvla-mt50
#   PROTOCOL=lerobot-metaworld OUT=runs/lmw STEPS=20000 SEED=1 bash scripts/mt50_headline.sh
set -euo pipefail
PROTOCOL=${PROTOCOL:-starvla-mt50}
OUT=${OUT:-runs/mt50}
EPISODES=${EPISODES:-35}
STEPS=${STEPS:-20000}
SEED=${SEED:-0}
GRAPH=${GRAPH:-metaworld/mt50}
WORKERS=${WORKERS:-2}
mkdir -p "$OUT"
data="$OUT/data-$PROTOCOL"
if [ ! -f "$data/meta/info.json" ]; then
  python3 -m graphvla data metaworld --protocol "$PROTOCOL" --tasks MT50 --episodes "$EPISODES" \
    --size 64 --workers "$WORKERS" -o "$data"
fi
run="$OUT/run-seed$SEED"
resume=()
[ -f "$run/checkpoints/latest" ] && resume=(--resume)
if [ ! -f "$run/.trained" ]; then
  python3 -m graphvla train "$GRAPH" --data "$data" -o "$run" \
    --set trainer.max_steps="$STEPS" --set trainer.seed="$SEED" --no-progress "${resume[@]}"
  touch "$run/.trained"
fi
eval_dir="$run/eval-$PROTOCOL"
[ -f "$eval_dir/results.json" ] || python3 -m graphvla eval "$run" --protocol "$PROTOCOL" --workers "$WORKERS" -o "$eval_dir"
baseline="$OUT/mlp-baseline-seed$SEED"
[ -f "$baseline/results.json" ] || python3 bench/mlp_baseline.py "$data" --protocol "$PROTOCOL" --tasks MT50 \
  --graph "$run" --workers "$WORKERS" --compare "$eval_dir/results.json" -o "$baseline"

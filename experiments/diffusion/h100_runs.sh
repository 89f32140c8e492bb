#!/usr/bin/env bash
# Recipe: the H100 runs of experiments/diffusion/README.md — DiT-S/2 and U-ViT-S on shape_classes/32, seeds 0, 1, 2,
#   six runs at once, one GPU each (CUDA_VISIBLE_DEVICES), after the classifier judge they are evaluated with.
# Command: bash experiments/diffusion/h100_runs.sh [SECONDS]
#   Every run gets SIGTERM after SECONDS (default 540), which makes it save a checkpoint and stop, so each call fits
#   a 10-minute slot; rerun the same command until it prints "all 6 runs at step <STEPS>". STEPS (default 50000, the
#   recipes' length) shortens the runs where the machine cannot be held that long: STEPS=20000 bash ... Logs:
#   runs/diffusion/<recipe>/s<seed>/log.txt.
# Hardware: one host with at least 6 H100s (8 used the same way; with fewer GPUs set GPUS to the ones to share, e.g.
#   GPUS="0 0 0 1 1 1", and runs share a card, more slowly)
# Wall time: not yet measured; estimated 45-75 min per run from the recipes' FLOPs (see the README), all six in
#   parallel, so about 6 to 9 calls of 540 s
# Expected: the README's goal — sample accuracy >= 0.90 (eval/sample_quality/classifier_accuracy at step 50000)
set -uo pipefail
cd "$(dirname "$0")/../.."
LIMIT="${1:-540}"
STEPS="${STEPS:-50000}"
read -r -a GPUS <<< "${GPUS:-0 1 2 3 4 5}"
CLASSIFIER=runs/diffusion/classifier_shape_classes32

jaxgen data prepare shape_classes/32 || exit 1
if [ ! -d "$CLASSIFIER/checkpoints/2000" ]; then  # the judge: trained once, in about a minute on one GPU
  CUDA_VISIBLE_DEVICES="${GPUS[0]}" timeout -s TERM "$LIMIT" \
    jaxgen run configs/diffusion/classifier_shape_classes32.gin --workdir "$CLASSIFIER" --no-progress
  [ -d "$CLASSIFIER/checkpoints/2000" ] || { echo "the classifier is not trained yet: rerun this command"; exit 1; }
fi

index=0
for recipe in dit_s2_shape_classes32 uvit_s_shape_classes32; do
  for seed in 0 1 2; do
    workdir="runs/diffusion/$recipe/s$seed"
    mkdir -p "$workdir"
    CUDA_VISIBLE_DEVICES="${GPUS[$index]}" timeout -s TERM "$LIMIT" \
      jaxgen run "configs/diffusion/$recipe.gin" --workdir "$workdir" --gin.SEED="$seed" --gin.TRAIN_STEPS="$STEPS" \
      --no-progress \
      >> "$workdir/log.txt" 2>&1 &
    index=$((index + 1))
  done
done
wait

done_runs=0
for recipe in dit_s2_shape_classes32 uvit_s_shape_classes32; do
  for seed in 0 1 2; do
    workdir="runs/diffusion/$recipe/s$seed"
    step=$(ls "$workdir/checkpoints" 2>/dev/null | grep -E '^[0-9]+$' | sort -n | tail -1)
    echo "$recipe seed $seed: checkpoint ${step:-none}"
    [ "${step:-0}" = "$STEPS" ] && done_runs=$((done_runs + 1))
  done
done
if [ "$done_runs" = 6 ]; then echo "all 6 runs at step $STEPS"; else echo "$done_runs of 6 runs done: rerun"; fi

#!/usr/bin/env bash
# The CPU runs behind the latent-diffusion table of experiments/dcae/README.md, exactly as run: the classifier judge
# of shape_classes/32, the two autoencoders (DC-AE f4c16 with shortcuts; conventional f2c4 without), then U-ViT-tiny
# on each one's latents at 64 tokens per image (DC-AE: patch 1; conventional: patch 2) for STEPS steps each.
# Finished runs are skipped on a rerun. The recipes read their inputs from runs/ (relative paths): run from the
# repository root with ROOT=runs.
# Usage: nice -n 10 experiments/dcae/latent_diffusion.sh [STEPS ...]   (default: 1000 3000)
set -euo pipefail
jaxgen=${JAXGEN:-jaxgen}
done_at() { [ -f "$1/eval/$2/metrics.json" ]; }

done_at runs/diffusion/classifier_shape_classes32 2000 ||
  $jaxgen run configs/diffusion/classifier_shape_classes32.gin --workdir runs/diffusion/classifier_shape_classes32 \
    --no-progress
for arm in c16 f2c4; do
  done_at runs/dcae/ldm_ae_$arm 400 ||
    $jaxgen run configs/dcae/ldm_ae_${arm}_shapes32.gin --workdir runs/dcae/ldm_ae_$arm --no-progress
done
runs=("$@"); [ $# -gt 0 ] || runs=(1000 3000)
for steps in "${runs[@]}"; do
  for arm in c16p1 f2c4p2; do
    workdir=runs/dcae/ldm_uvit_${arm}_$steps
    done_at "$workdir" "$steps" ||
      $jaxgen run configs/dcae/ldm_uvit_${arm}_shapes32.gin --workdir "$workdir" --no-progress \
        --gin.TRAIN_STEPS="$steps" --gin.EVAL_EVERY="$steps" --gin.CHECKPOINT_EVERY="$steps"
  done
done

#!/usr/bin/env bash
# The CPU runs behind experiments/dcae/README.md, exactly as run: the shortcut ablation of the tiny f4c4 autoencoder
# (tiny_textures32.gin with and without residual shortcuts, seeds 0-2, one at a time, interleaved so a cut-short
# sweep stays balanced), then phases 2 and 3 on seed 0's model. Finished runs are skipped on a rerun. The runs
# compile the same programs, so JAX's persistent compilation cache (ROOT/jax_cache) spares most compiles.
# Usage: nice -n 10 experiments/dcae/sweeps.sh ROOT; then python3 experiments/dcae/summarize.py --root ROOT
set -euo pipefail
root=${1:?usage: sweeps.sh ROOT}
jaxgen=${JAXGEN:-jaxgen}
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-$root/jax_cache}
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=${JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS:-0.5}

run() {  # workdir, then jaxgen run arguments
  local workdir=$1; shift
  [ -f "$workdir/eval/$(steps "$@")/metrics.json" ] && return 0
  $jaxgen run "$@" --workdir "$workdir" --no-progress
}
steps() { grep -o -- '--gin.TRAIN_STEPS=[0-9]*' <<<"$*" | cut -d= -f2 || true; }

for seed in 0 1 2; do
  for variant in "" _noshortcut; do
    run "$root/tiny${variant}_s$seed" "configs/dcae/tiny_textures32${variant}.gin" --gin.SEED=$seed --gin.TRAIN_STEPS=400
  done
done
# Phase 2 (high-resolution latent adaptation at 64 px) from seed 0, with its starting point measured at 64 px
# (learning rate 0: one step that changes nothing), then phase 3 (decoder head + PatchGAN at 32 px).
run "$root/tiny_phase1_at64_s0" configs/dcae/tiny_adapt64.gin --gin.TRAIN_STEPS=1 --gin.LEARNING_RATE=0.0 \
  --gin.PHASE1_WORKDIR="'$root/tiny_s0'"
run "$root/tiny_adapt64_s0" configs/dcae/tiny_adapt64.gin --gin.TRAIN_STEPS=200 --gin.PHASE1_WORKDIR="'$root/tiny_s0'"
run "$root/tiny_refine32_s0" configs/dcae/tiny_refine32.gin --gin.TRAIN_STEPS=200 \
  --gin.PHASE2_WORKDIR="'$root/tiny_adapt64_s0'"
# The CPU-sized f32c32 ablation (seed 0 only so far: 96x compression learns far slower).
for variant in "" _noshortcut; do
  run "$root/f32c32_cpu${variant}_s0" "configs/dcae/f32c32_cpu_textures64${variant}.gin" --gin.SEED=0 --gin.TRAIN_STEPS=300
done
# ... and at 700 steps with seeds 0-2 (2026-12-07: about 4.5 min a run; the pair of one seed ran side by side).
for seed in 0 1 2; do
  for variant in "" _noshortcut; do
    run "$root/f32c32_cpu_700${variant}_s$seed" "configs/dcae/f32c32_cpu_textures64${variant}.gin" --gin.SEED=$seed \
      --gin.TRAIN_STEPS=700 --gin.CHECKPOINT_EVERY=700 --gin.EVAL_EVERY=700
  done
done
# ... and at 2,000 steps, seed 0 (2026-12-07: about 40 min a run, the pair side by side; neither left the plateau).
for variant in "" _noshortcut; do
  run "$root/f32c32_cpu_2000${variant}_s0" "configs/dcae/f32c32_cpu_textures64${variant}.gin" --gin.SEED=0 \
    --gin.TRAIN_STEPS=2000 --gin.CHECKPOINT_EVERY=1000 --gin.EVAL_EVERY=1000
done
# Phase 3's GAN settings from seed 0's phase 2 (the four side by side): weight 0.1 / 0.01 / 0.001 at learning rate
# 5e-4, and weight 0.1 at 1e-4.
for setting in "0.1 5e-4" "0.01 5e-4" "0.001 5e-4" "0.1 1e-4"; do
  read -r weight rate <<<"$setting"
  run "$root/tiny_refine32_g${weight}_lr${rate}_s0" configs/dcae/tiny_refine32.gin --gin.TRAIN_STEPS=200 \
    --gin.PHASE2_WORKDIR="'$root/tiny_adapt64_s0'" --gin.LEARNING_RATE=$rate --gin.AutoencoderTask.gan_weight=$weight
done
# Phase 3 with VQGAN's adaptive GAN weight (AutoencoderTask.adaptive_gan_weight) at GAN weights 0.1 and 0.5.
for weight in 0.1 0.5; do
  run "$root/tiny_refine32_adaptive_g${weight}_s0" configs/dcae/tiny_refine32.gin --gin.TRAIN_STEPS=200 \
    --gin.PHASE2_WORKDIR="'$root/tiny_adapt64_s0'" --gin.AutoencoderTask.gan_weight=$weight \
    --gin.AutoencoderTask.adaptive_gan_weight=True
done
# Frozen parameters bit-identical across phases 2 and 3 (counts into the README).
python=${PYTHON:-python3}  # an interpreter with jax and jaxgen (the venv's)
$python experiments/dcae/check_frozen.py --before "$root/tiny_s0" --after "$root/tiny_adapt64_s0" \
  --phase latent_adaptation --config tiny > "$root/frozen_phase2.json"
$python experiments/dcae/check_frozen.py --before "$root/tiny_adapt64_s0" --after "$root/tiny_refine32_s0" \
  --phase refinement --config tiny > "$root/frozen_phase3.json"

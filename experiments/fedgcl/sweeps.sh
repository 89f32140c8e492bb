#!/usr/bin/env bash
# The grids behind experiments/fedgcl/README.md, exactly as run, one run at a time; finished runs are skipped on a
# rerun. Runs that differ only in seed or epsilon compile the same programs, so JAX's persistent compilation cache
# (under ROOT/jax_cache) spares most compiles.
#   drosophila (default): the four recipes configs/fedgcl/drosophila_{gcn,gat,sage,gin}.gin x (without GCL, with
#     GRACE) x seeds 0-2, once per epsilon in {inf, 8, 4, 2, 1} (inf: EPSILON=None, the true edges) = 120 runs.
#   sbm: configs/fedgcl/sbm_{gcn,gin}.gin x (without GCL, with GRACE) x seeds 0-2 x epsilon in {inf, 4, 2, 1} = 48.
# Usage: experiments/fedgcl/sweeps.sh ROOT [DATASET] [PARALLEL]; then
#   python3 experiments/fedgcl/summarize.py --root ROOT --dataset DATASET --out experiments/fedgcl
set -euo pipefail
root=${1:?usage: sweeps.sh ROOT [DATASET] [PARALLEL]}
dataset=${2:-drosophila}
parallel=${3:-1}
case $dataset in
  drosophila) models=(gcn gat sage gin); epsilons=(None 8.0 4.0 2.0 1.0) ;;
  sbm) models=(gcn gin); epsilons=(None 4.0 2.0 1.0) ;;
  *) echo "unknown dataset '$dataset': drosophila or sbm" >&2; exit 2 ;;
esac
jaxgen=${JAXGEN:-jaxgen}
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-$root/jax_cache}
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=${JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS:-0.5}

for epsilon in "${epsilons[@]}"; do
  name=eps${epsilon%.0}
  $jaxgen sweep --root "$root/${name/None/inf}" --parallel "$parallel" --seeds 0 1 2 \
    --configs $(printf "configs/fedgcl/${dataset}_%s.gin " "${models[@]}") --tiers - configs/fedgcl/gcl/grace.gin \
    --gin.EPSILON=$epsilon
done

#!/usr/bin/env bash
# The grid behind experiments/fedgcl/README.md, exactly as run: the four Drosophila recipes x (without GCL, with
# GRACE) x seeds 0-2, once per epsilon in {inf, 8, 4, 2, 1} (inf: EPSILON=None, the true edges) = 120 runs, one at a
# time. Finished runs are skipped on a rerun. Runs that differ only in seed or epsilon compile the same programs, so
# JAX's persistent compilation cache (under ROOT/jax_cache) spares most compiles.
# Usage: experiments/fedgcl/sweeps.sh ROOT [PARALLEL]; then
#   python3 experiments/fedgcl/summarize.py --root ROOT --out experiments/fedgcl
set -euo pipefail
root=${1:?usage: sweeps.sh ROOT [PARALLEL]}
parallel=${2:-1}
jaxgen=${JAXGEN:-jaxgen}
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-$root/jax_cache}
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=${JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS:-0.5}

for epsilon in None 8.0 4.0 2.0 1.0; do
  name=eps${epsilon%.0}
  $jaxgen sweep --root "$root/${name/None/inf}" --parallel "$parallel" --seeds 0 1 2 \
    --configs configs/fedgcl/drosophila_{gcn,gat,sage,gin}.gin --tiers - configs/fedgcl/gcl/grace.gin \
    --gin.EPSILON=$epsilon
done

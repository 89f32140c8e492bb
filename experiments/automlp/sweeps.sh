#!/usr/bin/env bash
# The ML-100K sweeps behind experiments/automlp/README.md, exactly as run (finished runs are skipped on a rerun):
#   main  AutoMLP (search + retraining), SASRec, GRU4Rec x seeds 0-2      (9 runs, pinned to core 0)
#   k1    the fixed-k mixer with window 1 x seeds 0-2                       (3 runs, core 1, then)
#   k16   the fixed-k mixer with window 16 x seeds 0-2                      (3 runs, core 1)
# ML-100K is read from RecBole's wheel in the data folder (see configs/automlp/data/ml100k.gin):
#   pip download --no-deps recbole==1.2.1 -d "$JAXGEN_DATA_DIR/downloads/manual"
# Usage: JAXGEN_DATA_DIR=... experiments/automlp/sweeps.sh ROOT; then
#   python3 experiments/automlp/summarize.py --root ROOT --out experiments/automlp
set -euo pipefail
root=${1:?usage: sweeps.sh ROOT}
jaxgen=${JAXGEN:-jaxgen}

taskset -c 0 $jaxgen sweep --root "$root/main" --seeds 0 1 2 \
  --configs configs/automlp/{automlp,sasrec,gru4rec}_ml100k.gin &
main=$!
for k in 1 16; do
  taskset -c 1 $jaxgen sweep --root "$root/k$k" --seeds 0 1 2 --configs configs/automlp/mixer_ml100k.gin \
    "--gin.WINDOWS=($k,)"
done
wait $main

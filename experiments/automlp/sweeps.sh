#!/usr/bin/env bash
# The ML-100K sweeps behind experiments/automlp/README.md (finished runs are skipped on a rerun):
#   main  AutoMLP (search + retraining), SASRec, GRU4Rec x seeds 0-2      (9 runs)
#   k1    the fixed-k mixer with window 1 x seeds 0-2                       (3 runs)
#   k16   the fixed-k mixer with window 16 x seeds 0-2                      (3 runs)
# On a 2-core CPU machine (the default) `main` is pinned to core 0 and the fixed-k sweeps to core 1, one run at a
# time: about 25 min per AutoMLP run there (search + retraining, measured 2026-12-07 with other jobs on the cores), so
# hours in all. On a GPU host, ALL_AT_ONCE=1 starts the 15 runs together (small models: they share one GPU).
# ML-100K is read from RecBole's wheel in the data folder (see configs/automlp/data/ml100k.gin):
#   pip download --no-deps recbole==1.2.1 -d "$JAXGEN_DATA_DIR/downloads/manual"
# Usage: JAXGEN_DATA_DIR=... [ALL_AT_ONCE=1] experiments/automlp/sweeps.sh ROOT; then
#   python3 experiments/automlp/summarize.py --root ROOT --out experiments/automlp
set -euo pipefail
root=${1:?usage: sweeps.sh ROOT}
jaxgen=${JAXGEN:-jaxgen}

if [ "${ALL_AT_ONCE:-0}" = 1 ]; then
  $jaxgen sweep --root "$root/main" --seeds 0 1 2 --parallel 9 \
    --configs configs/automlp/{automlp,sasrec,gru4rec}_ml100k.gin &
  for k in 1 16; do
    $jaxgen sweep --root "$root/k$k" --seeds 0 1 2 --parallel 3 --configs configs/automlp/mixer_ml100k.gin \
      "--gin.WINDOWS=($k,)" &
  done
  wait
  exit 0
fi

taskset -c 0 $jaxgen sweep --root "$root/main" --seeds 0 1 2 \
  --configs configs/automlp/{automlp,sasrec,gru4rec}_ml100k.gin &
main=$!
for k in 1 16; do
  taskset -c 1 $jaxgen sweep --root "$root/k$k" --seeds 0 1 2 --configs configs/automlp/mixer_ml100k.gin \
    "--gin.WINDOWS=($k,)"
done
wait $main

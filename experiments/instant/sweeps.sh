#!/usr/bin/env bash
# The sweeps behind experiments/instant/README.md, exactly as run (one GPU; finished runs are skipped on a rerun):
#   grid      4 settings x (InstanT + 5 baselines + the 2 InstanT estimator variants) x seeds 0-2 = 96 runs
#   long      Fashion-MNIST 4 labels/class at 50,000 steps x the algorithm tiers in $LONG_TIERS x seeds 0-2
#             (default: all six algorithms, 18 runs; the README says which were run)
# Both sweeps share the card at once: the long runs all start together, the grid fills the remaining slots.
# Usage: experiments/instant/sweeps.sh ROOT [GRID_PARALLEL] [LONG_PARALLEL]; then
#   python3 experiments/instant/summarize.py --root ROOT/grid --long-root ROOT/long --out experiments/instant
set -euo pipefail
root=${1:?usage: sweeps.sh ROOT [GRID_PARALLEL] [LONG_PARALLEL]}
grid_parallel=${2:-6}
long_parallel=${3:-18}
jaxgen=${JAXGEN:-jaxgen}
algorithms=configs/instant/algorithms
tiers=(- $algorithms/{fixmatch,flexmatch,freematch,supervised,softmatch}.gin)
read -r -a long_tiers <<< "${LONG_TIERS:-${tiers[*]}}"

$jaxgen sweep --root "$root/long" --parallel "$long_parallel" --seeds 0 1 2 \
  --configs configs/instant/fashion_mnist_4_long.gin --tiers "${long_tiers[@]}" &
long=$!
$jaxgen sweep --root "$root/grid" --parallel "$grid_parallel" --seeds 0 1 2 \
  --configs configs/instant/{fashion_mnist_4,fashion_mnist_10,mnist5k_4,mnist5k_10}.gin \
  --tiers "${tiers[@]}" $algorithms/{instant_instance,instant_labeled}.gin
wait $long

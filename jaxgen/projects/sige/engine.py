"""`IncrementalEngine`: run a model of SIGE-aware layers once on the original, then on edits at the cost of the
edited region.

`full(original, **cond)` runs the dense model, caching every layer's output, GroupNorm statistics and attention
keys / values, and records each conv site. `edit(edited, **cond)` takes the difference mask against the original,
reduces it per site to active tiles (`masks`), pads the tile lists to a capacity bucket and runs the sparse pass.
Compiles are bounded: the sparse pass's shapes depend only on the bucket, so at most `len(levels)` sparse programs
(plus one dense fallback) are ever built for one input shape. Above the largest bucket (the density threshold) the
edit runs the same pass with every site dense, so its semantics (cached GroupNorm statistics) do not jump.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np

from jaxgen.projects.sige import masks as masks_lib
from jaxgen.projects.sige.layers import CACHE, IMPLEMENTATIONS, Cost, Pass, running


@dataclasses.dataclass
class EditPlan:
    """What `edit` ran: `level` (bucket fraction, None for the dense fallback), the mask pyramid, per site key its
    active tile grid and slot count; `arrays` is what the sparse pass reads (`device`: the same, on the device)."""

    level: float | None
    pyramid: dict[tuple[int, int], np.ndarray]
    active: dict[str, np.ndarray]
    slots: dict[str, int]
    arrays: dict[str, dict[str, np.ndarray]]
    device: Any = None


class IncrementalEngine:
    """Spatially sparse incremental inference for `module.apply(params, x, **cond)`.

    `threshold`: a pixel is edited if any channel moved by more than this. `dilation`: pixels the mask grows by at
    every resolution (the halo the stacked convs spread an edit over; larger is closer to the dense result).
    `min_sparse_res`: sites whose input is smaller than this on either side always run dense. `levels`: capacity
    fractions of each site's tiles (`masks.bucket_levels()`); the largest is the dense-fallback threshold.
    `compiler_options`: XLA options for both passes' `jax.jit` (the tests compile with
    `{"xla_backend_optimization_level": 0}`, 2.4× faster on CPU for programs whose run time does not matter).
    `implementation`: how sparse conv sites run (`layers.IMPLEMENTATIONS`): "xla" (default) chains XLA ops per site;
    "pallas" runs each site as one fused kernel (`pallas_kernels.sparse_conv`; on CPU its jnp reference),
    "pallas_interpret" the kernel body interpreted (CPU tests). Not the default until measured on a GPU.
    `kernel_blocks`: the fused kernel's `pallas_kernels.sparse_conv.BlockSizes` (None: its tuned defaults; for
    sweeps). `fused_sites` lists the conv sites the last traced sparse pass fused.
    """

    def __init__(self, module, params, *, threshold: float = 2e-2, dilation: int = 1, min_sparse_res: int = 8,
                 levels: tuple[float, ...] | None = None, compiler_options: dict | None = None,
                 implementation: str = "xla", kernel_blocks=None):
        if implementation not in IMPLEMENTATIONS:
            raise ValueError(f"IncrementalEngine: implementation {implementation!r} is not one of {IMPLEMENTATIONS}")
        self.module, self.params, self.implementation = module, params, implementation
        self.kernel_blocks = kernel_blocks
        self.fused_sites: tuple[str, ...] = ()
        self.threshold, self.dilation, self.min_sparse_res = threshold, dilation, min_sparse_res
        self.levels = tuple(sorted(levels)) if levels is not None else masks_lib.bucket_levels()
        self.compiles = 0
        self.last_plan: EditPlan | None = None
        self._originals: dict[Any, np.ndarray] = {}
        self._caches: dict[Any, Any] = {}
        self._last_mask: np.ndarray | None = None
        self._sites: dict = {}
        self._costs: list[Cost] = []
        self._full = jax.jit(self._full_pass, compiler_options=compiler_options)
        self._sparse = jax.jit(self._sparse_pass, compiler_options=compiler_options)

    def _full_pass(self, params, x, cond):
        state = Pass("full")
        with running(state):
            out, variables = self.module.apply(params, x, mutable=[CACHE], **cond)
        self._sites, self._costs = state.sites, state.costs
        return out, variables[CACHE]

    def _sparse_pass(self, params, cache, x, plan, cond):
        self.compiles += 1
        state = Pass("sparse", plan=plan, implementation=self.implementation, kernel_blocks=self.kernel_blocks)
        with running(state):
            out = self.module.apply({**params, CACHE: cache}, x, **cond)
        self.fused_sites = tuple(state.fused)
        return out

    def full(self, original, *, cache_id: Any = 0, **cond) -> jax.Array:
        """Run densely on `original`, cache what edits reuse under `cache_id` (one per denoising step in SDEdit),
        return the output."""
        if self._originals and np.shape(original) != next(iter(self._originals.values())).shape:
            raise ValueError(f"IncrementalEngine.full: shape {np.shape(original)} differs from the cached originals' "
                             f"{next(iter(self._originals.values())).shape}; use one engine per shape")
        out, self._caches[cache_id] = self._full(self.params, original, cond)
        self._originals[cache_id] = np.asarray(original)
        return out

    def edit(self, edited, *, mask=None, cache_id: Any = 0, **cond) -> jax.Array:
        """The output on `edited`, recomputing only where it differs from the original given to `full` under
        `cache_id` — or, with `mask` ([H, W] bool), only where `mask` says (SDEdit keeps the mask of the clean
        images for every noisy step). The plan of the last mask is reused when the mask repeats."""
        if cache_id not in self._originals:
            raise ValueError(f"IncrementalEngine.edit: call full(original, cache_id={cache_id!r}) first; there is no "
                             f"cached original under that id")
        original = self._originals[cache_id]
        if tuple(np.shape(edited)) != original.shape:
            raise ValueError(f"IncrementalEngine.edit: the edit has shape {tuple(np.shape(edited))}, the original "
                             f"given to full() {original.shape}; run full() on an original of this shape")
        if mask is None:
            mask = masks_lib.difference_mask(original, edited, self.threshold)
        mask = np.asarray(mask, bool)
        if mask.shape != original.shape[1:3]:
            raise ValueError(f"IncrementalEngine.edit: mask {mask.shape} does not match the images' "
                             f"{original.shape[1:3]}")
        if self.last_plan is None or self._last_mask is None or not np.array_equal(mask, self._last_mask):
            self.last_plan, self._last_mask = self.plan(mask), mask
        return self._sparse(self.params, self._caches[cache_id], edited, self.last_plan.device, cond)

    def dense_with_cached_statistics(self, x, *, cache_id: Any = 0, **cond) -> jax.Array:
        """The model on `x` run densely but with the full pass's GroupNorm statistics and attention keys / values
        where they are cached: what the sparse pass equals where the edit reached (and what `edit` falls back to)."""
        if cache_id not in self._caches:
            raise ValueError(f"IncrementalEngine: call full(original, cache_id={cache_id!r}) first")
        return self._sparse(self.params, self._caches[cache_id], x, {}, cond)

    def plan(self, mask: np.ndarray) -> EditPlan:
        """Active tiles of every sparse site for the `[H, W]` edit mask, padded to the smallest bucket they fit.

        One bucket level `f` sizes every site: `f · 2^k` of its tiles for a site `k` halvings below the finest one
        (an edit covers a larger share of a coarser map: its halo is a fixed number of pixels at every resolution),
        and a site whose share exceeds the largest level runs dense. The program's shapes thus depend on `f` alone:
        at most `len(levels)` sparse compiles, plus the all-dense fallback when even the largest level is too small.
        """
        if not self._sites:
            raise ValueError("IncrementalEngine.plan: call full(original) first; no conv sites are recorded")
        sizes = {(h, w) for h, w, _ in self._sites.values()}
        pyramid = masks_lib.pyramid(mask, _levels_needed(mask.shape, sizes), self.dilation)
        missing = sizes - set(pyramid)
        if missing:
            raise ValueError(f"IncrementalEngine.plan: sites at {sorted(missing)} are not halvings of the input "
                             f"{mask.shape}")
        active, counts = {}, {}
        for key, (h, w, geometry) in self._sites.items():
            if min(h, w) < self.min_sparse_res:
                continue
            active[key] = masks_lib.active_tiles(pyramid[(h, w)], geometry)
            counts[key] = int(active[key].sum())
        finest = max(h for h, _, _ in self._sites.values())
        growth = {key: finest / h for key, (h, _, _) in self._sites.items()}
        dense_from = self.levels[-1]

        def fits(level: float) -> bool:
            return all(level * growth[k] > dense_from or n <= masks_lib.capacity(level * growth[k], active[k].size)
                       for k, n in counts.items())

        level = next((f for f in self.levels if fits(f)), None)
        if level is None:
            return EditPlan(None, pyramid, active, {}, {}, {})
        slots, arrays = {}, {}
        for key, grid in active.items():
            if level * growth[key] > dense_from:
                continue
            h, w, geometry = self._sites[key]
            indices = masks_lib.tile_indices(grid)
            slots[key] = masks_lib.capacity(level * growth[key], grid.size)
            arrays[key] = {"idx": masks_lib.pad_indices(indices, slots[key]), "count": np.int32(len(indices)),
                           "map": masks_lib.scatter_map(indices, geometry.output_size(h), geometry.output_size(w),
                                                        geometry.tile)}
        return EditPlan(level, pyramid, active, slots, arrays, jax.device_put(arrays))

    def macs(self, plan: EditPlan | None = None) -> dict[str, Any]:
        """Dense and sparse MACs of the recorded layers for `plan` (default: the last edit's). `sparse` counts the
        active tiles, `executed` the padded slots the bucket actually runs; elementwise work is not counted."""
        plan = plan if plan is not None else self.last_plan
        if plan is None or not self._costs:
            raise ValueError("IncrementalEngine.macs: run full() and edit() first (or pass a plan)")
        layers = []
        for cost in self._costs:
            sparse = cost.key in plan.arrays
            active = int(plan.active[cost.key].sum()) if sparse else None
            layers.append({"layer": cost.layer, "site": cost.key, "dense": cost.dense,
                           "sparse": active * cost.per_tile if sparse else cost.dense,
                           "executed": plan.slots[cost.key] * cost.per_tile if sparse else cost.dense})
        totals = {name: sum(layer[name] for layer in layers) for name in ("dense", "sparse", "executed")}
        return {**totals, "layers": layers}


def _levels_needed(shape: tuple[int, int], sizes: set[tuple[int, int]]) -> int:
    """Pyramid levels from `shape` down to the smallest site size."""
    levels, (h, w) = 1, shape
    smallest = min(min(s) for s in sizes)
    while min(h, w) > smallest:
        h, w = (h + 1) // 2, (w + 1) // 2
        levels += 1
    return levels

"""Host input-pipeline benchmark: jaxgen's `Loader` against grain on an SSL-sized host transform, on this host's CPUs.

    PYTHONPATH=. python experiments/bench/loader_throughput.py [--steps 40] [--workers N] [--out FILE.json]

Each step reads 512 CIFAR-sized uint8 examples (InstanT's 64 labeled + 448 unlabeled) from an in-memory source and
augments each on the host: reflect-pad 4 and a random 32x32 crop, a random horizontal flip and a 16x16 Cutout, with the
random numbers of example `i` of step `s` drawn from (seed, s, i), so every variant yields the same batches as a pure
function of (seed, step). Variants, all in one process and measured after one warm-up step:
- `loader_gather_only`: the Loader without a host transform (InstanT's path: it augments on the device);
- `loader`: `Loader(transform=...)`, examples augmented one by one in the loader's thread (today's path);
- `loader_threads`: the same per-example work split over a thread pool of `--workers`;
- `loader_vectorized`: the same augmentation written over the whole batch at once in numpy;
- `grain_map`: grain `MapDataset` indexed by step (random access, resume by step like the Loader), one thread;
- `grain_mp`: grain `IterDataset.mp_prefetch` with `--workers` worker processes (checkpointable iterator state).
grain is optional: without it only the Loader variants run. Prints the CPU count; the JSON keeps every number.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import json
import os
import time

import numpy as np

from jaxgen.data import ArraySource, Loader

BATCH = 64 + 448
PAD, SIDE, CUTOUT = 4, 32, 16


def augment_one(image: np.ndarray, u: np.ndarray) -> np.ndarray:
    """`u`: 5 uniforms (crop y, crop x, flip, cutout y, cutout x)."""
    padded = np.pad(image, ((PAD, PAD), (PAD, PAD), (0, 0)), mode="reflect")
    y, x = (u[:2] * (2 * PAD + 1)).astype(int)
    out = padded[y:y + SIDE, x:x + SIDE]
    if u[2] < 0.5:
        out = out[:, ::-1]
    cy, cx = (u[3:5] * SIDE).astype(int)
    out = out.copy()
    out[max(cy - CUTOUT // 2, 0):cy + CUTOUT // 2, max(cx - CUTOUT // 2, 0):cx + CUTOUT // 2] = 128
    return out


def uniforms(seed: int, step: int, rows: int) -> np.ndarray:
    return np.random.default_rng([seed, step]).random((rows, 5))


def augment_batch_vectorized(images: np.ndarray, u: np.ndarray) -> np.ndarray:
    n = len(images)
    padded = np.pad(images, ((0, 0), (PAD, PAD), (PAD, PAD), (0, 0)), mode="reflect")
    y, x = (u[:, 0] * (2 * PAD + 1)).astype(int), (u[:, 1] * (2 * PAD + 1)).astype(int)
    rows = y[:, None] + np.arange(SIDE)[None]
    cols = x[:, None] + np.arange(SIDE)[None]
    cols = np.where(u[:, 2:3] < 0.5, cols[:, ::-1], cols)
    out = padded[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]
    cy, cx = (u[:, 3] * SIDE).astype(int), (u[:, 4] * SIDE).astype(int)
    grid = np.arange(SIDE)
    inside = ((grid[None] >= cy[:, None] - CUTOUT // 2) & (grid[None] < cy[:, None] + CUTOUT // 2))[:, :, None] & \
             ((grid[None] >= cx[:, None] - CUTOUT // 2) & (grid[None] < cx[:, None] + CUTOUT // 2))[:, None, :]
    out[inside] = 128
    return out


def source(n: int = 50_000) -> ArraySource:
    rng = np.random.default_rng(0)
    return ArraySource({"image": rng.integers(0, 256, (n, SIDE, SIDE, 3), dtype=np.uint8),
                        "label": rng.integers(0, 10, n)})


def timed(batches, steps: int) -> tuple[float, np.ndarray]:
    first = next(batches)  # warm-up (threads, worker processes, caches)
    start = time.perf_counter()
    for _ in range(steps):
        last = next(batches)
    return steps / (time.perf_counter() - start), (first, last)


def loader_variants(src, steps: int, workers: int, seed: int = 0) -> dict:
    results = {"loader_gather_only": timed(Loader(src, BATCH, seed=seed).iterate(0), steps)}

    class PerExample:
        """Loader transform that counts the steps it has seen (the benchmark iterates from step 0 in order)."""

        def __init__(self, pool=None):
            self.pool, self.step = pool, 0

        def __call__(self, batch):
            u = uniforms(seed, self.step, len(batch["image"]))
            self.step += 1
            if self.pool is None:
                images = [augment_one(im, ui) for im, ui in zip(batch["image"], u)]
            else:
                chunks = np.array_split(np.arange(len(u)), workers)
                parts = self.pool.map(lambda c: [augment_one(batch["image"][i], u[i]) for i in c], chunks)
                images = [im for part in parts for im in part]
            return {"image": np.stack(images), "label": batch["label"]}

    results["loader"] = timed(Loader(src, BATCH, seed=seed, transform=PerExample()).iterate(0), steps)
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        results["loader_threads"] = timed(Loader(src, BATCH, seed=seed, transform=PerExample(pool)).iterate(0), steps)

    class Vectorized(PerExample):
        def __call__(self, batch):
            u = uniforms(seed, self.step, len(batch["image"]))
            self.step += 1
            return {"image": augment_batch_vectorized(batch["image"], u), "label": batch["label"]}

    results["loader_vectorized"] = timed(Loader(src, BATCH, seed=seed, transform=Vectorized()).iterate(0), steps)
    return results


def grain_variants(src, steps: int, workers: int, seed: int = 0) -> dict:
    import grain
    from absl import flags

    if not flags.FLAGS.is_parsed():  # grain's worker processes read absl flags; outside absl.app nobody parsed them
        flags.FLAGS.mark_as_parsed()

    class Augment(grain.transforms.RandomMap):
        def random_map(self, element, rng: np.random.Generator):
            return {"image": augment_one(element["image"], rng.random(5)), "label": element["label"]}

    dataset = grain.MapDataset.source(src).seed(seed).shuffle().repeat().random_map(Augment()).batch(BATCH)

    def by_index():
        step = 0
        while True:
            yield dataset[step]
            step += 1

    results = {"grain_map": timed(by_index(), steps)}
    iterator = iter(dataset.to_iter_dataset().mp_prefetch(grain.MultiprocessingOptions(num_workers=workers)))
    results["grain_mp"] = timed(iterator, steps)
    state = iterator.get_state()  # checkpointable: a fresh iterator set to this state continues the same stream
    following = next(iterator)
    fresh = iter(dataset.to_iter_dataset().mp_prefetch(grain.MultiprocessingOptions(num_workers=workers)))
    fresh.set_state(state)
    results["grain_mp_resumes_exactly"] = bool(np.array_equal(next(fresh)["image"], following["image"]))
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out")
    args = parser.parse_args()
    src = source()
    report = {"date": datetime.date.today().isoformat(), "cpus": os.cpu_count(), "batch": BATCH,
              "workers": args.workers, "steps": args.steps, "steps_per_sec": {}}
    measured = loader_variants(src, args.steps, args.workers)
    try:
        measured.update(grain_variants(src, args.steps, args.workers))
        import grain
        report["grain_version"] = getattr(grain, "__version__", "?")
    except ImportError:
        report["grain_version"] = None
    report["grain_mp_resumes_exactly"] = measured.pop("grain_mp_resumes_exactly", None)
    for name, (rate, _) in measured.items():
        report["steps_per_sec"][name] = round(rate, 2)
        print(f"{name:20s} {rate:7.2f} steps/s  {rate * BATCH:9.0f} examples/s")
    print(f"cpus {report['cpus']}, workers {args.workers}, grain {report['grain_version']}, "
          f"grain resumes exactly: {report['grain_mp_resumes_exactly']}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=2)
            f.write("\n")


if __name__ == "__main__":
    main()

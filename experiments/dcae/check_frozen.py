"""Did a phase leave its frozen parameters bit-identical? Compares the parameters of two runs' latest checkpoints
(a phase's starting run and the phase's run) under the phase's mask (`jaxgen.projects.dcae.task.phase_frozen`).

Usage: python3 experiments/dcae/check_frozen.py --before runs/dcae/tiny_s0 --after runs/dcae/tiny_adapt64_s0
           --phase latent_adaptation --config tiny
Prints, for frozen and for trained parameters, how many are bit-identical and how many changed.
"""

from __future__ import annotations

import argparse
import os
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxgen.core import checkpoint as ckpt_lib
from jaxgen.core.sharding import path_to_str
from jaxgen.projects.dcae import model, task


def latest_params(workdir: str, abstract):
    source, step = ckpt_lib.open_source(os.path.abspath(workdir), workdir)
    return source.restore_subtree(step, {"params": abstract})["params"]


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--before", required=True)
    parser.add_argument("--after", required=True)
    parser.add_argument("--phase", required=True, choices=sorted(task.PHASES))
    parser.add_argument("--config", required=True, help="the DC-AE config name both runs used")
    args = parser.parse_args(argv)
    module = model.dcae(args.config)
    t = task.AutoencoderTask(module, args.phase)
    f = module.spatial_compression
    batch = {"image": jax.ShapeDtypeStruct((1, 4 * f, 4 * f, 3), jnp.uint8)}
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
                            nn.unbox(jax.eval_shape(t.init, jax.random.key(0), batch))["params"])
    before, after = latest_params(args.before, abstract), latest_params(args.after, abstract)
    trained = task.trainable_mask(abstract, t.frozen_patterns())
    counts = {"frozen_identical": 0, "frozen_changed": [], "trained_changed": 0, "trained_identical": []}
    for (path, a), b, is_trained in zip(jax.tree_util.tree_leaves_with_path(before), jax.tree.leaves(after),
                                        jax.tree.leaves(trained)):
        same = np.array_equal(np.asarray(a), np.asarray(b))
        if is_trained and not same:
            counts["trained_changed"] += 1
        elif is_trained:
            counts["trained_identical"].append(path_to_str(path))
        elif same:
            counts["frozen_identical"] += 1
        else:
            counts["frozen_changed"].append(path_to_str(path))
    print(json.dumps(counts, indent=1))
    return counts


if __name__ == "__main__":
    main()

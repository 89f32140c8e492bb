"""MACs per sampling step and parameter counts of DiT-S/B/XL, U-ViT-S and the CaT-like S, static and with CAN or AKS.

Recipe:
  command   PYTHONPATH=. python3 experiments/can/macs.py [--out experiments/can/macs.json]
  hardware  any CPU (nothing is allocated: parameters are `jax.eval_shape`d, MACs come from compiling)
  wall time 108 s on 2 shared CPU cores (2026-12-07), mostly XLA compiling the XL variants
  expected  DiT-XL/2 static at ImageNet 256 (32x32x4 latents): 118.6 G in DiT's paper (its "Gflops" count
            multiply-adds); the table in experiments/can/README.md

MACs are per image and per model evaluation (`jaxgen.projects.can.macs.count_macs` at batch 1: XLA flops / 2, scan
bodies counted once per layer); classifier-free guidance evaluates the model twice per step. Placement and generator
sizes are those of the recipes (configs/can/placement/*.gin): patch embedding, every attention output projection
and the final projection; CAN with a rank-`--rank` generator, AKS with `--rank` kernels (equal parameter budgets),
plus CAN's full linear generator (rank None) to show why the recipes factorise it.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import jax
import jax.numpy as jnp
from flax import traverse_util

from jaxgen.nn.dit import DiT
from jaxgen.nn.uvit import UViT
from jaxgen.projects.can import AKS, CAN, ConditionAwareModel
from jaxgen.projects.can.cat import CaTDiT
from jaxgen.projects.can.macs import count_macs

# backbone type -> (placement rules of configs/can/placement/*.gin, the attribute holding its width)
PLACEMENT = {
    DiT: (("patch_embed", "blocks/attn/out", "unpatchify"), "width"),
    UViT: (("patch_embed/proj", "(in_blocks|mid_block|out_blocks)/attn/proj", "decoder_pred"), "embed_dim"),
    CaTDiT: (("patch_embed", "blocks/attn/aggregate_[0-9]+_depthwise", "blocks/mbconv/depthwise", "blocks/attn/proj",
              "unpatchify"), "width"),
}

# setting -> image shape, real classes and the backbones measured there
SETTINGS = {
    "imagenet256_latent": dict(image=(32, 32, 4), classes=1000, models={
        "DiT-S/2": lambda: DiT(num_classes=1000, width=384, depth=12, num_heads=6, in_channels=4, out_channels=8),
        "DiT-B/2": lambda: DiT(num_classes=1000, width=768, depth=12, num_heads=12, in_channels=4, out_channels=8),
        "DiT-XL/2": lambda: DiT(num_classes=1000, width=1152, depth=28, num_heads=16, in_channels=4, out_channels=8),
        "CaT-like S/2": lambda: CaTDiT(num_classes=1000, width=256, depth=8, num_heads=8, head_dim=32, in_channels=4,
                                       out_channels=8),
    }),
    "shape_classes32": dict(image=(32, 32, 3), classes=12, models={
        "DiT-S/2": lambda: DiT(num_classes=12, width=384, depth=12, num_heads=6, in_channels=3, sample_size=32),
        "U-ViT-S/2": lambda: UViT(num_classes=13, embed_dim=512, depth=12, num_heads=8, in_channels=3),
        "CaT-like S/2": lambda: CaTDiT(num_classes=12, width=256, depth=8, num_heads=8, head_dim=32),
    }),
}


def _variants(rank: int):
    return {"static": None, f"CAN rank {rank}": CAN(rank=rank), f"AKS {rank} kernels": AKS(num_kernels=rank),
            "CAN full linear": CAN()}


def measure(backbone, weights, image, classes):
    x = jax.ShapeDtypeStruct((1, *image), jnp.float32)
    t, y = jax.ShapeDtypeStruct((1,), jnp.float32), jax.ShapeDtypeStruct((1,), jnp.int32)
    if weights is None:
        model = backbone
    else:
        rules, width = PLACEMENT[type(backbone)]
        model = ConditionAwareModel(backbone, num_classes=classes, width=getattr(backbone, width), rules=rules,
                                    weights=weights)
    variables = jax.eval_shape(model.init, jax.random.key(0), x, t, y)
    flat = traverse_util.flatten_dict(variables["params"])
    params = sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(variables))
    generator = sum(math.prod(jax.tree.leaves(v)[0].shape) for k, v in flat.items()
                    if k[-1].startswith(("can_", "aks_")))
    return dict(macs_g=count_macs(model.apply, variables, x, t, y) / 1e9, params_m=params / 1e6,
                generator_params_m=generator / 1e6)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rank", type=int, default=8, help="CAN generator rank = AKS kernels (the recipes' 8)")
    parser.add_argument("--out", default="experiments/can/macs.json")
    args = parser.parse_args()
    results, start = [], time.time()
    for setting, spec in SETTINGS.items():
        for name, backbone in spec["models"].items():
            for variant, weights in _variants(args.rank).items():
                row = dict(setting=setting, model=name, variant=variant,
                           **measure(backbone(), weights, spec["image"], spec["classes"]))
                results.append(row)
                print(f"{setting:20s} {name:10s} {variant:18s} {row['macs_g']:9.3f} GMACs {row['params_m']:10.2f} M "
                      f"params ({row['generator_params_m']:.2f} M in generators)", flush=True)
    Path(args.out).write_text(json.dumps(dict(date=time.strftime("%Y-%m-%d"), jax=jax.__version__,
                                              device=str(jax.devices()[0].device_kind), rank=args.rank,
                                              wall_s=round(time.time() - start, 1), rows=results), indent=1) + "\n")


if __name__ == "__main__":
    main()

"""Multiply-accumulates of a jitted function from XLA's own cost analysis: `flops / 2` of the compiled HLO.

XLA's cost analysis counts the body of a loop once, whatever its trip count (measured: a DiT of depth 1, 2, 4 or 8
blocks under `nn.scan` reported the same flops). `count_macs` therefore walks the function's jaxpr and, for every
`scan` (nested ones included), adds `length - 1` more copies of its body's cost, the body compiled on its own. A
`while` loop has no static trip count and is refused. Elementwise work (norms, activations, softmax) counts too, at
XLA's flops per element, so a block's count sits a few per cent above its matmul MACs.

Shapes suffice: pass `jax.ShapeDtypeStruct`s and nothing is allocated (DiT-XL/2 is counted on a laptop).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.extend as jex


def _closed(jaxpr) -> jex.core.ClosedJaxpr:
    if isinstance(jaxpr, jex.core.ClosedJaxpr):
        return jaxpr
    if jaxpr.constvars:
        raise ValueError("count_macs: a scan body with unbound constants cannot be compiled on its own")
    return jex.core.ClosedJaxpr(jaxpr, [])


def _subjaxprs(params: dict[str, Any]) -> Iterator[jex.core.Jaxpr]:
    for value in params.values():
        for item in value if isinstance(value, (tuple, list)) else (value,):
            if isinstance(item, jex.core.ClosedJaxpr):
                yield item.jaxpr
            elif isinstance(item, jex.core.Jaxpr):
                yield item


def xla_flops(closed: jex.core.ClosedJaxpr) -> float:
    """XLA's flops for one call of `closed`, compiled for its input shapes (loop bodies counted once)."""
    shapes = [jax.ShapeDtypeStruct(var.aval.shape, var.aval.dtype) for var in closed.jaxpr.invars]
    cost = jax.jit(jex.core.jaxpr_as_fun(closed)).lower(*shapes).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost.get("flops", 0.0))


def _uncounted_loop_flops(jaxpr: jex.core.Jaxpr) -> float:
    """Flops of the loop iterations beyond the first that `xla_flops` leaves out, at every nesting level."""
    total = 0.0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "scan":
            body, length = _closed(eqn.params["jaxpr"]), eqn.params["length"]
            total += (length - 1) * xla_flops(body) + length * _uncounted_loop_flops(body.jaxpr)
        elif name == "while":
            raise ValueError("count_macs: the function has a while loop (e.g. fori_loop over traced bounds), whose "
                             "trip count XLA's cost analysis cannot know; express it as a scan")
        else:
            total += sum(_uncounted_loop_flops(sub) for sub in _subjaxprs(eqn.params))
    return total


def count_macs(fn: Callable, *args, **kwargs) -> float:
    """MACs of one call `fn(*args, **kwargs)`: XLA flops of the jitted function, loops counted in full, over 2.

    `args` may be arrays or `jax.ShapeDtypeStruct`s (pytrees of them); `kwargs` are static.
    """
    closed = jax.make_jaxpr(lambda *a: fn(*a, **kwargs))(*args)
    return (xla_flops(closed) + _uncounted_loop_flops(closed.jaxpr)) / 2

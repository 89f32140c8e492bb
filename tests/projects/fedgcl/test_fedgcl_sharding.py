"""Clients spread over devices: one federated round with the client axis split over 4 (forced host) devices equals
the same round on one device (each client differentiates its own copy of the global parameters: a gradient summed
over the devices would differ). Run in a subprocess, since the device count is fixed when jax starts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]

FOUR_DEVICES = """
import jax, jax.numpy as jnp, numpy as np
from jaxgen.core import mesh as mesh_lib
from jaxgen.core.errors import ConfigError
from jaxgen.core.optim import OptimizerConfig
from jaxgen.projects.fedgcl import clients as clients_lib, federated, model, trainer
from jaxgen.projects.fedgcl.task import FedGraphTask

assert jax.device_count() == 4
class Cliques:  # client k holds clique k
    def assign(self, labels, num_clients, rng, edges=None):
        return np.arange(20) // 5

# 4 cliques of 5 nodes in a chain.
a = np.kron(np.eye(4), np.ones((5, 5))) + np.eye(20, k=5) * (np.arange(20) % 5 == 4)[:, None]
a = np.maximum(a, a.T) * (1 - np.eye(20))
receivers, senders = np.nonzero(a)
rng = np.random.default_rng(0)
graph = {"node_features": rng.normal(size=(20, 3)).astype(np.float32), "node_labels": np.arange(20) % 2,
         "senders": senders, "receivers": receivers, "edge_weights": np.ones(len(senders))}
fed = clients_lib.node_federation(graph, num_clients=4, split=Cliques(), mechanism=None,
                                  epsilon=None, train_fraction=0.5, val_fraction=0.2, seed=0)
task = FedGraphTask(model.GNN(layer="gcn", num_classes=2, hidden=8, dropout=0.5))  # dropout: the keys travel too
tx = OptimizerConfig(name="adam", learning_rate=0.05, schedule="constant").build(2)
batch = {"clients": jnp.arange(4, dtype=jnp.int32), "key": jax.random.key(3)}
state = trainer.ServerState(step=jnp.zeros((), jnp.int32), params=jax.jit(task.init)(jax.random.key(0), fed.clients))
results = {}
for devices in (1, 4):
    mesh = mesh_lib.make_mesh(mesh_lib.MeshConfig(num_devices=devices))
    placed = jax.device_put(fed.clients, trainer.client_sharding(mesh, 4))
    assert {s.data.shape[0] for s in placed.labels.addressable_shards} == {4 // devices}
    round_step = jax.jit(trainer.make_round(task, federated.FedAvg(), tx, 2, mesh))
    results[devices] = jax.device_get(round_step(state, batch, placed))
(one_state, one_metrics), (four_state, four_metrics) = results[1], results[4]
for x, y in zip(jax.tree.leaves(one_state.params), jax.tree.leaves(four_state.params)):
    np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
for name in one_metrics:
    np.testing.assert_allclose(one_metrics[name], four_metrics[name], rtol=1e-5, atol=1e-6, err_msg=name)
assert float(one_metrics["update_norm"]) > 0
try:
    trainer.run(task=task, federation=fed, workdir="unused", rounds=1, clients_per_round=3)
except ConfigError as e:
    assert "cannot be split evenly over the 4" in str(e), e
else:
    raise AssertionError("3 clients per round on 4 devices should be refused")
print("ok")
"""


def test_a_round_with_clients_sharded_over_four_devices_equals_the_one_device_round():
    flags = "--xla_force_host_platform_device_count=4 --xla_backend_optimization_level=0"  # compiles in half the time
    environment = {**os.environ, "XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu",
                   "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", FOUR_DEVICES], cwd=REPO, env=environment, capture_output=True,
                          text=True, timeout=280)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-3000:]

"""DP-FedGCL: federated graph learning under edge-level differential privacy, with graph contrastive learning to
win back the accuracy the privacy noise costs. Graphs as padded jraph `GraphsTuple`s (`graphs`), the bundled datasets
(`data`: karate club, contextual SBMs, the Drosophila connectome, 32 mouse connectomes; Cora / CiteSeer / PubMed
from Planetoid's files, ogbg_molpcba from TFDS), the four GNNs (`model`),
edge-level DP (`privacy`: `edge_rand`, `lap_graph`), GRACE and GraphCL (`contrastive`), client splits and FedAvg /
FedProx (`federated`, `clients`), the objective (`task`) and the federated trainer fork (`trainer`). See README.md."""

from jaxgen.data import register_dataset
from jaxgen.projects.fedgcl.privacy import edge_rand, lap_graph

for _name in ("fedgcl_karate", "fedgcl_sbm", "fedgcl_drosophila", "fedgcl_mice", "fedgcl_planetoid"):
    register_dataset(_name, "jaxgen.projects.fedgcl.data")

__all__ = ["edge_rand", "lap_graph"]

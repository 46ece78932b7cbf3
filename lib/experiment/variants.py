"""The DDMs under test: the pipeline's clustering, and the control of random shards of the same sizes."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from data_schemas.cluster import ClusterAssignment
from lib.cluster.kmeans import cluster_fit_on
from lib.cluster.report import assignment_frame, cluster_report
from lib.data.split import TRAIN
from lib.experiment.context import Shared
from lib.experiment.timer import StageTimer, say
from lib.seeding import numpy_rng
from lib.train.specs import training_rows

SEMANTIC, RANDOM = "semantic", "random"


@dataclass
class Variant:
    """One DDM under test: its clustering (semantic, or random shards of the same sizes)."""

    name: str
    assignments: pd.DataFrame
    centroids: np.ndarray
    note: str
    ami: dict[str, float] = field(default_factory=dict)  # the clusters' AMI with each attribute (semantic only)


def semantic_variant(ctx: Shared, timer: StageTimer) -> Variant:
    """The pipeline's clustering, fitted on the train clips; held-out clips assigned to it."""
    cfg = ctx.cfg
    roles = ctx.index["role"].to_numpy()
    with timer("cluster"):
        result = cluster_fit_on(ctx.embeddings, roles == TRAIN, cfg.cluster, cfg.seed)
        attrs = ctx.attributes.set_index("clip_id").loc[ctx.index["clip_id"]].reset_index()
        report = cluster_report(
            ctx.embeddings, result, ctx.index["caption"].tolist(), attrs, cfg.seed, cfg.cluster.silhouette_sample,
            ctx.work / "clusters.png",
        )  # fmt: skip
    frame = assignment_frame(ctx.index["clip_id"].tolist(), result, roles)
    train_sizes = np.bincount(training_rows(frame)["cluster_id"], minlength=cfg.cluster.num_clusters).tolist()
    ami = ", ".join(f"{a} {v:.2f}" for a, v in report.ami.items())
    note = (
        f"semantic clusters K={cfg.cluster.num_clusters} (fitted on train clips): train sizes {train_sizes}, all "
        f"clips {report.sizes}, silhouette {report.silhouette:.3f}, AMI with attributes: {ami}"
    )
    say(note)
    return Variant(SEMANTIC, frame, result.centroids, note, dict(report.ami))


def random_variant(semantic: Variant, seed: int, k: int) -> Variant:
    """The control: the semantic train-cluster sizes with the train clips shuffled among clusters."""
    frame = semantic.assignments.copy()
    train_mask = (frame["role"] == TRAIN).to_numpy()
    labels = frame.loc[train_mask, "cluster_id"].to_numpy()
    shuffled = labels[numpy_rng(seed, "bench-random-clusters").permutation(len(labels))]
    frame.loc[train_mask, "cluster_id"] = shuffled
    # distance and fine_cluster mean nothing for random shards; the schema wants values: 0 and the shard
    frame.loc[train_mask, "distance"] = 0.0
    frame.loc[train_mask, "fine_cluster"] = shuffled
    note = f"random shards K={k}: train sizes {np.bincount(shuffled, minlength=k).tolist()} (semantic sizes, shuffled)"
    say(note)
    return Variant(RANDOM, ClusterAssignment.validate(frame), semantic.centroids, note)

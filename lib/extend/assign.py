"""Where new clips go in a grown DDM: into an existing expert's cluster, or into clusters of their own.

Why a distance threshold and not the nearest centroid: every clip has a nearest centroid, however foreign it is. A
clip of a scene family the parent never saw still lands on some expert, which never learned it; the grown DDM only
helps if such clips found new clusters. The parent's own members give the scale: their distances to their centroid
(reported beside the threshold) say what "close" means in this embedding.

Clips farther than ``extend.join_distance`` from every parent centroid are split into ``extend.new_clusters``
clusters by spherical k-means fitted on their ``train`` clips only (held-out clips are assigned, as in
``lib.cluster.kmeans.cluster_fit_on``). New clusters are numbered after the parent's: K, K+1, ...
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from data_schemas.cluster import ClusterAssignment
from lib.cluster.kmeans import ClusterInputError, assign, spherical_kmeans, validate_embeddings
from lib.config import ExtendConfig
from lib.data.split import TRAIN


@dataclass(frozen=True)
class NewClips:
    """The new clips' clusters.

    Attributes:
        assignments: ClusterAssignment rows of the new clips; ``cluster_id`` < K joins a parent expert's cluster.
        centroids: float32 [K + n, D], the parent's centroids followed by the new clusters'.
        num_parent: K.
        summary: the numbers a person checks before training (JSON-able), see ``place_new_clips``.
    """

    assignments: pd.DataFrame
    centroids: np.ndarray
    num_parent: int
    summary: dict[str, Any]

    @property
    def new_cluster_ids(self) -> list[int]:
        return list(range(self.num_parent, len(self.centroids)))


def _quantiles(values: np.ndarray) -> dict[str, float]:
    if len(values) == 0:
        return {}
    return {f"p{q}": round(float(np.percentile(values, q)), 4) for q in (5, 50, 95)}


def place_new_clips(
    x: np.ndarray,
    clip_ids: list[str],
    roles: np.ndarray,
    parent_centroids: np.ndarray,
    parent_distances: np.ndarray,
    cfg: ExtendConfig,
    niter: int,
    seed: int,
) -> NewClips:
    """Assign each new clip to a parent cluster (within ``cfg.join_distance``) or to one of the new clusters.

    Args:
        x: float32 [N, D] embeddings of the new clips, made with the parent's embedders and fitted state.
        clip_ids: the N clip ids; none may be a parent clip.
        roles: [N] split roles; only ``train`` clips fit the new centroids.
        parent_centroids: float32 [K, D], the parent DDM's centroids.
        parent_distances: the parent's training clips' distances to their own centroids (for the report).
        cfg: the ``extend`` section.
        niter, seed: k-means iterations and the run seed.

    Raises:
        ClusterInputError: no train clip is far enough for a new cluster, or fewer than ``new_clusters``.
    """
    roles = np.asarray(roles)
    labels, distances = assign(x, parent_centroids)
    to_parent = distances.copy()
    far = distances > cfg.join_distance
    far_train = far & (roles == TRAIN)
    k = len(parent_centroids)
    if far_train.sum() < cfg.new_clusters:
        raise ClusterInputError(
            f"extend: {int(far_train.sum())} new train clip(s) lie farther than extend.join_distance="
            f"{cfg.join_distance} from the parent's centroids, need >= extend.new_clusters={cfg.new_clusters} for "
            f"new experts (new clips' distances {_quantiles(to_parent)}; the parent's own members "
            f"{_quantiles(parent_distances)}): lower extend.join_distance, or the new data is not new to this DDM"
        )
    xn = validate_embeddings(x)
    new_centroids = spherical_kmeans(xn[far_train], cfg.new_clusters, niter, seed, stage="extend")
    if far.any():
        new_labels, new_distances = assign(x[far], new_centroids)
        labels[far], distances[far] = new_labels + k, new_distances
    centroids = np.concatenate([np.asarray(parent_centroids, np.float32), new_centroids]).astype(np.float32)
    assignments = ClusterAssignment.validate(
        pd.DataFrame(
            {
                "clip_id": list(clip_ids),
                "cluster_id": labels.astype(np.int64),
                "distance": distances.astype(np.float64),
                "fine_cluster": labels.astype(np.int64),  # no first stage: each cluster is its own fine cluster
                "role": roles,
            }
        )
    )
    train = roles == TRAIN
    sizes = np.bincount(labels[train], minlength=len(centroids))
    summary = {
        "join_distance": cfg.join_distance,
        "parent_member_distance": _quantiles(np.asarray(parent_distances)),
        "new_clip_distance_to_parent": _quantiles(to_parent),
        "train_clips": int(train.sum()),
        "joined_parent_clusters": {str(c): int(sizes[c]) for c in range(k) if sizes[c]},
        "new_clusters": {str(c): int(sizes[c]) for c in range(k, len(centroids))},
    }
    empty = [c for c in range(k, len(centroids)) if sizes[c] == 0]
    if empty:
        raise ClusterInputError(f"extend: new cluster(s) {empty} got no train clip; lower extend.new_clusters")
    return NewClips(assignments, centroids, k, summary)

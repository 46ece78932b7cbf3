"""The fixed, cluster-stratified prompt set that sampling and evaluation share.

Why stratified: a DDM is only as good as its weakest expert, and an unstratified draw under-samples small clusters
(the Paris 2.0 evaluation uses cluster-stratified held-out prompts). Each prompt keeps the clip it came from, so the
clip's cluster is the oracle route and its generating attributes score the video.

Determinism: clusters draw independently (one generator per cluster, ``derive_seed(seed, "prompts", cluster)``)
from a seeded permutation of their clip ids in sorted order, so the set does not depend on row order, and raising
``per_cluster`` only appends prompts to each cluster's list.
"""

from __future__ import annotations

import logging

import pandas as pd

from lib.seeding import numpy_rng

log = logging.getLogger(__name__)

PROMPT_COLUMNS = ["prompt_id", "clip_id", "caption", "cluster_id"]


def _require(table: pd.DataFrame, columns: set[str], what: str) -> None:
    missing = columns - set(table.columns)
    if missing:
        raise ValueError(f"stratified_prompts: {what} lacks column(s) {', '.join(sorted(missing))}")
    dupes = table["clip_id"][table["clip_id"].duplicated()].astype(str).tolist()
    if dupes:
        raise ValueError(f"stratified_prompts: {what} repeats clip_id(s) {dupes[:5]}")


def stratified_prompts(
    assignments: pd.DataFrame,
    index: pd.DataFrame,
    per_cluster: int,
    seed: int,
    holdout: set[str] | None = None,
) -> pd.DataFrame:
    """Pick ``per_cluster`` clips per cluster (all of them when a cluster is smaller) and take their captions.

    Args:
        assignments: cluster of every clip (columns clip_id, cluster_id), e.g. a ClusterAssignment table.
        index: caption of every clip (columns clip_id, caption), e.g. the ClipIndex.
        per_cluster: prompts wanted per cluster.
        seed: selection seed.
        holdout: when given, only these clip ids are eligible (prompts from clips held out of training).

    Returns:
        DataFrame with columns prompt_id (0..M-1), clip_id, caption, cluster_id; clusters in ascending order.
    """
    if per_cluster < 1:
        raise ValueError(f"stratified_prompts: per_cluster must be >= 1, got {per_cluster}")
    _require(assignments, {"clip_id", "cluster_id"}, "assignments")
    _require(index, {"clip_id", "caption"}, "index")
    clusters = assignments[["clip_id", "cluster_id"]].astype({"clip_id": str, "cluster_id": "int64"})
    captions = index[["clip_id", "caption"]].astype({"clip_id": str})
    table = clusters.merge(captions, on="clip_id", how="left")
    uncaptioned = table.loc[table["caption"].isna(), "clip_id"].tolist()
    if uncaptioned:
        raise ValueError(
            f"stratified_prompts: {len(uncaptioned)} assigned clip(s) have no caption, e.g. {uncaptioned[:5]}"
        )
    if holdout is not None:
        table = table[table["clip_id"].isin(set(map(str, holdout)))]

    parts = []
    for cluster_id in sorted(clusters["cluster_id"].unique()):
        rows = table[table["cluster_id"] == cluster_id].sort_values("clip_id", kind="stable")
        if len(rows) < per_cluster:
            log.warning("cluster %d: only %d eligible clip(s) for %d prompts", cluster_id, len(rows), per_cluster)
        order = numpy_rng(seed, "prompts", int(cluster_id)).permutation(len(rows))[:per_cluster]
        parts.append(rows.iloc[order])
    chosen = pd.concat(parts, ignore_index=True)
    if chosen.empty:
        raise ValueError("stratified_prompts: no eligible clip in any cluster (is the holdout set disjoint?)")
    chosen.insert(0, "prompt_id", range(len(chosen)))
    chosen["caption"] = chosen["caption"].astype(str)
    return chosen.astype({"prompt_id": "int64"})[PROMPT_COLUMNS]

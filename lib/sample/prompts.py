"""The fixed prompt set that sampling and evaluation share: held-out clips, stratified by cluster in proportion.

Why held out: prompts are the captions of ``prompt``-role clips (lib.data.split), which no model trained on, and
those clips are the ``real`` method: a generator is asked for videos it never saw.

Why proportional stratification: the generated set is compared with a reference set drawn from the data's own
distribution, so the prompts must follow the same cluster proportions; a draw with equal counts per cluster would
move every method (and the real clips) away from the reference by construction. Allocating by largest remainder
keeps every cluster's share within one prompt of its exact value, which a plain random draw does not guarantee.

Determinism: clusters draw independently (one generator per cluster, ``numpy_rng(seed, "prompts", cluster)``) from
a seeded permutation of their clip ids in sorted order, so the set does not depend on row order.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from lib.config import load_config
from lib.data.ingest import ingest
from lib.data.split import PROMPT, ROLES, rows_with_role
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


def proportional_counts(sizes: np.ndarray, total: int) -> np.ndarray:
    """Split ``total`` over groups in proportion to ``sizes`` (largest remainder; never more than a group has)."""
    sizes = np.asarray(sizes, dtype=np.int64)
    total = min(int(total), int(sizes.sum()))
    exact = sizes * total / max(int(sizes.sum()), 1)
    counts = np.floor(exact).astype(np.int64)
    for i in np.argsort(-(exact - counts), kind="stable")[: total - int(counts.sum())]:
        counts[i] += 1
    return np.minimum(counts, sizes)


def stratified_prompts(
    assignments: pd.DataFrame, index: pd.DataFrame, num_prompts: int, seed: int, role: str = PROMPT
) -> pd.DataFrame:
    """Pick ``num_prompts`` clips of one role (0: all of them), clusters in proportion to their share of the role.

    Args:
        assignments: ClusterAssignment rows (clip_id, cluster_id, role).
        index: caption of every clip (columns clip_id, caption), e.g. the ClipIndex.
        num_prompts: prompts wanted; 0 takes every clip of the role. More than the role holds is an error.
        seed: selection seed.
        role: which held-out role the prompts come from (``prompt`` for test scores, ``validation`` for tuning).

    Returns:
        DataFrame with columns prompt_id (0..M-1), clip_id, caption, cluster_id; clusters in ascending order.
    """
    if num_prompts < 0:
        raise ValueError(f"stratified_prompts: num_prompts must be >= 0, got {num_prompts}")
    if role not in ROLES or role == "train":
        raise ValueError(f"stratified_prompts: prompts come from a held-out role, not {role!r}")
    _require(assignments, {"clip_id", "cluster_id", "role"}, "assignments")
    _require(index, {"clip_id", "caption"}, "index")
    pool = rows_with_role(assignments, role)[["clip_id", "cluster_id"]].astype({"clip_id": str, "cluster_id": "int64"})
    table = pool.merge(index[["clip_id", "caption"]].astype({"clip_id": str}), on="clip_id", how="left")
    uncaptioned = table.loc[table["caption"].isna(), "clip_id"].tolist()
    if uncaptioned:
        raise ValueError(f"stratified_prompts: {len(uncaptioned)} clip(s) have no caption, e.g. {uncaptioned[:5]}")
    if table.empty:
        raise ValueError(f"stratified_prompts: no clip has role {role!r} (see data.*_fraction)")
    wanted = num_prompts or len(table)
    if wanted > len(table):
        raise ValueError(
            f"stratified_prompts: {wanted} prompts asked but only {len(table)} clips have role {role!r}; raise "
            f"data.num_clips or data.{role}_fraction, or lower the prompt count"
        )
    clusters = sorted(table["cluster_id"].unique())
    counts = proportional_counts(np.array([(table["cluster_id"] == c).sum() for c in clusters]), wanted)
    parts = []
    for cluster_id, count in zip(clusters, counts, strict=True):
        rows = table[table["cluster_id"] == cluster_id].sort_values("clip_id", kind="stable")
        parts.append(rows.iloc[numpy_rng(seed, "prompts", int(cluster_id)).permutation(len(rows))[:count]])
    chosen = pd.concat(parts, ignore_index=True)
    chosen.insert(0, "prompt_id", range(len(chosen)))
    chosen["caption"] = chosen["caption"].astype(str)
    log.info("prompts: %d from role %s, per cluster %s", len(chosen), role, counts.tolist())
    return chosen.astype({"prompt_id": "int64"})[PROMPT_COLUMNS]


def run_prompt_clips(run: str | Path) -> pd.DataFrame:
    """Every prompt-role clip of a finished run (its ``output_dir``) with its caption and generating attributes, for
    scripts that score the run's models on its held-out prompts: the run's data re-ingested from its resolved
    ``results/config.yaml`` (built-in data are a function of their config and seed)."""
    cfg = load_config(Path(run) / "results" / "config.yaml")
    with tempfile.TemporaryDirectory() as tmp:
        data = ingest(cfg.data, cfg.seed, Path(tmp))
    prompts = data.index.loc[data.index["role"] == PROMPT, ["clip_id", "caption"]]
    return prompts.merge(data.attributes, on="clip_id").reset_index(drop=True)

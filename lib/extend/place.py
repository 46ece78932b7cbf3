"""The new data of a grown DDM placed on its parent: embedded as the parent embedded its clips, assigned to a parent
cluster or to new ones (``lib.extend.assign``), and specced: one expert per new cluster, and one continued expert per
joined parent cluster when ``extend.continue_steps`` > 0.

Why the parent's embedders and fitted state, not the config's: the parent's centroids live in the parent's embedding
space; clips embedded any other way would be compared with centroids they were never measured against.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from safetensors.numpy import save_file

from lib.cluster.embedders import compute_embeddings
from lib.config import RunConfig
from lib.encode.store import load_encoded, read_codec_info
from lib.extend.assign import NewClips, place_new_clips
from lib.extend.grow import ParentDDM, check_same_codec
from lib.io import atomic_write
from lib.train.specs import ExpertSpec, continue_specs, expert_specs, training_rows


@dataclass(frozen=True)
class Extension:
    """The new data's placement and what trains on it.

    Attributes:
        placed: the new clips' clusters and all centroids (``lib.extend.assign.NewClips``).
        specs: one expert spec per new cluster.
        continued: one spec per parent expert whose cluster new clips joined (none when ``extend.continue_steps`` is 0).
    """

    placed: NewClips
    specs: list[ExpertSpec]
    continued: list[ExpertSpec]

    def lines(self, cfg: RunConfig) -> list[str]:
        """What a run prints about the placement before it trains."""
        out = [f"extend: placement {json.dumps(self.placed.summary)}"]
        if self.continued:
            out.append(f"extend: continuing {[s.name for s in self.continued]} for {cfg.extend.continue_steps} steps "
                       "each on their parent and joined train clips")  # fmt: skip
        return out


def place_extension(
    cfg: RunConfig,
    parent: ParentDDM,
    parent_assignments: pd.DataFrame,
    shards: Path,
    encoded: Path,
    index: pd.DataFrame,
) -> Extension:
    """Embed the new clips with the parent's embedders and fitted state, assign them (join or new cluster), and spec
    what trains on them.

    Args:
        cfg: the run config (its ``extend`` section, ``cluster.niter`` and ``seed``).
        parent: the parent DDM (``lib.extend.grow.read_parent``).
        parent_assignments: the parent run's ClusterAssignment table.
        shards: the new data's clip shards folder.
        encoded: the new data's encoded folder, checked to use the parent's codec.
        index: the new data's ClipIndex; its clip ids must all be new.
    """
    check_same_codec(parent, read_codec_info(encoded), cfg.encode)
    clash = sorted(set(index["clip_id"]) & set(parent_assignments["clip_id"]))
    if clash:
        raise ValueError(f"extend: {len(clash)} new clip id(s) are parent clips, e.g. {clash[:3]}: the new data must "
                         "be new (another extend.scenes, or a manifest of other videos)")  # fmt: skip
    cluster_cfg = dataclasses.replace(cfg.cluster, **parent.clustering)
    clip_ids = index["clip_id"].tolist()
    pooled = load_encoded(encoded, clip_ids).pooled.numpy() if "text" in cluster_cfg.embedders else None
    x, _ = compute_embeddings(cluster_cfg, shards, index, pooled_text=pooled, standard=parent.state)
    parent_train = training_rows(parent_assignments)
    placed = place_new_clips(x, clip_ids, index["role"].to_numpy(), parent.centroids,
                             parent_train["distance"].to_numpy(), cfg.extend, cfg.cluster.niter, cfg.seed)  # fmt: skip
    specs = expert_specs(cfg, placed.assignments, cluster_ids=placed.new_cluster_ids)
    continued = continue_specs(cfg, parent_assignments, placed.assignments, parent.start_weights())
    return Extension(placed, specs, continued)


def save_centroids(path: Path, placed: NewClips, parent: ParentDDM) -> Path:
    """All centroids (the parent's, then the new clusters') with the parent's embedder state: the grown DDM's
    clustering file, in the layout ``read_parent`` reads."""
    atomic_write(path, lambda tmp: save_file({"centroids": placed.centroids, **parent.state}, str(tmp)))
    return path

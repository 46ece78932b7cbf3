"""What each isolated training job gets: one ExpertSpec per cluster, plus the matched-compute monolith.

Compute matching (stated once): every model has the same architecture; each of the K experts trains
``expert.steps`` steps at ``expert.batch_size`` on its own cluster, and the monolith trains on all clusters with K
times one expert's samples, spent as ``expert.monolith_scaling`` says: ``steps`` (K x the steps at the same batch)
or ``batch`` (the same steps at K x the batch: the experts' K GPUs as one data-parallel job, same wall-clock).
Either way the experts' training FLOPs and the monolith's are identical (FLOPs are linear in the batch); the DDM also
pays for its router, which ``compute_table`` charges to it when it prints the accounting.

Only clips whose role is ``train`` (lib.data.split) are ever trained on: every function here takes the full
ClusterAssignment table and drops the held-out roles itself, so no caller can leak an evaluation clip into training.

How the experts share their K x ``expert.steps`` is ``expert.budget_split``: ``equal`` (the papers' rule, each expert
the same steps) or ``by_size`` (``split_steps``: in proportion to each cluster's train clips, so every train clip gets
the same share of samples on both sides, as in the monolith); the total, and so the matching, is the same.

A grown DDM (``lib.extend``) may also continue a parent expert (``continue_specs``): a spec with start weights
(``init_sha256``) whose clips come from two tables, the parent's and the new data's.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from lib.config import RUN_ONLY_FIELDS, ExpertConfig, RouterConfig, RunConfig
from lib.data.split import TRAIN, rows_with_role
from lib.encode.store import load_encoded
from lib.models.factory import weights_digest, weights_sha256
from lib.seeding import derive_seed
from lib.train.compute import flops_per_step, router_flops_per_step
from lib.train.trainer import TrainData

log = logging.getLogger(__name__)

MONOLITH = -1  # cluster_id of the monolith: trains on every cluster
SEED = -2  # cluster_id of the seed model the experts branch from (``expert.seed_fraction`` > 0)
ROUTER = "router"  # its row in compute_table, charged to the DDM


@dataclass(frozen=True)
class ExpertSpec:
    name: str  # "expert-00", ... or "monolith"
    cluster_id: int  # MONOLITH for the monolith
    seed: int
    num_clips: int
    data_hash: str  # hash of the clip ids this model trains on: a new clustering means a new model
    expert: ExpertConfig  # its ``steps`` and ``batch_size`` are this model's (the monolith's: see the rule above)
    # the weights training starts from (``lib.models.factory.weights_digest`` of a saved model); "": a fresh init
    init_sha256: str = ""

    def spec_hash(self) -> str:
        """Identity of the trained model; an unchanged spec with a finished model is never retrained.

        The expert config's ``RUN_ONLY_FIELDS`` (micro-batch, compile, activation checkpointing, checkpoint and log
        intervals) are left out: they change how the model trains, not what it computes. A planner may place the
        same expert on another GPU type with another micro-batch, or a retry may land there; that must find the
        finished model (or resume its checkpoints), not train it again.

        ``init_sha256`` counts only when set (another start is another model); an empty one is left out, so every
        spec from before start weights existed keeps its hash and its trained model. ``expert.budget_split`` counts
        the same way, only when not ``equal`` (it decides the steps, so it is not run-only), and
        ``expert.monolith_lr_scale`` only when not 1 (the monolith's spec carries the scaled lr and a scale of 1), and
        ``expert.seed_fraction`` only when not 0 (an expert branched from a seed also names the seed's weights in
        ``init_sha256``).
        """
        values = asdict(self)
        if not self.init_sha256:
            del values["init_sha256"]
        if self.expert.budget_split == "equal":
            del values["expert"]["budget_split"]
        if self.expert.monolith_lr_scale == 1.0:
            del values["expert"]["monolith_lr_scale"]
        if self.expert.seed_fraction == 0.0:
            del values["expert"]["seed_fraction"]
        values["expert"] = {k: v for k, v in values["expert"].items() if k not in RUN_ONLY_FIELDS}
        return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:16]


def training_rows(assignments: pd.DataFrame) -> pd.DataFrame:
    """The assignment rows models may learn from (role ``train``)."""
    return rows_with_role(assignments, TRAIN)


def clip_ids_for(spec: ExpertSpec, assignments: pd.DataFrame) -> list[str]:
    """The training clips of a spec, in a stable order."""
    rows = training_rows(assignments)
    rows = rows if spec.cluster_id in (MONOLITH, SEED) else rows[rows["cluster_id"] == spec.cluster_id]
    return sorted(rows["clip_id"].astype(str))


def _ids_hash(clip_ids: list[str]) -> str:
    return hashlib.sha256("\n".join(clip_ids).encode()).hexdigest()[:16]


def _spec(
    cfg: RunConfig, name: str, cluster_id: int, expert: ExpertConfig, clip_ids: list[str], init_sha256: str = ""
) -> ExpertSpec:
    return ExpertSpec(
        name=name,
        cluster_id=cluster_id,
        seed=derive_seed(cfg.seed, "train", name),
        num_clips=len(clip_ids),
        data_hash=_ids_hash(clip_ids),
        expert=expert,
        init_sha256=init_sha256,
    )


def split_steps(total: int, sizes: Sequence[int]) -> list[int]:
    """``total`` optimizer steps shared in proportion to ``sizes``: integers that sum exactly to ``total``, each >= 1.

    Largest-remainder rounding in integer arithmetic (no float drift): each share is its quota rounded down, and the
    steps left over go one each to the largest remainders (ties: the lower index), so every share is within one
    step of its quota. A share that rounds to 0 gets 1 step, taken from the largest share: an expert with 0 steps
    would be an untrained network in the mixture.

    Raises:
        ValueError: no sizes, a size below 1, or fewer steps than shares.
    """
    if not sizes or min(sizes) < 1:
        raise ValueError(f"split_steps: sizes must be positive clip counts, got {list(sizes)}")
    if total < len(sizes):
        raise ValueError(f"split_steps: {total} steps cannot give each of {len(sizes)} experts at least one")
    n = sum(sizes)
    shares = [total * size // n for size in sizes]
    by_remainder = sorted(range(len(sizes)), key=lambda i: (-(total * sizes[i] % n), i))
    for i in by_remainder[: total - sum(shares)]:
        shares[i] += 1
    for i, share in enumerate(shares):
        if share == 0:
            shares[max(range(len(shares)), key=shares.__getitem__)] -= 1
            shares[i] = 1
    return shares


def expert_specs(cfg: RunConfig, assignments: pd.DataFrame, cluster_ids: list[int] | None = None) -> list[ExpertSpec]:
    """One spec per cluster 0..K-1 (or per ``cluster_ids``: a grown DDM's new clusters); an empty cluster is an
    error (its expert could never be trained). Each spec's ``expert.steps`` follows ``expert.budget_split``; with
    ``expert.seed_fraction`` > 0 the experts share what the seed model left of the K x steps."""
    k = cfg.cluster.num_clusters
    assignments = training_rows(assignments)
    clusters = list(range(k) if cluster_ids is None else cluster_ids)
    ids = []
    for cluster_id in clusters:
        ids.append(sorted(assignments.loc[assignments["cluster_id"] == cluster_id, "clip_id"].astype(str)))
        if not ids[-1]:
            raise ValueError(f"cluster {cluster_id} has no training clips: cannot train expert-{cluster_id:02d}")
    total = len(clusters) * cfg.expert.steps - seed_expert_steps(cfg)
    steps = [cfg.expert.steps] * len(clusters)
    if cfg.expert.budget_split == "by_size":
        steps = split_steps(total, [len(i) for i in ids])
    elif cfg.expert.seed_fraction > 0:
        steps = split_steps(total, [1] * len(clusters))
    expert = replace(cfg.expert, monolith_lr_scale=1.0)  # the monolith's knob: not part of an expert's identity
    return [
        _spec(cfg, f"expert-{cluster_id:02d}", cluster_id, replace(expert, steps=n), clip_ids)
        for cluster_id, n, clip_ids in zip(clusters, steps, ids, strict=True)
    ]


def continue_specs(
    cfg: RunConfig, parent_assignments: pd.DataFrame, new_assignments: pd.DataFrame, start_weights: dict[int, str]
) -> list[ExpertSpec]:
    """One spec per parent cluster that new train clips joined, when ``extend.continue_steps`` > 0 (else none).

    The expert starts from its parent's weights (``start_weights``: digest per parent cluster with an expert) and
    trains ``extend.continue_steps`` steps with the run's expert config otherwise (batch, lr schedule with warm-up,
    EMA). Its clips are the cluster's parent train clips followed by the joined ones: replaying the old data keeps
    the expert from forgetting it while it learns the new. ``data_hash`` covers both lists. A joined cluster whose
    parent expert failed to train has no weights to continue; it is skipped with a warning.
    """
    steps = cfg.extend.continue_steps
    if steps == 0:
        return []
    parent, new = training_rows(parent_assignments), training_rows(new_assignments)
    joined = sorted(int(c) for c in set(new["cluster_id"]) & set(parent["cluster_id"]))
    specs = []
    for cluster_id in joined:
        if cluster_id not in start_weights:
            log.warning("extend: cluster %d has no parent expert to continue; its joined clips teach the router only",
                        cluster_id)  # fmt: skip
            continue
        ids = [sorted(rows.loc[rows["cluster_id"] == cluster_id, "clip_id"].astype(str)) for rows in (parent, new)]
        expert = replace(cfg.expert, steps=steps)
        name = f"expert-{cluster_id:02d}-continued"
        specs.append(_spec(cfg, name, cluster_id, expert, ids[0] + ids[1], start_weights[cluster_id]))
    return specs


def training_data(spec: ExpertSpec, sources: Sequence[tuple[str | Path, pd.DataFrame]]) -> TrainData:
    """A spec's training clips, loaded from each (encoded folder, ClusterAssignment table) in turn: one source for
    the pipeline's models, the parent's and the new data's for a continued expert (``continue_specs``).

    Raises:
        ValueError: the clips found are not those the spec was made for (its ``data_hash``): the tables passed are
            not the ones it was made from, which would otherwise train (and name) a model on other data.
    """
    wanted = [(folder, ids) for folder, table in sources if (ids := clip_ids_for(spec, table))]
    clip_ids = [c for _, ids in wanted for c in ids]
    if _ids_hash(clip_ids) != spec.data_hash:
        raise ValueError(
            f"{spec.name}: {len(clip_ids)} training clips found in {[str(f) for f, _ in sources]}, not the "
            f"{spec.num_clips} its spec was made for (data_hash {spec.data_hash}); the assignments passed are not "
            "the ones the spec was made from"
        )
    parts = [load_encoded(folder, ids) for folder, ids in wanted]
    return TrainData(clip_ids, *(torch.cat([getattr(p, key) for p in parts]) for key in ("latents", "tokens", "mask")))


def monolith_config(expert: ExpertConfig, k: int) -> ExpertConfig:
    """The monolith's training config: K x one expert's samples, spent as ``expert.monolith_scaling`` says.

    Its ``budget_split`` is ``equal`` and its ``seed_fraction`` 0 whatever the experts': one model has nothing to
    split or branch, and the same monolith (same spec hash) then serves every split of the experts' budget instead
    of being trained again. Its learning rate
    is ``lr x monolith_lr_scale`` (the scale then reads 1: the spec names the lr it trains with).
    """
    expert = replace(expert, budget_split="equal", lr=expert.lr * expert.monolith_lr_scale, monolith_lr_scale=1.0,
                     seed_fraction=0.0)  # fmt: skip
    if expert.monolith_scaling == "batch":
        return replace(expert, batch_size=k * expert.batch_size)
    return replace(expert, steps=k * expert.steps)


def _seed_config(cfg: RunConfig) -> ExpertConfig | None:
    """The seed model's training config: the monolith's network and batch for ``expert.seed_fraction`` of its
    steps (at least one); None at fraction 0."""
    if cfg.expert.seed_fraction == 0:
        return None
    mono = monolith_config(cfg.expert, cfg.cluster.num_clusters)
    return replace(mono, steps=max(1, round(cfg.expert.seed_fraction * mono.steps)))


def seed_spec(cfg: RunConfig, assignments: pd.DataFrame) -> ExpertSpec | None:
    """The seed model the experts branch from (branch-train-merge), or None at ``expert.seed_fraction`` 0: the
    monolith's network and batch on every train clip for that fraction of the monolith's steps."""
    seed = _seed_config(cfg)
    if seed is None:
        return None
    ids = sorted(training_rows(assignments)["clip_id"].astype(str))
    return _spec(cfg, "seed", SEED, seed, ids)


def seed_expert_steps(cfg: RunConfig) -> int:
    """The seed model's samples in expert steps (at ``expert.batch_size``): what the experts' K x steps give up."""
    seed = _seed_config(cfg)
    return 0 if seed is None else seed.steps * seed.batch_size // cfg.expert.batch_size


def branched(specs: list[ExpertSpec], seed_model: str | Path) -> list[ExpertSpec]:
    """The expert specs starting from the trained seed model in ``seed_model``: its weights' digest joins each
    spec's identity (``init_sha256``)."""
    digest = weights_digest(weights_sha256(seed_model))
    return [replace(spec, init_sha256=digest) for spec in specs]


def monolith_spec(cfg: RunConfig, assignments: pd.DataFrame) -> ExpertSpec:
    ids = sorted(training_rows(assignments)["clip_id"].astype(str))
    return _spec(cfg, "monolith", MONOLITH, monolith_config(cfg.expert, cfg.cluster.num_clusters), ids)


def compute_table(
    specs: list[ExpertSpec],
    monolith: ExpertSpec,
    in_channels: int,
    sample_shape: tuple[int, int, int],
    text_len: int,
    text_dim: int,
    router: RouterConfig,
    seed: ExpertSpec | None = None,
) -> pd.DataFrame:
    """Training compute of every model and of the two totals, side by side (a seed model counts to the DDM).

    The router is trained only for the DDM, so its row counts toward the DDM total (``router_flops_per_step``): the
    DDM spends the monolith's FLOPs plus the router's, as the papers charge it.
    """
    rows = []
    for spec in [*([seed] if seed is not None else []), *specs, monolith]:
        per_step = flops_per_step(spec.expert, in_channels, sample_shape, text_len, text_dim)
        rows.append(
            {
                "model": spec.name,
                "clips": spec.num_clips,
                "steps": spec.expert.steps,
                "batch": spec.expert.batch_size,
                "flops_per_step": per_step,
                "total_flops": per_step * spec.expert.steps,
            }
        )
    router_step = router_flops_per_step(router, in_channels, sample_shape, text_dim, len(specs))
    rows.append(
        {
            "model": ROUTER,
            "clips": sum(s.num_clips for s in specs),
            "steps": router.steps,
            "batch": router.batch_size,
            "flops_per_step": router_step,
            "total_flops": router_step * router.steps,
        }
    )
    table = pd.DataFrame(rows)
    ddm_total = table.loc[table["model"] != monolith.name, "total_flops"].sum()
    totals = pd.DataFrame(
        [
            {
                "model": "DDM total",
                "clips": sum(s.num_clips for s in specs),
                "steps": sum(s.expert.steps for s in specs),
                "batch": specs[0].expert.batch_size,
                "flops_per_step": float("nan"),
                "total_flops": ddm_total,
            },
            {
                "model": "monolith total",
                "clips": monolith.num_clips,
                "steps": monolith.expert.steps,
                "batch": monolith.expert.batch_size,
                "flops_per_step": float("nan"),
                "total_flops": table.loc[table["model"] == monolith.name, "total_flops"].sum(),
            },
        ]
    )
    return pd.concat([table, totals], ignore_index=True)


def budget_lines(
    cfg: RunConfig,
    specs: list[ExpertSpec],
    monolith: ExpertSpec,
    seed: ExpertSpec | None,
    codec_info: dict[str, Any],
) -> list[str]:
    """The compute accounting a run prints before it trains: each expert's steps under ``expert.budget_split``, the
    seed model's share, and ``compute_table`` for the latents and text of the encoded folder's ``codec_info``."""
    split = {"equal": "every expert the same steps", "by_size": "steps in proportion to each cluster's train clips"}
    steps = ", ".join(f"{s.name} {s.expert.steps}" for s in specs)
    lines = [f"expert budget ({cfg.expert.budget_split}: {split[cfg.expert.budget_split]}): {steps}"]
    if seed is not None:
        lines.append(f"seed model (expert.seed_fraction {cfg.expert.seed_fraction:g}): {seed.expert.steps} steps "
                     f"at batch {seed.expert.batch_size} on all {seed.num_clips} train clips; every expert starts "
                     "from it")  # fmt: skip
    c, t, h, w = codec_info["latent_shape"]
    text = codec_info["text_encoder"]
    table = compute_table(specs, monolith, c, (t, h, w), text["max_tokens"], text["dim"], cfg.router, seed)
    rule = {"steps": "K x expert steps at the same batch", "batch": "expert steps at K x the batch"}
    lines.append(f"compute matching (same network; monolith = {rule[cfg.expert.monolith_scaling]}; the router is "
                 "charged to the DDM):")  # fmt: skip
    lines.append(table.to_string(index=False, float_format=lambda v: f"{v:.3e}"))
    return lines

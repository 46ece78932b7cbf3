"""Training what an experiment compares: every expert of a variant, its router and the monolith, each reused by its
spec hash (a finished model is never trained twice, whichever experiment asked first)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from lib.config import replace_in
from lib.encode.store import load_encoded
from lib.experiment.context import Shared
from lib.experiment.timer import StageTimer, say
from lib.experiment.variants import Variant
from lib.io import atomic_write
from lib.sample.folder import assemble_ddm
from lib.train.router import report_line, train_router
from lib.train.specs import (
    ExpertSpec,
    branched,
    compute_table,
    expert_specs,
    monolith_spec,
    seed_spec,
    training_data,
    training_rows,
)
from lib.train.trainer import TrainResult, train


@dataclass
class Models:
    """The trained models of one (variant, training seed)."""

    variant: str
    seed: int
    ddm_dir: Path
    monolith_dir: Path | None
    train_rows: list[dict]
    compute: pd.DataFrame
    router: pd.DataFrame
    key: str  # identity of the model set (spec hashes + router key): sampled videos are cached under it


def train_spec(
    ctx: Shared, spec: ExpertSpec, assignments: pd.DataFrame, init_from: Path | None = None
) -> TrainResult:
    """The pipeline's train step for one spec (from ``init_from``'s weights when given: the seed model an expert
    branches from); a finished model with the same spec hash is reused as is."""
    data = training_data(spec, [(ctx.encoded, assignments)])
    out = ctx.work / "train" / ctx.data_key / f"{spec.name}-{spec.spec_hash()}"
    result = train(data, spec.expert, out, spec.seed, spec.name, spec_hash=spec.spec_hash(), init_from=init_from)
    state = "reused" if result.skipped else f"trained {result.steps} steps"
    loss = result.log["loss"].tail(20).mean() if len(result.log) else float("nan")
    say(f"{spec.name} (seed {spec.seed}): {state} on {spec.num_clips} clips, final loss {loss:.4f}")
    return result


def train_row(variant: str, seed: int, spec: ExpertSpec, result: TrainResult) -> dict:
    log_table = result.log
    return {
        "variant": variant,
        "training_seed": seed,
        "model": spec.name,
        "clips": spec.num_clips,
        "steps": spec.expert.steps,
        "batch": spec.expert.batch_size,
        "final_loss": float(log_table["loss"].tail(20).mean()) if len(log_table) else float("nan"),
        "s_per_step": float(log_table["seconds"].median()) if len(log_table) else float("nan"),
        "reused": result.skipped,
    }


def router_for(ctx: Shared, v: Variant, seed: int) -> tuple[Path, pd.DataFrame, str]:
    """Train (or reuse) the router of a variant and seed on its train clips; returns folder, report, key."""
    cfg = ctx.cfg
    rows = training_rows(v.assignments)
    key_src = [
        ctx.data_key,
        seed,
        dataclasses.asdict(cfg.router),
        rows["clip_id"].tolist(),
        rows["cluster_id"].tolist(),
    ]
    key = hashlib.sha256(json.dumps(key_src).encode()).hexdigest()[:16]
    out = ctx.work / "router" / f"{v.name}-s{seed}-{key}"
    report_path = out / "report.csv"
    if report_path.is_file():
        return out / "router", pd.read_csv(report_path), key
    data = load_encoded(ctx.encoded, rows["clip_id"].tolist())
    labels = torch.tensor(rows["cluster_id"].to_numpy(), dtype=torch.int64)
    k = cfg.cluster.num_clusters
    result = train_router(data.latents, data.pooled, labels, cfg.router, k, seed, out, device=ctx.device)
    atomic_write(report_path, lambda tmp: result.report.to_csv(tmp, index=False))
    return result.model_dir, result.report, key


def train_models(ctx: Shared, v: Variant, seed: int, with_monolith: bool, timer: StageTimer) -> Models:
    """Experts of ``v`` and the router under training seed ``seed`` (and the monolith when asked)."""
    cfg = replace_in(ctx.cfg, seed=seed)  # the training seed only: data, split and clusters stay the data seed's
    specs = expert_specs(cfg, v.assignments)
    mono = monolith_spec(cfg, ctx.semantic)
    branch = seed_spec(cfg, ctx.semantic)  # the seed model the experts branch from, if any
    c, t, h, w = ctx.info["latent_shape"]
    text = ctx.info["text_encoder"]
    table = compute_table(specs, mono, c, (t, h, w), text["max_tokens"], text["dim"], cfg.router, branch)
    rows, experts, start = [], {}, None
    if branch is not None:
        with timer(f"train seed model s{seed}"):
            seed_result = train_spec(ctx, branch, ctx.semantic)
            rows.append(train_row(v.name, seed, branch, seed_result))
        start = seed_result.model_dir
        specs = branched(specs, start)
    with timer(f"train {v.name} experts s{seed}"):
        for spec in specs:
            result = train_spec(ctx, spec, v.assignments, init_from=start)
            experts[spec.cluster_id] = result.model_dir
            rows.append(train_row(v.name, seed, spec, result))
    mono_dir = None
    if with_monolith:
        with timer(f"train monolith s{seed}"):
            mono_result = train_spec(ctx, mono, ctx.semantic)
            rows.append(train_row("shared", seed, mono, mono_result))
            mono_dir = mono_result.model_dir
    with timer(f"router {v.name} s{seed}"):
        router_dir, report, router_key = router_for(ctx, v, seed)
    say(f"router {v.name} s{seed} accuracy by t: {report_line(report)}")
    ddm_dir = assemble_ddm(
        ctx.work / "ddm" / f"{v.name}-s{seed}", experts, router_dir, ctx.info, v.centroids, cfg.encode
    )
    key_src = [s.spec_hash() for s in specs] + [router_key] + ([mono.spec_hash()] if with_monolith else [])
    key = hashlib.sha256(json.dumps(key_src).encode()).hexdigest()[:16]
    return Models(v.name, seed, ddm_dir, mono_dir, rows, table, report, key)

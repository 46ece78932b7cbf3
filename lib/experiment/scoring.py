"""Scoring what an experiment sampled: the evaluation network, sampling with a cache, the contact sheet and the
distances with their bootstrap replicates, as the pipeline's evaluation computes them."""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
from safetensors.numpy import load_file, save_file

from lib.config import RunConfig
from lib.data.shards import load_clips
from lib.data.split import TRAIN, VALIDATION, rows_with_role
from lib.evaluate.attrnet import AttrNet, AttrNetFeatures
from lib.evaluate.attrnet_training import fit_attrnet
from lib.evaluate.distances import score_sets
from lib.evaluate.fd_features import video_features
from lib.evaluate.report import BASELINE
from lib.experiment.context import Shared
from lib.experiment.models import Models
from lib.experiment.timer import StageTimer, say
from lib.experiment.variants import RANDOM, SEMANTIC
from lib.io import atomic_write
from lib.sample.methods import sample_prompts
from lib.sample.pipeline import DDMPipeline
from lib.sample.sheet import REAL_ROW, contact_sheet
from lib.seeding import derive_seed
from lib.train.specs import training_rows


def featnet_for(ctx: Shared, timer: StageTimer) -> tuple[AttrNet, dict]:
    """AttrNet on train clips + negatives, checked on validation clips; cached in the work folder."""
    cfg = ctx.cfg
    key = hashlib.sha256(json.dumps([ctx.data_key, cfg.evaluate.featnet_steps, cfg.seed]).encode()).hexdigest()[:12]
    folder = ctx.work / f"featnet-{key}"
    checks_path = folder / "checks.json"
    if checks_path.is_file():
        return AttrNet.from_pretrained(folder / "attrnet"), json.loads(checks_path.read_text())
    with timer("evaluation network (train clips + negatives)"):
        by_role = {
            role: ctx.attributes[ctx.attributes["clip_id"].isin(rows_with_role(ctx.index, role)["clip_id"])]
            for role in (TRAIN, VALIDATION)
        }
        videos = {role: load_clips(ctx.shards, ctx.index, rows["clip_id"].tolist()) for role, rows in by_role.items()}
        model, checks = fit_attrnet(
            videos[TRAIN], by_role[TRAIN], videos[VALIDATION], by_role[VALIDATION], cfg.evaluate.featnet_steps, cfg.seed
        )
    model.save_pretrained(folder / "attrnet")
    atomic_write(checks_path, lambda tmp: Path(tmp).write_text(json.dumps(checks, indent=1)))
    return model, checks


def sample_cached(ctx: Shared, pipe: DDMPipeline, strategy: str, prompts: pd.DataFrame, key: str) -> np.ndarray:
    """One video per prompt; cached under the model set, the prompts and the sampler settings."""
    s = ctx.cfg.sample
    src = [key, strategy, dataclasses.asdict(s), prompts.to_dict("list"), ctx.cfg.seed]
    path = ctx.work / "samples" / f"{hashlib.sha256(json.dumps(src).encode()).hexdigest()[:20]}.safetensors"
    if path.is_file():
        return load_file(str(path))["videos"]
    videos = sample_prompts(pipe, prompts, s, ctx.cfg.seed, strategy)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: save_file({"videos": np.ascontiguousarray(videos)}, str(tmp)))
    return videos


def assert_disjoint(
    index: pd.DataFrame, prompts: pd.DataFrame, reference: list[str], assignments: pd.DataFrame
) -> None:
    """The four roles are disjoint by clip id, and no model or the feature net trained on a held-out clip."""
    train_ids = set(training_rows(assignments)["clip_id"])
    val_ids = set(rows_with_role(index, VALIDATION)["clip_id"])
    sets = {"train": train_ids, "validation": val_ids, "reference": set(reference), "prompt": set(prompts["clip_id"])}
    for a, b in itertools.combinations(sets, 2):
        shared = sets[a] & sets[b]
        if shared:
            raise ValueError(f"split broken: {len(shared)} clip(s) are both {a} and {b}, e.g. {sorted(shared)[:3]}")


def distance_replicates(featnet: AttrNet, ctx: Shared, reference: list[str], videos: dict, cfg: RunConfig) -> tuple:
    """``score_sets`` on the all-prompt features exactly as ``compare_methods`` calls it, kept with its replicates.

    Same features, seed and pairs (bootstrap indices depend only on the seed and N), so the numbers equal the
    report's; the recentred replicates are what the protocol pools over training seeds.
    """
    module = AttrNetFeatures(featnet)
    ref = video_features(module, load_clips(ctx.shards, ctx.index, reference))
    gen = {m: video_features(module, v) for m, v in videos.items()}
    pairs = [(BASELINE, m) for m in gen if m != BASELINE] if BASELINE in gen else []
    seed = derive_seed(cfg.seed, "eval", -1)  # the seed's name predates the section's: numbers stay reproducible
    return score_sets(ref, gen, ratio_pairs=pairs, bootstrap=cfg.evaluate.bootstrap, seed=seed)


def plot_samples(ctx: Shared, videos: dict[str, np.ndarray], prompts: pd.DataFrame, path: Path) -> None:
    """Rows = real prompt clips and every method (training seed 0); columns = prompts (``lib.sample.sheet``)."""
    real = load_clips(ctx.shards, ctx.index, prompts["clip_id"].tolist())
    contact_sheet([(REAL_ROW, real), *videos.items()], prompts, path)


def sample_seed(
    ctx: Shared, models: list[Models], seed: int, prompts: pd.DataFrame, timer: StageTimer, only: list[str] | None
) -> dict:
    """The methods of one training seed (protocol: monolith + ddm:topk always; ddm:top1 and the control at seed 0);
    ``only`` restricts them (``--methods``), and the results say which protocol methods were left out."""
    sem = next(m for m in models if m.variant == SEMANTIC and m.seed == seed)
    ctrl = next((m for m in models if m.variant == RANDOM and m.seed == seed), None)
    pipe = DDMPipeline.from_pretrained(sem.ddm_dir, device=ctx.device)
    mono = DDMPipeline.from_single(sem.monolith_dir, ctx.info, device=ctx.device)
    plan = [("monolith", mono, "expert:0", sem.key), (f"ddm:{ctx.cfg.sample.strategy}", pipe, ctx.cfg.sample.strategy,
                                                       sem.key)]  # fmt: skip
    if seed == ctx.cfg.seed:
        plan += [(f"ddm:{s}", pipe, s, sem.key) for s in ctx.cfg.sample.compare_strategies]
    if ctrl is not None:
        strategy = ctx.cfg.sample.strategy
        plan.append((f"ddm:random_{strategy}", DDMPipeline.from_pretrained(ctrl.ddm_dir, device=ctx.device), strategy,
                     ctrl.key))  # fmt: skip
    videos = {}
    for name, p, strategy, key in plan:
        if only is not None and name not in only:
            continue
        with timer(f"sample {name} s{seed}"):
            t0 = time.perf_counter()
            videos[name] = sample_cached(ctx, p, strategy, prompts, key + ("-mono" if name == "monolith" else ""))
            say(f"sample {name} s{seed}: {len(prompts)} videos in {time.perf_counter() - t0:.1f} s")
    return videos

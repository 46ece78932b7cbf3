"""Router training: classify which cluster a noised latent came from, independently of the experts.

Each step draws clean latents x0 with their cluster labels, a time t (uniform or logit-normal, as configured, with
``cfg.endpoint_mass`` of the batch at exactly t = 1) and noise eps, forms x_t = (1 - t) x0 + t eps, and minimises
cross-entropy of the router's logits against the label.

Why mass at t = 1: the sampler's first step calls the router on pure noise, where only the caption can tell the
cluster and the first steps fix layout and background. A continuous t distribution never draws t = 1 itself, and a
router trained a few hundred steps on uniform t was measured confidently wrong there (benchmarks/router_endpoint.py).

No class balancing, on purpose: the DDM sampler mixes expert velocities with p(k | x_t), and the exact mixture
velocity needs the true posterior, which includes the cluster priors pi_k (p(k | x_t) ∝ pi_k p_k(x_t)). Balanced
sampling or loss weights would teach p_k(x_t) / sum_j p_j(x_t) instead and tilt every step toward small clusters.

The report is measured on held-out clips (a seeded split), with several noise draws per clip and t drawn uniformly
inside each of ``cfg.t_buckets`` equal buckets of [0, 1], then at exactly each t of ``cfg.report_t``; beside them
stands a caption-only classifier (logistic regression on the pooled caption, fitted on the same train clips, scored
on the same held-out clips): at t = 1 the router can do no better, and should do no worse.
"""

from __future__ import annotations

import dataclasses
import html
import json
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from data_schemas.router import BUCKET, CAPTION_ONLY, EXACT, RouterReport
from lib.config import RouterConfig
from lib.encode.store import load_encoded
from lib.io import atomic_write
from lib.models.router import RouterModel
from lib.progress import progress
from lib.seeding import derive_seed
from lib.train.trainer import flow_matching_batch, sample_timesteps

log = logging.getLogger(__name__)

ECE_BINS = 10  # confidence bins of the expected calibration error
CAPTION_MAX_ITER = 2000  # lbfgs iterations of the caption-only classifier (it converges in far fewer on our data)
TRAINING_INFO = "training.json"  # written next to the router's config.json: how it was trained


@dataclass(frozen=True)
class RouterResult:
    """What ``train_router`` produced.

    Attributes:
        model_dir: ``save_pretrained`` folder of the router (loads with ``RouterModel.from_pretrained``).
        report: RouterReport table: one row per t bucket, one per exact t of ``cfg.report_t``, one caption-only row.
        losses: training cross-entropy per step.
        eval_indices: positions (into the input tensors) of the held-out clips the report was measured on.
    """

    model_dir: Path
    report: pd.DataFrame
    losses: list[float]
    eval_indices: list[int]


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = ECE_BINS) -> float:
    """Top-label ECE: sum over equal-width confidence bins of |accuracy - mean confidence| x bin fraction.

    Args:
        probs: class probabilities [N, K].
        labels: true classes [N].
        n_bins: number of confidence bins over [0, 1].

    Returns:
        ECE in [0, 1].
    """
    conf, pred = probs.max(dim=1)
    correct = (pred == labels).float()
    bins = torch.clamp((conf * n_bins).long(), max=n_bins - 1)  # bin i holds conf in [i/n, (i+1)/n)
    ece = torch.zeros((), dtype=torch.float64)
    for b in range(n_bins):
        sel = bins == b
        if sel.any():
            ece += sel.double().mean() * (correct[sel].mean() - conf[sel].mean()).abs().double()
    return float(ece)


def report_line(report: pd.DataFrame) -> str:
    """The router report in one line: accuracy per t bucket, at each exact t (and the confidence at the largest),
    and the caption-only ceiling, e.g. ``[0.0,0.5) 0.90, [0.5,1.0) 0.80; exact t 0.9 0.84, 1 0.70 (mean max prob
    at 1: 0.80); caption only 0.96``."""
    kind = report[RouterReport.kind]
    buckets = report[kind == BUCKET]
    exact = report[kind == EXACT]
    caption = report[kind == CAPTION_ONLY]
    line = ", ".join(f"[{r.t_low:.1f},{r.t_high:.1f}) {r.accuracy:.2f}" for r in buckets.itertuples())
    if len(exact):
        line += "; exact t " + ", ".join(f"{r.t_low:g} {r.accuracy:.2f}" for r in exact.itertuples())
        top = exact.loc[exact[RouterReport.t_low].idxmax()]
        line += f" (mean max prob at {top[RouterReport.t_low]:g}: {top[RouterReport.mean_max_prob]:.2f})"
    if len(caption):
        line += f"; caption only {caption[RouterReport.accuracy].iloc[0]:.2f}"
    return line


def router_report_html(report: pd.DataFrame) -> str:
    """The router's Deck: what the rows mean, the one-line summary and the whole report table."""
    return "\n".join([
        "<h3>Router</h3>",
        "<p>Accuracy, top-label ECE and mean max probability of p(cluster | x_t, t, caption) on held-out train-split "
        "clips: per t bucket, at exact t (t = 1 is pure noise, the sampler's first step) and, beside them, a "
        "caption-only classifier on the same clips, the most the router can reach at t = 1.</p>",
        f"<p>{html.escape(report_line(report))}</p>",
        report.to_html(index=False, float_format=lambda v: f"{v:.3f}"),
    ])  # fmt: skip


def _check_inputs(latents: torch.Tensor, pooled: torch.Tensor, labels: torch.Tensor, num_clusters: int) -> None:
    if latents.ndim != 5 or not latents.is_floating_point():
        raise ValueError(f"train_router: latents must be a float [N, C, T, H, W] tensor, got {tuple(latents.shape)}")
    n = latents.shape[0]
    if pooled.ndim != 2 or pooled.shape[0] != n:
        raise ValueError(f"train_router: pooled must be [N={n}, D], got {tuple(pooled.shape)}")
    if labels.shape != (n,) or labels.dtype != torch.int64:
        raise ValueError(f"train_router: labels must be int64 [N={n}], got {labels.dtype} {tuple(labels.shape)}")
    if num_clusters < 1:
        raise ValueError(f"train_router: num_clusters must be >= 1, got {num_clusters}")
    if n and (labels.min() < 0 or labels.max() >= num_clusters):
        raise ValueError(f"train_router: labels must lie in [0, {num_clusters}), got [{labels.min()}, {labels.max()}]")


def _split(n: int, eval_fraction: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded held-out split: (train positions, eval positions), both non-empty."""
    if not 0.0 < eval_fraction < 1.0:
        raise ValueError(f"train_router: eval_fraction must lie in (0, 1), got {eval_fraction}")
    if n < 2:
        raise ValueError(f"train_router: needs at least 2 clips (one to train, one to evaluate), got {n}")
    n_eval = min(max(1, round(n * eval_fraction)), n - 1)
    perm = torch.randperm(n, generator=generator)
    return perm[n_eval:], perm[:n_eval].sort().values


def _save(model: RouterModel, target: Path, info: dict) -> None:
    """save_pretrained into a temporary sibling folder, then rename: a retry never sees half a checkpoint."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        atomic_write(tmp / TRAINING_INFO, lambda p: p.write_text(json.dumps(info, indent=2, sort_keys=True)))
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def router_timesteps(n: int, cfg: RouterConfig, generator: torch.Generator) -> torch.Tensor:
    """Training times of one router batch, float [n]: ``cfg.timestep_sampling``, then the first
    round(``cfg.endpoint_mass`` x n) set to exactly 1.

    A fixed count rather than a coin per sample keeps every batch's share at the configured mass (the batch rows are
    drawn at random, so which rows get t = 1 does not matter); the same generator state gives the same times.
    """
    t = sample_timesteps(n, cfg.timestep_sampling, generator)
    t[: round(cfg.endpoint_mass * n)] = 1.0
    return t


@torch.no_grad()
def _router_probs(
    model: RouterModel,
    latents: torch.Tensor,
    pooled: torch.Tensor,
    draw_t: Callable[[int], torch.Tensor],
    draws: int,
    generator: torch.Generator,
    batch_size: int,
) -> torch.Tensor:
    """Router probabilities [draws x N, K] on x_t of the clean ``latents``, t from ``draw_t(batch)``, fresh noise."""
    device = next(model.parameters()).device
    probs = []
    for _ in range(draws):
        for start in range(0, latents.shape[0], batch_size):
            x0 = latents[start : start + batch_size]
            t = draw_t(x0.shape[0])
            eps = torch.randn(x0.shape, generator=generator)
            x_t, _ = flow_matching_batch(x0, t, eps)
            logits = model(x_t.to(device), t.to(device), pooled[start : start + batch_size].to(device))
            probs.append(logits.float().softmax(dim=1).cpu())
    return torch.cat(probs)


def _row(kind: str, t_low: float, t_high: float, probs: torch.Tensor, labels: torch.Tensor) -> dict:
    """One RouterReport row from class probabilities [N, K] and true classes [N]."""
    return {
        RouterReport.kind: kind,
        RouterReport.t_low: t_low,
        RouterReport.t_high: t_high,
        RouterReport.accuracy: float((probs.argmax(dim=1) == labels).float().mean()),
        RouterReport.ece: expected_calibration_error(probs, labels),
        RouterReport.mean_max_prob: float(probs.max(dim=1).values.mean()),
        RouterReport.n: int(labels.numel()),
    }


def evaluate_router(
    model: RouterModel,
    latents: torch.Tensor,
    pooled: torch.Tensor,
    labels: torch.Tensor,
    t_buckets: int,
    draws: int,
    generator: torch.Generator,
    batch_size: int = 256,
    exact_t: Sequence[float] = (),
) -> pd.DataFrame:
    """Accuracy, calibration and confidence of the router per equal t bucket of [0, 1] and at each exact t.

    Args:
        model: the router.
        latents: clean held-out latents [N, C, T, H, W].
        pooled: their pooled text vectors [N, D].
        labels: their clusters [N].
        t_buckets: number of equal-width buckets of [0, 1].
        draws: noise draws (each with its own t inside the bucket) per clip and bucket or exact t.
        generator: source of the draws.
        batch_size: router batch size for the evaluation forward passes.
        exact_t: times to report on their own (``exact`` rows), every draw at exactly that t.

    Returns:
        RouterReport table without the caption-only row: buckets in increasing t, then ``exact_t`` in the given order.
    """
    model.eval()
    targets = labels.repeat(draws)  # _router_probs runs the clips in order once per draw
    rows = []
    for b in range(t_buckets):
        t_low, t_high = b / t_buckets, (b + 1) / t_buckets

        def in_bucket(m: int, lo: float = t_low, hi: float = t_high) -> torch.Tensor:
            return lo + (hi - lo) * torch.rand(m, generator=generator)

        probs = _router_probs(model, latents, pooled, in_bucket, draws, generator, batch_size)
        rows.append(_row(BUCKET, t_low, t_high, probs, targets))
    for t in exact_t:
        probs = _router_probs(model, latents, pooled, lambda m, t=t: torch.full((m,), float(t)), draws, generator,
                              batch_size)  # fmt: skip
        rows.append(_row(EXACT, float(t), float(t), probs, targets))
    return RouterReport.validate(pd.DataFrame(rows), lazy=True)


def caption_only_row(
    pooled_train: torch.Tensor,
    labels_train: torch.Tensor,
    pooled_eval: torch.Tensor,
    labels_eval: torch.Tensor,
    num_clusters: int,
) -> dict:
    """The ceiling of the router at t = 1, as a RouterReport ``caption_only`` row.

    At t = 1, x_t is pure noise and the router's only information is the pooled caption, so a good classifier of
    the caption alone bounds what the router can reach there. A logistic regression on standardised pooled vectors
    (deterministic: lbfgs, no sampling) is fitted on the router's train clips and scored on its held-out clips.

    Args:
        pooled_train: pooled caption vectors of the train clips [N_train, D].
        labels_train: their clusters [N_train].
        pooled_eval: pooled caption vectors of the held-out clips [N_eval, D].
        labels_eval: their clusters [N_eval].
        num_clusters: K; probabilities of clusters absent from the train clips are 0.

    Returns:
        The row (kind ``caption_only``, t_low = t_high = 1).
    """
    x_train, y_train = pooled_train.double().numpy(), labels_train.numpy()
    seen = np.unique(y_train)
    probs = np.zeros((len(labels_eval), num_clusters))
    if len(seen) == 1:  # one class: nothing to fit, the caption can only name it
        probs[:, seen[0]] = 1.0
    else:
        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=CAPTION_MAX_ITER))
        clf.fit(x_train, y_train)
        probs[:, seen] = clf.predict_proba(pooled_eval.double().numpy())
    return _row(CAPTION_ONLY, 1.0, 1.0, torch.from_numpy(probs).float(), labels_eval)


def train_router(
    latents: torch.Tensor,
    pooled: torch.Tensor,
    labels: torch.Tensor,
    cfg: RouterConfig,
    num_clusters: int,
    seed: int,
    out_dir: str | Path,
    eval_fraction: float = 0.1,
    eval_draws: int = 4,
    device: str | torch.device = "cpu",
) -> RouterResult:
    """Train the router on (x_t, t, pooled) -> cluster, report it per t bucket, at exact t and beside the caption-only
    ceiling, save it under ``out_dir/router``.

    Deterministic: the split, the initial weights, every batch, t and noise come from generators seeded with
    ``derive_seed(seed, "router", ...)``; the same inputs and seed on CPU give identical weights and report.

    Args:
        latents: clean latents [N, C, T, H, W], float.
        pooled: pooled text vectors [N, D].
        labels: cluster of each clip, int64 [N] in [0, num_clusters).
        cfg: router section of the run config (sizes, steps, batch, lr, timestep sampling and endpoint mass, t buckets
            and exact t of the report).
        num_clusters: K, the number of logits.
        seed: run seed.
        out_dir: folder that receives ``router/`` (config.json + safetensors + training.json).
        eval_fraction: fraction of clips held out for the report.
        eval_draws: noise draws per held-out clip and t bucket.
        device: where the router trains.

    Returns:
        RouterResult.
    """
    _check_inputs(latents, pooled, labels, num_clusters)
    gen = torch.Generator().manual_seed(derive_seed(seed, "router"))
    train_idx, eval_idx = _split(latents.shape[0], eval_fraction, gen)
    with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's global RNG
        torch.manual_seed(derive_seed(seed, "router", "init"))
        model = RouterModel(
            in_channels=latents.shape[1],
            sample_shape=list(latents.shape[2:]),
            patch_size=list(cfg.patch_size),
            text_dim=pooled.shape[1],
            hidden_dim=cfg.hidden_dim,
            num_layers=cfg.num_layers,
            num_heads=cfg.num_heads,
            num_clusters=num_clusters,
        ).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    log_every = max(1, cfg.steps // 10)
    losses: list[float] = []
    model.train()
    for step in progress(range(cfg.steps), desc="router", unit="step"):
        pick = train_idx[torch.randint(len(train_idx), (cfg.batch_size,), generator=gen)]
        x0, y = latents[pick], labels[pick]
        t = router_timesteps(cfg.batch_size, cfg, gen)
        eps = torch.randn(x0.shape, generator=gen)
        x_t, _ = flow_matching_batch(x0, t, eps)
        logits = model(x_t.to(device), t.to(device), pooled[pick].to(device))
        loss = F.cross_entropy(logits.float(), y.to(device))
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"train_router: loss is {loss.item()} at step {step}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if step % log_every == 0 or step == cfg.steps - 1:
            log.info("router step %d/%d loss %.4f", step + 1, cfg.steps, loss.item())

    eval_gen = torch.Generator().manual_seed(derive_seed(seed, "router", "eval"))
    report = evaluate_router(
        model, latents[eval_idx], pooled[eval_idx], labels[eval_idx], cfg.t_buckets, eval_draws, eval_gen,
        exact_t=cfg.report_t,
    )  # fmt: skip
    ceiling = caption_only_row(pooled[train_idx], labels[train_idx], pooled[eval_idx], labels[eval_idx], num_clusters)
    report = RouterReport.validate(pd.concat([report, pd.DataFrame([ceiling])], ignore_index=True), lazy=True)
    info = {
        "timestep_sampling": cfg.timestep_sampling,
        "endpoint_mass": cfg.endpoint_mass,
        "steps": cfg.steps,
        "batch_size": cfg.batch_size,
        "lr": cfg.lr,
        "seed": seed,
        "num_train": len(train_idx),
        "num_eval": len(eval_idx),
        "final_loss": losses[-1] if losses else None,
        "class_balancing": "none (the sampler needs the true posterior, priors included)",
    }
    model_dir = Path(out_dir) / "router"
    _save(model.cpu(), model_dir, info)
    return RouterResult(model_dir=model_dir, report=report, losses=losses, eval_indices=eval_idx.tolist())


def fit_router(
    parts: Sequence[tuple[str | Path, pd.DataFrame]], cfg: RouterConfig, num_clusters: int, seed: int, out_dir: Path
) -> RouterResult:
    """``train_router`` on the clips of one or more encoded folders, in order: the pipeline's router on its train
    clips, a grown DDM's on the parent's and the new data's.

    Args:
        parts: (encoded folder, train rows of its ClusterAssignment table) pairs; the rows' ``cluster_id`` are the
            labels.
    """
    data = [load_encoded(folder, rows["clip_id"].tolist()) for folder, rows in parts]
    labels = torch.tensor(np.concatenate([rows["cluster_id"].to_numpy() for _, rows in parts]), dtype=torch.int64)
    if len(data) == 1:  # used as loaded: a copy would double the router task's memory
        latents, pooled = data[0].latents, data[0].pooled
    else:
        latents, pooled = torch.cat([d.latents for d in data]), torch.cat([d.pooled for d in data])
    return train_router(latents, pooled, labels, cfg, num_clusters, seed, out_dir)


def tracked_router(
    result: RouterResult, cfg: RouterConfig, num_clusters: int, seed: int, train_clips: int
) -> tuple[dict[str, Any], list[dict[str, float]]]:
    """The router's MLflow params and metric rows (``lib.tracking.Tracker.record_model``): the loss per step, the
    accuracy per t bucket (the bucket's index as its step) and, at step 0, the accuracy, ECE and mean max
    probability of each exact-t and caption-only row."""
    params = {"router": dataclasses.asdict(cfg), "num_clusters": num_clusters, "seed": seed, "train_clips": train_clips}
    curve = [{"step": i + 1, "loss": loss} for i, loss in enumerate(result.losses)]
    kind = result.report[RouterReport.kind]
    buckets = [{"step": i, "accuracy_by_t_bucket": r.accuracy}
               for i, r in enumerate(result.report[kind == BUCKET].itertuples())]  # fmt: skip
    points = {f"{r.kind}_{metric}_t{r.t_low:g}": getattr(r, metric)
              for r in result.report[kind != BUCKET].itertuples()
              for metric in ("accuracy", "ece", "mean_max_prob")}  # fmt: skip
    return params, curve + buckets + [{"step": 0, **points}]

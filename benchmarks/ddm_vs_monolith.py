"""Headline benchmark: a K-expert decentralized diffusion model against a monolith at matched training compute.

What it measures (issue 9): on the built-in dataset, K = 3 experts trained in isolation on semantic clusters
(+ a router) against one monolith trained on all the data with K x one expert's training samples (same network;
``expert.monolith_scaling`` spends them as K x the steps or K x the batch; ``compute_table`` prints the
accounting). Ablations on the same trained models:
routing top-1, top-k, the full ensemble, the oracle cluster and every expert alone. A control DDM whose experts
train on random shards (the semantic cluster sizes, clips shuffled) tells whether the gain comes from the
semantic split or from ensembling. ``--sweep-k`` adds semantic K = 2 and 4 at the same total budget.

It chains the pipeline's own ``lib`` calls in the pipeline's order (ingest -> encode -> embed -> cluster ->
experts / monolith / router -> assemble -> sample -> evaluate), so it measures the product, not a copy of it.

Evaluation protocol, fixed by the config before any model trains (printed first, and written to protocol.md):
every method is sampled on the same cluster-stratified prompt set (stratified by the semantic K clusters) with
the same paired seeds, ``eval.draws`` draws each; Fréchet distance ``fd_attrnet`` (or ``fvd_i3d`` with an I3D
file) against ``eval.num_real`` real clips disjoint from the prompt clips, prompt-attribute accuracy and motion,
as ``lib.evaluate.compare.compare_methods`` computes them; mean ± sd over draws. The FD ratio monolith/method
carries an sd propagated from both sds (first order, draws treated as independent). The random-shard and
sweep DDMs get their own router and their own oracle labels of the prompt clips; their scores use the same
prompts, reference set and per-cluster grouping (semantic K clusters) as everything else.

Compute matching across K: the budget is ``cluster.num_clusters x expert.steps x expert.batch_size`` training
samples; a DDM with K experts gives each ``budget / K`` of them (as fewer steps under ``monolith_scaling: steps``,
as a smaller batch under ``batch``), so every DDM shares the one monolith (trained once, then reused: the
trainer skips a finished model with the same spec hash, which also makes reruns of this script cheap).

Uncertainty: sd is over sampling draws of one trained set of models (one training seed, ``seed`` of the config);
training-seed variance is not measured at this size.

Usage::

    python benchmarks/ddm_vs_monolith.py --config configs/bench.yaml --out benchmarks/results
    python benchmarks/ddm_vs_monolith.py --smoke --threads 1   # tiny sizes, end to end in about a minute
    python benchmarks/ddm_vs_monolith.py --sweep-k             # also K = 2, 4 (semantic, matched compute)

``--threads 1`` on a busy 2-core machine: torch's 2 threads slow down ~10x when another process holds a core.

Outputs under ``--out``: protocol.md, summary.md (machine, command, stage timings, every table), headline.md/.csv,
eval_report.csv (every EvalReport row with its variant), fd_ratios.png, samples.png.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import platform
import shlex
import shutil
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from the repository root

from data_schemas.cluster import ClusterAssignment  # noqa: E402
from lib.cluster.embedders import compute_embeddings  # noqa: E402
from lib.cluster.kmeans import cluster_embeddings  # noqa: E402
from lib.cluster.report import assignment_frame, cluster_report  # noqa: E402
from lib.config import RunConfig, load_config, replace_in, with_overrides  # noqa: E402
from lib.data.ingest import ingest  # noqa: E402
from lib.data.shards import load_clips  # noqa: E402
from lib.encode.store import encode_dataset, load_encoded, read_codec_info  # noqa: E402
from lib.evaluate.compare import compare_methods  # noqa: E402
from lib.evaluate.featnet import AttrNet, chance_accuracy, fit_attrnet  # noqa: E402
from lib.sample.methods import sample_methods  # noqa: E402
from lib.sample.pipeline import DDMPipeline, assemble_ddm  # noqa: E402
from lib.sample.prompts import stratified_prompts  # noqa: E402
from lib.seeding import numpy_rng  # noqa: E402
from lib.train.router import train_router  # noqa: E402
from lib.train.specs import ExpertSpec, clip_ids_for, compute_table, expert_specs, monolith_spec  # noqa: E402
from lib.train.trainer import TrainData, TrainResult, train  # noqa: E402

SHARED = "shared"  # variant of the rows every DDM shares (monolith, real)
ROUTED = ("top1", "topk", "full")  # strategies a deployed DDM can use (oracle needs the true cluster)
GRID_PROMPTS, GRID_FRAMES, GRID_SCALE = 4, 4, 3
BUSY_LOAD = 1.5  # 1-minute load average above which torch's multi-threading on a 2-core machine collapses

# --smoke: every stage runs on tiny sizes (same network, same code paths) to check the script end to end.
SMOKE = {
    "output_dir": "outputs/bench-smoke",
    "data": {"num_clips": 240},
    "cluster": {"fine_clusters": 8, "silhouette_sample": 200},
    "expert": {"steps": 4, "warmup_steps": 1, "checkpoint_every": 100, "log_every": 2},
    "router": {"steps": 5},
    "sample": {"num_steps": 2, "prompts_per_cluster": 3},
    "eval": {"num_real": 48, "draws": 2, "featnet_steps": 30},
}


def say(text: str) -> None:
    print(text, flush=True)


class StageTimer:
    """Wall time per named stage (a stage entered twice adds up)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.start = time.perf_counter()

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            dt = time.perf_counter() - t0
            self.seconds[name] = self.seconds.get(name, 0.0) + dt
            say(f"[time] {name}: {dt:.1f} s")

    def total(self) -> float:
        return time.perf_counter() - self.start


@dataclass
class Shared:
    """Everything computed once and used by every variant."""

    cfg: RunConfig
    work: Path
    device: str
    shards: Path
    index: pd.DataFrame
    attributes: pd.DataFrame
    encoded: Path
    info: dict
    embeddings: np.ndarray
    featnet: AttrNet | None
    featnet_note: str
    data_key: str  # hash of the data + encode config: models trained on other data are never reused
    semantic: pd.DataFrame = field(default_factory=pd.DataFrame)
    prompts: pd.DataFrame = field(default_factory=pd.DataFrame)


@dataclass
class Variant:
    """One DDM under test: its clustering and the config with its K and per-expert training budget."""

    name: str
    cfg: RunConfig
    assignments: pd.DataFrame
    centroids: np.ndarray | None
    notes: list[str] = field(default_factory=list)


@dataclass
class VariantResult:
    name: str
    k: int
    report: pd.DataFrame
    videos: dict[str, list[np.ndarray]]
    compute: pd.DataFrame
    router: pd.DataFrame
    train_rows: list[dict]
    notes: list[str]


# ----------------------------------------------------------------------------------------------------- setup


def bench_config(path: str, smoke: bool, overrides: list[str]) -> RunConfig:
    cfg = with_overrides(load_config(path), overrides)
    return replace_in(cfg, **SMOKE) if smoke else cfg


def metric_names(cfg: RunConfig) -> tuple[str, str]:
    """(Fréchet metric, alignment metric) as ``evaluate_methods`` names them for this config."""
    fd = "fvd_i3d" if cfg.eval.i3d_path else "fd_attrnet"
    return fd, ("clip_sim" if cfg.eval.clip_path else "attr_acc_attrnet")


def machine_info(device: str) -> dict:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    info = {
        "platform": platform.platform(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": device,
        "load_average_at_start": [round(v, 2) for v in os.getloadavg()],
        "python": platform.python_version(),
    }
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name()
    return info


def protocol_lines(cfg: RunConfig, sweep: list[int]) -> list[str]:
    fd, acc = metric_names(cfg)
    k, s = cfg.cluster.num_clusters, cfg.sample
    strategies = [s.strategy] + [x for x in s.compare_strategies if x != s.strategy]
    return [
        f"- data: built-in procedural dataset ({'themed' if cfg.data.themed_scenes else 'shared'} scenes), "
        f"{cfg.data.num_clips} clips of {cfg.data.frames}x{cfg.data.height}x{cfg.data.width}, seed {cfg.seed}",
        f"- compute: budget {k} x {cfg.expert.steps} steps x batch {cfg.expert.batch_size} = {budget_samples(cfg)} "
        f"training samples per DDM (each of K experts gets budget / K); the monolith gets the whole budget on all "
        f"clips as {'K x the steps' if cfg.expert.monolith_scaling == 'steps' else 'K x the batch'} "
        f"(expert.monolith_scaling: {cfg.expert.monolith_scaling})",
        f"- variants: semantic-K{k}, random-K{k} (random shards with the semantic sizes)"
        + (f", semantic K in {sweep}" if sweep else ""),
        f"- prompts: {s.prompts_per_cluster} per semantic cluster ({k * s.prompts_per_cluster} planned), the same "
        "set and the same paired seeds for every method",
        f"- methods: ddm:{', ddm:'.join(strategies)} (top_k {s.top_k}), "
        + ("every single expert, " if s.single_experts else "")
        + "monolith, real (the prompt clips themselves)",
        f"- sampler: Euler {s.num_steps} steps, CFG {s.guidance_scale}, {cfg.eval.draws} draws per method",
        f"- metrics: {fd} (N real = {cfg.eval.num_real} clips disjoint from the prompt clips; N generated = number "
        f"of prompts), {acc}, motion_mad / motion_flow; mean ± sd over draws",
        f"- ratio: {fd}(monolith) / {fd}(method); headline DDM = the configured strategy ddm:{s.strategy}, and the "
        f"best of the router strategies {', '.join(ROUTED)}",
        "- goal (issue 9): ratio >= 2.0 with the best routing strategy, and DDM accuracy >= monolith accuracy",
    ]


# ------------------------------------------------------------------------------------------ shared stages


def prepare(cfg: RunConfig, work: Path, device: str, timer: StageTimer) -> Shared:
    """Ingest, encode, train the evaluation network on real clips, embed for clustering: once for all variants."""
    with timer("ingest"):
        shards = work / "shards"
        shutil.rmtree(shards, ignore_errors=True)
        result = ingest(cfg.data, cfg.seed, shards)
        say(f"ingest: {result.summary()}")
    with timer("encode"):
        encoded = work / "encoded"
        shutil.rmtree(encoded, ignore_errors=True)
        encode_dataset(shards, result.index, cfg.encode, encoded, device=device)
        info = read_codec_info(encoded)
        say(
            f"encode: latents {info['latent_shape']}, text {info['text_encoder']['name']} dim "
            f"{info['text_encoder']['dim']}"
        )
    featnet, note = None, "AttrNet not trained (no generating attributes)"
    if len(result.attributes):
        with timer("attrnet (evaluation network, real clips only)"):
            videos = load_clips(shards, result.index, result.attributes["clip_id"].tolist())
            featnet, accuracy = fit_attrnet(
                videos, result.attributes, cfg.eval.featnet_steps, cfg.eval.featnet_holdout, cfg.seed
            )
            chance = chance_accuracy()
            note = "AttrNet held-out accuracy (chance): " + ", ".join(
                f"{k} {v:.2f} ({chance[k]:.2f})" for k, v in accuracy.items()
            )
            say(note)
    with timer("embed"):
        clip_ids = result.index["clip_id"].tolist()
        pooled = load_encoded(encoded, clip_ids).pooled.numpy() if "text" in cfg.cluster.embedders else None
        x = compute_embeddings(cfg.cluster, shards, result.index, pooled_text=pooled, device=device)
    key = json.dumps([cfg.seed, dataclasses.asdict(cfg.data), dataclasses.asdict(cfg.encode)], sort_keys=True)
    data_key = hashlib.sha256(key.encode()).hexdigest()[:12]
    return Shared(cfg, work, device, shards, result.index, result.attributes, encoded, info, x, featnet, note, data_key)


def semantic_variant(ctx: Shared, k: int, budget: int, timer: StageTimer) -> Variant:
    """Cluster the embeddings into ``k`` (the pipeline's clustering) with ``budget / k`` samples per expert."""
    cfg = variant_config(ctx.cfg, k, budget)
    with timer(f"cluster K={k}"):
        result = cluster_embeddings(ctx.embeddings, cfg.cluster, cfg.seed)
        clip_ids = ctx.index["clip_id"].tolist()
        attrs = ctx.attributes.set_index("clip_id").loc[clip_ids].reset_index() if len(ctx.attributes) else None
        report = cluster_report(
            ctx.embeddings,
            result,
            ctx.index["caption"].tolist(),
            attrs,
            cfg.seed,
            cfg.cluster.silhouette_sample,
            ctx.work / f"clusters-K{k}.png",
        )
    ami = ", ".join(f"{a} {v:.2f}" for a, v in report.ami.items())
    note = (
        f"clusters K={k}: sizes {report.sizes}, size ratio {report.size_ratio:.2f}, silhouette "
        f"{report.silhouette:.3f}, AMI with attributes: {ami}"
    )
    say(note)
    return Variant(f"semantic-K{k}", cfg, assignment_frame(clip_ids, result), result.centroids, [note])


def random_variant(semantic: Variant, seed: int) -> Variant:
    """The control: the semantic cluster sizes with the clips shuffled among clusters (no semantic structure)."""
    labels = semantic.assignments["cluster_id"].to_numpy()
    shuffled = labels[numpy_rng(seed, "bench-random-clusters").permutation(len(labels))]
    # distance and fine_cluster have no meaning for random shards; the schema wants values, so: 0 and the shard.
    frame = semantic.assignments.assign(cluster_id=shuffled, distance=0.0, fine_cluster=shuffled)
    k = semantic.cfg.cluster.num_clusters
    note = f"random shards K={k}: sizes {np.bincount(shuffled, minlength=k).tolist()} (semantic sizes, clips shuffled)"
    say(note)
    return Variant(f"random-K{k}", semantic.cfg, ClusterAssignment.validate(frame), None, [note])


def budget_samples(cfg: RunConfig) -> int:
    """Training samples of the configured DDM (and of the monolith)."""
    return cfg.cluster.num_clusters * cfg.expert.steps * cfg.expert.batch_size


def variant_config(cfg: RunConfig, k: int, budget: int) -> RunConfig:
    """``cfg`` with K experts of ``budget / k`` training samples each, so the DDM's total equals the monolith's.

    The split keeps what the monolith keeps: under ``monolith_scaling: steps`` every model has the configured
    batch and experts get fewer steps; under ``batch`` every model has the configured steps and experts get a
    smaller batch. Either way the monolith of every K is the same model.
    """
    split = "steps" if cfg.expert.monolith_scaling == "steps" else "batch_size"
    kept = cfg.expert.batch_size if split == "steps" else cfg.expert.steps
    if budget % (k * kept):
        raise ValueError(
            f"compute budget {budget} samples (cluster.num_clusters x expert.steps x expert.batch_size) does not "
            f"split into K={k} experts of whole expert.{split} (pick the config so that every swept K divides it; "
            "with K = 3: a multiple of 4 for K = 2 and 4)"
        )
    return replace_in(cfg, cluster={"num_clusters": k}, expert={split: budget // (k * kept)})


# ------------------------------------------------------------------------------------------ per variant


def train_spec(ctx: Shared, spec: ExpertSpec, assignments: pd.DataFrame) -> TrainResult:
    """The pipeline's train step for one spec; a finished model with the same spec hash is reused as is."""
    data = load_encoded(ctx.encoded, clip_ids_for(spec, assignments))
    out = ctx.work / "train" / ctx.data_key / f"{spec.name}-{spec.spec_hash()}"
    result = train(
        TrainData(data.clip_ids, data.latents, data.tokens, data.mask),
        spec.expert,
        out,
        spec.seed,
        spec.name,
        spec_hash=spec.spec_hash(),
    )
    state = "reused" if result.skipped else f"trained {result.steps} steps"
    loss = result.log["loss"].tail(20).mean() if len(result.log) else float("nan")
    say(f"{spec.name}: {state} on {spec.num_clips} clips, final loss {loss:.4f} -> {result.model_dir}")
    return result


def train_row(variant: str, spec: ExpertSpec, result: TrainResult) -> dict:
    log_table = result.log
    return {
        "variant": variant,
        "model": spec.name,
        "clips": spec.num_clips,
        "steps": spec.expert.steps,
        "final_loss": float(log_table["loss"].tail(20).mean()) if len(log_table) else float("nan"),
        "s_per_step": float(log_table["seconds"].median()) if len(log_table) else float("nan"),
        "reused": result.skipped,
    }


def prompts_for(prompts: pd.DataFrame, assignments: pd.DataFrame) -> pd.DataFrame:
    """The shared prompt set with each prompt clip's cluster under ``assignments`` (the oracle route)."""
    labels = assignments.set_index("clip_id")["cluster_id"]
    return prompts.assign(cluster_id=labels.loc[prompts["clip_id"]].to_numpy().astype("int64"))


def run_variant(ctx: Shared, v: Variant, mono: ExpertSpec, timer: StageTimer) -> VariantResult:
    cfg, k = v.cfg, v.cfg.cluster.num_clusters
    specs = expert_specs(cfg, v.assignments)
    own_mono = monolith_spec(cfg, v.assignments)
    if own_mono.spec_hash() != mono.spec_hash():
        raise ValueError(f"{v.name}: its monolith spec differs from the shared one ({own_mono} vs {mono})")
    c, t, h, w = ctx.info["latent_shape"]
    text = ctx.info["text_encoder"]
    table = compute_table(specs, mono, c, (t, h, w), text["max_tokens"], text["dim"])
    say(
        f"compute matching, {v.name} (same network; monolith_scaling {cfg.expert.monolith_scaling}; FLOPs per "
        "step from lib.train.compute):\n" + table.to_string(index=False, float_format=lambda x: f"{x:.3e}")
    )

    rows = []
    with timer(f"train {v.name} experts"):
        experts = {}
        for spec in specs:
            result = train_spec(ctx, spec, v.assignments)
            experts[spec.cluster_id] = result.model_dir
            rows.append(train_row(v.name, spec, result))
    with timer("train monolith"):
        mono_result = train_spec(ctx, mono, ctx.semantic)
        rows.append(train_row(SHARED, mono, mono_result))
    with timer(f"router {v.name}"):
        data = load_encoded(ctx.encoded, v.assignments["clip_id"].tolist())
        labels = torch.tensor(v.assignments["cluster_id"].to_numpy(), dtype=torch.int64)
        router = train_router(
            data.latents, data.pooled, labels, cfg.router, k, cfg.seed, ctx.work / "router" / v.name, device=ctx.device
        )
        say(
            f"router {v.name} accuracy per t bucket (chance {1 / k:.2f}): "
            + ", ".join(f"[{r.t_low:.1f},{r.t_high:.1f}) {r.accuracy:.2f}" for r in router.report.itertuples())
        )
    ddm_dir = assemble_ddm(ctx.work / "ddm" / v.name, experts, router.model_dir, ctx.info, v.centroids, cfg.encode)
    with timer(f"sample {v.name}"):
        pipe = DDMPipeline.from_pretrained(ddm_dir, device=ctx.device)
        mono_pipe = DDMPipeline.from_single(mono_result.model_dir, ctx.info, device=ctx.device)
        sampled = sample_methods(
            pipe,
            mono_pipe,
            prompts_for(ctx.prompts, v.assignments),
            cfg.sample,
            ctx.cfg.eval.draws,
            cfg.seed,
            ctx.work / "samples" / v.name,
        )
        n = len(ctx.prompts) * ctx.cfg.eval.draws
        say(
            f"sample {v.name}: seconds per method ({n} videos each): "
            + ", ".join(f"{m} {s:.1f}" for m, s in sampled.seconds.items())
        )
    with timer(f"evaluate {v.name}"):
        report = compare_methods(
            str(ctx.shards),
            ctx.index,
            ctx.attributes,
            ctx.semantic,
            sampled.videos,
            ctx.prompts,
            ctx.cfg.eval,
            ctx.featnet,
            ctx.cfg.seed,
        )
    shared = report["method"].isin(["monolith", "real"])
    report.insert(0, "variant", np.where(shared, SHARED, v.name))
    return VariantResult(v.name, k, report, sampled.videos, table, router.report, rows, v.notes)


# --------------------------------------------------------------------------------------------- reports


def markdown(df: pd.DataFrame) -> str:
    """A GitHub markdown table (pandas' to_markdown needs tabulate, which the project does not ship)."""
    cells = [[str(c) for c in df.columns]] + [[_cell(v) for v in row] for row in df.itertuples(index=False)]
    lines = ["| " + " | ".join(r) + " |" for r in cells]
    lines.insert(1, "|" + "|".join("---" for _ in df.columns) + "|")
    return "\n".join(lines)


def _cell(value: object) -> str:
    if isinstance(value, float):
        return "nan" if np.isnan(value) else f"{value:.4g}"
    return str(value)


def _pm(mean: float, sd: float, digits: int = 3) -> str:
    if np.isnan(mean):
        return "-"
    return f"{mean:.{digits}f}" if np.isnan(sd) else f"{mean:.{digits}f} ± {sd:.{digits}f}"


def headline_table(report: pd.DataFrame, fd: str, acc: str) -> pd.DataFrame:
    """One row per (variant, method): the all-prompt FD, its ratio monolith/method, accuracy and motion."""
    main = report[report["cluster"] == -1].set_index(["variant", "method", "metric"])

    def get(variant: str, method: str, metric: str) -> tuple[float, float]:
        key = (variant, method, metric)
        return (float(main.at[key, "mean"]), float(main.at[key, "sd"])) if key in main.index else (np.nan, np.nan)

    mono_fd, mono_sd = get(SHARED, "monolith", fd)
    rows = []
    for variant, method in dict.fromkeys(main.index.droplevel("metric")):
        m, s = get(variant, method, fd)
        ratio = mono_fd / m if m > 0 else np.nan
        ratio_sd = ratio * np.sqrt((mono_sd / mono_fd) ** 2 + (s / m) ** 2) if m > 0 else np.nan  # NaN: 1 draw
        a, a_sd = get(variant, method, acc)
        mad, mad_sd = get(variant, method, "motion_mad")
        rows.append(
            {
                "variant": variant,
                "method": method,
                f"{fd}_mean": m,
                f"{fd}_sd": s,
                "ratio_monolith_over_method": ratio,
                "ratio_sd": ratio_sd,
                f"{acc}_mean": a,
                f"{acc}_sd": a_sd,
                "motion_mad_mean": mad,
                "motion_mad_sd": mad_sd,
                "motion_flow_mean": get(variant, method, "motion_flow")[0],
            }
        )
    return pd.DataFrame(rows)


def headline_markdown(table: pd.DataFrame, fd: str, acc: str) -> str:
    view = pd.DataFrame(
        {
            "variant": table["variant"],
            "method": table["method"],
            f"{fd} (mean ± sd)": [_pm(m, s, 2) for m, s in zip(table[f"{fd}_mean"], table[f"{fd}_sd"], strict=True)],
            "ratio monolith/method": [
                _pm(m, s, 2) for m, s in zip(table["ratio_monolith_over_method"], table["ratio_sd"], strict=True)
            ],
            f"{acc} (mean ± sd)": [_pm(m, s) for m, s in zip(table[f"{acc}_mean"], table[f"{acc}_sd"], strict=True)],
            "motion_mad": [_pm(m, s, 4) for m, s in zip(table["motion_mad_mean"], table["motion_mad_sd"], strict=True)],
            "motion_flow": [f"{v:.4f}" for v in table["motion_flow_mean"]],
        }
    )
    return markdown(view)


def goal_lines(table: pd.DataFrame, base: str, strategy: str, acc: str) -> list[str]:
    """The issue's two goals, read off the semantic base variant (nothing here changes what was measured)."""
    rows = table[table["variant"] == base].set_index("method")
    mono = table[(table["variant"] == SHARED) & (table["method"] == "monolith")].iloc[0]
    routed = [f"ddm:{s}" for s in ROUTED if f"ddm:{s}" in rows.index]
    if not routed:
        return ["no router-based DDM strategy was sampled: goals not evaluated"]
    best = max(routed, key=lambda m: rows.at[m, "ratio_monolith_over_method"])
    lines = []
    for label, method in (("configured strategy", f"ddm:{strategy}"), ("best routing strategy", best)):
        if method not in rows.index:
            continue
        r, a = rows.loc[method], rows.at[method, f"{acc}_mean"]
        lines.append(
            f"{base} {label} {method}: FD ratio monolith/DDM {r['ratio_monolith_over_method']:.2f} "
            f"(goal >= 2.0: {'met' if r['ratio_monolith_over_method'] >= 2.0 else 'not met'}); {acc} {a:.3f} vs "
            f"monolith {mono[f'{acc}_mean']:.3f} (goal DDM >= monolith: "
            f"{'met' if a >= mono[f'{acc}_mean'] else 'not met'})"
        )
    return lines


def plot_ratios(table: pd.DataFrame, path: Path, fd: str) -> None:
    rows = table[table["method"] != "monolith"].reset_index(drop=True)
    variants = list(dict.fromkeys(rows["variant"]))
    colours = {v: f"C{i}" for i, v in enumerate(variants)}
    fig = Figure(figsize=(max(6.0, 0.45 * len(rows) + 2), 4.2))
    ax = fig.subplots()
    ax.bar(
        range(len(rows)),
        rows["ratio_monolith_over_method"],
        yerr=rows["ratio_sd"].fillna(0.0),
        capsize=3,
        color=[colours[v] for v in rows["variant"]],
    )
    ax.axhline(1.0, color="grey", lw=1, ls="--", label="parity with the monolith")
    ax.axhline(2.0, color="red", lw=1, ls=":", label="goal 2.0")
    ax.set_xticks(
        range(len(rows)),
        [f"{v}\n{m}" if v != SHARED else m for v, m in zip(rows["variant"], rows["method"], strict=True)],
        rotation=60,
        ha="right",
        fontsize=7,
    )
    ax.set_ylabel(f"{fd}(monolith) / {fd}(method)")
    for v in variants:
        ax.bar([0], [0], color=colours[v], label=v)  # legend entries only (zero height)
    ax.legend(fontsize=7, loc="upper left")
    ax.set_title(
        "Fréchet distance ratio monolith/method (> 1: better than the monolith), mean ± sd over draws", fontsize=9
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def plot_samples(rows: list[tuple[str, np.ndarray]], prompts: pd.DataFrame, path: Path) -> None:
    """Rows = methods (draw 0), columns = a few prompts, each shown as GRID_FRAMES frames side by side."""
    picks = list(prompts.groupby("cluster_id", sort=True).head(1).index)
    picks += [i for i in prompts.index if i not in picks][: max(0, GRID_PROMPTS - len(picks))]
    picks = picks[:GRID_PROMPTS]
    t, h, w = rows[0][1].shape[1:4]
    frames = np.linspace(0, t - 1, GRID_FRAMES).round().astype(int)
    gap, fw = 4, w + 1  # gap between prompts; frames 1 px apart
    cell_w = GRID_FRAMES * fw + gap
    image = np.full((len(rows) * (h + gap), len(picks) * cell_w, 3), 255, dtype=np.uint8)
    for r, (_, videos) in enumerate(rows):
        for c, p in enumerate(picks):
            for i, f in enumerate(frames):
                x0 = c * cell_w + i * fw
                image[r * (h + gap) : r * (h + gap) + h, x0 : x0 + w] = videos[p, f]
    image = image.repeat(GRID_SCALE, 0).repeat(GRID_SCALE, 1)
    fig = Figure(figsize=(image.shape[1] / 100 + 2.2, image.shape[0] / 100 + 1.0))
    ax = fig.subplots()
    ax.imshow(image, interpolation="nearest")
    ax.set_yticks(
        [(r * (h + gap) + h / 2) * GRID_SCALE for r in range(len(rows))], [name for name, _ in rows], fontsize=7
    )
    ax.set_xticks(
        [(c * cell_w + GRID_FRAMES * fw / 2) * GRID_SCALE for c in range(len(picks))],
        ["\n".join(textwrap.wrap(prompts.at[p, "caption"], 40)) for p in picks],
        fontsize=6,
    )
    ax.xaxis.tick_top()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def sample_rows(ctx: Shared, results: list[VariantResult], strategy: str) -> list[tuple[str, np.ndarray]]:
    """Grid rows: real, monolith, every method of the base variant, and the configured DDM of other variants."""
    real = load_clips(ctx.shards, ctx.index, ctx.prompts["clip_id"].tolist())
    base = results[0]
    rows = [("real (prompt clips)", real), ("monolith", base.videos["monolith"][0])]
    rows += [(f"{base.name} {m}", v[0]) for m, v in base.videos.items() if m != "monolith"]
    rows += [
        (f"{r.name} ddm:{strategy}", r.videos[f"ddm:{strategy}"][0])
        for r in results[1:]
        if f"ddm:{strategy}" in r.videos
    ]
    return rows


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


# ------------------------------------------------------------------------------------------------ main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/bench.yaml", help="run config (YAML)")
    parser.add_argument("--out", default=None, help="results folder (default benchmarks/results, or .../smoke)")
    parser.add_argument("--work", default=None, help="working folder for data and models (default cfg.output_dir)")
    parser.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="SECTION.FIELD=VALUE",
        help="config overrides, e.g. data.themed_scenes=true",
    )
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: check the script end to end in minutes")
    parser.add_argument(
        "--sweep-k",
        nargs="*",
        type=int,
        default=None,
        metavar="K",
        help="also semantic DDMs with these K at the same budget (bare flag: 2 4)",
    )
    parser.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: torch's default)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    timer = StageTimer()
    cfg = bench_config(args.config, args.smoke, args.set)
    base_k = cfg.cluster.num_clusters
    requested = {2, 4} if args.sweep_k == [] else set(args.sweep_k or ())
    sweep = sorted(requested - {base_k})
    budget = budget_samples(cfg)
    for k in sweep:
        variant_config(cfg, k, budget)  # refuse a budget that a swept K cannot split, before any work
    out = Path(args.out or ("benchmarks/results/smoke" if args.smoke else "benchmarks/results"))
    work = Path(args.work or cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    command = shlex.join(["python", *sys.argv])
    machine = machine_info(args.device)
    fd, acc = metric_names(cfg)
    if torch.get_num_threads() > 1 and os.getloadavg()[0] > BUSY_LOAD and args.device == "cpu":
        say(
            f"WARNING: load average {os.getloadavg()[0]:.1f} with {torch.get_num_threads()} torch threads: on a busy "
            "2-core machine multi-threaded torch slows down ~10x (measured); use --threads 1 or wait for an idle one"
        )

    protocol = protocol_lines(cfg, sweep)
    say(
        "=" * 100
        + "\nddm vs monolith benchmark"
        + (" (SMOKE sizes: not a result)" if args.smoke else "")
        + f"\ncommand: {command}\nmachine: {json.dumps(machine)}\nevaluation protocol (fixed before training):\n"
        + "\n".join(protocol)
        + "\n"
        + "=" * 100
    )
    write(
        out / "protocol.md",
        "# Evaluation protocol (written before any model trained)\n\n"
        + "\n".join(protocol)
        + f"\n\nconfig: `{args.config}`{''.join(f' {a}' for a in args.set)}"
        + f"{' with --smoke overrides' if args.smoke else ''}\n",
    )

    ctx = prepare(cfg, work, args.device, timer)
    semantic = semantic_variant(ctx, base_k, budget, timer)
    ctx.semantic = semantic.assignments
    ctx.prompts = stratified_prompts(semantic.assignments, ctx.index, cfg.sample.prompts_per_cluster, cfg.seed)
    per_cluster = ctx.prompts["cluster_id"].value_counts().sort_index().tolist()
    say(f"prompts: {len(ctx.prompts)} (per semantic cluster {per_cluster})")
    mono = monolith_spec(semantic.cfg, semantic.assignments)
    variants = [semantic, random_variant(semantic, cfg.seed)]
    variants += [semantic_variant(ctx, k, budget, timer) for k in sweep]

    results = []
    for v in variants:
        results.append(run_variant(ctx, v, mono, timer))
    same_mono = all(
        all(np.array_equal(a, b) for a, b in zip(r.videos["monolith"], results[0].videos["monolith"], strict=True))
        for r in results[1:]
    )
    say(f"monolith re-sampled identically in every variant (paired seeds, deterministic sampler): {same_mono}")

    with timer("reports and plots"):
        report = pd.concat([r.report for r in results], ignore_index=True)
        report = report.drop_duplicates(["variant", "method", "metric", "cluster"], keep="first")
        report.to_csv(out / "eval_report.csv", index=False)
        table = headline_table(report, fd, acc)
        table.to_csv(out / "headline.csv", index=False)
        head_md = headline_markdown(table, fd, acc)
        write(out / "headline.md", head_md + "\n")
        goals = goal_lines(table, semantic.name, cfg.sample.strategy, acc)
        per_cluster = report[(report["metric"] == fd) & (report["cluster"] >= 0)].pivot_table(
            index=["variant", "method"], columns="cluster", values="mean", sort=False
        )
        per_cluster.columns = [f"cluster {c}" for c in per_cluster.columns]
        per_attr = report[report["metric"].str.startswith(f"{acc}.") & (report["cluster"] == -1)].pivot_table(
            index=["variant", "method"], columns="metric", values="mean", sort=False
        )
        per_attr.columns = [c.split(".", 1)[1] for c in per_attr.columns]
        plot_ratios(table, out / "fd_ratios.png", fd)
        plot_samples(sample_rows(ctx, results, cfg.sample.strategy), ctx.prompts, out / "samples.png")
    total = timer.total()

    train_rows = pd.DataFrame([row for r in results for row in r.train_rows]).drop_duplicates(["variant", "model"])
    sections = [
        "# DDM vs monolith benchmark" + (" (SMOKE sizes: checks the script, not a result)" if args.smoke else ""),
        f"command: `{command}`\n\nconfig: `{args.config}`\n\nmachine: `{json.dumps(machine)}`",
        f"total wall time: {total / 60:.1f} min",
        "## Evaluation protocol (fixed before training)\n\n" + "\n".join(protocol),
        "## Headline (all prompts)\n\n" + head_md + "\n\n" + "\n".join(f"- {g}" for g in goals),
        f"## {fd} per semantic cluster (smaller N per cluster: compare within a column only)\n\n"
        + markdown(per_cluster.reset_index()),
        f"## {acc} per attribute (all prompts)\n\n" + markdown(per_attr.reset_index()),
        "## Trust indicators\n\n"
        + "\n".join(
            [f"- {ctx.featnet_note}", f"- monolith re-sampled identically in every variant: {same_mono}"]
            + [f"- {n}" for r in results for n in r.notes]
        ),
        "## Compute matching\n\n" + "\n\n".join(f"{r.name}:\n\n" + markdown(r.compute) for r in results),
        "## Training\n\n" + markdown(train_rows),
        "## Router accuracy per t bucket (held-out clips)\n\n"
        + "\n\n".join(f"{r.name} (chance {1 / r.k:.2f}):\n\n" + markdown(r.router) for r in results),
        "## Wall time per stage\n\n"
        + markdown(
            pd.DataFrame(
                [{"stage": k, "seconds": round(v, 1)} for k, v in timer.seconds.items()]
                + [{"stage": "total", "seconds": round(total, 1)}]
            )
        ),
        "Files: eval_report.csv (every EvalReport row, `variant` column; monolith and real rows once, as "
        f"`{SHARED}`), headline.csv/.md, fd_ratios.png, samples.png, protocol.md.",
    ]
    write(out / "summary.md", "\n\n".join(sections) + "\n")
    say(
        "=" * 100
        + "\n"
        + head_md
        + "\n"
        + "\n".join(goals)
        + f"\n{ctx.featnet_note}\n"
        + f"total {total / 60:.1f} min; results in {out}\n"
        + "=" * 100
    )


if __name__ == "__main__":
    main()

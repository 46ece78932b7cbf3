"""Headline benchmark under a protocol fixed in advance (``benchmarks/protocol.md``): a K-expert DDM against a
monolith at matched training compute, scored on held-out prompts with N-independent distances and intervals.

What runs (each step is the pipeline's own ``lib`` call, in the pipeline's order, so it measures the product):
ingest (every clip gets a role: train / validation / reference / prompt) -> encode -> embed -> cluster (fitted on
train clips) -> for every training seed: experts + router + monolith (train clips only) -> evaluation network
(AttrNet with an "absent" answer, train clips + negatives; held-out accuracy on validation clips) -> sampling of
every headline method on the same held-out prompts with paired noise -> features -> FD∞, KID, fixed-N FD with
paired bootstrap intervals over prompts, ratios monolith / method, attribute accuracy and object-found rate ->
aggregation over training seeds and the protocol's decision rule.

Protocol guard: the sha256 of ``benchmarks/protocol.md`` is written to ``<out>/protocol_sha256.txt`` before the
first training step; a run whose protocol file differs from the recorded one, or changes while it runs, refuses
to write results (a new protocol version gets a new ``--out``).

Reuse: models are skipped by spec hash and sampled videos are cached per model set, so ``--phase train`` can train
(e.g. several training seeds in parallel processes) and a later full run picks the models up.

Usage::

    python benchmarks/ddm_vs_monolith.py --config configs/bench.yaml --out benchmarks/results/v5
    python benchmarks/ddm_vs_monolith.py --phase train --training-seeds 1 2 --threads 1   # train only
    python benchmarks/ddm_vs_monolith.py --smoke --threads 1   # tiny sizes, end to end in a few minutes

Outputs under ``--out``: protocol_sha256.txt, headline.json (machine-readable), quality.json (do the generators draw
what they are asked: per-attribute accuracy per method), summary.md (every table),
eval_rows.csv (every metric of every method and seed), samples.png, distances.png.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import platform
import re
import shlex
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from data_schemas.router import CAPTION_ONLY, EXACT, RouterReport
from lib.config import RunConfig
from lib.data.shards import load_clips
from lib.evaluate.attrnet import HEADLINE_ATTRIBUTES
from lib.evaluate.attrnet_training import featnet_note
from lib.evaluate.compare import compare_methods, reference_clip_ids
from lib.evaluate.distances import Interval, save_replicates
from lib.evaluate.report import BASELINE
from lib.experiment.context import Shared, bench_config, prepare
from lib.experiment.models import Models, train_models
from lib.experiment.scoring import assert_disjoint, distance_replicates, featnet_for, plot_samples, sample_seed
from lib.experiment.tables import json_safe, markdown
from lib.experiment.timer import StageTimer, say
from lib.experiment.variants import SEMANTIC, Variant, random_variant, semantic_variant
from lib.io import atomic_write
from lib.sample.prompts import stratified_prompts

REPO = Path(__file__).resolve().parents[1]
PROTOCOL = REPO / "benchmarks" / "protocol.md"
RESULTS = REPO / "benchmarks" / "results"  # headline.json / quality.json here are the latest versioned run's
DISTANCES = ("fd_inf", "kid", "fd")
BUSY_LOAD = 1.5  # 1-minute load average above which torch's multi-threading on a 2-core machine collapses


# ------------------------------------------------------------------------------------------ protocol guard


def protocol_sha() -> str:
    return hashlib.sha256(PROTOCOL.read_bytes()).hexdigest()


def record_protocol(out: Path) -> str:
    """Write the protocol's sha256 before any training; refuse a results folder made under another version."""
    sha = protocol_sha()
    path = out / "protocol_sha256.txt"
    if path.exists() and path.read_text().strip() != sha:
        raise SystemExit(
            f"{PROTOCOL} changed since {path} was written ({path.read_text().strip()[:12]} -> {sha[:12]}): a "
            "changed protocol is a new version; write its results to a new --out folder"
        )
    atomic_write(path, lambda tmp: Path(tmp).write_text(sha + "\n"))
    return sha


def check_protocol(sha: str) -> None:
    """Called before results are written: the protocol must be the one recorded before training."""
    now = protocol_sha()
    if now != sha:
        raise SystemExit(f"{PROTOCOL} changed during the run ({sha[:12]} -> {now[:12]}): results not written")


# ------------------------------------------------------------------------------------------ evaluation


def evaluate_all(
    ctx: Shared,
    semantic: Variant,
    models: list[Models],
    out: Path,
    sha: str,
    command: str,
    machine: dict,
    timer: StageTimer,
    only: list[str] | None = None,
) -> None:
    """Evaluation network, prompts, sampling, scores per training seed, aggregation, and every results file."""
    cfg = ctx.cfg
    featnet, checks = featnet_for(ctx, timer)
    say(featnet_note(checks, featnet.vocab))
    prompts = stratified_prompts(semantic.assignments, ctx.index, cfg.sample.num_prompts, cfg.seed)
    reference = reference_clip_ids(ctx.index, cfg.evaluate.num_real, cfg.seed)
    assert_disjoint(ctx.index, prompts, reference, semantic.assignments)
    say(f"prompts: {len(prompts)} per cluster {prompts['cluster_id'].value_counts().sort_index().tolist()}; "
        f"reference clips: {len(reference)}")  # fmt: skip
    seeds = sorted({m.seed for m in models})
    reports, samples, reps = [], {}, {}
    real = load_clips(ctx.shards, ctx.index, prompts["clip_id"].tolist())
    for seed in seeds:
        videos = sample_seed(ctx, models, seed, prompts, timer, only)
        samples[seed] = videos
        with timer(f"evaluate s{seed}"):
            report = compare_methods(
                str(ctx.shards), ctx.index, ctx.attributes, semantic.assignments, videos, prompts, cfg.evaluate,
                featnet, cfg.seed,
            )  # fmt: skip
        reports.append(report.assign(training_seed=seed))
        with timer(f"replicates s{seed}"):
            reps[seed] = distance_replicates(featnet, ctx, reference, {**videos, "real": real}, cfg)
            save_replicates(out / f"replicates-s{seed}.npz", *reps[seed])  # so sessions' seeds pool exactly
        partial = pd.concat(reports, ignore_index=True)
        check_protocol(sha)
        partial.to_csv(out / "eval_rows.csv", index=False)  # partial results after every seed
        say(f"scores of training seed {seed} written to {out / 'eval_rows.csv'}")
    rows = pd.concat(reports, ignore_index=True)
    fd_names = metric_names(cfg)
    summary = headline_summary(rows, reps, fd_names, cfg)
    total = timer.total()
    result = {
        "protocol": str(PROTOCOL.relative_to(REPO)),
        "protocol_sha256": sha,
        "n_generated": {
            m: int(n)
            for m, n in rows[rows["metric"] == fd_names["fd"]].groupby("method")["n_generated"].first().items()
            if m != "real"
        },  # fmt: skip
        "n_reference": len(reference),
        "training_seeds": seeds,
        "methods_not_run": methods_not_run(rows, seeds, cfg),
        "metric_names": fd_names,
        "methods": summary["methods"],
        "head_method": summary["head_method"],
        "ratio_fd_inf": summary["ratio_fd_inf"],
        "ratio_kid": summary["ratio_kid"],
        "ratio_details": summary["ratio_details"],
        "decision": summary["decision"],
        "decision_text": summary["text"],
        "featnet": checks,
        **router_at_t1(models),
        "cluster_ami": {a: round(v, 3) for a, v in semantic.ami.items()},
        "wall_minutes": round(total / 60, 1),
        "command": command,
        "machine": machine,
    }
    check_protocol(sha)
    text = json.dumps(json_safe(result), indent=1, allow_nan=False) + "\n"
    atomic_write(out / "headline.json", lambda tmp: Path(tmp).write_text(text))
    quality = json.dumps(quality_record(rows, cfg.sample.strategy, ctx.info), indent=1, allow_nan=False) + "\n"
    atomic_write(out / "quality.json", lambda tmp: Path(tmp).write_text(quality))
    if is_current_headline(out, result["methods_not_run"]):
        for name in ("headline.json", "quality.json"):
            shutil.copyfile(out / name, RESULTS / name)
    plot_samples(ctx, samples[seeds[0]], prompts, out / "samples.png")
    write_summary(out, rows, result, models, timer, fd_names)
    say("=" * 100 + "\n" + summary["text"] + f"\ntotal {total / 60:.1f} min; results in {out}\n" + "=" * 100)


def router_at_t1(models: list[Models]) -> dict[str, dict[int, float | None]]:
    """Per training seed of the semantic DDM: its router's accuracy at exactly t = 1 (pure noise, where sampling
    starts) and the caption-only classifier's on the same held-out clips, the most the router can reach there."""
    out: dict[str, dict[int, float | None]] = {"router_accuracy_t1": {}, "caption_ceiling_t1": {}}
    for m in models:
        if m.variant != SEMANTIC:
            continue
        kind, at_1 = m.router[RouterReport.kind], m.router[RouterReport.t_low] == 1.0
        for key, rows in (("router_accuracy_t1", m.router[(kind == EXACT) & at_1]),
                          ("caption_ceiling_t1", m.router[kind == CAPTION_ONLY])):  # fmt: skip
            out[key][m.seed] = _r(rows[RouterReport.accuracy].iloc[0]) if len(rows) else None
    return out


def is_current_headline(out: Path, not_run: list[str]) -> bool:
    """A complete run into a versioned folder (``benchmarks/results/v<N>``) becomes the current headline; a smoke
    run, another folder or a partial run (methods still to score) never replaces it."""
    return out.resolve().parent == RESULTS.resolve() and re.fullmatch(r"v\d+", out.name) is not None and not not_run


def quality_record(rows: pd.DataFrame, strategy: str, codec_info: dict) -> dict:
    """quality.json (issue 15): do the generators draw what the prompts ask? Per method (the monolith, the DDM's
    default strategy first, then every other scored method such as ``ddm:oracle``, and the real prompt clips),
    AttrNet's per-attribute accuracy on the held-out prompts (an absent object counts as wrong), averaged over
    training seeds, and the share of videos with an object of the prompt's colour."""
    main = rows[rows["cluster"] == -1]
    methods = {}
    first = ["monolith", f"ddm:{strategy}"]
    for method in dict.fromkeys([*first, *sorted(set(main["method"]) - {*first, "real"}), "real"]):
        mine = main[main["method"] == method]
        if mine.empty:
            continue
        value = {m: float(v) for m, v in mine.groupby("metric")["mean"].mean().items()}
        entry = {a: round(value[f"attr_acc_attrnet.{a}"], 4) for a in HEADLINE_ATTRIBUTES}
        entry["mean"] = round(float(np.mean([entry[a] for a in HEADLINE_ATTRIBUTES])), 4)
        entry["object_found"] = round(value["object_found_attrnet"], 4)
        entry["prompts"] = int(mine["n_generated"].max())
        entry["training_seeds"] = sorted(int(x) for x in mine["training_seed"].unique())
        methods[method] = entry
    learned = codec_info.get("learned")
    codec = {"name": "learned" if learned else codec_info["name"]}
    if learned:
        codec.update(psnr_heldout_db=round(learned["psnr_heldout"], 2), train_seconds=round(learned["seconds"], 1))
    return {"scorer": "attrnet (trained on train clips, abstains on junk)", "methods": methods, "codec": codec}


def methods_not_run(rows: pd.DataFrame, seeds: list[int], cfg: RunConfig) -> list[str]:
    """The protocol's (method, training seed) pairs without scores: a partial run says what it left out."""
    head = f"ddm:{cfg.sample.strategy}"
    planned = [(m, s) for s in (0, 1, 2) for m in ("monolith", head)]
    planned += [(f"ddm:{x}", cfg.seed) for x in cfg.sample.compare_strategies] + [
        (f"ddm:random_{cfg.sample.strategy}", cfg.seed)
    ]
    have = set(zip(rows["method"], rows["training_seed"], strict=True))
    return [f"{m} (training seed {s})" for m, s in planned if (m, s) not in have]


def metric_names(cfg: RunConfig) -> dict[str, str]:
    """The report's metric names for this config (they carry the feature network)."""
    i3d = bool(cfg.evaluate.i3d_path)
    base = "fvd_i3d" if i3d else "fd_attrnet"
    net = base.split("_", 1)[1]
    return {"fd": base, "fd_inf": base.replace("_", "_inf_", 1), "kid": ("kvd_" if i3d else "kid_") + net}


def _pool(intervals: list[Interval]) -> list[float]:
    """[mean of the per-seed estimates, 2.5 and 97.5 percentiles of all seeds' recentred replicates together]."""
    reps = np.concatenate([iv.replicates for iv in intervals])
    if not np.isfinite(reps).all():
        return [_r(np.mean([iv.mean for iv in intervals])), float("nan"), float("nan")]
    low, high = np.percentile(reps, [2.5, 97.5])
    return [_r(np.mean([iv.mean for iv in intervals])), _r(low), _r(high)]


def headline_summary(rows: pd.DataFrame, reps: dict[int, tuple], names: dict[str, str], cfg: RunConfig) -> dict:
    """Per-method numbers (pooled over the training seeds a method has), ratios and the decision rule."""
    main = rows[rows["cluster"] == -1]
    head = f"ddm:{cfg.sample.strategy}"
    methods = {}
    for method, sub in main.groupby("method", sort=False):
        seeds = sorted(s for s, (results, _) in reps.items() if method in results)
        entry = {"training_seeds": seeds}
        for key in ("fd_inf", "kid", "fd"):
            ivs = [getattr(reps[s][0][method], key) for s in seeds]
            entry[key] = _pool(ivs)
            entry[f"{key}_per_seed"] = [_r(iv.mean) for iv in ivs]
        for key, metric in (("attr_acc", "attr_acc_attrnet"), ("object_found", "object_found_attrnet")):
            m = sub[sub["metric"] == metric]
            entry[key] = _r(m["mean"].mean()) if len(m) else None
        attrs = sub[sub["metric"].str.startswith("attr_acc_attrnet.")]
        entry["attr_acc_per_attribute"] = {
            k.split(".", 1)[1]: _r(v) for k, v in attrs.groupby("metric")["mean"].mean().items()
        }
        methods[method] = entry
    paired = sorted(s for s in reps if (BASELINE, head) in reps[s][1])
    if not paired:  # e.g. only a control method was scored: its numbers above, no decision to take
        text = f"protocol decision rule: not applicable (no training seed scored both {BASELINE} and {head})"
        return {"methods": methods, "head_method": head, "ratio_fd_inf": None, "ratio_kid": None,
                "ratio_details": {}, "decision": {}, "text": text}  # fmt: skip
    ratios, decision = {}, {}
    for key in ("fd_inf", "kid"):
        ivs = [reps[s][1][(BASELINE, head)][key] for s in paired]
        points = np.array([iv.mean for iv in ivs])
        sd = float(points.std(ddof=1)) if len(points) > 1 else float("nan")
        ratios[key] = _pool(ivs)
        ratios[f"{key}_per_seed"] = {int(s): [_r(v) for v in iv.as_list()] for s, iv in zip(paired, ivs, strict=True)}
        ratios[f"{key}_sd_seeds"] = _r(sd)
        decision[key] = bool(ratios[key][1] > 1.0 and points.mean() - 2 * sd > 1.0)
    lines = [f"protocol decision rule ({head} vs monolith, training seeds {paired}):"]
    for key in ("fd_inf", "kid"):
        mean, low, high = ratios[key]
        lines.append(
            f"  {names[key]} ratio monolith/DDM {mean:.3f} [pooled 95 % {low:.3f}, {high:.3f}], sd over seeds "
            f"{ratios[f'{key}_sd_seeds']:.3f}: gain {'claimed' if decision[key] else 'NOT claimed'}"
        )
    lines.append(f"  goal FD∞ ratio >= 2.0: {'met' if ratios['fd_inf'][0] >= 2.0 else 'not met'}")
    return {"methods": methods, "head_method": head, "ratio_fd_inf": ratios["fd_inf"], "ratio_kid": ratios["kid"],
            "ratio_details": ratios, "decision": decision, "text": "\n".join(lines)}  # fmt: skip


def _r(value: float) -> float:
    return round(float(value), 6)


def headline_markdown(result: dict, names: dict[str, str]) -> str:
    """The README table: one row per method, pooled over training seeds where it has several."""
    cols = ["method", "seeds", f"{names['fd_inf']} ↓", f"{names['kid']} ↓", f"{names['fd']} (N fixed) ↓",
            "attr. acc. ↑", "object found ↑"]  # fmt: skip
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for method, e in result["methods"].items():
        cells = [method, ",".join(map(str, e["training_seeds"]))]
        for key in ("fd_inf", "kid", "fd"):
            mean, low, high = e[key]
            digits = 4 if key == "kid" else 1
            cells.append(f"{mean:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]")
        cells += [f"{e['attr_acc']:.3f}" if e["attr_acc"] is not None else "-",
                  f"{e['object_found']:.3f}" if e["object_found"] is not None else "-"]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def per_cluster_table(rows: pd.DataFrame, names: dict[str, str]) -> pd.DataFrame:
    """KID and mean attribute accuracy per (seed, method) and semantic cluster, as "estimate [interval]" cells.
    KID, not FD∞: the bias-free Fréchet extrapolation needs at least 4·D clips per set, and a cluster's share of the
    prompts and reference is smaller, so its FD∞ rows are absent and a table of them would be empty."""
    wanted = rows[(rows["cluster"] >= 0) & rows["metric"].isin([names["kid"], "attr_acc_attrnet"])]
    cells = wanted.assign(
        column=[f"{m} c{int(c)}" for m, c in zip(wanted["metric"], wanted["cluster"], strict=True)],
        value=[f"{m:.4g} [{lo:.4g}, {hi:.4g}]" for m, lo, hi in zip(wanted["mean"], wanted["ci_low"],
                                                                    wanted["ci_high"], strict=True)],
    )  # fmt: skip
    table = cells.pivot_table(index=["training_seed", "method"], columns="column", values="value", aggfunc="first",
                              sort=False)  # fmt: skip
    return table[sorted(table.columns, key=lambda c: (c.split(" c")[0] != names["kid"], c))]


def write_summary(out: Path, rows: pd.DataFrame, result: dict, models: list[Models], timer: StageTimer,
                  names: dict[str, str]) -> None:  # fmt: skip
    """summary.md: the headline, per seed, per cluster, per attribute, trust checks, training and timings."""
    main = rows[rows["cluster"] == -1]
    metric_cols = [names["fd_inf"], names["kid"], names["fd"], f"ratio_{names['fd_inf']}", f"ratio_{names['kid']}",
                   "attr_acc_attrnet", "object_found_attrnet", "motion_mad", "motion_flow"]  # fmt: skip
    per_seed = main[main["metric"].isin(metric_cols)].assign(
        value=lambda d: [f"{m:.4g} [{lo:.4g}, {hi:.4g}]" for m, lo, hi in zip(d["mean"], d["ci_low"], d["ci_high"],
                                                                              strict=True)])  # fmt: skip
    present = [c for c in metric_cols if c in set(main["metric"])]
    per_seed = per_seed.pivot_table(
        index=["training_seed", "method"], columns="metric", values="value", aggfunc="first", sort=False
    )[present]
    per_cluster = per_cluster_table(rows, names)
    per_attr = main[main["metric"].str.startswith("attr_acc_attrnet.")].pivot_table(
        index=["training_seed", "method"], columns="metric", values="mean", sort=False
    )
    per_attr.columns = [c.split(".", 1)[1] for c in per_attr.columns]
    train_rows = pd.DataFrame([r for m in models for r in m.train_rows]).drop_duplicates(["variant", "training_seed",
                                                                                          "model"])  # fmt: skip
    routers = pd.concat([m.router.assign(variant=m.variant, training_seed=m.seed) for m in models])
    fj = result["featnet"]
    sections = [
        "# DDM vs monolith — " + PROTOCOL.read_text().splitlines()[0].lstrip("# "),
        f"protocol: `{result['protocol']}` sha256 `{result['protocol_sha256']}`\n\ncommand: `{result['command']}`"
        f"\n\nmachine: `{json.dumps(result['machine'])}`\n\ntotal wall time: {result['wall_minutes']} min",
        "## Headline (pooled over training seeds where a method has several; 95 % paired bootstrap over prompts)\n\n"
        + headline_markdown(result, names)
        + "\n\n```\n"
        + result["decision_text"]
        + "\n```",
        "## Every method and metric per training seed (estimate [95 % interval])\n\n"
        + markdown(per_seed.reset_index()),
        f"## Per semantic cluster: {names['kid']} and mean attribute accuracy (prompts and reference of that cluster; "
        f"{names['fd_inf']} needs more clips per set than a cluster holds)\n\n" + markdown(per_cluster.reset_index()),
        "## Attribute accuracy per attribute (absent = wrong)\n\n" + markdown(per_attr.reset_index()),
        "## Evaluation network checks (validation clips, fresh negatives)\n\n```\n"
        + json.dumps(fj, indent=1)
        + "\n```",
        "## Training\n\n" + markdown(train_rows),
        "## Router accuracy per t bucket, at exact t and of the caption alone (its ceiling at t = 1)\n\n"
        + markdown(routers),
        "## Wall time per stage\n\n"
        + markdown(pd.DataFrame([{"stage": k, "seconds": round(v, 1)} for k, v in timer.seconds.items()])),  # fmt: skip
        "Files: headline.json, eval_rows.csv (every EvalReport row with its training seed), samples.png.",
    ]
    (out / "summary.md").write_text("\n\n".join(sections) + "\n")


# --------------------------------------------------------------------------------------------- main


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


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/bench.yaml", help="run config (YAML)")
    parser.add_argument("--out", default=None, help="results folder (default benchmarks/results/v6, or .../smoke)")
    parser.add_argument("--work", default=None, help="working folder for data and models (default cfg.output_dir)")
    parser.add_argument(
        "--set", nargs="*", default=[], metavar="SECTION.FIELD=VALUE", help="config overrides, e.g. expert.steps=10"
    )
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: check the script end to end in minutes")
    parser.add_argument("--training-seeds", nargs="+", type=int, default=[0, 1, 2], metavar="S")
    parser.add_argument("--phase", choices=("train", "all"), default="all", help="train: stop after training")
    parser.add_argument(
        "--methods",
        nargs="+",
        default=None,
        metavar="METHOD",
        help="score only these of the protocol's methods (e.g. monolith ddm:topk); results list the rest as not run",
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
    out = Path(args.out or ("benchmarks/results/smoke" if args.smoke else "benchmarks/results/v6"))
    work = Path(args.work or cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    command = shlex.join(["python", *sys.argv])
    machine = machine_info(args.device)
    if torch.get_num_threads() > 1 and os.getloadavg()[0] > BUSY_LOAD and args.device == "cpu":
        say(
            f"WARNING: load average {os.getloadavg()[0]:.1f} with {torch.get_num_threads()} torch threads: on a busy "
            "2-core machine multi-threaded torch slows down ~10x (measured); use --threads 1 or wait for an idle one"
        )
    sha = record_protocol(out)
    say(
        "=" * 100
        + f"\nddm vs monolith, protocol {PROTOCOL.name} sha256 {sha}"
        + (" (SMOKE sizes)" if args.smoke else "")
    )
    say(f"command: {command}\nmachine: {json.dumps(machine)}\n" + "=" * 100)

    ctx = prepare(cfg, work, args.device, timer)
    semantic = semantic_variant(ctx, timer)
    ctx.semantic = semantic.assignments
    control = random_variant(semantic, cfg.seed, cfg.cluster.num_clusters)
    seeds = list(dict.fromkeys(args.training_seeds))
    models: list[Models] = []
    # the control trains only when it will be scored (``--methods`` may leave it for a later invocation)
    with_control = args.methods is None or any(m.startswith("ddm:random") for m in args.methods)
    for seed in seeds:
        models.append(train_models(ctx, semantic, seed, True, timer))
        if seed == cfg.seed and with_control:
            models.append(train_models(ctx, control, seed, False, timer))
    if args.phase == "train":
        say(f"--phase train: models for training seeds {seeds} are trained; {timer.total() / 60:.1f} min")
        return
    evaluate_all(ctx, semantic, models, out, sha, command, machine, timer, args.methods)


if __name__ == "__main__":
    main()

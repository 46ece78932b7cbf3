"""Routing strategies on a trained DDM: sample quality and cost per video, on the headline's held-out prompts.

Exploratory, outside the protocol (``benchmarks/protocol.md`` fixes its methods before its run): the headline's
models of one training seed, its 1024 held-out prompts, its evaluation network and paired noise; each strategy is
sampled and scored like a headline method, with the cost column the issue asks for (expert forward passes per video:
rows through an expert, CFG's two halves counted, as they cost two).

    python benchmarks/routing_on_ddm.py --strategies topk top1 full sample 'sample>top1@0.5' --threads 1
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pandas as pd
import torch

from lib.evaluate.compare import compare_methods
from lib.experiment.context import bench_config, prepare
from lib.experiment.models import train_models
from lib.experiment.scoring import featnet_for
from lib.experiment.timer import StageTimer
from lib.experiment.variants import semantic_variant
from lib.io import atomic_write
from lib.sample.methods import sampling_seed
from lib.sample.pipeline import DDMPipeline
from lib.sample.prompts import stratified_prompts

REPO = Path(__file__).resolve().parents[1]



METRICS = ("fd_inf_attrnet", "kid_attrnet", "attr_acc_attrnet", "object_found_attrnet")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="configs/bench.yaml")
    p.add_argument("--strategies", nargs="+", default=["topk", "top1", "full", "sample", "sample>top1@0.5"])
    p.add_argument("--training-seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--smoke", action="store_true", help="the headline benchmark's tiny sizes (checks the script)")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "routing_on_ddm"))
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = bench_config(args.config, args.smoke, [])
    timer, out = StageTimer(), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ctx = prepare(cfg, Path(cfg.output_dir), "cpu", timer)
    semantic = semantic_variant(ctx, timer)
    ctx.semantic = semantic.assignments
    models = train_models(ctx, semantic, args.training_seed, False, timer)  # reused by hash; refuses nothing new
    if not all(r["reused"] for r in models.train_rows):
        print("note: some models were trained now (not reused from the headline run)", flush=True)
    featnet, _ = featnet_for(ctx, timer)
    prompts = stratified_prompts(semantic.assignments, ctx.index, cfg.sample.num_prompts, cfg.seed)
    pipe = DDMPipeline.from_pretrained(models.ddm_dir)
    s = cfg.sample
    videos, cost = {}, {}
    for strategy in args.strategies:
        t0 = time.perf_counter()
        result = pipe.generate(
            prompts["caption"].tolist(), num_inference_steps=s.num_steps, guidance_scale=s.guidance_scale,
            strategy=strategy, top_k=s.top_k, seed=sampling_seed(cfg.seed), batch_size=s.batch_size,
            prompt_keys=prompts["prompt_id"].tolist(), shift=s.shift,
        )  # fmt: skip
        videos[f"ddm:{strategy}"] = result.videos
        cost[f"ddm:{strategy}"] = {
            "expert_passes_per_video": result.result.stats.total_rows / len(prompts),
            "seconds_per_video": (time.perf_counter() - t0) / len(prompts),
        }
        print(f"{strategy}: {json.dumps({k: round(v, 3) for k, v in cost[f'ddm:{strategy}'].items()})}", flush=True)
    report = compare_methods(str(ctx.shards), ctx.index, ctx.attributes, semantic.assignments, videos, prompts,
                             cfg.evaluate, featnet, cfg.seed)  # fmt: skip
    main_rows = report[(report["cluster"] == -1) & report["metric"].isin(METRICS)]
    table = main_rows.pivot_table(index="method", columns="metric", values="mean", aggfunc="first")
    low = main_rows.pivot_table(index="method", columns="metric", values="ci_low", aggfunc="first")
    high = main_rows.pivot_table(index="method", columns="metric", values="ci_high", aggfunc="first")
    rows = []
    for method in table.index:
        row = {"method": method, **cost.get(method, {})}
        for m in METRICS:
            if m in table.columns and pd.notna(table.loc[method, m]):
                row[m] = [float(table.loc[method, m]), float(low.loc[method, m]), float(high.loc[method, m])]
        rows.append(row)
    record = {"training_seed": args.training_seed, "prompts": len(prompts), "config": args.config,
              "note": "exploratory, outside protocol v4; same models, prompts, noise and evaluation network",
              "rows": rows}  # fmt: skip
    text = json.dumps(record, indent=1, default=float)
    atomic_write(out / "routing_on_ddm.json", lambda tmp: Path(tmp).write_text(text))
    lines = ["| method | expert passes / video | s / video | " + " | ".join(METRICS) + " |",
             "|---" * (3 + len(METRICS)) + "|"]  # fmt: skip
    for r in rows:
        cells = [f"{r[m][0]:.4g} [{r[m][1]:.4g}, {r[m][2]:.4g}]" if m in r else "–" for m in METRICS]
        passes = f"{r['expert_passes_per_video']:.1f}" if "expert_passes_per_video" in r else "–"
        secs = f"{r['seconds_per_video']:.3f}" if "seconds_per_video" in r else "–"
        lines.append(f"| {r['method']} | {passes} | {secs} | " + " | ".join(cells) + " |")
    md = "\n".join(lines) + "\n"
    atomic_write(out / "routing_on_ddm.md", lambda tmp: Path(tmp).write_text(md))
    print(md)


if __name__ == "__main__":
    main()

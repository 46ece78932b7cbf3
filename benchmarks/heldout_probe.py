"""Where in t the headline's DDM loses: the held-out flow-matching loss per t of the headline's own trained models.

Why: the old compute probe (``ddm_compute_probe.py``) trains its own models, scores t only between 0.22 and 0.78 and
routes every clip to its true cluster, so it cannot say whether the headline's DDM loses at layout (t near 1, where
the router decides) or at detail (small t), nor what its router costs. This scores the models the headline trained
(reused by their spec hashes: nothing trains) on the headline's own prompt clips: the DDM as it samples (its router
mixing the experts at every t), the DDM with oracle routing, and the monolith, with the same noise per clip and t.

    python benchmarks/heldout_probe.py --training-seeds 0 1 2 --out benchmarks/results/v6/heldout_loss.json \
        [--set expert.monolith_lr_scale=2.0]

Run it after the headline: it needs the trained models in the work folder (it would train missing ones, as the
headline would). Writes the JSON (per seed, method, t and cluster) and a PNG of loss against t beside it.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure

from lib.encode.store import load_encoded
from lib.evaluate.heldout_loss import heldout_loss
from lib.experiment.context import bench_config, prepare
from lib.experiment.models import train_models
from lib.experiment.timer import StageTimer, say
from lib.experiment.variants import semantic_variant
from lib.io import atomic_write
from lib.sample.pipeline import DDMPipeline
from lib.sample.prompts import stratified_prompts


def probe_seed(ctx, semantic, seed: int, timer: StageTimer) -> pd.DataFrame:
    """HeldoutLoss rows of one training seed's DDM (its strategy and oracle) and monolith on the prompt clips."""
    cfg = ctx.cfg
    models = train_models(ctx, semantic, seed, True, timer)
    prompts = stratified_prompts(semantic.assignments, ctx.index, cfg.sample.num_prompts, cfg.seed)
    data = load_encoded(ctx.encoded, prompts["clip_id"].tolist())
    clusters = prompts["cluster_id"].tolist()
    ddm = DDMPipeline.from_pretrained(models.ddm_dir, device=ctx.device)
    mono = DDMPipeline.from_single(models.monolith_dir, ctx.info, device=ctx.device)
    with timer(f"held-out loss s{seed}"):
        table = pd.concat(
            [heldout_loss(ddm, "ddm", data, [cfg.sample.strategy, "oracle"], seed, clusters, top_k=cfg.sample.top_k),
             heldout_loss(mono, "monolith", data, [], seed, clusters)],
            ignore_index=True,
        )  # fmt: skip
    return table.assign(training_seed=seed)


def plot(table: pd.DataFrame, path: Path) -> None:
    """Loss against t per method, mean over seeds, all clips; the DDM minus monolith gap in the second panel."""
    fig = Figure(figsize=(10, 4))
    ax, gap = fig.subplots(1, 2)
    rows = table[table["cluster"] == -1].groupby(["method", "t"])["loss"].mean().unstack(0)
    for method in rows.columns:
        ax.plot(rows.index, rows[method], marker="o", label=method)
    ax.set(xlabel="t (1 = pure noise)", ylabel="held-out flow-matching loss", title="loss per t, prompt clips")
    ax.legend()
    for method in [m for m in rows.columns if m.startswith("ddm:")]:
        gap.plot(rows.index, rows[method] - rows["monolith"], marker="o", label=f"{method} - monolith")
    gap.axhline(0, color="grey", lw=0.8)
    gap.set(xlabel="t", ylabel="loss difference (> 0: the DDM is worse)", title="DDM minus monolith")
    gap.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/bench.yaml")
    parser.add_argument("--set", nargs="*", default=[], metavar="SECTION.FIELD=VALUE")
    parser.add_argument("--training-seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/v6/heldout_loss.json"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--work", type=Path, help="working folder of the headline (default cfg.output_dir)")
    parser.add_argument("--smoke", action="store_true", help="the headline's smoke sizes: check the script quickly")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = bench_config(args.config, args.smoke, args.set)
    timer = StageTimer()
    ctx = prepare(cfg, args.work or Path(cfg.output_dir), "cpu", timer)
    semantic = semantic_variant(ctx, timer)
    ctx.semantic = semantic.assignments
    table = pd.concat([probe_seed(ctx, semantic, s, timer) for s in args.training_seeds], ignore_index=True)
    whole = table[table["cluster"] == -1].groupby(["method", "t"])["loss"].agg(["mean", "std"]).round(5)
    say(whole.unstack(0).to_string())
    means = table[table["cluster"] == -1].groupby(["training_seed", "method"])["loss"].mean().unstack(1).round(5)
    say(f"mean over t per seed:\n{means.to_string()}")
    result = {
        "command": shlex.join(["python", *sys.argv]),
        "config": args.config,
        "overrides": args.set,
        "training_seeds": args.training_seeds,
        "mean_over_t": {str(s): row.to_dict() for s, row in means.iterrows()},
        "mean_over_t_and_seeds": {m: float(v) for m, v in means.mean().items()},
        "rows": table.to_dict(orient="records"),
        "wall_s": round(timer.total(), 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(args.out, lambda p: p.write_text(json.dumps(result, indent=1)))
    plot(table, args.out.with_suffix(".png"))
    say(f"-> {args.out} and {args.out.with_suffix('.png')}; {np.round(timer.total() / 60, 1)} min")


if __name__ == "__main__":
    main()

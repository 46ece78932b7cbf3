"""Where the DDM loses attribute accuracy to the monolith: per cluster, per background, and top-1 against top-2.

An exploratory check on a finished headline run (not a protocol result): it reuses that run's models, AttrNet and
sampled videos by hash (``ddm_vs_monolith.py`` must have run with the same config and training seed and ``--work``),
samples ``ddm:top1`` on the same prompts when the run did not, and scores every method per prompt. Two questions:
does top-2 mixing pull a prompt's background towards another expert's (then top-1 would be better), and does an
expert miss backgrounds it rarely saw (then accuracy would follow the background's share of train clips in the
prompt's cluster)?

    python benchmarks/ddm_attribute_diagnosis.py --training-seed 2 --out benchmarks/results/v5-seed2/diagnosis.md
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from lib.data.split import TRAIN
from lib.evaluate.attrnet import HEADLINE_ATTRIBUTES
from lib.evaluate.attrnet_scoring import attribute_hits
from lib.experiment.context import bench_config, prepare
from lib.experiment.models import train_models
from lib.experiment.scoring import featnet_for, sample_cached, sample_seed
from lib.experiment.tables import markdown
from lib.experiment.timer import StageTimer
from lib.experiment.variants import semantic_variant
from lib.io import atomic_write
from lib.sample.pipeline import DDMPipeline
from lib.sample.prompts import stratified_prompts

REPO = Path(__file__).resolve().parents[1]



ATTRS = HEADLINE_ATTRIBUTES


def accuracy_table(hits: dict[str, pd.DataFrame], clusters: np.ndarray) -> pd.DataFrame:
    """Per method: each attribute's accuracy, mean4 and object found over all prompts, then background accuracy and
    mean4 on each cluster's prompts."""
    rows = []
    for method, h in hits.items():
        row = {"method": method, **{a: float(h[a].mean()) for a in (*ATTRS, "object_found")}}
        row["mean4"] = float(np.mean([row[a] for a in ATTRS]))
        for c in np.unique(clusters):
            sel = clusters == c
            row[f"background c{c}"] = float(h["background"].to_numpy()[sel].mean())
            row[f"mean4 c{c}"] = float(h[list(ATTRS)].to_numpy()[sel].mean())
        rows.append(row)
    return pd.DataFrame(rows)


def background_table(hits: dict[str, pd.DataFrame], prompts: pd.DataFrame, train: pd.DataFrame) -> pd.DataFrame:
    """Background accuracy per (background, prompt cluster) and method, beside how many train clips of that
    background the cluster's expert saw and the share of all train clips of that background that is."""
    counts = train.groupby(["background", "cluster_id"]).size()
    totals = train.groupby("background").size()
    base = pd.DataFrame({"background": prompts["background"].to_numpy(), "cluster": prompts["cluster_id"].to_numpy()})
    for method, h in hits.items():
        base[method] = h["background"].to_numpy()
    table = base.groupby(["background", "cluster"]).agg(prompts=("cluster", "size"),
                                                        **{m: (m, "mean") for m in hits}).reset_index()  # fmt: skip
    seen = [int(counts.get((bg, c), 0)) for bg, c in zip(table["background"], table["cluster"], strict=True)]
    table["train clips in cluster"] = seen
    table["share of the background's train clips"] = np.array(seen) / totals.reindex(table["background"]).to_numpy()
    return table


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/yaml")
    parser.add_argument("--work", default=None, help="the headline run's working folder (default cfg.output_dir)")
    parser.add_argument("--training-seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True, help="markdown file for the two tables")
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = bench_config(args.config, False, [])
    timer = StageTimer()
    ctx = prepare(cfg, Path(args.work or cfg.output_dir), "cpu", timer)
    semantic = semantic_variant(ctx, timer)
    ctx.semantic = semantic.assignments
    models = train_models(ctx, semantic, args.training_seed, True, timer)  # reused by spec hash
    featnet, _ = featnet_for(ctx, timer)
    prompts = stratified_prompts(semantic.assignments, ctx.index, cfg.sample.num_prompts, cfg.seed)
    videos = sample_seed(ctx, [models], args.training_seed, prompts, timer, ["monolith", "ddm:topk"])
    pipe = DDMPipeline.from_pretrained(models.ddm_dir, device=ctx.device)
    videos["ddm:top1"] = sample_cached(ctx, pipe, "top1", prompts, models.key)
    attrs = ctx.attributes.set_index("clip_id").loc[prompts["clip_id"]].reset_index()
    hits = {name: attribute_hits(featnet, v, attrs) for name, v in videos.items()}
    frame = semantic.assignments.merge(ctx.attributes, on="clip_id")
    train = frame[frame["role"] == TRAIN]
    overall = accuracy_table(hits, prompts["cluster_id"].to_numpy())
    backgrounds = background_table(hits, attrs.assign(cluster_id=prompts["cluster_id"].to_numpy()), train)
    text = (
        f"# DDM attribute diagnosis, training seed {args.training_seed} (exploratory, not a protocol result)\n\n"
        f"`{' '.join(['python', *sys.argv])}`; {len(prompts)} held-out prompts, the run's AttrNet.\n\n"
        + markdown(overall.round(3))
        + "\n\nBackground accuracy per (background, prompt cluster):\n\n"
        + markdown(backgrounds.sort_values("ddm:topk").round(3))
        + "\n"
    )
    atomic_write(args.out, lambda tmp: Path(tmp).write_text(text))
    print(text)


if __name__ == "__main__":
    main()

"""Score a finished pipeline run's videos with a stronger AttrNet than the run trained for itself.

A tiny run's own AttrNet (300 steps on ~800 clips) cannot tell shapes apart, so its summary cannot say whether one
tiny recipe draws better than another. This reads the run's ``videos.safetensors`` (every method, one video per
held-out prompt; the prompts travel in its metadata), rebuilds the run's built-in clips from its config (clip i
depends only on the seed, i and the data config), and scores the generated videos and the real prompt clips with
the scorer of ``quality_sweep.py --scorer-config`` (trained on more clips of the same distribution; refused when
any prompt clip is one of its training clips). One JSON line
per run is appended to ``--out``: per method, colour / shape / background / motion accuracy, mean4 and object
found with 95 % bootstrap intervals over prompts.

    python benchmarks/rescore_samples.py --config configs/tiny.yaml --run outputs/tiny --label tiny-default \
        --scorer-config benchmarks/results/quality-tiny/scorer.yaml --threads 1
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from benchmarks.quality_sweep import featnet, ingest_stage
from lib.config import load_config, with_overrides
from lib.data.shards import load_clips
from lib.data.split import TRAIN, rows_with_role
from lib.evaluate.attrnet import HEADLINE_ATTRIBUTES
from lib.evaluate.attrnet_scoring import attribute_hits
from lib.evaluate.report import bootstrap_mean
from lib.io import atomic_write
from lib.sample.methods import VIDEOS_FILE, load_sampled

REPO = Path(__file__).resolve().parents[1]


BOOTSTRAP = 1000


def run_videos(run: Path) -> tuple[dict[str, np.ndarray], pd.DataFrame]:
    """The one samples stage of a run's output folder: videos per method and the prompt table they answer."""
    found = sorted((run / "stages" / "samples").glob(f"*/{VIDEOS_FILE}"))
    if len(found) != 1:
        raise SystemExit(f"{run}: expected one stages/samples/*/{VIDEOS_FILE}, found {len(found)}")
    videos, prompts, _ = load_sampled(found[0].parent)
    return videos, prompts


def scores(hits: pd.DataFrame, seed: int) -> dict[str, object]:
    """Accuracies and bootstrap intervals (prompts resampled) of mean4 and object found."""
    out: dict[str, object] = {a: round(float(hits[a].mean()), 3) for a in HEADLINE_ATTRIBUTES}
    per_video = {"mean4": hits[list(HEADLINE_ATTRIBUTES)].to_numpy(float).mean(1),
                 "object_found": hits["object_found"].to_numpy(float)}  # fmt: skip
    for name, values in per_video.items():
        out[name] = [round(v, 3) for v in bootstrap_mean(values, BOOTSTRAP, seed)]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="the run's config")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="the run's overrides")
    p.add_argument("--run", required=True, help="the run's output_dir")
    p.add_argument("--label", required=True)
    p.add_argument("--scorer-config", required=True)
    p.add_argument("--work", default="outputs/quality-tiny", help="where the scorer and rebuilt clips are cached")
    p.add_argument("--out", default="benchmarks/results/quality-tiny/rescored.jsonl")
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = with_overrides(load_config(args.config), args.set)
    work, out = Path(args.work), Path(args.out)
    scorer_cfg = load_config(args.scorer_config)
    scorer_data = ingest_stage(scorer_cfg, work)
    net = featnet(scorer_cfg, work, *scorer_data)
    shards, index, attributes = ingest_stage(cfg, work)
    videos, prompts = run_videos(Path(args.run))
    seen = set(rows_with_role(scorer_data[1], TRAIN)["clip_id"]) & set(prompts["clip_id"])
    if seen:
        raise SystemExit(f"{len(seen)} prompt clips (e.g. {sorted(seen)[0]}) trained the scorer: pick a scorer config "
                         "whose split holds them out (same seed, held-out fractions at least the run's)")  # fmt: skip
    targets = attributes.set_index("clip_id").loc[prompts["clip_id"]].reset_index()
    real = load_clips(shards, index, prompts["clip_id"].tolist())
    row = {"label": args.label, "config": args.config, "overrides": args.set, "run": args.run,
           "scorer": args.scorer_config, "prompts": len(prompts)}  # fmt: skip
    for method, v in {**videos, "real": real}.items():
        row[method] = scores(attribute_hits(net, v, targets), cfg.seed)
        print(method, json.dumps(row[method]), flush=True)
    old = out.read_text() if out.is_file() else ""
    atomic_write(out, lambda tmp: tmp.write_text(old + json.dumps(row) + "\n"))


if __name__ == "__main__":
    main()

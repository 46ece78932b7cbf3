"""Which prompt should the README show? The held-out caption a run's DDM draws best, by the run's own AttrNet.

Why: a reader's first sample is the README's example prompt. A prompt the default models cannot draw (the README
once showed "a big red ball bouncing on a plain black background", which the tiny DDM paints as a flickering green
field) makes a working model look broken. So the example is chosen, not guessed: every one-object caption among the
run's held-out ``prompt`` clips is a candidate; each is sampled by the run's DDM under several seeds exactly as
``ddm-sample`` would, and scored by the run's AttrNet against the clip's generating attributes (colour, shape,
background, motion; an "absent" answer counts as wrong). The best mean over seeds wins; ties go to the shorter
caption.

Usage: ``python benchmarks/example_prompt.py --run outputs/tiny`` (after ``make run``); writes
``benchmarks/results/tiny/example_prompt.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pandas as pd

from lib.evaluate.attrnet import HEADLINE_ATTRIBUTES, AttrNet
from lib.evaluate.attrnet_scoring import attribute_hits
from lib.io import atomic_write
from lib.sample.pipeline import DDMPipeline
from lib.sample.prompts import run_prompt_clips


def candidates(run: Path, limit: int) -> pd.DataFrame:
    """One-object held-out prompt clips of the run's data: caption and generating attributes, shortest captions
    first."""
    table = run_prompt_clips(run)
    table = table[table["num_objects"] == 1].drop_duplicates("caption")
    return table.assign(length=table["caption"].str.len()).sort_values(["length", "clip_id"]).head(limit)


def score(pipe: DDMPipeline, net: AttrNet, table: pd.DataFrame, seeds: list[int], steps: int) -> pd.DataFrame:
    """Mean attribute accuracy and object-found rate of each caption over ``seeds``, as ``ddm-sample`` draws it."""
    rows = []
    for seed in seeds:
        frames = pipe(table["caption"].tolist(), num_inference_steps=steps, seed=seed).frames
        hits = attribute_hits(net, frames, table.reset_index(drop=True))
        rows.append(hits.assign(caption=table["caption"].to_numpy(), seed=seed))
    hits = pd.concat(rows)
    hits["mean4"] = hits[list(HEADLINE_ATTRIBUTES)].mean(axis=1)
    return hits.groupby("caption", sort=False)[["mean4", "object_found", *HEADLINE_ATTRIBUTES]].mean()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", default="outputs/tiny", help="a finished run's output_dir")
    parser.add_argument("--candidates", type=int, default=48, help="shortest one-object held-out captions tried")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--steps", type=int, default=20, help="num_inference_steps, ddm-sample's default")
    parser.add_argument("--out", default="benchmarks/results/tiny/example_prompt.json")
    args = parser.parse_args()
    started = time.perf_counter()
    run = Path(args.run)
    (featnet,) = sorted(run.glob("stages/featnet/*/attrnet"))  # the run's evaluation network
    net = AttrNet.from_pretrained(featnet)
    pipe = DDMPipeline.from_pretrained(run / "results" / "ddm")
    table = candidates(run, args.candidates)
    scores = score(pipe, net, table, args.seeds, args.steps)
    ranked = scores.assign(length=[len(c) for c in scores.index]).sort_values(
        ["mean4", "object_found", "length"], ascending=[False, False, True]
    )
    best = ranked.index[0]
    result = {
        "run": str(run),
        "ddm": str(run / "results" / "ddm"),
        "attrnet": str(featnet),
        "seeds": args.seeds,
        "num_inference_steps": args.steps,
        "candidates": len(table),
        "chosen": best,
        "chosen_scores": {k: round(float(v), 3) for k, v in ranked.loc[best].drop("length").items()},
        "all_candidates_mean4": round(float(scores["mean4"].mean()), 3),
        "top5": {c: round(float(ranked.loc[c, "mean4"]), 3) for c in ranked.index[:5]},
        "seconds": round(time.perf_counter() - started, 1),
    }
    atomic_write(Path(args.out), lambda p: p.write_text(json.dumps(result, indent=1)))
    print(json.dumps(result, indent=1))
    print(f"example prompt: {best!r} (mean attribute accuracy {result['chosen_scores']['mean4']:.2f} over "
          f"{len(args.seeds)} seeds; all {len(table)} candidates {result['all_candidates_mean4']:.2f}) -> {args.out}")


if __name__ == "__main__":
    main()

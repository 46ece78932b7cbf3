"""Contact sheet of a finished pipeline run: the held-out prompt clips above every method's videos, same prompts.

Why a script and not only the run's GIFs: judging whether a model draws what it is asked needs the real clip, the
caption and every method side by side, the same layout as the headline's ``samples.png``.

    python benchmarks/tiny_samples.py --run outputs/tiny --out benchmarks/results/tiny/samples.png
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
from safetensors import safe_open

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import ddm_vs_monolith as bench  # noqa: E402

from lib.data.shards import read_index  # noqa: E402


def shards_of(run: Path) -> Path:
    """The run's ingested shards (its one ingest stage folder)."""
    found = sorted((run / "stages" / "ingest").glob("*/index.parquet"))
    if len(found) != 1:
        raise SystemExit(f"{run}/stages/ingest: expected one ingested dataset, found {len(found)}")
    return found[0].parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="outputs/tiny", help="the run's output_dir")
    parser.add_argument("--out", default="benchmarks/results/tiny/samples.png")
    args = parser.parse_args()
    run = Path(args.run)
    with safe_open(str(run / "results" / "samples" / "videos.safetensors"), "np") as f:
        prompts = pd.DataFrame(json.loads(f.metadata()["prompts"]))
        videos = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    shards = shards_of(run)
    ctx = SimpleNamespace(shards=shards, index=read_index(shards))  # what plot_samples reads of the bench context
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    bench.plot_samples(ctx, videos, prompts, Path(args.out))
    print(f"{args.out}: {len(prompts)} prompts, methods {list(videos)}")


if __name__ == "__main__":
    main()

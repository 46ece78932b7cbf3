"""What MLflow tracking costs a run: the same `pyflyte run` with DDM_TRACKING=1 and =0, alternated, wall time each.

The target (issue 19): the tracker and the Decks slow `make run` by at most 5 %, cold or cached. A cold run
measures training and sampling as well, so this times the cached rerun by default (the case where the fixed
costs, MLflow's import and database, weigh most); `--cold` deletes the output folder before every run.

    python benchmarks/tracking_overhead.py --config configs/tiny.yaml --runs 3
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from lib.config import load_config

REPO = Path(__file__).resolve().parents[1]



def one_run(config: str, tracking: bool, cold: bool) -> float:
    cfg = load_config(config)
    out = REPO / cfg.output_dir
    if cold:
        shutil.rmtree(out, ignore_errors=True)
    for sub in (".flyte-tmp", ".flyte-home"):  # as `make run`: Flyte's temp data and cache inside output_dir
        (out / sub).mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "DDM_TRACKING": "1" if tracking else "0", "TMPDIR": str(out / ".flyte-tmp"),
           "HOME": str(out / ".flyte-home"), "FLYTE_SDK_LOGGING_LEVEL": "40"}  # fmt: skip
    pyflyte = str(Path(sys.executable).parent / "pyflyte")
    start = time.perf_counter()
    subprocess.run([pyflyte, "run", "workflows/pipeline.py", "pipeline", "--cfg", config], cwd=REPO, env=env,
                   check=True, capture_output=True)  # fmt: skip
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="configs/tiny.yaml")
    p.add_argument("--runs", type=int, default=3, help="pairs of runs (tracking on, off), alternated")
    p.add_argument("--cold", action="store_true", help="delete output_dir before every run")
    args = p.parse_args(argv)
    one_run(args.config, True, args.cold)  # warm-up: fills the cache (or the OS's file cache) for both
    on, off = [], []
    for _ in range(args.runs):
        on.append(one_run(args.config, True, args.cold))
        off.append(one_run(args.config, False, args.cold))
    ratios = [a / b for a, b in zip(on, off, strict=True)]
    kind = "cold" if args.cold else "cached"
    print(f"{kind} `pyflyte run` of {args.config}, {args.runs} pairs (tracking on / off, alternated)")
    print(f"  tracking on : median {statistics.median(on):.1f} s  (min {min(on):.1f}, max {max(on):.1f})")
    print(f"  tracking off: median {statistics.median(off):.1f} s  (min {min(off):.1f}, max {max(off):.1f})")
    spread = f"min {min(ratios):.3f}, max {max(ratios):.3f}"
    print(f"  ratio on/off per pair: median {statistics.median(ratios):.3f} ({spread})")


if __name__ == "__main__":
    main()

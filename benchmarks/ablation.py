"""The fair-fight ablation (issue 31): the v5 recipe, then one fix at a time, each row the whole pipeline.

Why: protocol v5 measured the monolith ~3.8x better than the DDM on FD∞, with defects on the DDM's side (a router
wrong at t = 1, captions cut at 16 tokens, clusters by colour, equal budgets for unequal clusters). Before a v6
headline asks the question again, each fix's effect on both sides is measured alone, in order, under one training
seed, so the headline's change can be read change by change. The rows are cumulative:

0. ``v5 recipe``: the config with every fix undone (``encode.max_tokens`` 16, a uniform-t router of
   ``--v5-router-steps``, ``visual_stats`` clusters, equal budgets, monolith at the experts' lr);
1. ``+ router at t = 1``: ``router.endpoint_mass`` 0.5 and the config's router steps;
2. ``+ captions that fit``: ``encode.max_tokens`` at its default (the longest built-in caption);
3. ``+ clusters by content``: ``cluster.embedders: [visual_stats, text]`` (benchmarks/cluster_ami.py);
4. ``+ budget by size``: ``expert.budget_split: by_size``;
5. ``monolith lr x sqrt(K)``: the fairness control, the DDM of row 4 against a monolith at a larger lr.

Every row runs ``workflows/pipeline.py`` (``pyflyte run``, as ``make run``) on one working folder, so a row retrains
only what its change touches (stage and model hashes): row 1 retrains the router, row 5 the monolith. Every row also
samples ``ddm:oracle`` (the true cluster's expert), so what routing costs is a number. Each row's resolved config,
evaluation report, router report, contact sheet and wall time go to ``--out/NN-name/``; ``--out/ablation.json``
and the printed table hold, per row and method, KID, attribute accuracy (mean and per attribute), object found and
the router's accuracy at exactly t = 1 beside the caption-only ceiling.

Usage: ``python benchmarks/ablation.py --config configs/tiny.yaml --set data.themed_scenes=true
--out benchmarks/results/v6/ablation-tiny-themed``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from lib.config import (
    EncodeConfig,
    RunConfig,
    config_to_dict,
    load_config,
    replace_in,
    with_overrides,
)
from lib.io import atomic_write

ROOT = Path(__file__).resolve().parents[1]


METHODS = ("monolith", "ddm:topk", "ddm:top1", "ddm:oracle")
METRICS = ("kid_attrnet", "ratio_kid_attrnet", "fd_inf_attrnet", "ratio_fd_inf_attrnet", "attr_acc_attrnet",
           "attr_acc_attrnet.scene", "attr_acc_attrnet.background", "attr_acc_attrnet.shape",
           "attr_acc_attrnet.color", "attr_acc_attrnet.size", "attr_acc_attrnet.motion",
           "object_found_attrnet")  # fmt: skip


def rows(cfg: RunConfig, v5_router_steps: int) -> list[tuple[str, dict[str, dict[str, Any]]]]:
    """(name, section changes) per row, each on top of the previous ones."""
    k = cfg.cluster.num_clusters
    return [
        ("v5 recipe", {"encode": {"max_tokens": 16},
                       "router": {"endpoint_mass": 0.0, "steps": v5_router_steps},
                       "cluster": {"embedders": ["visual_stats"]},
                       "expert": {"budget_split": "equal", "monolith_lr_scale": 1.0}}),  # fmt: skip
        ("+ router at t = 1", {"router": {"endpoint_mass": 0.5, "steps": cfg.router.steps}}),
        ("+ captions that fit", {"encode": {"max_tokens": EncodeConfig().max_tokens}}),
        ("+ clusters by content", {"cluster": {"embedders": ["visual_stats", "text"]}}),
        ("+ budget by size", {"expert": {"budget_split": "by_size"}}),
        (f"monolith lr x sqrt({k})", {"expert": {"monolith_lr_scale": math.sqrt(k)}}),
    ]


def _slug(index: int, name: str) -> str:
    keep = "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")
    return f"{index:02d}-" + "-".join(p for p in keep.split("-") if p)


def run_row(cfg: RunConfig, folder: Path) -> float:
    """The pipeline on ``cfg`` as ``make run`` runs it (Flyte's cache and temp folders in the working folder)."""
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "config.yaml"
    config.write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
    work = Path(cfg.output_dir).resolve()
    for sub in (".flyte-tmp", ".flyte-home"):
        (work / sub).mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "TMPDIR": str(work / ".flyte-tmp"), "HOME": str(work / ".flyte-home"),
           "FLYTE_SDK_LOGGING_LEVEL": "40"}  # fmt: skip
    pyflyte = Path(sys.executable).with_name("pyflyte")
    start = time.perf_counter()
    with (folder / "run.log").open("w") as log:
        done = subprocess.run([str(pyflyte), "run", "workflows/pipeline.py", "pipeline", "--cfg", str(config)],
                              cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    seconds = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"{folder.name}: the pipeline failed (exit {done.returncode}); see {folder / 'run.log'}")
    results = work / "results"
    for name in ("eval_report.parquet", "router_report.parquet", "samples.png"):
        shutil.copy2(results / name, folder / name)
    return seconds


def summarise(folder: Path) -> dict[str, Any]:
    """One row's numbers from its copied reports."""
    report = pd.read_parquet(folder / "eval_report.parquet")
    overall = report[report["cluster"] == -1]
    methods: dict[str, dict[str, Any]] = {}
    for method in METHODS:
        mine = overall[overall["method"] == method].set_index("metric")
        methods[method] = {m: [float(mine.at[m, c]) for c in ("mean", "ci_low", "ci_high")]
                           for m in METRICS if m in mine.index}  # fmt: skip
    router = pd.read_parquet(folder / "router_report.parquet")
    at_one = router[(router["kind"] == "exact") & (router["t_low"] == 1.0)]
    ceiling = router[router["kind"] == "caption_only"]
    return {"methods": methods,
            "router_accuracy_t1": float(at_one["accuracy"].iloc[0]) if len(at_one) else None,
            "caption_ceiling_t1": float(ceiling["accuracy"].iloc[0]) if len(ceiling) else None}  # fmt: skip


def table(results: list[dict[str, Any]]) -> str:
    head = ("| row | method | KID | ratio KID (mono / method) | attr. acc. | scene | bg | shape | colour | size "
            "| motion | object found | router t=1 (ceiling) | wall s |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in results:
        for method, m in r["methods"].items():
            if not m:
                continue

            def cell(metric: str, digits: int = 3, m=m) -> str:
                return f"{m[metric][0]:.{digits}f}" if metric in m else "-"

            attrs = [cell(f"attr_acc_attrnet.{a}", 2) for a in ("scene", "background", "shape", "color", "size",
                                                                 "motion")]  # fmt: skip
            router = f"{r['router_accuracy_t1']:.2f} ({r['caption_ceiling_t1']:.2f})" if method == "ddm:topk" else ""
            lines.append(f"| {r['row']} | {method} | {cell('kid_attrnet', 0)} | {cell('ratio_kid_attrnet')} | "
                         f"{cell('attr_acc_attrnet')} | " + " | ".join(attrs) +
                         f" | {cell('object_found_attrnet')} | {router} | {r['seconds']:.0f} |")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "tiny.yaml")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "v6" / "ablation-tiny")
    parser.add_argument("--work", type=Path, help="working folder shared by the rows (default: output_dir-ablation)")
    parser.add_argument("--v5-router-steps", type=int, default=200, help="the v5 router's steps (tiny 200, bench 400)")
    parser.add_argument("--rows", type=int, help="run only the first N rows")
    parser.add_argument("--set", nargs="*", default=[], metavar="SECTION.FIELD=VALUE",
                        help="config changes under every row, e.g. data.themed_scenes=true (the headline's data)")
    args = parser.parse_args()
    base = with_overrides(load_config(args.config), args.set)
    work = args.work or Path(f"{base.output_dir.rstrip('/')}-ablation")
    strategies = sorted(set(base.sample.compare_strategies) | {"oracle"})
    cfg = replace_in(base, sample={"compare_strategies": strategies}, output_dir=str(work))
    results: list[dict[str, Any]] = []
    for index, (name, changes) in enumerate(rows(cfg, args.v5_router_steps)[: args.rows]):
        cfg = replace_in(cfg, **changes)
        folder = args.out / _slug(index, name)
        seconds = run_row(cfg, folder)
        results.append({"row": name, "changes": changes, "seconds": seconds, **summarise(folder)})
        args.out.mkdir(parents=True, exist_ok=True)
        record = {"config": str(args.config), "set": args.set, "seed": cfg.seed, "rows": results}
        # partial results survive a stopped run
        atomic_write(args.out / "ablation.json", lambda tmp, r=record: tmp.write_text(json.dumps(r, indent=1) + "\n"))
        print(f"{name}: {seconds:.0f} s", flush=True)
    print(table(results))


if __name__ == "__main__":
    main()

"""Read the regime map by its protocol's rule: the grid's cells, the noise reruns under another seed, the four
predictions, the winning cells (or the budget where the two sides would cross), and the figure.

    python benchmarks/regime_map.py [--results benchmarks/results/regime] [--reruns benchmarks/results/regime/seed1]

Writes ``map.json``, ``map.png`` and ``summary.json`` (the predictions, their verdicts, the winners or crossings)
into ``--results`` and prints the reading. Every cell must carry the sha256 of the same protocol file
(``benchmarks/regime_protocol.md``), reruns included. Where ``<results>/seeds/`` holds the follow-up's runs
(``benchmarks/regime_seeds_protocol.md``), its reading goes into ``summary.json`` too.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from dataclasses import asdict
from pathlib import Path

from benchmarks.regime import recorded
from lib.evaluate.cells import CELLS
from lib.evaluate.regime_map import budget, loss_ratio, mean_loss, plot_map, read_map, read_seeds, size_name
from lib.experiment.tables import json_safe
from lib.io import atomic_write

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--protocol", type=Path, default=REPO / "benchmarks" / "regime_protocol.md")
    parser.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results" / "regime")
    parser.add_argument("--reruns", type=Path, default=None, help="default: <results>/seed1")
    parser.add_argument("--seeds-protocol", type=Path, default=REPO / "benchmarks" / "regime_seeds_protocol.md",
                        help="the follow-up's protocol; its runs are read from <results>/seeds/seed<S>")  # fmt: skip
    args = parser.parse_args()
    sha = hashlib.sha256(args.protocol.read_bytes()).hexdigest()
    cells = recorded(args.results / CELLS, sha)
    reruns = recorded((args.reruns or args.results / "seed1") / CELLS, sha)
    reading = read_map(cells, reruns)
    rows = [{"cell": n, "size": size_name(r), "budget_x": round(budget(r), 3), "K": r["num_clusters"],
             "loss_ddm": mean_loss(r, "ddm"), "loss_oracle": mean_loss(r, "oracle"),
             "loss_monolith": mean_loss(r, "monolith"), "loss_ratio": loss_ratio(r),
             "loss_ratio_oracle": loss_ratio(r, "oracle"), "kid_ratio": r["ratio_monolith_over_ddm"].get("kid_attrnet"),
             "attr_acc_ddm": r["metrics"]["ddm"].get("attr_acc_attrnet"),
             "attr_acc_monolith": r["metrics"]["monolith"].get("attr_acc_attrnet"), "wall_s": r["wall_s"]}
            for n, r in cells.items()]  # fmt: skip
    result = {"protocol_sha256": sha, "cells": rows, **asdict(reading)}
    text = json.dumps(json_safe(result), indent=1, allow_nan=False) + "\n"
    atomic_write(args.results / "map.json", lambda p: p.write_text(text))
    plot_map(cells, reading, args.results / "map.png")
    print(f"{'cell':44s} {'size':>4s} {'budget':>6s} {'K':>2s} {'ratio':>7s} {'oracle':>7s} {'KID r':>6s} {'wall':>5s}")
    for r in rows:
        print(f"{r['cell']:44s} {r['size']:>4s} {r['budget_x']:6.2f} {r['K']:2d} {r['loss_ratio']:7.4f} "
              f"{r['loss_ratio_oracle']:7.4f} {r['kid_ratio'] or float('nan'):6.3f} {r['wall_s']:5.0f}")  # fmt: skip
    print(f"noise scale σ = {reading.sigma:.4f} from reruns {reading.reruns}; a difference counts beyond "
          f"{2 * reading.sigma:.4f}; winning cells (ratio > {1 + 2 * reading.sigma:.4f}): {reading.winners or 'none'}")
    for key, value in reading.predictions.items():
        print(f"  ({key}) {value['verdict']}: {json.dumps({k: v for k, v in value.items() if k != 'verdict'})}")
    for size, cross in reading.crossings.items():
        above = "the DDM" if cross["ddm_better_above"] else "the monolith"
        print(f"  size {size}: the loss fits cross at {cross['budget_x']:.3g}x [95 % {cross['interval_95'][0]:.3g}, "
              f"{cross['interval_95'][1]:.3g}], {above} better above it; slopes {cross['slopes']}")  # fmt: skip
    summary = {"protocol_sha256": sha, "sigma": reading.sigma, "winners": reading.winners,
               "predictions": reading.predictions, "crossings": reading.crossings}  # fmt: skip
    if (args.results / "seeds").is_dir():
        summary["seeds_followup"] = read_followup(args, cells, sha)
    text = json.dumps(json_safe(summary), indent=1, allow_nan=False) + "\n"
    atomic_write(args.results / "summary.json", lambda p: p.write_text(text))
    print(f"-> {args.results / 'map.json'}, {args.results / 'map.png'}, {args.results / 'summary.json'}")


def read_followup(args: argparse.Namespace, cells: dict[str, dict], sha: str) -> dict:
    """The follow-up's reading (``regime_seeds_protocol.md``): every cell with records under seeds 0, 1 and 2 (v1's
    reruns and the follow-up's runs), the pooled seed noise, the winners, and prediction (a) at size xs."""
    follow_sha = hashlib.sha256(args.seeds_protocol.read_bytes()).hexdigest()
    by_seed = {0: cells}
    for seed in (1, 2):
        by_seed[seed] = {**recorded(args.results / f"seed{seed}" / CELLS, sha),
                         **recorded(args.results / "seeds" / f"seed{seed}" / CELLS, follow_sha)}  # fmt: skip
    seeds = read_seeds(by_seed, low="size-xs_expert.steps-150", high="size-xs_expert.steps-5000")
    print(f"\nfollow-up (protocol {follow_sha[:12]}): pooled seed SD {seeds.pooled_sd:.4f} ({seeds.dof} dof); a cell "
          f"wins above a three-seed mean of {seeds.win_bar:.4f} with every seed above 1")  # fmt: skip
    for name in sorted(seeds.means, key=lambda n: -seeds.means[n]):
        per_seed = " ".join(f"{v:.4f}" for v in seeds.ratios[name].values())
        print(f"  {name:44s} mean {seeds.means[name]:.4f} ± {seeds.standard_errors[name]:.4f} (seeds {per_seed})")
    rise = seeds.budget_rise
    print(f"  winners: {seeds.winners or 'none'}; (a) at xs: 10x mean - 0.3x = {rise['rise']:+.4f}, counts beyond "
          f"{rise['needed']:.4f}: {rise['verdict']}")  # fmt: skip
    return {"protocol_sha256": follow_sha, **asdict(seeds)}


if __name__ == "__main__":
    main()

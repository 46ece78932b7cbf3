"""The regime map's driver: each cell of a grid through the comparison workflow, timed, one JSON line per cell.

Why a driver at all: ``workflows/compare.py`` already runs any list of cells, cached; what a map study adds is the
cost of each cell on this machine (its wall time, which one workflow execution over all cells cannot give), a fixed
protocol that every recorded cell names by its sha256, and partial results that survive a session's end. Each cell
is one ``pyflyte run`` of the comparison (the user's path, the Flyte cache kept under the base config's output
folder as ``make run`` keeps it), its record is appended to ``cells.jsonl`` as soon as it finishes, and a rerun
skips the cells already recorded under the same protocol, so a grid finishes over several sessions. Two workers
may run at once on disjoint ``--only`` lists (one per core): they share the output folder's stages and record their
cells in turn. Not the same cells under two ``--seed`` values at once: the comparison keeps one record per cell
name in an output folder, so one worker could read the other's (the driver refuses such a record).

    python benchmarks/regime.py --protocol benchmarks/regime_protocol.md --grid benchmarks/regime_grid.yaml \
        [--only CELL ...] [--out benchmarks/results/regime]

The grid file: ``base`` (a config file) and ``cells`` (a list of settings, ``section.field=value`` space-separated;
``""`` is the base config). The protocol file fixes the grid and the reading rule in writing before any cell runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import yaml

from lib.config import config_to_dict, load_config
from lib.evaluate.cells import CELLS, cell_configs
from lib.io import atomic_write, exclusive

REPO = Path(__file__).resolve().parents[1]
LOCK = ".cells.lock"  # in the results folder: workers started at once on disjoint --only lists record in turn


class RegimeError(ValueError):
    """A grid or a results file that cannot be continued (another protocol, an unknown cell)."""


def read_grid(path: Path) -> tuple[Path, list[str]]:
    """The base config path and the cells' settings of a grid file."""
    grid = yaml.safe_load(path.read_text())
    if not isinstance(grid, dict) or set(grid) != {"base", "cells"} or not isinstance(grid["cells"], list):
        raise RegimeError(f"{path}: expected the keys 'base' (a config file) and 'cells' (a list of settings)")
    return Path(grid["base"]), [str(c) for c in grid["cells"]]


def recorded(results: Path, protocol_sha: str) -> dict[str, dict]:
    """The cells already in ``results`` by name; refuses a file written under another protocol."""
    if not results.is_file():
        return {}
    cells = {}
    for number, line in enumerate(results.read_text().splitlines(), 1):
        record = json.loads(line)
        if record["protocol_sha256"] != protocol_sha:
            raise RegimeError(f"{results}:{number}: cell {record['cell']!r} was run under protocol "
                              f"{record['protocol_sha256'][:12]}, not {protocol_sha[:12]}: a changed protocol is a "
                              "new results folder")  # fmt: skip
        cells[record["cell"]] = record
    return cells


def record_cell(results: Path, protocol_sha: str, grid_order: list[str], record: dict) -> None:
    """Add one finished cell to ``results`` in grid order, keeping what other workers recorded since this one began
    (the read-merge-write holds a lock beside the file)."""
    with exclusive(results.parent / LOCK, "another regime worker is recording a cell; waiting"):
        done = recorded(results, protocol_sha) | {record["cell"]: record}
        lines = "".join(json.dumps(done[n], sort_keys=True) + "\n" for n in grid_order if n in done)
        atomic_write(results, lambda p: p.write_text(lines))


def run_cell(base: Path | str, name: str, setting: str, output_dir: Path, seed: int) -> tuple[dict, float]:
    """One ``pyflyte run`` of the comparison on one cell (``base``: a config file or the config as inline JSON,
    under ``seed``); returns its record and its wall time in seconds."""
    env = {**os.environ, "TMPDIR": str(output_dir / ".flyte-tmp"), "HOME": str(output_dir / ".flyte-home")}
    Path(env["TMPDIR"]).mkdir(parents=True, exist_ok=True)
    pyflyte = str(Path(sys.executable).parent / "pyflyte")
    settings = json.dumps([setting])
    command = [pyflyte, "run", "workflows/compare.py", "compare", "--cfg", str(base), "--settings", settings]
    started = time.perf_counter()
    proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        tail = f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        raise RuntimeError(f"cell {setting!r} failed (exit {proc.returncode}):\n{tail}")
    records = [json.loads(line) for line in (output_dir / "compare" / CELLS).read_text().splitlines()]
    record = next(r for r in records if r["cell"] == name)
    if record["config"]["seed"] != seed:  # the comparison keeps one record per cell name and output folder
        raise RegimeError(
            f"cell {name}: {output_dir / 'compare' / CELLS} holds its record under seed {record['config']['seed']}, "
            f"not {seed}: another driver compared this cell under another seed in the same output folder meanwhile. "
            "Run one seed after another on one output_dir (workers at once only on disjoint --only lists)"
        )
    return record, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--protocol", type=Path, required=True)
    parser.add_argument("--grid", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "regime")
    parser.add_argument("--only", nargs="+", help="run only these cells (by name)")
    parser.add_argument("--seed", type=int, help="the base config under this seed (data, split, clusters, training): "
                        "the protocol's noise-scale reruns; record them in their own --out")  # fmt: skip
    args = parser.parse_args()
    sha = hashlib.sha256(args.protocol.read_bytes()).hexdigest()
    base, settings = read_grid(args.grid)
    cfg = load_config(base)
    if args.seed is not None:  # the config travels inline: no second config file to drift from the first
        cfg = dataclasses.replace(cfg, seed=args.seed)
        base = json.dumps(config_to_dict(cfg))
    named = dict(zip([n for n, _ in cell_configs(cfg, settings)], settings, strict=True))
    unknown = sorted(set(args.only or []) - set(named))
    if unknown:
        raise RegimeError(f"--only: {unknown} are not cells of {args.grid} ({sorted(named)})")
    results = args.out / CELLS
    done = recorded(results, sha)
    todo = [n for n in named if n not in done and (not args.only or n in args.only)]
    print(f"regime: {len(named)} cell(s) in {args.grid}, {len(done)} recorded, {len(todo)} to run; protocol "
          f"{sha[:12]}; seed {cfg.seed}")  # fmt: skip
    machine = {"platform": platform.platform(), "cpu_count": os.cpu_count(), "python": platform.python_version()}
    for name in todo:
        record, wall = run_cell(base, name, named[name], REPO / cfg.output_dir, cfg.seed)  # output_dir: from the repo
        record |= {"wall_s": round(wall, 1), "protocol_sha256": sha, "machine": machine,
                   "finished": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}  # fmt: skip
        record_cell(results, sha, list(named), record)
        ratio, loss = record["ratio_monolith_over_ddm"], record["heldout_loss"]
        print(f"{name}: {wall:.0f} s; ratio FD∞ {ratio.get('fd_inf_attrnet', float('nan')):.3f}, KID "
              f"{ratio.get('kid_attrnet', float('nan')):.3f}; held-out loss ddm/monolith "
              f"{_mean(loss['ddm']):.4f}/{_mean(loss['monolith']):.4f}", flush=True)  # fmt: skip


def _mean(by_t: dict[str, float]) -> float:
    return sum(by_t.values()) / len(by_t)


if __name__ == "__main__":
    main()

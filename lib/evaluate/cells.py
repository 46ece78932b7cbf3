"""One comparison per setting: the DDM against its matched monolith, each setting a cell of a grid.

Why: "does training apart pay for my data and budget, and with which K?" is answered by running the same
comparison under several settings (K, steps, model size, a seed model...) and reading them side by side. A cell is
a set of config overrides on a base config (``section.field=value``, as the benchmarks' ``--set``); its record keeps
what the reader compares: the sampled metrics of both sides with the ratio monolith / DDM, and the held-out loss per
t (the cheap measure, which needs no feature network). Every cell shares the base config's ``output_dir``, so the
stages two cells have in common (ingest, encode, a model whose spec did not change) are built once.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd

from lib.config import ConfigError, RunConfig, config_to_dict, with_overrides
from lib.evaluate.heldout_loss import loss_by_t
from lib.io import atomic_write, exclusive

BASE = "base"  # the cell of the empty setting: the base config as it is
# Expert (and monolith) sizes for grids over capacity: ``size=<name>`` in a setting stands for these assignments.
# Parameters at the benchmark's 4x8x8x8 latents, patch 2x2x2 and MiniLM text: xs 48k, s 213k, m 1.28M (the
# benchmark's network), l 4.0M. xs and s are small enough to run out of capacity on the built-in data within minutes
# of CPU training, which is the regime where a monolith cannot hold everything and experts might pay.
SIZES = {
    "xs": {"num_layers": 1, "num_heads": 2, "head_dim": 16, "ffn_dim": 128},
    "s": {"num_layers": 2, "num_heads": 2, "head_dim": 32, "ffn_dim": 256},
    "m": {"num_layers": 4, "num_heads": 4, "head_dim": 32, "ffn_dim": 512},
    "l": {"num_layers": 6, "num_heads": 6, "head_dim": 32, "ffn_dim": 768},
}
CELLS = "cells.jsonl"
TABLE = "cells.md"


def setting_items(setting: str) -> list[str]:
    """``"cluster.num_clusters=4 size=s"`` -> its assignments (whitespace-separated; ``size=<name>`` expanded to the
    expert fields of ``SIZES``)."""
    items = []
    for item in setting.split():
        key, _, value = item.partition("=")
        if key == "size":
            if value not in SIZES:
                raise ConfigError(f"{item}: size must be one of {', '.join(SIZES)}")
            items += [f"expert.{field}={v}" for field, v in SIZES[value].items()]
        else:
            items.append(item)
    return items


def cell_name(setting: str) -> str:
    """A folder name that says the setting: ``cluster.num_clusters=4`` -> ``cluster.num_clusters-4``; the empty one
    is ``base``."""
    items = setting.split()  # as written: size=s names the cell size-s
    if not items:
        return BASE
    parts = [re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{key}-{value}").strip("-")
             for key, _, value in (item.partition("=") for item in items)]  # fmt: skip
    return "_".join(parts)


def cell_configs(cfg: RunConfig, settings: list[str]) -> list[tuple[str, RunConfig]]:
    """(cell name, config) per setting; refuses two settings that name one cell, and a bad assignment naming it.

    Only ``section.field`` assignments are taken (``with_overrides``), so every cell keeps the base config's
    ``output_dir`` (where cells share the stages they have in common) and its seed (the same data and split)."""
    if not settings:
        raise ConfigError("settings: give at least one setting ('' is the base config)")
    cells, names = [], set()
    for setting in settings:
        name = cell_name(setting)
        if name in names:
            raise ConfigError(f"{setting or repr(setting)}: names the cell {name!r} a second time")
        names.add(name)
        cells.append((name, with_overrides(cfg, setting_items(setting))))
    return cells


def _means(report: pd.DataFrame, method: str) -> dict[str, float]:
    rows = report[(report["method"] == method) & (report["cluster"] == -1)]
    return {r.metric: float(r.mean) for r in rows.itertuples() if pd.notna(r.mean)}


def cell_record(
    name: str, setting: str, cfg: RunConfig, results: str, report: pd.DataFrame, heldout: pd.DataFrame
) -> dict:
    """One JSON line: the cell's setting and config, both sides' metrics, the ratios and the held-out loss per t."""
    ddm = f"ddm:{cfg.sample.strategy}"
    ratios = {m.removeprefix("ratio_"): v for m, v in _means(report, ddm).items() if m.startswith("ratio_")}
    side = {"ddm": ddm, "monolith": "monolith"}
    return {
        "cell": name,
        "setting": setting,
        "results": results,
        "num_clusters": cfg.cluster.num_clusters,
        "strategy": ddm,
        "metrics": {k: {m: v for m, v in _means(report, method).items() if not m.startswith("ratio_")}
                    for k, method in side.items()},  # fmt: skip
        "ratio_monolith_over_ddm": ratios,
        "heldout_loss": {k: {str(t): v for t, v in loss_by_t(heldout, method).items()} for k, method in side.items()},
        "heldout_loss_oracle": {str(t): v for t, v in loss_by_t(heldout, "ddm:oracle").items()},
        "config": config_to_dict(cfg),
    }


def cells_table(records: list[dict]) -> pd.DataFrame:
    """One row per cell: what decides it at a glance (ratios > 1 favour the DDM; losses: lower is better)."""
    rows = []
    for r in records:
        loss = {k: r["heldout_loss"][k] for k in ("ddm", "monolith")}
        rows.append({
            "cell": r["cell"],
            "K": r["num_clusters"],
            "ratio_fd_inf": r["ratio_monolith_over_ddm"].get("fd_inf_attrnet", np.nan),
            "ratio_kid": r["ratio_monolith_over_ddm"].get("kid_attrnet", np.nan),
            "attr_acc_ddm": r["metrics"]["ddm"].get("attr_acc_attrnet", np.nan),
            "attr_acc_monolith": r["metrics"]["monolith"].get("attr_acc_attrnet", np.nan),
            "loss_ddm": float(np.mean(list(loss["ddm"].values()))),
            "loss_monolith": float(np.mean(list(loss["monolith"].values()))),
            "loss_t1_ddm": loss["ddm"].get("1.0", np.nan),
            "loss_t1_monolith": loss["monolith"].get("1.0", np.nan),
        })  # fmt: skip
    return pd.DataFrame(rows)


def merge_cells(existing: list[dict], new: list[dict]) -> list[dict]:
    """Every cell of both, by name: a cell compared again replaces its old record where it stood, new cells follow."""
    fresh = {r["cell"]: r for r in new}
    kept = [fresh.pop(r["cell"], r) for r in existing]
    return kept + [r for r in new if r["cell"] in fresh]


def write_cells(records: list[dict], folder: str | Path) -> tuple[Path, str]:
    """Add ``records`` to ``cells.jsonl`` and ``cells.md`` (the table) in ``folder``, each written atomically; returns
    the JSON lines' path and the table's text. The folder keeps every cell compared under one ``output_dir``, so a
    grid run as several executions, one after another or at once (a regime driver's workers), ends with one table:
    the read-merge-write holds a lock, and a cell compared again keeps only its latest record."""
    folder = Path(folder)
    lock = folder.parent / f".{folder.name}.lock"  # beside the folder: what is published holds only the table
    with exclusive(lock, f"{folder}: another comparison is writing its cells; waiting"):
        existing = folder / CELLS
        old = [json.loads(line) for line in existing.read_text().splitlines()] if existing.is_file() else []
        records = merge_cells(old, records)
        lines = "".join(json.dumps(r, sort_keys=True) + "\n" for r in records)
        atomic_write(existing, lambda p: p.write_text(lines))
        text = cells_table(records).to_string(index=False, float_format=lambda v: f"{v:.4f}")
        atomic_write(folder / TABLE, lambda p: p.write_text(f"```\n{text}\n```\n"))
    return existing, text

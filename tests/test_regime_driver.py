"""The regime driver's bookkeeping: its grid file, and results that resume only under the same protocol."""

import json

import pytest

from benchmarks.regime import RegimeError, read_grid, record_cell, recorded


def test_grid_file_and_refusals(tmp_path):
    grid = tmp_path / "grid.yaml"
    grid.write_text("base: configs/tiny.yaml\ncells: ['', 'cluster.num_clusters=4']\n")
    base, cells = read_grid(grid)
    assert str(base) == "configs/tiny.yaml" and cells == ["", "cluster.num_clusters=4"]
    grid.write_text("base: configs/tiny.yaml\ncell: ['']\n")
    with pytest.raises(RegimeError, match="expected the keys 'base'"):
        read_grid(grid)


def test_results_resume_only_under_their_protocol(tmp_path):
    results = tmp_path / "cells.jsonl"
    assert recorded(results, "a" * 64) == {}
    results.write_text(json.dumps({"cell": "base", "protocol_sha256": "a" * 64, "wall_s": 3.0}) + "\n")
    assert recorded(results, "a" * 64)["base"]["wall_s"] == 3.0
    with pytest.raises(RegimeError, match=r"cells.jsonl:1: cell 'base' was run under protocol aaaaaaaaaaaa, not bbbb"):
        recorded(results, "b" * 64)


def test_workers_record_in_grid_order_without_losing_each_others_cells(tmp_path):
    results = tmp_path / "cells.jsonl"
    order = ["xs", "base", "m"]
    for name in ("m", "xs"):  # two workers, each adding the cell it finished
        record_cell(results, "a" * 64, order, {"cell": name, "protocol_sha256": "a" * 64, "wall_s": len(name)})
    record_cell(results, "a" * 64, order, {"cell": "xs", "protocol_sha256": "a" * 64, "wall_s": 9})  # a rerun
    lines = [json.loads(line) for line in results.read_text().splitlines()]
    assert [(r["cell"], r["wall_s"]) for r in lines] == [("xs", 9), ("m", 1)]
    with pytest.raises(RegimeError, match="was run under protocol"):
        record_cell(results, "b" * 64, order, {"cell": "base", "protocol_sha256": "b" * 64})


def test_a_record_written_under_another_seed_is_refused_not_taken(tmp_path, monkeypatch):
    """Two drivers comparing one cell under two seeds in one output folder: the comparison keeps the latest record
    per cell name, so the one that finished first may read the other's; it must say so instead of recording it."""
    import subprocess

    from benchmarks.regime import run_cell

    def comparison(command, **kwargs):  # what the other seed's run left: its record under the same cell name
        (tmp_path / "compare").mkdir(exist_ok=True)
        record = {"cell": "base", "config": {"seed": 2}, "heldout_loss": {}}
        (tmp_path / "compare" / "cells.jsonl").write_text(json.dumps(record) + "\n")
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr("benchmarks.regime.subprocess.run", comparison)
    assert run_cell("base.yaml", "base", "", tmp_path, seed=2)[0]["config"]["seed"] == 2
    with pytest.raises(RegimeError, match=r"cell base: .*cells.jsonl holds its record under seed 2, not 1"):
        run_cell("base.yaml", "base", "", tmp_path, seed=1)

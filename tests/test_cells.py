"""The comparison's table of cells: every cell compared under one output folder, whoever wrote it and when."""

import json
import multiprocessing

from lib.evaluate.cells import CELLS, TABLE, merge_cells, write_cells


def _record(name: str, loss: float) -> dict:
    loss_by_t = {"0.5": loss, "1.0": loss}
    loss = {"ddm": loss_by_t, "monolith": loss_by_t}
    return {"cell": name, "num_clusters": 4, "ratio_monolith_over_ddm": {"kid_attrnet": 0.5},
            "metrics": {"ddm": {}, "monolith": {}}, "heldout_loss": loss}  # fmt: skip


def test_a_cell_compared_again_replaces_its_record_in_place_and_new_cells_follow():
    old = [_record("a", 1.0), _record("b", 2.0)]
    merged = merge_cells(old, [_record("c", 3.0), _record("a", 4.0)])
    assert [(r["cell"], r["heldout_loss"]["ddm"]["1.0"]) for r in merged] == [("a", 4.0), ("b", 2.0), ("c", 3.0)]


def _write(folder: str, name: str) -> None:
    write_cells([_record(name, 1.0)], folder)


def test_writers_at_once_keep_every_cell(tmp_path):
    folder = tmp_path / "compare"
    names = [f"cell-{i}" for i in range(8)]
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_write, args=(str(folder), n)) for n in names]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
        assert p.exitcode == 0
    cells = [json.loads(line)["cell"] for line in (folder / CELLS).read_text().splitlines()]
    assert sorted(cells) == names, "no writer lost another's cell"
    assert all(n in (folder / TABLE).read_text() for n in names)
    assert sorted(p.name for p in folder.iterdir()) == [CELLS, TABLE], "the lock lives beside the folder"

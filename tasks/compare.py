"""The comparison grid's bookkeeping: one record per cell, and the table of all cells beside the results."""

import json
import tempfile

from flytekit import task
from pandera.typing import DataFrame

from data_schemas.evaluate import EvalReport, HeldoutLoss
from lib.config import RunConfig
from lib.evaluate.cells import cell_record, write_cells
from lib.io import persist
from lib.storage import is_remote
from tasks.image import TASK_IMAGE


@task(container_image=TASK_IMAGE, cache=False)
def cell_record_task(
    name: str,
    setting: str,
    cfg: RunConfig,
    results: str,
    report: DataFrame[EvalReport],
    heldout: DataFrame[HeldoutLoss],
) -> str:
    """The cell's JSON line (uncached: it only reads what the cached stages produced)."""
    return json.dumps(cell_record(name, setting, cfg, results, report, heldout), sort_keys=True)


@task(container_image=TASK_IMAGE, cache=False)
def write_cells_task(output_dir: str, records: list[str]) -> str:
    """``<output_dir>/compare/cells.jsonl`` and ``cells.md``; prints the table and returns the folder."""
    dest = f"{output_dir.rstrip('/')}/compare"
    cells = [json.loads(r) for r in records]
    if is_remote(dest):
        with tempfile.TemporaryDirectory() as tmp:
            _, text = write_cells(cells, tmp)
            persist(tmp, dest)
    else:
        _, text = write_cells(cells, dest)  # each file written atomically in place
    print(f"compare: {len(records)} cell(s) -> {dest}/cells.jsonl\n{text}", flush=True)
    return dest

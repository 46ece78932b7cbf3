"""The comparison grid's bookkeeping: one record per cell, and the table of all cells beside the results."""

import json
import logging
import tempfile
from pathlib import Path

from flytekit import task
from pandera.typing import DataFrame

from data_schemas.evaluate import EvalReport, HeldoutLoss
from lib.config import RunConfig
from lib.evaluate.cells import CELLS, cell_record, write_cells
from lib.io import persist
from lib.storage import is_remote, read_text
from tasks.image import TASK_IMAGE

log = logging.getLogger(__name__)


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
    """Adds the records to ``<output_dir>/compare/cells.jsonl`` and ``cells.md`` (every cell compared under this
    ``output_dir``); prints the table and returns the folder."""
    dest = f"{output_dir.rstrip('/')}/compare"
    cells = [json.loads(r) for r in records]
    if is_remote(dest):  # the bucket's table is merged like a local one, but two writers at once are not locked out
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp) / "compare"
            local.mkdir()
            if (old := read_text(f"{dest}/{CELLS}")) is not None:
                (local / CELLS).write_text(old)
            _, text = write_cells(cells, local)
            persist(local, dest)
    else:
        _, text = write_cells(cells, dest)  # each file written atomically in place
    log.info(f"compare: {len(records)} cell(s) -> {dest}/cells.jsonl\n{text}")
    return dest

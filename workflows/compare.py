"""The DDM against its matched monolith under several settings: ``pyflyte run workflows/compare.py compare
--cfg configs/tiny.yaml --settings '["", "cluster.num_clusters=4", "expert.seed_fraction=0.25"]'``.

Each setting is a cell: config overrides on the base config (``section.field=value``, space-separated; ``""`` is the
base config itself), run through the pipeline's own stages into ``<output_dir>/compare/<cell>/`` and scored on the
held-out prompts. Cells share the base ``output_dir``, so what two cells have in common (the data, its encoding, a
model whose spec a setting does not touch) is built once, and a rerun with more settings only builds the new cells.
The table of all cells lands in ``<output_dir>/compare/cells.jsonl`` and ``cells.md``.
"""

from flytekit import dynamic, workflow

from lib.config import RunConfig
from lib.evaluate.cells import cell_configs
from tasks.compare import cell_record_task, write_cells_task
from tasks.image import TASK_IMAGE
from workflows.pipeline import run_and_score


@dynamic(container_image=TASK_IMAGE)
def compare_cells(cfg: RunConfig, settings: list[str]) -> list[str]:
    """One pipeline run per setting, and its record; a dynamic workflow because the settings are known at run time."""
    records = []
    for (name, cell_cfg), setting in zip(cell_configs(cfg, settings), settings, strict=True):
        results, report, heldout = run_and_score(cfg=cell_cfg, results_name=f"compare/{name}")
        records.append(
            cell_record_task(name=name, setting=setting, cfg=cell_cfg, results=results, report=report, heldout=heldout)
        )
    return records


@workflow
def compare(cfg: RunConfig = RunConfig(), settings: list[str] = [""]) -> str:  # noqa: B006 (Flyte default value)
    """Returns the folder of the cells' table (``cells.jsonl``, ``cells.md``).

    Args:
        cfg: the base run config (a YAML file or inline JSON, as for the pipeline).
        settings: one entry per cell, e.g. ``"cluster.num_clusters=4 expert.steps=300"``; ``""`` is the base config.
    """
    return write_cells_task(output_dir=cfg.output_dir, records=compare_cells(cfg=cfg, settings=settings))

"""Ingestion sub-workflow: ``pyflyte run workflows/ingest.py ingest_wf --cfg configs/tiny.yaml``."""

from flytekit import workflow

from lib.config import RunConfig
from tasks.ingest import ingest_clips
from tasks.report import report_ingest


@workflow
def ingest_wf(cfg: RunConfig = RunConfig()) -> str:
    """Returns where the shards and tables were persisted."""
    shards, index, quarantine, attributes = ingest_clips(cfg=cfg.data, seed=cfg.seed, output_dir=cfg.output_dir)
    return report_ingest(
        output_dir=cfg.output_dir, shards=shards, index=index, quarantine=quarantine, attributes=attributes
    )

"""Ingestion sub-workflow: ``pyflyte run workflows/ingest.py ingest_wf --cfg configs/tiny.yaml``.

For ``data.source: raw`` the long videos are listed, cut into scenes one map-task element per video (a video that
fails is a quarantine row; an element that crashes is too, as ``cut_failed``), and their clip windows ingested as a
manifest. For the other sources the listing is empty and the map task has nothing to do.
"""

import functools

from flytekit import map_task, workflow
from flytekit.types.directory import FlyteDirectory
from pandera.typing import DataFrame

from data_schemas.ingest import ClipAttributes, ClipIndex, FilteredClip, QuarantineRecord
from lib.config import RunConfig
from tasks.ingest import ingest_clips
from tasks.raw import cut_scenes, list_raw
from tasks.report import report_ingest

# Any share of videos may fail to cut: ingest_clips turns each failed element into a quarantine row and applies
# data.max_bad_fraction. (flytekit treats 0 as "unset", i.e. 1.0, hence the smallest positive ratio.)
CUT_MIN_SUCCESS_RATIO = 1e-9


@workflow
def ingest_stage(
    cfg: RunConfig,
) -> tuple[
    FlyteDirectory,
    DataFrame[ClipIndex],
    DataFrame[QuarantineRecord],
    DataFrame[ClipAttributes],
    DataFrame[FilteredClip],
]:
    """Clip shards, their index, the quarantined rows, built-in attributes and the quality-filtered clips."""
    videos, plan = list_raw(cfg=cfg.data)
    cuts = map_task(functools.partial(cut_scenes, plan=plan), min_success_ratio=CUT_MIN_SUCCESS_RATIO)(video=videos)
    return ingest_clips(cfg=cfg.data, seed=cfg.seed, output_dir=cfg.output_dir, videos=videos, cuts=cuts)


@workflow
def ingest_wf(cfg: RunConfig = RunConfig()) -> str:
    """Returns where the shards and tables were persisted."""
    shards, index, quarantine, attributes, filtered = ingest_stage(cfg=cfg)
    return report_ingest(
        output_dir=cfg.output_dir,
        shards=shards,
        index=index,
        quarantine=quarantine,
        attributes=attributes,
        filtered=filtered,
    )

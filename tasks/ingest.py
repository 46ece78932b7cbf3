"""Ingestion task: the first typed edge of the pipeline."""

import logging
from typing import NamedTuple

from flytekit import Cache, Resources, task
from flytekit.types.directory import FlyteDirectory
from pandera.typing import DataFrame

from data_schemas.ingest import ClipAttributes, ClipIndex, FilteredClip, QuarantineRecord
from data_schemas.raw import SceneWindow
from lib.config import DataConfig
from lib.data.ingest import ingest
from lib.data.raw import RawVideo
from tasks.common import publish_stage, stage_dir
from tasks.image import TASK_IMAGE

log = logging.getLogger(__name__)


class IngestOutputs(NamedTuple):
    shards: FlyteDirectory
    index: DataFrame[ClipIndex]
    quarantine: DataFrame[QuarantineRecord]
    attributes: DataFrame[ClipAttributes]
    filtered: DataFrame[FilteredClip]


@task(container_image=TASK_IMAGE, cache=Cache(version="ingest-v6"), requests=Resources(cpu="1", mem="2Gi"), retries=1)
def ingest_clips(
    cfg: DataConfig,
    seed: int,
    output_dir: str,
    videos: list[RawVideo],
    cuts: list[DataFrame[SceneWindow] | None],
) -> IngestOutputs:
    """Cached on (data config, seed, output_dir, cuts): a manifest whose files change under the same URI needs a new
    URI. ``videos``/``cuts``: the raw videos and their map-task cuts (``data.source: raw``), [] for other sources."""
    out = stage_dir(output_dir, "ingest", cfg, seed)
    result = ingest(cfg, seed, out, videos, cuts) if cfg.source == "raw" else ingest(cfg, seed, out)
    log.info(f"ingest: {result.summary()}")
    shards = FlyteDirectory(publish_stage(output_dir, out))
    return IngestOutputs(shards, result.index, result.quarantine, result.attributes, result.filtered)

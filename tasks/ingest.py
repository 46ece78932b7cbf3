"""Ingestion task: the first typed edge of the pipeline."""

from typing import NamedTuple

from flytekit import Cache, Resources, task
from flytekit.types.directory import FlyteDirectory
from pandera.typing import DataFrame

from data_schemas.ingest import ClipAttributes, ClipIndex, QuarantineRecord
from lib.config import DataConfig
from lib.data.ingest import ingest
from tasks.common import stage_dir
from tasks.image import TASK_IMAGE


class IngestOutputs(NamedTuple):
    shards: FlyteDirectory
    index: DataFrame[ClipIndex]
    quarantine: DataFrame[QuarantineRecord]
    attributes: DataFrame[ClipAttributes]


@task(container_image=TASK_IMAGE, cache=Cache(version="ingest-v2"), requests=Resources(cpu="1", mem="2Gi"), retries=1)
def ingest_clips(cfg: DataConfig, seed: int, output_dir: str) -> IngestOutputs:
    """Cached on (data config, seed, output_dir): a manifest whose files change under the same URI needs a new URI."""
    out = stage_dir(output_dir, "ingest", cfg, seed)
    result = ingest(cfg, seed, out)
    print(f"ingest: {result.summary()}", flush=True)
    return IngestOutputs(FlyteDirectory(str(out)), result.index, result.quarantine, result.attributes)

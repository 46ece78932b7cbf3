"""Encode task: latents + text embeddings, computed once and cached."""

from flytekit import Cache, Resources, task
from flytekit.types.directory import FlyteDirectory
from pandera.typing import DataFrame

from data_schemas.encode import EncodedIndex
from data_schemas.ingest import ClipIndex
from lib.config import EncodeConfig
from lib.encode.store import encode_dataset
from tasks.common import stage_dir, uri_of


@task(cache=Cache(version="encode-v1"), requests=Resources(cpu="2", mem="4Gi"), retries=1)
def encode_clips(
    cfg: EncodeConfig, shards: FlyteDirectory, index: DataFrame[ClipIndex], output_dir: str
) -> tuple[FlyteDirectory, DataFrame[EncodedIndex]]:
    out = stage_dir(output_dir, "encode", cfg, uri_of(shards))
    encoded_index = encode_dataset(shards.download(), index, cfg, out)
    return FlyteDirectory(str(out)), encoded_index

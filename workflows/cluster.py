"""Ingest -> codec -> encode -> embed -> cluster.

``pyflyte run workflows/cluster.py cluster_wf --cfg configs/tiny.yaml``
"""

from flytekit import workflow
from flytekit.types.directory import FlyteDirectory
from flytekit.types.file import FlyteFile
from pandera.typing import DataFrame

from data_schemas.cluster import ClusterAssignment, ClusterSummary
from data_schemas.ingest import ClipAttributes, ClipIndex
from lib.config import RunConfig
from tasks.cluster import cluster_clips, embed_clips
from tasks.encode import encode_clips, train_codec
from workflows.ingest import ingest_stage


@workflow
def cluster_stage(
    cfg: RunConfig,
) -> tuple[
    FlyteDirectory,
    DataFrame[ClipIndex],
    DataFrame[ClipAttributes],
    FlyteDirectory,
    DataFrame[ClusterAssignment],
    DataFrame[ClusterSummary],
    FlyteFile,
]:
    """Clip shards, index, attributes, encoded latents/text, each clip's cluster, a per-cluster summary, centroids."""
    shards, index, _, attributes, _ = ingest_stage(cfg=cfg)
    codec = train_codec(
        encode=cfg.encode, cfg=cfg.codec, seed=cfg.seed, shards=shards, index=index, output_dir=cfg.output_dir
    )
    encoded, _ = encode_clips(cfg=cfg.encode, shards=shards, index=index, codec=codec, output_dir=cfg.output_dir)
    embeddings = embed_clips(cfg=cfg.cluster, shards=shards, encoded=encoded, index=index, output_dir=cfg.output_dir)
    assignments, summary, centroids = cluster_clips(
        cfg=cfg.cluster,
        seed=cfg.seed,
        embeddings=embeddings,
        index=index,
        attributes=attributes,
        output_dir=cfg.output_dir,
    )
    return shards, index, attributes, encoded, assignments, summary, centroids


@workflow
def cluster_wf(cfg: RunConfig = RunConfig()) -> DataFrame[ClusterSummary]:
    """Returns one row per cluster: size, fraction and the captions of its most typical clips."""
    _, _, _, _, _, summary, _ = cluster_stage(cfg=cfg)
    return summary

"""Embed and cluster tasks: which clips each expert trains on, with a report a person reads before training."""

import json
import logging
from pathlib import Path

import numpy as np
from flytekit import Cache, Deck, Resources, task
from flytekit.types.directory import FlyteDirectory
from flytekit.types.file import FlyteFile
from pandera.typing import DataFrame
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

from data_schemas.cluster import ClusterAssignment, ClusterSummary
from data_schemas.ingest import ClipAttributes, ClipIndex
from lib.cluster.embedders import compute_embeddings
from lib.cluster.kmeans import cluster_fit_on
from lib.cluster.report import SCORE_COLUMNS, assignment_frame, cluster_report
from lib.config import ClusterConfig
from lib.data.split import TRAIN
from lib.encode.store import load_encoded
from lib.io import atomic_write
from tasks.common import publish_stage, stage_dir, tracker_for, uri_of
from tasks.image import TASK_IMAGE

log = logging.getLogger(__name__)


@task(container_image=TASK_IMAGE, cache=Cache(version="embed-v2"), requests=Resources(cpu="2", mem="4Gi"), retries=1)
def embed_clips(
    cfg: ClusterConfig, shards: FlyteDirectory, encoded: FlyteDirectory, index: DataFrame[ClipIndex], output_dir: str
) -> FlyteFile:
    """Embeddings [N, D] in ClipIndex order, the clip ids in the file's metadata, the embedders' fitted state beside."""
    embed_cfg = (cfg.embedders, cfg.image_tower_path, cfg.image_tower_frames)
    out = stage_dir(output_dir, "embed", embed_cfg, uri_of(shards), uri_of(encoded))
    clip_ids = index["clip_id"].tolist()
    pooled = load_encoded(encoded.download(), clip_ids).pooled.numpy() if "text" in cfg.embedders else None
    x, standard = compute_embeddings(cfg, shards.download(), index, pooled_text=pooled)
    path = out / "embeddings.safetensors"
    arrays = {"embeddings": x, **standard}
    atomic_write(path, lambda tmp: save_file(arrays, str(tmp), metadata={"clip_ids": json.dumps(clip_ids)}))
    return FlyteFile(publish_stage(output_dir, path))


def _read_embeddings(path: str) -> tuple[np.ndarray, list[str], dict[str, np.ndarray]]:
    """Embeddings, their clip ids and the embedders' fitted state."""
    with safe_open(path, framework="numpy") as f:
        clip_ids = json.loads(f.metadata()["clip_ids"])
    arrays = load_file(path)
    return arrays.pop("embeddings"), clip_ids, arrays


@task(
    container_image=TASK_IMAGE,
    cache=Cache(version="cluster-v3"),
    requests=Resources(cpu="2", mem="4Gi"),
    enable_deck=True,
)
def cluster_clips(
    cfg: ClusterConfig,
    seed: int,
    embeddings: FlyteFile,
    index: DataFrame[ClipIndex],
    attributes: DataFrame[ClipAttributes],
    output_dir: str,
) -> tuple[DataFrame[ClusterAssignment], DataFrame[ClusterSummary], FlyteFile]:
    """Cluster assignment of every clip (centroids fitted on the train role), per-cluster summary and the centroids
    (safetensors, with the embedders' fitted state: what places new clips later); the report goes to a Deck, with
    the AMI of the clusters with each attribute when the clips carry attributes (built-in data)."""
    out = stage_dir(output_dir, "cluster", cfg, seed, uri_of(embeddings))
    x, clip_ids, state = _read_embeddings(embeddings.download())
    roles = index.set_index("clip_id").loc[clip_ids, "role"].to_numpy()
    result = cluster_fit_on(x, roles == TRAIN, cfg, seed)
    captions = index.set_index("clip_id").loc[clip_ids, "caption"].tolist()
    attrs = attributes.set_index("clip_id").loc[clip_ids].reset_index() if len(attributes) else None
    scores = index.set_index("clip_id").loc[clip_ids, [c for c in SCORE_COLUMNS if c in index.columns]]
    report = cluster_report(x, result, captions, attrs, seed, cfg.silhouette_sample, out / "projection.png", scores)
    html = report.to_html()
    atomic_write(out / "report.html", lambda tmp: Path(tmp).write_text(html))
    Deck("clusters", html)
    centroids = out / "centroids.safetensors"
    atomic_write(centroids, lambda tmp: save_file({"centroids": result.centroids, **state}, str(tmp)))
    tracker = tracker_for(output_dir)
    if tracker is not None:  # the clustering belongs to the execution: its plot and report on the execution's run
        run_id = tracker.execution_run()
        tracker.log_artifact(run_id, out / "projection.png", "clusters")
        tracker.log_artifact(run_id, out / "report.html", "clusters")
        if report.ami:  # what the split follows (content or colour), comparable between executions
            tracker.log_metrics(run_id, [{"step": 0, **{f"cluster_ami.{a}": v for a, v in report.ami.items()}}])
    ami = ", ".join(f"{k} {v:.2f}" for k, v in report.ami.items())
    centroids_uri = publish_stage(output_dir, centroids)  # with the report and plot beside it
    where = centroids_uri.rsplit("/", 1)[0]
    log.info(f"cluster: sizes {report.sizes}, silhouette {report.silhouette:.3f}, AMI {ami} -> {where}")
    return assignment_frame(clip_ids, result, roles), report.summary_frame(), FlyteFile(centroids_uri)

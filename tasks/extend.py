"""Grow a DDM with new data: place the new clips, train experts for the new clusters only, refit the router, assemble.

The parent's experts are never trained here: the grown folder copies them (``lib.extend.grow``), and the new experts
go through the same ``train_experts`` map task, trainer and skip-by-hash as the pipeline's.
"""

import dataclasses
import json

import torch
from flytekit import Cache, Resources, task
from flytekit.types.directory import FlyteDirectory
from flytekit.types.file import FlyteFile
from pandera.typing import DataFrame
from safetensors.numpy import load_file, save_file

from data_schemas.cluster import ClusterAssignment
from data_schemas.ingest import ClipIndex
from lib.cluster.embedders import compute_embeddings
from lib.config import DataConfig, EncodeConfig, RouterConfig, RunConfig
from lib.encode.store import load_encoded, read_codec_info
from lib.extend.assign import place_new_clips
from lib.extend.grow import check_same_codec, grow_ddm, read_parent
from lib.io import atomic_write
from lib.train.router import train_router
from lib.train.specs import ExpertSpec, expert_specs, training_rows
from tasks.common import publish_stage, stage_dir, uri_of
from tasks.image import TASK_IMAGE


@task(container_image=TASK_IMAGE, cache=Cache(version="extend-data-v1"))
def extension_data(cfg: RunConfig) -> DataConfig:
    """The new data's config: the run's data section with the ``extend`` section's source and clips."""
    return cfg.extend.data_config(cfg.data)


@task(container_image=TASK_IMAGE, cache=Cache(version="place-v1"), requests=Resources(cpu="2", mem="4Gi"))
def place_new_data(
    cfg: RunConfig,
    parent: FlyteDirectory,
    parent_assignments: DataFrame[ClusterAssignment],
    shards: FlyteDirectory,
    encoded: FlyteDirectory,
    index: DataFrame[ClipIndex],
) -> tuple[DataFrame[ClusterAssignment], FlyteFile, list[ExpertSpec], str]:
    """Embed the new clips with the parent's embedders and fitted state, assign them (join or new cluster), and
    spec one expert per new cluster. Returns the assignments, all centroids, the specs and the placement (JSON)."""
    ddm = read_parent(parent.download())
    check_same_codec(ddm, read_codec_info(encoded.download()), cfg.encode)
    clash = sorted(set(index["clip_id"]) & set(parent_assignments["clip_id"]))
    if clash:
        raise ValueError(f"extend: {len(clash)} new clip id(s) are parent clips, e.g. {clash[:3]}: the new data must "
                         "be new (another extend.scenes, or a manifest of other videos)")  # fmt: skip
    cluster_cfg = dataclasses.replace(cfg.cluster, **ddm.clustering)  # the parent's embedders, not the config's
    clip_ids = index["clip_id"].tolist()
    pooled = load_encoded(encoded.download(), clip_ids).pooled.numpy() if "text" in cluster_cfg.embedders else None
    x, _ = compute_embeddings(cluster_cfg, shards.download(), index, pooled_text=pooled, standard=ddm.state)
    parent_train = training_rows(parent_assignments)
    placed = place_new_clips(x, clip_ids, index["role"].to_numpy(), ddm.centroids,
                             parent_train["distance"].to_numpy(), cfg.extend, cfg.cluster.niter, cfg.seed)  # fmt: skip
    out = stage_dir(cfg.output_dir, "extend-place", cfg.extend, cfg.cluster, cfg.seed, uri_of(parent), uri_of(encoded))
    centroids = out / "centroids.safetensors"
    atomic_write(centroids, lambda tmp: save_file({"centroids": placed.centroids, **ddm.state}, str(tmp)))
    specs = expert_specs(cfg, placed.assignments, cluster_ids=placed.new_cluster_ids)
    summary = json.dumps(placed.summary)
    print(f"extend: placement {summary}", flush=True)
    return placed.assignments, FlyteFile(publish_stage(cfg.output_dir, centroids)), specs, summary


@task(container_image=TASK_IMAGE, cache=Cache(version="refit-router-v1"), requests=Resources(cpu="2", mem="4Gi"))
def refit_router(
    cfg: RouterConfig,
    seed: int,
    centroids: FlyteFile,
    parent_encoded: FlyteDirectory,
    parent_assignments: DataFrame[ClusterAssignment],
    encoded: FlyteDirectory,
    assignments: DataFrame[ClusterAssignment],
    output_dir: str,
) -> FlyteDirectory:
    """The router over all K + n clusters, on the parent's training clips and the new ones (a router is cheap:
    retraining it whole is simpler and better than patching its last layer)."""
    k = len(load_file(centroids.download())["centroids"])
    parts = [(parent_encoded, training_rows(parent_assignments)), (encoded, training_rows(assignments))]
    keys = [(uri_of(e), rows["cluster_id"].tolist()) for e, rows in parts]
    out = stage_dir(output_dir, "router", cfg, k, seed, *keys)
    data = [load_encoded(e.download(), rows["clip_id"].tolist()) for e, rows in parts]
    labels = torch.tensor([c for _, rows in parts for c in rows["cluster_id"]], dtype=torch.int64)
    result = train_router(torch.cat([d.latents for d in data]), torch.cat([d.pooled for d in data]), labels, cfg, k,
                          seed, out)  # fmt: skip
    print("refit router accuracy per t bucket:", json.dumps(result.report.round(3).to_dict("records")), flush=True)
    return FlyteDirectory(publish_stage(output_dir, result.model_dir))


@task(container_image=TASK_IMAGE, cache=Cache(version="grow-v1"), requests=Resources(cpu="1", mem="2Gi"))
def grow_ddm_task(
    encode_cfg: EncodeConfig,
    parent: FlyteDirectory,
    specs: list[ExpertSpec],
    experts: list[FlyteDirectory | None],
    router: FlyteDirectory,
    encoded: FlyteDirectory,
    centroids: FlyteFile,
    placement: str,
    output_dir: str,
) -> FlyteDirectory:
    """The grown DDM folder: the parent's experts reused byte for byte, the new ones, the refit router, lineage."""
    sources = [uri_of(e) if e is not None else None for e in experts]
    out = stage_dir(output_dir, "ddm", uri_of(parent), sources, uri_of(router), uri_of(centroids)) / "ddm"
    new = {s.cluster_id: (e.download() if e is not None else None) for s, e in zip(specs, experts, strict=True)}
    ddm = read_parent(parent.download())
    folder = grow_ddm(out, ddm, new, router.download(), read_codec_info(encoded.download()),
                      load_file(centroids.download())["centroids"], encode_cfg, json.loads(placement))  # fmt: skip
    manifest = json.loads((folder / "ddm.json").read_text())
    lineage = manifest["lineage"]
    print(f"extend: DDM version {lineage['version']} with {manifest['num_experts']} experts "
          f"(reused {[e['cluster_id'] for e in lineage['reused_experts']]}, new {lineage['new_experts']}, "
          f"missing {manifest['missing_experts'] or 'none'}) -> {folder}", flush=True)  # fmt: skip
    return FlyteDirectory(publish_stage(output_dir, folder))

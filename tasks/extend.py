"""Grow a DDM with new data: place the new clips, train experts for the new clusters only, refit the router, assemble.

The parent's experts are copied into the grown folder unchanged (``lib.extend.grow``), and the new experts go
through the same ``train_experts`` map task, trainer and skip-by-hash as the pipeline's. Only with
``extend.continue_steps`` > 0 does a parent expert train again: ``continue_experts`` continues each one whose cluster
new clips joined, from its weights, on its old and new clips (``lib.train.specs.continue_specs``), through the same
``train_one`` as every expert.
"""

import dataclasses
import functools
import json
from pathlib import Path

import torch
from flytekit import Cache, Resources, dynamic, map_task, task
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
from lib.train.router import report_line, train_router
from lib.train.specs import ExpertSpec, continue_specs, expert_specs, training_rows
from tasks.common import publish_stage, stage_dir, uri_of
from tasks.image import TASK_IMAGE
from tasks.train import resource_overrides, train_one, training_task, training_tasks


@task(container_image=TASK_IMAGE, cache=Cache(version="extend-data-v1"))
def extension_data(cfg: RunConfig) -> DataConfig:
    """The new data's config: the run's data section with the ``extend`` section's source and clips."""
    return cfg.extend.data_config(cfg.data)


@task(container_image=TASK_IMAGE, cache=Cache(version="place-v2"), requests=Resources(cpu="2", mem="4Gi"))
def place_new_data(
    cfg: RunConfig,
    parent: FlyteDirectory,
    parent_assignments: DataFrame[ClusterAssignment],
    shards: FlyteDirectory,
    encoded: FlyteDirectory,
    index: DataFrame[ClipIndex],
) -> tuple[DataFrame[ClusterAssignment], FlyteFile, list[ExpertSpec], list[ExpertSpec], str]:
    """Embed the new clips with the parent's embedders and fitted state, assign them (join or new cluster), and
    spec one expert per new cluster, and one continued expert per joined parent cluster when
    ``extend.continue_steps`` > 0 (none when off). Returns the assignments, all centroids, the new experts' specs,
    the continued experts' specs and the placement (JSON)."""
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
    continued = continue_specs(cfg, parent_assignments, placed.assignments, ddm.start_weights())
    summary = json.dumps(placed.summary)
    print(f"extend: placement {summary}", flush=True)
    if continued:
        print(f"extend: continuing {[s.name for s in continued]} for {cfg.extend.continue_steps} steps each on their "
              "parent and joined train clips", flush=True)  # fmt: skip
    return placed.assignments, FlyteFile(publish_stage(cfg.output_dir, centroids)), specs, continued, summary


def continue_model(
    spec: ExpertSpec,
    parent: FlyteDirectory,
    parent_encoded: FlyteDirectory,
    parent_assignments: DataFrame[ClusterAssignment],
    encoded: FlyteDirectory,
    assignments: DataFrame[ClusterAssignment],
    output_dir: str,
) -> FlyteDirectory:
    """One parent expert (checked to be the spec's start) continued on its parent clips, then its joined ones; not
    Flyte-cached, like ``train_model`` (the trainer skips a finished model and resumes a half-trained one by itself)."""
    start = read_parent(parent.download()).start_folder(spec.cluster_id, spec.init_sha256)
    sources = [(parent_encoded, parent_assignments), (encoded, assignments)]
    return train_one(spec, sources, output_dir, init_from=start)


continue_model, continue_model_elastic = training_tasks(continue_model)


@dynamic(container_image=TASK_IMAGE)
def continue_experts(
    cfg: RunConfig,
    specs: list[ExpertSpec],
    parent: FlyteDirectory,
    parent_encoded: FlyteDirectory,
    parent_assignments: DataFrame[ClusterAssignment],
    encoded: FlyteDirectory,
    assignments: DataFrame[ClusterAssignment],
) -> list[FlyteDirectory | None]:
    """The continued experts, isolated map-task elements as in ``train_experts`` with ``resources.expert_*`` (as the
    new experts here: growing a DDM plans no ``resources.pool`` placement); none when ``extend.continue_steps`` is 0."""
    if not specs:
        return []
    res = cfg.resources
    trainer, shape = training_task(res.expert_nnodes, res.expert_nproc_per_node, continue_model, continue_model_elastic)
    common = {"parent": parent, "parent_encoded": parent_encoded, "parent_assignments": parent_assignments,
              "encoded": encoded, "assignments": assignments, "output_dir": cfg.output_dir}  # fmt: skip
    experts = map_task(functools.partial(trainer, **common, **shape), min_success_ratio=res.min_success_ratio)
    return experts(spec=specs).with_overrides(**resource_overrides(res))


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
    print("refit router accuracy per t bucket:", report_line(result.report), flush=True)
    return FlyteDirectory(publish_stage(output_dir, result.model_dir))


def _by_cluster(specs: list[ExpertSpec], folders: list[FlyteDirectory | None]) -> dict[int, Path | None]:
    """Each spec's trained folder (None: failed) by its cluster id."""
    return {s.cluster_id: (Path(f.download()) if f is not None else None) for s, f in zip(specs, folders, strict=True)}


@task(container_image=TASK_IMAGE, cache=Cache(version="grow-v2"), requests=Resources(cpu="1", mem="2Gi"))
def grow_ddm_task(
    encode_cfg: EncodeConfig,
    parent: FlyteDirectory,
    specs: list[ExpertSpec],
    experts: list[FlyteDirectory | None],
    continued_specs: list[ExpertSpec],
    continued: list[FlyteDirectory | None],
    router: FlyteDirectory,
    encoded: FlyteDirectory,
    centroids: FlyteFile,
    placement: str,
    output_dir: str,
) -> FlyteDirectory:
    """The grown DDM folder: the parent's experts reused byte for byte (or continued), the new ones, the refit router,
    lineage."""
    sources = [[uri_of(e) if e is not None else None for e in folders] for folders in (experts, continued)]
    out = stage_dir(output_dir, "ddm", uri_of(parent), *sources, uri_of(router), uri_of(centroids)) / "ddm"
    ddm = read_parent(parent.download())
    folder = grow_ddm(out, ddm, _by_cluster(specs, experts), router.download(), read_codec_info(encoded.download()),
                      load_file(centroids.download())["centroids"], encode_cfg, json.loads(placement),
                      continued=_by_cluster(continued_specs, continued))  # fmt: skip
    manifest = json.loads((folder / "ddm.json").read_text())
    lineage = manifest["lineage"]
    if lineage["continue_failed"]:
        print(f"extend: expert(s) {lineage['continue_failed']} failed to continue on their joined clips; the grown "
              "DDM keeps the parent's experts there unchanged (listed as reused)", flush=True)  # fmt: skip
    print(f"extend: DDM version {lineage['version']} with {manifest['num_experts']} experts "
          f"(reused {[e['cluster_id'] for e in lineage['reused_experts']]}, "
          f"continued {[e['cluster_id'] for e in lineage['continued_experts']]}, new {lineage['new_experts']}, "
          f"missing {manifest['missing_experts'] or 'none'}) -> {folder}", flush=True)  # fmt: skip
    return FlyteDirectory(publish_stage(output_dir, folder))

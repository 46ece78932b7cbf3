"""Grow a DDM with new data: place the new clips, train experts for the new clusters only, refit the router, assemble.

The parent's experts are copied into the grown folder unchanged (``lib.extend.grow``), and the new experts go
through the same ``train_experts`` map task, trainer and skip-by-hash as the pipeline's. Only with
``extend.continue_steps`` > 0 does a parent expert train again: ``continue_experts`` continues each one whose cluster
new clips joined, from its weights, on its old and new clips (``lib.train.specs.continue_specs``), through the same
``train_one`` as every expert.
"""

import functools
import json
import logging
from pathlib import Path

from flytekit import Cache, Resources, dynamic, map_task, task
from flytekit.types.directory import FlyteDirectory
from flytekit.types.file import FlyteFile
from pandera.typing import DataFrame
from safetensors.numpy import load_file

from data_schemas.cluster import ClusterAssignment
from data_schemas.ingest import ClipIndex
from lib.config import DataConfig, EncodeConfig, RouterConfig, RunConfig
from lib.encode.store import read_codec_info
from lib.extend.grow import grow_ddm, grown_lines, read_parent
from lib.extend.place import place_extension, save_centroids
from lib.train.router import fit_router, report_line
from lib.train.specs import ExpertSpec, training_rows
from tasks.common import publish_stage, stage_dir, uri_of
from tasks.image import TASK_IMAGE
from tasks.train import resource_overrides, train_one, training_task, training_tasks

log = logging.getLogger(__name__)


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
    ext = place_extension(cfg, ddm, parent_assignments, Path(shards.download()), Path(encoded.download()), index)
    out = stage_dir(cfg.output_dir, "extend-place", cfg.extend, cfg.cluster, cfg.seed, uri_of(parent), uri_of(encoded))
    centroids = save_centroids(out / "centroids.safetensors", ext.placed, ddm)
    for line in ext.lines(cfg):
        log.info(line)
    centroids_file = FlyteFile(publish_stage(cfg.output_dir, centroids))
    return ext.placed.assignments, centroids_file, ext.specs, ext.continued, json.dumps(ext.placed.summary)


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
    result = fit_router([(e.download(), rows) for e, rows in parts], cfg, k, seed, out)
    log.info("refit router accuracy per t bucket: %s", report_line(result.report))
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
    for line in grown_lines(folder):
        log.info(line)
    return FlyteDirectory(publish_stage(output_dir, folder))

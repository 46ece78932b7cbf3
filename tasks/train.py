"""Training tasks: K experts in isolation (one map-task element each), the matched-compute monolith, the router.

Why ``train_model`` has no Flyte cache: Flyte's local execution caches a map task as one list, including a
partly failed one (``None`` for the failed element), so a rerun would neither retry the failed expert nor be
needed to skip the finished ones. The trainer skips by itself instead: a model folder whose ``spec_hash`` matches
is returned as is, and a half-trained one resumes from its last checkpoint. Locally that folder lives under
``output_dir``; on a cluster (``output_dir`` is a URI) the model and checkpoints are mirrored there, so a retry
on another node resumes and a rerun skips finished experts — per element, whatever Flyte caches.
"""

import functools
import json
import logging
from pathlib import Path
from typing import Any

import fsspec
import torch
from flytekit import Cache, Resources, dynamic, map_task, task
from flytekit.extras.accelerators import GPUAccelerator
from flytekit.types.directory import FlyteDirectory
from pandera.typing import DataFrame

from data_schemas.cluster import ClusterAssignment
from data_schemas.router import RouterReport
from lib.config import ResourcesConfig, RouterConfig, RunConfig
from lib.encode.store import load_encoded, read_codec_info
from lib.io import persist
from lib.train.checkpoint import MANIFEST
from lib.train.router import train_router
from lib.train.specs import ExpertSpec, clip_ids_for, compute_table, expert_specs, monolith_spec
from lib.train.trainer import ProgressCallback, TrainData, train
from tasks.common import input_key, is_local, stage_dir, uri_of

log = logging.getLogger(__name__)


@task(cache=Cache(version="specs-v1"))
def make_specs(
    cfg: RunConfig, assignments: DataFrame[ClusterAssignment], encoded: FlyteDirectory
) -> tuple[list[ExpertSpec], ExpertSpec]:
    """One spec per cluster and the monolith's, printing the compute accounting side by side."""
    specs, monolith = expert_specs(cfg, assignments), monolith_spec(cfg, assignments)
    info = read_codec_info(encoded.download())
    c, t, h, w = info["latent_shape"]
    table = compute_table(
        specs, monolith, c, (t, h, w), info["text_encoder"]["max_tokens"], info["text_encoder"]["dim"]
    )
    print("compute matching (same network and batch; monolith steps = K x expert steps):", flush=True)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3e}"), flush=True)
    return specs, monolith


class _MirrorCheckpoints(ProgressCallback):
    """Copies each new checkpoint to the persistent URI (manifest last, so a partial copy is never loaded)."""

    def __init__(self, log_every: int, name: str, remote: str):
        super().__init__(log_every, name)
        self.remote = remote

    def on_checkpoint(self, step: int, folder: Path) -> None:
        target = f"{self.remote}/checkpoints/{folder.name}"
        for file in sorted(folder.iterdir(), key=lambda p: p.name == MANIFEST):
            persist(file, f"{target}/{file.name}")


def _fetch(remote: str, local: Path) -> None:
    fs, root = fsspec.core.url_to_fs(remote)
    if fs.exists(root):
        fs.get(root, str(local), recursive=True)


@task(requests=Resources(cpu="2", mem="4Gi"), retries=2)
def train_model(
    spec: ExpertSpec, encoded: FlyteDirectory, assignments: DataFrame[ClusterAssignment], output_dir: str
) -> FlyteDirectory:
    """Train one expert (or the monolith) on its clips; the folder loads with diffusers ``from_pretrained``."""
    run_hash = input_key(spec, uri_of(encoded))  # the encoded folder identifies the data (size, frames, codec)
    key = f"{spec.name}-{run_hash}"
    out = stage_dir(output_dir, "train", key, fresh=False)
    callback = ProgressCallback(spec.expert.log_every, spec.name)
    if not is_local(output_dir):
        remote = f"{output_dir.rstrip('/')}/stages/train/{key}"
        _fetch(remote, out)
        callback = _MirrorCheckpoints(spec.expert.log_every, spec.name, remote)
    encoded_data = load_encoded(encoded.download(), clip_ids_for(spec, assignments))
    data = TrainData(encoded_data.clip_ids, encoded_data.latents, encoded_data.tokens, encoded_data.mask)
    result = train(data, spec.expert, out, spec.seed, spec.name, callbacks=[callback], spec_hash=run_hash)
    if not is_local(output_dir):
        persist(result.model_dir, f"{output_dir.rstrip('/')}/stages/train/{key}/model")
    state = "reused" if result.skipped else f"trained {result.steps} steps"
    final = result.log["loss"].tail(20).mean() if len(result.log) else float("nan")
    print(f"{spec.name}: {state} on {spec.num_clips} clips, final loss {final:.4f} -> {result.model_dir}", flush=True)
    return FlyteDirectory(str(result.model_dir))


def _overrides(res: ResourcesConfig) -> dict[str, Any]:
    """Per-node resources from the run config (limits = requests, as GPU scheduling requires)."""
    gpu = str(res.expert_gpu) if res.expert_gpu else None
    resources = Resources(cpu=res.expert_cpu, mem=res.expert_mem, gpu=gpu)
    accelerator = GPUAccelerator(res.accelerator) if res.accelerator else None
    return {"requests": resources, "limits": resources, "accelerator": accelerator, "retries": res.retries}


@dynamic
def train_experts(
    cfg: RunConfig, specs: list[ExpertSpec], encoded: FlyteDirectory, assignments: DataFrame[ClusterAssignment]
) -> list[FlyteDirectory | None]:
    """The K isolated experts as one map task; resources come from the run config, hence the dynamic."""
    experts = map_task(
        functools.partial(train_model, encoded=encoded, assignments=assignments, output_dir=cfg.output_dir),
        min_success_ratio=cfg.resources.min_success_ratio,
    )
    return experts(spec=specs).with_overrides(**_overrides(cfg.resources))


@dynamic
def train_monolith(
    cfg: RunConfig, spec: ExpertSpec, encoded: FlyteDirectory, assignments: DataFrame[ClusterAssignment]
) -> FlyteDirectory:
    """The baseline: the same trainer and network on all clusters with K x the expert steps."""
    node = train_model(spec=spec, encoded=encoded, assignments=assignments, output_dir=cfg.output_dir)
    return node.with_overrides(**_overrides(cfg.resources))


@task(cache=Cache(version="router-v1"), requests=Resources(cpu="2", mem="4Gi"), retries=1)
def train_router_task(
    cfg: RouterConfig,
    num_clusters: int,
    seed: int,
    encoded: FlyteDirectory,
    assignments: DataFrame[ClusterAssignment],
    output_dir: str,
) -> tuple[FlyteDirectory, DataFrame[RouterReport]]:
    """Router p(cluster | x_t, t, text): needs only latents and labels, so it runs beside the experts."""
    out = stage_dir(output_dir, "router", cfg, num_clusters, seed, uri_of(encoded), assignments["cluster_id"].tolist())
    data = load_encoded(encoded.download(), assignments["clip_id"].tolist())
    labels = torch.tensor(assignments["cluster_id"].to_numpy(), dtype=torch.int64)
    result = train_router(data.latents, data.pooled, labels, cfg, num_clusters, seed, out)
    print("router accuracy per t bucket:", json.dumps(result.report.round(3).to_dict("records")), flush=True)
    return FlyteDirectory(str(result.model_dir)), result.report

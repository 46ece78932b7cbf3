"""Training tasks: K experts in isolation (one map-task element each), the matched-compute monolith, the router.

Why ``train_model`` has no Flyte cache: Flyte's local execution caches a map task as one list, including a
partly failed one (``None`` for the failed element), so a rerun would neither retry the failed expert nor be
needed to skip the finished ones. The trainer skips by itself instead: a model folder whose ``spec_hash`` matches
is returned as is, and a half-trained one resumes from its last checkpoint. Locally that folder lives under
``output_dir``; on a cluster (``output_dir`` is a URI) the model and checkpoints are mirrored there, so a retry
on another node resumes and a rerun skips finished experts — per element, whatever Flyte caches.

Multi-GPU experts: with ``resources.expert_nnodes`` x ``expert_nproc_per_node`` > 1 each map element is a torch
elastic job (flytekitplugins-kfpytorch ``Elastic``): one pod running that many DDP processes, or a PyTorchJob of
``expert_nnodes`` pods (Kubeflow training operator). The experts stay isolated from each other; only the
processes of one expert all-reduce gradients (``lib.train.distributed``).
"""

import dataclasses
import functools
import inspect
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from flytekit import Cache, Deck, Resources, TaskMetadata, dynamic, map_task, task
from flytekit.core.python_function_task import PythonFunctionTask
from flytekit.extras.accelerators import GPUAccelerator
from flytekit.types.directory import FlyteDirectory
from flytekitplugins.kfpytorch import Elastic
from flytekitplugins.kfpytorch.task import PytorchElasticFunctionTask
from pandera.typing import DataFrame

from data_schemas.cluster import ClusterAssignment
from data_schemas.router import BUCKET, RouterReport
from lib.config import ResourcesConfig, RouterConfig, RunConfig
from lib.encode.store import load_encoded, read_codec_info
from lib.models.factory import weights_digest, weights_sha256
from lib.models.levers import limit_threads, use_compile_cache
from lib.plan.placement import Placement, plan_experts, plan_table
from lib.plan.pool import load_pool
from lib.plan.work import training_work
from lib.tracking import ModelRun
from lib.train.curves import curves_html
from lib.train.distributed import workers_from_env
from lib.train.remote import published_model, remote_run
from lib.train.router import report_line, router_report_html, train_router
from lib.train.specs import (
    SEED,
    ExpertSpec,
    branched,
    compute_table,
    expert_specs,
    monolith_spec,
    seed_spec,
    training_data,
    training_rows,
)
from lib.train.trainer import train
from tasks.common import input_key, mark_ran, publish_stage, stage_dir, tracker_for, uri_of
from tasks.image import TASK_IMAGE

log = logging.getLogger(__name__)


@task(container_image=TASK_IMAGE, cache=Cache(version="specs-v2"))
def make_specs(
    cfg: RunConfig, assignments: DataFrame[ClusterAssignment], encoded: FlyteDirectory
) -> tuple[list[ExpertSpec], ExpertSpec]:
    """One spec per cluster and the monolith's, printing the compute accounting side by side."""
    specs, monolith, seed = expert_specs(cfg, assignments), monolith_spec(cfg, assignments), seed_spec(cfg, assignments)
    split = {"equal": "every expert the same steps", "by_size": "steps in proportion to each cluster's train clips"}
    steps = ", ".join(f"{s.name} {s.expert.steps}" for s in specs)
    print(f"expert budget ({cfg.expert.budget_split}: {split[cfg.expert.budget_split]}): {steps}", flush=True)
    if seed is not None:
        print(f"seed model (expert.seed_fraction {cfg.expert.seed_fraction:g}): {seed.expert.steps} steps at batch "
              f"{seed.expert.batch_size} on all {seed.num_clips} train clips; every expert starts from it", flush=True)
    info = read_codec_info(encoded.download())
    c, t, h, w = info["latent_shape"]
    text = info["text_encoder"]
    table = compute_table(specs, monolith, c, (t, h, w), text["max_tokens"], text["dim"], cfg.router, seed)
    rule = {"steps": "K x expert steps at the same batch", "batch": "expert steps at K x the batch"}
    print(f"compute matching (same network; monolith = {rule[cfg.expert.monolith_scaling]}; the router is charged "
          "to the DDM):", flush=True)  # fmt: skip
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3e}"), flush=True)
    return specs, monolith


def train_one(
    spec: ExpertSpec,
    sources: Sequence[tuple[FlyteDirectory, pd.DataFrame]],
    output_dir: str,
    init_from: Path | None = None,
) -> FlyteDirectory:
    """Body of every expert training task (the pipeline's experts and monolith, a grown DDM's continued experts):
    skip by spec hash, resume from checkpoints, MLflow run, published model. Under DDP every process runs it and
    rank 0's folder is the output.

    Args:
        spec: the model to train.
        sources: (encoded folder, ClusterAssignment table) pairs its clips are loaded from, in order: one for the
            pipeline's models; the parent's and the new data's for a continued expert.
        output_dir: the run's output location.
        init_from: a saved model the run starts from (a continued expert's parent), named by ``spec.init_sha256``.
    """
    workers = workers_from_env()
    use_compile_cache(output_dir)
    limit_threads()
    # the spec's identity (not how it runs: micro-batch, compile) and the encoded folders (size, frames, codec)
    run_hash = input_key(spec.spec_hash(), *(uri_of(encoded) for encoded, _ in sources))
    key = f"{spec.name}-{run_hash}"
    out = stage_dir(output_dir, "train", key, fresh=False)
    callback, remote = remote_run(output_dir, "train", key, out, spec.expert.log_every, spec.name)
    data = training_data(spec, [(encoded.download(), table) for encoded, table in sources])
    run = _model_run(spec, run_hash, sources[0][0], output_dir) if workers.is_main else None
    try:
        result = train(data, spec.expert, out, spec.seed, spec.name, callbacks=[callback] + ([run] if run else []),
                       spec_hash=run_hash, init_from=init_from)  # fmt: skip
    except BaseException:
        if run:
            run.failed()
        raise
    if not result.skipped:
        mark_ran("train")
    model = published_model(result, remote if workers.is_main else None)
    state = "reused" if result.skipped else f"trained {result.steps} steps"
    final = result.log["loss"].tail(20).mean() if len(result.log) else float("nan")
    if workers.is_main:
        summary = f"{spec.name}: {state} on {spec.num_clips} clips, final loss {final:.4f} -> {result.model_dir}"
        print(summary, flush=True)
    return FlyteDirectory(model)


def _model_run(spec: ExpertSpec, run_hash: str, encoded: FlyteDirectory, output_dir: str) -> ModelRun:
    """This model's MLflow run under the execution's run, opened only if it trains (``lib.tracking.ModelRun``)."""
    _, t, h, w = read_codec_info(encoded.download())["latent_shape"]
    pt, ph, pw = spec.expert.patch_size
    params = {"spec_hash": run_hash, "cluster_id": spec.cluster_id, "num_clips": spec.num_clips, "seed": spec.seed,
              "expert": dataclasses.asdict(spec.expert)}  # fmt: skip
    if spec.init_sha256:
        params["init_sha256"] = spec.init_sha256
    kind = ("seed" if spec.cluster_id == SEED else "monolith" if spec.cluster_id < 0
            else "branched expert" if spec.expert.seed_fraction > 0 else "continued expert" if spec.init_sha256
            else "expert")  # fmt: skip
    tags = {"ddm.kind": kind}
    tokens_per_step = spec.expert.batch_size * (t // pt) * (h // ph) * (w // pw)
    return ModelRun(lambda: tracker_for(output_dir), spec.name, params, tags, tokens_per_step, spec.expert.log_every)


def train_model(
    spec: ExpertSpec,
    encoded: FlyteDirectory,
    assignments: DataFrame[ClusterAssignment],
    output_dir: str,
    init: FlyteDirectory | None = None,
) -> FlyteDirectory:
    """Train one expert (or the monolith, or the seed model) on its clips, from ``init``'s weights when given (the
    seed model an expert branches from); the folder loads with diffusers ``from_pretrained``."""
    return train_one(spec, [(encoded, assignments)], output_dir, init_from=_start(spec, init))


def _start(spec: ExpertSpec, init: FlyteDirectory | None) -> Path | None:
    """The folder a spec starts from, checked to hold the weights its ``init_sha256`` names."""
    if init is None:
        return None
    folder = Path(init.download())
    found = weights_digest(weights_sha256(folder))
    if found != spec.init_sha256:
        raise ValueError(f"{spec.name}: start weights {folder} have digest {found[:12]}, the spec names "
                         f"{spec.init_sha256[:12] or 'none'}")  # fmt: skip
    return folder


class ElasticTrainTask(PytorchElasticFunctionTask):
    """An ``Elastic`` task whose shape (nodes x processes) is set per run from the run config.

    Flyte loads a task in its pod from the module, with the decorator's ``Elastic``; a shape that only lived in
    the serialised template would be ignored there. So the shape also travels as the task's inputs
    ``nnodes``/``nproc_per_node`` and is applied again before the workers are launched; ``shape`` sets it for
    serialisation (one pod, or a PyTorchJob when nnodes > 1).
    """

    def shape(self, nnodes: int, nproc_per_node: int) -> "ElasticTrainTask":
        self._task_config = Elastic(nnodes=nnodes, nproc_per_node=nproc_per_node, increase_shared_mem=False)
        self.min_nodes = self.max_nodes = nnodes
        return self

    @property
    def task_type(self) -> str:
        return self._ELASTIC_TASK_TYPE_STANDALONE if self.task_config.nnodes == 1 else self._ELASTIC_TASK_TYPE

    def _execute(self, **kwargs: Any) -> Any:
        self.shape(kwargs["nnodes"], kwargs["nproc_per_node"])
        return super()._execute(**kwargs)


SHAPE_INPUTS = ("nnodes", "nproc_per_node")


def training_tasks(body: Callable[..., FlyteDirectory]) -> tuple[PythonFunctionTask, ElasticTrainTask]:
    """Both flavours of one training body, with the same resources and retries and no Flyte cache (module
    docstring): the plain task (one process) and the ``Elastic`` one on nnodes x nproc_per_node DDP processes (one
    GPU each), whose inputs are the body's with ``SHAPE_INPUTS`` added ahead of its defaulted ones.

    Assign them to ``<body>, <body>_elastic`` in the body's module: Flyte loads a task in its pod by module and
    function name, so the names stay the tasks' registered names.
    """
    resources, retries = Resources(cpu="2", mem="4Gi"), 2
    single = task(container_image=TASK_IMAGE, requests=resources, retries=retries)(body)

    def elastic(**kwargs: Any) -> FlyteDirectory:
        for name in SHAPE_INPUTS:  # read by ``ElasticTrainTask._execute``; the body does not take them
            kwargs.pop(name)
        return body(**kwargs)

    # module, docstring and ``__wrapped__``: Flyte accepts a wrapped function whose name is its qualified name
    functools.update_wrapper(elastic, body)
    elastic.__name__ = elastic.__qualname__ = f"{body.__name__}_elastic"
    elastic.__doc__ = f"``{body.__name__}`` on nnodes x nproc_per_node DDP processes (one GPU each)."
    params = list(inspect.signature(body).parameters.values())
    cut = next((i for i, p in enumerate(params) if p.default is not p.empty), len(params))
    shape = [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=int) for n in SHAPE_INPUTS]
    elastic.__signature__ = inspect.signature(body).replace(parameters=params[:cut] + shape + params[cut:])
    elastic.__annotations__ = {**body.__annotations__, **dict.fromkeys(SHAPE_INPUTS, int)}
    elastic_task = ElasticTrainTask(
        task_config=Elastic(increase_shared_mem=False),
        container_image=TASK_IMAGE,
        task_function=elastic,
        requests=resources,
        shared_memory=True,  # /dev/shm for the NCCL/gloo workers of one pod
        metadata=TaskMetadata(retries=retries),
    )
    return single, elastic_task


train_model, train_model_elastic = training_tasks(train_model)


def resource_overrides(res: ResourcesConfig, placed: Placement | None = None) -> dict[str, Any]:
    """Per-node resources from the run config, GPUs from the plan if placed (limits = requests, as GPU scheduling
    requires)."""
    gpus, device = (placed.gpus, placed.accelerator) if placed else (res.expert_gpu, res.accelerator)
    resources = Resources(cpu=res.expert_cpu, mem=res.expert_mem, gpu=str(gpus) if gpus else None)
    accelerator = GPUAccelerator(device) if device else None
    return {"requests": resources, "limits": resources, "accelerator": accelerator, "retries": res.retries}


def training_task(
    nnodes: int,
    nproc_per_node: int,
    single: Callable[..., Any] = train_model,
    elastic: ElasticTrainTask = train_model_elastic,
) -> tuple[Callable[..., Any], dict[str, Any]]:
    """The training task for this many processes per expert (``single`` for one, else ``elastic`` shaped) and the
    extra inputs it takes; a grown DDM's continued experts pass their own pair."""
    if nnodes * nproc_per_node == 1:
        return single, {}
    return elastic.shape(nnodes, nproc_per_node), {"nnodes": nnodes, "nproc_per_node": nproc_per_node}


@task(container_image=TASK_IMAGE, requests=Resources(cpu="1", mem="1Gi"), enable_deck=True)
def place_experts(cfg: RunConfig, specs: list[ExpertSpec], encoded: FlyteDirectory) -> list[Placement]:
    """Each expert's GPU type, GPU count and micro-batch on ``resources.pool`` (none without a pool).

    Not cached: the pool file can change under the same path, and planning takes milliseconds.
    """
    if not cfg.resources.pool:
        return []
    info = read_codec_info(encoded.download())
    c, t, h, w = info["latent_shape"]
    text = info["text_encoder"]
    works = [training_work(s.name, s.expert, c, (t, h, w), text["max_tokens"], text["dim"]) for s in specs]
    plan = plan_experts(works, load_pool(cfg.resources.pool))
    table = plan_table(plan)
    head = f"placement on {cfg.resources.pool}: makespan {plan.makespan_s / 3600:.1f} h, cost {plan.cost:.0f}"
    print(head, flush=True)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.2f}"), flush=True)
    Deck("placement", table.to_html(index=False, float_format=lambda v: f"{v:.2f}"))
    return list(plan.placements)


@task(container_image=TASK_IMAGE, requests=Resources(cpu="1", mem="1Gi"))
def gather_experts(groups: list[list[FlyteDirectory | None]], order: list[list[int]]) -> list[FlyteDirectory | None]:
    """The experts of the planned groups back in cluster order (``order[g][i]``: cluster of group g's i-th)."""
    out: list[FlyteDirectory | None] = [None] * sum(len(o) for o in order)
    for folders, clusters in zip(groups, order, strict=True):
        for folder, cluster in zip(folders, clusters, strict=True):
            out[cluster] = folder
    return out


def _planned_groups(specs: list[ExpertSpec], placements: list[Placement]) -> dict[tuple[str, int], list[int]]:
    """Indices of the specs that share a GPU type and count: each group is one map task with those resources."""
    by_name = {p.name: p for p in placements}
    groups: dict[tuple[str, int], list[int]] = {}
    for i, spec in enumerate(specs):
        p = by_name[spec.name]
        groups.setdefault((p.gpu, p.gpus), []).append(i)
    return groups


def _placed(spec: ExpertSpec, p: Placement) -> ExpertSpec:
    """The spec with its planned micro-batch: run-only fields, so the spec's identity (and its model) is unchanged."""
    expert = dataclasses.replace(spec.expert, micro_batch=p.micro_batch,
                                 activation_checkpointing=p.activation_checkpointing)  # fmt: skip
    return dataclasses.replace(spec, expert=expert)


@dynamic(container_image=TASK_IMAGE)
def train_experts(
    cfg: RunConfig,
    specs: list[ExpertSpec],
    encoded: FlyteDirectory,
    assignments: DataFrame[ClusterAssignment],
    placements: list[Placement],
    seed: FlyteDirectory | None,
) -> list[FlyteDirectory | None]:
    """The K isolated experts as map tasks; resources come from the run config or the plan, hence the dynamic.

    Without a plan: one map task, every expert with ``resources.expert_*``. With one: one map task per (GPU type,
    GPU count) of the plan, each element requesting that accelerator and count, gathered back in cluster order.
    With a ``seed`` model every expert starts from its weights, whose digest becomes part of the expert's identity.
    """
    res = cfg.resources
    common = {"encoded": encoded, "assignments": assignments, "output_dir": cfg.output_dir, "init": seed}
    if seed is not None:
        specs = branched(specs, seed.download())
    if not placements:
        trainer, shape = training_task(res.expert_nnodes, res.expert_nproc_per_node)
        experts = map_task(functools.partial(trainer, **common, **shape), min_success_ratio=res.min_success_ratio)
        return experts(spec=specs).with_overrides(**resource_overrides(res))
    by_name = {p.name: p for p in placements}
    outputs, order = [], []
    for (_, gpus), members in _planned_groups(specs, placements).items():
        trainer, shape = training_task(1, gpus)
        group = map_task(functools.partial(trainer, **common, **shape), min_success_ratio=res.min_success_ratio)
        node = group(spec=[_placed(specs[i], by_name[specs[i].name]) for i in members])
        outputs.append(node.with_overrides(**resource_overrides(res, by_name[specs[members[0]].name])))
        order.append(members)
    return gather_experts(groups=outputs, order=order)


@dynamic(container_image=TASK_IMAGE)
def train_monolith(
    cfg: RunConfig, spec: ExpertSpec, encoded: FlyteDirectory, assignments: DataFrame[ClusterAssignment]
) -> FlyteDirectory:
    """The baseline: the same trainer and network on all clusters with K x one expert's samples."""
    trainer, shape = training_task(cfg.resources.expert_nnodes, cfg.resources.expert_nproc_per_node)
    node = trainer(spec=spec, encoded=encoded, assignments=assignments, output_dir=cfg.output_dir, **shape)
    return node.with_overrides(**resource_overrides(cfg.resources))


@task(container_image=TASK_IMAGE, requests=Resources(cpu="1", mem="1Gi"))
def no_seed() -> FlyteDirectory | None:
    """The seed model of a run without one (``expert.seed_fraction`` 0): the experts start from scratch."""
    return None


@dynamic(container_image=TASK_IMAGE)
def train_seed(
    cfg: RunConfig, encoded: FlyteDirectory, assignments: DataFrame[ClusterAssignment]
) -> FlyteDirectory | None:
    """The seed model the experts branch from (``expert.seed_fraction`` > 0; None otherwise), on the monolith's
    resources: it is the monolith's network trained on all clips for the first part of the budget."""
    spec = seed_spec(cfg, assignments)
    if spec is None:
        return no_seed()  # a dynamic's outputs must come from a node
    trainer, shape = training_task(cfg.resources.expert_nnodes, cfg.resources.expert_nproc_per_node)
    node = trainer(spec=spec, encoded=encoded, assignments=assignments, output_dir=cfg.output_dir, **shape)
    return node.with_overrides(**resource_overrides(cfg.resources))


@task(container_image=TASK_IMAGE, requests=Resources(cpu="1", mem="1Gi"), enable_deck=True)
def training_report(experts: list[FlyteDirectory | None], monolith: FlyteDirectory) -> None:
    """The Deck of the training stage: every expert's and the monolith's loss against training samples."""
    dirs = [d.download() for d in experts if d is not None] + [monolith.download()]
    Deck("training", curves_html(dirs))


@task(
    container_image=TASK_IMAGE,
    cache=Cache(version="router-v3"),
    requests=Resources(cpu="2", mem="4Gi"),
    retries=1,
    enable_deck=True,
)
def train_router_task(
    cfg: RouterConfig,
    num_clusters: int,
    seed: int,
    encoded: FlyteDirectory,
    assignments: DataFrame[ClusterAssignment],
    output_dir: str,
) -> tuple[FlyteDirectory, DataFrame[RouterReport]]:
    """Router p(cluster | x_t, t, text) on the training clips: needs only latents and labels, so it runs beside the
    experts. Its report (t buckets, exact t, caption-only ceiling) goes to the ``router`` Deck."""
    rows = training_rows(assignments)
    out = stage_dir(output_dir, "router", cfg, num_clusters, seed, uri_of(encoded), rows["cluster_id"].tolist())
    data = load_encoded(encoded.download(), rows["clip_id"].tolist())
    labels = torch.tensor(rows["cluster_id"].to_numpy(), dtype=torch.int64)
    started = time.time()  # the MLflow run's start: it lasts as long as the training
    result = train_router(data.latents, data.pooled, labels, cfg, num_clusters, seed, out)
    print("router accuracy per t bucket:", report_line(result.report), flush=True)
    Deck("router", router_report_html(result.report))
    tracker = tracker_for(output_dir)
    if tracker is not None:
        params = {"router": dataclasses.asdict(cfg), "num_clusters": num_clusters, "seed": seed,
                  "train_clips": len(rows)}  # fmt: skip
        curve = [{"step": i + 1, "loss": loss} for i, loss in enumerate(result.losses)]
        kind = result.report[RouterReport.kind]
        buckets = [{"step": i, "accuracy_by_t_bucket": r.accuracy}
                   for i, r in enumerate(result.report[kind == BUCKET].itertuples())]  # fmt: skip
        points = {f"{r.kind}_{metric}_t{r.t_low:g}": getattr(r, metric)
                  for r in result.report[kind != BUCKET].itertuples()
                  for metric in ("accuracy", "ece", "mean_max_prob")}  # fmt: skip
        tracker.record_model("router", "router", params, curve + buckets + [{"step": 0, **points}], started)
    return FlyteDirectory(publish_stage(output_dir, result.model_dir)), result.report

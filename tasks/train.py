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

import functools
import inspect
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from flytekit import Cache, Deck, Resources, TaskMetadata, dynamic, map_task, task
from flytekit.core.python_function_task import PythonFunctionTask
from flytekit.extras.accelerators import GPUAccelerator
from flytekit.types.directory import FlyteDirectory
from flytekitplugins.kfpytorch import Elastic
from flytekitplugins.kfpytorch.task import PytorchElasticFunctionTask
from pandera.typing import DataFrame

from data_schemas.cluster import ClusterAssignment
from data_schemas.router import RouterReport
from lib.config import ResourcesConfig, RouterConfig, RunConfig
from lib.encode.store import read_codec_info
from lib.plan.experts import gpu_groups, plan_specs, with_placement
from lib.plan.placement import Placement, plan_table
from lib.train.curves import curves_html
from lib.train.router import fit_router, report_line, router_report_html, tracked_router
from lib.train.run import checked_start, run_model
from lib.train.specs import ExpertSpec, branched, budget_lines, expert_specs, monolith_spec, seed_spec, training_rows
from tasks.common import mark_ran, publish_stage, scratch, stage_dir, tracker_for, uri_of
from tasks.image import TASK_IMAGE

log = logging.getLogger(__name__)


@task(container_image=TASK_IMAGE, cache=Cache(version="specs-v2"))
def make_specs(
    cfg: RunConfig, assignments: DataFrame[ClusterAssignment], encoded: FlyteDirectory
) -> tuple[list[ExpertSpec], ExpertSpec]:
    """One spec per cluster and the monolith's, printing the compute accounting side by side."""
    specs, monolith, seed = expert_specs(cfg, assignments), monolith_spec(cfg, assignments), seed_spec(cfg, assignments)
    for line in budget_lines(cfg, specs, monolith, seed, read_codec_info(encoded.download())):
        log.info(line)
    return specs, monolith


def train_one(
    spec: ExpertSpec,
    sources: Sequence[tuple[FlyteDirectory, pd.DataFrame]],
    output_dir: str,
    init_from: Path | None = None,
) -> FlyteDirectory:
    """Body of every expert training task (the pipeline's experts and monolith, a grown DDM's continued experts):
    ``lib.train.run.run_model`` on the downloaded sources, keyed by their stable URIs, with this execution's tracker.
    """
    folders = [(Path(encoded.download()), table) for encoded, table in sources]
    ids = [uri_of(encoded) for encoded, _ in sources]
    trained = run_model(spec, folders, ids, output_dir, scratch(), lambda: tracker_for(output_dir), init_from)
    if not trained.result.skipped:
        mark_ran("train")
    if trained.summary is not None:
        log.info(trained.summary)
    return FlyteDirectory(trained.location)


def train_model(
    spec: ExpertSpec,
    encoded: FlyteDirectory,
    assignments: DataFrame[ClusterAssignment],
    output_dir: str,
    init: FlyteDirectory | None = None,
) -> FlyteDirectory:
    """Train one expert (or the monolith, or the seed model) on its clips, from ``init``'s weights when given (the
    seed model an expert branches from); the folder loads with diffusers ``from_pretrained``."""
    start = checked_start(spec, Path(init.download()) if init is not None else None)
    return train_one(spec, [(encoded, assignments)], output_dir, init_from=start)


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
    plan = plan_specs(specs, read_codec_info(encoded.download()), cfg.resources.pool)
    table = plan_table(plan)
    head = f"placement on {cfg.resources.pool}: makespan {plan.makespan_s / 3600:.1f} h, cost {plan.cost:.0f}"
    log.info(head)
    log.info(table.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
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
    for (_, gpus), members in gpu_groups(specs, placements).items():
        trainer, shape = training_task(1, gpus)
        group = map_task(functools.partial(trainer, **common, **shape), min_success_ratio=res.min_success_ratio)
        node = group(spec=[with_placement(specs[i], by_name[specs[i].name]) for i in members])
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
    started = time.time()  # the MLflow run's start: it lasts as long as the training
    result = fit_router([(encoded.download(), rows)], cfg, num_clusters, seed, out)
    log.info("router accuracy per t bucket: %s", report_line(result.report))
    Deck("router", router_report_html(result.report))
    tracker = tracker_for(output_dir)
    if tracker is not None:
        params, metrics = tracked_router(result, cfg, num_clusters, seed, len(rows))
        tracker.record_model("router", "router", params, metrics, started)
    return FlyteDirectory(publish_stage(output_dir, result.model_dir)), result.report

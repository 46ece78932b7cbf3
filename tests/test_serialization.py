"""The project as a cluster sees it: `pyflyte package` protobufs and the dynamic training fan-out as compiled."""

import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import pandas as pd
import pytest
from flyteidl.admin import task_pb2
from flytekit.configuration import Image, ImageConfig, SerializationSettings
from flytekit.core import context_manager
from flytekit.core.context_manager import ExecutionState
from flytekit.core.type_engine import TypeEngine
from flytekit.types.directory import FlyteDirectory
from pandera.typing import DataFrame

from data_schemas.cluster import ClusterAssignment
from lib.config import RunConfig, replace_in
from lib.plan.placement import Placement
from lib.train.specs import ExpertSpec, expert_specs, monolith_spec
from tasks.image import IMAGE_SPEC, tomllib
from tasks.train import train_experts, train_monolith

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    out = tmp_path_factory.mktemp("pkg")
    proc = subprocess.run(
        [
            str(Path(sys.executable).parent / "pyflyte"),
            "--pkgs",
            "workflows",
            "package",
            "--image",
            "ddm-flyte:test",
            "--output",
            str(out / "pkg.tgz"),
            "-f",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    with tarfile.open(out / "pkg.tgz") as tar:
        tar.extractall(out, filter="data")
    return out


def _tasks(package):
    found = {}
    for pb in package.glob("*_tasks.*.pb"):
        spec = task_pb2.TaskSpec()
        spec.ParseFromString(pb.read_bytes())
        found[spec.template.id.name] = spec.template
    return found


def test_package_holds_every_task_with_cache_versions_and_retries(package):
    tasks = _tasks(package)
    expected_cache = {
        "tasks.ingest.ingest_clips": "ingest-v6",
        "tasks.raw.cut_scenes": "cut-v1",
        "tasks.encode.train_codec": "codec-v1",
        "tasks.encode.encode_clips": "encode-v5",
        "tasks.cluster.embed_clips": "embed-v2",
        "tasks.cluster.cluster_clips": "cluster-v3",
        "tasks.sample.assemble_ddm_task": "assemble-v3",
        "tasks.extend.place_new_data": "place-v2",
        "tasks.extend.refit_router": "refit-router-v1",
        "tasks.train.train_router_task": "router-v3",
    }
    for name, version in expected_cache.items():
        meta = tasks[name].metadata
        assert meta.discoverable and meta.discovery_version == version, name
    train = tasks["tasks.train.train_model"]
    assert not train.metadata.discoverable, "experts skip/resume by spec hash, not Flyte's cache"
    assert train.metadata.retries.retries == 2
    assert train.container.image.startswith(IMAGE_SPEC.name + ":")  # the ImageSpec, not the --image default
    elastic = tasks["tasks.train.train_model_elastic"]  # registered too: the dynamic picks it per run config
    assert elastic.metadata.retries.retries == 2 and not elastic.metadata.discoverable
    for name in ("tasks.extend.continue_model", "tasks.extend.continue_model_elastic"):  # a grown DDM's, the same way
        assert tasks[name].metadata.retries.retries == 2 and not tasks[name].metadata.discoverable, name


def test_every_task_runs_in_the_imagespec_image_built_from_pyproject_and_the_dockerfile_base(package):
    """``pyflyte run --remote`` needs no hand-built image: every task names the ImageSpec's image (one tag), whose
    packages are pyproject's dependencies and whose base is the Dockerfile's."""
    images = {name: t.container.image for name, t in _tasks(package).items() if t.HasField("container")}
    assert "tasks.train.train_model" in images and "tasks.train.train_model_elastic" in images
    assert len(set(images.values())) == 1, images
    repository, tag = next(iter(images.values())).rsplit(":", 1)
    assert repository == IMAGE_SPEC.name and tag  # DDM_IMAGE_REGISTRY unset: a local image name
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert IMAGE_SPEC.packages == pyproject and any(p.startswith("diffusers") for p in IMAGE_SPEC.packages)
    base = next(line.split()[1] for line in (ROOT / "Dockerfile").read_text().splitlines() if line.startswith("FROM"))
    assert IMAGE_SPEC.base_image == base


def test_the_registry_and_a_hand_built_image_come_from_the_environment():
    def task_image(**env: str) -> str:
        code = (
            "from tasks.train import train_model as t; i = t.container_image; "
            "print(i if isinstance(i, str) else i.image_name())"
        )
        out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**os.environ, **env}, capture_output=True,
                             text=True, check=True)  # fmt: skip
        return out.stdout.strip()

    assert task_image(DDM_IMAGE_REGISTRY="ghcr.io/my-team").startswith("ghcr.io/my-team/ddm-flyte:")
    assert task_image(DDM_TASK_IMAGE="registry.example.com/ddm:v7") == "registry.example.com/ddm:v7"


def _compile_dynamic(dynamic_task, **inputs):
    """What a cluster runs when the dynamic task executes: its DynamicJobSpec."""
    settings = SerializationSettings(image_config=ImageConfig(default_image=Image(name="default", fqn="img", tag="t")))
    ctx = context_manager.FlyteContextManager.current_context()
    hints = {
        "cfg": RunConfig,
        "specs": list[ExpertSpec],
        "spec": ExpertSpec,
        "encoded": FlyteDirectory,
        "assignments": DataFrame[ClusterAssignment],
        "placements": list[Placement],
        "seed": FlyteDirectory | None,
    }
    mode = ExecutionState.Mode.TASK_EXECUTION
    dynamic_task._wf = None  # flytekit compiles a dynamic once per process (a pod on a cluster); each test is a pod
    with context_manager.FlyteContextManager.with_context(ctx.with_serialization_settings(settings)) as ctx:
        with context_manager.FlyteContextManager.with_context(
            ctx.with_execution_state(ctx.execution_state.with_params(mode=mode))
        ) as ctx:
            literals = TypeEngine.dict_to_literal_map(ctx, inputs, type_hints={k: hints[k] for k in inputs})
            return dynamic_task.dispatch_execute(ctx, literals)


def _gpu_cfg():
    return replace_in(
        RunConfig(),
        cluster={"num_clusters": 2, "fine_clusters": 4},
        resources={
            "expert_gpu": 1,
            "accelerator": "nvidia-tesla-a100",
            "expert_mem": "40Gi",
            "expert_cpu": "8",
            "min_success_ratio": 0.5,
            "retries": 3,
        },
    )


def _assignments():
    return pd.DataFrame(
        {
            "clip_id": list("abcd"),
            "cluster_id": [0, 1, 0, 1],
            "distance": [0.1] * 4,
            "fine_cluster": [0, 1, 2, 3],
            "role": ["train"] * 4,
        }
    )


def _compile_experts(cfg, placements=()):
    return _compile_dynamic(
        train_experts,
        cfg=cfg,
        specs=expert_specs(cfg, _assignments()),
        encoded=FlyteDirectory(tempfile.mkdtemp()),
        assignments=_assignments(),
        placements=list(placements),
        seed=None,
    )


def _compile_monolith(cfg):
    return _compile_dynamic(
        train_monolith,
        cfg=cfg,
        spec=monolith_spec(cfg, _assignments()),
        encoded=FlyteDirectory(tempfile.mkdtemp()),
        assignments=_assignments(),
    )


def _resources(overrides):
    return {r.name: r.value for r in overrides.resources.requests}, {
        r.name: r.value for r in overrides.resources.limits
    }


def test_expert_map_task_carries_configured_resources_accelerator_retries_and_ratio():
    cfg = _gpu_cfg()
    job = _compile_experts(cfg)
    (node,) = job.nodes
    array = node.to_flyte_idl().array_node
    assert array.min_success_ratio == pytest.approx(0.5)
    inner = array.node
    assert inner.metadata.retries.retries == 3
    requests, limits = _resources(inner.task_node.overrides)
    assert requests == limits and set(requests.values()) == {"8", "40Gi", "1"}
    assert inner.task_node.overrides.extended_resources.gpu_accelerator.device == "nvidia-tesla-a100"


def _placed(name, gpu, accelerator, gpus):
    return Placement(name, gpu, accelerator, gpus, list(range(gpus)), 4, False, 0.0, 3600.0, 1.0)


def test_planned_experts_request_their_gpu_type_and_count_and_come_back_in_cluster_order():
    cfg = replace_in(_gpu_cfg(), cluster={"num_clusters": 3, "fine_clusters": 6})
    assignments = pd.DataFrame(
        {
            "clip_id": list("abcdef"),
            "cluster_id": [0, 1, 2, 0, 1, 2],
            "distance": [0.1] * 6,
            "fine_cluster": list(range(6)),
            "role": ["train"] * 6,
        }
    )
    plan = [
        _placed("expert-00", "H100", "nvidia-tesla-h100", 2),
        _placed("expert-01", "L4", "nvidia-l4", 1),
        _placed("expert-02", "H100", "nvidia-tesla-h100", 2),
    ]
    job = _compile_dynamic(
        train_experts,
        cfg=cfg,
        specs=expert_specs(cfg, assignments),
        encoded=FlyteDirectory(tempfile.mkdtemp()),
        assignments=assignments,
        placements=plan,
        seed=None,
    )
    nodes = [n.to_flyte_idl() for n in job.nodes]
    arrays = [n.array_node for n in nodes if n.HasField("array_node")]
    requested = {}
    for array in arrays:
        assert array.min_success_ratio == pytest.approx(0.5)  # a failed expert still spares the others
        inner = array.node
        requests, limits = _resources(inner.task_node.overrides)
        assert requests == limits
        device = inner.task_node.overrides.extended_resources.gpu_accelerator.device
        shape = {b.var: b.binding.scalar.primitive.integer for b in inner.inputs if b.var == "nproc_per_node"}
        requested[device] = (sorted(requests.values()), shape.get("nproc_per_node", 1))
    assert requested == {
        "nvidia-tesla-h100": (["2", "40Gi", "8"], 2),  # two experts on 2 H100 each: DDP over 2 processes
        "nvidia-l4": (["1", "40Gi", "8"], 1),
    }
    (gather,) = [n for n in nodes if n.task_node.reference_id.name == "tasks.train.gather_experts"]
    (order,) = [b.binding for b in gather.inputs if b.var == "order"]
    groups = [[v.scalar.primitive.integer for v in g.collection.bindings] for g in order.collection.bindings]
    assert sorted(groups) == [[0, 2], [1]]
    assert job.outputs[0].binding.promise.node_id == gather.id


def test_monolith_gets_the_same_resources():
    cfg = _gpu_cfg()
    job = _compile_monolith(cfg)
    node = job.nodes[0].to_flyte_idl()
    requests, _ = _resources(node.task_node.overrides)
    assert set(requests.values()) == {"8", "40Gi", "1"}
    assert node.metadata.retries.retries == 3


def test_launch_plans_default_and_nightly_reevaluation_schedule(package):
    from flyteidl.admin import launch_plan_pb2

    plans = {}
    for pb in package.glob("*_3.pb"):
        plan = launch_plan_pb2.LaunchPlan()
        plan.ParseFromString(pb.read_bytes())
        plans[plan.id.name] = plan
    assert "ddm_pipeline_default" in plans
    nightly = plans["ddm_nightly_reevaluation"]
    schedule = nightly.spec.entity_metadata.schedule
    assert schedule.cron_schedule.schedule == "0 3 * * *" or schedule.cron_expression == "0 3 * * *"
    assert set(nightly.spec.default_inputs.parameters) == {"cfg", "ddm_uri", "monolith_uri"}


@pytest.mark.parametrize("nnodes, kind", [(1, "python-task"), (2, "pytorch")])
def test_multi_gpu_experts_compile_to_elastic_ddp_jobs(nnodes, kind):
    cfg = replace_in(_gpu_cfg(), resources={"expert_gpu": 4, "expert_nnodes": nnodes, "expert_nproc_per_node": 4})
    job = _compile_experts(cfg)
    (node,) = job.nodes
    array = node.to_flyte_idl().array_node
    assert array.min_success_ratio == pytest.approx(0.5)  # still one map task: a failed expert spares the others
    requests, limits = _resources(array.node.task_node.overrides)
    assert requests == limits and set(requests.values()) == {"8", "40Gi", "4"}
    (template,) = job.tasks  # the map task's template: the elastic task's type and plugin config
    assert template.id.name.startswith("tasks.train.map_train_model_elastic_")
    assert template.type == kind
    shape = ("nnodes", "nproc_per_node")
    bound = {b.var: b.binding.scalar.primitive.integer for b in array.node.inputs if b.var in shape}
    assert bound == {"nnodes": nnodes, "nproc_per_node": 4}  # the pod reapplies the shape from these inputs
    if nnodes > 1:  # a PyTorchJob of nnodes pods x 4 processes, rendezvous over c10d
        assert template.custom["workerReplicas"] == {"replicas": nnodes}
        assert template.custom["elasticConfig"] == {
            "rdzvBackend": "c10d",
            "minReplicas": nnodes,
            "maxReplicas": nnodes,
            "nprocPerNode": 4,
        }
    else:  # torchrun inside the expert's own pod
        assert not template.custom


def test_single_process_experts_keep_the_plain_task():
    cfg = _gpu_cfg()
    job = _compile_monolith(cfg)
    assert [t.id.name for t in job.tasks] == ["tasks.train.train_model"]
    assert job.nodes[0].to_flyte_idl().task_node.reference_id.name == "tasks.train.train_model"


def test_elastic_task_launches_the_shape_of_the_run_not_of_the_decorator(monkeypatch):
    from flytekitplugins.kfpytorch.task import PytorchElasticFunctionTask

    from tasks.train import train_model_elastic

    seen = {}

    def launch(self, **kwargs):
        seen.update(nnodes=self.task_config.nnodes, nproc=self.task_config.nproc_per_node, nodes=self.max_nodes)

    monkeypatch.setattr(PytorchElasticFunctionTask, "_execute", launch)
    train_model_elastic.shape(1, 1)  # what a pod loads from the module
    train_model_elastic._execute(spec=None, nnodes=3, nproc_per_node=8)
    assert seen == {"nnodes": 3, "nproc": 8, "nodes": 3}

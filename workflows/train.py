"""Up to trained models: ``pyflyte run workflows/train.py train_wf --cfg configs/tiny.yaml``.

The experts (a map task, or one per GPU type of the plan when ``resources.pool`` names a GPU pool), the monolith and
the router have no edge between them, so they run in parallel.
"""

from flytekit import workflow
from flytekit.types.directory import FlyteDirectory
from flytekit.types.file import FlyteFile
from pandera.typing import DataFrame

from data_schemas.cluster import ClusterAssignment
from data_schemas.router import RouterReport
from lib.config import RunConfig
from tasks.sample import assemble_ddm_task, assemble_single_task
from tasks.train import (
    make_specs,
    place_experts,
    train_experts,
    train_monolith,
    train_router_task,
    train_seed,
    training_report,
)
from workflows.cluster import cluster_stage


@workflow
def train_stage(
    cfg: RunConfig, encoded: FlyteDirectory, assignments: DataFrame[ClusterAssignment]
) -> tuple[list[FlyteDirectory | None], FlyteDirectory, FlyteDirectory, DataFrame[RouterReport]]:
    specs, monolith = make_specs(cfg=cfg, assignments=assignments, encoded=encoded)
    placements = place_experts(cfg=cfg, specs=specs, encoded=encoded)
    seed = train_seed(cfg=cfg, encoded=encoded, assignments=assignments)
    experts = train_experts(
        cfg=cfg, specs=specs, encoded=encoded, assignments=assignments, placements=placements, seed=seed
    )
    mono = train_monolith(cfg=cfg, spec=monolith, encoded=encoded, assignments=assignments)
    training_report(experts=experts, monolith=mono)
    router, report = train_router_task(
        cfg=cfg.router,
        num_clusters=cfg.cluster.num_clusters,
        seed=cfg.seed,
        encoded=encoded,
        assignments=assignments,
        output_dir=cfg.output_dir,
    )
    return experts, mono, router, report


@workflow
def ddm_stage(
    cfg: RunConfig, encoded: FlyteDirectory, assignments: DataFrame[ClusterAssignment], centroids: FlyteFile
) -> tuple[FlyteDirectory, FlyteDirectory, DataFrame[RouterReport]]:
    """Trained models up to loadable folders: the DDM, the monolith (a K = 1 folder with its codec) and the router
    report."""
    experts, mono, router, report = train_stage(cfg=cfg, encoded=encoded, assignments=assignments)
    ddm = assemble_ddm_task(
        encode_cfg=cfg.encode,
        cluster_cfg=cfg.cluster,
        experts=experts,
        router=router,
        encoded=encoded,
        centroids=centroids,
        output_dir=cfg.output_dir,
    )
    monolith = assemble_single_task(
        encode_cfg=cfg.encode, model=mono, encoded=encoded, name="monolith", output_dir=cfg.output_dir
    )
    return ddm, monolith, report


@workflow
def train_wf(
    cfg: RunConfig = RunConfig(),
) -> tuple[list[FlyteDirectory | None], FlyteDirectory, DataFrame[RouterReport]]:
    """Returns the expert folders (None where an expert failed), the monolith folder and the router report."""
    _, _, _, encoded, assignments, _, _ = cluster_stage(cfg=cfg)
    experts, mono, _, report = train_stage(cfg=cfg, encoded=encoded, assignments=assignments)
    return experts, mono, report

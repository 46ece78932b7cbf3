"""Re-sample and re-evaluate trained checkpoints without retraining, on a schedule.

``pyflyte run workflows/reevaluate.py reevaluate --cfg configs/tiny.yaml --ddm_uri outputs/tiny/results/ddm
--monolith_uri outputs/tiny/results/monolith`` runs it locally; on a cluster the ``ddm_nightly_reevaluation`` launch
plan runs it every night (``REEVAL_SCHEDULE``). Data preparation steps are the pipeline's own cached tasks, so only
sampling and evaluation do work; results land in ``<output_dir>/reevaluation``.
"""

from flytekit import CronSchedule, LaunchPlan, workflow

from lib.config import RunConfig
from tasks.evaluate import train_featnet
from tasks.summary import as_directory, summarize
from workflows.cluster import cluster_stage
from workflows.evaluate import evaluate_stage

REEVAL_SCHEDULE = "0 3 * * *"  # every night at 03:00 UTC


@workflow
def reevaluate(cfg: RunConfig, ddm_uri: str, monolith_uri: str) -> str:
    """Returns where the new reports were persisted. The checkpoints are folders or URIs (any fsspec store)."""
    ddm, monolith = as_directory(uri=ddm_uri), as_directory(uri=monolith_uri)
    shards, index, attributes, encoded, assignments, _, _ = cluster_stage(cfg=cfg)
    featnet, featnet_note = train_featnet(
        cfg=cfg.evaluate, seed=cfg.seed, shards=shards, index=index, attributes=attributes, output_dir=cfg.output_dir
    )
    report, samples, sheet, heldout = evaluate_stage(
        cfg=cfg,
        shards=shards,
        index=index,
        attributes=attributes,
        encoded=encoded,
        assignments=assignments,
        featnet=featnet,
        featnet_note=featnet_note,
        ddm=ddm,
        monolith=monolith,
    )
    return summarize(
        cfg=cfg,
        results_name="reevaluation",
        report=report,
        featnet_note=featnet_note,
        ddm=ddm,
        monolith=monolith,
        samples=samples,
        sheet=sheet,
        heldout=heldout,
    )


nightly = LaunchPlan.get_or_create(
    reevaluate,
    name="ddm_nightly_reevaluation",
    schedule=CronSchedule(schedule=REEVAL_SCHEDULE),
    default_inputs={
        "cfg": RunConfig(),
        "ddm_uri": f"{RunConfig().output_dir}/results/ddm",
        "monolith_uri": f"{RunConfig().output_dir}/results/monolith",
    },
)

"""The whole DAG: ``pyflyte run workflows/pipeline.py pipeline --cfg configs/tiny.yaml``.

ingest -> encode -> embed -> cluster -> (experts map task || router || monolith) -> assemble -> sample -> evaluate.
The offline feature network trains on the real clips beside the models, and the summary persists everything to
``cfg.output_dir``.
"""

from flytekit import LaunchPlan, workflow

from lib.config import RunConfig
from tasks.evaluate import train_featnet
from tasks.summary import summarize
from workflows.cluster import cluster_stage
from workflows.evaluate import evaluate_stage
from workflows.train import ddm_stage


@workflow
def pipeline(cfg: RunConfig = RunConfig()) -> str:
    """Returns where the results (DDM folder, monolith, samples, contact sheet, reports) were persisted."""
    shards, index, attributes, encoded, assignments, _, centroids = cluster_stage(cfg=cfg)
    ddm, monolith, router_report = ddm_stage(cfg=cfg, encoded=encoded, assignments=assignments, centroids=centroids)
    featnet, featnet_note = train_featnet(
        cfg=cfg["eval"],  # cfg.eval would hit Promise.eval
        seed=cfg.seed,
        shards=shards,
        index=index,
        attributes=attributes,
        output_dir=cfg.output_dir,
    )
    report, samples, sheet = evaluate_stage(
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
        results_name="results",
        report=report,
        router_report=router_report,
        featnet_note=featnet_note,
        ddm=ddm,
        monolith=monolith,
        samples=samples,
        sheet=sheet,
    )


default_lp = LaunchPlan.get_or_create(pipeline, name="ddm_pipeline_default")

"""The whole DAG: ``pyflyte run workflows/pipeline.py pipeline --cfg configs/tiny.yaml``.

ingest -> encode -> embed -> cluster -> (experts map task || router || monolith) -> assemble -> sample -> evaluate.
The offline feature network trains on the real clips beside the models, and the summary persists everything to
``cfg.output_dir``.
"""

from flytekit import LaunchPlan, workflow
from pandera.typing import DataFrame

from data_schemas.evaluate import EvalReport, HeldoutLoss
from lib.config import RunConfig
from tasks.evaluate import train_featnet
from tasks.summary import summarize
from workflows.cluster import cluster_stage
from workflows.evaluate import evaluate_stage
from workflows.train import ddm_stage


@workflow
def run_and_score(
    cfg: RunConfig, results_name: str
) -> tuple[str, DataFrame[EvalReport], DataFrame[HeldoutLoss]]:
    """The pipeline's body, also one cell of ``workflows/compare.py``: where the results were persisted
    (``<output_dir>/<results_name>``), the evaluation report and the held-out loss per t."""
    shards, index, attributes, encoded, assignments, _, centroids = cluster_stage(cfg=cfg)
    ddm, monolith, router_report = ddm_stage(cfg=cfg, encoded=encoded, assignments=assignments, centroids=centroids)
    featnet, featnet_note = train_featnet(
        cfg=cfg.evaluate,
        seed=cfg.seed,
        shards=shards,
        index=index,
        attributes=attributes,
        output_dir=cfg.output_dir,
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
    dest = summarize(
        cfg=cfg,
        results_name=results_name,
        report=report,
        router_report=router_report,
        featnet_note=featnet_note,
        ddm=ddm,
        monolith=monolith,
        samples=samples,
        sheet=sheet,
        heldout=heldout,
    )
    return dest, report, heldout


@workflow
def pipeline(cfg: RunConfig = RunConfig()) -> str:
    """The whole pipeline: data to a DDM and its monolith, sampled and evaluated; returns where the results
    (DDM folder, monolith, samples, contact sheet, reports, summary.md, config.yaml) were persisted.

    Args:
        cfg: a YAML run config file, e.g. configs/tiny.yaml (CPU, minutes), configs/bench.yaml (the benchmark) or
            configs/paper.yaml (GPU cluster), or the same as inline JSON. Every key is optional; unknown keys and bad
            values are refused by name. Sections: seed and output_dir (top level), data (built-in clips or your
            videos), encode (text encoder, latent codec), codec (the learned VAE), cluster (embedders, K), expert
            (network, steps, lr, levers), router, sample (routing strategy, steps, CFG), evaluate (feature networks,
            bootstrap), resources (CPU/GPU per task, GPU pool), distill, extend. Every field: README "Configuration
            reference".
    """
    dest, _, _ = run_and_score(cfg=cfg, results_name="results")
    return dest


default_lp = LaunchPlan.get_or_create(pipeline, name="ddm_pipeline_default")

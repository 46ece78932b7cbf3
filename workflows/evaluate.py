"""Sample every compared method on the fixed prompt set and evaluate: shared by the pipeline and re-evaluation."""

from flytekit import workflow
from flytekit.types.directory import FlyteDirectory
from flytekit.types.file import FlyteFile
from pandera.typing import DataFrame

from data_schemas.cluster import ClusterAssignment
from data_schemas.evaluate import EvalReport, HeldoutLoss
from data_schemas.ingest import ClipAttributes, ClipIndex
from lib.config import RunConfig
from tasks.evaluate import evaluate_task, heldout_loss_task
from tasks.sample import make_prompts, sample_task


@workflow
def evaluate_stage(
    cfg: RunConfig,
    shards: FlyteDirectory,
    index: DataFrame[ClipIndex],
    attributes: DataFrame[ClipAttributes],
    encoded: FlyteDirectory,
    assignments: DataFrame[ClusterAssignment],
    featnet: FlyteDirectory,
    featnet_note: str,
    ddm: FlyteDirectory,
    monolith: FlyteDirectory,
) -> tuple[DataFrame[EvalReport], FlyteDirectory, FlyteFile, DataFrame[HeldoutLoss]]:
    """The EvalReport, the folder of sampled videos, the contact sheet (real prompt clips above every method) and
    the held-out loss per t of the DDM and the monolith on the same prompt clips."""
    prompts = make_prompts(cfg=cfg.sample, seed=cfg.seed, assignments=assignments, index=index)
    samples = sample_task(
        cfg=cfg.sample,
        seed=cfg.seed,
        ddm=ddm,
        monolith=monolith,
        encoded=encoded,
        prompts=prompts,
        output_dir=cfg.output_dir,
    )
    report, sheet = evaluate_task(
        cfg=cfg.evaluate,
        seed=cfg.seed,
        samples=samples,
        featnet=featnet,
        featnet_note=featnet_note,
        shards=shards,
        index=index,
        attributes=attributes,
        assignments=assignments,
        output_dir=cfg.output_dir,
    )
    heldout = heldout_loss_task(
        cfg=cfg.sample, seed=cfg.seed, ddm=ddm, monolith=monolith, encoded=encoded, prompts=prompts
    )
    return report, samples, sheet, heldout

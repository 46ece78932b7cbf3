"""Sample every compared method on the fixed prompt set and evaluate: shared by the pipeline and re-evaluation."""

from flytekit import workflow
from flytekit.types.directory import FlyteDirectory
from flytekit.types.file import FlyteFile
from pandera.typing import DataFrame

from data_schemas.cluster import ClusterAssignment
from data_schemas.evaluate import EvalReport
from data_schemas.ingest import ClipAttributes, ClipIndex
from lib.config import RunConfig
from tasks.evaluate import evaluate_task
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
) -> tuple[DataFrame[EvalReport], FlyteDirectory, FlyteFile]:
    """The EvalReport, the folder of sampled videos and the contact sheet (real prompt clips above every method)."""
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
        cfg=cfg["eval"],
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
    return report, samples, sheet

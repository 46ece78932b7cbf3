"""The distillation task: one dense student trained on the DDM's routed mixture velocity."""

import logging

from flytekit import Resources, dynamic, task
from flytekit.types.directory import FlyteDirectory
from pandera.typing import DataFrame

from data_schemas.cluster import ClusterAssignment
from lib.config import RunConfig, input_key
from lib.distill.student import STUDENT, distill_student
from lib.encode.store import load_encoded
from lib.train.remote import published_model, remote_run
from lib.train.specs import training_rows
from tasks.common import mark_ran, stage_dir, uri_of
from tasks.image import TASK_IMAGE
from tasks.train import resource_overrides

log = logging.getLogger(__name__)


@task(container_image=TASK_IMAGE, requests=Resources(cpu="2", mem="4Gi"), retries=2)
def train_student(
    cfg: RunConfig, ddm: FlyteDirectory, encoded: FlyteDirectory, assignments: DataFrame[ClusterAssignment]
) -> FlyteDirectory:
    """Not Flyte-cached, like the experts: the trainer reuses a finished student and resumes a half-trained one
    from its stable folder (keyed by the DDM and the encoded data)."""
    ids = sorted(training_rows(assignments)["clip_id"].astype(str))
    key = input_key(cfg.distill, cfg.expert, uri_of(ddm), uri_of(encoded))
    out = stage_dir(cfg.output_dir, "distill", key, fresh=False)
    callback, remote = remote_run(cfg.output_dir, "distill", key, out, cfg.expert.log_every, STUDENT)
    data = load_encoded(encoded.download(), ids)
    result, teacher = distill_student(cfg, ddm.download(), data, out, callbacks=[callback])
    if not result.skipped:
        mark_ran("distill")
    state = "reused" if result.skipped else f"trained {result.steps} steps"
    calls = teacher.stats.total_rows
    final = result.log["loss"].tail(20).mean() if len(result.log) else float("nan")
    log.info(f"{STUDENT}: {state} on {len(ids)} clips against the DDM ({cfg.distill.strategy}, CFG "
             f"{cfg.distill.guidance_scale:g}; {calls} teacher expert rows this run), final loss {final:.4f} "
             f"-> {result.model_dir}")  # fmt: skip
    return FlyteDirectory(published_model(result, remote))


@dynamic(container_image=TASK_IMAGE)
def distill_student_task(
    cfg: RunConfig, ddm: FlyteDirectory, encoded: FlyteDirectory, assignments: DataFrame[ClusterAssignment]
) -> FlyteDirectory:
    """The student on the experts' resources (GPU, accelerator, retries from the run config)."""
    node = train_student(cfg=cfg, ddm=ddm, encoded=encoded, assignments=assignments)
    return node.with_overrides(**resource_overrides(cfg.resources))

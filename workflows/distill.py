"""Distil the DDM into one dense model: ``pyflyte run workflows/distill.py distill_wf --cfg configs/tiny.yaml``.

Runs the pipeline's stages up to the assembled DDM (cached or skipped when ``make run`` already trained them), then
trains the student (``distill.*`` in the config) with the DDM as teacher. The student's folder loads with
``DDMPipeline.from_single`` (and ``from_pretrained`` of diffusers' ``WanTransformer3DModel``).
"""

from flytekit import workflow
from flytekit.types.directory import FlyteDirectory

from lib.config import RunConfig
from tasks.distill import distill_student_task
from workflows.cluster import cluster_stage
from workflows.train import ddm_stage


@workflow
def distill_wf(cfg: RunConfig = RunConfig()) -> FlyteDirectory:
    """Returns the student's model folder."""
    _, _, _, encoded, assignments, _, centroids = cluster_stage(cfg=cfg)
    ddm, _, _ = ddm_stage(cfg=cfg, encoded=encoded, assignments=assignments, centroids=centroids)
    return distill_student_task(cfg=cfg, ddm=ddm, encoded=encoded, assignments=assignments)

"""Distil the DDM into one dense model: ``pyflyte run workflows/distill.py distill_wf --cfg configs/tiny.yaml``.

Runs the pipeline's stages up to the assembled DDM (cached or skipped when ``make run`` already trained them), then
trains the student (``distill.*`` in the config) with the DDM as teacher. The returned folder holds the student with
the codec (a K = 1 DDM folder) and loads with ``DDMPipeline.from_pretrained`` wherever it is moved; the network
inside (``experts/expert-00``) loads with diffusers' ``WanTransformer3DModel.from_pretrained``.
"""

from flytekit import workflow
from flytekit.types.directory import FlyteDirectory

from lib.config import RunConfig
from tasks.distill import distill_student_task
from tasks.sample import assemble_single_task
from workflows.cluster import cluster_stage
from workflows.train import ddm_stage


@workflow
def distill_wf(cfg: RunConfig = RunConfig()) -> FlyteDirectory:
    """Returns the student's folder (``DDMPipeline.from_pretrained`` loads it)."""
    _, _, _, encoded, assignments, _, centroids = cluster_stage(cfg=cfg)
    ddm, _, _ = ddm_stage(cfg=cfg, encoded=encoded, assignments=assignments, centroids=centroids)
    student = distill_student_task(cfg=cfg, ddm=ddm, encoded=encoded, assignments=assignments)
    return assemble_single_task(
        encode_cfg=cfg.encode, model=student, encoded=encoded, name="student", output_dir=cfg.output_dir
    )

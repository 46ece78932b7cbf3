"""Train the student: the expert network (or the monolith's budget) on the DDM's mixture velocity.

The trainer is the experts' own (``lib.train.trainer.train``: resume, EMA, NaN guard, checkpoints), with the teacher
replacing the data's flow-matching target; the student trains on every train-role clip, like the monolith. Its
identity is the student config, the distillation config, the DDM manifest (which holds every expert's and the
router's sha256) and the clips, so a rerun reuses the student and a new DDM makes a new one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import torch

from lib.config import RUN_ONLY_FIELDS, ExpertConfig, RunConfig
from lib.distill.teacher import MixtureTeacher
from lib.encode.store import EncodedData
from lib.sample.folder import MANIFEST
from lib.sample.pipeline import DDMPipeline
from lib.seeding import derive_seed
from lib.train.specs import monolith_config
from lib.train.trainer import TrainCallback, TrainData, TrainResult, train

STUDENT = "student"


def student_config(cfg: RunConfig) -> ExpertConfig:
    """The student's network and budget: the expert's, or the monolith's (K x one expert's samples)."""
    if cfg.distill.size == "monolith":
        return monolith_config(cfg.expert, cfg.cluster.num_clusters)
    return cfg.expert


def student_hash(cfg: RunConfig, ddm_dir: str | Path, clip_ids: Sequence[str]) -> str:
    expert = {k: v for k, v in dataclasses.asdict(student_config(cfg)).items() if k not in RUN_ONLY_FIELDS}
    key = {
        "student": expert,
        "distill": dataclasses.asdict(cfg.distill),
        "ddm": json.loads((Path(ddm_dir) / MANIFEST).read_text()),
        "clips": hashlib.sha256("\n".join(clip_ids).encode()).hexdigest(),
        "seed": cfg.seed,
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def distill_student(
    cfg: RunConfig,
    ddm_dir: str | Path,
    data: EncodedData,
    out_dir: str | Path,
    callbacks: Sequence[TrainCallback] | None = None,
    device: str | torch.device = "cpu",
) -> tuple[TrainResult, MixtureTeacher]:
    """Train (or reuse) the student on ``data`` with the DDM in ``ddm_dir`` as teacher; the model folder loads with
    ``DDMPipeline.from_single``. Returns the result and the teacher (its ``stats`` count the expert passes)."""
    pipe = DDMPipeline.from_pretrained(ddm_dir, device=device)
    d = cfg.distill
    teacher = MixtureTeacher(pipe, data.tokens, data.mask, data.pooled, d.strategy, d.top_k, d.guidance_scale)
    train_data = TrainData(list(data.clip_ids), data.latents, data.tokens, data.mask)
    spec = student_hash(cfg, ddm_dir, data.clip_ids)
    seed = derive_seed(cfg.seed, "distill")
    result = train(train_data, student_config(cfg), out_dir, seed, STUDENT, callbacks, spec_hash=spec, teacher=teacher)
    return result, teacher

"""Distillation: the teacher's target is the velocity the DDM integrates, the trainer learns it, the workflow runs.

Two 1-layer experts and a router trained for a few steps on built-in 4x16x16 clips (plumbing, not quality).
"""

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from lib.config import EncodeConfig, ExpertConfig, RouterConfig, RunConfig, replace_in
from lib.data.procedural import iter_builtin_clips
from lib.distill.student import distill_student, student_config, student_hash
from lib.distill.teacher import MixtureTeacher
from lib.encode.codec import PixelCodec
from lib.encode.store import EncodedData
from lib.encode.text import TextEncoder
from lib.models.factory import load_expert
from lib.sample.ddm import sample_ddm
from lib.sample.folder import assemble_ddm
from lib.sample.pipeline import DDMPipeline
from lib.train.router import train_router
from lib.train.trainer import TrainCallback, TrainData, train

K = 2
EXPERT = ExpertConfig(num_layers=1, num_heads=2, head_dim=8, ffn_dim=32, patch_size=[2, 4, 4], steps=4, batch_size=8,
                      warmup_steps=1, checkpoint_every=100, log_every=100)  # fmt: skip
ROUTER = RouterConfig(num_layers=1, num_heads=2, hidden_dim=16, patch_size=[2, 8, 8], steps=5, batch_size=8)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("distill")
    torch.manual_seed(0)
    clips = list(iter_builtin_clips(seed=0, num_clips=24, frames=4, height=16, width=16))
    latents = PixelCodec().encode(np.stack([c.frames for c in clips]))
    emb = TextEncoder.from_config(EncodeConfig()).encode([c.caption for c in clips])
    labels = torch.arange(len(clips)) % K
    ids = [c.clip_id for c in clips]
    experts = {}
    for k in range(K):
        rows = (labels == k).nonzero().flatten()
        data = TrainData([ids[i] for i in rows], latents[rows], emb.tokens[rows], emb.mask[rows])
        experts[k] = train(data, EXPERT, root / f"e{k}", seed=0, name=f"expert-{k:02d}", callbacks=[]).model_dir
    router = train_router(latents, emb.pooled, labels, ROUTER, K, seed=0, out_dir=root / "router").model_dir
    info = {**PixelCodec().info(), "latent_shape": [3, 4, 16, 16], "video_shape": [4, 16, 16, 3],
            "text_encoder": {"name": "minilm", "max_tokens": 40, "dim": 384, "pooled_dim": 384}}  # fmt: skip
    ddm = assemble_ddm(root / "ddm", experts, router, info, None, EncodeConfig())
    data = EncodedData(ids, latents, emb.tokens, emb.mask, emb.pooled)
    return {"root": root, "ddm": ddm, "data": data, "info": info}


@pytest.mark.parametrize("strategy, guidance", [("topk", 1.0), ("top1", 3.0), ("full", 2.0)])
def test_teacher_velocity_is_what_the_ddm_sampler_integrates(run, strategy, guidance):
    pipe = DDMPipeline.from_pretrained(run["ddm"])
    data = run["data"]
    teacher = MixtureTeacher(pipe, data.tokens, data.mask, data.pooled, strategy, 2, guidance)
    idx = torch.tensor([0, 3, 5, 8])
    noise = torch.randn(4, 3, 4, 16, 16, generator=torch.Generator().manual_seed(1))
    v = teacher(noise, torch.ones(4), idx, torch.ones(4, dtype=torch.bool))
    # one Euler step from t = 1 to 0: x0 = noise - v(noise, 1), so v = noise - x0
    handles = {k: pipe.handle(k) for k in range(K)}
    cond = (data.tokens[idx], data.mask[idx])
    uncond = (torch.zeros_like(cond[0]), torch.zeros_like(cond[1]))
    one_step = sample_ddm(handles, pipe.router, noise, cond, uncond, data.pooled[idx], strategy=strategy, top_k=2,
                          num_steps=1, guidance_scale=guidance)  # fmt: skip
    torch.testing.assert_close(v, noise - one_step.x0, rtol=1e-5, atol=1e-5)
    assert teacher.stats.router_calls == 1 and teacher.stats.total_calls >= 1


def test_dropped_captions_get_the_unconditional_mixture_whatever_the_cfg(run):
    pipe = DDMPipeline.from_pretrained(run["ddm"])
    data = run["data"]
    x = torch.randn(4, 3, 4, 16, 16, generator=torch.Generator().manual_seed(2))
    t, idx = torch.full((4,), 0.6), torch.arange(4)
    keep = torch.tensor([True, False, True, False])
    plain = MixtureTeacher(pipe, data.tokens, data.mask, data.pooled, "full", guidance_scale=1.0)(x, t, idx, keep)
    guided = MixtureTeacher(pipe, data.tokens, data.mask, data.pooled, "full", guidance_scale=5.0)(x, t, idx, keep)
    torch.testing.assert_close(plain[~keep], guided[~keep])  # CFG of identical inputs is the input
    assert not torch.allclose(plain[keep], guided[keep])
    with pytest.raises(ValueError, match="deterministic"):
        MixtureTeacher(pipe, data.tokens, data.mask, data.pooled, "sample")


def test_the_trainer_learns_the_teachers_target_not_the_datas(tmp_path):
    torch.manual_seed(0)
    n = 16
    data = TrainData([f"c{i}" for i in range(n)], torch.randn(n, 3, 4, 16, 16), torch.randn(n, 16, 384),
                     torch.ones(n, 16, dtype=torch.bool))  # fmt: skip
    cfg = dataclasses.replace(EXPERT, steps=30, lr=5e-3, batch_size=8)
    seen = []

    def zero_teacher(x_t, t, idx, keep):  # a constant target: the student must learn to output zeros
        seen.append((len(x_t), idx.clone(), keep.clone()))
        return torch.zeros_like(x_t)

    result = train(data, cfg, tmp_path / "s", seed=0, name="student", callbacks=[], teacher=zero_teacher)
    losses = result.log["loss"].to_numpy()
    assert losses[-5:].mean() < 0.2 * losses[:3].mean()  # loss = mean(pred^2) falls towards zero
    assert sum(b for b, _, _ in seen) == cfg.steps * cfg.batch_size
    assert all(int(i.max()) < n for _, i, _ in seen)
    with pytest.raises(ValueError, match="distilling needs objective flow"):
        train(data, dataclasses.replace(cfg, objective="eps"), tmp_path / "e", seed=0, name="s", teacher=zero_teacher)


def test_student_trains_loads_as_a_single_model_and_is_reused(run, tmp_path):
    cfg = replace_in(RunConfig(), cluster={"num_clusters": K}, expert=dataclasses.asdict(EXPERT))
    result, teacher = distill_student(cfg, run["ddm"], run["data"], tmp_path / "student", callbacks=[TrainCallback()])
    assert result.steps == EXPERT.steps and not result.skipped
    assert teacher.stats.total_rows > 0
    assert load_expert(result.model_dir).config.num_layers == 1
    pipe = DDMPipeline.from_single(result.model_dir, run["info"])
    videos = pipe(["a red circle moving left"], num_inference_steps=2, guidance_scale=2.0, seed=0).frames
    assert videos.shape == (1, 4, 16, 16, 3) and videos.dtype == np.uint8
    again, _ = distill_student(cfg, run["ddm"], run["data"], tmp_path / "student", callbacks=[])
    assert again.skipped
    bigger = replace_in(cfg, distill={"size": "monolith"})
    assert student_config(bigger).steps == K * EXPERT.steps
    ids = run["data"].clip_ids
    assert student_hash(bigger, run["ddm"], ids) != student_hash(cfg, run["ddm"], ids)
    assert student_hash(replace_in(cfg, distill={"strategy": "full"}), run["ddm"], ids) != student_hash(
        cfg, run["ddm"], ids
    )
    micro = replace_in(cfg, expert={"micro_batch": 2})  # how it runs is not what it is
    assert student_hash(micro, run["ddm"], ids) == student_hash(cfg, run["ddm"], ids)


def test_distill_workflow_end_to_end_and_rerun_reuses_the_student(tmp_path, capfd):
    from workflows.distill import distill_wf

    cfg = replace_in(
        RunConfig(),
        data={"num_clips": 60, "frames": 4, "height": 16, "width": 16, "shard_size": 64},
        cluster={"num_clusters": 2, "fine_clusters": 8, "silhouette_sample": 60},
        expert={"steps": 4, "num_layers": 1, "num_heads": 2, "head_dim": 16, "ffn_dim": 64, "batch_size": 4,
                "checkpoint_every": 2, "log_every": 2, "warmup_steps": 1},  # fmt: skip
        router={"steps": 4, "batch_size": 8},
        output_dir=str(tmp_path / "out"),
    )
    student = distill_wf(cfg=cfg)
    assert load_expert(Path(student.path) / "experts" / "expert-00").config.num_layers == 1
    moved = shutil.copytree(student.path, tmp_path / "moved-student")  # loads alone, wherever it lies
    assert DDMPipeline.from_pretrained(moved)("a ball", num_inference_steps=1).frames.shape[0] == 1
    first = capfd.readouterr().out
    assert "student: trained 4 steps" in first and "teacher expert rows" in first
    distill_wf(cfg=cfg)
    assert "student: reused" in capfd.readouterr().out

"""The loadable DDM: assemble -> load in a fresh process -> identical videos; pairing, missing experts, integrity.

Two 1-layer experts, a monolith and a router are trained for a few steps on built-in 4x16x16 clips with real MiniLM
caption tokens (the pipeline loads MiniLM itself, so training must use its tokens). The models are barely trained:
these tests check plumbing and determinism, not video quality.
"""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from data_schemas.evaluate import HeldoutLoss
from data_schemas.sample import PromptSet
from lib.config import EncodeConfig, ExpertConfig, RouterConfig
from lib.data.procedural import iter_builtin_clips
from lib.encode.codec import PixelCodec
from lib.encode.store import EncodedData
from lib.encode.text import TextEncoder
from lib.evaluate.heldout_loss import clip_noise, heldout_loss, loss_by_t
from lib.io import SUMS_FILE, ChecksumError
from lib.sample.folder import MANIFEST, DDMLoadError, assemble_ddm, assemble_single
from lib.sample.pipeline import DDMPipeline, save_videos
from lib.sample.prompts import proportional_counts, stratified_prompts
from lib.train.router import train_router
from lib.train.trainer import TrainCallback, TrainData, train

K = 2
EXPERT = ExpertConfig(num_layers=1, num_heads=2, head_dim=8, ffn_dim=32, patch_size=[2, 4, 4], steps=4, batch_size=8,
                      warmup_steps=1, checkpoint_every=100)  # fmt: skip
ROUTER = RouterConfig(num_layers=1, num_heads=2, hidden_dim=16, patch_size=[2, 8, 8], steps=5, batch_size=8)
SAMPLE = {"num_inference_steps": 4, "guidance_scale": 4.0}
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", autouse=True)
def hub_offline_one_thread():
    """Never reach the hub; one thread (tiny tensors, and the fresh process below must match it)."""
    import huggingface_hub.constants

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
        yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Experts 0 and 1 (clips split by index parity), the monolith, the router and codec.json of the run."""
    root = tmp_path_factory.mktemp("run")
    clips = list(iter_builtin_clips(seed=0, num_clips=24, frames=4, height=16, width=16))
    latents = PixelCodec().encode(np.stack([c.frames for c in clips]))
    emb = TextEncoder.from_config(EncodeConfig()).encode([c.caption for c in clips])
    labels = torch.arange(len(clips)) % K
    ids = [c.clip_id for c in clips]

    def fit(rows: torch.Tensor, name: str, steps: int) -> Path:
        data = TrainData([ids[i] for i in rows], latents[rows], emb.tokens[rows], emb.mask[rows])
        cfg = EXPERT if steps == EXPERT.steps else ExpertConfig(**{**EXPERT.__dict__, "steps": steps})
        return train(data, cfg, root / name, seed=0, name=name, callbacks=[TrainCallback()]).model_dir

    experts = {k: fit((labels == k).nonzero().flatten(), f"expert-{k:02d}", EXPERT.steps) for k in range(K)}
    monolith = fit(torch.arange(len(clips)), "monolith", K * EXPERT.steps)
    router = train_router(latents, emb.pooled, labels, ROUTER, K, seed=0, out_dir=root / "router-run").model_dir
    info = {**PixelCodec().info(), "latent_shape": [3, 4, 16, 16], "video_shape": [4, 16, 16, 3],
            "text_encoder": {"name": "minilm", "max_tokens": 40, "dim": 384, "pooled_dim": 384}}  # fmt: skip
    captions = pd.DataFrame({"clip_id": ids, "caption": [c.caption for c in clips]})
    encoded = EncodedData(ids, latents, emb.tokens, emb.mask, emb.pooled)
    return {"root": root, "experts": experts, "monolith": monolith, "router": router, "info": info,
            "captions": captions, "labels": labels, "encoded": encoded}  # fmt: skip


@pytest.fixture(scope="module")
def ddm_dir(trained):
    centroids = np.arange(K * 5, dtype=np.float32).reshape(K, 5)
    return assemble_ddm(trained["root"] / "ddm", trained["experts"], trained["router"], trained["info"], centroids,
                        EncodeConfig())  # fmt: skip


@pytest.fixture(scope="module")
def pipe(ddm_dir):
    return DDMPipeline.from_pretrained(ddm_dir)


@pytest.fixture(scope="module")
def prompts(trained):
    return trained["captions"]["caption"].tolist()[:5]


def test_manifest_records_experts_router_codec_text_and_centroids(ddm_dir, trained):
    manifest = json.loads((ddm_dir / MANIFEST).read_text())
    assert manifest["format_version"] == 1 and manifest["num_experts"] == K and manifest["missing_experts"] == []
    for k, entry in enumerate(manifest["experts"]):
        src = json.loads((trained["experts"][k] / "training.json").read_text())
        assert entry == {"cluster_id": k, "present": True, "path": f"experts/expert-{k:02d}",
                         "class_name": "WanTransformer3DModel", "objective": "flow",
                         "weights_sha256": src["weights_sha256"]}  # fmt: skip
        assert (ddm_dir / entry["path"] / "config.json").is_file()
    assert manifest["codec"]["name"] == "pixel" and manifest["codec"]["latent_shape"] == [3, 4, 16, 16]
    assert manifest["text_encoder"] == {"name": "minilm", "max_tokens": 40, "dim": 384, "pooled_dim": 384}
    assert (ddm_dir / "router" / "config.json").is_file() and manifest["router"]["path"] == "router"
    np.testing.assert_array_equal(load_file(str(ddm_dir / "centroids.safetensors"))["centroids"].numpy(),
                                  np.arange(K * 5, dtype=np.float32).reshape(K, 5))  # fmt: skip
    assert not [p for p in ddm_dir.parent.iterdir() if p.name.startswith(".ddm.")]  # no temp folder left behind


def test_fresh_process_gives_the_same_videos(pipe, ddm_dir, prompts, tmp_path):
    here = pipe(prompts, seed=3, strategy="topk", **SAMPLE).frames
    assert here.dtype == np.uint8 and here.shape == (len(prompts), 4, 16, 16, 3)
    out = tmp_path / "videos.npy"
    code = (
        "import json, sys, numpy as np, torch; torch.set_num_threads(1)\n"
        "from lib.sample.pipeline import DDMPipeline\n"
        f"p = DDMPipeline.from_pretrained({str(ddm_dir)!r})\n"
        f"np.save({str(out)!r}, p({prompts!r}, seed=3, strategy='topk', **{SAMPLE!r}).frames)\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    np.testing.assert_array_equal(np.load(out), here)


def test_a_long_job_samples_through_compiled_blocks_to_the_same_videos_in_fp32(ddm_dir, prompts, monkeypatch):
    eager = DDMPipeline.from_pretrained(ddm_dir).generate(prompts, seed=2, strategy="topk", **SAMPLE)
    monkeypatch.setattr("lib.models.levers.COMPILE_MIN_CPU_VIDEOS", len(prompts))  # this job counts as long
    monkeypatch.setattr("lib.models.levers.cpu_has_amx", lambda: False)  # fp32: the compile alone is under test
    pipe = DDMPipeline.from_pretrained(ddm_dir)
    pipe.generate(prompts[:2], seed=2, strategy="topk", **SAMPLE)
    assert not pipe.compiled  # a short job does not pay for the compile
    out = pipe.generate(prompts, seed=2, strategy="topk", **SAMPLE)
    assert pipe.compiled and all(hasattr(b, "_compiled_call_impl") and b._compiled_call_impl is not None
                                 for m in pipe.experts.values() for b in m.blocks)  # fmt: skip
    torch.testing.assert_close(out.result.x0, eager.result.x0, rtol=0, atol=1e-5)
    assert np.abs(out.videos.astype(int) - eager.videos.astype(int)).max() <= 1
    fresh = DDMPipeline.from_pretrained(ddm_dir).experts
    assert all(list(m.state_dict()) == list(fresh[k].state_dict()) for k, m in pipe.experts.items())  # same keys


def test_seeds_batch_size_and_routing_weights(pipe, prompts):
    a = pipe.generate(prompts, seed=0, strategy="topk", batch_size=2, **SAMPLE)
    again = pipe(prompts, seed=0, strategy="topk", batch_size=2, **SAMPLE).frames
    other = pipe(prompts, seed=1, strategy="topk", batch_size=2, **SAMPLE).frames
    np.testing.assert_array_equal(a.videos, again)
    assert np.abs(a.videos.astype(int) - other.astype(int)).mean() > 1.0
    # prompt i's noise and video do not depend on the batch size or on the other prompts
    whole = pipe.generate(prompts, seed=0, strategy="topk", batch_size=5, **SAMPLE)
    torch.testing.assert_close(whole.result.x0, a.result.x0, atol=1e-4, rtol=0)
    alone = pipe.generate(prompts[2:3], seed=0, strategy="topk", prompt_keys=[2], **SAMPLE)
    torch.testing.assert_close(alone.result.x0[0], a.result.x0[2], atol=1e-4, rtol=0)
    # topk with K = 2 keeps both experts, renormalised; top1 keeps one
    w = a.result.weights
    assert w.shape == (SAMPLE["num_inference_steps"], len(prompts), K)
    torch.testing.assert_close(w.sum(-1), torch.ones(w.shape[:2]))
    top1 = pipe.generate(prompts, seed=0, strategy="top1", **SAMPLE).result.weights
    assert ((top1 > 0).sum(-1) == 1).all()
    oracle = pipe.generate(prompts, seed=0, strategy="oracle", oracle_clusters=[0, 1, 1, 0, 1], **SAMPLE)
    assert oracle.result.weights[:, :, 1].tolist() == [[0.0, 1.0, 1.0, 0.0, 1.0]] * SAMPLE["num_inference_steps"]
    assert oracle.result.stats.router_calls == 0 and a.result.stats.router_calls == 3 * SAMPLE["num_inference_steps"]


def test_sample_routing_and_schedules_in_the_pipeline_are_paired_and_batch_free(pipe, prompts):
    """``sample`` draws each prompt's expert from its own generator: the draws, like the noise, do not depend on the
    batch or on the other prompts, and a schedule runs through ``__call__`` as any strategy does."""
    a = pipe.generate(prompts, seed=0, strategy="sample", batch_size=2, **SAMPLE)
    whole = pipe.generate(prompts, seed=0, strategy="sample", batch_size=5, **SAMPLE)
    alone = pipe.generate(prompts[3:4], seed=0, strategy="sample", prompt_keys=[3], **SAMPLE)
    torch.testing.assert_close(whole.result.x0, a.result.x0, atol=1e-4, rtol=0)
    torch.testing.assert_close(alone.result.x0[0], a.result.x0[3], atol=1e-4, rtol=0)
    assert torch.equal(alone.result.weights[:, 0], a.result.weights[:, 3])
    assert ((a.result.weights > 0).sum(-1) == 1).all()
    u = DDMPipeline.route_uniforms(3, 4, seed=0, prompt_keys=[7, 8, 9])
    assert torch.equal(DDMPipeline.route_uniforms(1, 4, seed=0, prompt_keys=[8])[0], u[1])
    assert not torch.equal(u, DDMPipeline.route_uniforms(3, 4, seed=1, prompt_keys=[7, 8, 9]))
    scheduled = pipe.generate(prompts, seed=0, strategy="topk>top1@0.5", **SAMPLE).result
    late = scheduled.timesteps <= 0.5
    assert ((scheduled.weights[~late] > 0).sum(-1) == K).all() and ((scheduled.weights[late] > 0).sum(-1) == 1).all()
    videos = pipe(prompts, seed=0, strategy="sample>top1@0.5", **SAMPLE).frames
    assert videos.shape[0] == len(prompts) and videos.dtype == np.uint8
    with pytest.raises(ValueError, match="expert 5 is not one of its experts"):
        pipe(prompts, strategy="topk>expert:5@0.5", **SAMPLE)


def test_single_models_share_the_noise_of_the_ddm(pipe, trained, prompts):
    """Paired comparison: the DDM run as expert 0 alone equals expert 0 loaded as a single model."""
    single = DDMPipeline.from_single(trained["experts"][0], trained["info"])
    torch.testing.assert_close(single.noise(5, seed=7), pipe.noise(5, seed=7), atol=0, rtol=0)
    np.testing.assert_array_equal(single(prompts, seed=7, strategy="topk", **SAMPLE).frames,
                                  pipe(prompts, seed=7, strategy="expert:0", **SAMPLE).frames)  # fmt: skip
    mono = DDMPipeline.from_single(trained["monolith"], trained["info"])
    assert mono.num_experts == 1 and mono.router is None
    routed = mono.generate(prompts, seed=7, strategy="full", **SAMPLE)  # any strategy runs the one model
    np.testing.assert_array_equal(routed.videos, mono(prompts, seed=7, strategy="expert:0", **SAMPLE).frames)
    assert routed.result.stats.router_calls == 0
    with pytest.raises(ValueError, match="expert 1 is not one of its experts"):
        mono(prompts, strategy="expert:1", **SAMPLE)


def test_diffusers_conventions_and_the_old_names(pipe, prompts):
    """``num_inference_steps``, ``generator`` and an output with ``.frames`` as in diffusers; ``num_steps`` still
    works for one version, with a DeprecationWarning."""
    out = pipe(prompts[:2], num_inference_steps=2, seed=5)
    assert out.frames is out.videos and out.frames.shape == (2, 4, 16, 16, 3) and out.result.weights.shape[0] == 2
    by_generator = pipe(prompts[:2], num_inference_steps=2, generator=torch.Generator().manual_seed(5)).frames
    np.testing.assert_array_equal(by_generator, out.frames)
    with pytest.warns(DeprecationWarning, match="num_steps is deprecated.*num_inference_steps"):
        old = pipe(prompts[:2], num_steps=2, seed=5).frames
    np.testing.assert_array_equal(old, out.frames)
    (frames,) = pipe(prompts[:2], num_inference_steps=2, seed=5, return_dict=False)
    np.testing.assert_array_equal(frames, out.frames)
    np.testing.assert_array_equal(pipe(prompts[0], num_inference_steps=2, seed=5).frames, out.frames[:1])
    with pytest.raises(ValueError, match="seed or generator, not both"):
        pipe(prompts[:1], seed=1, generator=torch.Generator())


def test_every_model_folder_loads_alone_wherever_it_is_moved(pipe, trained, ddm_dir, prompts, tmp_path):
    """The DDM, the monolith (assembled with its codec), one expert inside a DDM folder: each loads from its own
    path after a move and draws what it drew before; a bare trainer folder says how to load it."""
    moved_ddm = shutil.copytree(ddm_dir, tmp_path / "elsewhere" / "ddm")
    kwargs = {"num_inference_steps": 2, "seed": 1}
    np.testing.assert_array_equal(DDMPipeline.from_pretrained(moved_ddm)(prompts, **kwargs).frames,
                                  pipe(prompts, **kwargs).frames)  # fmt: skip
    mono = assemble_single(trained["root"] / "mono-alone", trained["monolith"], trained["info"], EncodeConfig())
    moved_mono = shutil.copytree(mono, tmp_path / "elsewhere" / "monolith")
    shutil.rmtree(mono)
    from_trainer = DDMPipeline.from_single(trained["monolith"], trained["info"])
    np.testing.assert_array_equal(DDMPipeline.from_pretrained(moved_mono)(prompts, **kwargs).frames,
                                  from_trainer(prompts, **kwargs).frames)  # fmt: skip
    expert = DDMPipeline.from_pretrained(moved_ddm / "experts" / "expert-01")
    assert expert.num_experts == 1 and expert.router is None
    np.testing.assert_array_equal(expert(prompts, **kwargs).frames,
                                  pipe(prompts, strategy="expert:1", **kwargs).frames)  # fmt: skip
    with pytest.raises(DDMLoadError, match=r"a trainer's model folder.*from_single\(folder, codec_info\)"):
        DDMPipeline.from_pretrained(trained["monolith"])


def test_missing_expert_is_excluded(trained, prompts):
    folder = assemble_ddm(trained["root"] / "ddm-missing", {0: trained["experts"][0], 1: None}, trained["router"],
                          trained["info"], None, EncodeConfig())  # fmt: skip
    manifest = json.loads((folder / MANIFEST).read_text())
    assert manifest["missing_experts"] == [1] and manifest["experts"][1] == {"cluster_id": 1, "present": False,
                                                                             "path": None}  # fmt: skip
    assert not (folder / "experts" / "expert-01").exists() and manifest["centroids"] is None
    pipe = DDMPipeline.from_pretrained(folder)
    assert pipe.missing_experts == [1]
    for strategy in ("topk", "full"):
        out = pipe.generate(prompts, seed=0, strategy=strategy, **SAMPLE)
        assert (out.result.weights[:, :, 1] == 0).all() and (out.result.weights[:, :, 0] == 1).all()
        assert set(out.result.stats.expert_calls) == {0}
    with pytest.raises(ValueError, match=r"expert:1.*expert 1 is missing \(failed training\)"):
        pipe(prompts, strategy="expert:1", **SAMPLE)


def test_tampered_weights_are_refused_naming_the_file(ddm_dir, tmp_path):
    copy = shutil.copytree(ddm_dir, tmp_path / "ddm")
    weights = copy / "experts" / "expert-01" / "diffusion_pytorch_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match=rf"{weights}: sha256 mismatch: {copy / SUMS_FILE} records"):
        DDMPipeline.from_pretrained(copy)
    (copy / SUMS_FILE).unlink()  # a folder assembled before SHA256SUMS: the manifest's weight digests still refuse it
    with pytest.raises(DDMLoadError, match=r"expert-01/diffusion_pytorch_model\.safetensors \(expected sha256"):
        DDMPipeline.from_pretrained(copy)
    (copy / MANIFEST).unlink()
    with pytest.raises(DDMLoadError, match="ddm.json: missing"):
        DDMPipeline.from_pretrained(copy)


@pytest.mark.parametrize("name", ["centroids.safetensors", "experts/expert-00/config.json", "router/training.json",
                                  "experts/expert-01/training_log.parquet", "ddm.json", "SHA256SUMS"])  # fmt: skip
def test_a_flipped_bit_anywhere_in_a_ddm_folder_is_refused_naming_the_file(ddm_dir, tmp_path, name):
    """Files the manifest's weight digests do not cover (a centroid, a config value) would load as wrong numbers."""
    copy = shutil.copytree(ddm_dir, tmp_path / "ddm")
    data = bytearray((copy / name).read_bytes())
    data[len(data) // 2] ^= 1  # the lowest bit: JSON stays mostly valid, a float changes in its last place
    (copy / name).write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match=re.escape(str(copy / name))):
        DDMPipeline.from_pretrained(copy)


def test_assemble_refuses_inconsistent_inputs(trained, tmp_path):
    experts, router, info = trained["experts"], trained["router"], trained["info"]
    with pytest.raises(DDMLoadError, match="max_tokens: codec.json 40 vs encode config 8"):
        assemble_ddm(tmp_path / "a", experts, router, info, None, EncodeConfig(max_tokens=8))
    with pytest.raises(DDMLoadError, match="router does not fit"):
        assemble_ddm(tmp_path / "b", {0: experts[0], 1: experts[1], 2: None}, router, info, None, EncodeConfig())
    with pytest.raises(DDMLoadError, match="every expert failed"):
        assemble_ddm(tmp_path / "c", {0: None, 1: None}, router, info, None, EncodeConfig())
    wrong = {**info, "latent_shape": [3, 8, 16, 16]}
    with pytest.raises(DDMLoadError, match="but the codec gives latents"):
        assemble_ddm(tmp_path / "d", experts, router, wrong, None, EncodeConfig())
    assert not tmp_path.joinpath("a").exists() and not list(tmp_path.glob(".*"))


def test_save_videos_writes_gif_and_mp4(tmp_path):
    videos = np.random.default_rng(0).integers(0, 256, (2, 4, 16, 16, 3), dtype=np.uint8)
    paths = save_videos(videos, tmp_path / "out", "ddm-topk", fps=4)
    assert [p.name for p in paths] == ["ddm-topk-0000.gif", "ddm-topk-0000.mp4", "ddm-topk-0001.gif",
                                       "ddm-topk-0001.mp4"]  # fmt: skip
    assert all(p.stat().st_size > 0 for p in paths)
    with Image.open(paths[0]) as gif:
        assert gif.n_frames == 4
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [p.name for p in paths]
    with pytest.raises(ValueError, match="uint8"):
        save_videos(videos.astype(np.float32), tmp_path, "x")
    with pytest.raises(ValueError, match="formats"):
        save_videos(videos, tmp_path, "x", formats=("webm",))


def test_prompts_come_from_the_prompt_role_in_cluster_proportion():
    ids = [f"c{i:03d}" for i in range(60)]
    roles = ["train"] * 20 + ["prompt"] * 30 + ["validation"] * 10
    clusters = [i % 3 for i in range(20)] + [0] * 15 + [1] * 10 + [2] * 5 + [i % 2 for i in range(10)]
    assignments = pd.DataFrame({"clip_id": ids, "cluster_id": clusters, "role": roles})
    index = pd.DataFrame({"clip_id": ids, "caption": [f"caption {i}" for i in range(60)]})
    table = stratified_prompts(assignments, index, num_prompts=12, seed=0)
    PromptSet.validate(table)
    assert table["prompt_id"].tolist() == list(range(12))
    assert set(table["clip_id"]) <= set(ids[20:50])  # prompt-role clips only
    assert table.groupby("cluster_id").size().to_dict() == {0: 6, 1: 4, 2: 2}  # 15:10:5 of the role
    truth = assignments.set_index("clip_id")["cluster_id"]
    assert (table["cluster_id"].to_numpy() == truth[table["clip_id"]].to_numpy()).all()
    assert (table["caption"] == "caption " + table["clip_id"].str[1:].astype(int).astype(str)).all()
    shuffled = stratified_prompts(assignments.sample(frac=1, random_state=1), index[::-1], num_prompts=12, seed=0)
    pd.testing.assert_frame_equal(shuffled, table)
    assert not stratified_prompts(assignments, index, num_prompts=12, seed=1).equals(table)
    assert len(stratified_prompts(assignments, index, num_prompts=0, seed=0)) == 30  # 0: the whole role
    val = stratified_prompts(assignments, index, num_prompts=0, seed=0, role="validation")
    assert sorted(val["clip_id"]) == ids[50:]
    with pytest.raises(ValueError, match="only 30 clips have role 'prompt'"):
        stratified_prompts(assignments, index, num_prompts=31, seed=0)
    with pytest.raises(ValueError, match="held-out role"):
        stratified_prompts(assignments, index, num_prompts=5, seed=0, role="train")
    with pytest.raises(ValueError, match="no caption"):
        stratified_prompts(assignments, index.iloc[21:], num_prompts=2, seed=0)
    with pytest.raises(ValueError, match="lacks column"):
        stratified_prompts(assignments.drop(columns="role"), index, num_prompts=2, seed=0)


def test_proportional_counts_sum_and_bounds():
    assert proportional_counts(np.array([15, 10, 5]), 12).tolist() == [6, 4, 2]
    assert proportional_counts(np.array([1, 1, 1]), 2).sum() == 2
    assert proportional_counts(np.array([3, 0, 1]), 10).tolist() == [3, 0, 1]  # never more than a group has


def test_eps_conversion_settings_reach_the_sampler(pipe, prompts, monkeypatch):
    """sample.eps_x0_clamp / eps_alpha_floor are passed to every sampler call, not only into cache keys."""
    import lib.sample.pipeline as pipeline

    seen, real = [], pipeline.sample_ddm

    def spy(*args, **kwargs):
        seen.append((kwargs["clamp"], kwargs["alpha_floor"]))
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline, "sample_ddm", spy)
    pipe(prompts[:3], strategy="topk", num_inference_steps=1, batch_size=2, eps_x0_clamp=1.5, eps_alpha_floor=0.2)
    assert seen == [(1.5, 0.2), (1.5, 0.2)]


def test_unconditional_input_is_the_trainers_caption_dropout(pipe, prompts, monkeypatch):
    """CFG's unconditional half must be what caption_dropout trained: the caption's mask all False."""
    import lib.sample.pipeline as pipeline

    seen, real = [], pipeline.expert_forward

    def spy(model, x_t, t, tokens, mask):
        seen.append((tokens.clone(), mask.clone()))
        return real(model, x_t, t, tokens, mask)

    monkeypatch.setattr(pipeline, "expert_forward", spy)
    pipe(prompts[:2], strategy="expert:0", num_inference_steps=1, guidance_scale=4.0)
    ((tokens, mask),) = seen
    assert tokens.shape[0] == 4 and mask[:2].any(dim=1).all() and not mask[2:].any()
    assert not tokens[2:].any()
    seen.clear()
    pipe(prompts[:2], strategy="expert:0", num_inference_steps=1, guidance_scale=1.0)  # no CFG: conditional half only
    assert seen[0][0].shape[0] == 2


def test_sample_command_and_workflow_write_videos_sheet_and_prompts(ddm_dir, pipe, prompts, tmp_path, capsys):
    """``ddm-sample`` (the console command, run from another folder) and ``sample_wf`` write what the pipeline
    draws for the same settings, with a contact sheet and the prompts, and refuse bad input in one line."""
    from lib.sample.command import main
    from workflows.sample import sample_wf

    main([str(ddm_dir), "--prompt", prompts[0], "--prompt", prompts[1], "--out", str(tmp_path / "cli"),
          "--num-inference-steps", "2", "--seed", "3", "--formats", "gif"])  # fmt: skip
    expected = pipe(prompts[:2], num_inference_steps=2, seed=3).frames
    written = sorted((tmp_path / "cli").glob("sample-*.gif"))
    assert [p.name for p in written] == ["sample-0000.gif", "sample-0001.gif"]
    assert Image.open(written[1]).n_frames == expected.shape[1]
    assert (tmp_path / "cli" / "samples.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    record = json.loads((tmp_path / "cli" / "prompts.json").read_text())
    assert record["videos"] == {"sample-0000": prompts[0], "sample-0001": prompts[1]}
    assert record["settings"]["num_inference_steps"] == 2 and "2 video(s)" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="no prompts: give --prompt"):
        main([str(ddm_dir)])
    with pytest.raises(SystemExit, match="ddm-sample: error: .*missing \\(DDM manifest"):
        main([str(tmp_path), "--prompt", "a ball"])

    prompt_file = tmp_path / "prompts.txt"
    prompt_file.write_text(f"{prompts[2]}\n\n")
    command = shutil.which("ddm-sample", path=str(Path(sys.executable).parent))
    assert command, "the console command is installed with the project (make install)"
    run = subprocess.run([command, str(ddm_dir), "--prompts-file", str(prompt_file), "--out", "here",
                          "--num-inference-steps", "1", "--formats", "mp4"], cwd=tmp_path, capture_output=True,
                         text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300)  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "here" / "sample-0000.mp4").is_file()

    out = sample_wf(ddm_uri=str(ddm_dir), prompts=prompts[:2], out=str(tmp_path / "wf"), num_inference_steps=2,
                    seed=3)  # fmt: skip
    assert out == str(tmp_path / "wf") and (tmp_path / "wf" / "samples.png").is_file()
    assert (tmp_path / "wf" / "sample-0001.gif").read_bytes() == written[1].read_bytes()  # same frames, same file


def test_the_sample_command_loads_a_model_from_a_bucket_uri(ddm_dir, pipe, prompts):
    """``ddm-sample s3://…/results/ddm`` works like a local folder (here fsspec's in-memory store stands in)."""
    import fsspec

    from lib.sample.command import load_model

    fs = fsspec.filesystem("memory")
    fs.put(str(ddm_dir), "/bucket/results/ddm", recursive=True)
    remote = load_model("memory://bucket/results/ddm")
    np.testing.assert_array_equal(remote(prompts[:2], num_inference_steps=2, seed=1).frames,
                                  pipe(prompts[:2], num_inference_steps=2, seed=1).frames)  # fmt: skip
    with pytest.raises(FileNotFoundError, match="memory://bucket/nothing: no model folder there"):
        load_model("memory://bucket/nothing")


def test_heldout_loss_scores_the_mixture_as_it_samples(pipe, trained, tmp_path):
    """Rows per (method, t, cluster) that the schema accepts; oracle routing on cluster c is expert c there; the
    numbers are the plain flow-matching MSE with the clip's own noise, and do not depend on the batch size."""
    data, labels = trained["encoded"], trained["labels"].tolist()
    grid = (0.5, 1.0)
    table = heldout_loss(pipe, "ddm", data, ["topk", "oracle", "expert:0", "expert:1"], seed=3, clusters=labels,
                         t_grid=grid, batch_size=5)  # fmt: skip
    HeldoutLoss.validate(table)
    assert len(table) == 4 * len(grid) * (1 + K)
    assert set(table["method"]) == {"ddm:topk", "ddm:oracle", "ddm:expert:0", "ddm:expert:1"}
    for c in range(K):
        oracle = table[(table["method"] == "ddm:oracle") & (table["cluster"] == c)]["loss"].to_numpy()
        fixed = table[(table["method"] == f"ddm:expert:{c}") & (table["cluster"] == c)]["loss"].to_numpy()
        np.testing.assert_allclose(oracle, fixed, rtol=1e-6)
    # expert 0 at t = 1 by hand: x_t is the noise, the target noise minus the clip's latents
    eps = clip_noise(data.clip_ids, data.latents.shape[1:], 1, seed=3)
    t = torch.ones(len(eps))
    with torch.no_grad():
        pred = pipe.handle(0).predict(eps, t, (data.tokens, data.mask))
    by_hand = float((pred - (eps - data.latents)).pow(2).flatten(1).mean(1).mean())
    assert loss_by_t(table, "ddm:expert:0")[1.0] == pytest.approx(by_hand, rel=1e-5)
    again = heldout_loss(pipe, "ddm", data, ["topk"], seed=3, clusters=labels, t_grid=grid, batch_size=64)
    np.testing.assert_allclose(again["loss"], table[table["method"] == "ddm:topk"]["loss"], rtol=1e-5)
    other_seed = heldout_loss(pipe, "ddm", data, ["topk"], seed=4, t_grid=grid)
    assert not np.allclose(other_seed["loss"], again[again["cluster"] == -1]["loss"])


def test_heldout_loss_of_a_single_model_and_bad_requests(trained):
    data = trained["encoded"]
    mono = DDMPipeline.from_pretrained(assemble_single(trained["root"] / "mono-heldout", trained["monolith"],
                                                       trained["info"], EncodeConfig()))  # fmt: skip
    table = heldout_loss(mono, "monolith", data, ["topk"], seed=0, t_grid=(0.25, 1.0))
    assert set(table["method"]) == {"monolith"} and set(table["cluster"]) == {-1}
    assert sorted(loss_by_t(table, "monolith")) == [0.25, 1.0]
    pipe = DDMPipeline.from_pretrained(trained["root"] / "ddm")
    with pytest.raises(ValueError, match="oracle.*needs the true cluster"):
        heldout_loss(pipe, "ddm", data, ["oracle"], seed=0)
    with pytest.raises(ValueError, match=r"every t must lie in \(0, 1\]"):
        heldout_loss(pipe, "ddm", data, ["topk"], seed=0, t_grid=(0.0, 0.5))
    with pytest.raises(ValueError, match="no held-out loss rows for method 'ddm:top1'"):
        loss_by_t(table, "ddm:top1")

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from diffusers import WanTransformer3DModel
from safetensors.torch import load_file, save_file

from lib.config import ExpertConfig
from lib.models.factory import (
    TRAINING_INFO,
    WAN_TIMESTEP_SCALE,
    ExpertLoadError,
    build_expert,
    count_parameters,
    expert_forward,
    load_expert,
    tokens_per_sample,
    weights_sha256,
)
from lib.train.compute import flops_per_step, matmul_parameters, micro_batch_for_memory

TINY = ExpertConfig(num_layers=2, num_heads=2, head_dim=16, ffn_dim=64, patch_size=[2, 4, 4])
SHAPE = (4, 16, 16)


def _inputs(b: int = 2, c: int = 3, length: int = 8, dim: int = 32, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, c, *SHAPE, generator=g)
    t = torch.rand(b, generator=g)
    tokens = torch.randn(b, length, dim, generator=g)
    mask = torch.ones(b, length, dtype=torch.bool)
    mask[:, length - 3 :] = False
    return x, t, tokens, mask


def test_default_config_is_the_calibrated_1_3m_model():
    model = build_expert(ExpertConfig(), in_channels=3, text_dim=384, sample_shape=(8, 32, 32))
    n = count_parameters(model)
    print(f"default expert: {n} parameters")
    assert 1_200_000 <= n <= 1_400_000
    assert isinstance(model, WanTransformer3DModel)
    assert tokens_per_sample(ExpertConfig(), (8, 32, 32)) == 4 * 8 * 8


def test_forward_shape_and_timestep_scale():
    model = build_expert(TINY, 3, 32, SHAPE).eval()
    x, t, tokens, mask = _inputs()
    with torch.no_grad():
        out = expert_forward(model, x, t, tokens, mask)
        direct = model(x, t * WAN_TIMESTEP_SCALE, tokens * mask[..., None], return_dict=False)[0]
    assert out.shape == x.shape
    torch.testing.assert_close(out, direct, rtol=0, atol=0)


def test_padded_tokens_are_ignored_and_empty_mask_is_zero_tokens():
    model = build_expert(TINY, 3, 32, SHAPE).eval()
    x, t, tokens, mask = _inputs()
    noisy = tokens.clone()
    noisy[~mask] = 1e3  # garbage in the padding must not matter
    empty = torch.zeros_like(mask)
    with torch.no_grad():
        a = expert_forward(model, x, t, tokens, mask)
        b = expert_forward(model, x, t, noisy, mask)
        uncond = expert_forward(model, x, t, tokens, empty)
        zeros = expert_forward(model, x, t, torch.zeros_like(tokens), empty)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(uncond, zeros, rtol=0, atol=0)
    assert not torch.allclose(a, uncond)  # the caption does condition the output


def test_build_is_seeded_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = build_expert(TINY, 3, 32, SHAPE, seed=1)
    after = torch.rand(1)
    b = build_expert(TINY, 3, 32, SHAPE, seed=1)
    c = build_expert(TINY, 3, 32, SHAPE, seed=2)
    assert torch.equal(before, after)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    assert not all(torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters(), strict=True))


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match=r"sample H=18 is not divisible"):
        build_expert(TINY, 3, 32, (4, 18, 16))
    model = build_expert(TINY, 3, 32, SHAPE)
    x, t, tokens, mask = _inputs()
    with pytest.raises(ValueError, match="t must be a float"):
        expert_forward(model, x, t[:1], tokens, mask)
    with pytest.raises(ValueError, match="mask"):
        expert_forward(model, x, t, tokens, mask[:, :2])


_FRESH = """
import sys, torch
from diffusers import WanTransformer3DModel
from safetensors.torch import load_file, save_file
folder, inputs, out = sys.argv[1:]
model = WanTransformer3DModel.from_pretrained(folder).eval()
i = load_file(inputs)
with torch.no_grad():
    y = model(i["x"], i["t"] * 1000.0, i["tokens"] * i["mask"][..., None], return_dict=False)[0]
save_file({"y": y.contiguous()}, out)
"""


def test_save_pretrained_round_trip_in_a_fresh_process(tmp_path: Path):
    model = build_expert(TINY, 3, 32, SHAPE, seed=7).eval()
    x, t, tokens, mask = _inputs()
    with torch.no_grad():
        expected = expert_forward(model, x, t, tokens, mask)
    model.save_pretrained(tmp_path / "m")
    assert (tmp_path / "m" / "diffusion_pytorch_model.safetensors").is_file()
    save_file({"x": x, "t": t, "tokens": tokens, "mask": mask.float()}, str(tmp_path / "in.safetensors"))
    script = [sys.executable, "-c", _FRESH, str(tmp_path / "m"), str(tmp_path / "in.safetensors")]
    subprocess.run([*script, str(tmp_path / "out.safetensors")], check=True, capture_output=True)
    torch.testing.assert_close(load_file(str(tmp_path / "out.safetensors"))["y"], expected, rtol=0, atol=0)
    with torch.no_grad():  # and through our loader, in this process
        again = expert_forward(load_expert(tmp_path / "m").eval(), x, t, tokens, mask)
    torch.testing.assert_close(again, expected, rtol=0, atol=0)


def test_load_expert_checks_integrity(tmp_path: Path):
    build_expert(TINY, 3, 32, SHAPE).save_pretrained(tmp_path)
    (tmp_path / TRAINING_INFO).write_text(json.dumps({"weights_sha256": weights_sha256(tmp_path)}))
    load_expert(tmp_path)
    weights = tmp_path / "diffusion_pytorch_model.safetensors"
    tensors = load_file(str(weights))
    name = sorted(tensors)[0]
    tensors[name] = tensors[name] + 1
    save_file(tensors, str(weights))
    with pytest.raises(ExpertLoadError, match="weights do not match"):
        load_expert(tmp_path)
    with pytest.raises(ExpertLoadError, match="no config.json"):
        load_expert(tmp_path / "missing")


def test_flops_formula_counts_the_models_weights():
    cfg = ExpertConfig()
    per_video, per_text, per_sample = matmul_parameters(cfg, 3, 384)
    actual = count_parameters(build_expert(cfg, 3, 384, (8, 32, 32)))
    assert 0.97 * actual <= per_video + per_text + per_sample <= actual  # the rest: biases and norms
    f = flops_per_step(cfg, 3, (8, 32, 32), 16, 384)
    s, d = 256, cfg.num_heads * cfg.head_dim
    expected = (
        3
        * cfg.batch_size
        * (2 * (per_video * s + per_text * 16 + per_sample) + 4 * cfg.num_layers * d * (s * s + s * 16))
    )
    assert f == pytest.approx(expected)
    double = ExpertConfig(batch_size=2 * cfg.batch_size)
    assert flops_per_step(double, 3, (8, 32, 32), 16, 384) == pytest.approx(2 * f)


def test_micro_batch_from_memory():
    gib = 2**30
    assert micro_batch_for_memory(10 * gib, 1 * gib, gib // 2, 64, headroom=1.0) == 18
    assert micro_batch_for_memory(10 * gib, 1 * gib, gib // 2, 8, headroom=1.0) == 8  # never above the batch
    assert micro_batch_for_memory(1 * gib, 2 * gib, gib, 8) == 1  # at least one sample

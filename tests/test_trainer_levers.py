"""GPU throughput levers (``expert.compile``, ``expert.activation_checkpointing``): they change how a model trains,
not what it computes, so on a tiny model on the CPU they give the plain path's losses and weights, save the same
plain state dict, resume across each other, and leave a model's identity (``ExpertSpec.spec_hash``) alone."""

import os
import warnings
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from diffusers import WanTransformer3DModel
from safetensors.torch import load_file
from tiny_clips import TINY_EXPERT, tiny_train_data

from data_schemas.train import TrainingLog
from lib.config import RUN_ONLY_FIELDS, ExpertConfig
from lib.models.factory import load_expert
from lib.models.levers import (
    COMPILE_MIN_CPU_STEPS,
    COMPILE_MIN_CPU_VIDEOS,
    compile_options,
    compiles,
    cpu_quota,
    forward_context,
    inference_bf16,
    limit_threads,
    sampling_compiles,
    use_compile_cache,
    uses_bf16,
)
from lib.train import checkpoint as ckpt
from lib.train.specs import ExpertSpec
from lib.train.trainer import TrainCallback, TrainData, batch_to_device, train

TINY = replace(TINY_EXPERT, steps=6, checkpoint_every=100, compile="never")


@pytest.fixture(scope="module")
def data() -> TrainData:
    return tiny_train_data(16)


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "diffusion_pytorch_model.safetensors"))


def _column(result, col) -> torch.Tensor:
    return torch.tensor(result.log[col].values)


def test_compile_auto_means_cuda_and_cpu_runs_long_enough_to_win_back_the_compile(monkeypatch):
    monkeypatch.setattr("shutil.which", lambda name: f"/usr/bin/{name}")  # compilers installed
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    short, long = COMPILE_MIN_CPU_STEPS - 1, COMPILE_MIN_CPU_STEPS
    assert [compiles(m, cpu, short) for m in ("auto", "always", "never")] == [False, True, False]
    assert [compiles(m, cpu, long) for m in ("auto", "always", "never")] == [True, True, False]
    assert [compiles(m, cuda, short) for m in ("auto", "always", "never")] == [True, True, False]


def test_compile_without_a_compiler_trains_uncompiled_on_auto_and_fails_fast_on_always(monkeypatch, caplog):
    cuda = torch.device("cuda", 0)
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.setattr("shutil.which", lambda name: None)
    assert compiles("auto", cuda) is False
    assert "no C compiler ($CC, gcc or clang) for Triton on this node; running without torch.compile" in caplog.text
    assert compiles("auto", torch.device("cpu"), COMPILE_MIN_CPU_STEPS) is False
    assert "no C++ compiler ($CXX, g++) on this node" in caplog.text
    with pytest.raises(RuntimeError, match=r"expert.compile=always: .* needs a C compiler .*expert.compile: never"):
        compiles("always", cuda)
    monkeypatch.setenv("CC", "/opt/cc")
    assert compiles("auto", cuda) is True


def test_bf16_auto_means_cuda_or_a_compiled_graph_on_an_amx_cpu(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    assert uses_bf16("auto", cuda, compiled=False) and not uses_bf16("fp32", cuda, compiled=True)
    assert uses_bf16("bf16", cpu, compiled=False)
    for amx in (True, False):
        monkeypatch.setattr("lib.models.levers.cpu_has_amx", lambda amx=amx: amx)
        assert uses_bf16("auto", cpu, compiled=True) is amx
        assert uses_bf16("auto", cpu, compiled=False) is False  # eager bf16 is slower than fp32 on the CPU
    with pytest.raises(ValueError, match="precision 'fp16' is not one of auto, fp32, bf16"):
        uses_bf16("fp16", cpu, compiled=True)


def test_sampling_compiles_long_cpu_jobs_and_runs_them_in_bf16_only_on_amx(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    monkeypatch.setattr("shutil.which", lambda name: f"/usr/bin/{name}")
    assert [sampling_compiles(cpu, n) for n in (COMPILE_MIN_CPU_VIDEOS - 1, COMPILE_MIN_CPU_VIDEOS)] == [False, True]
    assert sampling_compiles(cuda, 10**6) is False  # CUDA sampling stays eager (not measured)
    for amx in (True, False):
        monkeypatch.setattr("lib.models.levers.cpu_has_amx", lambda amx=amx: amx)
        assert inference_bf16(cpu, compiled=True) is amx and inference_bf16(cpu, compiled=False) is False
    assert inference_bf16(cuda, compiled=False) is True
    monkeypatch.setattr("shutil.which", lambda name: None)  # no C++ compiler: eager, whatever the job's length
    assert sampling_compiles(cpu, 10**6) is False


def test_cpu_graphs_take_the_cpp_wrapper_and_only_bf16_ones_the_decomposed_tanh():
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    assert compile_options(cpu, bf16=True) == {"cpp_wrapper": True, "cpp.use_decompose_tanh": True}
    assert compile_options(cpu, bf16=False) == {"cpp_wrapper": True}
    assert compile_options(cuda, bf16=True) == compile_options(cuda, bf16=False) == {}
    x = torch.linspace(-6, 6, 4097)
    gelu = torch.compile(lambda v: torch.nn.functional.gelu(v, approximate="tanh"), options=compile_options(cpu, True))
    # the decomposition's error is far under bf16's rounding (2^-8 relative), the precision its graphs run at
    torch.testing.assert_close(gelu(x), torch.nn.functional.gelu(x, approximate="tanh"), rtol=1e-5, atol=1e-6)
    # the C++ wrapper only calls the kernels: the same kernels' numbers to the last bit
    wrapped = torch.compile(lambda v: torch.nn.functional.gelu(v) * 2 + 1, options=compile_options(cpu, False))
    python = torch.compile(lambda v: torch.nn.functional.gelu(v) * 2 + 1)
    assert torch.equal(wrapped(x), python(x))


def test_cpu_bf16_forward_runs_autocast_with_the_math_attention_kernel():
    q = torch.randn(2, 2, 8, 16)
    with forward_context(torch.device("cpu"), bf16=True):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
        out = torch.nn.functional.scaled_dot_product_attention(q, q, q)
    assert out.dtype == torch.bfloat16
    assert torch.allclose(out.float(), torch.nn.functional.scaled_dot_product_attention(q, q, q), atol=3e-2)
    with forward_context(torch.device("cpu"), bf16=False):
        assert not torch.is_autocast_enabled("cpu")


def test_threads_are_capped_at_the_container_cpu_quota(tmp_path, monkeypatch):
    (tmp_path / "cpu.max").write_text("100000 100000\n")
    assert cpu_quota(tmp_path) == 1
    before = torch.get_num_threads()
    try:
        assert limit_threads(tmp_path) == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cpu_quota(tmp_path) is None
    assert cpu_quota(tmp_path / "missing") is None


def test_compile_cache_lands_under_a_local_output_dir_and_an_explicit_one_wins(tmp_path, monkeypatch):
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    use_compile_cache("s3://bucket/run")
    assert "TORCHINDUCTOR_CACHE_DIR" not in os.environ
    use_compile_cache(str(tmp_path / "run"))
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "run" / ".inductor-cache")
    use_compile_cache(str(tmp_path / "other"))
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "run" / ".inductor-cache")
    from torch._inductor.runtime.cache_dir_utils import cache_dir, default_cache_dir

    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR")
    assert cache_dir() == os.path.abspath(default_cache_dir())  # inductor writes its default back into the env
    use_compile_cache(str(tmp_path / "run"))
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "run" / ".inductor-cache")


def test_the_task_image_has_the_c_compiler_triton_needs():
    from tasks.image import APT_PACKAGES, IMAGE_SPEC

    assert "gcc" in APT_PACKAGES and IMAGE_SPEC.apt_packages == APT_PACKAGES
    dockerfile = (Path(__file__).resolve().parents[1] / "Dockerfile").read_text()
    assert f"apt-get install -y --no-install-recommends {' '.join(APT_PACKAGES)} &&" in dockerfile


def test_batch_goes_to_the_cpu_as_views_of_this_ranks_rows():
    x, t = torch.arange(12.0).view(6, 2), torch.arange(6.0)
    xs, ts = batch_to_device([x, t], slice(2, 5), torch.device("cpu"))
    assert torch.equal(xs, x[2:5]) and torch.equal(ts, t[2:5]) and xs.data_ptr() == x[2:5].data_ptr()


def test_run_only_fields_do_not_change_the_spec_hash_but_the_recipe_does():
    spec = ExpertSpec("expert-00", 0, seed=1, num_clips=10, data_hash="d", expert=ExpertConfig())
    run_only = {"micro_batch", "compile", "precision", "activation_checkpointing", "checkpoint_every"}
    assert run_only <= set(RUN_ONLY_FIELDS)
    for change in (
        {"micro_batch": 3},
        {"compile": "always"},
        {"compile": "never"},
        {"precision": "bf16"},
        {"activation_checkpointing": True},
        {"checkpoint_every": 7},
        {"log_every": 5},
    ):
        assert replace(spec, expert=replace(spec.expert, **change)).spec_hash() == spec.spec_hash(), change
    assert replace(spec, expert=replace(spec.expert, lr=1e-3)).spec_hash() != spec.spec_hash()
    assert replace(spec, data_hash="e").spec_hash() != spec.spec_hash()


def test_activation_checkpointing_gives_the_same_losses_and_weights(data: TrainData, tmp_path: Path):
    plain = train(data, TINY, tmp_path / "plain", seed=0, name="ac", callbacks=[])
    ac = train(data, replace(TINY, activation_checkpointing=True), tmp_path / "ac", seed=0, name="ac", callbacks=[])
    for col in (TrainingLog.loss, TrainingLog.grad_norm):  # recomputing the same ops in backward: same floats
        torch.testing.assert_close(_column(ac, col), _column(plain, col), rtol=0, atol=0)
    wa, wb = _weights(plain.model_dir), _weights(ac.model_dir)
    assert wa.keys() == wb.keys()
    for name in wa:
        torch.testing.assert_close(wb[name], wa[name], rtol=0, atol=0, msg=name)


def test_bf16_autocast_trains_close_to_fp32_and_keeps_fp32_weights(data: TrainData, tmp_path: Path):
    plain = train(data, TINY, tmp_path / "fp32", seed=0, name="p", callbacks=[])
    bf16 = train(data, replace(TINY, precision="bf16"), tmp_path / "bf16", seed=0, name="p", callbacks=[])
    losses, reference = _column(bf16, TrainingLog.loss), _column(plain, TrainingLog.loss)
    assert not torch.equal(losses, reference)  # the forward really ran in bf16
    torch.testing.assert_close(losses, reference, rtol=0.05, atol=0.0)  # 8 mantissa bits: per-mille changes
    weights = _weights(bf16.model_dir)
    assert {w.dtype for w in weights.values()} == {torch.float32}
    assert weights.keys() == _weights(plain.model_dir).keys()


@pytest.mark.slow
def test_compiled_blocks_train_like_plain_save_plain_keys_and_resume(data: TrainData, tmp_path: Path, monkeypatch):
    """One layer, four steps: inductor builds the block's forward and backward once (tens of seconds on a
    cold cache), the resumed run reuses them."""
    calls, compile_blocks = [], WanTransformer3DModel.compile_repeated_blocks

    def spy(model, *args, **kwargs):
        calls.append(kwargs)
        compile_blocks(model, *args, **kwargs)

    monkeypatch.setattr(WanTransformer3DModel, "compile_repeated_blocks", spy)
    cfg = replace(TINY, num_layers=1, steps=4, checkpoint_every=2)
    plain = train(data, cfg, tmp_path / "plain", seed=0, name="c", callbacks=[])
    assert calls == []  # compile="never"
    compiled = replace(cfg, compile="always", precision="fp32")  # auto would pick bf16 on an AMX CPU
    partial = train(data, compiled, tmp_path / "compiled", seed=0, name="c", callbacks=[], max_steps=2)
    groups, _ = ckpt.load_checkpoint(ckpt.complete_checkpoints(tmp_path / "compiled" / "checkpoints")[-1][1])
    assert groups["model"].keys() == groups["ema"].keys() == _weights(plain.model_dir).keys()  # no _orig_mod.
    resumed = train(data, compiled, tmp_path / "compiled", seed=0, name="c", callbacks=[])
    assert partial.steps == 2 and resumed.resumed_from == 2 and resumed.steps == cfg.steps
    assert calls == [{"dynamic": False, "options": {"cpp_wrapper": True}}] * 2  # fp32: no CPU bf16 options
    # inductor fuses and reorders float32 arithmetic: equal up to rounding (seen: <= 1 ulp in the gradient norm)
    for col in (TrainingLog.loss, TrainingLog.grad_norm):
        torch.testing.assert_close(_column(resumed, col), _column(plain, col), rtol=1e-5, atol=1e-6)
    ours = WanTransformer3DModel.from_pretrained(resumed.model_dir)
    reference = load_expert(plain.model_dir)
    assert ours.state_dict().keys() == reference.state_dict().keys()
    for name, value in reference.state_dict().items():
        torch.testing.assert_close(ours.state_dict()[name], value, rtol=1e-4, atol=1e-5, msg=name)


class _SyncsPerStep(TrainCallback):
    def __init__(self, caught: list) -> None:
        self.caught, self.counts, self.seen = caught, [], 0

    def on_step(self, row: dict[str, float]) -> None:
        self.counts.append(len(self.caught) - self.seen)
        self.seen = len(self.caught)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_levers_train_with_one_host_sync_per_step(data: TrainData, tmp_path: Path):
    cfg = replace(TINY, compile="always", activation_checkpointing=True, micro_batch=4, steps=5)
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            syncs = _SyncsPerStep(caught)
            result = train(data, cfg, tmp_path, seed=0, name="gpu", callbacks=[syncs])
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert result.model_dir is not None and result.log[TrainingLog.loss].notna().all()
    assert syncs.counts[1:] == [1] * (cfg.steps - 1), [str(w.message) for w in caught]  # step 1 compiles

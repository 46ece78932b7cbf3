"""The GPU throughput benchmark's pure parts (its runs need CUDA): the lever rows and the row arithmetic."""

import json

import pytest

from lib.config import ExpertConfig


@pytest.fixture(scope="module")
def bench(benchmark_script):
    return benchmark_script("gpu_expert_throughput")


def test_levers_are_added_one_by_one(bench):
    cfg = bench.size_config("large", steps=30)
    rows = bench.lever_configs(cfg)
    assert [label for label, _ in rows] == ["plain", "+compile", "+compile +act. ckpt, micro = batch"]
    settings = [(c.compile, c.activation_checkpointing, c.micro_batch) for _, c in rows]
    assert settings == [("never", False, 0), ("always", False, 0), ("always", True, cfg.batch_size)]
    assert all(c.num_layers == 24 and c.batch_size == 32 for _, c in rows)


def test_rows_take_the_median_after_warmup_and_compile_time_over_the_plain_row(bench):
    measure = {"flops": 2e14, "tokens": 1000, "measured": 8e14, "sheet": 1e15}
    plain = bench.throughput_row("plain", [1.5, 0.3, 0.2, 0.2, 0.4], 1, **measure)
    assert plain["ms_per_step"] == pytest.approx(250.0) and plain["tokens_per_s"] == pytest.approx(4000.0)
    assert plain["mfu_datasheet"] == pytest.approx(0.8) and plain["mfu_measured_matmul"] == pytest.approx(1.0)
    assert plain["first_step_excess_s"] == pytest.approx(1.25) and plain["compile_s"] is None
    compiled = bench.throughput_row("+compile", [31.35, 0.1, 0.1], 1, **measure, baseline_excess=1.25)
    assert compiled["compile_s"] == pytest.approx(30.0)
    no_sheet = bench.throughput_row("x", [1.0, 1.0], 1, **{**measure, "sheet": None})
    assert no_sheet["mfu_datasheet"] is None and "datasheet" not in bench.format_row(no_sheet)
    line = bench.format_row(compiled)
    assert "100.0 ms/step" in line and "10000 tokens/s" in line and "MFU 200.0% of datasheet" in line
    json.dumps([plain, compiled, no_sheet], allow_nan=False)  # the rows go to gpu_mfu.json as they are
    with pytest.raises(ValueError, match="none after --warmup 5"):
        bench.throughput_row("short", [1.0] * 5, 5, **measure)


def test_sizes_are_the_documented_models(bench):
    cfg = bench.size_config("medium", steps=10)
    assert isinstance(cfg, ExpertConfig) and (cfg.num_layers, cfg.num_heads * cfg.head_dim) == (12, 768)
    assert cfg.checkpoint_every == cfg.log_every == cfg.steps == 10

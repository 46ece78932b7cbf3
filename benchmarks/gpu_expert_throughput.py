"""Training throughput of one expert on a GPU: step time, tokens/s and model FLOP utilisation (MFU) in bf16.

Why: the experts are trained on whatever GPU each map element gets; users size runs from tokens/s and want to
know how much of the card the trainer uses. MFU = analytic training FLOPs per step (``lib.train.compute``,
the 6 x params x tokens + attention accounting used for compute matching) / step time / peak bf16 FLOP/s.
Two peaks are reported: the card's dense bf16 datasheet figure, and what an 8192^3 bf16 matmul reaches on the
machine right now (the practical ceiling).

Every row runs the same math on the same random latents/tokens. ``bare loop`` is the bare diffusers + PyTorch
loop of ``trainer_overhead.py`` moved to the GPU; the other rows are our ``train`` (checkpoints only at the end,
log table, NaN checks, micro-batch probe, EMA) with the throughput levers of ``expert.*`` added one by one:

- ``plain``: ``compile: never``, no activation checkpointing (micro-batch picked from free memory);
- ``+compile``: ``compile: always`` (each transformer block through torch.compile / inductor);
- ``+compile +act. ckpt, micro = batch``: also ``activation_checkpointing: true``, the whole batch as one
  micro-batch (what checkpointing buys when memory bounds the micro-batch).

Step times are medians after ``--warmup`` steps; they include the host-to-device copy of each batch, as in real
training. Compile time is reported separately: the first step's excess over the median, less the plain row's
(which holds the CUDA/cuBLAS warm-up); each row starts with empty dynamo and inductor/Triton caches (a fresh pod's
cold start) unless ``--warm-cache``. The rows also go to ``--json`` (default ``benchmarks/results/gpu_mfu.json``).

Usage (needs CUDA): ``python benchmarks/gpu_expert_throughput.py [--sizes medium large --steps 30]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from benchmarks.trainer_overhead import bare_loop
from lib.config import ExpertConfig
from lib.models.factory import build_expert, count_parameters, tokens_per_sample
from lib.train.compute import flops_per_step
from lib.train.trainer import TrainCallback, TrainData, train

# Dense bf16 tensor-core peaks from NVIDIA's datasheets (SXM parts), FLOP/s.
DATASHEET_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12}
# Latents of a 16-channel video VAE (Wan-style: 4x temporal, 8x spatial compression of 29 x 256 x 256 frames)
LATENT = (16, 8, 32, 32)
SIZES = {  # name: (layers, heads, head_dim, ffn, batch)
    "medium": (12, 12, 64, 3072, 16),
    "large": (24, 16, 64, 4096, 32),
}
BARE = "bare loop"
PLAIN = "plain"
JSON_OUT = Path(__file__).resolve().parent / "results" / "gpu_mfu.json"


def lever_configs(cfg: ExpertConfig) -> list[tuple[str, ExpertConfig]]:
    """The trainer rows: ``cfg`` plain, then the levers added one by one (labels as printed)."""
    plain = replace(cfg, compile="never", activation_checkpointing=False, micro_batch=0)
    compiled = replace(plain, compile="always")
    whole = replace(compiled, activation_checkpointing=True, micro_batch=cfg.batch_size)
    return [(PLAIN, plain), ("+compile", compiled), ("+compile +act. ckpt, micro = batch", whole)]


def throughput_row(
    label: str,
    seconds: list[float],
    warmup: int,
    flops: float,
    tokens: int,
    measured: float,
    sheet: float | None,
    baseline_excess: float | None = None,
    peak_mem_gib: float | None = None,
) -> dict[str, Any]:
    """One row of the table from one run's step times (seconds, first step first).

    The median leaves out the first ``warmup`` steps; ``first_step_excess_s`` is the first step minus that median.
    For a compiled row, ``baseline_excess`` is the plain row's excess (CUDA and allocator warm-up) and ``compile_s``
    the row's excess less it; None (no compile) leaves ``compile_s`` None."""
    if len(seconds) <= warmup:
        raise ValueError(f"{label}: {len(seconds)} steps leave none after --warmup {warmup}")
    median = statistics.median(seconds[warmup:])
    achieved = flops / median
    excess = seconds[0] - median
    return {
        "label": label,
        "ms_per_step": median * 1e3,
        "tokens_per_s": tokens / median,
        "tflops": achieved / 1e12,
        "mfu_datasheet": achieved / sheet if sheet else None,
        "mfu_measured_matmul": achieved / measured,
        "first_step_s": seconds[0],
        "first_step_excess_s": excess,
        "compile_s": None if baseline_excess is None else max(0.0, excess - baseline_excess),
        "peak_mem_gib": peak_mem_gib,
    }


def format_row(row: dict[str, Any]) -> str:
    """The printed line of a ``throughput_row``."""
    mfu = f"MFU {row['mfu_datasheet']:.1%} of datasheet, " if row["mfu_datasheet"] is not None else ""
    mem = f", peak {row['peak_mem_gib']:.1f} GiB" if row["peak_mem_gib"] is not None else ""
    return (
        f"  {row['label']:36s} {row['ms_per_step']:7.1f} ms/step {row['tokens_per_s']:9.0f} tokens/s "
        f"{row['tflops']:6.1f} TFLOP/s  {mfu}{row['mfu_measured_matmul']:.1%} of measured matmul{mem}"
    )


class StepTimes(TrainCallback):
    def __init__(self) -> None:
        self.seconds: list[float] = []

    def on_step(self, row: dict[str, float]) -> None:
        self.seconds.append(row["seconds"])


def matmul_peak(device: torch.device, n: int = 8192, repeats: int = 10) -> float:
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize(device)
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    torch.cuda.synchronize(device)
    return 2 * n**3 * repeats / (time.perf_counter() - started)


def datasheet_peak(name: str) -> float | None:
    return next((peak for key, peak in DATASHEET_BF16.items() if key in name), None)


def random_data(num_clips: int, text_len: int, text_dim: int) -> TrainData:
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(num_clips, *LATENT, generator=g)
    tokens = torch.randn(num_clips, text_len, text_dim, generator=g)
    mask = torch.ones(num_clips, text_len, dtype=torch.bool)
    return TrainData([f"clip-{i:04d}" for i in range(num_clips)], latents, tokens, mask)


def cold_compile_caches(warm: bool) -> contextlib.AbstractContextManager:
    """Empty dynamo and inductor/Triton caches for one row (a fresh pod's cold start), unless ``warm``."""
    torch._dynamo.reset()
    if warm:
        return contextlib.nullcontext()
    from torch._inductor import utils as inductor_utils

    fresh = getattr(inductor_utils, "fresh_cache", None) or inductor_utils.fresh_inductor_cache  # torch < 2.7
    return fresh()


def size_config(size: str, steps: int) -> ExpertConfig:
    """The expert config of a named size (``SIZES``), checkpointing and logging only at the end."""
    layers, heads, head_dim, ffn, batch = SIZES[size]
    return replace(
        ExpertConfig(),
        num_layers=layers,
        num_heads=heads,
        head_dim=head_dim,
        ffn_dim=ffn,
        patch_size=[1, 2, 2],
        batch_size=batch,
        steps=steps,
        checkpoint_every=steps,
        log_every=steps,
        warmup_steps=1,
    )


def measure_size(data: TrainData, cfg: ExpertConfig, name: str, device: torch.device, args, measure: dict) -> list:
    """The bare loop, then one trainer run per lever row; prints each row as it finishes."""
    with tempfile.TemporaryDirectory() as tmp:
        bare: list[float] = []
        bare_loop(data, cfg, Path(tmp) / "bare", device=device, on_step=bare.append)
        rows = [throughput_row(BARE, bare, args.warmup, **measure)]
        print(format_row(rows[0]), flush=True)
        for label, lever_cfg in lever_configs(cfg):
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
            ours = StepTimes()
            with cold_compile_caches(args.warm_cache):
                train(data, lever_cfg, Path(tmp) / f"row{len(rows)}", seed=0, name=name, callbacks=[ours])
            baseline = rows[1]["first_step_excess_s"] if lever_cfg.compile == "always" else None
            peak = torch.cuda.max_memory_allocated(device) / 2**30
            row = throughput_row(
                label, ours.seconds, args.warmup, **measure, baseline_excess=baseline, peak_mem_gib=peak
            )
            rows.append(row)
            print(format_row(row), flush=True)
    plain, bare_ms, best_ms = rows[1]["ms_per_step"], rows[0]["ms_per_step"], rows[-1]["ms_per_step"]
    print(f"  ratio plain / bare: {plain / bare_ms:.3f}; speed-up of all levers over plain: {plain / best_ms:.2f}x")
    for row in (r for r in rows if r["compile_s"] is not None):
        print(
            f"  compile time ({row['label']}): {row['compile_s']:.1f} s (first step {row['first_step_s']:.1f} s, "
            "less the median step and the plain row's first-step excess)"
        )
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5, help="steps left out of the median")
    parser.add_argument("--text-len", type=int, default=64)
    parser.add_argument("--text-dim", type=int, default=768)
    parser.add_argument("--warm-cache", action="store_true", help="keep inductor/Triton's on-disk compile caches")
    parser.add_argument("--json", type=Path, default=JSON_OUT, help="where the rows are written")
    args = parser.parse_args(argv)
    logging.basicConfig(format="  %(name)s: %(message)s")
    logging.getLogger("lib.train").setLevel(logging.INFO)  # the micro-batch the trainer picks from free memory
    if not torch.cuda.is_available():
        parser.error("needs a CUDA device")
    device = torch.device("cuda")
    name = torch.cuda.get_device_name(device)
    measured = matmul_peak(device)
    sheet = datasheet_peak(name)
    print(f"{name}, torch {torch.__version__}; bf16 matmul 8192^3: {measured / 1e12:.0f} TFLOP/s; "
          f"datasheet dense bf16: {sheet / 1e12 if sheet else float('nan'):.0f} TFLOP/s")  # fmt: skip
    report: dict[str, Any] = {
        "device": name,
        "torch": torch.__version__,
        "matmul_tflops": measured / 1e12,
        "datasheet_tflops": sheet / 1e12 if sheet else None,
        "steps": args.steps,
        "warmup": args.warmup,
        "cold_compile_cache": not args.warm_cache,
        "sizes": {},
    }
    data = random_data(4 * max(s[-1] for s in SIZES.values()), args.text_len, args.text_dim)
    for size in args.sizes:
        cfg = size_config(size, args.steps)
        params = count_parameters(build_expert(cfg, data.in_channels, data.text_dim, data.sample_shape))
        tokens = tokens_per_sample(cfg, data.sample_shape) * cfg.batch_size
        flops = flops_per_step(cfg, data.in_channels, data.sample_shape, args.text_len, args.text_dim)
        d = cfg.num_heads * cfg.head_dim
        print(f"\n{size}: {params / 1e6:.0f}M params, {cfg.num_layers} layers, d={d}, batch {cfg.batch_size}, "
              f"{tokens} video tokens/step, {flops / 1e12:.1f} TFLOP/step")  # fmt: skip
        measure = {"flops": flops, "tokens": tokens, "measured": measured, "sheet": sheet}
        rows = measure_size(data, cfg, size, device, args, measure)
        report["sizes"][size] = {
            "params": params,
            "layers": cfg.num_layers,
            "d": d,
            "batch": cfg.batch_size,
            "tokens_per_step": tokens,
            "tflop_per_step": flops / 1e12,
            "rows": rows,
        }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1) + "\n")
    print(f"\nrows written to {args.json}")


if __name__ == "__main__":
    main()

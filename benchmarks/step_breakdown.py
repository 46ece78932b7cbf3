"""Where one compiled bf16 expert training step spends its time on the CPU, and what SDPA's softmax costs in it.

Why: ``cpu_throughput.py`` says how fast a step is; this says why it is not faster. A step of the benchmark network
(configs/bench.yaml: 1.3M parameters, 64 latent tokens, batch 8, one thread) runs the trainer as it trains
(``lib.train.trainer.train``: compiled blocks, bf16 autocast, fused AdamW, multi-tensor clip and EMA) under the torch
profiler, from the step after warm-up (the compile) to the last, with inductor's kernels profiled one by one; each
op's self time goes to one bucket (``bucket``). Kernel names are inductor's, after the ops it fused into them, so a
bucket named for an op holds every kernel that op was fused into.

The second table times the attention's softmax at the network's score shapes (self-attention: 64 keys,
cross-attention: ``encode.max_tokens`` caption keys) in the form SDPA's math kernel uses (``_safe_softmax``; the
trainer runs that kernel on a CPU in bf16, ``lib.models.levers.forward_context``) and as a plain softmax: what an
attention written without SDPA would save in the forward pass.

Usage: ``python benchmarks/step_breakdown.py [--steps 30 --warmup 5 --json benchmarks/results/step_breakdown.json]``.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

JSON_OUT = ROOT / "benchmarks" / "results" / "step_breakdown.json"
OPTIMIZER_OPS = {"aten::_fused_adamw_", "Optimizer.step#AdamW.step", "aten::lerp_", "aten::_foreach_lerp_",
                 "aten::linalg_vector_norm", "aten::_foreach_norm", "aten::mul_", "aten::_foreach_mul_"}  # fmt: skip


def bucket(name: str) -> str:
    """The part of the step an op (a profiler event's name) belongs to."""
    if name.startswith("aoti_torch_cpu_"):  # inductor's C++ wrapper calling an ATen kernel
        name = "aten::" + name.removeprefix("aoti_torch_cpu_").removesuffix("_out")
    if name in ("aten::mm", "aten::addmm"):
        return "linear-layer matmuls"
    if name in ("aten::bmm", "aten::baddbmm"):
        return "attention matmuls"
    if name in OPTIMIZER_OPS:
        return "optimizer, EMA, clip"
    if "cpp_fused" in name:
        if "softmax" in name:
            return "fused kernels with softmax"
        if "gelu" in name:
            return "fused kernels with GELU"
        return "other fused kernels (norms, RoPE, modulation, casts)"
    if "convolution" in name:
        return "patch embedding (conv)"
    if name == "aten::copy_":
        return "copies outside kernels"
    return "framework (Python wrappers, autograd, dynamo guards, allocation)"


def profile_step(steps: int, warmup: int, text_len: int) -> dict[str, Any]:
    """The step's ms (unprofiled) and each bucket's ms per step and share (profiled; the profiler slows the step)."""
    import torch._inductor.config as inductor_config
    from torch.profiler import ProfilerActivity, profile

    from benchmarks.cpu_throughput import expert_step
    from lib.train.trainer import TrainCallback

    inductor_config.cpp.enable_kernel_profile = True
    plain = expert_step(8, "always", "bf16", steps, warmup, text_len)
    profiler = profile(activities=[ProfilerActivity.CPU])

    class AfterWarmup(TrainCallback):
        def on_step(self, row: dict[str, float]) -> None:
            if row["step"] == warmup:
                profiler.start()

        def on_end(self, result: Any) -> None:
            profiler.stop()

    expert_step(8, "always", "bf16", warmup + steps, warmup, text_len, callbacks=[AfterWarmup()])
    totals: collections.Counter[str] = collections.Counter()
    for event in profiler.key_averages():
        totals[bucket(event.key)] += event.self_cpu_time_total  # microseconds
    everything = sum(totals.values())
    buckets = {name: {"ms_per_step": us / 1e3 / steps, "share": us / everything} for name, us in totals.most_common()}
    return {"ms_per_step": plain["ms_per_step"], "profiled_ms_per_step": everything / 1e3 / steps, "buckets": buckets}


def softmax_forms(text_len: int, repeats: int = 200) -> list[dict[str, Any]]:
    """Median µs of the attention's softmax over its scores (fp32, as the math kernel upcasts them), compiled, in the
    two forms: ``_safe_softmax``, which SDPA's math kernel calls (it also zeroes rows that are all -inf, i.e. fully
    masked, which this network's unmasked attention never has), and plain ``softmax``."""
    import torch

    from benchmarks.cpu_throughput import BENCH_NETWORK

    def safe(scores):
        return torch.ops.aten._safe_softmax(scores, -1)

    def plain(scores):
        return scores.softmax(-1)

    rows = []
    for keys, what in ((64, "self-attention"), (text_len, "cross-attention")):
        scores = torch.randn(8, BENCH_NETWORK["num_heads"], 64, keys, generator=torch.Generator().manual_seed(0))
        for name, fn in (("_safe_softmax", safe), ("softmax", plain)):
            compiled = torch.compile(fn, dynamic=False)
            for _ in range(10):
                compiled(scores)
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                compiled(scores)
                times.append(time.perf_counter() - start)
            rows.append({"attention": what, "keys": keys, "form": name, "us": 1e6 * statistics.median(times)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=30, help="profiled steps (after --warmup)")
    parser.add_argument("--warmup", type=int, default=5, help="steps before the profiler (the compile)")
    parser.add_argument("--json", type=Path, default=JSON_OUT)
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.path.insert(0, str(ROOT))
    import torch

    from lib.config import EncodeConfig
    from lib.io import atomic_write

    torch.set_num_threads(1)
    text_len = EncodeConfig().max_tokens
    with tempfile.TemporaryDirectory() as cache:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache
        step = profile_step(args.steps, args.warmup, text_len)
        softmax = softmax_forms(text_len)
    print(f"compiled bf16 step, batch 8, one thread: {step['ms_per_step']:.1f} ms "
          f"({step['profiled_ms_per_step']:.1f} ms under the profiler)")  # fmt: skip
    for name, row in step["buckets"].items():
        print(f"  {name:66s} {row['ms_per_step']:6.2f} ms  {100 * row['share']:5.1f} %")
    print("the attention's softmax forward, compiled (a step runs 4 blocks x self + cross):")
    for row in softmax:
        print(f"  {row['attention']:16s} {row['keys']:3d} keys  {row['form']:14s} {row['us']:6.0f} µs")
    report = {"threads": 1, "batch": 8, "steps": args.steps, "warmup": args.warmup, "step": step, "softmax": softmax}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(args.json, lambda tmp: tmp.write_text(json.dumps(report, indent=1) + "\n"))
    print(f"written to {args.json}")


if __name__ == "__main__":
    main()

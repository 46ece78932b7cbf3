"""CPU throughput of every model the pipeline trains or samples with, per lever, against the matmul peak of the run.

Why: every claim this project makes is bought with CPU-minutes on two cores. This prints, side by side in one
run, what each lever of ``lib.models.levers`` buys and how far each workload is from what the hardware does:

- ``peak``: a 1024^3 matrix multiply in fp32 and bf16 (one thread), the ceilings the rows are a fraction of; and
  ``shape peak``: the same at the network's own linear-layer shapes (``shape_peak``), the ceiling of this network;
- ``expert``: one optimizer step of ``lib.train.trainer.train`` on the benchmark network (configs/bench.yaml:
  1.3M parameters, 4x8x8x8 latents, 64 tokens, ``encode.max_tokens`` caption tokens) at batch 8 (an expert) and 24
  (the monolith), for each lever: eager fp32, compiled fp32, eager bf16, compiled bf16. ``before`` is the same step
  with the trainer of another checkout (``--baseline-tree``, e.g. a ``git worktree`` of the previous commit);
- ``router`` and ``codec``: a training step of ``lib.train.router.train_router`` and ``lib.encode.learned.train_codec``
  (configs/tiny.yaml's codec), as they run;
- ``sampling``: videos/s of ``lib.sample.ddm.sample_ddm`` with three experts (top-2 routing, 20 Euler steps, CFG 4,
  32 prompts), the experts called through ``DDMPipeline.handle`` for each lever (compiled: their blocks compiled with
  dynamic shapes, as ``DDMPipeline.compile_for`` does for a long job), with the relative L2 distance of each lever's
  samples from eager fp32's on the same noise (untrained experts: an upper bound; trained ones move less).

- ``paired``: the CPU default (compiled bf16) against ``before`` (the expert step, with ``--baseline-tree``) and
  against eager fp32 (sampling), side by side, two single-thread processes at once, ``--pairs`` times: each pair's
  speed-up and their median, the figures to quote, as this host's speed drifts within minutes by more than some
  levers move (the rows above run one after another).

Every row runs in its own process with one thread (the benchmarks run two single-thread processes side by side),
its own empty inductor cache, and reports the median step time after warm-up steps (which hold the compile).
GFLOP/s count only the analytic matmul FLOPs of ``lib.train.compute`` (expert rows) or none (router, codec).

Usage: ``git worktree add /tmp/base <commit>`` then
``python benchmarks/cpu_throughput.py [--baseline-tree /tmp/base] [--pairs 5]
[--json benchmarks/results/cpu_throughput.json]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
JSON_OUT = ROOT / "benchmarks" / "results" / "cpu_throughput.json"
LATENT = (4, 8, 8, 8)  # the learned codec's latents of 8x32x32 clips
# configs/bench.yaml's network and recipe (spelt out: a baseline checkout may not read today's config files)
BENCH_NETWORK = {"num_layers": 4, "num_heads": 4, "head_dim": 32, "ffn_dim": 512, "patch_size": [2, 2, 2],
                 "lr": 0.002, "warmup_steps": 50, "lr_schedule": "cosine"}  # fmt: skip
LEVERS = {  # name: (expert.compile, expert.precision)
    "eager fp32": ("never", "fp32"),
    "compiled fp32": ("always", "fp32"),
    "eager bf16": ("never", "bf16"),
    "compiled bf16": ("always", "bf16"),
}


def peak(dtype_name: str) -> dict[str, Any]:
    import torch

    dtype = getattr(torch, dtype_name)
    a, b = torch.randn(1024, 1024, dtype=dtype), torch.randn(1024, 1024, dtype=dtype)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(20):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return {"gflops": 2 * 1024**3 / statistics.median(times) / 1e9}


def shape_peak(dtype_name: str, batch: int, text_len: int) -> dict[str, Any]:
    """The matmul rate at the benchmark network's own shapes: the linear layers of one transformer block at ``batch``
    (self-attention q/k/v/o and cross-attention q/o on 64 latent tokens, cross-attention k/v on the caption tokens,
    the two feed-forward layers), each timed alone, FLOP-weighted. Small matrices cannot reach the 1024^3 peak; this
    is the ceiling a step of this network could reach if it did nothing but its matmuls."""
    import torch

    dtype = getattr(torch, dtype_name)
    d, ffn = BENCH_NETWORK["num_heads"] * BENCH_NETWORK["head_dim"], BENCH_NETWORK["ffn_dim"]
    rows, text_rows = batch * 64, batch * text_len
    shapes = [(rows, d, d)] * 6 + [(text_rows, d, d)] * 2 + [(rows, d, ffn), (rows, ffn, d)]  # (m, in, out)
    flops = seconds = 0.0
    for m, k, n in shapes:
        x, w = torch.randn(m, k, dtype=dtype), torch.randn(n, k, dtype=dtype)
        for _ in range(5):
            torch.nn.functional.linear(x, w)
        times = []
        for _ in range(50):
            start = time.perf_counter()
            torch.nn.functional.linear(x, w)
            times.append(time.perf_counter() - start)
        flops += 2 * m * k * n
        seconds += statistics.median(times)
    return {"gflops": flops / seconds / 1e9}


def expert_step(
    batch: int, compile_mode: str, precision: str, steps: int, warmup: int, text_len: int, callbacks: list | None = None
) -> dict[str, Any]:
    """One lever's step time through the trainer of whichever checkout is first on sys.path (``callbacks``: the
    trainer's ``TrainCallback`` hooks, e.g. a profiler over the steps after warm-up)."""
    from dataclasses import fields, replace

    import torch

    from lib.config import ExpertConfig
    from lib.train.compute import flops_per_step
    from lib.train.trainer import TrainData, train

    known = {f.name for f in fields(ExpertConfig)}
    changes = {"steps": steps, "batch_size": batch, "checkpoint_every": 10**6, "compile": compile_mode}
    if "precision" in known:
        changes["precision"] = precision
    elif precision != "fp32":
        raise SystemExit("this checkout has no expert.precision")
    cfg = replace(ExpertConfig(**BENCH_NETWORK), **changes)
    gen = torch.Generator().manual_seed(0)
    n = 64
    latents, tokens = torch.randn(n, *LATENT, generator=gen), torch.randn(n, text_len, 384, generator=gen)
    data = TrainData([f"c{i}" for i in range(n)], latents, tokens, torch.ones(n, text_len, dtype=torch.bool))
    with tempfile.TemporaryDirectory() as out:
        result = train(data, cfg, out, seed=0, name="bench", callbacks=callbacks or [])
    seconds = result.log["seconds"].tolist()
    flops = flops_per_step(cfg, LATENT[0], LATENT[1:], text_len, 384)
    median = statistics.median(seconds[warmup:])
    return {"ms_per_step": 1e3 * median, "first_steps_s": sum(seconds[:warmup]), "gflops": flops / median / 1e9,
            "final_loss": float(result.log["loss"].tail(10).mean())}  # fmt: skip


def router_step(steps: int, warmup: int) -> dict[str, Any]:
    from dataclasses import replace

    import torch

    from lib.config import load_config
    from lib.train.router import train_router

    cfg = load_config(ROOT / "configs" / "tiny.yaml").router
    n, gen = 256, torch.Generator().manual_seed(0)
    latents, pooled = torch.randn(n, *LATENT, generator=gen), torch.randn(n, 384, generator=gen)
    labels = torch.randint(3, (n,), generator=gen)
    times = []
    with tempfile.TemporaryDirectory() as out:
        for count in (warmup, warmup + steps):
            start = time.perf_counter()
            train_router(latents, pooled, labels, replace(cfg, steps=count), 3, 0, out)
            times.append(time.perf_counter() - start)
    return {"ms_per_step": 1e3 * (times[1] - times[0]) / steps}


def codec_step(steps: int, warmup: int) -> dict[str, Any]:
    from dataclasses import replace

    import numpy as np

    from lib.config import load_config
    from lib.encode.learned import train_codec

    cfg = load_config(ROOT / "configs" / "tiny.yaml").codec
    videos = np.random.default_rng(0).integers(0, 256, (32, 8, 32, 32, 3), dtype=np.uint8)
    reports = []
    for count in (warmup, warmup + steps):
        with tempfile.TemporaryDirectory() as out:
            reports.append(train_codec(videos, videos[:4], replace(cfg, steps=count), 0, Path(out) / "codec")[1])
    return {"ms_per_step": 1e3 * (reports[1].seconds - reports[0].seconds) / steps}


def sampling(lever: str, prompts: int, num_steps: int) -> dict[str, Any]:
    """Videos/s of one sampling lever ("eager fp32", "compiled fp32", "compiled bf16", "eager bf16"); the first call
    (the compile) is timed apart, the rate is the best of the two calls after it."""
    import torch

    import lib.sample.pipeline as pipeline_module
    from lib.config import load_config
    from lib.models.factory import build_expert
    from lib.models.levers import compile_options
    from lib.models.router import RouterModel
    from lib.sample.ddm import sample_ddm

    cfg = load_config(ROOT / "configs" / "bench.yaml")
    bf16 = "bf16" in lever
    pipeline_module.inference_bf16 = lambda device, compiled=False: bf16  # the lever under test, whatever this CPU is
    text_len = cfg.encode.max_tokens
    experts = {k: build_expert(cfg.expert, LATENT[0], 384, LATENT[1:], seed=k) for k in range(3)}
    torch.manual_seed(0)  # the router initialises from the global generator: the same router for every lever
    router = RouterModel(in_channels=LATENT[0], sample_shape=list(LATENT[1:]), patch_size=list(cfg.router.patch_size),
                         text_dim=384, hidden_dim=cfg.router.hidden_dim, num_layers=cfg.router.num_layers,
                         num_heads=cfg.router.num_heads, num_clusters=3)  # fmt: skip
    pipe = pipeline_module.DDMPipeline(experts, dict.fromkeys(experts, "flow"), router, None, None, LATENT, "bench")
    if lever.startswith("compiled"):  # what compile_for does for a long job, whatever its length here
        options = compile_options(torch.device("cpu"), bf16)
        for model in experts.values():
            model.compile_repeated_blocks(dynamic=True, options=options)
        pipe.compiled = True
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randn(prompts, text_len, 384, generator=gen)
    cond = (tokens, torch.ones(prompts, text_len, dtype=torch.bool))
    uncond = (torch.zeros_like(tokens), torch.zeros(prompts, text_len, dtype=torch.bool))
    noise, pooled = torch.randn(prompts, *LATENT, generator=gen), torch.randn(prompts, 384, generator=gen)
    handles = {k: pipe.handle(k) for k in experts}
    times, outs = [], []
    for _ in range(3):
        start = time.perf_counter()
        with torch.no_grad():
            outs.append(sample_ddm(handles, pipe.router, noise, cond, uncond, pooled, "topk", 2, num_steps, 4.0).x0)
        times.append(time.perf_counter() - start)
    return {"videos_per_s": prompts / min(times[1:]), "first_call_s": times[0], "x0": outs[-1]}


def child(args: argparse.Namespace) -> None:
    """One measurement in this process (one thread): prints its JSON row."""
    import torch

    torch.set_num_threads(1)
    kind = args.one
    if kind == "peak":
        row = peak(args.dtype)
    elif kind == "shape-peak":
        row = shape_peak(args.dtype, args.batch, args.text_len)
    elif kind == "expert":
        row = expert_step(args.batch, *LEVERS[args.lever], args.steps, args.warmup, args.text_len)
    elif kind == "router":
        row = router_step(args.steps * 5, args.warmup)
    elif kind == "codec":
        row = codec_step(args.steps, args.warmup)
    else:
        out = sampling(args.lever, 32, 20)
        x0 = out.pop("x0")
        if args.lever != "eager fp32":  # how far the lever's samples land from eager fp32's on the same noise
            reference = sampling("eager fp32", 32, 20)["x0"]
            out["rel_diff_vs_fp32"] = float((x0 - reference).norm() / reference.norm())
        row = out
    print("ROW " + json.dumps(row), flush=True)


def start_child(extra: list[str], tree: Path, cache: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1", "TORCHINDUCTOR_CACHE_DIR": cache}
    return subprocess.Popen([sys.executable, __file__, *extra], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=tree)  # fmt: skip


def child_row(process: subprocess.Popen, extra: list[str]) -> dict[str, Any]:
    stdout, stderr = process.communicate()
    rows = [line[4:] for line in stdout.splitlines() if line.startswith("ROW ")]
    if process.returncode or not rows:
        raise RuntimeError(f"{extra} failed:\n{stderr[-3000:]}")
    return json.loads(rows[-1])


def run_child(extra: list[str], tree: Path = ROOT) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as cache:  # a cold compile, as a fresh run pays it
        return child_row(start_child(extra, tree, cache), extra)


def paired(workload: str, before: tuple[list[str], Path], now: tuple[list[str], Path], pairs: int) -> dict[str, Any]:
    """``before`` and ``now`` (each: a child's arguments and its checkout) side by side, two single-thread processes at
    once, ``pairs`` times: this host's speed drifts by a quarter within minutes, which one row after another cannot
    tell from a lever, while the two processes of a pair share it. A first pair fills inductor's cache and is left
    out. The speed-up is before's ms per step over now's, or now's videos/s over before's."""
    sides = {"before": before, "now": now}
    times: dict[str, list[float]] = {side: [] for side in sides}
    with tempfile.TemporaryDirectory() as cache:
        for _ in range(pairs + 1):
            processes = {side: start_child(*args_and_tree, cache) for side, args_and_tree in sides.items()}
            for side, process in processes.items():
                row = child_row(process, sides[side][0])
                times[side].append(row["ms_per_step"] if "ms_per_step" in row else 1 / row["videos_per_s"])
    speedups = [b / n for b, n in zip(times["before"][1:], times["now"][1:], strict=True)]
    return {"workload": workload, "pairs": pairs, "speedups": speedups, "median_speedup": statistics.median(speedups)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--one", choices=["peak", "shape-peak", "expert", "router", "codec", "sampling"],
                        help=argparse.SUPPRESS)  # fmt: skip
    parser.add_argument("--dtype", default="float32", help=argparse.SUPPRESS)
    parser.add_argument("--lever", default="eager fp32", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=8, help=argparse.SUPPRESS)
    parser.add_argument("--text-len", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=30, help="timed steps per row (after --warmup)")
    parser.add_argument("--warmup", type=int, default=5, help="steps left out of the median (they hold the compile)")
    parser.add_argument("--baseline-tree", type=Path, help="another checkout whose trainer gives the `before` rows")
    parser.add_argument("--pairs", type=int, default=5, help="side-by-side pairs of `before` and compiled bf16")
    parser.add_argument("--json", type=Path, default=JSON_OUT)
    args = parser.parse_args()
    if args.one:
        return child(args)

    sys.path.insert(0, str(ROOT))  # the parent reads today's config; each child imports its own tree's lib
    from lib.config import EncodeConfig
    from lib.io import atomic_write

    text_len = EncodeConfig().max_tokens  # today's caption length on every row, the baseline's included
    common = ["--steps", str(args.steps), "--warmup", str(args.warmup), "--text-len", str(text_len)]
    peaks = {d: run_child(["--one", "peak", "--dtype", d])["gflops"] for d in ("float32", "bfloat16")}
    print(f"matmul peak, one thread: fp32 {peaks['float32']:.0f} GFLOP/s, bf16 {peaks['bfloat16']:.0f} GFLOP/s")
    shape_peaks = {f"{d}_b{b}": run_child(["--one", "shape-peak", "--dtype", d, "--batch", str(b), *common])["gflops"]
                   for d in ("float32", "bfloat16") for b in (8, 24)}  # fmt: skip
    print("at the network's own matmul shapes: " + ", ".join(f"{k} {v:.0f}" for k, v in shape_peaks.items()))
    rows: list[dict[str, Any]] = []

    def add(workload: str, lever: str, row: dict[str, Any], bf16: bool = False) -> None:
        row = {"workload": workload, "lever": lever, **row}
        if "gflops" in row:
            dtype = "bfloat16" if bf16 else "float32"
            row["fraction_of_peak"] = row["gflops"] / peaks[dtype]
            row["fraction_of_shape_peak"] = row["gflops"] / shape_peaks[f"{dtype}_{workload.split('_')[-1]}"]
        rows.append(row)
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}), flush=True)

    for batch in (8, 24):
        if args.baseline_tree:
            before = run_child(["--one", "expert", "--batch", str(batch), *common], tree=args.baseline_tree)
            add(f"expert_b{batch}", "before", before)
        for lever in LEVERS:
            row = run_child(["--one", "expert", "--batch", str(batch), "--lever", lever, *common])
            add(f"expert_b{batch}", lever, row, bf16="bf16" in lever)
    pairs = []
    if args.baseline_tree:
        for batch in (8, 24):
            expert = ["--one", "expert", "--batch", str(batch), *common]
            pairs.append(paired(f"expert_b{batch}", (expert, args.baseline_tree),
                                ([*expert, "--lever", "compiled bf16"], ROOT), args.pairs))  # fmt: skip
    add("router", "eager fp32", run_child(["--one", "router", *common]))
    add("codec", "eager fp32", run_child(["--one", "codec", *common]))
    for lever in LEVERS:
        add("sampling", lever, run_child(["--one", "sampling", "--lever", lever]))

    if args.pairs:
        sampling_args = ["--one", "sampling", "--lever"]
        pairs.append(paired("sampling", ([*sampling_args, "eager fp32"], ROOT),
                            ([*sampling_args, "compiled bf16"], ROOT), args.pairs))  # fmt: skip
    for workload in sorted({r["workload"] for r in rows}):
        group = [r for r in rows if r["workload"] == workload]
        base = next((r for r in group if r["lever"] == "before"), group[0])
        for r in group:
            if "ms_per_step" in r:
                r["speedup_vs_eager"] = base["ms_per_step"] / r["ms_per_step"]
            else:
                r["speedup_vs_eager"] = r["videos_per_s"] / base["videos_per_s"]
    print(f"\n{'workload':10s} {'lever':14s} {'ms/step':>8s} {'GFLOP/s':>8s} {'of peak':>8s} {'of shape':>8s} "
          f"{'speed-up':>8s}")  # fmt: skip
    for r in rows:
        ms = f"{r['ms_per_step']:.1f}" if "ms_per_step" in r else f"{r['videos_per_s']:.2f}/s"
        gf = f"{r['gflops']:.0f}" if "gflops" in r else "-"
        frac = f"{r['fraction_of_peak']:.2f}" if "fraction_of_peak" in r else "-"
        shape = f"{r['fraction_of_shape_peak']:.2f}" if "fraction_of_shape_peak" in r else "-"
        print(f"{r['workload']:10s} {r['lever']:14s} {ms:>8s} {gf:>8s} {frac:>8s} {shape:>8s} "
              f"{r['speedup_vs_eager']:>7.2f}x")  # fmt: skip
    for pair in pairs:
        each = ", ".join(f"{x:.2f}" for x in pair["speedups"])
        print(f"{pair['workload']}: compiled bf16 against before (sampling: eager fp32), {pair['pairs']} pairs side "
              f"by side: median {pair['median_speedup']:.2f}x ({each})")
    report = {"machine": platform.processor() or platform.machine(), "cpu": _cpu_name(), "threads": 1,
              "peak_gflops": peaks, "shape_peak_gflops": shape_peaks, "steps": args.steps, "warmup": args.warmup,
              "rows": rows, "paired": pairs,
              "baseline_tree": str(args.baseline_tree) if args.baseline_tree else None}  # fmt: skip
    args.json.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(args.json, lambda tmp: tmp.write_text(json.dumps(report, indent=1) + "\n"))
    print(f"\nrows written to {args.json}")


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    main()

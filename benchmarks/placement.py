"""Placing experts on a heterogeneous GPU pool: the README's worked example, the sweep over K and bandwidth, and a
check of the planner's predictions against measured makespans on this CPU.

1. Worked example: the experts of ``--config`` (K = ``--k``) planned on ``--pool`` (``lib.plan``), the plan
   simulated with failures against the synchronous data-parallel monolith of the same total compute on the same
   pool. Latent and text shapes are given (``--latent``, ``--text``) because the VAE and text encoder of a
   real-scale config live on the cluster, not here; the defaults are ``configs/paper.yaml``'s (Wan VAE: 16 channels,
   4x temporal and 8x spatial compression of 17 x 256 x 256; CLIP-L text, 77 x 768).
2. Sweep: monolith / DDM makespan over K and the inter-node bandwidth -> ``placement.png``.
3. CPU check (``--cpu-check``): a 2-core machine has two "GPU types", 1-thread and 2-thread training workers, which
   cannot run at the same time (3 threads on 2 cores). So two pools are checked, each against a measurement: two
   1-thread workers, and one 2-thread worker, each training K = 3 small experts of unequal length (queued where
   the pool is smaller than K). Each worker type is calibrated first from two short runs (seconds per step and the
   start-up of a training process, by a linear fit); the planner predicts the makespan from that; then the plan is
   executed, one subprocess per expert, and its makespan measured. Goal: within 15 %.

Writes ``benchmarks/results/placement.json`` (and ``placement.png``); prints every number.
Usage: ``python benchmarks/placement.py [--cpu-check]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

from lib.config import ExpertConfig, load_config, replace_in
from lib.plan.placement import Plan, plan_experts, plan_table
from lib.plan.pool import Failures, GpuType, Network, Pool, load_pool
from lib.plan.simulate import monolith_run, simulate_monolith, simulate_plan
from lib.plan.sweep import sweep, sweep_figure
from lib.plan.work import TrainingWork, training_work
from lib.train.specs import monolith_config

REPO = Path(__file__).resolve().parents[1]


RESULTS = REPO / "benchmarks" / "results"
KS = [1, 2, 4, 8, 16, 32]
BANDWIDTHS = [25.0, 100.0, 400.0, 1600.0]  # Gbit/s per node
# The CPU check's experts: the tiny config's network on latents of its codec, steps chosen so a 1-thread run of
# the longest takes about a minute.
CHECK_EXPERT = ExpertConfig(num_layers=2, num_heads=4, head_dim=32, ffn_dim=256, patch_size=[1, 2, 2], batch_size=8,
                            warmup_steps=5, checkpoint_every=10_000, log_every=10_000)  # fmt: skip
CHECK_LATENT = (4, 4, 8, 8)
CHECK_TEXT = (16, 384)
CHECK_STEPS = {"expert-00": 600, "expert-01": 400, "expert-02": 300}


def _hours(seconds: float) -> float:
    return round(seconds / 3600, 2)


def worked_example(args: argparse.Namespace) -> dict:
    cfg = replace_in(load_config(args.config), cluster={"num_clusters": args.k})
    pool = load_pool(args.pool)
    c, t, h, w = args.latent
    text_len, text_dim = args.text
    experts = [training_work(f"expert-{i:02d}", cfg.expert, c, (t, h, w), text_len, text_dim) for i in range(args.k)]
    mono = training_work("monolith", monolith_config(cfg.expert, args.k), c, (t, h, w), text_len, text_dim)
    plan = plan_experts(experts, pool)
    ddm = simulate_plan(plan, pool, args.trials, seed=0)
    run = monolith_run(mono, pool)
    monolith = simulate_monolith(run, pool, args.trials, seed=0)
    print(f"worked example: {args.config} with K={args.k} on {args.pool}")
    print(f"  one expert: {experts[0].parameters / 1e6:.0f}M parameters, {experts[0].total_flops:.3e} training FLOPs; "
          f"monolith {mono.total_flops:.3e} (= K x)")  # fmt: skip
    print(plan_table(plan).to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    for name, o in (("DDM", ddm), ("monolith", monolith)):
        print(f"  {name:8s} {o.gpus:3d} GPUs  makespan {o.makespan_s / 3600:7.1f} h failure-free, "
              f"{o.mean_makespan_s / 3600:7.1f} h mean / {o.p90_makespan_s / 3600:7.1f} h p90 with failures; "
              f"cost {o.mean_cost:9.0f}")  # fmt: skip
    print(f"  monolith GPUs: {run.gpus}; step {run.step_seconds:.3f} s")
    table = sweep(mono, cfg.expert.batch_size, pool, KS, BANDWIDTHS, args.trials, seed=0)
    fig = sweep_figure(
        table, f"{Path(args.config).name} on {Path(args.pool).name}: compute fixed, mean of failure trials"
    )
    fig.savefig(RESULTS / "placement.png", dpi=130)
    table["ratio"] = table["monolith_makespan_s"] / table["ddm_makespan_s"]
    print(table.pivot(index="k", columns="inter_node_gbit_s", values="ratio").round(2).to_string())
    return {
        "config": args.config,
        "pool": args.pool,
        "k": args.k,
        "latent": list(args.latent),
        "text": list(args.text),
        "expert_parameters": experts[0].parameters,
        "plan": [{**asdict(p), "start_h": _hours(p.start_s), "finish_h": _hours(p.finish_s)} for p in plan.placements],
        "ddm": asdict(ddm),
        "monolith": {**asdict(monolith), "gpus_by_type": run.gpus, "step_seconds": run.step_seconds},
        "sweep": table.round(4).to_dict("records"),
    }


def _check_work(name: str, steps: int) -> TrainingWork:
    c, t, h, w = CHECK_LATENT
    return training_work(name, replace(CHECK_EXPERT, steps=steps), c, (t, h, w), *CHECK_TEXT)


def run_job(steps: int) -> None:
    """One expert's training process (a subprocess of the check): random latents, the real trainer."""
    from lib.train.trainer import TrainData, train

    g = torch.Generator().manual_seed(0)
    latents = torch.randn(64, *CHECK_LATENT, generator=g)
    tokens = torch.randn(64, *CHECK_TEXT, generator=g)
    data = TrainData([f"c{i}" for i in range(64)], latents, tokens, torch.ones(64, CHECK_TEXT[0], dtype=torch.bool))
    with tempfile.TemporaryDirectory() as tmp:
        train(data, replace(CHECK_EXPERT, steps=steps), tmp, seed=0, name="check", callbacks=[])


def _timed_job(steps: int, threads: int) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "DDM_PROGRESS": "0"}
    started = time.perf_counter()
    subprocess.run([sys.executable, __file__, "--job", str(steps)], env=env, check=True, cwd=REPO)
    return time.perf_counter() - started


def calibrate(threads: int, short: int = 40, long: int = 240) -> tuple[float, float]:
    """(seconds per step, start-up seconds) of a ``threads``-thread training process, from two timed runs."""
    t_short, t_long = _timed_job(short, threads), _timed_job(long, threads)
    step = (t_long - t_short) / (long - short)
    return step, max(0.0, t_short - short * step)


def execute(plan: Plan, threads: int) -> float:
    """Run the plan: one thread per worker slot, its experts one after another in planned order; the makespan."""
    slots: dict[int, list] = {}
    for p in sorted(plan.placements, key=lambda p: p.start_s):
        slots.setdefault(p.gpu_ids[0], []).append(p)
    started = time.perf_counter()

    def work(queue: list) -> None:
        for p in queue:
            _timed_job(CHECK_STEPS[p.name], threads)

    workers = [threading.Thread(target=work, args=(q,)) for q in slots.values()]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return time.perf_counter() - started


def cpu_check() -> list[dict]:
    works = [_check_work(name, steps) for name, steps in CHECK_STEPS.items()]
    tokens = works[0].tokens_per_sample * CHECK_EXPERT.batch_size
    rows = []
    for threads, count in ((1, 2), (2, 1)):
        step, startup = calibrate(threads)
        gpu = GpuType(f"cpu-{threads}t", count, 16.0, 1.0, 0.0, "", gpus_per_node=1,
                      tokens_per_s={works[0].size_key: tokens / step})  # fmt: skip
        # the start-up of each process is fixed work: charged as extra steps of the expert
        startup_steps = startup / step
        padded = [replace(w, steps=round(w.steps + startup_steps)) for w in works]
        pool = Pool((gpu,), Network(), Failures(mtbf_hours_per_gpu=1e12))
        plan = plan_experts(padded, pool)
        measured = execute(plan, threads)
        row = {
            "pool": f"{count} x {threads}-thread worker",
            "seconds_per_step": round(step, 4),
            "startup_s": round(startup, 2),
            "plan": {
                p.name: {"worker": p.gpu_ids[0], "start_s": round(p.start_s, 1), "finish_s": round(p.finish_s, 1)}
                for p in plan.placements
            },  # fmt: skip
            "predicted_makespan_s": round(plan.makespan_s, 1),
            "measured_makespan_s": round(measured, 1),
            "error": round(plan.makespan_s / measured - 1, 4),
        }
        print(f"CPU check, {row['pool']}: {step * 1e3:.1f} ms/step, start-up {startup:.1f} s; predicted makespan "
              f"{plan.makespan_s:.1f} s, measured {measured:.1f} s ({row['error']:+.1%})")  # fmt: skip
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/paper.yaml")
    parser.add_argument("--pool", default="configs/pools/mixed.yaml")
    parser.add_argument("--k", type=int, default=8, help="experts in the worked example")
    parser.add_argument("--latent", type=int, nargs=4, default=[16, 5, 32, 32], metavar=("C", "T", "H", "W"))
    parser.add_argument("--text", type=int, nargs=2, default=[77, 768], metavar=("TOKENS", "DIM"))
    parser.add_argument("--trials", type=int, default=500, help="failure trials per simulation")
    parser.add_argument("--cpu-check", action="store_true", help="also check predictions against this CPU")
    parser.add_argument("--job", type=int, default=0, help=argparse.SUPPRESS)  # internal: one training process
    args = parser.parse_args(argv)
    if args.job:
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
        run_job(args.job)
        return
    out = RESULTS / "placement.json"
    previous = json.loads(out.read_text()) if out.is_file() else {}
    result = {"worked_example": worked_example(args), "cpu_check": previous.get("cpu_check")}
    if args.cpu_check:
        result["cpu_check"] = {"machine": f"{os.cpu_count()} cores", "rows": cpu_check()}
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"-> {out}")


if __name__ == "__main__":
    main()

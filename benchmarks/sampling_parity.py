"""Does the CPU sampling lever draw the same videos? A run's DDM on its held-out prompts, eager fp32 against
compiled bf16, under two noise seeds, scored by the run's AttrNet.

Why: a long sampling job on the CPU compiles the experts' blocks and, on a CPU with AMX, runs them in bf16
(``DDMPipeline.compile_for``, ``lib.models.levers``). That is only honest if what it changes stays inside the noise
of sampling itself. Every held-out prompt clip of the run is sampled by its DDM as the sample stage does (the
config's strategy, steps and guidance), once per lever and noise seed; printed and written: attribute accuracy (the
four headline attributes) and object-found rate per lever and seed, the lever's effect (|compiled bf16 - eager
fp32| under one seed) beside the seed's (|seed 0 - seed 1| under one lever), the mean per-pixel distance between the
two levers' videos beside that between the two seeds', and each lever's videos/s (the compile apart).

Usage: ``python -m benchmarks.sampling_parity --run outputs/tiny`` (after ``make run``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from lib.config import load_config
from lib.evaluate.attrnet import HEADLINE_ATTRIBUTES, AttrNet
from lib.evaluate.attrnet_scoring import attribute_hits
from lib.io import atomic_write
from lib.models.levers import COMPILE_MIN_CPU_VIDEOS, cpu_has_amx
from lib.sample.pipeline import DDMPipeline
from lib.sample.prompts import run_prompt_clips

LEVERS = ("eager fp32", "compiled bf16")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, default=Path("outputs/tiny"), help="a finished run's output_dir")
    parser.add_argument("--seeds", type=int, nargs=2, default=[0, 1])
    parser.add_argument("--limit", type=int, default=0, help="first N prompts only (0 = all; a smoke run)")
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/sampling_parity.json"))
    args = parser.parse_args()
    if not cpu_has_amx():
        raise SystemExit("this CPU has no AMX: compiled sampling stays in fp32 here, which is bit-identical to eager")
    cfg = load_config(args.run / "results" / "config.yaml").sample
    table = run_prompt_clips(args.run)
    table = table.head(args.limit) if args.limit else table
    (featnet,) = sorted(args.run.glob("stages/featnet/*/attrnet"))
    net = AttrNet.from_pretrained(featnet)
    videos, rows = {}, []
    for lever in LEVERS:
        pipe = DDMPipeline.from_pretrained(args.run / "results" / "ddm")
        if lever.startswith("compiled"):
            pipe.compile_for(COMPILE_MIN_CPU_VIDEOS)  # as a long job does, whatever this one's length
        for seed in args.seeds:
            start = time.perf_counter()
            out = pipe(table["caption"].tolist(), num_inference_steps=cfg.num_steps, guidance_scale=cfg.guidance_scale,
                       strategy=cfg.strategy, top_k=cfg.top_k, seed=seed, batch_size=cfg.batch_size).frames  # fmt: skip
            seconds = time.perf_counter() - start
            hits = attribute_hits(net, out, table)
            videos[lever, seed] = out.astype(np.int16)
            rows.append({"lever": lever, "seed": seed, "attr_acc": float(hits[list(HEADLINE_ATTRIBUTES)].mean().mean()),
                         "object_found": float(hits["object_found"].mean()), "seconds": round(seconds, 1),
                         "videos_per_s": round(len(table) / seconds, 2)})  # fmt: skip
            print(json.dumps(rows[-1]), flush=True)
    by = {(r["lever"], r["seed"]): r for r in rows}
    (eager, compiled), (s0, s1) = LEVERS, args.seeds

    def spread(metric: str) -> dict[str, float]:
        return {"lever_effect": max(abs(by[compiled, s][metric] - by[eager, s][metric]) for s in args.seeds),
                "seed_effect": max(abs(by[lv, s0][metric] - by[lv, s1][metric]) for lv in LEVERS)}  # fmt: skip

    def pixels(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.abs(a - b).mean())

    report = {
        "run": str(args.run), "ddm": str(args.run / "results" / "ddm"), "attrnet": str(featnet),
        "prompts": len(table), "strategy": cfg.strategy, "num_steps": cfg.num_steps, "rows": rows,
        "attr_acc": spread("attr_acc"), "object_found": spread("object_found"),
        "pixel_distance": {"lever_effect": max(pixels(videos[compiled, s], videos[eager, s]) for s in args.seeds),
                           "seed_effect": max(pixels(videos[lv, s0], videos[lv, s1]) for lv in LEVERS)},
        "note": "the first call of the compiled lever holds the compile (its first seed's seconds)",
    }  # fmt: skip
    atomic_write(args.json, lambda p: p.write_text(json.dumps(report, indent=1) + "\n"))
    for key in ("attr_acc", "object_found", "pixel_distance"):
        print(f"{key}: lever effect {report[key]['lever_effect']:.4f}, seed effect {report[key]['seed_effect']:.4f}")
    print(f"-> {args.json}")


if __name__ == "__main__":
    main()

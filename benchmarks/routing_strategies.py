"""Routing strategies on a mixture whose experts and router are exact: what each does to the mixture, and its cost.

With learned experts a strategy's bias hides behind the experts' own errors; here every expert is its component's
exact flow velocity and the router the exact posterior (``lib.sample.gaussian_mixture``), so the sampled component
shares differ from the mixture weights only by the strategy, Euler's error and sampling error. A strategy that
claims to keep the mixture must have every |z| below ~3 (z: share minus weight over its binomial standard error).

    python benchmarks/routing_strategies.py            # writes benchmarks/results/routing.json and routing.md
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch

from lib.io import atomic_write
from lib.sample.gaussian_mixture import GaussianMixture, check_strategy

REPO = Path(__file__).resolve().parents[1]


# Three components in 4 dimensions (latents [1, 1, 2, 2]) with unequal weights: top-1's pull toward the largest
# component shows, and the smallest one shows what a strategy starves.
MIXTURE = GaussianMixture(
    mus=torch.tensor([[2.0, 2.0, 2.0, 2.0], [-2.0, -2.0, -2.0, -2.0], [2.0, -2.0, 2.0, -2.0]]),
    stds=torch.tensor([0.3, 0.5, 0.2]),
    pis=torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64),
    shape=(1, 1, 2, 2),
)
STRATEGIES = ["full", "topk", "top1", "sample", "full>top1@0.8", "topk>top1@0.5", "sample>top1@0.5", "full>sample@0.5"]
UNBIASED_Z = 3.0


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--samples", type=int, default=20000)
    p.add_argument("--steps", type=int, nargs="+", default=[20, 100])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    for steps in args.steps:
        for strategy in STRATEGIES:
            t0 = time.perf_counter()
            check = check_strategy(MIXTURE, strategy, args.samples, steps, args.seed)
            error = max(abs(s - float(w)) for s, w in zip(check.shares, MIXTURE.pis, strict=True))
            rows.append(
                {**dataclasses.asdict(check), "max_abs_error": error, "seconds": round(time.perf_counter() - t0, 2)}
            )
    weights = [round(float(w), 3) for w in MIXTURE.pis]
    lines = [
        "# Routing strategies on an exact Gaussian mixture",
        f"`python benchmarks/routing_strategies.py --samples {args.samples} --seed {args.seed}`: "
        f"mixture weights {weights}, top_k 2, {args.samples} samples per row, no CFG. "
        f"z = (share − weight) / binomial standard error; |z| ≤ {UNBIASED_Z:g} on every component = keeps the mixture.",
        "",
        "| Euler steps | strategy | component shares | max abs error | z | spread / true std "
        "| expert passes per sample | keeps mixture |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        keeps = max(abs(z) for z in r["z_scores"]) <= UNBIASED_Z
        lines.append(
            f"| {r['num_steps']} | `{r['strategy']}` | {' / '.join(f'{s:.3f}' for s in r['shares'])} | "
            f"{r['max_abs_error']:.3f} | "
            f"{' / '.join(f'{z:+.1f}' for z in r['z_scores'])} | {' / '.join(f'{s:.2f}' for s in r['spreads'])} | "
            f"{r['expert_passes']:.1f} | {'yes' if keeps else 'no'} |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    record = {"weights": weights, "samples": args.samples, "seed": args.seed, "unbiased_z": UNBIASED_Z, "rows": rows}
    atomic_write(out / "routing.json", lambda tmp: Path(tmp).write_text(json.dumps(record, indent=1)))
    atomic_write(out / "routing.md", lambda tmp: Path(tmp).write_text(text))


if __name__ == "__main__":
    main()

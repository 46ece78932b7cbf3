"""Why the DDM loses at the headline benchmark's budget: each expert against the monolith on held-out clips of its
own cluster, as training compute grows.

Why: in ``ddm_vs_monolith.py`` the monolith beats every expert even on that expert's own cluster. Two readings
predict different futures: (a) under-training — with 1/K of the compute each expert is further from converged,
while the monolith's extra steps on shared structure (shapes, colours, motion) transfer across clusters; the gap
should shrink or flip as the budget grows; (b) no specialisation gain at all on this data — the gap stays. This
probe measures which, cheaply: a held-out flow-matching loss (a likelihood proxy with no sampling and no feature
net) of expert c after s steps against the monolith after K x s steps (the same training FLOPs), on the same
held-out clips of cluster c, at several budgets up to ``--budget-factor`` x the benchmark's.

Setup: ``configs/bench.yaml`` data, encoding and clustering; ``--holdout`` of every cluster is kept out of all
training; the learning rate is constant after warm-up (so a checkpoint at step s is a fair "budget s" model; the
cosine schedule of the benchmark would penalise early checkpoints) and every checkpoint is scored with its EMA
weights. Held-out loss: mean over the held-out clips and a fixed grid of t (the logit-normal deciles) of the
flow-matching MSE, with fixed noise, conditioned on the caption.

Budgets are counted in training samples (steps x batch) and the monolith spends its budget as the config's
``expert.monolith_scaling`` says (K x the steps, or K x the batch), exactly as the benchmark and the pipeline do.

Usage: ``python benchmarks/ddm_compute_probe.py [--budget-factor 2 --evals 6 --out benchmarks/results/probes/probe]
[--set expert.monolith_scaling=steps expert.steps=720 expert.batch_size=16 data.themed_scenes=true]``.
"""

from __future__ import annotations

import argparse
import math
import shutil
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure

from lib.cluster.kmeans import cluster_embeddings
from lib.config import ExpertConfig, load_config, with_overrides
from lib.encode.store import EncodedData, load_encoded
from lib.experiment.context import prepare
from lib.experiment.timer import StageTimer
from lib.models.factory import build_expert, count_parameters, expert_forward
from lib.seeding import derive_seed, numpy_rng, torch_generator
from lib.train import checkpoint as ckpt
from lib.train.compute import flops_per_step
from lib.train.specs import monolith_config
from lib.train.trainer import ProgressCallback, TrainData, flow_matching_batch, train

T_GRID = torch.sigmoid(torch.distributions.Normal(0.0, 1.0).icdf(torch.linspace(0.1, 0.9, 9)))  # logit-normal deciles


def held_out_loss(model: torch.nn.Module, data: EncodedData, noise: torch.Tensor, batch: int = 64) -> float:
    """Mean flow-matching MSE over the clips of ``data`` and ``T_GRID`` with the fixed ``noise`` [T, N, ...]."""
    total, count = 0.0, 0
    with torch.no_grad():
        for ti, t_value in enumerate(T_GRID.tolist()):
            for lo in range(0, len(data.clip_ids), batch):
                x0 = data.latents[lo : lo + batch]
                t = torch.full((len(x0),), t_value)
                x_t, target = flow_matching_batch(x0, t, noise[ti, lo : lo + batch])
                pred = expert_forward(model, x_t, t, data.tokens[lo : lo + batch], data.mask[lo : lo + batch])
                total += float((pred - target).pow(2).flatten(1).mean(1).sum())
                count += len(x0)
    return total / count


class ScoreCheckpoints(ProgressCallback):
    """Scores the EMA weights of every checkpoint on the held-out clips of the given clusters."""

    def __init__(self, name, cfg, shape, held_out, noise, rows, flops_per_step_, budget_per_step):
        super().__init__(cfg.log_every, name)
        self.cfg, self.shape, self.held_out, self.noise, self.rows = cfg, shape, held_out, noise, rows
        self.flops, self.budget_per_step = flops_per_step_, budget_per_step

    def on_checkpoint(self, step: int, folder: Path) -> None:
        groups, _ = ckpt.load_checkpoint(folder)
        channels, text_dim, sample_shape = self.shape
        model = build_expert(self.cfg, channels, text_dim, sample_shape)
        model.load_state_dict(groups["ema"])
        model.eval()
        for cluster, data in self.held_out.items():
            loss = held_out_loss(model, data, self.noise[cluster])
            self.rows.append(
                {
                    "model": self.name,
                    "step": step,
                    "budget": round(step * self.budget_per_step, 6),
                    "train_flops": step * self.flops,
                    "cluster": cluster,
                    "loss": loss,
                }
            )
            print(f"  {self.name} step {step}: held-out loss on cluster {cluster} = {loss:.4f}", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/bench.yaml")
    parser.add_argument("--budget-factor", type=float, default=2.0, help="largest budget, in benchmark budgets")
    parser.add_argument("--evals", type=int, default=6, help="budgets scored per model (evenly spaced)")
    parser.add_argument("--holdout", type=float, default=0.1, help="fraction of each cluster kept out of training")
    parser.add_argument("--out", default="benchmarks/results/probes/probe")
    parser.add_argument(
        "--set", nargs="*", default=[], metavar="SECTION.FIELD=VALUE", help="config overrides, e.g. expert.num_layers=2"
    )
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, to check the script end to end")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    cfg = with_overrides(load_config(args.config), args.set)
    if args.smoke:
        cfg = replace(
            cfg,
            data=replace(cfg.data, num_clips=90, frames=4, height=16, width=16),
            expert=replace(cfg.expert, steps=12, num_layers=1, warmup_steps=2),
            codec=replace(cfg.codec, steps=6, warmup_steps=1),
        )
    out = Path(args.out)
    work = Path(cfg.output_dir) / ("probe-smoke" if args.smoke else "probe")  # a smoke run never wipes a real one
    shutil.rmtree(work / "models", ignore_errors=True)  # the models retrain; the data, codec and encode are reused
    out.mkdir(parents=True, exist_ok=True)

    ctx = prepare(cfg, Path(cfg.output_dir), "cpu", StageTimer())  # the experiments' shared stages
    encoded = ctx.encoded
    clusters = cluster_embeddings(ctx.embeddings, cfg.cluster, cfg.seed)
    clip_ids = np.array(ctx.index["clip_id"].tolist())
    k = cfg.cluster.num_clusters
    rng = numpy_rng(cfg.seed, "probe", "holdout")
    train_ids, held_out = {}, {}
    for c in range(k):
        members = clip_ids[clusters.labels == c][rng.permutation(int((clusters.labels == c).sum()))]
        cut = max(1, int(round(args.holdout * len(members))))
        held_out[c] = load_encoded(encoded, sorted(members[:cut].tolist()))
        train_ids[c] = sorted(members[cut:].tolist())
    sizes = {c: (len(train_ids[c]), len(held_out[c].clip_ids)) for c in range(k)}
    print(f"clusters (train, held-out): {sizes}", flush=True)

    noise = {
        c: torch.randn((len(T_GRID), *held_out[c].latents.shape), generator=torch_generator(cfg.seed, "probe", c))
        for c in range(k)
    }
    base: ExpertConfig = replace(cfg.expert, lr_schedule="constant")
    sample = held_out[0]
    shape = (sample.latents.shape[1], sample.tokens.shape[2], tuple(sample.latents.shape[2:]))
    rows: list[dict] = []
    all_ids = sorted(i for c in range(k) for i in train_ids[c])
    runs = [(f"expert-{c:02d}", base, train_ids[c], {c: held_out[c]}) for c in range(k)]  # configs at budget 1
    runs.append(("monolith", monolith_config(base, k), all_ids, held_out))
    for name, unit, ids, scored in runs:
        steps = args.budget_factor * unit.steps
        if steps != int(steps) or int(steps) % args.evals:
            raise ValueError(f"{name}: {args.budget_factor:g} x {unit.steps} steps is not a multiple of {args.evals}")
        ecfg = replace(unit, steps=int(steps), checkpoint_every=int(steps) // args.evals)
        per_step = flops_per_step(ecfg, shape[0], shape[2], sample.tokens.shape[1], shape[1])
        data = load_encoded(encoded, ids)
        callback = ScoreCheckpoints(name, ecfg, shape, scored, noise, rows, per_step, args.budget_factor / steps)
        seed = derive_seed(cfg.seed, "train", name)
        train(TrainData(data.clip_ids, data.latents, data.tokens, data.mask), ecfg, work / "models" / name, seed, name,
              callbacks=[callback])  # fmt: skip
        pd.DataFrame(rows).to_csv(out / "probe.csv", index=False)  # partial results survive an interruption

    table = pd.DataFrame(rows)
    steps_line = ", ".join(
        f"{who} batch {unit.batch_size} x {unit.steps} steps"
        for who, (_, unit, *_) in zip(("each expert", "monolith"), runs[-2:], strict=True)
    )
    experts = table[table["model"] != "monolith"].rename(columns={"loss": "expert_loss"})
    mono = table[table["model"] == "monolith"].rename(columns={"loss": "monolith_loss"})
    # at the same budget the K experts together and the monolith have spent the same training FLOPs
    paired = experts.merge(mono[["budget", "cluster", "monolith_loss"]], on=["budget", "cluster"])
    paired = paired.assign(ddm_flops=paired["train_flops"] * k, gap=paired["expert_loss"] / paired["monolith_loss"] - 1)
    weights = {c: sizes[c][1] for c in range(k)}
    paired["weight"] = paired["cluster"].map(weights)
    overall = paired.groupby("budget").apply(
        lambda g: pd.Series(
            {
                "expert_loss": np.average(g["expert_loss"], weights=g["weight"]),
                "monolith_loss": np.average(g["monolith_loss"], weights=g["weight"]),
            }
        ),
        include_groups=False,
    )
    overall["gap"] = overall["expert_loss"] / overall["monolith_loss"] - 1.0
    lines = [
        "# Compute probe: each expert vs the monolith on held-out clips of its cluster",
        "",
        f"command: `python benchmarks/ddm_compute_probe.py --budget-factor {args.budget_factor} --evals {args.evals}"
        + (f" --set {' '.join(args.set)}" if args.set else "")
        + "`; "
        f"config `{args.config}`; wall time {(time.perf_counter() - started) / 60:.1f} min; "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads",
        "",
        f"clusters (train clips, held-out clips): {sizes}; budget 1.0 = the benchmark's training samples "
        f"({k} x {cfg.expert.steps} steps x batch {cfg.expert.batch_size}); {steps_line}; constant lr after "
        "warm-up; EMA weights; expert "
        f"{cfg.expert.num_layers} layers x {cfg.expert.num_heads} heads x {cfg.expert.head_dim}, ffn "
        f"{cfg.expert.ffn_dim} ({count_parameters(build_expert(cfg.expert, *shape)) / 1e6:.2f}M params).",
        "",
        "## Held-out flow-matching loss, size-weighted over clusters (lower is better)",
        "",
        "| budget (x benchmark) | DDM training FLOPs | experts (own cluster) | monolith | expert / monolith - 1 |",
        "|---|---|---|---|---|",
    ]
    for budget_x, row in overall.iterrows():
        flops = paired.loc[paired["budget"] == budget_x, "ddm_flops"].iloc[0]
        lines.append(
            f"| {budget_x:.2f} | {flops:.2e} | {row['expert_loss']:.4f} | {row['monolith_loss']:.4f} | "
            f"{row['gap']:+.2%} |"
        )
    lines += ["", "## Per cluster", "", "| budget | cluster | expert | monolith | gap |", "|---|---|---|---|---|"]
    for _, r in paired.sort_values(["budget", "cluster"]).iterrows():
        lines.append(
            f"| {r['budget']:.2f} | {r['cluster']} | {r['expert_loss']:.4f} | {r['monolith_loss']:.4f} | "
            f"{r['gap']:+.2%} |"
        )
    (out / "probe.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)

    fig = Figure(figsize=(4 * k, 3.2))
    for c in range(k):
        ax = fig.add_subplot(1, k, c + 1)
        part = paired[paired["cluster"] == c].sort_values("budget")
        ax.plot(part["ddm_flops"], part["expert_loss"], "o-", label=f"expert {c}")
        ax.plot(part["ddm_flops"], part["monolith_loss"], "s-", label="monolith")
        ax.set_xscale("log")
        ax.set_xlabel("training FLOPs (DDM total = monolith)")
        ax.set_title(f"cluster {c} held-out loss")
        ax.legend()
    fig.tight_layout()
    fig.savefig(out / "probe.png", dpi=100)
    if not math.isfinite(float(overall["gap"].iloc[-1])):
        raise RuntimeError("held-out loss is not finite")


if __name__ == "__main__":
    main()

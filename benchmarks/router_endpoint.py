"""Which router training is right at t = 1, where sampling starts: candidates measured against the caption ceiling.

The sampler calls the router on pure noise at its first Euler step; there only the caption can tell the cluster, so
the router can be no better than a classifier of the caption alone, and should be no worse. This reads a finished
pipeline run's stages (the embeddings, the encoded latents and pooled captions), rebuilds its roles and cluster
assignments with the pipeline's own functions (refusing when the centroids differ from the run's), and trains
one router per candidate on the same train clips and seed (``lib.train.router.train_router``, as the pipeline's
router task does). Each is scored at exactly t = 1.0, 0.95, 0.9 on

- ``router_eval``: the router's own held-out split of the train clips (the rows the router report carries), and
- ``heldout``: every clip of the run's held-out roles (prompt, reference, validation; clusters by nearest centroid),
  more clips, and the prompts sampling actually starts from,

beside the caption-only ceiling (logistic regression on the pooled caption, fitted on the router's train split).
Writes ``benchmarks/results/router_endpoint.json``.

    python benchmarks/router_endpoint.py --config configs/tiny.yaml --run outputs/tiny
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors import safe_open
from safetensors.numpy import load_file

from data_schemas.router import BUCKET, CAPTION_ONLY, EXACT, RouterReport
from lib.cluster.kmeans import cluster_fit_on
from lib.cluster.report import assignment_frame
from lib.config import RunConfig, load_config
from lib.data.split import TRAIN, assign_roles
from lib.encode.store import EncodedData, load_encoded
from lib.io import atomic_write
from lib.models.router import RouterModel
from lib.seeding import derive_seed
from lib.train.router import caption_only_row, evaluate_router, train_router
from lib.train.specs import training_rows

REPO = Path(__file__).resolve().parents[1]


OUT = REPO / "benchmarks" / "results" / "router_endpoint.json"
EXACT_T = [1.0, 0.95, 0.9]
HELDOUT_DRAWS = 4  # noise draws per held-out clip and exact t
# name -> the RouterConfig fields each candidate sets (the rest are the config's): uniform_200 is the tiny run's
# router before this benchmark, uniform_400 the benchmark's, uniform_2000 the review's retrained one
CANDIDATES: dict[str, dict] = {
    "uniform_200": {"steps": 200, "endpoint_mass": 0.0, "lr": 1e-3},
    "uniform_400": {"steps": 400, "endpoint_mass": 0.0, "lr": 1e-3},
    "uniform_1000": {"steps": 1000, "endpoint_mass": 0.0, "lr": 1e-3},
    "uniform_2000": {"steps": 2000, "endpoint_mass": 0.0, "lr": 1e-3},
    "endpoint25_200": {"steps": 200, "endpoint_mass": 0.25, "lr": 1e-3},
    "endpoint25_400": {"steps": 400, "endpoint_mass": 0.25, "lr": 1e-3},
    "endpoint25_1000": {"steps": 1000, "endpoint_mass": 0.25, "lr": 1e-3},
    "endpoint25_2000": {"steps": 2000, "endpoint_mass": 0.25, "lr": 1e-3},
    "endpoint50_400": {"steps": 400, "endpoint_mass": 0.5, "lr": 1e-3},
    "endpoint50_1000": {"steps": 1000, "endpoint_mass": 0.5, "lr": 1e-3},
    "uniform_1000_lr3e-3": {"steps": 1000, "endpoint_mass": 0.0, "lr": 3e-3},
    "endpoint25_1000_lr3e-3": {"steps": 1000, "endpoint_mass": 0.25, "lr": 3e-3},
}


def one_stage(run: Path, stage: str, name: str) -> Path:
    """The one file ``name`` of a run's stage (``stages/<stage>/<key>/<name>``); refuses zero or several."""
    found = sorted((run / "stages" / stage).glob(f"*/{name}"))
    if len(found) != 1:
        raise SystemExit(f"{run}: expected one stages/{stage}/*/{name}, found {len(found)}")
    return found[0]


def run_assignments(cfg: RunConfig, run: Path) -> tuple[pd.DataFrame, Path]:
    """The run's ClusterAssignment table, refitted as ``tasks.cluster.cluster_clips`` fits it, and its encode folder.

    The pipeline passes the table between tasks without writing it; the fit is deterministic in the seed, and the
    refit is checked against the centroids the run saved.
    """
    emb_path = one_stage(run, "embed", "embeddings.safetensors")
    with safe_open(str(emb_path), framework="numpy") as f:
        clip_ids = json.loads(f.metadata()["clip_ids"])
    x = load_file(str(emb_path))["embeddings"]
    d = cfg.data  # the roles as ingest assigns them (the stage's index file is written before they are)
    roles = assign_roles(clip_ids, cfg.seed, d.validation_fraction, d.reference_fraction, d.prompt_fraction)
    result = cluster_fit_on(x, roles == TRAIN, cfg.cluster, cfg.seed)
    saved = load_file(str(one_stage(run, "cluster", "centroids.safetensors")))["centroids"]
    if saved.shape != result.centroids.shape or not np.allclose(saved, result.centroids, atol=1e-5):
        raise SystemExit(f"{run}: refitted centroids differ from the run's: another config or code than the run's")
    encoded = one_stage(run, "encode", "codec.json").parent
    return assignment_frame(clip_ids, result, roles), encoded


def exact_rows(report: pd.DataFrame) -> dict[str, dict[str, float]]:
    """{t: {accuracy, ece, mean_max_prob}} of a report's exact rows, and the caption row under ``caption_only``."""
    out = {}
    for r in report.itertuples():
        if r.kind in (EXACT, CAPTION_ONLY):
            key = f"{r.t_low:g}" if r.kind == EXACT else CAPTION_ONLY
            out[key] = {"accuracy": round(r.accuracy, 4), "ece": round(r.ece, 4),
                        "mean_max_prob": round(r.mean_max_prob, 4), "n": int(r.n)}  # fmt: skip
    return out


def one_router(cfg: RunConfig, name: str, seed: int, data: EncodedData, labels: torch.Tensor, held: EncodedData,
               held_labels: torch.Tensor) -> dict:  # fmt: skip
    """Train candidate ``name`` under ``seed`` as the pipeline does; its exact-t rows on both clip sets."""
    k = cfg.cluster.num_clusters
    router_cfg = replace(cfg.router, report_t=EXACT_T, **CANDIDATES[name])
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        res = train_router(data.latents, data.pooled, labels, router_cfg, k, seed, tmp)
        seconds = time.perf_counter() - t0
        model = RouterModel.from_pretrained(res.model_dir)
    train_idx = torch.tensor(sorted(set(range(len(labels))) - set(res.eval_indices)))
    gen = torch.Generator().manual_seed(derive_seed(seed, "router-endpoint", "heldout"))
    on_held = evaluate_router(model, held.latents, held.pooled, held_labels, 0, HELDOUT_DRAWS, gen, exact_t=EXACT_T)
    ceiling = caption_only_row(data.pooled[train_idx], labels[train_idx], held.pooled, held_labels, k)
    on_held = RouterReport.validate(pd.concat([on_held, pd.DataFrame([ceiling])], ignore_index=True))
    buckets = res.report[res.report[RouterReport.kind] == BUCKET]
    return {
        "seconds_train_and_report": round(seconds, 2),
        "router_eval": exact_rows(res.report),
        "heldout": exact_rows(on_held),
        "buckets": {f"[{r.t_low:.1f},{r.t_high:.1f})": round(r.accuracy, 4) for r in buckets.itertuples()},
    }


def mean_over_seeds(per_seed: dict[int, dict]) -> dict:
    """Accuracy at each exact t and of the caption, averaged over seeds, and the gap ceiling - router at t = 1."""
    out: dict = {"seconds_train_and_report": round(np.mean([r["seconds_train_and_report"]
                                                            for r in per_seed.values()]), 2)}  # fmt: skip
    for where in ("router_eval", "heldout"):
        keys = list(next(iter(per_seed.values()))[where])
        acc = {key: round(float(np.mean([r[where][key]["accuracy"] for r in per_seed.values()])), 4) for key in keys}
        acc["gap_t1"] = round(acc[CAPTION_ONLY] - acc["1"], 4)
        acc["mean_max_prob_t1"] = round(float(np.mean([r[where]["1"]["mean_max_prob"] for r in per_seed.values()])), 4)
        out[where] = acc
    return out


def measure(cfg: RunConfig, run: Path, names: list[str], seeds: list[int], threads: int) -> dict:
    """Train and score every candidate under every seed; returns the JSON record."""
    torch.set_num_threads(threads)
    assignments, encoded = run_assignments(cfg, run)
    rows = training_rows(assignments)
    data = load_encoded(encoded, rows["clip_id"].tolist())
    labels = torch.tensor(rows["cluster_id"].to_numpy(), dtype=torch.int64)
    held = assignments[assignments["role"] != TRAIN]
    held_data = load_encoded(encoded, held["clip_id"].tolist())
    held_labels = torch.tensor(held["cluster_id"].to_numpy(), dtype=torch.int64)
    results = {}
    for name in names:
        per_seed = {seed: one_router(cfg, name, seed, data, labels, held_data, held_labels) for seed in seeds}
        results[name] = {"router": CANDIDATES[name], "mean": mean_over_seeds(per_seed), "per_seed": per_seed}
        say(name, results[name]["mean"])
    return {
        "run": str(run),
        "seeds": seeds,
        "num_clusters": cfg.cluster.num_clusters,
        "train_clips": len(labels),
        "heldout_clips": len(held_labels),
        "threads": threads,
        "candidates": results,
    }


def say(name: str, mean: dict) -> None:
    """One line per candidate: mean accuracy at t = 1 / 0.95 / 0.9 and the caption ceiling, on both clip sets."""
    parts = [f"{name:>22} {mean['seconds_train_and_report']:6.1f} s"]
    for where in ("router_eval", "heldout"):
        r = mean[where]
        parts.append(
            f"{where}: t=1/.95/.9 {r['1']:.3f} {r['0.95']:.3f} {r['0.9']:.3f} "
            f"(conf@1 {r['mean_max_prob_t1']:.2f}) caption {r[CAPTION_ONLY]:.3f} gap {r['gap_t1']:+.3f}"
        )
    print(" | ".join(parts), flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/tiny.yaml", help="the config the run was made with")
    parser.add_argument("--run", default="outputs/tiny", help="the run's output_dir (holds stages/)")
    parser.add_argument("--candidates", nargs="*", choices=list(CANDIDATES), default=list(CANDIDATES))
    parser.add_argument("--seeds", nargs="*", type=int, default=[0], help="training seeds (split, init, batches)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the router is small)")
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args(argv)
    cfg = load_config(args.config)
    record = {"config": args.config, "base_router": asdict(cfg.router),
              **measure(cfg, Path(args.run), args.candidates, args.seeds, args.threads)}  # fmt: skip
    atomic_write(Path(args.out), lambda tmp: Path(tmp).write_text(json.dumps(record, indent=2) + "\n"))
    print(f"-> {args.out}", flush=True)


if __name__ == "__main__":
    main()

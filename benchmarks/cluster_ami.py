"""Which offline embedder clusters the built-in clips by content: AMI of the K clusters against every attribute.

Why: the experts can only specialise in what their clusters hold. ``visual_stats`` (the default) was seen to group
clips by background colour, so every cluster held every scene family (issue 31). This measures, on the benchmark's
own data, how much each embedder's clusters tell about each generating attribute of the procedural dataset
(adjusted mutual information, ``lib.cluster.report.attribute_ami``: 0 = no more than chance, 1 = the clusters are
that attribute), through the cluster stage's own code (``compute_embeddings``, then ``cluster_fit_on`` with the
centroids fitted on the train role and every clip assigned).

Embedders: ``visual_stats``, ``text`` (the pooled caption vector of ``encode.text_encoder``) and both combined.
``image_tower`` needs a local DINOv2/CLIP vision folder (``--image-tower``); without one it is left out and the
output says so.

Rows: embedder x K (``--ks``, default 3, the benchmark's, and 4, the number of scene families) x clustering seed
(``--seeds``); the printed table is the mean over seeds, the JSON keeps every seed. ``scene_purity`` is the share of
clips whose scene family is the most common one of their cluster (1.0: every cluster is one family or a union of
whole families). ``family_ami`` is the data's own distinctness, before any embedder: the AMI of the scene family with
every other attribute (1: the attribute names the family; 0: every family shows it alike).

``--set section.field=value`` changes the config for every measurement; ``--vary section.field=v1,v2,...`` measures
once per value and writes them all to one file (e.g. how ``data.family_overlap`` moves the AMI).

Usage: ``python benchmarks/cluster_ami.py [--config configs/bench.yaml --ks 3 4 --seeds 0 1 2 --num-clips N
--method kmeans --set data.themed_scenes=false --vary data.family_overlap=1,0.5,0
--out benchmarks/results/cluster_ami.json]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from lib.cluster.embedders import compute_embeddings
from lib.cluster.kmeans import cluster_fit_on
from lib.cluster.report import attribute_ami
from lib.config import RunConfig, load_config, replace_in, with_overrides
from lib.data.ingest import ingest
from lib.data.split import TRAIN
from lib.encode.text import TextEncoder
from lib.io import atomic_write

REPO = Path(__file__).resolve().parents[1]


log = logging.getLogger("cluster_ami")

OFFLINE = (("visual_stats",), ("text",), ("visual_stats", "text"))
SHOWN = ("scene", "background", "num_objects", "shape", "color", "size", "motion")  # printed; the JSON has all


def scene_purity(labels: np.ndarray, scenes: pd.Series) -> float:
    """Share of clips whose scene family is their cluster's most common one."""
    table = pd.crosstab(labels, scenes.to_numpy())
    return float(table.max(axis=1).sum() / table.to_numpy().sum())


def measure(cfg: RunConfig, ks: list[int], seeds: list[int], image_tower: str) -> dict:
    """Every embedder x K x seed row (AMI per attribute, sizes, purity) on the config's built-in data."""
    if cfg.data.source != "builtin":
        raise ValueError(f"data.source is {cfg.data.source!r}; AMI needs the built-in attributes")
    embedder_sets = [*OFFLINE, *((("image_tower",),) if image_tower else ())]
    rows, seconds = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        ingested = ingest(cfg.data, cfg.seed, tmp)
        index, attributes = ingested.index, ingested.attributes.set_index("clip_id").loc[ingested.index["clip_id"]]
        attributes = attributes.reset_index()
        seconds["ingest"] = time.perf_counter() - t0
        family = pd.factorize(attributes["scene"])[0]
        family_ami = {k: v for k, v in attribute_ami(family, attributes).items() if k != "scene"}
        log.info("family AMI with each attribute: %s", family_ami)
        t0 = time.perf_counter()
        pooled = TextEncoder.from_config(cfg.encode).encode(index["caption"].tolist()).pooled.numpy()
        seconds["text_encode"] = time.perf_counter() - t0
        train = index["role"].to_numpy() == TRAIN
        for embedders in embedder_sets:
            base = dataclasses.replace(cfg.cluster, embedders=list(embedders), image_tower_path=image_tower)
            t0 = time.perf_counter()
            x, _ = compute_embeddings(base, tmp, index, pooled_text=pooled)
            seconds["+".join(embedders)] = time.perf_counter() - t0
            for k in ks:
                for seed in seeds:
                    result = cluster_fit_on(x, train, dataclasses.replace(base, num_clusters=k), seed)
                    rows.append({
                        "embedders": "+".join(embedders), "k": k, "seed": seed,
                        "sizes": result.sizes().tolist(),
                        "scene_purity": scene_purity(result.labels, attributes["scene"]),
                        "ami": attribute_ami(result.labels, attributes),
                    })  # fmt: skip
                    log.info("%s K=%d seed %d: %s", rows[-1]["embedders"], k, seed, rows[-1]["ami"])
    return {
        "num_clips": cfg.data.num_clips,
        "themed_scenes": cfg.data.themed_scenes,
        "num_families": cfg.data.num_families,
        "family_overlap": cfg.data.family_overlap,
        "method": cfg.cluster.method,
        "fine_clusters": cfg.cluster.fine_clusters,
        "text_encoder": cfg.encode.text_encoder,
        "image_tower": image_tower or "not measured: no local DINOv2/CLIP vision weights (--image-tower)",
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
        "family_ami": family_ami,
        "rows": rows,
    }


def mean_table(result: dict) -> pd.DataFrame:
    """Mean over seeds of each attribute's AMI and the scene purity, one row per (embedders, K)."""
    flat = pd.DataFrame([{"embedders": r["embedders"], "k": r["k"], **r["ami"], "scene_purity": r["scene_purity"]}
                         for r in result["rows"]])  # fmt: skip
    return flat.groupby(["embedders", "k"], sort=False)[[*SHOWN, "scene_purity"]].mean().round(3)


def _variants(vary: str) -> tuple[str, list[str]]:
    """``section.field=v1,v2,...`` -> the field and one ``--set`` assignment per value."""
    key, sep, values = vary.partition("=")
    if not (sep and values):
        raise SystemExit(f"--vary {vary!r}: expected section.field=v1,v2,..., e.g. data.family_overlap=1,0.5,0")
    return key, [f"{key}={v}" for v in values.split(",")]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="configs/bench.yaml")
    p.add_argument("--ks", type=int, nargs="+", default=[3, 4])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--num-clips", type=int, default=0, help="0: the config's data.num_clips")
    p.add_argument("--image-tower", default="", help="local DINOv2/CLIP vision folder; empty: not measured")
    p.add_argument("--method", default="", help="cluster.method (two_stage | kmeans | balanced); empty: the config's")
    p.add_argument("--set", nargs="*", default=[], metavar="SECTION.FIELD=VALUE", help="config changes for every run")
    p.add_argument("--vary", default="", metavar="SECTION.FIELD=V1,V2", help="one measurement per value, one file")
    p.add_argument("--out", default="benchmarks/results/cluster_ami.json")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cfg = with_overrides(load_config(args.config), args.set)
    if args.method:
        cfg = replace_in(cfg, cluster={"method": args.method})
    if args.num_clips:
        cfg = replace_in(cfg, data={"num_clips": args.num_clips})
    varied, assignments = _variants(args.vary) if args.vary else ("", [])
    runs = []
    for assignment in assignments or [None]:
        run = measure(with_overrides(cfg, [assignment] if assignment else []), args.ks, args.seeds, args.image_tower)
        run["mean_over_seeds"] = mean_table(run).reset_index().to_dict("records")
        runs.append({"varied": assignment, **run} if assignment else run)
    head = {"config": args.config, "set": args.set}
    result = {**head, "vary": varied, "runs": runs} if varied else {**head, **runs[0]}
    atomic_write(Path(args.out), lambda tmp: Path(tmp).write_text(json.dumps(result, indent=2) + "\n"))
    for run in runs:
        changes = " ".join([*args.set, run.get("varied") or ""]).strip() or "as configured"
        print(f"AMI of the K clusters with each attribute, mean over seeds {args.seeds}; {run['num_clips']} clips of "
              f"{args.config} ({changes}), cluster.method {run['method']}")  # fmt: skip
        print("family AMI (the data itself): " + ", ".join(f"{k} {v:.3f}" for k, v in run["family_ami"].items()))
        print(mean_table(run).to_string())
    print(f"image_tower: {runs[0]['image_tower']}")
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()

"""Grown DDM vs a DDM retrained from scratch vs the parent, on old-data and new-data prompts.

Protocol: ``benchmarks/results/extend/protocol.md`` (fixed before the run). Old data = the headline corpus's plain,
gradient and stripes families; new data = its checker family. The parent (K = 3 on old data) grows one expert for
the new data (``lib.extend``); the retrained DDM (K = 4) trains every expert on old + new data. Reuses the
headline's shards-to-latents work (``--encoded``) and AttrNet (``--featnet``).

Usage: ``python benchmarks/extend.py --encoded outputs/bench-v5/encoded --featnet outputs/bench-v5/featnet-<key>
--work outputs/bench-extend --threads 1`` (``--smoke`` for a minutes-long check). Writes
``benchmarks/results/extend.json`` and ``extend/summary.md``, ``extend/samples_old.png``, ``extend/samples_new.png``.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from lib.cluster.embedders import compute_embeddings
from lib.cluster.kmeans import cluster_fit_on
from lib.cluster.report import assignment_frame
from lib.config import RunConfig, replace_in
from lib.data.ingest import ingest
from lib.data.shards import load_clips
from lib.data.split import TRAIN
from lib.encode.store import read_codec_info
from lib.evaluate.attrnet import HEADLINE_ATTRIBUTES, AttrNet
from lib.evaluate.compare import compare_methods, reference_clip_ids
from lib.experiment.context import Shared, bench_config
from lib.experiment.models import router_for, train_row, train_spec
from lib.experiment.scoring import distance_replicates, plot_samples, sample_cached
from lib.experiment.tables import json_safe, markdown
from lib.experiment.timer import StageTimer, say
from lib.experiment.variants import Variant
from lib.extend.assign import place_new_clips
from lib.extend.grow import grow_ddm, read_parent
from lib.io import atomic_write
from lib.sample.folder import assemble_ddm, clustering_record
from lib.sample.pipeline import DDMPipeline
from lib.sample.prompts import stratified_prompts
from lib.train.compute import flops_per_step
from lib.train.specs import expert_specs, training_rows

REPO = Path(__file__).resolve().parents[1]



RESULTS = REPO / "benchmarks" / "results"
PROTOCOL = RESULTS / "extend" / "protocol.md"
NEW_SCENES = ("checker",)


def router(ctx: Shared, name: str, assignments: pd.DataFrame, k: int) -> Path:
    """The headline's router step (``router_for``: trained on the train rows, reused by its inputs) over ``k``
    clusters."""
    kctx = dataclasses.replace(ctx, cfg=replace_in(ctx.cfg, cluster={"num_clusters": k}))
    folder, report, _ = router_for(kctx, Variant(name, assignments, np.empty((k, 0)), ""), ctx.cfg.seed)
    say(f"router {name}: accuracy per t bucket {report['accuracy'].round(2).tolist()}")
    return folder


def train_all(ctx: Shared, cfg: RunConfig, assignments: pd.DataFrame, ids: list[int] | None) -> tuple:
    """The experts of ``ids`` (all of ``cfg.cluster.num_clusters`` when None): folders and training records."""
    folders, rows = {}, []
    for spec in expert_specs(cfg, assignments, cluster_ids=ids):
        result = train_spec(ctx, spec, assignments)
        folders[spec.cluster_id] = result.model_dir
        rows.append({**train_row("", cfg.seed, spec, result), "cluster_id": spec.cluster_id})
    return folders, rows


def method_scores(rows: pd.DataFrame, results: dict, methods: list[str]) -> dict:
    main = rows[rows["cluster"] == -1]
    out = {}
    for method in methods:
        mine = main[main["method"] == method].set_index("metric")["mean"]
        entry = {a: round(float(mine[f"attr_acc_attrnet.{a}"]), 4) for a in HEADLINE_ATTRIBUTES}
        entry["mean_attr_acc"] = round(float(np.mean([entry[a] for a in HEADLINE_ATTRIBUTES])), 4)
        entry["object_found"] = round(float(mine["object_found_attrnet"]), 4)
        entry["kid"] = [round(v, 1) for v in results[method].kid.as_list()]  # FD∞ needs >= 512 per set at D = 128
        out[method] = entry
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/yaml")
    parser.add_argument("--encoded", required=True, help="the headline's encoded folder (its codec and latents)")
    parser.add_argument("--featnet", required=True, help="the headline's AttrNet folder (featnet-<key>)")
    parser.add_argument("--work", default="outputs/bench-extend")
    parser.add_argument("--steps", type=int, default=1440, help="training steps per expert (protocol: 1440)")
    parser.add_argument("--prompts", type=int, default=256, help="prompts (and reference clips) per set")
    parser.add_argument("--smoke", action="store_true", help="tiny steps and prompts: check the script end to end")
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    steps, n_prompts = (8, 16) if args.smoke else (args.steps, args.prompts)
    cfg = bench_config(args.config, False, [f"expert.steps={steps}", f"evaluate.num_real={n_prompts}"])
    if args.smoke:
        cfg = replace_in(cfg, router={"steps": 4}, sample={"num_steps": 4})
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    timer = StageTimer()

    with timer("ingest"):
        shards = work / "shards"
        shutil.rmtree(shards, ignore_errors=True)
        data = ingest(cfg.data, cfg.seed, shards)
    encoded = Path(args.encoded)
    info = read_codec_info(encoded)
    data_key = hashlib.sha256(str(encoded.resolve()).encode()).hexdigest()[:12]  # models are keyed by their latents
    index, attrs = data.index, data.attributes
    is_new = attrs.set_index("clip_id").loc[index["clip_id"], "scene"].isin(NEW_SCENES).to_numpy()
    old_index, new_index = index[~is_new].reset_index(drop=True), index[is_new].reset_index(drop=True)
    with timer("embed"):
        x_all, _ = compute_embeddings(cfg.cluster, shards, index)
        x_old, standard = compute_embeddings(cfg.cluster, shards, old_index)
        x_new, _ = compute_embeddings(cfg.cluster, shards, new_index, standard=standard)
    ctx = Shared(cfg, work, "cpu", shards, index, attrs, encoded, info, x_all, data_key)
    featnet_dir = Path(args.featnet)  # the headline's, trained on the same corpus's train clips
    featnet, checks = (
        AttrNet.from_pretrained(featnet_dir / "attrnet"),
        json.loads((featnet_dir / "checks.json").read_text()),
    )

    # parent: K = 3 on the old data
    old_roles = old_index["role"].to_numpy()
    fit = cluster_fit_on(x_old, old_roles == TRAIN, cfg.cluster, cfg.seed)
    parent_assign = assignment_frame(old_index["clip_id"].tolist(), fit, old_roles)
    with timer("train parent"):
        parent_experts, parent_rows = train_all(ctx, cfg, parent_assign, None)
        parent_router = router(ctx, "parent", parent_assign, 3)
    clustering = {**clustering_record(cfg.cluster), "state": standard}
    parent_dir = assemble_ddm(work / "ddm" / "parent", parent_experts, parent_router, info, fit.centroids, cfg.encode,
                              clustering)  # fmt: skip

    # grown: the parent's experts + one expert for the new data, router refit
    parent = read_parent(parent_dir)
    new_roles = new_index["role"].to_numpy()
    placed = place_new_clips(x_new, new_index["clip_id"].tolist(), new_roles, parent.centroids,
                             training_rows(parent_assign)["distance"].to_numpy(), cfg.extend, cfg.cluster.niter,
                             cfg.seed)  # fmt: skip
    say(f"placement: {json.dumps(placed.summary)}")
    both = pd.concat([parent_assign, placed.assignments], ignore_index=True)
    with timer("grow"):
        new_experts, new_rows = train_all(ctx, cfg, placed.assignments, placed.new_cluster_ids)
        grown_router = router(ctx, "grown", both, len(placed.centroids))
    grown_dir = grow_ddm(work / "ddm" / "grown", parent, new_experts, grown_router, info, placed.centroids,
                         cfg.encode, placed.summary)  # fmt: skip

    # retrained: K = 4 on old + new
    cfg4 = replace_in(cfg, cluster={"num_clusters": 4})
    roles = index["role"].to_numpy()
    fit4 = cluster_fit_on(x_all, roles == TRAIN, cfg4.cluster, cfg.seed)
    all_assign = assignment_frame(index["clip_id"].tolist(), fit4, roles)
    with timer("train retrained"):
        re_experts, re_rows = train_all(ctx, cfg4, all_assign, None)
        re_router = router(ctx, "retrained", all_assign, 4)
    re_dir = assemble_ddm(work / "ddm" / "retrained", re_experts, re_router, info, fit4.centroids, cfg.encode,
                          {**clustering_record(cfg.cluster), "state": {}})  # fmt: skip

    folders = {"parent": parent_dir, "grown": grown_dir, "retrained": re_dir}
    pipes = {name: DDMPipeline.from_pretrained(d) for name, d in folders.items()}
    # sampled videos are cached under the exact model set: the manifest names every weight file's sha256
    keys = {name: hashlib.sha256((d / "ddm.json").read_bytes()).hexdigest()[:16] for name, d in folders.items()}
    sets = {"old": (old_index, parent_assign), "new": (new_index, placed.assignments)}
    figures = work if args.smoke else RESULTS / "extend"
    scores = {}
    for set_name, (set_index, set_assign) in sets.items():
        prompts = stratified_prompts(set_assign, set_index, n_prompts, cfg.seed)
        reference = reference_clip_ids(set_index, n_prompts, cfg.seed)
        videos = {}
        for name, pipe in pipes.items():
            with timer(f"sample {name} {set_name}"):
                # named as the headline names its control DDM (ddm:random_topk): the DDM, then the strategy
                videos[f"ddm:{name}_{cfg.sample.strategy}"] = sample_cached(
                    ctx, pipe, cfg.sample.strategy, prompts, keys[name]
                )
        with timer(f"evaluate {set_name}"):
            rows = compare_methods(str(shards), set_index, attrs, set_assign, videos, prompts, cfg.evaluate, featnet,
                                   cfg.seed)  # fmt: skip
            real = load_clips(shards, index, prompts["clip_id"].tolist())
            results, _ = distance_replicates(featnet, ctx, reference, {**videos, "real": real}, cfg)
        scores[set_name] = method_scores(rows, results, [*videos, "real"])
        plot_samples(ctx, videos, prompts, figures / f"samples_{set_name}.png")

    c, t, h, w = info["latent_shape"]
    text = info["text_encoder"]
    expert_flops = flops_per_step(cfg.expert, c, (t, h, w), text["max_tokens"], text["dim"]) * cfg.expert.steps
    n_new = len(placed.new_cluster_ids)
    compute = {
        "one_expert_flops": expert_flops,
        "parent_experts": 3 * expert_flops,
        "extension_experts": n_new * expert_flops,
        "retrained_experts": 4 * expert_flops,
        "extension_fraction_of_retraining": round(n_new / 4, 4),
        "router_steps": cfg.router.steps,
    }
    seconds = {
        "parent_experts": round(sum(r["s_per_step"] * r["steps"] for r in parent_rows), 1),
        "extension_experts": round(sum(r["s_per_step"] * r["steps"] for r in new_rows), 1),
        "retrained_experts": round(sum(r["s_per_step"] * r["steps"] for r in re_rows), 1),
    }
    lineage = json.loads((grown_dir / "ddm.json").read_text())["lineage"]
    record = {
        "protocol": str(PROTOCOL.relative_to(REPO)),
        "protocol_sha256": hashlib.sha256(PROTOCOL.read_bytes()).hexdigest(),
        "smoke": args.smoke,
        "steps_per_expert": steps,
        "prompts_per_set": n_prompts,
        "placement": placed.summary,
        "lineage": {k: lineage[k] for k in ("version", "new_experts")}
        | {"reused_experts": [e["cluster_id"] for e in lineage["reused_experts"]]},
        "compute": compute,
        "train_seconds_estimate": seconds,
        "featnet": checks,
        "scores": scores,
        "stage_seconds": {name: round(s, 1) for name, s in timer.seconds.items()},
    }
    out = RESULTS / ("extend_smoke.json" if args.smoke else "extend.json")
    atomic_write(out, lambda tmp: Path(tmp).write_text(json.dumps(json_safe(record), indent=1) + "\n"))
    lines = ["# Grown DDM vs retrained vs parent\n"]
    for set_name, table in scores.items():
        frame = pd.DataFrame(table).T.rename_axis("method").reset_index()
        lines += [f"## {set_name} prompts ({n_prompts})\n", markdown(frame), ""]
    (RESULTS / "extend" / ("summary_smoke.md" if args.smoke else "summary.md")).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"-> {out}")


if __name__ == "__main__":
    main()

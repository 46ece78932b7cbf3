"""A dense student distilled from the headline's DDM, scored with the DDM and the monolith on the held-out protocol.

Protocol: ``benchmarks/results/distill/protocol.md`` (fixed before the run). The DDM and the monolith are the
headline benchmark's training-seed-0 models (protocol v4, trained at commit 18a82b9); the data, split, prompts,
reference clips, AttrNet and metrics are the headline's, rebuilt here by the same functions
(``benchmarks/ddm_vs_monolith.py``). All three methods are sampled and scored in this one run, on the same paired
noise.

Usage: ``python benchmarks/distill.py --ddm outputs/bench-v5/ddm/semantic-s0 --monolith <monolith model folder>
--work outputs/bench-distill --threads 1``. Writes ``benchmarks/results/distill.json`` and ``distill/summary.md``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from lib.data.shards import load_clips
from lib.data.split import TRAIN, rows_with_role
from lib.distill.student import distill_student, student_config
from lib.encode.store import load_encoded
from lib.evaluate.attrnet import HEADLINE_ATTRIBUTES
from lib.evaluate.compare import compare_methods, reference_clip_ids
from lib.experiment.context import Shared, bench_config, prepare
from lib.experiment.scoring import assert_disjoint, distance_replicates, featnet_for, plot_samples, sample_cached
from lib.experiment.tables import markdown
from lib.experiment.timer import StageTimer
from lib.experiment.variants import semantic_variant
from lib.sample.pipeline import DDMPipeline
from lib.sample.prompts import stratified_prompts
from lib.train.compute import flops_per_step

REPO = Path(__file__).resolve().parents[1]



RESULTS = REPO / "benchmarks" / "results"
PROTOCOL = RESULTS / "distill" / "protocol.md"


def forward_flops_per_sample(ctx: Shared, cfg) -> float:
    c, t, h, w = ctx.info["latent_shape"]
    text = ctx.info["text_encoder"]
    return flops_per_step(cfg, c, (t, h, w), text["max_tokens"], text["dim"]) / cfg.batch_size / 3


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/yaml")
    parser.add_argument("--ddm", required=True, help="the DDM folder (teacher and compared method)")
    parser.add_argument("--monolith", required=True, help="the monolith's model folder")
    parser.add_argument("--work", default="outputs/bench-distill")
    parser.add_argument("--codecs", default="outputs/bench-v5/codecs", help="reuse the headline's learned codec")
    parser.add_argument("--featnet", default="", help="reuse the headline's AttrNet folder (featnet-<key>)")
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    protocol_sha = hashlib.sha256(PROTOCOL.read_bytes()).hexdigest()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    cfg = bench_config(args.config, False, [])
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if Path(args.codecs).is_dir() and not (work / "codecs").exists():
        shutil.copytree(args.codecs, work / "codecs")
    timer = StageTimer()
    ctx = prepare(cfg, work, "cpu", timer)
    if args.featnet and not (work / Path(args.featnet).name).exists():
        shutil.copytree(args.featnet, work / Path(args.featnet).name)
    semantic = semantic_variant(ctx, timer)
    featnet, checks = featnet_for(ctx, timer)
    prompts = stratified_prompts(semantic.assignments, ctx.index, cfg.sample.num_prompts, cfg.seed)
    reference = reference_clip_ids(ctx.index, cfg.evaluate.num_real, cfg.seed)
    assert_disjoint(ctx.index, prompts, reference, semantic.assignments)

    ddm = DDMPipeline.from_pretrained(args.ddm)
    monolith = DDMPipeline.from_single(args.monolith, ctx.info)
    videos = {}

    def sample(name: str, pipe: DDMPipeline, strategy: str) -> None:
        with timer(f"sample {name}"):
            videos[name] = sample_cached(ctx, pipe, strategy, prompts, f"{name}-{Path(args.ddm).name}")

    def evaluate() -> tuple[pd.DataFrame, dict]:
        with timer("evaluate"):
            rows = compare_methods(str(ctx.shards), ctx.index, ctx.attributes, semantic.assignments, videos, prompts,
                                   cfg.evaluate, featnet, cfg.seed)  # fmt: skip
            real = load_clips(ctx.shards, ctx.index, prompts["clip_id"].tolist())
            results, _ = distance_replicates(featnet, ctx, reference, {**videos, "real": real}, cfg)
        return rows, results

    sample("monolith", monolith, "expert:0")
    sample("ddm:topk", ddm, "topk")
    evaluate()  # the two headline methods first: the scoring path is checked before the student's hour

    train_ids = sorted(rows_with_role(semantic.assignments, TRAIN)["clip_id"].astype(str))
    data = load_encoded(ctx.encoded, train_ids)
    with timer("student"):
        result, _ = distill_student(cfg, args.ddm, data, work / "student")
    student_seconds = float(result.log["seconds"].sum())  # the training steps' own time, also when reused
    scfg = student_config(cfg)
    student_flops = 3 * forward_flops_per_sample(ctx, scfg) * scfg.batch_size * scfg.steps
    expert_flops = 3 * forward_flops_per_sample(ctx, cfg.expert) * cfg.expert.batch_size * cfg.expert.steps
    # the teacher's expert forwards: every sample of every step goes to the experts its routing keeps (topk: k of
    # them); CFG of the teacher doubles the captioned rows
    kept = {"top1": 1, "topk": min(cfg.distill.top_k, cfg.cluster.num_clusters), "full": cfg.cluster.num_clusters}
    rows = scfg.steps * scfg.batch_size * kept[cfg.distill.strategy] * (2 if cfg.distill.guidance_scale != 1 else 1)
    teacher_flops = forward_flops_per_sample(ctx, cfg.expert) * rows
    sample("student", DDMPipeline.from_single(result.model_dir, ctx.info), "expert:0")
    rows, results = evaluate()
    main_rows = rows[rows["cluster"] == -1]
    methods = {}
    for method in ("monolith", "ddm:topk", "student", "real"):
        mine = main_rows[main_rows["method"] == method].set_index("metric")["mean"]
        entry = {a: round(float(mine[f"attr_acc_attrnet.{a}"]), 4) for a in HEADLINE_ATTRIBUTES}
        entry["mean_attr_acc"] = round(float(np.mean([entry[a] for a in HEADLINE_ATTRIBUTES])), 4)
        entry["object_found"] = round(float(mine["object_found_attrnet"]), 4)
        iv = results[method]
        entry["fd_inf"] = [round(v, 1) for v in iv.fd_inf.as_list()]
        entry["kid"] = [round(v, 1) for v in iv.kid.as_list()]
        methods[method] = entry
    k = ddm.num_experts
    per_video = {  # network forward passes per video while sampling (x2 with CFG)
        "monolith": cfg.sample.num_steps * 2,
        "student": cfg.sample.num_steps * 2,
        "ddm:topk": cfg.sample.num_steps * 2 * min(cfg.sample.top_k, k),
    }
    record = {
        "protocol": str(PROTOCOL.relative_to(REPO)),
        "protocol_sha256": protocol_sha,
        "teacher": {
            "ddm": args.ddm,
            "strategy": cfg.distill.strategy,
            "top_k": cfg.distill.top_k,
            "guidance_scale": cfg.distill.guidance_scale,
        },  # fmt: skip
        "student": {
            "steps": scfg.steps,
            "batch_size": scfg.batch_size,
            "train_seconds": round(student_seconds, 1),
            "final_loss": round(float(result.log["loss"].tail(50).mean()), 4) if len(result.log) else None,
        },  # fmt: skip
        "compute_flops": {
            "one_expert": expert_flops,
            "student_own": student_flops,
            "teacher_passes": teacher_flops,
            "student_total": student_flops + teacher_flops,
            "ddm_experts": k * expert_flops,
            "monolith": k * expert_flops,
        },  # fmt: skip
        "sampling_passes_per_video": per_video,
        "router_passes_per_video_ddm": cfg.sample.num_steps,
        "prompts": len(prompts),
        "n_reference": len(reference),
        "featnet": checks,
        "methods": methods,
        "stage_seconds": {name: round(s, 1) for name, s in timer.seconds.items()},
    }
    out = RESULTS / "distill.json"
    out.write_text(json.dumps(record, indent=1) + "\n")
    (RESULTS / "distill").mkdir(exist_ok=True)
    plot_samples(ctx, videos, prompts, RESULTS / "distill" / "samples.png")
    table = pd.DataFrame(methods).T.rename_axis("method").reset_index()
    (RESULTS / "distill" / "summary.md").write_text(
        "# Distilled student vs DDM vs monolith\n\n" + markdown(table) + "\n"
    )
    print(table.to_string())
    print(f"-> {out}")


if __name__ == "__main__":
    main()

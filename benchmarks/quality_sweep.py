"""Sample quality per CPU-minute: train one model under a config change, sample it on validation prompts, score it.

Issue 15's table: change -> held-out flow-matching loss -> attribute accuracy of samples -> wall time. One run is one
row; every run appends to ``--out``/sweep.csv (nothing is overwritten, so disappointing rows stay in the table) and
writes a contact sheet ``--out``/<variant>.png (real validation clips above, generated below, same prompts).

The subject is one model of the pipeline, trained exactly as the pipeline trains it (``lib.train.trainer.train`` on
the spec ``expert_specs`` / ``monolith_spec`` build): ``expert:<k>`` (default ``expert:0``, the DDM's unit of work) or
``monolith``. Prompts come from the ``validation`` role only (clusters in proportion; for ``expert:<k>``, its own
cluster), so tuning never touches the headline's prompt or reference clips. Samples are scored by AttrNet (trained
on train clips, abstains on junk): per-attribute accuracy (absent object = wrong) and ``object_found``.

    python benchmarks/quality_sweep.py --variant base --threads 1
    python benchmarks/quality_sweep.py --variant lr2e-3 --set expert.lr=0.002 --threads 1
    python benchmarks/quality_sweep.py --variant cfg2 --sample-only base --set sample.guidance_scale=2

``--scorer-config YAML`` trains the scoring AttrNet on another config's data (a small run's own AttrNet, trained on
few clips for few steps, cannot tell shapes apart). ``--sample-only V`` re-samples the model trained by variant V
(sampler sweeps cost no training). With a learned codec, ``codec_round_trip.png`` shows 8 validation clips' first
and last frames, real | reconstructed, side by side.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from lib.cluster.embedders import compute_embeddings
from lib.cluster.kmeans import cluster_fit_on
from lib.cluster.report import assignment_frame
from lib.config import RunConfig, key_values, load_config, with_overrides
from lib.data.ingest import ingest
from lib.data.shards import load_clips
from lib.data.split import TRAIN, VALIDATION, rows_with_role
from lib.encode.prepare import codec_key, fit_codec
from lib.encode.store import encode_dataset, load_encoded, read_codec_info
from lib.evaluate.attrnet import AttrNet
from lib.evaluate.attrnet_scoring import attribute_accuracy
from lib.evaluate.attrnet_training import fit_attrnet
from lib.io import atomic_write
from lib.models.factory import load_expert
from lib.sample.methods import sample_prompts
from lib.sample.pipeline import DDMPipeline
from lib.sample.prompts import stratified_prompts
from lib.sample.sheet import REAL_ROW, contact_sheet
from lib.train.heldout import heldout_loss
from lib.train.specs import expert_specs, monolith_spec, training_data
from lib.train.trainer import train

REPO = Path(__file__).resolve().parents[1]


ATTRS = ("color", "shape", "background", "motion")
SHEET_PROMPTS, SHEET_SCALE = 8, 3  # the codec round-trip sheet


def _key(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


def ingest_stage(cfg: RunConfig, work: Path) -> tuple[Path, pd.DataFrame, pd.DataFrame]:
    """Ingest, cached by the data config and seed."""
    shards = work / f"shards-{_key(cfg.seed, key_values(cfg.data))}"
    if not (shards / "attributes.parquet").is_file():
        result = ingest(cfg.data, cfg.seed, shards)
        atomic_write(shards / "clip_index.parquet", lambda tmp: result.index.to_parquet(tmp))
        atomic_write(shards / "attributes.parquet", lambda tmp: result.attributes.to_parquet(tmp))
        print(f"ingest: {result.summary()}", flush=True)
    return shards, pd.read_parquet(shards / "clip_index.parquet"), pd.read_parquet(shards / "attributes.parquet")


def data_stage(cfg: RunConfig, work: Path) -> tuple[Path, pd.DataFrame, pd.DataFrame, Path, dict]:
    """Ingest, codec and encode, cached by the config subtrees they read (a codec change re-encodes only)."""
    shards, index, attributes = ingest_stage(cfg, work)
    learned, report = None, None
    if cfg.encode.codec == "learned":
        folder = work / "codecs" / codec_key(cfg.codec, cfg.seed, index, shards)
        learned, report = fit_codec(cfg.codec, cfg.seed, shards, index, folder)
        print(report.summary(), flush=True)
    encoded = work / f"encoded-{_key(shards.name, dataclasses.asdict(cfg.encode), str(learned))}"
    if not (encoded / "codec.json").is_file():
        t0 = time.perf_counter()
        encode_dataset(shards, index, cfg.encode, encoded, learned_codec=learned)
        print(f"encode: {time.perf_counter() - t0:.0f} s", flush=True)
    return shards, index, attributes, encoded, read_codec_info(encoded)


def clusters(cfg: RunConfig, work: Path, shards: Path, index: pd.DataFrame) -> pd.DataFrame:
    path = work / f"assignments-{_key(shards.name, dataclasses.asdict(cfg.cluster))}.parquet"
    if path.is_file():
        return pd.read_parquet(path)
    x, _ = compute_embeddings(cfg.cluster, shards, index)
    roles = index["role"].to_numpy()
    frame = assignment_frame(index["clip_id"].tolist(), cluster_fit_on(x, roles == TRAIN, cfg.cluster, cfg.seed), roles)
    atomic_write(path, lambda tmp: frame.to_parquet(tmp))
    return frame


def featnet(cfg: RunConfig, work: Path, shards: Path, index: pd.DataFrame, attributes: pd.DataFrame) -> AttrNet:
    folder = work / f"featnet-{_key(shards.name, cfg.evaluate.featnet_steps, cfg.seed)}"
    if (folder / "config.json").is_file():
        return AttrNet.from_pretrained(folder)
    by_role = {
        r: attributes[attributes["clip_id"].isin(rows_with_role(index, r)["clip_id"])] for r in (TRAIN, VALIDATION)
    }
    videos = {r: load_clips(shards, index, rows["clip_id"].tolist()) for r, rows in by_role.items()}
    model, checks = fit_attrnet(videos[TRAIN], by_role[TRAIN], videos[VALIDATION], by_role[VALIDATION],
                                cfg.evaluate.featnet_steps, cfg.seed)  # fmt: skip
    print(f"featnet checks: {json.dumps({k: round(v, 3) for k, v in checks.items()})}", flush=True)
    model.save_pretrained(folder)
    return model


def codec_sheet(shards: Path, index: pd.DataFrame, info: dict, path: Path) -> None:
    """A learned codec's round trip on 8 validation clips: first and last frame, real | reconstructed."""
    from PIL import Image

    from lib.encode.codec import load_vae_codec

    ids = rows_with_role(index, VALIDATION)["clip_id"].tolist()[:SHEET_PROMPTS]
    real = load_clips(shards, index, ids)
    codec = load_vae_codec(info["vae_path"])
    recon = codec.decode(codec.encode(real)).numpy()
    rows = [np.concatenate([real[i, 0], recon[i, 0], real[i, -1], recon[i, -1]], axis=1) for i in range(len(ids))]
    image = np.concatenate(rows, axis=0).repeat(SHEET_SCALE, 0).repeat(SHEET_SCALE, 1)
    Image.fromarray(image).save(path)


def codec_ceiling(net: AttrNet, real: np.ndarray, targets: pd.DataFrame, info: dict) -> dict[str, float]:
    """AttrNet's scores of the prompt clips after a learned codec's round trip: the most any generator in this
    latent space can score on these prompts, so a row's gap to ``real`` splits into codec loss and generator loss.
    Empty for pixel runs (no round trip)."""
    if "vae_path" not in info:
        return {}
    from lib.encode.codec import load_vae_codec

    codec = load_vae_codec(info["vae_path"])
    return attribute_accuracy(net, codec.decode(codec.encode(real)).numpy(), targets)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/bench.yaml")
    p.add_argument("--variant", required=True, help="row name (and contact sheet file name)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    p.add_argument("--subject", default="expert:0", help="expert:<k> or monolith")
    p.add_argument("--prompts", type=int, default=64, help="validation prompts to sample (one video each)")
    p.add_argument("--sample-only", default="", metavar="VARIANT", help="reuse the model trained by VARIANT")
    p.add_argument("--work", default="outputs/quality")
    p.add_argument("--out", default="benchmarks/results/quality")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--scorer-config", default="", metavar="YAML",
                   help="train AttrNet on this config's data instead (a small run's own AttrNet cannot tell shapes)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = with_overrides(load_config(args.config), args.set)
    work, out = Path(args.work), Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)

    t_data = time.perf_counter()
    shards, index, attributes, encoded, info = data_stage(cfg, work)
    assignments = clusters(cfg, work, shards, index)
    if args.scorer_config:
        scorer_cfg = load_config(args.scorer_config)
        net = featnet(scorer_cfg, work, *ingest_stage(scorer_cfg, work))
    else:
        net = featnet(cfg, work, shards, index, attributes)
    if "learned" in info and not (out / "codec_round_trip.png").is_file():
        codec_sheet(shards, index, info, out / "codec_round_trip.png")
    t_data = time.perf_counter() - t_data

    if args.subject == "monolith":
        spec, cluster = monolith_spec(cfg, assignments), None
    else:
        cluster = int(args.subject.split(":", 1)[1])
        spec = expert_specs(cfg, assignments)[cluster]
    models = work / "models.json"
    registry = json.loads(models.read_text()) if models.is_file() else {}
    if args.sample_only:
        model_dir, train_s = Path(registry[args.sample_only]["model_dir"]), 0.0
        encoded, info = (
            Path(registry[args.sample_only]["encoded"]),
            read_codec_info(registry[args.sample_only]["encoded"]),
        )
    else:
        data = training_data(spec, [(encoded, assignments)])
        t0 = time.perf_counter()
        result = train(data, spec.expert,
                       work / "train" / f"{spec.name}-{spec.spec_hash()}-{_key(str(encoded))}", spec.seed, spec.name,
                       spec_hash=spec.spec_hash())  # fmt: skip
        train_s = (
            time.perf_counter() - t0 if not result.skipped else float(registry.get(args.variant, {}).get("train_s", 0))
        )
        model_dir = result.model_dir
        registry = json.loads(models.read_text()) if models.is_file() else {}  # re-read: runs go side by side
        registry[args.variant] = {"model_dir": str(model_dir), "encoded": str(encoded), "train_s": train_s}
        atomic_write(models, lambda tmp: Path(tmp).write_text(json.dumps(registry, indent=1)))

    pool = assignments if cluster is None else assignments[assignments["cluster_id"] == cluster]
    val = rows_with_role(pool, VALIDATION)
    val_data = load_encoded(encoded, val["clip_id"].tolist())
    loss = heldout_loss(load_expert(model_dir, verify=False), val_data.latents, val_data.tokens, val_data.mask,
                        spec.expert.objective, cfg.seed)  # fmt: skip

    prompts = stratified_prompts(pool, index, min(args.prompts, len(val)), cfg.seed, role=VALIDATION)
    pipe = DDMPipeline.from_single(model_dir, info)
    t0 = time.perf_counter()
    videos = sample_prompts(pipe, prompts, cfg.sample, cfg.seed, "expert:0")
    sample_s = time.perf_counter() - t0
    targets = attributes.set_index("clip_id").loc[prompts["clip_id"]].reset_index()
    acc = attribute_accuracy(net, videos, targets)
    real = load_clips(shards, index, prompts["clip_id"].tolist())
    real_acc = attribute_accuracy(net, real, targets)
    ceiling = codec_ceiling(net, real, targets, info)

    learned = info.get("learned", {})
    row = {
        "variant": args.variant, "subject": args.subject, "scorer": args.scorer_config or args.config,
        "overrides": " ".join(args.set),
        "steps": spec.expert.steps, "batch": spec.expert.batch_size, "codec": info["name"],
        "codec_psnr": round(learned.get("psnr_heldout", float("nan")), 2),
        "heldout_fm_loss": round(loss, 4), **{a: round(acc[a], 3) for a in ATTRS}, "mean4": round(acc["mean4"], 3),
        "object_found": round(acc["object_found"], 3), "real_mean4": round(real_acc["mean4"], 3),
        **{f"codec_rt_{a}": round(ceiling.get(a, float("nan")), 3) for a in (*ATTRS, "mean4", "object_found")},
        "prompts": len(prompts), "train_s": round(train_s, 1), "sample_s": round(sample_s, 1),
        "data_s": round(t_data, 1), "codec_s": round(learned.get("seconds", 0.0), 1),
        "threads": torch.get_num_threads(),
    }  # fmt: skip
    print(json.dumps(row), flush=True)
    table = out / "sweep.csv"
    frame = pd.concat([pd.read_csv(table), pd.DataFrame([row])]) if table.is_file() else pd.DataFrame([row])
    atomic_write(table, lambda tmp: frame.to_csv(tmp, index=False))
    label = f"{args.variant}\nmean4 {acc['mean4']:.2f}\nobject {acc['object_found']:.2f}"
    contact_sheet([(REAL_ROW, real), (label, videos)], prompts, out / f"{args.variant}.png")


if __name__ == "__main__":
    main()

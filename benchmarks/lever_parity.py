"""Do the CPU levers train the same model? Held-out loss of full runs, eager fp32 against compiled bf16, two seeds.

Why: ``expert.compile`` and ``expert.precision`` are run-only fields (``lib.models.levers``): a model's identity
ignores them, so a run may resume or be reused across them. That is only honest if what they change stays inside
the noise of training itself. Each run here trains the expert network of ``--config`` for its full ``expert.steps``
on an encoded run's train clips (latents and captions from ``--encoded``), and its EMA weights are scored by
``lib.train.heldout.heldout_loss`` on the validation and reference clips (the same noise for every model). The
lever's effect (|compiled bf16 - eager fp32| under one seed) is printed beside the seed effect (|seed 0 - seed 1|
under one lever), with each run's wall time; ``--json`` keeps the rows.

Usage: ``python benchmarks/lever_parity.py --encoded outputs/tiny/stages/encode/<key> [--config configs/tiny.yaml]``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from lib.config import load_config
from lib.data.split import REFERENCE, TRAIN, VALIDATION, assign_roles
from lib.encode.store import load_encoded, read_encoded_index
from lib.io import atomic_write
from lib.models.factory import load_expert
from lib.train.heldout import heldout_loss
from lib.train.trainer import TrainData, train

ROOT = Path(__file__).resolve().parents[1]


LEVERS = {"eager fp32": {"compile": "never", "precision": "fp32"},
          "compiled bf16": {"compile": "always", "precision": "bf16"}}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--encoded", type=Path, required=True, help="an encode stage folder of a run of --config")
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "tiny.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "lever_parity.json")
    args = parser.parse_args()
    cfg = load_config(args.config)
    ids = read_encoded_index(args.encoded)["clip_id"].tolist()
    d = cfg.data
    roles = assign_roles(ids, cfg.seed, d.validation_fraction, d.reference_fraction, d.prompt_fraction)
    train_ids = [c for c, r in zip(ids, roles, strict=True) if r == TRAIN]
    held_ids = [c for c, r in zip(ids, roles, strict=True) if r in (VALIDATION, REFERENCE)]
    clips, held = load_encoded(args.encoded, train_ids), load_encoded(args.encoded, held_ids)
    data = TrainData(train_ids, clips.latents, clips.tokens, clips.mask)
    rows = []
    for seed in args.seeds:
        for lever, fields in LEVERS.items():
            expert = replace(cfg.expert, **fields, checkpoint_every=10**6)
            start = time.perf_counter()
            with tempfile.TemporaryDirectory() as out:
                result = train(data, expert, out, seed=seed, name="parity", callbacks=[])
                model = load_expert(result.model_dir)
            seconds = time.perf_counter() - start
            loss = heldout_loss(model, held.latents, held.tokens, held.mask, expert.objective, seed=0)
            rows.append({"seed": seed, "lever": lever, "heldout_loss": loss, "seconds": seconds,
                         "final_train_loss": float(result.log["loss"].tail(100).mean())})  # fmt: skip
            print(json.dumps(rows[-1]), flush=True)
    by = {(r["seed"], r["lever"]): r["heldout_loss"] for r in rows}
    levers = list(LEVERS)
    lever_gap = [abs(by[(s, levers[1])] - by[(s, levers[0])]) for s in args.seeds]
    seed_gap = [abs(by[(args.seeds[1], lv)] - by[(args.seeds[0], lv)]) for lv in levers] if len(args.seeds) > 1 else []
    summary = {"config": str(args.config), "steps": cfg.expert.steps, "train_clips": len(train_ids),
               "heldout_clips": len(held_ids), "rows": rows, "lever_gap_per_seed": lever_gap,
               "seed_gap_per_lever": seed_gap}  # fmt: skip
    print(f"held-out loss, lever effect per seed {[round(g, 4) for g in lever_gap]}, "
          f"seed effect per lever {[round(g, 4) for g in seed_gap]}")  # fmt: skip
    args.json.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(args.json, lambda tmp: tmp.write_text(json.dumps(summary, indent=1) + "\n"))


if __name__ == "__main__":
    main()

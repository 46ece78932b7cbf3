"""The learned codec's ceiling per codec variant: how much of what AttrNet sees in real clips survives the round trip.

A generator over a codec's latents cannot score above the codec's own round trip, so a codec that loses the objects
caps every model trained over it. Each variant (a name and its config overrides) fits the codec as the pipeline does
(cached by ``benchmarks/quality_sweep.py``'s data stage in ``--work``), round-trips every ``validation`` clip and
scores the result with the sweep's AttrNet (``--scorer-config``). One JSON line per variant, appended to ``--out``.

    python benchmarks/codec_ceiling.py --config configs/tiny.yaml --set data.validation_fraction=0.15 \\
        --scorer-config benchmarks/results/quality-tiny/scorer.yaml --threads 1 \\
        --variant tiny= --variant '2level=codec.block_out_channels=[16,32]'
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from benchmarks import quality_sweep as sweep
from lib.config import load_config, with_overrides
from lib.data.shards import load_clips
from lib.data.split import VALIDATION, rows_with_role
from lib.io import atomic_write

REPO = Path(__file__).resolve().parent



def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/tiny.yaml")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every variant")
    p.add_argument("--variant", action="append", required=True, metavar="NAME=KEY=VALUE[;KEY=VALUE]",
                   help="a codec variant: its name and its own overrides, ';'-separated (none after '=': as is)")
    p.add_argument("--scorer-config", required=True, metavar="YAML", help="AttrNet's data and steps")
    p.add_argument("--work", default="outputs/quality-tiny")
    p.add_argument("--out", default="benchmarks/results/quality-tiny/codec_ceiling.jsonl")
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    work, out = Path(args.work), Path(args.out)
    scorer = load_config(args.scorer_config)
    net = sweep.featnet(scorer, work, *sweep.ingest_stage(scorer, work))
    for spec in args.variant:
        name, _, rest = spec.partition("=")
        sets = [s for s in rest.split(";") if s]
        cfg = with_overrides(load_config(args.config), [*args.set, *sets])
        t0 = time.perf_counter()
        shards, index, attributes, _, info = sweep.data_stage(cfg, work)
        if "learned" not in info:
            raise SystemExit(f"variant {name!r}: encode.codec is {cfg.encode.codec!r}, not a learned codec")
        val = rows_with_role(index, VALIDATION)
        real = load_clips(shards, index, val["clip_id"].tolist())
        targets = attributes.set_index("clip_id").loc[val["clip_id"]].reset_index()
        ceiling = sweep.codec_ceiling(net, real, targets, info)
        row = {"variant": name, "sets": sets, "psnr": round(info["learned"]["psnr_heldout"], 2),
               "codec_s": round(info["learned"]["seconds"], 1), "data_s": round(time.perf_counter() - t0, 1),
               "clips": len(val), **{k: round(v, 3) for k, v in ceiling.items()}}  # fmt: skip
        print(json.dumps(row), flush=True)
        before = out.read_text() if out.is_file() else ""
        atomic_write(out, lambda tmp, text=before + json.dumps(row) + "\n": Path(tmp).write_text(text))


if __name__ == "__main__":
    main()

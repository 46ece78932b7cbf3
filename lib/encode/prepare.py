"""The codec the pipeline trains for itself (``encode.codec: learned``): on which clips, and under which identity."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import pandas as pd

from data_schemas.ingest import ClipIndex
from lib.config import CodecConfig
from lib.data.shards import load_clips
from lib.data.split import TRAIN, VALIDATION, rows_with_role
from lib.encode.learned import CodecReport, train_codec
from lib.io import file_sha256


def codec_key(cfg: CodecConfig, seed: int, index: pd.DataFrame, shards: str | Path) -> str:
    """Identity of a learned codec: its config, the seed, the exact train clips and the bytes of the shards that
    hold them (a new split means a new codec; moving clips between held-out roles does not). Clip ids alone are not
    enough: built-in clip i keeps its id when the data config (e.g. ``data.max_objects``) redraws its pixels."""
    train = rows_with_role(index, TRAIN)
    train_ids = sorted(train["clip_id"].astype(str))
    recorded = ClipIndex.shard_sha256 in train.columns and train[ClipIndex.shard_sha256].notna().all()
    shard_sha = (  # the digests ingest recorded (load_clips checks them) or, for an older index, the files' own
        dict(zip(train["shard"], train[ClipIndex.shard_sha256], strict=True))
        if recorded
        else {name: file_sha256(Path(shards) / name) for name in set(train["shard"])}
    )
    src = [dataclasses.asdict(cfg), seed, train_ids, shard_sha]
    return hashlib.sha256(json.dumps(src, sort_keys=True).encode()).hexdigest()[:16]


def fit_codec(
    cfg: CodecConfig, seed: int, shards: str | Path, index: pd.DataFrame, out_dir: str | Path
) -> tuple[Path, CodecReport]:
    """Train the AutoencoderKL on the train-role clips; its PSNR is measured on the validation-role clips.

    Held-out clips never shape the codec, so the reference and prompt clips the evaluation uses stay unseen by
    every learned part of the pipeline. Returns (VAE folder, report); a finished ``out_dir`` is reused.
    """
    train_ids = rows_with_role(index, TRAIN)["clip_id"].tolist()
    heldout_ids = rows_with_role(index, VALIDATION)["clip_id"].tolist()
    if not train_ids or not heldout_ids:
        raise ValueError("encode.codec=learned needs train and validation clips (see data.validation_fraction)")
    return train_codec(load_clips(shards, index, train_ids), load_clips(shards, index, heldout_ids), cfg, seed, out_dir)

"""Stages every variant and training seed of an experiment shares: the data with its roles, the codec, the
encoded latents and captions, the clustering embeddings."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from lib.cluster.embedders import compute_embeddings
from lib.config import RunConfig, key_values, load_config, replace_in, with_overrides
from lib.data.ingest import ingest
from lib.encode.prepare import codec_key, fit_codec
from lib.encode.store import encode_dataset, load_encoded, read_codec_info
from lib.experiment.timer import StageTimer, say
from lib.models.factory import weights_digest, weights_sha256

CLIPS, ATTRIBUTES = "clips.parquet", "attributes.parquet"  # beside the shards: ClipIndex with roles, ClipAttributes

# --smoke: every stage on tiny sizes (same network, same code paths) to check an experiment end to end.
SMOKE = {
    "output_dir": "outputs/bench-smoke",
    "data": {"num_clips": 400},
    "cluster": {"fine_clusters": 8, "silhouette_sample": 200},
    "codec": {"steps": 6, "warmup_steps": 1},
    "expert": {"steps": 4, "warmup_steps": 1, "checkpoint_every": 100, "log_every": 2},
    "router": {"steps": 5},
    "sample": {"num_steps": 2, "num_prompts": 64},
    "evaluate": {"num_real": 64, "featnet_steps": 30, "bootstrap": 20},
}


def bench_config(path: str, smoke: bool, overrides: list[str]) -> RunConfig:
    """A config file with command-line ``section.field=value`` overrides, at smoke sizes when asked."""
    cfg = with_overrides(load_config(path), overrides)
    return replace_in(cfg, **SMOKE) if smoke else cfg


@dataclass
class Shared:
    """Everything computed once and used by every variant and training seed."""

    cfg: RunConfig
    work: Path
    device: str
    shards: Path
    index: pd.DataFrame
    attributes: pd.DataFrame
    encoded: Path
    info: dict
    embeddings: np.ndarray
    data_key: str  # hash of the data + encode config: models trained on other data are never reused
    semantic: pd.DataFrame = field(default_factory=pd.DataFrame)


def _key(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _publish(tmp: Path, final: Path) -> None:
    """Rename a finished stage folder into place; another experiment that finished the same stage first wins."""
    try:
        os.replace(tmp, final)
    except OSError:  # final exists and is not empty: the same stage, published by someone else
        shutil.rmtree(tmp, ignore_errors=True)


def _ingested(cfg: RunConfig, work: Path) -> tuple[Path, pd.DataFrame, pd.DataFrame]:
    """Shards, ClipIndex and ClipAttributes of the config's data, ingested once per data config and seed."""
    folder = work / "data" / _key(cfg.seed, key_values(cfg.data))
    if not (folder / ATTRIBUTES).is_file():
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
        result = ingest(cfg.data, cfg.seed, tmp)
        result.index.to_parquet(tmp / CLIPS, index=False)  # with the roles, which the shards' own index lacks
        result.attributes.to_parquet(tmp / ATTRIBUTES, index=False)
        say(f"ingest: {result.summary()}")
        _publish(tmp, folder)
    else:
        say(f"ingest: reused {folder}")
    return folder, pd.read_parquet(folder / CLIPS), pd.read_parquet(folder / ATTRIBUTES)


def prepare(cfg: RunConfig, work: Path, device: str, timer: StageTimer) -> Shared:
    """Ingest (with roles), the learned codec, encode, embed: once for all variants and seeds, and reused from an
    earlier experiment on the same data, codec and encode config (two experiments sharing ``work`` do not race: each
    stage is built in a temporary folder and renamed into place)."""
    with timer("ingest"):
        shards, index, attributes = _ingested(cfg, work)
    learned = None
    if cfg.encode.codec == "learned":
        with timer("codec (train clips)"):
            folder = work / "codecs" / codec_key(cfg.codec, cfg.seed, index, shards)
            learned, report = fit_codec(cfg.codec, cfg.seed, shards, index, folder)
            say(report.summary())
    parts = [cfg.seed, key_values(cfg.data), dataclasses.asdict(cfg.encode)]
    if learned is not None:  # models trained on another codec's latents are never reused: its config and its
        # weights (a codec refitted on another CPU computes other weights from the same config)
        parts += [dataclasses.asdict(cfg.codec), weights_digest(weights_sha256(learned))]
    data_key = _key(*parts)
    with timer("encode"):
        encoded = work / "encoded" / data_key
        if not (encoded / "codec.json").is_file():
            encoded.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{data_key}.", dir=encoded.parent))
            encode_dataset(shards, index, cfg.encode, tmp, device=device, learned_codec=learned)
            _publish(tmp, encoded)
        else:
            say(f"encode: reused {encoded}")
        info = read_codec_info(encoded)
    with timer("embed"):
        clip_ids = index["clip_id"].tolist()
        pooled = load_encoded(encoded, clip_ids).pooled.numpy() if "text" in cfg.cluster.embedders else None
        x, _ = compute_embeddings(cfg.cluster, shards, index, pooled_text=pooled, device=device)
    return Shared(cfg, work, device, shards, index, attributes, encoded, info, x, data_key)

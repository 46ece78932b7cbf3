"""Ingestion: the source the config names -> clip shards + ClipIndex + quarantine, every kept clip given its role.

The built-in dataset is rendered here; the other sources have a module each (a manifest of real videos,
``lib.data.manifest``; long raw videos cut into scenes, ``lib.data.raw``; WebDataset tar shards,
``lib.data.webdataset_source``), and what they share (the quarantine, the quality filter's writer, the bad-fraction
check, the result) is ``lib.data.quarantine``.
"""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd

from data_schemas.ingest import ClipAttributes, ClipIndex, QuarantineRecord
from lib.config import DataConfig
from lib.data.manifest import ingest_manifest
from lib.data.procedural import World, iter_builtin_clips
from lib.data.quarantine import QUARANTINE_COLUMNS, IngestResult
from lib.data.raw import ingest_raw
from lib.data.shards import ShardWriter
from lib.data.split import assign_roles
from lib.data.webdataset_source import ingest_webdataset


def ingest_builtin(cfg: DataConfig, seed: int, out_dir: str | Path) -> IngestResult:
    """Render the procedural dataset into shards."""
    t0 = time.perf_counter()
    writer = ShardWriter(out_dir, cfg.shard_size, source="builtin")
    attributes = []
    clips = iter_builtin_clips(
        seed, cfg.num_clips, cfg.frames, cfg.height, cfg.width, cfg.max_objects, themed=cfg.themed_scenes,
        scenes=tuple(cfg.scenes), world=World(cfg.num_families, cfg.family_overlap),
    )  # fmt: skip
    for clip in clips:
        writer.add(clip.clip_id, clip.frames, clip.caption)
        attributes.append(clip.attributes)
    index = writer.close()
    attrs = ClipAttributes.validate(pd.DataFrame(attributes))
    quarantine = QuarantineRecord.validate(pd.DataFrame(columns=QUARANTINE_COLUMNS))
    return IngestResult(index, quarantine, attrs, time.perf_counter() - t0)


def ingest(
    cfg: DataConfig,
    seed: int,
    out_dir: str | Path,
    videos: list | None = None,
    cuts: list[pd.DataFrame | None] | None = None,
) -> IngestResult:
    """Ingest from whichever source the config names, and give every kept clip its role (lib.data.split).

    ``videos``/``cuts``: for ``source: raw``, the listed RawVideos and their SceneWindow tables when a Flyte map task
    already cut them (None for a video whose cutting crashed); when omitted, videos are listed and cut here in turn.
    """
    if cfg.source == "raw":
        result = ingest_raw(cfg, out_dir, videos, cuts)
    elif cfg.source == "webdataset":
        result = ingest_webdataset(cfg, out_dir)
    else:
        result = ingest_builtin(cfg, seed, out_dir) if cfg.source == "builtin" else ingest_manifest(cfg, out_dir)
    roles = assign_roles(
        result.index["clip_id"].tolist(), seed, cfg.validation_fraction, cfg.reference_fraction, cfg.prompt_fraction
    )
    result.index = ClipIndex.validate(result.index.assign(role=roles))
    return result

"""``data.source: manifest``: a CSV or Parquet table of real videos -> clip shards + ClipIndex + quarantine.

Rows are processed one at a time and written through a ShardWriter, so memory is bounded by one shard
whatever the manifest's length; a row that cannot give a clip is quarantined (``lib.data.quarantine``).

A source slower than ``data.fps`` fills its clip by repeating frames (sample-and-hold, ``lib.data.video``): each
clip's ``held_frames`` are on the ClipIndex and the clips holding any are counted in the report, or quarantined as
``held_frames`` with ``data.quarantine_held_frames``. A manifest row repeating an earlier row's path, start and end
is quarantined as ``duplicate_source``, the one duplicate a manifest without a clip id column can still show.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path

import fsspec
import pandas as pd

from data_schemas.ingest import ClipAttributes, QuarantineRecord, VideoManifest
from lib.config import DataConfig
from lib.data.columns import ColumnError, map_columns
from lib.data.quarantine import (
    QUARANTINE_COLUMNS,
    FilteringShardWriter,
    IngestResult,
    ManifestError,
    caption_problem,
    check_bad_fraction,
    held_problem,
)
from lib.data.video import VideoDecodeError, decode_window

log = logging.getLogger(__name__)


def read_table(uri: str, what: str) -> pd.DataFrame:
    """A CSV (every cell a string, nothing read as NaN, bad bytes replaced) or Parquet table; errors name ``what``."""
    kind = "Parquet" if uri.lower().endswith(".parquet") else "CSV"
    try:
        with fsspec.open(uri, "rb") as f:
            if kind == "Parquet":
                return pd.read_parquet(f)
            return pd.read_csv(f, dtype=object, keep_default_na=False, na_values=[], encoding_errors="replace")
    except FileNotFoundError as exc:
        raise ManifestError(f"{uri}: {what} not found") from exc
    except (ValueError, OSError, pd.errors.ParserError) as exc:
        raise ManifestError(f"{uri}: cannot read {what} as {kind}: {exc}") from exc


def read_manifest(uri: str, columns: Mapping[str, str] | None = None) -> pd.DataFrame:
    """Read a CSV or Parquet manifest. Missing required columns are an error naming the file.

    ``columns`` is ``data.columns`` (project column -> user column, ``lib.data.columns``); Open-Sora's names
    (``text`` for the caption) are recognised without it.

    Caption bytes that are not UTF-8 are decoded with replacement characters so that the row can be
    quarantined as ``caption_not_utf8`` instead of failing the whole file.
    """
    df = read_table(uri, "manifest")
    try:
        df = map_columns(df, columns or {}, uri)
    except ColumnError as exc:
        raise ManifestError(str(exc)) from None
    for column in ("start", "end"):
        if column in df.columns:
            df[column] = pd.to_numeric(df[column].replace("", None), errors="coerce")
    df["path"] = df["path"].astype(str)
    if "clip_id" in df.columns:
        df["clip_id"] = df["clip_id"].astype(str)
    return VideoManifest.validate(df)


def _resolve(path: str, manifest_uri: str) -> str:
    """Relative paths in a manifest are relative to the manifest's own folder."""
    if "://" in path or path.startswith("/"):
        return path
    return f"{manifest_uri.rsplit('/', 1)[0]}/{path}" if "/" in manifest_uri else path


def ingest_manifest(cfg: DataConfig, out_dir: str | Path, source: str = "manifest") -> IngestResult:
    """Decode every manifest row into a clip, quarantining the rows that cannot give one and setting aside (as
    FilteredClip rows) the clips a quality rule refuses. ``source`` is the ClipIndex source (``raw`` when the
    manifest holds scene windows)."""
    t0 = time.perf_counter()
    manifest = read_manifest(cfg.manifest, cfg.columns)
    if "clip_id" not in manifest.columns:
        log.warning("%s: no clip id column (data.columns.clip_id), so clips are named row-NNNNNNN and a video listed "
                    "twice cannot be told by its id; only a row repeating an earlier row's path, start and end is "
                    "quarantined (duplicate_source)", cfg.manifest)  # fmt: skip
    writer = FilteringShardWriter(cfg, out_dir, source)
    quarantine: list[dict[str, object]] = []
    seen: set[str] = set()
    sources: dict[tuple[str, float, float | None], int] = {}  # (path, start, end) of decoded rows -> the first row
    for row, rec in enumerate(manifest.to_dict("records")):
        clip_id = str(rec.get("clip_id") or f"row-{row:07d}")
        path = _resolve(rec["path"], cfg.manifest)

        def refuse(reason: str, detail: str, row=row, clip_id=clip_id, path=path) -> None:
            quarantine.append({"row": row, "clip_id": clip_id, "path": path, "reason": reason, "detail": detail})
            log.warning("%s:%d: %s (%s): %s", cfg.manifest, row, reason, path, detail)

        if clip_id in seen:
            refuse("duplicate_id", f"clip id {clip_id!r} already used by an earlier row")
            continue
        seen.add(clip_id)
        problem = caption_problem(rec["caption"])
        if problem:
            refuse(*problem)
            continue
        start, end = rec.get("start"), rec.get("end")
        start = 0.0 if start is None or pd.isna(start) else float(start)
        end = None if end is None or pd.isna(end) else float(end)
        if start < 0 or (end is not None and end <= start):
            refuse("bad_time_range", f"start={rec.get('start')!r}, end={rec.get('end')!r}")
            continue
        if (path, start, end) in sources:
            refuse("duplicate_source", f"same path, start and end as row {sources[path, start, end]}")
            continue
        try:
            with fsspec.open(path, "rb") as f:
                clip = decode_window(f, cfg.frames, cfg.fps, cfg.height, cfg.width, start, end, cfg.max_source_pixels)
        except FileNotFoundError:
            refuse("missing_file", "no such file")
            continue
        except VideoDecodeError as exc:
            refuse(exc.reason, exc.detail)
            continue
        sources[path, start, end] = row
        problem = held_problem(clip, cfg)
        if problem:
            refuse(*problem)
            continue
        writer.add(row, clip_id, path, start, end, clip, rec["caption"].strip())
    index, filtered_df = writer.close()
    quarantine_df = QuarantineRecord.validate(pd.DataFrame(quarantine, columns=QUARANTINE_COLUMNS))
    check_bad_fraction(quarantine_df, len(manifest), cfg.max_bad_fraction, cfg.manifest)
    attrs = ClipAttributes.validate(pd.DataFrame(columns=list(ClipAttributes.to_schema().columns)))
    return IngestResult(index, quarantine_df, attrs, time.perf_counter() - t0, filtered_df)

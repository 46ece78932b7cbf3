"""Ingestion: the built-in dataset or a manifest of real videos -> clip shards + ClipIndex + quarantine.

Rows are processed one at a time and written through a ShardWriter, so memory is bounded by one shard
whatever the manifest's length. A bad row never stops the run by itself: it becomes a QuarantineRecord
with a reason. The run fails only when the quarantined fraction passes ``data.max_bad_fraction``, and
the error then lists the counts per reason and a few examples.

A source slower than ``data.fps`` fills its clip by repeating frames (sample-and-hold, ``lib.data.video``): each
clip's ``held_frames`` are on the ClipIndex and the clips holding any are counted in the report, or quarantined as
``held_frames`` with ``data.quarantine_held_frames``. A manifest row repeating an earlier row's path, start and end
is quarantined as ``duplicate_source``, the one duplicate a manifest without a clip id column can still show.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import fsspec
import pandas as pd

from data_schemas.ingest import ClipAttributes, ClipIndex, FilteredClip, QuarantineRecord, VideoManifest
from lib.config import DataConfig
from lib.data.columns import ColumnError, map_columns
from lib.data.filters import ClipScores, QualityFilter
from lib.data.procedural import iter_builtin_clips
from lib.data.shards import ShardWriter
from lib.data.split import assign_roles, role_counts
from lib.data.video import DecodedClip, VideoDecodeError, decode_window

log = logging.getLogger(__name__)

QUARANTINE_COLUMNS = ["row", "clip_id", "path", "reason", "detail"]
FILTERED_COLUMNS = list(FilteredClip.to_schema().columns)


def empty_filtered() -> pd.DataFrame:
    return FilteredClip.validate(pd.DataFrame(columns=FILTERED_COLUMNS))


class FilteringShardWriter:
    """Shards of the decoded clips the quality rules (``lib.data.filters``) keep, each clip's scores on the index;
    the clips a rule refuses become FilteredClip rows with their scores and the rule, never silently dropped.
    Every decoding ingest (manifest, raw windows, WebDataset) writes through it."""

    def __init__(self, cfg: DataConfig, out_dir: str | Path, source: str) -> None:
        self.writer = ShardWriter(out_dir, cfg.shard_size, source=source)
        self.quality = QualityFilter(cfg)
        self.scores: list[ClipScores] = []
        self.held: list[int] = []
        self.filtered: list[dict[str, object]] = []

    def add(
        self, row: int, clip_id: str, path: str, start: float, end: float | None, clip: DecodedClip, caption: str
    ) -> None:
        frames = clip.frames
        score = self.quality.score(frames)
        verdict = self.quality.verdict(score)
        if verdict:
            self.filtered.append({"row": row, "clip_id": clip_id, "path": path, "start": start, "end": end,
                                  "motion": score.motion, "aesthetic": score.aesthetic, "rule": verdict[0],
                                  "detail": verdict[1]})  # fmt: skip
            return
        self.writer.add(clip_id, frames, caption)
        self.scores.append(score)
        self.held.append(clip.held)

    def close(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        """The ClipIndex (with ``motion``, ``aesthetic`` and ``held_frames``) and the FilteredClip table."""
        index = self.writer.close().assign(motion=[s.motion for s in self.scores],
                                           aesthetic=[s.aesthetic for s in self.scores],
                                           held_frames=self.held)  # fmt: skip
        return index, FilteredClip.validate(pd.DataFrame(self.filtered, columns=FILTERED_COLUMNS))


class ManifestError(ValueError):
    """A manifest that cannot be read as a table of videos at all (as opposed to single bad rows)."""


class TooManyBadRows(ValueError):
    """The quarantined fraction passed the configured threshold."""


@dataclass
class IngestResult:
    index: pd.DataFrame  # ClipIndex
    quarantine: pd.DataFrame  # QuarantineRecord
    attributes: pd.DataFrame  # ClipAttributes (empty for manifests)
    seconds: float
    # FilteredClip: decodable clips a quality rule (lib.data.filters) kept out of the shards
    filtered: pd.DataFrame = field(default_factory=empty_filtered)

    def summary(self) -> str:
        reasons = Counter(self.quarantine["reason"]) if len(self.quarantine) else {}
        shards = self.index["shard"].nunique()
        text = f"{len(self.index)} clips in {shards} shard(s), {len(self.quarantine)} quarantined"
        if reasons:
            text += " (" + ", ".join(f"{r}: {n}" for r, n in sorted(reasons.items())) + ")"
        rules = Counter(self.filtered["rule"]) if len(self.filtered) else {}
        text += f", {len(self.filtered)} filtered"
        if rules:
            text += " (" + ", ".join(f"{r}: {n}" for r, n in sorted(rules.items())) + ")"
        if "held_frames" in self.index.columns:
            text += f", {held_line(self.index)}"
        rate = len(self.index) / self.seconds if self.seconds > 0 else float("inf")
        roles = ", ".join(f"{r} {n}" for r, n in role_counts(self.index).items())
        return f"{text}; roles: {roles}; {self.seconds:.1f} s, {rate:.0f} clips/s"


def ingest_builtin(cfg: DataConfig, seed: int, out_dir: str | Path) -> IngestResult:
    """Render the procedural dataset into shards."""
    t0 = time.perf_counter()
    writer = ShardWriter(out_dir, cfg.shard_size, source="builtin")
    attributes = []
    clips = iter_builtin_clips(
        seed, cfg.num_clips, cfg.frames, cfg.height, cfg.width, cfg.max_objects, themed=cfg.themed_scenes,
        scenes=tuple(cfg.scenes),
    )
    for clip in clips:
        writer.add(clip.clip_id, clip.frames, clip.caption)
        attributes.append(clip.attributes)
    index = writer.close()
    attrs = ClipAttributes.validate(pd.DataFrame(attributes))
    quarantine = QuarantineRecord.validate(pd.DataFrame(columns=QUARANTINE_COLUMNS))
    return IngestResult(index, quarantine, attrs, time.perf_counter() - t0)


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


def held_line(index: pd.DataFrame) -> str:
    """How many kept clips hold frames, for the ingest report (the ClipIndex of a decoding source)."""
    held = int((index["held_frames"] > 0).sum())
    return f"{held} clip(s) with held frames (source slower than data.fps, frames repeated to fill)"


def held_problem(clip: DecodedClip, cfg: DataConfig) -> tuple[str, str] | None:
    """``held_frames`` when the config quarantines clips whose source is too slow to fill them without repeats."""
    if not (cfg.quarantine_held_frames and clip.held):
        return None
    detail = f"source at {clip.source_fps:g} fps < data.fps {cfg.fps:g}: {clip.held} of {len(clip.frames)} frames"
    return "held_frames", f"{detail} repeat the one before (data.quarantine_held_frames)"


def caption_problem(caption: object) -> tuple[str, str] | None:
    if caption is None or (isinstance(caption, float) and math.isnan(caption)):
        return "empty_caption", "caption is missing"
    if not isinstance(caption, str):
        return "non_text_caption", f"caption is {type(caption).__name__} {caption!r}"
    if "\ufffd" in caption:
        return "caption_not_utf8", f"caption bytes are not valid UTF-8: {caption!r}"
    if not caption.strip():
        return "empty_caption", "caption is blank"
    return None


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


def check_bad_fraction(quarantine: pd.DataFrame, total: int, threshold: float, where: str) -> None:
    """Fail with counts per reason and examples when too many rows were quarantined."""
    bad = len(quarantine)
    if total == 0:
        raise ManifestError(f"{where}: manifest has no rows")
    if bad / total <= threshold:
        return
    counts = ", ".join(f"{r}: {n}" for r, n in sorted(Counter(quarantine["reason"]).items()))
    examples = "; ".join(f"row {r.row} {r.path}: {r.reason} ({r.detail})" for r in quarantine.head(5).itertuples())
    raise TooManyBadRows(
        f"{where}: {bad}/{total} rows quarantined ({bad / total:.0%} > data.max_bad_fraction={threshold:.0%}); "
        f"by reason: {counts}; examples: {examples}"
    )


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
        from lib.data.raw import ingest_raw  # here: it builds on this module's manifest ingestion

        result = ingest_raw(cfg, out_dir, videos, cuts)
    elif cfg.source == "webdataset":
        from lib.data.webdataset_source import ingest_webdataset  # here: it imports this module's helpers

        result = ingest_webdataset(cfg, out_dir)
    else:
        result = ingest_builtin(cfg, seed, out_dir) if cfg.source == "builtin" else ingest_manifest(cfg, out_dir)
    roles = assign_roles(
        result.index["clip_id"].tolist(), seed, cfg.validation_fraction, cfg.reference_fraction, cfg.prompt_fraction
    )
    result.index = ClipIndex.validate(result.index.assign(role=roles))
    return result

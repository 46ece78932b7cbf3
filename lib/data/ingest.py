"""Ingestion: the built-in dataset or a manifest of real videos -> clip shards + ClipIndex + quarantine.

Rows are processed one at a time and written through a ShardWriter, so memory is bounded by one shard
whatever the manifest's length. A bad row never stops the run by itself: it becomes a QuarantineRecord
with a reason. The run fails only when the quarantined fraction passes ``data.max_bad_fraction``, and
the error then lists the counts per reason and a few examples.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import fsspec
import pandas as pd

from data_schemas.ingest import ClipAttributes, ClipIndex, QuarantineRecord, VideoManifest
from lib.config import DataConfig
from lib.data.procedural import iter_builtin_clips
from lib.data.shards import ShardWriter
from lib.data.split import assign_roles, role_counts
from lib.data.video import VideoDecodeError, decode_clip

log = logging.getLogger(__name__)

QUARANTINE_COLUMNS = ["row", "clip_id", "path", "reason", "detail"]


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

    def summary(self) -> str:
        reasons = Counter(self.quarantine["reason"]) if len(self.quarantine) else {}
        shards = self.index["shard"].nunique()
        text = f"{len(self.index)} clips in {shards} shard(s), {len(self.quarantine)} quarantined"
        if reasons:
            text += " (" + ", ".join(f"{r}: {n}" for r, n in sorted(reasons.items())) + ")"
        rate = len(self.index) / self.seconds if self.seconds > 0 else float("inf")
        roles = ", ".join(f"{r} {n}" for r, n in role_counts(self.index).items())
        return f"{text}; roles: {roles}; {self.seconds:.1f} s, {rate:.0f} clips/s"


def ingest_builtin(cfg: DataConfig, seed: int, out_dir: str | Path) -> IngestResult:
    """Render the procedural dataset into shards."""
    t0 = time.perf_counter()
    writer = ShardWriter(out_dir, cfg.shard_size, source="builtin")
    attributes = []
    clips = iter_builtin_clips(
        seed, cfg.num_clips, cfg.frames, cfg.height, cfg.width, cfg.max_objects, themed=cfg.themed_scenes
    )
    for clip in clips:
        writer.add(clip.clip_id, clip.frames, clip.caption)
        attributes.append(clip.attributes)
    index = writer.close()
    attrs = ClipAttributes.validate(pd.DataFrame(attributes))
    quarantine = QuarantineRecord.validate(pd.DataFrame(columns=QUARANTINE_COLUMNS))
    return IngestResult(index, quarantine, attrs, time.perf_counter() - t0)


def read_manifest(uri: str) -> pd.DataFrame:
    """Read a CSV or Parquet manifest. Missing required columns are an error naming the file.

    Caption bytes that are not UTF-8 are decoded with replacement characters so that the row can be
    quarantined as ``caption_not_utf8`` instead of failing the whole file.
    """
    try:
        with fsspec.open(uri, "rb") as f:
            if uri.endswith(".parquet"):
                df = pd.read_parquet(f)
            else:
                df = pd.read_csv(f, dtype=object, keep_default_na=False, na_values=[], encoding_errors="replace")
    except FileNotFoundError as exc:
        raise ManifestError(f"{uri}: manifest not found") from exc
    except (ValueError, OSError, pd.errors.ParserError) as exc:
        raise ManifestError(
            f"{uri}: cannot read manifest as {'Parquet' if uri.endswith('.parquet') else 'CSV'}: {exc}"
        ) from exc
    missing = [c for c in ("path", "caption") if c not in df.columns]
    if missing:
        raise ManifestError(f"{uri}: missing required column(s) {', '.join(missing)}; found {list(df.columns)}")
    for column in ("start", "end"):
        if column in df.columns:
            df[column] = pd.to_numeric(df[column].replace("", None), errors="coerce")
    df["path"] = df["path"].astype(str)
    if "clip_id" in df.columns:
        df["clip_id"] = df["clip_id"].astype(str)
    return VideoManifest.validate(df)


def _caption_problem(caption: object) -> tuple[str, str] | None:
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


def ingest_manifest(cfg: DataConfig, out_dir: str | Path) -> IngestResult:
    """Decode every manifest row into a clip, quarantining the rows that cannot give one."""
    t0 = time.perf_counter()
    manifest = read_manifest(cfg.manifest)
    writer = ShardWriter(out_dir, cfg.shard_size, source="manifest")
    quarantine: list[dict[str, object]] = []
    seen: set[str] = set()
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
        problem = _caption_problem(rec["caption"])
        if problem:
            refuse(*problem)
            continue
        start, end = rec.get("start"), rec.get("end")
        start = 0.0 if start is None or pd.isna(start) else float(start)
        end = None if end is None or pd.isna(end) else float(end)
        if start < 0 or (end is not None and end <= start):
            refuse("bad_time_range", f"start={rec.get('start')!r}, end={rec.get('end')!r}")
            continue
        try:
            with fsspec.open(path, "rb") as f:
                frames = decode_clip(f, cfg.frames, cfg.fps, cfg.height, cfg.width, start, end, cfg.max_source_pixels)
        except FileNotFoundError:
            refuse("missing_file", "no such file")
            continue
        except VideoDecodeError as exc:
            refuse(exc.reason, exc.detail)
            continue
        writer.add(clip_id, frames, rec["caption"].strip())
    index = writer.close()
    quarantine_df = QuarantineRecord.validate(pd.DataFrame(quarantine, columns=QUARANTINE_COLUMNS))
    check_bad_fraction(quarantine_df, len(manifest), cfg.max_bad_fraction, cfg.manifest)
    attrs = ClipAttributes.validate(pd.DataFrame(columns=list(ClipAttributes.to_schema().columns)))
    return IngestResult(index, quarantine_df, attrs, time.perf_counter() - t0)


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


def ingest(cfg: DataConfig, seed: int, out_dir: str | Path) -> IngestResult:
    """Ingest from whichever source the config names, and give every kept clip its role (lib.data.split)."""
    result = ingest_builtin(cfg, seed, out_dir) if cfg.source == "builtin" else ingest_manifest(cfg, out_dir)
    roles = assign_roles(
        result.index["clip_id"].tolist(), seed, cfg.validation_fraction, cfg.reference_fraction, cfg.prompt_fraction
    )
    result.index = ClipIndex.validate(result.index.assign(role=roles))
    return result

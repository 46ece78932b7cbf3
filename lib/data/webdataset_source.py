"""WebDataset tar shards as a source (``data.source: webdataset``), streamed with manifest ingestion's quarantine.

A sample is the tar members sharing a key: a video (``<key>.mp4``; also webm/mkv/avi/mov) and a caption as
``<key>.txt`` or a field of ``<key>.json`` (``caption``, Open-Sora's ``text``, or the key ``data.columns.caption``
names; ``data.columns.clip_id``/``start``/``end`` read the JSON too). Without a mapped ``clip_id`` the sample key
is the clip id.

Why webdataset's tar iterators and not its ``WebDataset`` pipeline: the pipeline's error handlers either raise
(one bad shard stops the run) or skip (a silent drop). Here each shard is opened through fsspec, so any path or
URI the rest of the project reads works (``s3://bucket/train-{0000..0099}.tar``), one shard and one sample at a
time, and every failure becomes a QuarantineRecord: a shard that is missing or cannot be read as a tar (truncated,
corrupt) gets one row for the shard with the error, a sample without its video or caption member gets
``missing_member``, a JSON member that does not parse gets ``bad_json``; videos and captions are then checked
exactly as manifest rows are. ``row`` counts samples (and shard-level failures) in reading order; ``path`` is
``<shard url>#<key>``.
"""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import fsspec
import pandas as pd
from webdataset.shardlists import expand_urls
from webdataset.tariterators import group_by_keys, tar_file_expander

from data_schemas.ingest import ClipAttributes, QuarantineRecord
from lib.config import DataConfig
from lib.data.columns import ColumnError, source_column
from lib.data.quarantine import (
    QUARANTINE_COLUMNS,
    FilteringShardWriter,
    IngestResult,
    caption_problem,
    check_bad_fraction,
    held_problem,
)
from lib.data.video import DecodedClip, VideoDecodeError, decode_window

log = logging.getLogger(__name__)

VIDEO_MEMBERS = ("mp4", "webm", "mkv", "avi", "mov")  # first one present is the sample's video


class Refused(Exception):
    """One sample that cannot give a clip: ``reason`` is a QuarantineRecord reason."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


def shard_urls(pattern: str) -> list[str]:
    """Every shard URL of ``data.webdataset``: brace patterns expanded, ``::`` separating several patterns."""
    return [u for u in expand_urls(pattern) if u]


def iter_samples(urls: list[str], on_shard_error: Callable[[str, str, str], None]) -> Iterator[dict[str, Any]]:
    """WebDataset samples (``__key__``, ``__url__`` and one bytes value per member extension), shard by shard.

    A shard that cannot be opened or read to its end is reported through ``on_shard_error(url, reason, detail)``;
    the samples read from it before the failure are still yielded (the last one possibly without members).
    """
    for url in urls:
        errors: list[BaseException] = []

        def keep_going(exc: BaseException, errors: list[BaseException] = errors) -> bool:
            errors.append(exc)
            return True  # go on with the next member or shard; the error is reported below, not dropped

        try:
            with fsspec.open(url, "rb") as stream:
                files = tar_file_expander([{"url": url, "stream": stream}], handler=keep_going)
                yield from group_by_keys(files, handler=keep_going)
        except FileNotFoundError:
            on_shard_error(url, "missing_file", "no such tar shard")
            continue
        except OSError as exc:
            on_shard_error(url, "unreadable", f"cannot open tar shard: {exc}")
            continue
        for exc in errors:
            on_shard_error(url, "unreadable", f"tar shard cannot be read: {exc.args[0] if exc.args else exc!r}")


def _metadata(sample: dict[str, Any]) -> dict[str, Any]:
    """The sample's JSON member as a dict ({} without one)."""
    if "json" not in sample:
        return {}
    try:
        meta = json.loads(sample["json"].decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise Refused("bad_json", f"json member does not parse: {exc}") from None
    if not isinstance(meta, dict):
        raise Refused("bad_json", f"json member is a {type(meta).__name__}, not an object")
    return meta


def _field(meta: dict[str, Any], project: str, columns: dict[str, str]) -> Any:
    """Project field ``project`` from the JSON metadata (None when absent); a mapped key must be there."""
    try:
        key = source_column(project, meta, columns)
    except ColumnError as exc:
        raise Refused("missing_member", f"json member: {exc}") from None
    return None if key is None else meta[key]


def _caption(sample: dict[str, Any], meta: dict[str, Any], columns: dict[str, str]) -> object:
    """A mapped JSON key wins; else the txt member; else the JSON's caption/text."""
    if "caption" not in columns and "txt" in sample:
        return sample["txt"].decode("utf-8", errors="replace")  # invalid bytes -> caption_not_utf8
    caption = _field(meta, "caption", columns)
    if caption is None:
        members = ", ".join(sorted(k for k in sample if not k.startswith("__"))) or "none"
        raise Refused("missing_member", f"no caption: no txt member and no caption/text in json (members: {members})")
    return caption


def _clip(sample: dict[str, Any], cfg: DataConfig) -> tuple[str, str, DecodedClip, float, float | None]:
    """(clip id, caption, decoded clip, start, end) of one sample, or Refused with its quarantine reason."""
    meta = _metadata(sample)
    clip_id = _field(meta, "clip_id", cfg.columns)
    clip_id = str(sample["__key__"] if clip_id is None else clip_id)
    video = next((sample[ext] for ext in VIDEO_MEMBERS if ext in sample), None)
    if video is None:
        members = ", ".join(sorted(k for k in sample if not k.startswith("__"))) or "none"
        raise Refused("missing_member", f"no video member ({'/'.join(VIDEO_MEMBERS)}); members: {members}")
    caption = _caption(sample, meta, cfg.columns)
    problem = caption_problem(caption)
    if problem:
        raise Refused(*problem)
    start, end = _field(meta, "start", cfg.columns), _field(meta, "end", cfg.columns)
    try:
        start = 0.0 if start is None else float(start)
        end = None if end is None else float(end)
    except (TypeError, ValueError):
        raise Refused("bad_time_range", f"start={start!r}, end={end!r}") from None
    if start < 0 or (end is not None and end <= start):
        raise Refused("bad_time_range", f"start={start!r}, end={end!r}")
    try:
        clip = decode_window(
            io.BytesIO(video), cfg.frames, cfg.fps, cfg.height, cfg.width, start, end, cfg.max_source_pixels
        )
    except VideoDecodeError as exc:
        raise Refused(exc.reason, exc.detail) from None
    problem = held_problem(clip, cfg)
    if problem:
        raise Refused(*problem)
    return clip_id, caption.strip(), clip, start, end


def ingest_webdataset(cfg: DataConfig, out_dir: str | Path) -> IngestResult:
    """Decode every sample of the tar shards into a clip, quarantining the samples (and shards) that give none."""
    t0 = time.perf_counter()
    urls = shard_urls(cfg.webdataset)
    writer = FilteringShardWriter(cfg, out_dir, "webdataset")
    quarantine: list[dict[str, object]] = []
    seen: set[str] = set()

    def refuse(clip_id: str, path: str, reason: str, detail: str) -> None:
        quarantine.append({"row": rows, "clip_id": clip_id, "path": path, "reason": reason, "detail": detail})
        log.warning("%s: %s: %s", path, reason, detail)

    def shard_error(url: str, reason: str, detail: str) -> None:
        nonlocal rows
        refuse(url.rsplit("/", 1)[-1], url, reason, detail)
        rows += 1

    rows = 0
    for sample in iter_samples(urls, shard_error):
        path = f"{sample['__url__']}#{sample['__key__']}"
        try:
            clip_id, caption, clip, start, end = _clip(sample, cfg)
            if clip_id in seen:
                raise Refused("duplicate_id", f"clip id {clip_id!r} already used by an earlier sample")
            seen.add(clip_id)
            writer.add(rows, clip_id, path, start, end, clip, caption)
        except Refused as exc:
            refuse(str(sample["__key__"]), path, exc.reason, exc.detail)
        rows += 1
    index, filtered_df = writer.close()
    quarantine_df = QuarantineRecord.validate(pd.DataFrame(quarantine, columns=QUARANTINE_COLUMNS))
    check_bad_fraction(quarantine_df, rows, cfg.max_bad_fraction, cfg.webdataset)
    attrs = ClipAttributes.validate(pd.DataFrame(columns=list(ClipAttributes.to_schema().columns)))
    return IngestResult(index, quarantine_df, attrs, time.perf_counter() - t0, filtered_df)

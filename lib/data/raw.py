"""``data.source: raw``: long videos as users hold them -> scenes -> clip windows -> the manifest ingestion.

Three steps, each bounded in memory by one video's decode:

1. ``list_raw_videos``: ``data.raw`` is a folder (searched recursively for video files), a glob, or a CSV/Parquet
   manifest with a ``path`` column and optional ``caption``/``clip_id`` columns (``data.columns`` maps other names),
   local or any fsspec URI. The order is sorted, so video rows and clip ids are stable.
2. ``cut_video`` (one Flyte map-task element per video): the caption comes from the manifest or from a sidecar text
   file next to the video (``video.mp4`` -> ``video.txt``, UTF-8); a video with neither is quarantined as
   ``no_caption``, never given an invented caption. Scenes come from ``lib.data.scenes``; each gives clip windows.
   Any failure of one video (missing, corrupt, undecodable) is a refusal row naming the video, not an exception.
3. ``ingest_raw``: the windows are written as a manifest (``path, caption, clip_id, start, end``) and decoded by
   ``lib.data.manifest.ingest_manifest`` like any user manifest (quality filters included); refusals from cutting join
   its quarantine, and the bad fraction is checked over windows and refusals together.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath

import av
import fsspec
import pandas as pd
from fsspec.implementations.local import LocalFileSystem
from scenedetect import VideoOpenFailure

from data_schemas.ingest import ClipAttributes, QuarantineRecord
from data_schemas.raw import SceneWindow
from lib.config import DataConfig
from lib.data.columns import ColumnError, source_column
from lib.data.manifest import ingest_manifest, read_table
from lib.data.quarantine import QUARANTINE_COLUMNS, IngestResult, ManifestError, caption_problem, check_bad_fraction
from lib.data.scenes import SceneOpenError, ScenePlan, detect_scenes, scene_windows
from lib.data.shards import ShardWriter
from lib.io import atomic_write

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".mov", ".webm", ".avi", ".m4v", ".mpg", ".mpeg", ".ts", ".flv", ".wmv")
SIDECAR_SUFFIX = ".txt"
SCENES_FILE = "scenes.parquet"  # every SceneWindow row of the run, next to the shards (provenance)
WINDOWS_FILE = "windows.parquet"  # the window rows as a manifest, what ingest_manifest reads
WINDOW_COLUMNS = list(SceneWindow.to_schema().columns)


@dataclass(frozen=True)
class RawVideo:
    """One long video to cut. ``caption`` is the manifest's caption, or None: read the sidecar file."""

    row: int
    video_id: str
    path: str
    caption: str | None = None


def _is_manifest(spec: str) -> bool:
    return spec.lower().endswith((".csv", ".parquet"))


def _video_id(path: str) -> str:
    """A clip-id-safe stem: characters other than letters, digits, ``-_.`` become ``_``."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", PurePosixPath(path).stem) or "video"


def _unique_ids(ids: list[str]) -> list[str]:
    """Ids made unique by suffixing ``-<row>`` to every id that occurs more than once."""
    counts = pd.Series(ids).value_counts()
    return [f"{v}-{row}" if counts[v] > 1 else v for row, v in enumerate(ids)]


def _read_raw_manifest(uri: str, columns: Mapping[str, str]) -> list[RawVideo]:
    df = read_table(uri, "data.raw manifest")
    try:
        path_col, caption_col, id_col = (source_column(c, df.columns, columns) for c in ("path", "caption", "clip_id"))
    except ColumnError as exc:
        raise ManifestError(f"{uri}: {exc}") from None
    if path_col is None:
        raise ManifestError(f"{uri}: data.raw manifest needs a path column; found {list(df.columns)}")
    base = uri.rsplit("/", 1)[0] if "/" in uri else "."
    paths = [p if "://" in p or p.startswith("/") else f"{base}/{p}" for p in df[path_col].astype(str)]
    ids = _unique_ids([str(v) for v in df[id_col]] if id_col else [_video_id(p) for p in paths])
    captions = df[caption_col].tolist() if caption_col else [None] * len(paths)
    # a blank caption cell falls back to the sidecar; anything else (non-text, broken bytes) is judged as given
    captions = [None if c is None or (isinstance(c, str) and not c.strip()) else c for c in captions]
    return [RawVideo(i, vid, p, c) for i, (vid, p, c) in enumerate(zip(ids, paths, captions, strict=True))]


def list_raw_videos(spec: str, columns: Mapping[str, str] | None = None) -> list[RawVideo]:
    """The videos ``data.raw`` names, in a stable order.

    Raises:
        ManifestError: the folder, glob or manifest is missing, unreadable or holds no video (naming ``spec``).
    """
    if _is_manifest(spec):
        videos = _read_raw_manifest(spec, columns or {})
    else:
        fs, root = fsspec.core.url_to_fs(spec)
        if any(c in spec for c in "*?["):
            found = fs.glob(root)
        elif fs.isdir(root):
            found = fs.find(root)
        else:
            raise ManifestError(f"{spec}: data.raw is neither a folder, a glob nor a .csv/.parquet manifest")
        found = sorted(p for p in found if p.lower().endswith(VIDEO_EXTENSIONS))
        paths = [p if isinstance(fs, LocalFileSystem) else fs.unstrip_protocol(p) for p in found]
        videos = [RawVideo(i, vid, p) for i, (vid, p) in enumerate(zip(_unique_ids(list(map(_video_id, paths))),
                                                                        paths, strict=True))]  # fmt: skip
    if not videos:
        raise ManifestError(f"{spec}: data.raw names no video files ({', '.join(VIDEO_EXTENSIONS)})")
    return videos


def sidecar_path(path: str) -> str:
    """``video.mp4`` -> ``video.txt`` (same folder, same URI scheme)."""
    return path[: len(path) - len(PurePosixPath(path).suffix)] + SIDECAR_SUFFIX


def video_caption(video: RawVideo) -> tuple[str | None, tuple[str, str] | None]:
    """(caption, None) or (None, (quarantine reason, detail)): manifest caption first, then the sidecar."""
    if video.caption is not None:
        problem = caption_problem(video.caption)
        return (None, problem) if problem else (video.caption.strip(), None)
    sidecar = sidecar_path(video.path)
    try:
        with fsspec.open(sidecar, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return None, ("no_caption", f"no caption in the manifest and no sidecar file {sidecar}")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        return None, ("caption_not_utf8", f"sidecar {sidecar} is not UTF-8: {exc}")
    if not text.strip():
        return None, ("empty_caption", f"sidecar {sidecar} is blank")
    return text.strip(), None


def cut_video(video: RawVideo, plan: ScenePlan) -> pd.DataFrame:
    """Scenes and clip windows of one video as a SceneWindow table; every failure is a refusal row."""
    rows: list[dict[str, object]] = []

    def add(clip_id: str, reason: str, detail: str, scene=-1, bounds=(math.nan, math.nan), window=(None, None)):
        rows.append({"video_row": video.row, "video_id": video.video_id, "path": video.path, "clip_id": clip_id,
                     "caption": "" if reason else caption, "scene": scene, "scene_start": bounds[0],
                     "scene_end": bounds[1], "start": window[0], "end": window[1], "reason": reason,
                     "detail": detail})  # fmt: skip
        if reason:
            log.warning("%s: %s: %s", video.path, reason, detail)

    caption, problem = video_caption(video)
    if problem:
        add(video.video_id, *problem)
        return SceneWindow.validate(pd.DataFrame(rows, columns=WINDOW_COLUMNS))
    try:
        with fsspec.open(video.path, "rb") as f:
            detected = detect_scenes(f, plan, name=video.video_id)
    except FileNotFoundError:
        add(video.video_id, "missing_file", "no such file")
    except SceneOpenError as exc:
        add(video.video_id, exc.reason, exc.detail)
    except (av.error.FFmpegError, VideoOpenFailure, OSError, ValueError, RuntimeError, EOFError) as exc:
        add(video.video_id, "unreadable", f"scene detection failed: {type(exc).__name__}: {exc}")
    else:
        for k, (s0, s1) in enumerate(detected.scenes):
            windows = scene_windows(s0, s1, plan, detected.source_fps)
            if not windows:
                add(f"{video.video_id}-s{k:04d}", "scene_too_short",
                    f"scene {k} [{s0:.3f}, {s1:.3f}) s lasts {s1 - s0:.3f} s; a clip needs {plan.window_seconds:g} s "
                    f"plus a frame at each cut, and data.min_scene_seconds is {plan.min_scene_seconds:g}",
                    k, (s0, s1))  # fmt: skip
            for w, window in enumerate(windows):
                add(f"{video.video_id}-s{k:04d}-w{w:03d}", "", "", k, (s0, s1), window)
    return SceneWindow.validate(pd.DataFrame(rows, columns=WINDOW_COLUMNS))


def cut_failed(video: RawVideo) -> pd.DataFrame:
    """The refusal row of a video whose cutting task crashed (its map-task element returned nothing)."""
    row = {"video_row": video.row, "video_id": video.video_id, "path": video.path, "clip_id": video.video_id,
           "caption": "", "scene": -1, "scene_start": math.nan, "scene_end": math.nan, "start": math.nan,
           "end": math.nan, "reason": "cut_failed", "detail": "its scene-cutting task failed"}  # fmt: skip
    return SceneWindow.validate(pd.DataFrame([row], columns=WINDOW_COLUMNS))


def ingest_raw(
    cfg: DataConfig,
    out_dir: str | Path,
    videos: list[RawVideo] | None = None,
    cuts: list[pd.DataFrame | None] | None = None,
) -> IngestResult:
    """Cut (unless ``cuts`` are given) and ingest the videos of ``data.raw``.

    Args:
        cfg: the data config (``source: raw``).
        out_dir: the shard folder; ``scenes.parquet`` and ``windows.parquet`` are written next to the shards.
        videos: the listed videos (listed here when None).
        cuts: one SceneWindow table per video, None where cutting crashed (cut here, in turn, when None).

    Returns:
        IngestResult whose quarantine rows count positions in ``scenes.parquet``.
    """
    videos = list_raw_videos(cfg.raw, cfg.columns) if videos is None else videos
    plan = ScenePlan.from_config(cfg)
    cuts = [cut_video(v, plan) for v in videos] if cuts is None else cuts
    parts = [cut_failed(v) if part is None else part for v, part in zip(videos, cuts, strict=True)]
    table = SceneWindow.validate(pd.concat(parts, ignore_index=True)) if parts else None
    if table is None or table.empty:
        raise ManifestError(f"{cfg.raw}: data.raw gave no video to cut")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(out_dir / SCENES_FILE, lambda tmp: table.to_parquet(tmp, index=False))
    is_window = table["reason"] == ""
    positions = table.index[is_window].to_numpy()  # window k of the manifest is row positions[k] of the table
    refused = table[~is_window]
    refusals = refused.assign(row=refused.index)[QUARANTINE_COLUMNS]
    if is_window.any():
        manifest = table.loc[is_window, ["path", "caption", "clip_id", "start", "end"]]
        atomic_write(out_dir / WINDOWS_FILE, lambda tmp: manifest.to_parquet(tmp, index=False))
        windows_cfg = replace(cfg, source="manifest", manifest=str(out_dir / WINDOWS_FILE), columns={},
                              max_bad_fraction=1.0)  # fmt: skip
        result = ingest_manifest(windows_cfg, out_dir, source="raw")
        result.quarantine["row"] = positions[result.quarantine["row"].to_numpy(dtype=int)]
        result.filtered["row"] = positions[result.filtered["row"].to_numpy(dtype=int)]
    else:  # every video refused: an empty index, and the bad-fraction check below says why
        index = ShardWriter(out_dir, cfg.shard_size, source="raw").close()
        index = index.assign(motion=[], aesthetic=[], held_frames=[])
        attrs = ClipAttributes.validate(pd.DataFrame(columns=list(ClipAttributes.to_schema().columns)))
        result = IngestResult(index, refusals.iloc[:0], attrs, 0.0)
    quarantine = pd.concat([refusals, result.quarantine], ignore_index=True).sort_values("row", kind="stable")
    result.quarantine = QuarantineRecord.validate(quarantine.reset_index(drop=True))
    check_bad_fraction(result.quarantine, len(table), cfg.max_bad_fraction, cfg.raw)
    return result

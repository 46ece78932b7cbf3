"""What every ingest source shares: the rows it sets aside, the check that stops a run, and the result it returns.

A bad row never stops the run by itself: it becomes a QuarantineRecord with a reason. The run fails only when the
quarantined fraction passes ``data.max_bad_fraction`` (``check_bad_fraction``), and the error then lists the counts
per reason and a few examples. A decodable clip that a quality rule refuses becomes a FilteredClip row
(``FilteringShardWriter``). The sources (the manifest, ``lib.data.manifest``; long raw videos, ``lib.data.raw``;
WebDataset shards, ``lib.data.webdataset_source``) and their dispatcher ``lib.data.ingest`` build on this module.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from data_schemas.ingest import FilteredClip
from lib.config import DataConfig
from lib.data.filters import ClipScores, QualityFilter
from lib.data.shards import ShardWriter
from lib.data.split import role_counts
from lib.data.video import DecodedClip

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

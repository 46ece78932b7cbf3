import logging
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from data_schemas.ingest import QUARANTINE_REASONS, ClipAttributes, ClipIndex, QuarantineRecord
from lib.config import DataConfig
from lib.data.ingest import ingest
from lib.data.manifest import read_manifest
from lib.data.procedural import THEMES, iter_builtin_clips
from lib.data.quarantine import ManifestError, TooManyBadRows
from lib.data.shards import load_clips
from lib.data.video import write_mp4


def test_builtin_ingest_writes_shards_and_tables(tmp_path, tiny_data_cfg):
    result = ingest(tiny_data_cfg, seed=4, out_dir=tmp_path)
    ClipIndex.validate(result.index)
    ClipAttributes.validate(result.attributes)
    assert len(result.index) == 24 and result.index["shard"].nunique() == 3
    assert list(result.attributes["clip_id"]) == list(result.index["clip_id"])
    assert result.quarantine.empty
    clips = load_clips(tmp_path, result.index, result.index["clip_id"][:2])
    expected = [c.frames for c in iter_builtin_clips(4, 2, 6, 16, 16)]
    assert np.array_equal(clips, np.stack(expected))


def test_builtin_ingest_honours_themed_scenes(tmp_path, tiny_data_cfg):
    attrs = ingest(replace(tiny_data_cfg, themed_scenes=True), seed=4, out_dir=tmp_path).attributes
    assert all(row.shape in THEMES[row.scene][0] and row.motion in THEMES[row.scene][1] for row in attrs.itertuples())


@pytest.fixture
def video_dir(tmp_path):
    for i, clip in enumerate(iter_builtin_clips(1, 3, 16, 24, 32)):
        write_mp4(tmp_path / f"v{i}.mp4", clip.frames, fps=8)
    (tmp_path / "garbage.mp4").write_bytes(b"x" * 300)
    (tmp_path / "zero.mp4").write_bytes(b"")
    (tmp_path / "truncated.mp4").write_bytes((tmp_path / "v0.mp4").read_bytes()[:500])
    write_mp4(tmp_path / "short.mp4", np.zeros((2, 16, 16, 3), dtype=np.uint8), fps=8)
    write_mp4(tmp_path / "huge.mp4", np.zeros((8, 64, 96, 3), dtype=np.uint8), fps=8)
    return tmp_path


def _manifest(directory, rows, name="m.csv", extra=b""):
    path = directory / name
    text = "path,caption,clip_id,start,end\n" + "".join(",".join(map(str, r)) + "\n" for r in rows)
    path.write_bytes(text.encode() + extra)
    return path


def _cfg(manifest, **kw):
    return DataConfig(
        source="manifest", manifest=str(manifest), frames=8, height=16, width=16, fps=8, max_source_pixels=64 * 64, **kw
    )


def test_every_bad_row_is_quarantined_with_its_reason(video_dir):
    rows = [
        ("v0.mp4", "a good clip", "a", "", ""),
        ("v1.mp4", "", "b", "", ""),  # empty caption
        ("v2.mp4", "dup", "a", "", ""),  # duplicate id
        ("nothere.mp4", "missing", "c", "", ""),
        ("garbage.mp4", "garbage", "d", "", ""),
        ("zero.mp4", "zero length", "e", "", ""),
        ("truncated.mp4", "truncated", "f", "", ""),
        ("short.mp4", "two frames", "g", "", ""),
        ("huge.mp4", "too big", "h", "", ""),
        ("v1.mp4", "backwards", "i", 1.0, 0.5),
        ("v2.mp4", "second window", "j", 0.5, 1.9),
    ]
    manifest = _manifest(video_dir, rows, extra="v1.mp4,caf\xe9 latin-1,k,,\n".encode("latin-1"))
    result = ingest(_cfg(manifest, max_bad_fraction=1.0), seed=0, out_dir=video_dir / "out")
    QuarantineRecord.validate(result.quarantine)
    got = dict(zip(result.quarantine["clip_id"], result.quarantine["reason"], strict=True))
    assert got == {
        "b": "empty_caption",
        "a": "duplicate_id",
        "c": "missing_file",
        "d": "unreadable",
        "e": "unreadable",
        "f": "unreadable",
        "g": "too_few_frames",
        "h": "frame_too_large",
        "i": "bad_time_range",
        "k": "caption_not_utf8",
    }
    assert list(result.index["clip_id"]) == ["a", "j"]
    assert len(result.index) + len(result.quarantine) == len(rows) + 1, "every row is kept or quarantined"
    assert set(result.quarantine["reason"]) <= set(QUARANTINE_REASONS)
    dup = result.quarantine.set_index("clip_id").loc["a"]
    assert dup["row"] == 2 and "already used" in dup["detail"]


def test_threshold_failure_names_counts_and_examples(video_dir):
    manifest = _manifest(
        video_dir, [("v0.mp4", "ok", "a", "", ""), ("nothere.mp4", "x", "b", "", ""), ("garbage.mp4", "y", "c", "", "")]
    )
    with pytest.raises(TooManyBadRows) as info:
        ingest(_cfg(manifest, max_bad_fraction=0.5), seed=0, out_dir=video_dir / "out")
    msg = str(info.value)
    assert "2/3 rows quarantined (67% > data.max_bad_fraction=50%)" in msg
    assert "missing_file: 1" in msg and "unreadable: 1" in msg and "nothere.mp4" in msg
    ok = ingest(_cfg(manifest, max_bad_fraction=0.7), seed=0, out_dir=video_dir / "out2")
    assert len(ok.index) == 1


def test_manifest_missing_columns_and_missing_file(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("file,text\na.mp4,hello\n")
    # ``text`` is Open-Sora's caption column (lib.data.columns), so only the path is missing
    with pytest.raises(ManifestError, match=r"bad.csv: missing required column\(s\) path; found \['file', 'text'\]"):
        read_manifest(str(bad))
    with pytest.raises(ManifestError, match="manifest not found"):
        read_manifest(str(tmp_path / "none.csv"))


def test_parquet_manifests_non_text_and_null_captions(video_dir):
    numbers = video_dir / "numbers.parquet"
    pd.DataFrame({"path": ["v0.mp4"], "caption": [12345]}).to_parquet(numbers)
    result = ingest(_cfg(numbers, max_bad_fraction=1.0), seed=0, out_dir=video_dir / "out")
    assert list(result.quarantine["reason"]) == ["non_text_caption"] and result.index.empty
    nulls = video_dir / "nulls.parquet"
    pd.DataFrame({"path": ["v0.mp4", str(video_dir / "v1.mp4")], "caption": [None, "fine"]}).to_parquet(nulls)
    result = ingest(_cfg(nulls, max_bad_fraction=1.0), seed=0, out_dir=video_dir / "out2")
    assert list(result.quarantine["reason"]) == ["empty_caption"]
    assert list(result.index["clip_id"]) == ["row-0000001"]  # absolute paths work too


def test_a_source_slower_than_data_fps_is_counted_and_can_be_quarantined(video_dir):
    write_mp4(video_dir / "slow.mp4", np.stack([c.frames[0] for c in iter_builtin_clips(3, 4, 1, 24, 32)]), fps=2)
    manifest = _manifest(video_dir, [("v0.mp4", "native", "a", "", ""), ("slow.mp4", "two fps", "b", "", "")])
    kept = ingest(_cfg(manifest), seed=0, out_dir=video_dir / "out")
    assert kept.quarantine.empty
    assert kept.index.set_index("clip_id")["held_frames"].to_dict() == {"a": 0, "b": 6}  # 2 source frames fill 8
    assert "1 clip(s) with held frames" in kept.summary()
    strict = ingest(_cfg(manifest, quarantine_held_frames=True, max_bad_fraction=0.5), seed=0, out_dir=video_dir / "o2")
    assert list(strict.index["clip_id"]) == ["a"]
    (row,) = strict.quarantine.itertuples()
    assert row.clip_id == "b" and row.reason == "held_frames" and "2 fps < data.fps 8" in row.detail
    assert "held_frames: 1" in strict.summary()


def test_a_manifest_without_ids_warns_once_and_quarantines_a_repeated_source(video_dir, caplog):
    manifest = video_dir / "no_ids.csv"
    manifest.write_text("path,caption,start\nv0.mp4,first,\nv1.mp4,other,\nv0.mp4,again,\nv0.mp4,later window,0.5\n")
    with caplog.at_level(logging.WARNING, logger="lib.data.manifest"):
        result = ingest(_cfg(manifest, max_bad_fraction=0.5), seed=0, out_dir=video_dir / "out")
    warnings = [r.getMessage() for r in caplog.records if "no clip id column" in r.getMessage()]
    assert len(warnings) == 1 and str(manifest) in warnings[0]
    assert list(result.index["clip_id"]) == ["row-0000000", "row-0000001", "row-0000003"]
    (row,) = result.quarantine.itertuples()
    assert (row.row, row.reason, row.detail) == (2, "duplicate_source", "same path, start and end as row 0")
    assert "duplicate_source: 1" in result.summary()

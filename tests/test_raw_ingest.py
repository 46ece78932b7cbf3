"""``data.source: raw``: long videos -> scenes -> clip windows -> the manifest ingestion, and every way it refuses."""

import math
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from data_schemas.ingest import QuarantineRecord
from data_schemas.raw import SceneWindow
from lib.config import ConfigError, DataConfig, RunConfig, replace_in
from lib.data.ingest import ingest
from lib.data.quarantine import ManifestError, TooManyBadRows
from lib.data.raw import RawVideo, cut_video, list_raw_videos, sidecar_path
from lib.data.scenes import ScenePlan, scene_windows
from lib.data.shards import load_clips
from lib.data.testsrc import write_cut_video

# cuts.mp4: 2 s testsrc | 2.5 s mandelbrot | 0.5 s smptebars (shorter than a 1 s clip) | 3 s testsrc2, at 24 fps
SEGMENTS = [("testsrc", 48), ("mandelbrot", 60), ("smptebars", 12), ("testsrc2", 72)]


@pytest.fixture(scope="module")
def raw_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("raw")
    cuts = write_cut_video(d / "cuts.mp4", SEGMENTS)
    (d / "cuts.txt").write_text("four test patterns\n")
    write_cut_video(d / "nocut.mp4", [("mandelbrot", 96)])
    (d / "nocut.txt").write_text("a mandelbrot zoom")
    write_cut_video(d / "nocaption.mp4", [("testsrc", 24)])
    write_cut_video(d / "latin.mp4", [("testsrc", 24)])
    (d / "latin.txt").write_bytes("caf\xe9 au lait".encode("latin-1"))
    write_cut_video(d / "blank.mp4", [("testsrc", 24)])
    (d / "blank.txt").write_text("  \n")
    (d / "corrupt.mp4").write_bytes(b"\x00not a video" * 40)
    (d / "corrupt.txt").write_text("garbage")
    (d / "notes.md").write_text("not a video, not listed")
    return d, cuts


RAW = {"source": "raw", "frames": 8, "fps": 8.0, "height": 16, "width": 16, "min_scene_seconds": 0.3,
       "max_bad_fraction": 1.0, "shard_size": 4}  # fmt: skip


def _cfg(raw, **kw):
    return DataConfig(**{**RAW, "raw": str(raw), **kw})


def test_scene_windows_are_disjoint_evenly_spread_and_split_long_scenes():
    plan = ScenePlan(frames=8, fps=8.0, windows_per_scene=2, max_scene_seconds=60.0, min_scene_seconds=0.5)
    # 4 s scene at 10 fps: 0.1 s margins, two 1 s windows with three equal gaps of 0.6 s
    assert np.asarray(scene_windows(0.0, 4.0, plan, 10.0)) == pytest.approx(np.array([[0.7, 1.7], [2.3, 3.3]]))
    assert scene_windows(0.0, 1.1, plan, 10.0) == []  # 0.9 s usable < one 1 s clip
    assert scene_windows(0.0, 0.4, replace(plan, frames=2), 10.0) == []  # shorter than min_scene_seconds
    pieces = scene_windows(0.0, 10.0, replace(plan, max_scene_seconds=2.5, windows_per_scene=1), 10.0)
    assert len(pieces) == 4 and all(b - a == pytest.approx(1.0) for a, b in pieces)
    assert all(b1 <= a2 for (_, b1), (a2, _) in zip(pieces, pieces[1:], strict=False))


def test_cut_video_finds_the_known_cuts_and_quarantines_the_short_scene(raw_dir):
    d, cuts = raw_dir
    table = cut_video(RawVideo(0, "cuts", str(d / "cuts.mp4")), ScenePlan.from_config(_cfg(d)))
    SceneWindow.validate(table)
    starts = sorted(set(table["scene_start"]))
    assert cuts == [2.0, 4.5, 5.0]
    assert starts == pytest.approx([0.0, *cuts], abs=1 / 24)  # within one frame of every true cut
    short = table[table["reason"] != ""]
    assert list(short["reason"]) == ["scene_too_short"] and "lasts 0.500 s" in short["detail"].iloc[0]
    windows = table[table["reason"] == ""]
    assert list(windows["caption"].unique()) == ["four test patterns"]
    assert all(w.scene_start < w.start < w.end < w.scene_end for w in windows.itertuples())


def test_a_video_without_cuts_is_one_scene(raw_dir):
    d, _ = raw_dir
    plan = replace(ScenePlan.from_config(_cfg(d)), windows_per_scene=3)
    table = cut_video(RawVideo(0, "nocut", str(d / "nocut.mp4")), plan)
    assert set(table["scene"]) == {0} and (table["reason"] == "").all() and len(table) == 3
    assert table["scene_end"].iloc[0] == pytest.approx(4.0, abs=1 / 24)


@pytest.mark.parametrize(
    ("name", "reason", "detail"),
    [
        ("nocaption", "no_caption", "no sidecar file"),
        ("latin", "caption_not_utf8", "latin.txt is not UTF-8"),
        ("blank", "empty_caption", "blank.txt is blank"),
        ("corrupt", "unreadable", "scene detection failed"),
        ("absent", "missing_file", "no such file"),
    ],
)
def test_each_bad_video_is_one_refusal_row_naming_it(raw_dir, name, reason, detail):
    d, _ = raw_dir
    path = d / f"{name}.mp4"
    if name == "absent":  # a manifest row whose video is gone, with its caption in the manifest
        table = cut_video(RawVideo(3, name, str(path), "a caption"), ScenePlan())
    else:
        table = cut_video(RawVideo(3, name, str(path)), ScenePlan())
    assert len(table) == 1
    row = table.iloc[0]
    assert (row.reason, row.path, row.scene, row.video_row) == (reason, str(path), -1, 3)
    assert detail in row.detail and math.isnan(row.start)


def test_listing_a_folder_a_glob_and_a_manifest(raw_dir, tmp_path):
    d, _ = raw_dir
    names = ["blank", "corrupt", "cuts", "latin", "nocaption", "nocut"]
    assert [v.video_id for v in list_raw_videos(str(d))] == names
    assert [v.video_id for v in list_raw_videos(str(d / "c*.mp4"))] == ["corrupt", "cuts"]
    manifest = tmp_path / "videos.csv"
    manifest.write_text(f"url,text\n{d / 'cuts.mp4'},from the manifest\n{d / 'nocut.mp4'},\n")
    videos = list_raw_videos(str(manifest), {"path": "url"})  # Open-Sora's ``text`` caption needs no mapping
    assert [(v.video_id, v.caption) for v in videos] == [("cuts", "from the manifest"), ("nocut", None)]
    assert sidecar_path("s3://bucket/a.b/video.mp4") == "s3://bucket/a.b/video.txt"
    with pytest.raises(ManifestError, match=r"empty.*names no video files"):
        (tmp_path / "empty").mkdir()
        list_raw_videos(str(tmp_path / "empty"))


def test_raw_ingest_feeds_windows_to_the_manifest_ingest_and_quarantines_the_rest(raw_dir, tmp_path):
    d, _ = raw_dir
    result = ingest(_cfg(d, windows_per_scene=2), seed=0, out_dir=tmp_path / "shards")
    QuarantineRecord.validate(result.quarantine)
    reasons = dict(zip(result.quarantine["clip_id"], result.quarantine["reason"], strict=True))
    assert reasons == {"blank": "empty_caption", "corrupt": "unreadable", "cuts-s0002": "scene_too_short",
                       "latin": "caption_not_utf8", "nocaption": "no_caption"}  # fmt: skip
    scenes = pd.read_parquet(tmp_path / "shards" / "scenes.parquet")
    windows = scenes[scenes["reason"] == ""]
    assert sorted(result.index["clip_id"]) == sorted(windows["clip_id"])  # every window decoded into a clip
    assert set(result.index["source"]) == {"raw"} and result.index["motion"].gt(0).all()
    assert scenes.loc[result.quarantine["row"], "clip_id"].tolist() == result.quarantine["clip_id"].tolist()
    clips = load_clips(tmp_path / "shards", result.index, result.index["clip_id"][:1])
    assert clips.shape == (1, 8, 16, 16, 3)
    assert "5 quarantined (caption_not_utf8: 1, empty_caption: 1, no_caption: 1, scene_too_short: 1, unreadable: 1)" \
        in result.summary()  # fmt: skip


def test_raw_ingest_fails_past_max_bad_fraction_and_counts_crashed_cuts(raw_dir, tmp_path):
    d, _ = raw_dir
    with pytest.raises(TooManyBadRows, match=r"quarantined .* by reason: .*no_caption: 1"):
        ingest(_cfg(d, max_bad_fraction=0.1), seed=0, out_dir=tmp_path / "a")
    videos = list_raw_videos(str(d / "cuts.mp4*"))
    result = ingest(_cfg(d), seed=0, out_dir=tmp_path / "b", videos=videos, cuts=[None])
    assert result.index.empty and list(result.quarantine["reason"]) == ["cut_failed"]


def test_raw_config_errors_name_the_field():
    with pytest.raises(ConfigError, match=r"^data\.raw: required when source=raw"):
        DataConfig(source="raw")
    with pytest.raises(ConfigError, match=r"^data\.scene_detector: 'histogram' is not one of content, adaptive"):
        DataConfig(scene_detector="histogram")
    with pytest.raises(ConfigError, match=r"^data\.max_scene_seconds: 0.5 s is shorter than one clip"):
        DataConfig(max_scene_seconds=0.5)
    with pytest.raises(ConfigError, match=r"^data\.aesthetic_path: required when data\.min_aesthetic > 0"):
        DataConfig(min_aesthetic=5.0)
    with pytest.raises(ConfigError, match=r"^data\.max_motion: 1.0 must be above data\.min_motion"):
        DataConfig(min_motion=2.0, max_motion=1.0)


def test_ingest_stage_cuts_videos_in_a_map_task(raw_dir, tmp_path):
    from workflows.ingest import ingest_stage

    d, _ = raw_dir
    cfg = replace_in(RunConfig(), data={**RAW, "raw": str(d / "*cut*.mp4")}, output_dir=str(tmp_path))
    shards, index, quarantine, _, filtered = ingest_stage(cfg=cfg)
    assert set(quarantine["reason"]) == {"scene_too_short"} and filtered.empty
    assert len(index) == 4 and index["clip_id"].str.startswith(("cuts-", "nocut-")).all()

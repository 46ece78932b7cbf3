"""Datasets as users hold them: Open-Sora and WebVid manifests through ``data.columns``, WebDataset tar shards."""

import io
import json
import logging
import tarfile
from dataclasses import replace

import fsspec
import numpy as np
import pytest

from lib.config import ConfigError, DataConfig, config_from_dict
from lib.data.ingest import ingest
from lib.data.procedural import iter_builtin_clips
from lib.data.quarantine import ManifestError, TooManyBadRows
from lib.data.shards import load_clips
from lib.data.video import decode_clip, write_mp4

FRAMES, SIZE, FPS = 8, 16, 8


@pytest.fixture
def videos(tmp_path):
    """Three small MP4 files: v0..v2."""
    paths = []
    for i, clip in enumerate(iter_builtin_clips(2, 3, 16, 24, 32)):
        paths.append(write_mp4(tmp_path / f"v{i}.mp4", clip.frames, fps=FPS))
    return paths


def _cfg(**kw) -> DataConfig:
    return DataConfig(frames=FRAMES, height=SIZE, width=SIZE, fps=FPS, max_source_pixels=64 * 64, **kw)


def _decoded(path) -> np.ndarray:
    with open(path, "rb") as f:
        return decode_clip(f, FRAMES, FPS, SIZE, SIZE, max_source_pixels=64 * 64)


def test_open_sora_manifest_ingests_without_mapping(tmp_path, videos, caplog):
    manifest = tmp_path / "opensora.csv"
    rows = [f"{p.name},a red circle number {i},16,8,24,32" for i, p in enumerate(videos)]
    manifest.write_text("path,text,num_frames,fps,height,width\n" + "\n".join(rows) + "\n")
    with caplog.at_level(logging.WARNING, logger="lib.data.columns"):
        result = ingest(_cfg(source="manifest", manifest=str(manifest)), seed=0, out_dir=tmp_path / "out")
    assert result.quarantine.empty
    assert result.index["caption"].tolist() == [f"a red circle number {i}" for i in range(3)]
    column_warnings = [r for r in caplog.records if r.name == "lib.data.columns"]
    assert not column_warnings, "Open-Sora's descriptive columns are recognised, not warned about"
    assert any("no clip id column" in r.getMessage() for r in caplog.records), "nor are its missing ids hidden"
    clips = load_clips(tmp_path / "out", result.index, result.index["clip_id"])
    assert all(np.array_equal(clips[i], _decoded(p)) for i, p in enumerate(videos))


def test_webvid_manifest_ingests_through_data_columns_and_names_unused_columns(tmp_path, videos, caplog):
    manifest = tmp_path / "results_2M_train.csv"
    rows = [f"{1000 + i},{p},PT00H00M02S,{i:03d}_{i:03d},Aerial view of a beach {i}" for i, p in enumerate(videos)]
    manifest.write_text("videoid,contentUrl,duration,page_dir,name\n" + "\n".join(rows) + "\n")
    cfg = _cfg(source="manifest", manifest=str(manifest),
               columns={"path": "contentUrl", "caption": "name", "clip_id": "videoid"})  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="lib.data.columns"):
        result = ingest(cfg, seed=0, out_dir=tmp_path / "out")
    assert result.index["clip_id"].tolist() == ["1000", "1001", "1002"]
    assert result.index["caption"].tolist() == [f"Aerial view of a beach {i}" for i in range(3)]
    (warning,) = [r.getMessage() for r in caplog.records]
    assert str(manifest) in warning and "'duration'" in warning and "'page_dir'" in warning
    assert "'name'" not in warning and "'videoid'" not in warning


def test_mapping_a_missing_column_or_lacking_a_caption_fails_naming_the_field(tmp_path, videos):
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"videoid,contentUrl,name\n1,{videos[0]},a beach\n")
    cfg = _cfg(source="manifest", manifest=str(manifest), columns={"path": "contentUrl", "caption": "title"})
    with pytest.raises(ManifestError, match=r"m\.csv: data\.columns\.caption: column 'title' not found"):
        ingest(cfg, seed=0, out_dir=tmp_path / "out")
    cfg = _cfg(source="manifest", manifest=str(manifest), columns={"path": "contentUrl"})
    with pytest.raises(ManifestError, match=r"m\.csv: missing required column\(s\) caption .*data\.columns"):
        ingest(cfg, seed=0, out_dir=tmp_path / "out")


def test_a_mapped_column_replaces_a_same_named_one(tmp_path, videos):
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"path,caption,name\n{videos[0]},old caption,new caption\n")
    result = ingest(_cfg(source="manifest", manifest=str(manifest), columns={"caption": "name"}), 0, tmp_path / "o")
    assert result.index["caption"].tolist() == ["new caption"]


def test_config_refuses_bad_column_mappings_by_dotted_name():
    with pytest.raises(ConfigError, match=r"data\.columns: 'capton' is not one of path, caption"):
        config_from_dict({"data": {"columns": {"capton": "name"}}})
    with pytest.raises(ConfigError, match=r"data\.columns\.caption: expected a name"):
        config_from_dict({"data": {"columns": {"caption": ""}}})
    with pytest.raises(ConfigError, match=r"data\.columns: one user column per project column"):
        config_from_dict({"data": {"columns": {"caption": "x", "clip_id": "x"}}})
    with pytest.raises(ConfigError, match=r"data\.webdataset: required when source=webdataset"):
        config_from_dict({"data": {"source": "webdataset"}})


def _tar(members: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.fixture
def shards(tmp_path, videos):
    """Four tar shards (the third truncated, the fourth not a tar at all) and, in the pattern, a fifth that does not
    exist."""
    mp4 = [p.read_bytes() for p in videos]
    good = _tar([
        ("a.mp4", mp4[0]), ("a.txt", b"a clip with a text caption"),
        ("b.mp4", mp4[1]), ("b.json", json.dumps({"caption": "a json caption", "start": 0.0}).encode()),
        ("c.mp4", mp4[2]), ("c.json", json.dumps({"text": "an Open-Sora style caption"}).encode()),
    ])  # fmt: skip
    bad = _tar([
        ("nocap.mp4", mp4[0]),  # no caption member
        ("novideo.txt", b"a caption without its video"),
        ("badjson.mp4", mp4[1]), ("badjson.json", b"{not json"),
        ("empty.mp4", mp4[2]), ("empty.txt", b"   "),
        ("a.mp4", mp4[2]), ("a.txt", b"same key as in shard 0"),
        ("garbage.mp4", b"x" * 300), ("garbage.txt", b"not a video"),
    ])  # fmt: skip
    truncated = _tar([("d.mp4", mp4[0]), ("d.txt", b"kept before the cut"), ("e.mp4", mp4[1] * 4)])
    (tmp_path / "wds-0.tar").write_bytes(good)
    (tmp_path / "wds-1.tar").write_bytes(bad)
    # cut right after e.mp4's last data block, so e arrives without its caption: an offset from the end would move
    # with the tar's record padding and the encoder's output size (x264's bytes differ from run to run)
    with tarfile.open(fileobj=io.BytesIO(truncated)) as tar:
        e_mp4 = tar.getmember("e.mp4")
    cut = e_mp4.offset_data + -(-e_mp4.size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
    (tmp_path / "wds-2.tar").write_bytes(truncated[:cut])
    (tmp_path / "wds-3.tar").write_bytes(b"this is no tar archive" * 40)
    return tmp_path / "wds-{0..4}.tar"


def test_webdataset_shards_ingest_and_every_bad_sample_or_shard_is_quarantined(tmp_path, videos, shards):
    cfg = _cfg(source="webdataset", webdataset=str(shards), max_bad_fraction=0.9)
    result = ingest(cfg, seed=0, out_dir=tmp_path / "out")
    assert result.index["clip_id"].tolist() == ["a", "b", "c", "d"]
    assert result.index["caption"].tolist() == [
        "a clip with a text caption", "a json caption", "an Open-Sora style caption", "kept before the cut"
    ]  # fmt: skip
    assert set(result.index["source"]) == {"webdataset"}
    clips = load_clips(tmp_path / "out", result.index, ["a", "b", "c", "d"])
    for got, video in zip(clips, [videos[0], videos[1], videos[2], videos[0]], strict=True):
        assert np.array_equal(got, _decoded(video)), "the same frames as the same file through a manifest"
    reasons = {(r.clip_id, r.reason) for r in result.quarantine.itertuples()}
    assert reasons == {
        ("nocap", "missing_member"),
        ("novideo", "missing_member"),
        ("badjson", "bad_json"),
        ("empty", "empty_caption"),
        ("a", "duplicate_id"),
        ("garbage", "unreadable"),
        ("e", "missing_member"),  # the truncated shard's last sample lost its caption (tar sees a short member)
        ("wds-3.tar", "unreadable"),
        ("wds-4.tar", "missing_file"),
    }
    rows = result.quarantine.set_index("clip_id")
    assert rows.loc["novideo", "path"] == f"{tmp_path}/wds-1.tar#novideo"
    assert "no video member" in rows.loc["novideo", "detail"] and "txt" in rows.loc["novideo", "detail"]
    assert "no caption" in rows.loc["nocap", "detail"]
    assert result.quarantine["row"].is_unique and result.quarantine["row"].max() == 12, "13 samples and shards"


def test_webdataset_reads_fsspec_urls_and_maps_json_keys(tmp_path, videos):
    fs = fsspec.filesystem("memory")
    meta = [{"title": f"clip number {i}", "vid": f"id-{i}"} for i in range(3)]
    for shard in range(2):
        members = []
        for i in range(shard, 3, 2):
            members += [(f"k{i}.mp4", videos[i].read_bytes()), (f"k{i}.json", json.dumps(meta[i]).encode())]
        fs.pipe_file(f"/wds-test/part-{shard:02d}.tar", _tar(members))
    cfg = _cfg(source="webdataset", webdataset="memory://wds-test/part-{00..01}.tar",
               columns={"caption": "title", "clip_id": "vid"})  # fmt: skip
    result = ingest(cfg, seed=0, out_dir=tmp_path / "out")
    assert result.quarantine.empty
    assert result.index["clip_id"].tolist() == ["id-0", "id-2", "id-1"]
    assert result.index["caption"].tolist() == ["clip number 0", "clip number 2", "clip number 1"]


def test_webdataset_threshold_counts_samples_and_names_reasons(tmp_path, videos, shards):
    cfg = _cfg(source="webdataset", webdataset=str(shards), max_bad_fraction=0.2)
    with pytest.raises(TooManyBadRows, match=r"9/13 rows quarantined .*missing_member: 3"):
        ingest(cfg, seed=0, out_dir=tmp_path / "out")


def test_webdataset_clips_pass_the_quality_filters_like_manifest_clips(tmp_path, videos, shards):
    cfg = _cfg(source="webdataset", webdataset=str(shards), max_bad_fraction=0.9)
    kept = ingest(cfg, seed=0, out_dir=tmp_path / "all")
    assert kept.index["motion"].notna().all() and len(kept.filtered) == 0
    bound = float(kept.index["motion"].min()) + 1e-6  # keep out the stillest clip(s), and count them
    result = ingest(replace(cfg, min_motion=bound), seed=0, out_dir=tmp_path / "filtered")
    stillest = sorted(kept.index.loc[kept.index["motion"] < bound, "clip_id"])
    assert sorted(result.filtered["clip_id"]) == stillest and set(result.filtered["rule"]) == {"min_motion"}
    assert not set(stillest) & set(result.index["clip_id"]) and len(result.index) == len(kept.index) - len(stillest)
    assert all("#" in p for p in result.filtered["path"])  # <shard>#<key>, as quarantine rows name samples

import logging

import numpy as np
import pytest
from safetensors.numpy import load_file

from data_schemas.ingest import ClipIndex
from lib.data.shards import INDEX_FILE, ShardWriter, iter_shards, load_clips, read_index
from lib.io import ChecksumError, file_sha256, read_sums


def _video(i, shape=(4, 8, 8, 3)):
    return np.full(shape, i, dtype=np.uint8)


def test_round_trip_across_shards(tmp_path):
    w = ShardWriter(tmp_path, shard_size=3, source="builtin")
    for i in range(7):
        w.add(f"c{i}", _video(i), f"caption {i}")
    index = w.close()
    ClipIndex.validate(index.assign(role="train"))  # roles are added by ingest (lib.data.split)
    assert sorted(p.name for p in tmp_path.glob("shard-*")) == [f"shard-0000{i}.safetensors" for i in range(3)]
    assert read_index(tmp_path).equals(index)
    got = load_clips(tmp_path, index, ["c6", "c0", "c4"])
    assert [int(v[0, 0, 0, 0]) for v in got] == [6, 0, 4]
    seen = [cid for rows, frames in iter_shards(tmp_path, index) for cid in rows["clip_id"]]
    assert seen == [f"c{i}" for i in range(7)]
    assert not list(tmp_path.glob(".*tmp")), "temporary files must not remain"
    digests = index.groupby("shard")[ClipIndex.shard_sha256].unique()  # one digest per shard, that of its bytes
    assert {s: list(d) for s, d in digests.items()} == {s: [file_sha256(tmp_path / s)] for s in digests.index}


def _flip_bit(path, offset=-1, bit=6):
    data = bytearray(path.read_bytes())
    data[offset] ^= 1 << bit
    path.write_bytes(bytes(data))


def _written(tmp_path):
    w = ShardWriter(tmp_path, shard_size=3, source="builtin")
    for i in range(7):
        w.add(f"c{i}", _video(i), f"caption {i}")
    return w.close()


def test_a_flipped_bit_in_a_shard_is_refused_naming_the_file_and_both_digests(tmp_path):
    index = _written(tmp_path)
    shard = tmp_path / "shard-00001.safetensors"  # holds c3, c4, c5
    expected = index.loc[index["shard"] == shard.name, ClipIndex.shard_sha256].iloc[0]
    _flip_bit(shard)  # the last pixel byte of c5
    assert load_file(str(shard))["frames"][2, -1, -1, -1, -1] == 5 ^ 64, "unchecked, the flip reads as a wrong pixel"
    found = file_sha256(shard)
    with pytest.raises(ChecksumError, match=rf"{shard}: sha256 mismatch: expected {expected} .*found {found}"):
        load_clips(tmp_path, index, ["c0", "c4"])
    with pytest.raises(ChecksumError, match=str(shard)):
        list(iter_shards(tmp_path, index))
    assert [int(v[0, 0, 0, 0]) for v in load_clips(tmp_path, index, ["c6", "c0"])] == [6, 0], "other shards still load"


def test_sha256sums_lists_every_file_and_a_flipped_bit_in_the_index_is_refused(tmp_path):
    index = _written(tmp_path)
    listed = read_sums(tmp_path)
    assert sorted(listed) == ["index.parquet", *[f"shard-0000{i}.safetensors" for i in range(3)]]
    assert all(listed[name] == file_sha256(tmp_path / name) for name in listed)
    _flip_bit(tmp_path / INDEX_FILE, offset=len((tmp_path / INDEX_FILE).read_bytes()) // 2, bit=0)
    with pytest.raises(ChecksumError, match=rf"{tmp_path / INDEX_FILE}: sha256 mismatch"):
        read_index(tmp_path)
    assert [int(v[0, 0, 0, 0]) for v in load_clips(tmp_path, index, ["c6"])] == [6], "shards still load"


def test_a_shard_digest_changed_in_sha256sums_is_refused_without_reading_the_shard_twice(tmp_path):
    index = _written(tmp_path)
    sums = tmp_path / "SHA256SUMS"
    digest = read_sums(tmp_path)["shard-00001.safetensors"]
    changed = ("0" if digest[0] != "0" else "1") + digest[1:]
    sums.write_text(sums.read_text().replace(digest, changed))
    with pytest.raises(ChecksumError, match=rf"shard-00001.safetensors: {sums} records sha256 {changed}, its index"):
        load_clips(tmp_path, index, ["c4"])
    assert [int(v[0, 0, 0, 0]) for v in load_clips(tmp_path, index, ["c0"])] == [0], "other shards still load"


def test_an_index_without_checksums_loads_unchecked_with_one_warning(tmp_path, caplog):
    index = _written(tmp_path).drop(columns=ClipIndex.shard_sha256)  # as ingest wrote it before checksums
    ClipIndex.validate(index.assign(role="train"))
    with caplog.at_level(logging.WARNING, logger="lib.io"):
        first = load_clips(tmp_path, index, ["c6", "c0", "c4"])
        again = [cid for rows, _ in iter_shards(tmp_path, index) for cid in rows["clip_id"]]
    assert [int(v[0, 0, 0, 0]) for v in first] == [6, 0, 4] and again == [f"c{i}" for i in range(7)]
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and str(tmp_path) in warnings[0] and "re-run the ingest stage" in warnings[0]


def test_an_index_recording_two_digests_for_one_shard_is_refused(tmp_path):
    index = _written(tmp_path)
    index.loc[index["clip_id"] == "c4", ClipIndex.shard_sha256] = "0" * 64
    with pytest.raises(ChecksumError, match=r"shard-00001.safetensors: its index rows record 2 different sha256"):
        load_clips(tmp_path, index, ["c3", "c4"])


def test_refuses_wrong_dtype_and_mixed_shapes(tmp_path):
    w = ShardWriter(tmp_path, shard_size=4, source="builtin")
    with pytest.raises(ValueError, match="clip x: expected uint8"):
        w.add("x", np.zeros((4, 8, 8, 3), dtype=np.float32), "c")
    w.add("a", _video(1), "c")
    with pytest.raises(ValueError, match="clip b: shape"):
        w.add("b", _video(1, (4, 9, 8, 3)), "c")


def test_clip_index_schema_rejects_bad_tables():
    import pandas as pd
    import pandera.errors

    bad = pd.DataFrame(
        {
            "clip_id": ["a", "a"],
            "shard": ["shard-00000.safetensors", "nope"],
            "index": [0, -1],
            "caption": ["x", ""],
            "source": ["builtin", "builtin"],
        }
    )
    with pytest.raises(pandera.errors.SchemaErrors) as info:
        ClipIndex.validate(bad, lazy=True)
    failed = set(info.value.failure_cases["column"])
    assert {"clip_id", "shard", "index", "caption"} <= failed

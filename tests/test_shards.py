import numpy as np
import pytest

from data_schemas.ingest import ClipIndex
from lib.data.shards import ShardWriter, iter_shards, load_clips, read_index


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

"""The experiment driver's shared stages: a finished ingest and encode are reused from the work folder, and a stage
is published whole, so experiments sharing a work folder neither redo nor tear each other's stages."""

import numpy as np
import pandas as pd

from lib.config import RunConfig, replace_in
from lib.experiment.context import prepare
from lib.experiment.timer import StageTimer


def _cfg() -> RunConfig:
    return replace_in(RunConfig(), data={"num_clips": 40, "frames": 4, "height": 16, "width": 16, "shard_size": 16},
                      cluster={"num_clusters": 2, "fine_clusters": 4, "silhouette_sample": 40})  # fmt: skip


def test_prepare_reuses_a_finished_ingest_and_encode_and_leaves_no_temporary_folder(tmp_path, capsys):
    first = prepare(_cfg(), tmp_path, "cpu", StageTimer())
    out = capsys.readouterr().out
    assert "ingest: 40 clips" in out and "reused" not in out
    encoded_files = {p: p.stat().st_mtime_ns for p in first.encoded.rglob("*") if p.is_file()}
    again = prepare(_cfg(), tmp_path, "cpu", StageTimer())
    out = capsys.readouterr().out
    assert f"ingest: reused {first.shards}" in out and f"encode: reused {first.encoded}" in out
    assert {p: p.stat().st_mtime_ns for p in again.encoded.rglob("*") if p.is_file()} == encoded_files  # untouched
    assert {"train", "prompt", "reference"} <= set(first.index["role"])  # the roles come back with the index
    pd.testing.assert_frame_equal(again.index, first.index)
    pd.testing.assert_frame_equal(again.attributes, first.attributes)
    np.testing.assert_array_equal(again.embeddings, first.embeddings)
    assert again.data_key == first.data_key and again.info == first.info
    assert not [p for p in tmp_path.rglob(".*") if p.is_dir()], "temporary stage folders left behind"
    other = prepare(replace_in(_cfg(), seed=1), tmp_path, "cpu", StageTimer())  # other data: its own stages
    assert other.shards != first.shards and other.encoded != first.encoded and other.data_key != first.data_key


def test_the_driver_trains_the_seed_model_first_and_branches_every_expert_from_it(tmp_path):
    import json

    from lib.experiment.models import train_models
    from lib.experiment.variants import semantic_variant
    from lib.models.factory import weights_sha256

    cfg = replace_in(_cfg(), expert={"steps": 4, "num_layers": 1, "num_heads": 2, "head_dim": 16, "ffn_dim": 64,
                                     "batch_size": 4, "warmup_steps": 1, "seed_fraction": 0.5},
                     router={"steps": 4, "batch_size": 8})  # fmt: skip
    ctx = prepare(cfg, tmp_path, "cpu", StageTimer())
    variant = semantic_variant(ctx, StageTimer())
    ctx.semantic = variant.assignments
    models = train_models(ctx, variant, 0, True, StageTimer())
    assert [r["model"] for r in models.train_rows] == ["seed", "expert-00", "expert-01", "monolith"]
    # the seed takes half the monolith's 8 steps; the experts share the other half
    assert [r["steps"] for r in models.train_rows] == [4, 2, 2, 8]
    assert models.compute.set_index("model").loc["seed", "steps"] == 4
    (seed,) = (tmp_path / "train" / ctx.data_key).glob("seed-*/model")
    for expert in (tmp_path / "train" / ctx.data_key).glob("expert-*/model"):
        assert json.loads((expert / "training.json").read_text())["init_weights_sha256"] == weights_sha256(seed)

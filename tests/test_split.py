"""One split, made once: roles by a hash of the clip id, carried by the tables, honoured by every training stage."""

import numpy as np
import pandas as pd
import pytest

from data_schemas.ingest import ClipIndex
from lib.config import ConfigError, DataConfig, RunConfig, replace_in
from lib.data.ingest import ingest
from lib.data.split import HELD_OUT, ROLES, SplitError, assign_roles, role_counts, rows_with_role, with_roles
from lib.evaluate.compare import reference_clip_ids
from lib.train.specs import MONOLITH, clip_ids_for, expert_specs, monolith_spec


def test_roles_follow_the_fractions_and_depend_only_on_seed_and_clip_id():
    ids = [f"clip-{i:05d}" for i in range(20000)]
    roles = assign_roles(ids, 0, 0.05, 0.25, 0.25)
    share = pd.Series(roles).value_counts(normalize=True)
    assert share["validation"] == pytest.approx(0.05, abs=0.01)
    assert share["reference"] == pytest.approx(0.25, abs=0.015) and share["prompt"] == pytest.approx(0.25, abs=0.015)
    reversed_roles = assign_roles(ids[::-1], 0, 0.05, 0.25, 0.25)[::-1]
    np.testing.assert_array_equal(roles, reversed_roles)  # row order does not matter
    np.testing.assert_array_equal(roles[:500], assign_roles(ids[:500], 0, 0.05, 0.25, 0.25))  # growing keeps roles
    assert (roles != assign_roles(ids, 1, 0.05, 0.25, 0.25)).mean() > 0.3  # another seed, another split
    with pytest.raises(SplitError, match="leave a positive fraction"):
        assign_roles(ids, 0, 0.4, 0.3, 0.3)


def test_ingest_gives_every_clip_one_role_and_the_index_schema_checks_it(tmp_path):
    result = ingest(DataConfig(num_clips=200), seed=3, out_dir=tmp_path)
    assert set(result.index["role"]) <= set(ROLES) and sum(role_counts(result.index).values()) == 200
    assert "roles: train" in result.summary()
    again = ingest(DataConfig(num_clips=200), seed=3, out_dir=tmp_path / "again")
    pd.testing.assert_series_equal(result.index["role"], again.index["role"])
    with pytest.raises(Exception, match="role"):
        ClipIndex.validate(result.index.assign(role="test"))
    with pytest.raises(ConfigError, match="data.prompt_fraction"):
        DataConfig(validation_fraction=0.3, reference_fraction=0.35, prompt_fraction=0.35)


def test_role_helpers_refuse_tables_without_roles():
    table = pd.DataFrame({"clip_id": ["a", "b"], "role": ["train", "prompt"]})
    assert rows_with_role(table, "prompt")["clip_id"].tolist() == ["b"]
    with pytest.raises(SplitError, match="no 'role' column"):
        rows_with_role(table.drop(columns="role"), "train")
    with pytest.raises(SplitError, match="unknown role"):
        rows_with_role(table, "test")
    with pytest.raises(SplitError, match="1 clip\\(s\\) have no role"):
        with_roles(pd.DataFrame({"clip_id": ["a", "c"]}), table)


def _assignments(n=60, seed=0):
    ids = [f"c{i:03d}" for i in range(n)]
    roles = assign_roles(ids, seed, 0.1, 0.2, 0.2)
    return pd.DataFrame({"clip_id": ids, "cluster_id": [i % 3 for i in range(n)], "distance": 0.0,
                         "fine_cluster": [i % 6 for i in range(n)], "role": roles})  # fmt: skip


def test_no_model_trains_on_a_held_out_clip():
    a = _assignments()
    cfg = replace_in(RunConfig(), cluster={"num_clusters": 3})
    held = set(a.loc[a["role"].isin(HELD_OUT), "clip_id"])
    assert held  # the test means something only with held-out clips present
    specs = expert_specs(cfg, a)
    mono = monolith_spec(cfg, a)
    trained = {c for s in [*specs, mono] for c in clip_ids_for(s, a)}
    assert not trained & held
    assert mono.cluster_id == MONOLITH and mono.num_clips == int((a["role"] == "train").sum())
    assert sum(s.num_clips for s in specs) == mono.num_clips


def test_four_roles_are_disjoint_and_reference_prompt_sets_come_from_their_roles():
    from lib.sample.prompts import stratified_prompts

    a = _assignments(300)
    index = a[["clip_id", "role"]].assign(caption=lambda d: "caption " + d["clip_id"])
    prompts = stratified_prompts(a, index, num_prompts=0, seed=0)
    reference = reference_clip_ids(index, num_real=1000, seed=0)
    sets = {
        "train": set(rows_with_role(a, "train")["clip_id"]),
        "validation": set(rows_with_role(a, "validation")["clip_id"]),
        "reference": set(reference),
        "prompt": set(prompts["clip_id"]),
    }
    assert sum(map(len, sets.values())) == 300
    assert len(set().union(*sets.values())) == 300  # disjoint and covering
    assert reference == sorted(reference) and reference_clip_ids(index, 10, seed=0) != reference_clip_ids(index, 10, 1)
    assert set(reference_clip_ids(index, 10, seed=0)) <= sets["reference"]
    with pytest.raises(SplitError, match="no clip has role 'reference'"):
        reference_clip_ids(index[index["role"] != "reference"], 10, seed=0)


def test_a_finished_runs_prompt_clips_come_back_from_its_config_with_their_attributes(tmp_path):
    import yaml

    from lib.config import config_to_dict
    from lib.sample.prompts import run_prompt_clips

    cfg = replace_in(RunConfig(), seed=3, data={"num_clips": 120})
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "config.yaml").write_text(yaml.safe_dump(config_to_dict(cfg)))
    table = run_prompt_clips(tmp_path)
    data = ingest(cfg.data, seed=3, out_dir=tmp_path / "data")
    expected = data.index.loc[data.index["role"] == "prompt", "clip_id"].tolist()
    assert table["clip_id"].tolist() == expected and len(expected) > 0
    assert {"caption", "color", "shape", "background", "motion", "num_objects"} <= set(table.columns)
    by_id = data.index.set_index("clip_id")["caption"]
    assert (table["caption"].to_numpy() == by_id.loc[expected].to_numpy()).all()

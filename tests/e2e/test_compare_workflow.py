"""The comparison grid through `pyflyte run`: two cells share what they have in common, each lands with its record,
and a rerun with one more cell builds only that cell."""

import json

import pandas as pd
import pytest

from lib.config import ConfigError, RunConfig
from lib.evaluate.cells import cell_configs, cell_name
from lib.models.factory import build_expert, count_parameters
from tests.e2e.test_pipeline_workflow import _cfg, _run, _trained


def test_cell_names_and_refusals():
    assert cell_name("") == "base"
    assert cell_name("cluster.num_clusters=4 expert.steps=300") == "cluster.num_clusters-4_expert.steps-300"
    assert cell_name("sample.strategy=topk>top1@0.5") == "sample.strategy-topk-top1-0.5"
    cells = cell_configs(RunConfig(), ["", "cluster.num_clusters=4"])
    assert [n for n, _ in cells] == ["base", "cluster.num_clusters-4"] and cells[1][1].cluster.num_clusters == 4
    with pytest.raises(ConfigError, match="names the cell 'cluster.num_clusters-4' a second time"):
        cell_configs(RunConfig(), ["cluster.num_clusters=4", "cluster.num_clusters=4 "])
    with pytest.raises(ConfigError, match="output_dir=x: expected section.field=value"):
        cell_configs(RunConfig(), ["output_dir=x"])
    with pytest.raises(ConfigError, match="at least one setting"):
        cell_configs(RunConfig(), [])
    (name, small), (_, big) = cell_configs(RunConfig(), ["size=xs expert.steps=10", "size=l"])
    assert name == "size-xs_expert.steps-10"
    assert (small.expert.num_layers, small.expert.ffn_dim, small.expert.steps) == (1, 128, 10)
    params = [count_parameters(build_expert(c.expert, 4, 384, (8, 8, 8))) for c in (small, big)]
    assert params[0] < 60_000 < 3_000_000 < params[1]
    with pytest.raises(ConfigError, match="size=xxl: size must be one of xs, s, m, l"):
        cell_configs(RunConfig(), ["size=xxl"])


def test_two_cells_then_a_third_reuses_both(tmp_path):
    out = tmp_path / "out"
    cfg = _cfg(out)
    settings = ["", "router.steps=6"]
    first = _run(tmp_path, cfg, "compare.py", "compare", "--settings", json.dumps(settings))
    assert _trained(first) == {"expert-00", "expert-01", "monolith"}, "the router cell retrains no expert"
    lines = [json.loads(line) for line in (out / "compare" / "cells.jsonl").read_text().splitlines()]
    assert [r["cell"] for r in lines] == ["base", "router.steps-6"]
    for r in lines:
        loss = r["heldout_loss"]
        assert loss["ddm"].keys() == loss["monolith"].keys() and "1.0" in loss["ddm"] and r["heldout_loss_oracle"]
        assert {"kid_attrnet", "attr_acc_attrnet"} <= set(r["metrics"]["ddm"])
        assert "kid_attrnet" in r["ratio_monolith_over_ddm"]
        report = pd.read_parquet(out / "compare" / r["cell"] / "eval_report.parquet")  # each cell's own results
        assert "ddm:topk" in set(report["method"])
    assert lines[1]["config"]["router"]["steps"] == 6 and lines[0]["config"]["router"]["steps"] == 4
    assert "compare: 2 cell(s)" in first and "ratio_kid" in first

    again = _run(tmp_path, cfg, "compare.py", "compare", "--settings", json.dumps([*settings, "sample.top_k=1"]))
    assert not _trained(again), "a new sampling setting trains nothing"
    assert [json.loads(line)["cell"] for line in (out / "compare" / "cells.jsonl").read_text().splitlines()] == [
        "base", "router.steps-6", "sample.top_k-1"]  # fmt: skip

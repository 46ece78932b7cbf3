"""The headline benchmark's guards: the protocol file is pinned before training, the roles stay disjoint, the
pooled interval is the protocol's, and headline.json stays strict JSON."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lib.evaluate.distances import Interval
from lib.experiment.models import Models
from lib.experiment.scoring import assert_disjoint
from lib.experiment.tables import json_safe
from lib.experiment.variants import RANDOM, SEMANTIC

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench(benchmark_script):
    return benchmark_script("ddm_vs_monolith")


def test_protocol_sha_is_recorded_and_a_changed_protocol_is_refused(bench, tmp_path, monkeypatch):
    protocol = tmp_path / "protocol.md"
    protocol.write_text("version A\n")
    monkeypatch.setattr(bench, "PROTOCOL", protocol)
    sha = bench.record_protocol(tmp_path / "out")
    assert (tmp_path / "out" / "protocol_sha256.txt").read_text().strip() == sha
    assert bench.record_protocol(tmp_path / "out") == sha  # same protocol: the folder is reusable
    bench.check_protocol(sha)
    protocol.write_text("version B\n")
    with pytest.raises(SystemExit, match="changed during the run"):
        bench.check_protocol(sha)
    with pytest.raises(SystemExit, match="new --out folder"):
        bench.record_protocol(tmp_path / "out")


def test_the_committed_protocol_names_the_rules_the_script_applies(bench):
    text = (ROOT / "benchmarks" / "protocol.md").read_text()
    for phrase in ("N = 1024", "Training seeds 0, 1, 2", "Decision rule", "paired bootstrap", "`ddm:topk`"):
        assert phrase in text


def test_roles_must_be_disjoint(bench):
    index = pd.DataFrame({"clip_id": list("abcdefgh"), "role": ["train"] * 4 + ["validation", "reference", "prompt",
                                                                                  "prompt"]})  # fmt: skip
    assignments = index.assign(cluster_id=0)
    prompts = pd.DataFrame({"clip_id": ["g", "h"]})
    assert_disjoint(index, prompts, ["f"], assignments)
    with pytest.raises(ValueError, match="both train and prompt"):
        assert_disjoint(index, pd.DataFrame({"clip_id": ["a", "h"]}), ["f"], assignments)
    with pytest.raises(ValueError, match="both reference and prompt"):
        assert_disjoint(index, prompts, ["g"], assignments)


def test_pooled_interval_is_the_percentiles_of_all_seeds_replicates(bench):
    a = Interval(1.0, 0.9, 1.1, np.linspace(0.9, 1.1, 101))
    b = Interval(2.0, 1.9, 2.1, np.linspace(1.9, 2.1, 101))
    mean, low, high = bench._pool([a, b])
    assert mean == 1.5
    assert low == pytest.approx(np.percentile(np.r_[a.replicates, b.replicates], 2.5))
    assert high == pytest.approx(np.percentile(np.r_[a.replicates, b.replicates], 97.5))
    assert low < 1.0 < 2.0 < high  # wider than either seed: training-seed spread is part of it
    nan = Interval(float("nan"), float("nan"), float("nan"), np.full(5, np.nan))
    assert np.isnan(bench._pool([nan])[1])


def test_headline_json_has_no_nan(bench):
    data = json_safe({"fd_inf": [float("nan"), 1.0], "nested": {"x": float("inf")}, "n": 3})
    assert data == {"fd_inf": [None, 1.0], "nested": {"x": None}, "n": 3}
    json.dumps(data, allow_nan=False)


def test_quality_json_averages_seeds_per_attribute_and_names_the_codec(bench):
    rows = []
    for seed, shape in ((0, 0.5), (1, 0.7)):
        for method in ("monolith", "ddm:topk", "ddm:top1", "real"):
            values = {"color": 0.9, "shape": shape, "background": 1.0, "motion": 0.6}
            rows += [{"method": method, "metric": f"attr_acc_attrnet.{a}", "mean": v, "cluster": -1,
                      "n_generated": 96, "training_seed": seed} for a, v in values.items()]  # fmt: skip
            rows.append({"method": method, "metric": "object_found_attrnet", "mean": 0.95, "cluster": -1,
                         "n_generated": 96, "training_seed": seed})  # fmt: skip
            rows.append(
                {
                    "method": method,
                    "metric": "attr_acc_attrnet.shape",
                    "mean": 0.0,
                    "cluster": 2,
                    "n_generated": 30,
                    "training_seed": seed,
                }
            )  # per-cluster rows are not the headline
    learned = {"name": "vae", "learned": {"psnr_heldout": 31.234, "seconds": 600.04}}
    record = bench.quality_record(pd.DataFrame(rows), "topk", learned)
    assert list(record["methods"]) == ["monolith", "ddm:topk", "ddm:top1", "real"]  # the headline strategy first
    mono = record["methods"]["monolith"]
    assert mono["shape"] == pytest.approx(0.6) and mono["mean"] == pytest.approx((0.9 + 0.6 + 1.0 + 0.6) / 4)
    assert mono["object_found"] == 0.95 and mono["prompts"] == 96 and mono["training_seeds"] == [0, 1]
    assert record["codec"] == {"name": "learned", "psnr_heldout_db": 31.23, "train_seconds": 600.0}
    assert bench.quality_record(pd.DataFrame(rows), "topk", {"name": "pixel"})["codec"] == {"name": "pixel"}
    json.dumps(record, allow_nan=False)


def test_only_a_complete_versioned_run_replaces_the_current_headline(bench):
    results = bench.RESULTS
    assert bench.is_current_headline(results / "v4", [])
    assert not bench.is_current_headline(results / "v4", ["ddm:random_topk s0"])  # partial: methods still to score
    assert not bench.is_current_headline(results / "smoke", [])  # the smoke run wrote over the headline once
    assert not bench.is_current_headline(results / "v4" / "extra", [])


def test_per_cluster_table_shows_kid_and_accuracy_per_cluster_not_an_empty_fd_inf(bench):
    """FD∞ is absent per cluster (too few clips per set): the table must carry KID and accuracy, seeds and methods
    as rows, one column per metric and cluster, KID first."""
    names = {"kid": "kid_attrnet", "fd_inf": "fd_inf_attrnet", "fd": "fd_attrnet"}
    rows = pd.DataFrame([
        {"training_seed": 0, "method": m, "metric": metric, "cluster": c, "mean": v, "ci_low": v - 1, "ci_high": v + 1}
        for m in ("monolith", "ddm:topk") for c in (-1, 0, 1)
        for metric, v in (("kid_attrnet", 10.0 * (c + 2)), ("attr_acc_attrnet", 0.5), ("fd_attrnet", 99.0))
    ])  # fmt: skip
    table = bench.per_cluster_table(rows, names)
    assert list(table.columns) == ["kid_attrnet c0", "kid_attrnet c1", "attr_acc_attrnet c0", "attr_acc_attrnet c1"]
    assert list(table.index) == [(0, "monolith"), (0, "ddm:topk")]
    assert table.loc[(0, "monolith"), "kid_attrnet c1"] == "30 [29, 31]"


def test_the_benchmark_config_runs_oracle_routing_under_the_name_ddm_oracle(bench):
    """Routing loss is a number: ``ddm:oracle`` (each prompt's true cluster) is a protocol method of the benchmark
    config (only there: the tiny run stays cheap), and the evaluation table accepts its name."""
    from data_schemas.evaluate import METHOD_PATTERN
    from lib.config import load_config

    cfg = load_config(ROOT / "configs" / "bench.yaml")
    rows = pd.DataFrame({"method": ["monolith"], "training_seed": [0]})
    assert "ddm:oracle (training seed 0)" in bench.methods_not_run(rows, [0], cfg)
    assert "oracle" not in load_config(ROOT / "configs" / "tiny.yaml").sample.compare_strategies
    assert pd.Series(["ddm:oracle"]).str.match(METHOD_PATTERN).all()


def test_headline_records_router_accuracy_at_t1_beside_the_caption_ceiling_per_seed(bench):
    def report(t1: float, caption: float) -> pd.DataFrame:
        return pd.DataFrame({"kind": ["bucket", "exact", "exact", "caption_only"], "t_low": [0.0, 0.9, 1.0, 1.0],
                             "t_high": [1.0, 0.9, 1.0, 1.0], "accuracy": [0.9, 0.8, t1, caption],
                             "ece": 0.1, "mean_max_prob": 0.8, "n": 40})  # fmt: skip

    models = [Models(SEMANTIC, s, Path("d"), None, [], pd.DataFrame(), report(0.7 + s / 10, 0.95), "k")
              for s in (0, 1)] + [Models(RANDOM, 0, Path("r"), None, [], pd.DataFrame(),
                                               report(0.1, 0.2), "k")]  # fmt: skip
    out = bench.router_at_t1(models)
    assert out == {"router_accuracy_t1": {0: 0.7, 1: 0.8}, "caption_ceiling_t1": {0: 0.95, 1: 0.95}}


def test_a_run_of_only_a_control_method_is_summarised_without_a_decision(bench):
    from types import SimpleNamespace

    iv = Interval(195.0, 160.0, 231.0, np.linspace(160, 231, 11))
    rows = pd.DataFrame({"method": ["ddm:random_topk"] * 2, "metric": ["fd_inf_attrnet", "attr_acc_attrnet"],
                         "cluster": [-1, -1], "mean": [195.0, 0.7]})  # fmt: skip
    reps = {0: ({"ddm:random_topk": SimpleNamespace(fd_inf=iv, kid=iv, fd=iv)}, {})}  # no monolith scored: no pair
    cfg = SimpleNamespace(sample=SimpleNamespace(strategy="topk"))
    summary = bench.headline_summary(rows, reps, {"fd_inf": "fd_inf_attrnet", "kid": "kid_attrnet"}, cfg)
    assert summary["methods"]["ddm:random_topk"]["fd_inf"][0] == 195.0 and summary["ratio_fd_inf"] is None
    assert "not applicable (no training seed scored both monolith and ddm:topk)" in summary["text"]

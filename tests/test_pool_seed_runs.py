"""Pooling separate one-seed headline runs: the decision is given only where the bounds on the pooled interval
settle it, runs of different protocols or repeated seeds are refused, and quality is averaged per attribute."""

import json

import pytest


def _run(folder, seed, ratio, sha="a" * 64, ddm_mean=0.8, ddm_found=0.95):
    folder.mkdir(parents=True)
    methods = {"monolith": {"fd_inf": [10.0, 8.0, 12.0], "kid": [5.0, 1.0, 9.0]},
               "ddm:topk": {"fd_inf": [10.0 * seed + 1, 1.0, 30.0], "kid": [3.0, 1.0, 5.0]}}  # fmt: skip
    headline = {
        "protocol_sha256": sha,
        "training_seeds": [seed],
        "metric_names": {"fd": "fd_attrnet", "fd_inf": "fd_inf_attrnet", "kid": "kid_attrnet"},
        "methods": methods,
        "ratio_details": {"fd_inf_per_seed": {str(seed): ratio}, "kid_per_seed": {str(seed): ratio}},
    }
    attrs = {"color": ddm_mean, "shape": ddm_mean, "background": ddm_mean, "motion": ddm_mean}
    quality = {
        "scorer": "attrnet",
        "methods": {
            "ddm:topk": {**attrs, "mean": ddm_mean, "object_found": ddm_found, "prompts": 1024},
            "real": {**attrs, "mean": ddm_mean, "object_found": 1.0, "prompts": 1024},
        },
        "codec": {"name": "learned", "psnr_heldout_db": 28.0 + seed},
    }
    (folder / "headline.json").write_text(json.dumps(headline))
    (folder / "quality.json").write_text(json.dumps(quality))
    return folder


@pytest.fixture(scope="module")
def pool_script(benchmark_script):
    return benchmark_script("pool_seed_runs")


@pytest.mark.parametrize(
    ("ratios", "decision"),
    [
        ([[1.5, 1.2, 1.8], [1.6, 1.3, 1.9], [1.55, 1.25, 1.85]], "claimed"),  # every lower bound above 1
        ([[1.5, 0.9, 1.8], [1.6, 0.95, 1.9], [1.55, 0.8, 1.85]], "not claimed"),  # none: the pooled one is not
        ([[1.5, 1.2, 1.8], [1.6, 0.95, 1.9], [1.55, 1.25, 1.85]], "undecided"),  # the bounds straddle 1
        ([[3.0, 1.2, 4.0], [1.1, 1.05, 1.2], [2.0, 1.5, 2.5]], "not claimed"),  # mean - 2 sd below 1
    ],
)
def test_decision_only_where_the_bounds_settle_it(pool_script, tmp_path, ratios, decision):
    runs = [pool_script.load_run(_run(tmp_path / f"s{s}", s, r)) for s, r in enumerate(ratios)]
    result = pool_script.pool(runs)
    assert result["ratio_fd_inf"]["decision"] == decision
    lows = [r[1] for r in ratios]
    assert result["ratio_fd_inf"]["pooled_low_between"] == [min(lows), max(lows)]
    assert result["training_seeds"] == [0, 1, 2]


def test_refuses_other_protocols_repeated_seeds_and_unfinished_runs(pool_script, tmp_path):
    a = pool_script.load_run(_run(tmp_path / "a", 0, [0.3, 0.2, 0.4]))
    b = pool_script.load_run(_run(tmp_path / "b", 1, [0.3, 0.2, 0.4], sha="b" * 64))
    with pytest.raises(pool_script.PoolError, match="different protocols"):
        pool_script.pool([a, b])
    c = pool_script.load_run(_run(tmp_path / "c", 0, [0.3, 0.2, 0.4]))
    with pytest.raises(pool_script.PoolError, match=r"training seed\(s\) \[0\] appear in two runs"):
        pool_script.pool([a, c])
    (tmp_path / "empty").mkdir()
    with pytest.raises(pool_script.PoolError, match="empty: not a finished headline run"):
        pool_script.load_run(tmp_path / "empty")


def test_quality_is_averaged_per_attribute_and_the_bar_is_judged_per_seed(pool_script, tmp_path, monkeypatch):
    monkeypatch.setattr(pool_script, "RESULTS", tmp_path / "current")
    _run(tmp_path / "s0", 0, [0.3, 0.2, 0.4], ddm_mean=0.80)
    _run(tmp_path / "s1", 1, [0.3, 0.2, 0.4], ddm_mean=0.70)
    result = pool_script.main(["--runs", str(tmp_path / "s0"), str(tmp_path / "s1"), "--out", str(tmp_path / "out"),
                               "--current"])  # fmt: skip
    ddm = result["quality"]["methods"]["ddm:topk"]
    assert ddm["mean"] == pytest.approx(0.75) and ddm["shape"] == pytest.approx(0.75)
    assert ddm["meets_bar_per_seed"] == {0: True, 1: False}
    assert "meets_bar_per_seed" not in result["quality"]["methods"]["real"]
    assert set(result["quality"]["codec"]) == {0, 1}
    assert result["distances"]["ddm:topk"]["fd_inf"] == pytest.approx((1.0 + 11.0) / 2)
    written = json.loads((tmp_path / "out" / "seeds.json").read_text())
    assert written["ratio_kid"]["decision"] == "not claimed"
    assert "| ddm:topk | 1 | 0.700 |" in (tmp_path / "out" / "seeds.md").read_text()
    current = json.loads((tmp_path / "current" / "quality.json").read_text())
    assert current["methods"]["ddm:topk"]["mean"] == pytest.approx(0.75)
    assert json.loads((tmp_path / "current" / "headline.json").read_text()) == written


def test_runs_that_saved_their_replicates_pool_exactly(pool_script, tmp_path):
    """With every run's replicates on disk the pooled interval is the percentile interval of all of them together,
    and the rule is decided on it, even where the per-seed bounds straddle 1."""
    import numpy as np

    from lib.evaluate.distances import DistanceResult, Interval, save_replicates

    ratios = [[1.5, 1.2, 1.8], [1.6, 0.95, 1.9], [1.55, 1.25, 1.85]]  # bounds alone: undecided
    rng = np.random.default_rng(0)
    draws = {}
    runs = []
    for seed, ratio in enumerate(ratios):
        folder = _run(tmp_path / f"s{seed}", seed, ratio)
        headline = json.loads((folder / "headline.json").read_text())
        (folder / "headline.json").write_text(json.dumps({**headline, "head_method": "ddm:topk"}))
        draws[seed] = rng.normal(ratio[0], 0.1, 200)
        iv = Interval(ratio[0], ratio[1], ratio[2], draws[seed])
        result = DistanceResult(iv, iv, iv, 0.0, 10, {}, 10, 10)
        save_replicates(folder / f"replicates-s{seed}.npz", {"ddm:topk": result},
                        {("monolith", "ddm:topk"): {"fd_inf": iv, "kid": iv}})  # fmt: skip
        runs.append(pool_script.load_run(folder))
    pooled = pool_script.pool(runs)["ratio_fd_inf"]
    everything = np.concatenate(list(draws.values()))
    assert pooled["pooled_interval"] == pytest.approx(list(np.percentile(everything, [2.5, 97.5])), abs=1e-4)
    assert pooled["decision"] == "claimed"  # the exact interval lies above 1 and mean - 2 sd > 1
    assert "(exact)" in pool_script.markdown(pool_script.pool(runs))
    (tmp_path / "s2" / "replicates-s2.npz").unlink()  # one run without replicates: back to the bounds
    assert "pooled_interval" not in pool_script.pool(runs)["ratio_fd_inf"]


def test_router_at_t1_and_the_clusters_ami_are_carried(pool_script, tmp_path):
    """Per seed: the router's accuracy at t = 1 and the caption-only ceiling; the clusters' AMI (the same clusters
    under every training seed) from the headline, or from the driver's log for runs written before it kept it."""
    runs = []
    for seed in (0, 1):
        folder = _run(tmp_path / f"s{seed}", seed, [1.0, 0.9, 1.1])
        headline = json.loads((folder / "headline.json").read_text())
        headline |= {"router_accuracy_t1": {str(seed): [0.9, 0.95][seed]}, "caption_ceiling_t1": {str(seed): 0.97}}
        if seed == 1:
            headline["cluster_ami"] = {"scene": 0.5}
            quality = json.loads((folder / "quality.json").read_text())
            quality["methods"]["ddm:oracle"] = quality["methods"]["ddm:topk"]
            (folder / "quality.json").write_text(json.dumps(quality))
        (folder / "headline.json").write_text(json.dumps(headline))
        runs.append(folder)
    (runs[0] / "run-s0.log").write_text("...\nsemantic clusters K=4: AMI with attributes: scene 0.65, motion -0.00\n")
    pooled = pool_script.pool([pool_script.load_run(f) for f in runs])
    assert pooled["router_accuracy_t1"] == {"0": 0.9, "1": 0.95} and pooled["caption_ceiling_t1"]["1"] == 0.97
    assert pooled["cluster_ami"] == {"scene": 0.65, "motion": -0.0}
    assert pooled["quality"]["methods"]["ddm:oracle"]["training_seeds"] == [1]  # a diagnostic of one seed is kept
    assert "seed 1 0.95 (0.97)" in pool_script.markdown(pooled)
    (runs[0] / "run-s0.log").unlink()
    assert pool_script.pool([pool_script.load_run(f) for f in runs])["cluster_ami"] is None

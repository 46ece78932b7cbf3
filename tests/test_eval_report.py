"""The EvalReport: N-independent distances with paired intervals, ratios, abstaining accuracy, comparability rules.

A barely trained AttrNet (feature_dim 16, so that the FD∞ extrapolation's 4·D rows fit a small test) scores three
methods on the same prompts: noise, the prompts' own clips (a perfect generator) and those clips again as ``real``.
"""

import re

import numpy as np
import pandas as pd
import pandera.errors
import pytest
import torch

from data_schemas.evaluate import EvalReport
from lib.config import ConfigError, EvalConfig
from lib.data.procedural import iter_builtin_clips
from lib.data.video import write_gif
from lib.evaluate.attrnet_training import train_attrnet
from lib.evaluate.compare import headline
from lib.evaluate.fd_features import fd_feature_spec
from lib.evaluate.page import report_html
from lib.evaluate.report import bootstrap_mean, evaluate_methods
from lib.features.aesthetic import AestheticScorer
from lib.features.batch import FeatureError
from lib.sample.methods import gallery_html
from tests.test_clip_score import clip_dir  # noqa: F401  (the tiny CLIP folder fixture)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Two OpenMP threads on a busy 2-core machine run these small convs several times slower than one."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _data(n, start=0):
    clips = list(iter_builtin_clips(0, start + n, 4, 16, 16, 1, start=start))
    return np.stack([c.frames for c in clips]), pd.DataFrame([c.attributes for c in clips])


@pytest.fixture(scope="module")
def setup():
    reference, reference_attrs = _data(80)
    net = train_attrnet(reference, reference_attrs, steps=4, batch_size=8, seed=0, feature_dim=16)
    held, held_attrs = _data(72, start=80)
    noise = np.random.default_rng(0).integers(0, 256, held.shape, dtype=np.uint8)
    generated = {"ddm:topk": noise, "monolith": held.copy(), "real": held.copy()}
    return reference, net, generated, held_attrs


def test_report_rows_names_intervals_and_ratios(setup):
    reference, net, generated, prompts_attrs = setup
    cfg = EvalConfig(bootstrap=40)
    report = evaluate_methods(
        reference, generated, prompts_attrs, cfg, featnet=net, reference_clusters=np.arange(80) % 2,
        prompt_clusters=np.arange(72) % 2,
    )  # fmt: skip
    EvalReport.validate(report)
    # Without I3D/CLIP paths no proxy may be called FVD or CLIP.
    assert not any(m.startswith("fvd") or "clip" in m for m in report[EvalReport.metric])
    names = {"fd_attrnet", "fd_inf_attrnet", "kid_attrnet", "ratio_fd_inf_attrnet", "ratio_kid_attrnet",
             "attr_acc_attrnet", "attr_acc_attrnet.color", "object_found_attrnet", "motion_mad",
             "motion_flow"}  # fmt: skip
    assert names <= set(report[EvalReport.metric])
    main = report[report.cluster == -1].set_index(["method", "metric"])
    assert main.loc[("monolith", "kid_attrnet"), "n_real"] == 80
    assert main.loc[("monolith", "kid_attrnet"), "n_generated"] == 72
    for method in generated:  # every distance has an interval around its estimate
        for metric in ("fd_attrnet", "fd_inf_attrnet", "kid_attrnet"):
            row = main.loc[(method, metric)]
            assert row.ci_low <= row["mean"] <= row.ci_high
    # a perfect generator is scored exactly like the real clips (same videos, same paired bootstrap)
    for metric in ("fd_attrnet", "kid_attrnet", "attr_acc_attrnet"):
        assert main.loc[("monolith", metric)].tolist()[-3:] == main.loc[("real", metric)].tolist()[-3:]
    assert main.loc[("ddm:topk", "kid_attrnet"), "mean"] > main.loc[("monolith", "kid_attrnet"), "ci_high"]
    ratio = main.loc[("ddm:topk", "ratio_kid_attrnet")]  # monolith / noise: far below 1
    assert ratio["mean"] < 1 and ratio.ci_high < 1
    assert ("monolith", "ratio_kid_attrnet") not in main.index  # no ratio of the baseline with itself
    per_cluster = report[(report.metric == "kid_attrnet") & (report.cluster >= 0)]
    assert sorted(set(per_cluster.cluster)) == [0, 1] and (per_cluster.n_real == 40).all()
    found = main.loc[("monolith", "object_found_attrnet"), "mean"]
    assert found >= main.loc[("monolith", "attr_acc_attrnet.color"), "mean"]  # either prompt object counts


def test_headline_prints_estimates_with_intervals(setup):
    reference, net, generated, prompts_attrs = setup
    report = evaluate_methods(reference, generated, prompts_attrs, EvalConfig(bootstrap=20), featnet=net)
    table = headline(report)
    assert list(table.index) == sorted(generated) or set(table.index) == set(generated)
    assert table.columns[0] == "fd_inf_attrnet" and "kid_attrnet" in table.columns
    assert all("[" in cell and "]" in cell for cell in table["kid_attrnet"])
    assert table.loc["monolith", "ratio_kid_attrnet"] == ""  # the baseline has no ratio with itself


def test_comparability_rules_are_enforced(setup):
    reference, net, generated, prompts_attrs = setup
    cfg = EvalConfig(bootstrap=10)
    uneven = {**generated, "expert:0": generated["monolith"][:6]}
    with pytest.raises(ValueError, match="different numbers of videos"):
        evaluate_methods(reference, uneven, prompts_attrs, cfg, featnet=net)
    with pytest.raises(ValueError, match="72 generated videos per method but 5 prompts"):
        evaluate_methods(reference, generated, prompts_attrs.iloc[:5], cfg, featnet=net)
    prov = fd_feature_spec(cfg, net).provenance(40, 12, 4, 16, 16)
    assert prov["extractor"].startswith("attrnet-") and prov["n_real"] == 40 and prov["source_resolution"] == "16x16"
    with pytest.raises(FeatureError, match=r"no I3D file \(evaluate.i3d_path\), no AttrNet and no reference videos"):
        fd_feature_spec(cfg, None)
    with pytest.raises(ValueError, match="not found"):
        evaluate_methods(reference, generated, prompts_attrs, EvalConfig(i3d_path="/no/i3d.pt"), featnet=net)


def test_bootstrap_mean_interval_and_schema_rejects_bad_rows():
    values = np.r_[np.zeros(50), np.ones(50)]
    mean, low, high = bootstrap_mean(values, 400, seed=0)
    assert mean == 0.5 and 0.38 < low < 0.45 and 0.55 < high < 0.62  # ≈ 0.5 ± 1.96 · 0.05
    assert bootstrap_mean(values, 400, seed=0) == (mean, low, high)
    row = {"method": "ddm:topk", "metric": "kid_attrnet", "extractor": "attrnet-x", "cluster": -1, "n_real": 4,
           "n_generated": 4, "mean": 1.0, "ci_low": 0.5, "ci_high": 1.5}  # fmt: skip
    EvalReport.validate(pd.DataFrame([row]))
    EvalReport.validate(pd.DataFrame([{**row, "ci_low": float("nan"), "ci_high": float("nan")}]))
    for bad in ({"method": "best-model"}, {"metric": "FVD"}, {"cluster": -2}, {"ci_low": 2.0}):
        with pytest.raises(pandera.errors.SchemaError):
            EvalReport.validate(pd.DataFrame([{**row, **bad}]))
    with pytest.raises(pandera.errors.SchemaError):
        EvalReport.validate(pd.DataFrame([row, row]))
    with pytest.raises((pandera.errors.SchemaError, pandera.errors.SchemaErrors), match="extra"):
        EvalReport.validate(pd.DataFrame([{**row, "extra": 1}]))


def test_report_html_has_table_chart_and_animations(setup, tmp_path):
    reference, net, generated, prompts_attrs = setup
    report = evaluate_methods(reference, generated, prompts_attrs, EvalConfig(bootstrap=10), featnet=net)
    (tmp_path / "gifs").mkdir()
    for m, v in generated.items():  # the names sample_methods gives its GIFs
        for i in range(2):
            write_gif(tmp_path / "gifs" / f"{m.replace(':', '-')}-{i:04d}.gif", v[i])
    page = report_html(report, gallery_html(tmp_path, list(generated), ["a red ball", "a blue square"]))
    assert page.count("data:image/gif;base64,") == 6 and page.count("data:image/png;base64,") == 1
    assert "<table" in page and "kid_attrnet" in page and "ddm:topk" in page and "paired bootstrap" in page
    assert "a blue square" in page and (tmp_path / "gifs" / "monolith-0000.gif").read_bytes()[:6] == b"GIF89a"
    # the headline table (method x metric with intervals) comes first; every row of the report is folded at the end
    assert page.index("<table") < page.index("data:image/png") < page.index("<details>")
    first = page[page.index("<table") : page.index("</table>")]
    assert "ddm:topk" in first and re.search(r"<td>\d+\.\d+ \[\d+\.\d+, \d+\.\d+\]</td>", first)
    assert all(f"<td>{method}</td>" in first for method in generated)  # one row per method
    assert "img{max-width:100%" in page  # figures fit the page


def test_compare_methods_scores_held_out_prompts_against_held_out_reference(tmp_path):
    """The protocol: prompts from the prompt role, reference from the reference role, the prompt clips as ``real``."""
    from lib.config import DataConfig
    from lib.data.ingest import ingest
    from lib.data.split import SplitError
    from lib.evaluate.compare import compare_methods
    from lib.sample.prompts import stratified_prompts

    data = ingest(DataConfig(num_clips=240, frames=4, height=16, width=16, reference_fraction=0.3, prompt_fraction=0.3),
                  seed=0, out_dir=tmp_path)  # fmt: skip
    index, attrs = data.index, data.attributes
    assignments = index[["clip_id", "role"]].assign(cluster_id=np.arange(len(index)) % 2, distance=0.0, fine_cluster=0)
    prompts = stratified_prompts(assignments, index, num_prompts=40, seed=0)
    net = train_attrnet(np.zeros((8, 4, 16, 16, 3), np.uint8), attrs.iloc[:8], steps=2, batch_size=4, feature_dim=8)
    noise = np.random.default_rng(1).integers(0, 256, (40, 4, 16, 16, 3), dtype=np.uint8)
    report = compare_methods(str(tmp_path), index, attrs, assignments, {"ddm:topk": noise}, prompts,
                             EvalConfig(num_real=50, bootstrap=10), net, seed=0)  # fmt: skip
    kid = report[(report.metric == "kid_attrnet") & (report.cluster == -1)].set_index("method")
    assert set(kid.index) == {"ddm:topk", "real"} and (kid.n_real == 50).all() and (kid.n_generated == 40).all()
    assert kid.loc["real", "mean"] < kid.loc["ddm:topk", "mean"]
    train_prompt = prompts.assign(clip_id=index.loc[index.role == "train", "clip_id"].iloc[:40].to_numpy())
    with pytest.raises(SplitError, match="role\\(s\\) \\['train'\\]"):
        compare_methods(str(tmp_path), index, attrs, assignments, {"ddm:topk": noise}, train_prompt,
                        EvalConfig(num_real=50, bootstrap=10), net, seed=0)  # fmt: skip


def test_method_names_admit_routing_schedules_and_nothing_else():
    import re

    from data_schemas.evaluate import METHOD_PATTERN

    for ok in ("ddm:topk", "ddm:random_topk", "ddm:sample>top1@0.5", "ddm:full>topk@0.8>top1@0.3", "monolith",
               "expert:2", "real", "ddm:topk>expert:1@0.5", "student"):  # fmt: skip
        assert re.match(METHOD_PATTERN, ok), ok
    for bad in ("ddm:", "ddm:topk>top1", "ddm:Top1", "monolith2", "ddm:topk; drop", "students"):
        assert not re.match(METHOD_PATTERN, bad), bad


def test_aesthetic_metric_scores_every_video_and_names_its_clip_and_head(setup, clip_dir, tmp_path):  # noqa: F811
    reference, net, generated, prompts_attrs = setup
    torch.manual_seed(2)
    torch.save({"weight": torch.randn(1, 16), "bias": torch.randn(1)}, tmp_path / "linear.pth")  # tiny CLIP: 16-d
    with pytest.raises(ConfigError, match="evaluate.clip_path: required with evaluate.aesthetic_path"):
        EvalConfig(aesthetic_path=str(tmp_path / "linear.pth"))
    cfg = EvalConfig(bootstrap=20, aesthetic_path=str(tmp_path / "linear.pth"), clip_path=str(clip_dir))
    prompts = ["a red circle"] * len(prompts_attrs)
    report = evaluate_methods(reference, generated, prompts_attrs, cfg, featnet=net, prompts=prompts)
    rows = report[(report.metric == "aesthetic_laion") & (report.cluster == -1)].set_index("method")
    assert sorted(rows.index) == sorted(generated)
    assert (rows.extractor == f"clip-{clip_dir.name}+linear.pth").all()
    scorer = AestheticScorer(tmp_path / "linear.pth", clip_dir)
    expected = np.mean([scorer.score(v) for v in generated["ddm:topk"]])
    assert rows.loc["ddm:topk", "mean"] == pytest.approx(expected, rel=1e-5)
    assert rows.loc["monolith", "mean"] == rows.loc["real", "mean"]  # the same videos score the same


def test_without_attributes_or_i3d_the_distances_use_reference_standardised_visual_stats(setup):
    reference, _, generated, prompts_attrs = setup
    report = evaluate_methods(reference, generated, prompts_attrs.iloc[0:0], EvalConfig(bootstrap=20),
                              prompts=["a clip"] * len(prompts_attrs))  # fmt: skip
    main = report[report.cluster == -1].set_index(["method", "metric"])
    assert {"fd_vstats", "kid_vstats"} <= set(report.metric) and not any("attrnet" in m for m in report.metric)
    assert (report[report.metric == "kid_vstats"].extractor == "visual-stats-v1").all()
    assert main.loc[("monolith", "kid_vstats"), "mean"] == main.loc[("real", "kid_vstats"), "mean"]
    noise, held = main.loc[("ddm:topk", "kid_vstats")], main.loc[("monolith", "kid_vstats")]
    assert noise["ci_low"] > held["ci_high"] and np.isfinite(noise["mean"]) and noise["mean"] < 1e3

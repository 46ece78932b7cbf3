import numpy as np
import pandas as pd
import pandera.errors
import pytest
import torch

from data_schemas.evaluate import EvalReport
from lib.config import EvalConfig
from lib.data.procedural import iter_builtin_clips
from lib.data.video import write_gif
from lib.evaluate.featnet import train_attrnet
from lib.evaluate.frechet import FeatureError
from lib.evaluate.report import _summary, evaluate_methods, fd_feature_spec, report_html


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
    real, real_attrs = _data(48)
    net = train_attrnet(real, real_attrs, steps=4, batch_size=8, seed=0)
    held, held_attrs = _data(12, start=48)
    rng = np.random.default_rng(0)
    generated = {
        "ddm:topk": [rng.integers(0, 256, held.shape, dtype=np.uint8) for _ in range(3)],
        "monolith": [held.copy(), held.copy(), held.copy()],  # a perfect generator: the prompts' real clips
    }
    return real, real_attrs, net, generated, held_attrs


def test_report_rows_names_and_counts(setup):
    real, real_attrs, net, generated, prompts_attrs = setup
    cfg = EvalConfig(num_real=40)
    clusters = np.arange(48) % 2
    report = evaluate_methods(
        real, real_attrs, generated, prompts_attrs, cfg, featnet=net, real_clusters=clusters,
        prompt_clusters=np.arange(12) % 2,
    )  # fmt: skip
    EvalReport.validate(report)
    # Without I3D/CLIP paths no proxy may be called FVD or CLIP.
    assert not any(m.startswith("fvd") or "clip" in m for m in report[EvalReport.metric])
    assert {"fd_attrnet", "attr_acc_attrnet", "attr_acc_attrnet.color", "motion_mad", "motion_flow"} <= set(
        report[EvalReport.metric]
    )
    fd = report[(report.metric == "fd_attrnet") & (report.cluster == -1)].set_index("method")
    assert fd.loc["monolith", "n_real"] == 40 and fd.loc["monolith", "n_generated"] == 12
    assert fd.loc["ddm:topk", "draws"] == 3 and fd.loc["monolith", "sd"] == pytest.approx(0.0, abs=1e-9)
    assert fd.loc["ddm:topk", "mean"] > fd.loc["monolith", "mean"]  # noise is further from real than real clips
    assert fd.extractor.str.startswith("attrnet-").all()
    per_cluster = report[(report.metric == "fd_attrnet") & (report.cluster >= 0)]
    assert sorted(set(per_cluster.cluster)) == [0, 1] and (per_cluster.n_real == 20).all()
    acc = report[(report.metric == "attr_acc_attrnet.background") & (report.cluster == -1)].set_index("method")
    assert 0.0 <= acc.loc["ddm:topk", "mean"] <= 1.0
    real_motion = report[(report.method == "real") & (report.metric == "motion_mad") & (report.cluster == -1)]
    assert len(real_motion) == 1 and real_motion.n_real.iloc[0] == 40 and np.isnan(real_motion.sd.iloc[0])
    mono = report[(report.method == "monolith") & (report.metric == "motion_mad") & (report.cluster == -1)]
    assert mono["mean"].iloc[0] > 0.0


def test_comparability_rules_are_enforced(setup):
    real, real_attrs, net, generated, prompts_attrs = setup
    cfg = EvalConfig(num_real=40)
    uneven = {**generated, "expert:0": [generated["monolith"][0][:6]]}
    with pytest.raises(ValueError, match="differ in size"):
        evaluate_methods(real, real_attrs, uneven, prompts_attrs, cfg, featnet=net)
    with pytest.raises(ValueError, match="12 generated videos per draw but 5 prompts"):
        evaluate_methods(real, real_attrs, generated, prompts_attrs.iloc[:5], cfg, featnet=net)
    prov = fd_feature_spec(cfg, net).provenance(40, 12, 4, 16, 16)
    assert prov["extractor"].startswith("attrnet-") and prov["n_real"] == 40 and prov["source_resolution"] == "16x16"
    with pytest.raises(FeatureError, match="eval.i3d_path"):
        evaluate_methods(real, real_attrs, generated, prompts_attrs, cfg, featnet=None)
    with pytest.raises(ValueError, match="not found"):
        evaluate_methods(real, real_attrs, generated, prompts_attrs, EvalConfig(i3d_path="/no/i3d.pt"), featnet=net)


def test_summary_interval_and_schema_rejects_bad_rows():
    mean, sd, ci = _summary([1.0, 2.0, 3.0])
    assert (mean, sd) == (2.0, 1.0) and ci == pytest.approx(4.302653 / np.sqrt(3), rel=1e-5)
    row = {
        "method": "ddm:topk", "metric": "fd_attrnet", "extractor": "attrnet-x", "cluster": -1, "n_real": 4,
        "n_generated": 4, "draws": 1, "mean": 1.0, "sd": float("nan"), "ci95": float("nan"),
    }  # fmt: skip
    EvalReport.validate(pd.DataFrame([row]))
    for bad in ({"method": "best-model"}, {"metric": "FVD"}, {"cluster": -2}, {"sd": -1.0}):
        with pytest.raises(pandera.errors.SchemaError):
            EvalReport.validate(pd.DataFrame([{**row, **bad}]))
    with pytest.raises(pandera.errors.SchemaError):
        EvalReport.validate(pd.DataFrame([row, row]))
    with pytest.raises((pandera.errors.SchemaError, pandera.errors.SchemaErrors), match="extra"):
        EvalReport.validate(pd.DataFrame([{**row, "extra": 1}]))


def test_report_html_has_table_chart_and_animations(setup, tmp_path):
    real, real_attrs, net, generated, prompts_attrs = setup
    report = evaluate_methods(real, real_attrs, generated, prompts_attrs, EvalConfig(num_real=40), featnet=net)
    gifs = {
        m: [str(write_gif(tmp_path / f"{m.replace(':', '_')}_{i}.gif", d[0][i])) for i in range(2)]
        for m, d in generated.items()
    }
    page = report_html(report, gifs)
    assert page.count("data:image/gif;base64,") == 4 and page.count("data:image/png;base64,") == 1
    assert "<table" in page and "fd_attrnet" in page and "ddm:topk" in page
    assert (tmp_path / "monolith_0.gif").read_bytes()[:6] == b"GIF89a"

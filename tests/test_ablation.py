"""benchmarks/ablation.py: the fair-fight rows undo every fix first, then add one per row, and its summary reads the
pipeline's reports (the runs themselves are the benchmark's, not the suite's)."""

import math

import pandas as pd
import pytest

from data_schemas.router import RouterReport
from lib.config import EncodeConfig, load_config, replace_in


def test_rows_start_from_the_v5_recipe_and_add_one_fix_at_a_time(benchmark_script):
    ablation = benchmark_script("ablation")
    base = load_config("configs/tiny.yaml")
    steps = ablation.rows(base, v5_router_steps=200)
    cfgs, cfg = [], base
    for _, changes in steps:
        cfg = replace_in(cfg, **changes)
        cfgs.append(cfg)
    v5 = cfgs[0]
    assert v5.encode.max_tokens == 16 and v5.router.endpoint_mass == 0.0 and v5.router.steps == 200
    assert v5.cluster.embedders == ["visual_stats"] and v5.expert.budget_split == "equal"
    assert cfgs[1].router.endpoint_mass == 0.5 and cfgs[1].router.steps == base.router.steps
    assert cfgs[1].encode.max_tokens == 16, "one change per row: the tokens come in the next row"
    assert cfgs[2].encode.max_tokens == EncodeConfig().max_tokens
    assert cfgs[3].cluster.embedders == ["visual_stats", "text"] and cfgs[3].expert.budget_split == "equal"
    assert cfgs[4].expert.budget_split == "by_size" and cfgs[4].expert.monolith_lr_scale == 1.0
    assert cfgs[5].expert.monolith_lr_scale == pytest.approx(math.sqrt(base.cluster.num_clusters))
    assert [ablation._slug(i, n) for i, (n, _) in enumerate(steps)][:2] == ["00-v5-recipe", "01-router-at-t-1"]


def test_summary_reads_every_method_and_the_router_at_t1_beside_its_ceiling(benchmark_script, tmp_path):
    ablation = benchmark_script("ablation")
    rows = [{"method": m, "metric": metric, "extractor": "attrnet-x", "cluster": c, "n_real": 10, "n_generated": 10,
             "mean": value, "ci_low": value - 0.1, "ci_high": value + 0.1}
            for m, value in (("monolith", 0.5), ("ddm:topk", 0.4), ("ddm:oracle", 0.45))
            for metric in ("attr_acc_attrnet", "object_found_attrnet") for c in (-1, 0)]  # fmt: skip
    pd.DataFrame(rows).to_parquet(tmp_path / "eval_report.parquet")
    router = pd.DataFrame({"kind": ["bucket", "exact", "caption_only"], "t_low": [0.8, 1.0, 1.0],
                           "t_high": [1.0, 1.0, 1.0], "accuracy": [0.8, 0.91, 0.96], "ece": [0.0] * 3,
                           "mean_max_prob": [0.9] * 3, "n": [10, 10, 5]})  # fmt: skip
    RouterReport.validate(router).to_parquet(tmp_path / "router_report.parquet")
    summary = ablation.summarise(tmp_path)
    assert summary["router_accuracy_t1"] == 0.91 and summary["caption_ceiling_t1"] == 0.96
    assert summary["methods"]["ddm:oracle"]["attr_acc_attrnet"] == pytest.approx([0.45, 0.35, 0.55])
    assert summary["methods"]["ddm:top1"] == {}  # not sampled: no numbers, no error
    text = ablation.table([{"row": "v5 recipe", "seconds": 12.0, **summary}])
    assert "| v5 recipe | ddm:topk | - | - | 0.400 |" in text and "0.91 (0.96)" in text

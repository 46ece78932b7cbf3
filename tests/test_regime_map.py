"""The regime map's reading rule (benchmarks/regime_protocol.md) on made-up cells whose answer is known."""

import numpy as np
import pytest

from lib.evaluate.cells import SIZES
from lib.evaluate.regime_map import budget, loss_ratio, plot_map, read_map, read_seeds, size_name


def _cell(size="s", steps=500, k=4, overlap=0.5, fraction=0.0, ddm=1.0, monolith=1.0):
    expert = {**SIZES[size], "steps": steps, "batch_size": 8, "seed_fraction": fraction}
    flat = lambda v: {"0.5": v, "1.0": v}  # noqa: E731
    loss = {"ddm": flat(ddm), "monolith": flat(monolith)}
    return {"num_clusters": k, "config": {"expert": expert, "data": {"family_overlap": overlap}},
            "heldout_loss": loss, "heldout_loss_oracle": flat(ddm)}  # fmt: skip


def _grid(ddm_by_budget: dict[str, list[float]]) -> dict[str, dict]:
    """The protocol's capacity x budget block: the monolith's loss is 1.0 everywhere, the DDM's as given."""
    cells = {}
    for size, losses in ddm_by_budget.items():
        for steps, loss in zip((150, 500, 1500, 5000), losses, strict=True):
            name = "base" if (size, steps) == ("s", 500) else f"size-{size}_expert.steps-{steps}"
            cells[name] = _cell(size, steps, ddm=loss)
    return cells


def test_loss_ratio_budget_and_size_of_a_cell():
    cell = _cell("xs", 5000, ddm=0.8, monolith=0.88)
    assert loss_ratio(cell) == pytest.approx(1.1) and budget(cell) == 10.0 and size_name(cell) == "xs"


def test_prediction_a_needs_two_sizes_rising_beyond_two_sigma_and_more_for_the_smallest():
    cells = _grid({"xs": [1.0, 0.98, 0.95, 0.90], "s": [1.0, 0.99, 0.97, 0.95], "m": [1.0, 1.0, 0.99, 0.99]})
    reruns = {"base": _cell(ddm=0.995)}  # sigma = |1/0.99 - 1/0.995| ~ 0.005
    reading = read_map(cells, reruns)
    assert reading.sigma == pytest.approx(abs(1 / 0.99 - 1 / 0.995))
    assert reading.predictions["a_budget_per_parameter"]["verdict"] == "confirmed"
    assert reading.winners[0] == "size-xs_expert.steps-5000" and not reading.crossings, "a winner: no crossing fit"
    falling = _grid({"xs": [0.9, 0.95, 1.0, 1.05], "s": [0.9, 0.95, 1.0, 1.05], "m": [1.0, 1.0, 1.0, 1.0]})
    assert read_map(falling, reruns).predictions["a_budget_per_parameter"]["verdict"] == "refuted"


def test_k_distinctness_and_seed_model_count_only_beyond_two_sigma():
    cells = _grid({"s": [1.0, 1.0, 1.0, 1.0]})
    cells["cluster.num_clusters-2_expert.steps-1000"] = _cell(k=2, steps=1000, ddm=1.0)
    cells["cluster.num_clusters-8_expert.steps-250"] = _cell(k=8, steps=250, ddm=0.99)  # +0.0101: within 2 sigma
    cells["data.family_overlap-1.0"] = _cell(overlap=1.0, ddm=1.02)
    cells["data.family_overlap-0.0"] = _cell(overlap=0.0, ddm=0.98)
    cells["expert.seed_fraction-0.5"] = _cell(fraction=0.5, ddm=1.0)
    reading = read_map(cells, {"base": _cell(ddm=1 / 1.006)})  # sigma 0.006
    assert reading.predictions["b_k"]["verdict"] == "not shown"
    assert reading.predictions["c_distinctness"]["verdict"] == "confirmed"
    assert reading.predictions["d_seed_model"]["verdict"] == "not shown"


def test_without_a_winner_the_loss_fits_cross_where_the_lines_meet(tmp_path):
    budgets = np.array([0.3, 1.0, 3.0, 10.0])
    monolith = 0.9 * budgets**-0.10  # the DDM's loss falls faster and meets the monolith's at budget 100
    ddm = 0.9 * 100 ** (0.15 - 0.10) * budgets**-0.15
    cells = {}
    for steps, d, m in zip((150, 500, 1500, 5000), ddm, monolith, strict=True):
        cells[f"size-xs_expert.steps-{steps}"] = _cell("xs", steps, ddm=d, monolith=m)
    reading = read_map(cells, {"size-xs_expert.steps-150": _cell("xs", 150, ddm=ddm[0] * 1.01, monolith=monolith[0])})
    assert not reading.winners
    cross = reading.crossings["xs"]
    assert cross["budget_x"] == pytest.approx(100.0, rel=1e-6) and cross["ddm_better_above"]
    assert cross["interval_95"][0] == pytest.approx(100.0, rel=1e-6), "exact lines: no residuals, no spread"
    assert plot_map(cells, reading, tmp_path / "map.png").stat().st_size > 0


def test_the_noise_scale_needs_a_rerun_of_a_grid_cell():
    with pytest.raises(ValueError, match="no rerun matches a cell"):
        read_map({"base": _cell()}, {"other": _cell()})


def _seeds(ratios: dict[str, list[float]], low: float = 0.99) -> dict[int, dict[str, dict]]:
    """Seed -> cells, each cell's loss ratio under seeds 0, 1, 2 as given; the low-budget xs cell under seed 0 only."""
    by_seed = {s: {n: _cell("xs", 5000, ddm=1.0 / r[s]) for n, r in ratios.items()} for s in range(3)}
    by_seed[0]["low"] = _cell("xs", 150, ddm=1.0 / low)
    return by_seed


def test_three_seed_means_win_only_beyond_the_pooled_noise_and_above_one_under_every_seed():
    reading = read_seeds(_seeds({"high": [1.10, 1.12, 1.11], "flat": [1.0, 1.02, 0.98], "mixed": [1.2, 1.2, 0.99]}),
                         low="low", high="high")  # fmt: skip
    assert sorted(reading.ratios) == ["flat", "high", "mixed"]  # "low" lacks seeds 1 and 2: not pooled
    assert reading.means["high"] == pytest.approx(1.11) and reading.dof == 6
    # squared deviations from each cell's mean: 0.0002 + 0.0008 + 0.0294 over 3 x (3 - 1) degrees of freedom
    assert reading.pooled_sd == pytest.approx(np.sqrt(0.0304 / 6))
    assert reading.win_bar == pytest.approx(1 + 2 * np.sqrt(0.0304 / 6) / np.sqrt(3))  # 1.082
    assert reading.winners == ["high"]  # "mixed" has the higher mean but one seed below 1
    assert reading.standard_errors["flat"] == pytest.approx(0.02 / np.sqrt(3))
    rise = reading.budget_rise
    assert rise["rise"] == pytest.approx(1.11 - 0.99) and rise["low_seeds"] == 1
    assert rise["needed"] == pytest.approx(2 * reading.pooled_sd * np.sqrt(1 / 3 + 1))
    assert rise["needed"] == pytest.approx(0.1644, abs=1e-4) and rise["verdict"] == "not shown"  # 0.12 < 0.164


def test_a_budget_rise_inside_the_noise_is_not_shown_and_missing_cells_are_named():
    reading = read_seeds(_seeds({"high": [1.05, 0.95, 1.0], "other": [0.9, 1.1, 1.0]}, low=0.99), "low", "high")
    assert reading.winners == [] and reading.budget_rise["verdict"] == "not shown"
    with pytest.raises(ValueError, match="prediction \\(a\\) needs 'nope' under every seed"):
        read_seeds(_seeds({"high": [1.0, 1.0, 1.0]}), "low", "nope")

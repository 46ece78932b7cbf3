"""``expert.budget_split``: how the K experts share their K x ``expert.steps`` (lib.train.specs)."""

import pandas as pd
import pytest

from lib.config import ConfigError, RunConfig, replace_in
from lib.train.compute import flops_per_step
from lib.train.specs import expert_specs, monolith_spec, split_steps


def _assignments(sizes: list[int]) -> pd.DataFrame:
    """Train clips per cluster as given, plus a held-out clip in cluster 0 that must not count."""
    ids = [(f"c{k}-{i}", k) for k, n in enumerate(sizes) for i in range(n)]
    rows = pd.DataFrame({"clip_id": [c for c, _ in ids], "cluster_id": [k for _, k in ids], "role": "train"})
    held = pd.DataFrame({"clip_id": ["held"], "cluster_id": [0], "role": "prompt"})
    return pd.concat([rows, held], ignore_index=True)


def _cfg(split: str, k: int = 3, steps: int = 100) -> RunConfig:
    return replace_in(RunConfig(), cluster={"num_clusters": k, "fine_clusters": 8},
                      expert={"steps": steps, "budget_split": split})  # fmt: skip


@pytest.mark.parametrize(
    "total, sizes",
    [(300, [50, 30, 20]), (301, [1, 1, 1]), (8640 * 3, [1530, 1206, 560]), (7, [3, 3, 1]), (5, [1000, 1, 1, 1, 1])],
)
def test_split_sums_exactly_and_is_proportional_within_one_step(total, sizes):
    shares = split_steps(total, sizes)
    assert sum(shares) == total and min(shares) >= 1
    quotas = [total * s / sum(sizes) for s in sizes]
    if all(q >= 1 for q in quotas):  # no share needed the 1-step floor
        assert all(abs(a - q) < 1 for a, q in zip(shares, quotas, strict=True)), (shares, quotas)
    assert split_steps(total, sizes) == shares, "deterministic"


def test_split_gives_every_expert_a_step_and_refuses_what_cannot_be_split():
    assert split_steps(4, [97, 1, 1, 1]) == [1, 1, 1, 1]
    assert split_steps(10, [97, 1, 1, 1]) == [7, 1, 1, 1]
    with pytest.raises(ValueError, match="cannot give each of 3 experts"):
        split_steps(2, [1, 1, 1])
    with pytest.raises(ValueError, match="positive clip counts"):
        split_steps(10, [3, 0])


def test_by_size_steps_follow_the_train_clips_and_keep_the_total_and_the_flops():
    cfg = _cfg("by_size")
    specs = expert_specs(cfg, _assignments([50, 30, 20]))
    assert [s.expert.steps for s in specs] == [150, 90, 60]  # the held-out clip of cluster 0 does not count
    assert sum(s.expert.steps for s in specs) == 3 * cfg.expert.steps
    mono = monolith_spec(cfg, _assignments([50, 30, 20]))
    per_step = flops_per_step(cfg.expert, 3, (8, 32, 32), 16, 384)  # the same network and batch for every model
    ddm = sum(flops_per_step(s.expert, 3, (8, 32, 32), 16, 384) * s.expert.steps for s in specs)
    assert ddm == pytest.approx(per_step * 3 * cfg.expert.steps)
    assert ddm == pytest.approx(flops_per_step(mono.expert, 3, (8, 32, 32), 16, 384) * mono.expert.steps)


def test_equal_split_is_unchanged_and_by_size_is_another_model():
    equal, by_size = _cfg("equal"), _cfg("by_size")
    table = _assignments([50, 30, 20])
    before = expert_specs(equal, table)
    assert all(s.expert == equal.expert for s in before), "equal: every expert trains expert.steps"
    after = expert_specs(by_size, table)
    assert all(a.spec_hash() != b.spec_hash() for a, b in zip(before, after, strict=True))
    # even where the split gives the same steps (equal clusters) it names another recipe, so another model
    same_sizes = _assignments([40, 40, 40])
    assert [s.expert.steps for s in expert_specs(by_size, same_sizes)] == [100, 100, 100]
    assert expert_specs(by_size, same_sizes)[0].spec_hash() != expert_specs(equal, same_sizes)[0].spec_hash()
    # the monolith has nothing to split: one model (one hash) serves both
    assert monolith_spec(by_size, table).spec_hash() == monolith_spec(equal, table).spec_hash()


def test_budget_split_is_checked_by_name():
    with pytest.raises(ConfigError, match="expert.budget_split: 'size' is not one of equal, by_size"):
        replace_in(RunConfig(), expert={"budget_split": "size"})


def test_monolith_lr_scale_moves_only_the_monolith_and_names_its_lr():
    plain, scaled = _cfg("equal"), replace_in(_cfg("equal"), expert={"monolith_lr_scale": 3**0.5})
    table = _assignments([50, 30, 20])
    mono = monolith_spec(scaled, table)
    assert mono.expert.lr == pytest.approx(plain.expert.lr * 3**0.5) and mono.expert.monolith_lr_scale == 1.0
    assert mono.spec_hash() != monolith_spec(plain, table).spec_hash()
    # the experts train as before: same lr, same identity, so their trained models are reused
    for a, b in zip(expert_specs(plain, table), expert_specs(scaled, table), strict=True):
        assert a.expert.lr == b.expert.lr and a.spec_hash() == b.spec_hash()
    with pytest.raises(ConfigError, match="expert.monolith_lr_scale: must be > 0, got 0.0"):
        replace_in(RunConfig(), expert={"monolith_lr_scale": 0.0})

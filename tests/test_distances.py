import dataclasses

import numpy as np
import pytest
import torch
from torchmetrics.image.kid import maximum_mean_discrepancy, poly_kernel, poly_mmd

from lib.evaluate.distances import (
    Interval,
    _cross_mean,
    _kernel,
    _kid_subsets,
    _pair_mean,
    fd_inf,
    kid,
    load_replicates,
    save_replicates,
    score_sets,
)

D = 16


def _gauss(seed: int, n: int, d: int = D, shift: float = 0.0, scale: float = 1.0) -> np.ndarray:
    """Isotropic Gaussian rows: N(shift · 1 / √d, scale² I), so ‖mean‖² = shift²."""
    return np.random.default_rng(seed).normal(size=(n, d)) * scale + shift / np.sqrt(d)


def _fd_bias(n: int, d: int = D) -> float:
    """First-order E[FD] of two independent n-row samples of N(0, I): 2d/n from the means, d(d+1)/(2(n−1)) from
    the covariances (Bures distance ≈ ‖E1 − E2‖²_F / 4 near I)."""
    return 2 * d / n + d * (d + 1) / (2 * (n - 1))


def _contains(interval: Interval, value: float) -> bool:
    return interval.low <= value <= interval.high


@pytest.mark.parametrize("n", [200, 800])
def test_same_gaussian_kid_and_fd_inf_contain_zero_fd_is_biased(n):
    res = score_sets(_gauss(1, n), {"g": _gauss(2, n)}, seed=3)[0]["g"]
    assert _contains(res.kid, 0.0)
    assert _contains(res.fd_inf, 0.0)
    assert res.fd.low > 0.0
    assert _contains(res.fd, _fd_bias(n))  # FD at fixed N measures its own bias, ~1/N
    assert (res.n_generated, res.n_real) == (n, n)


def test_fd_shrinks_with_n_fd_inf_does_not():
    small = score_sets(_gauss(1, 200), {"g": _gauss(2, 200)}, bootstrap=50)[0]["g"]
    large = score_sets(_gauss(1, 800), {"g": _gauss(2, 800)}, bootstrap=50)[0]["g"]
    assert small.fd.mean > 3.0 * large.fd.mean
    assert abs(small.fd_inf.mean) < 0.25 * small.fd.mean and abs(large.fd_inf.mean) < 0.25 * large.fd.mean


def test_shifted_gaussians_fd_inf_is_squared_shift_fd_overestimates():
    shift2 = 1.0
    res = score_sets(_gauss(1, 200), {"g": _gauss(2, 200, shift=np.sqrt(shift2))}, seed=1)[0]["g"]
    assert _contains(res.fd_inf, shift2)
    assert res.fd.low > shift2
    assert res.fd.mean == pytest.approx(shift2 + _fd_bias(200), rel=0.2)


def test_isotropic_scales_fd_inf_is_closed_form():
    s1, s2 = 1.0, 1.5
    res = score_sets(_gauss(1, 400, scale=s1), {"g": _gauss(2, 400, scale=s2)})[0]["g"]
    assert _contains(res.fd_inf, D * (s1 - s2) ** 2)


def test_kid_equals_torchmetrics_on_equal_sizes():
    x, y = _gauss(1, 120), _gauss(2, 120, shift=0.5)
    expected = poly_mmd(torch.from_numpy(x), torch.from_numpy(y)).item()
    assert kid(x, y)[0] == pytest.approx(expected, rel=1e-12)


def test_kid_unequal_sizes_is_the_general_u_statistic():
    x, y = _gauss(1, 90), _gauss(2, 130, shift=0.5)
    kxx, kyy, kxy = _kernel(x, x), _kernel(y, y), _kernel(x, y)
    off = lambda k: (k.sum() - np.trace(k)) / (k.shape[0] * (k.shape[0] - 1))  # noqa: E731
    assert kid(x, y)[0] == pytest.approx(off(kxx) + off(kyy) - 2 * kxy.mean(), rel=1e-12)
    assert np.allclose(kxy, poly_kernel(torch.from_numpy(x), torch.from_numpy(y)).numpy())


def test_kid_subset_sd_is_torchmetrics_over_the_same_subsets():
    x, y = _gauss(1, 150), _gauss(2, 140, shift=0.5)
    kxx, kyy, kxy = (torch.from_numpy(_kernel(a, b)) for a, b in ((x, x), (y, y), (x, y)))
    subsets = _kid_subsets(kxx.numpy(), len(y), subsets=20, subset_size=100, seed=4)
    values = []
    for wr, wg in zip(subsets.real, subsets.gen, strict=True):
        r, g = torch.from_numpy(np.flatnonzero(wr)), torch.from_numpy(np.flatnonzero(wg))
        values.append(maximum_mean_discrepancy(kxx[r][:, r], kxy[r][:, g], kyy[g][:, g]))
    expected_sd = torch.stack(values).std(unbiased=False).item()
    assert kid(x, y, subsets=20, subset_size=100, seed=4)[1] == pytest.approx(expected_sd, rel=1e-10)
    capped = score_sets(x, {"g": y}, bootstrap=2, kid_subsets=3, kid_subset_size=1000)[0]["g"]
    assert capped.kid_subset_size == 140


def test_tie_aware_bootstrap_kid_is_not_inflated():
    n = 200
    real, gen = _gauss(1, n), _gauss(2, n)
    res = score_sets(real, {"g": gen}, bootstrap=100, seed=5)[0]["g"]
    width = res.kid.high - res.kid.low
    assert abs(res.bootstrap_bias["kid"]) < 0.1 * width
    # Naive: torchmetrics' estimator on the resampled sets counts pairs of duplicated rows as distinct pairs.
    kxx, kyy, kxy = (torch.from_numpy(_kernel(a, b)) for a, b in ((real, real), (gen, gen), (real, gen)))
    rng = np.random.default_rng(0)
    naive = []
    for _ in range(100):
        r, g = (torch.from_numpy(rng.integers(0, n, n)) for _ in range(2))
        naive.append(maximum_mean_discrepancy(kxx[r][:, r], kxy[r][:, g], kyy[g][:, g]).item())
    assert np.mean(naive) - res.kid.mean > 0.5 * width
    # The tie-aware term equals the naive one on a sample without duplicates.
    ones = np.ones((1, n))
    assert _pair_mean(kyy.numpy(), ones)[0] == pytest.approx((kyy.sum() - kyy.trace()).item() / (n * (n - 1)))
    assert _cross_mean(kxy.numpy(), ones, ones)[0] == pytest.approx(kxy.mean().item())


def test_ratio_of_double_shift_contains_closed_form_and_self_ratio_is_exactly_one():
    real, a, b = _gauss(1, 300), _gauss(2, 300, shift=1.0), _gauss(3, 300, shift=2.0)
    pairs = [("b", "a"), ("a", "a"), ("a", "a_copy")]
    _, ratios = score_sets(real, {"a": a, "b": b, "a_copy": a.copy()}, ratio_pairs=pairs, seed=2)
    assert _contains(ratios[("b", "a")]["fd_inf"], 4.0)  # FD∞ ratio = ‖2δ‖² / ‖δ‖²
    for pair in pairs[1:]:
        for metric in ("fd", "fd_inf", "kid"):
            assert ratios[pair][metric].as_list() == [1.0, 1.0, 1.0]


def test_ratio_with_denominator_near_zero_is_nan():
    real = _gauss(1, 200)
    _, ratios = score_sets(real, {"a": _gauss(2, 200, shift=1.0), "real": _gauss(3, 200)}, ratio_pairs=[("a", "real")])
    assert np.isnan(ratios[("a", "real")]["fd_inf"].as_list()).all()


def test_standalone_functions_match_score_sets_and_same_seed_same_numbers():
    real, gen = _gauss(1, 200), _gauss(2, 200, shift=0.5)
    first = score_sets(real, {"g": gen}, bootstrap=30, seed=7)
    assert score_sets(real, {"g": gen}, bootstrap=30, seed=7) == first
    other = score_sets(real, {"g": gen}, bootstrap=30, seed=8)[0]["g"]
    assert other.fd_inf != first[0]["g"].fd_inf
    res = first[0]["g"]
    assert kid(real, gen, seed=7) == (res.kid.mean, res.kid_subset_sd)
    assert fd_inf(real, gen, seed=7) == (res.fd_inf.mean, res.fd.mean)


@pytest.mark.parametrize(
    ("generated", "match"),
    [
        ({"a": _gauss(1, 100), "b": _gauss(2, 90)}, "method 'b': 90 rows, method 'a' has 100"),
        ({"a": _gauss(1, 100, d=8)}, "method 'a': features have D=8, the reference set has D=16"),
        ({"a": np.where(np.arange(100)[:, None] == 3, np.nan, _gauss(1, 100))}, "method 'a': 1 rows have NaN"),
        ({"a": _gauss(1, 100)[:, :, None]}, r"method 'a': expected features \[N, D\]"),
        ({}, "no generated methods"),
    ],
)
def test_errors_name_the_method_and_problem(generated, match):
    with pytest.raises(ValueError, match=match):
        score_sets(_gauss(0, 100), generated, bootstrap=2)


def test_errors_reference_and_ratio_pairs():
    with pytest.raises(ValueError, match="unknown method 'c'"):
        score_sets(_gauss(0, 100), {"a": _gauss(1, 100)}, ratio_pairs=[("a", "c")], bootstrap=2)
    with pytest.raises(ValueError, match="row 0"):
        score_sets(np.full((100, D), np.inf), {"a": _gauss(1, 100)}, bootstrap=2)


def test_sets_too_small_for_fd_inf_still_get_fd_and_kid(caplog):
    """Below 4·D rows the extrapolation is refused: FD∞ (and its ratios) are NaN with a warning naming the rule."""
    generated = {"a": _gauss(1, 50), "b": _gauss(2, 50, shift=1.0)}
    results, ratios = score_sets(_gauss(0, 60), generated, ratio_pairs=[("a", "b")], bootstrap=20, seed=0)
    assert "FD∞ needs at least 64 rows at D=16" in caplog.text
    for res in results.values():
        assert np.isnan(res.fd_inf.as_list()).all()
        assert np.isfinite(res.fd.as_list()).all() and np.isfinite(res.kid.as_list()).all()
    assert np.isnan(ratios[("a", "b")]["fd_inf"].mean) and np.isfinite(ratios[("a", "b")]["kid"].mean)


def test_replicates_round_trip_so_that_separate_runs_pool_exactly(tmp_path):
    real = _gauss(1, 300)
    results, ratios = score_sets(real, {"monolith": _gauss(2, 300, shift=0.5), "ddm": _gauss(3, 300, shift=1.0)},
                                 ratio_pairs=[("monolith", "ddm")], bootstrap=40, seed=5)  # fmt: skip
    path = save_replicates(tmp_path / "replicates-s0.npz", results, ratios)
    back = load_replicates(path)
    for method in ("monolith", "ddm"):
        for metric in ("fd", "fd_inf", "kid"):
            saved, original = back[f"method|{method}|{metric}"], getattr(results[method], metric)
            assert saved.mean == original.mean and np.array_equal(saved.replicates, original.replicates)
            assert saved.low == pytest.approx(original.low) and saved.high == pytest.approx(original.high)
    ratio = back["ratio|monolith|ddm|kid"]
    assert ratio.mean == ratios[("monolith", "ddm")]["kid"].mean and len(ratio.replicates) == 40
    # two runs' files pool into one interval over all their replicates
    other = load_replicates(save_replicates(tmp_path / "replicates-s1.npz", results, ratios))
    pooled = np.concatenate([back["method|ddm|fd_inf"].replicates, other["method|ddm|fd_inf"].replicates])
    assert len(pooled) == 80
    # a ratio left undefined (its denominator reaches 0: no replicates) round-trips as a NaN interval
    undefined = {("monolith", "ddm"): {"kid": Interval(float("nan"), float("nan"), float("nan"))}}
    back = load_replicates(save_replicates(tmp_path / "nan.npz", {"g": dataclasses.replace(results["ddm"])}, undefined))
    assert np.isnan(back["ratio|monolith|ddm|kid"].low) and len(back["ratio|monolith|ddm|kid"].replicates) == 0

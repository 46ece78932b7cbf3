"""Distances between feature sets that do not depend on N: KID and FD∞, with paired-bootstrap intervals and ratios.

Why: the Fréchet distance at a fixed N is biased upward by about tr Σ_real / N_real + tr Σ_gen / N_gen plus a
covariance term that grows like D² / N, so methods scored at different N (or a ratio of two FDs) mix quality with
sample size. Both metrics here remove that bias; ``score_sets`` adds 95 % intervals and method ratios.

KID (``kid``): the unbiased MMD² with torchmetrics' KID kernel ``poly_kernel`` (x·y / D + 1)³. The U-statistic is
written on *count vectors* (how often each original row is drawn), so one formula serves three uses: the full sets
(all counts 1; for equal sizes it is exactly torchmetrics' ``maximum_mean_discrepancy``, tests check it),
torchmetrics-style random subsets (0/1 counts) and bootstrap resamples (multiplicities). The kernel matrices are
computed once per method and every subset and replicate is a batched matrix product (0.15 ms per subset at
N = 1024, D = 128; indexing 1000×1000 sub-matrices for ``maximum_mean_discrepancy`` took 27 ms per subset).

FD∞ (``fd_inf``), after Chong & Forsyth, "Effectively Unbiased FID and Inception Score and where to find them"
(CVPR 2020): FD is computed on random subsets and extrapolated along FD(n) ≈ FD∞ + b / n. Two changes, both
measured on Gaussians (D = 128, N_real = N_gen = 1024, FD(N) ≈ 5.1 when FD∞ = 0):

- both sets are subsampled, at the same fraction f, and the fit is in x = 1 / f. Chong & Forsyth keep the reference
  statistics fixed because their reference has 50 000+ images; ours has about as many rows as a generated set, so
  its own bias (2.4 of the 5.1) would stay in "FD∞" and would depend on N_real. To first order the bias is
  b_real / n_real + b_gen / n_gen (the cross term vanishes: the two sets are independent), so with n = f · N on
  both sides it is linear in 1 / f and the intercept is FD with both sets infinite.
- the line is anchored at the full-set FD: FD∞ = FD(N) − b̂ with b̂ = Σ_i (FD_i − FD(N)) / Σ_i (x_i − 1). That is
  weighted least squares with weights from the finite-population variance of a subsample, ∝ 1/n − 1/N = (x − 1)/N:
  the full sets carry no subsampling noise, and a subsample's covariance (n − 1 normalised) is unbiased for the full
  set's, so E[FD_i | data] = FD(N) + b (x_i − 1) to second order. It cut the estimator's own subsampling sd 3–4×
  against ordinary least squares through all points, with the same small bias (0–3 % of FD(N) in our runs).

Subset sizes: 1 / f evenly spaced over (1, 1 / f_min] (evenly spaced in the regressor), f_min = max(1/4, 2·D / N)
over the smaller set. The bias is a series in D / n, linear only while D / n is small, so no subset has fewer than
2·D rows; a set needs at least 4·D rows (f_min ≤ 1/2) for a usable spread of sizes.

Bootstrap (``score_sets``): one replicate draws prompt indices with replacement once and applies them to every
method (row i of every generated array is prompt i), so differences and ratios between methods are paired. The
reference set is resampled too, independently of the prompts (its clips are other clips) but with the same draw for
every method. Why: with N_real ≈ N_gen the reference's sampling noise is as large as a method's. On Gaussians
(D = 16, N = 200, 100 data sets) FD∞ intervals with a fixed reference covered the true value 91 % of the time at
FD∞ = 4 (and fewer as FD∞ grows), with the reference resampled 99 %. ``resample_reference=False`` gives intervals
conditional on this reference set. Every other random choice (subsets, subsample positions) is seeded by the
replicate and never by the method, so two methods with identical features get identical replicates.

Near FD∞ = 0 or KID = 0 (the ``real`` method, or a method as good as real) the intervals are conservative, up to
~2× wider than the estimator's sd implies: both metrics are quadratic in the difference between the sets, and a
percentile bootstrap of such a degenerate statistic overstates its spread (same simulation: width 0.79 where
±1.96 sd gives 0.39). Far from 0 they approach the nominal width (1.22× at FD∞ = 4).

The duplicates that resampling creates bias the replicates, and recentering removes it: the interval is the
percentiles of (replicate − (mean of replicates − point estimate)), i.e. a percentile interval centred on the
point estimate. For FD and FD∞ the bias is about FD's own finite-N bias again (≈ tr Σ / N per resampled set: a
resample is N draws from the N-row empirical distribution; 4.7 at D = 128, N = 1024, where FD(N) − FD∞ ≈ 5);
KID leaves out pairs of copies of one original row (tie-aware U-statistic), so its bias is ≈ 0 and recentering
barely moves it. Ratios use the recentered replicates of both methods.

The FD loops run under one ``threadpool_limits(1)`` and call ``frechet.frechet_distance_in_caller_pool``: plain
``frechet_distance`` enters threadpoolctl on every call (2.8 ms, more than the 2.4 ms distance itself at D = 128),
and the bootstrap makes about 10 FD calls per method and replicate.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from lib.evaluate.frechet import FeatureStats, frechet_distance_in_caller_pool, stats_from_features
from lib.features.batch import FeatureError
from lib.io import atomic_write
from lib.seeding import numpy_rng

log = logging.getLogger(__name__)

METRICS = ("fd", "fd_inf", "kid")
MIN_FRACTION = 0.25  # smallest FD∞ subset as a fraction of its set, unless 2·D rows need more
MAX_MIN_FRACTION = 0.5  # a smaller spread of subset sizes leaves the slope b undetermined
ROWS_PER_DIM = 2  # smallest FD∞ subset has at least ROWS_PER_DIM · D rows (the bias is a series in D / n)


@dataclass(frozen=True)
class Interval:
    """A point estimate and its bootstrap interval; ``mean`` is the point estimate (the mean of the recentered
    replicates)."""

    mean: float
    low: float
    high: float
    replicates: np.ndarray | None = field(default=None, repr=False, compare=False)  # recentred; pooled across runs

    def as_list(self) -> list[float]:
        return [self.mean, self.low, self.high]


@dataclass(frozen=True)
class DistanceResult:
    """Distances of one generated set to the reference set.

    Attributes:
        fd: Fréchet distance at the full N; biased by N, so comparable only at equal N_real, N_generated and D.
        fd_inf: Fréchet distance extrapolated to infinitely many rows in both sets.
        kid: unbiased polynomial-kernel MMD² of the full sets.
        kid_subset_sd: population sd of the MMD² over random subsets, as torchmetrics' KID reports it. It is the
            spread between overlapping subsets, not a standard error: ``kid``'s interval is that.
        kid_subset_size: rows per KID subset (the requested size, capped by both set sizes).
        bootstrap_bias: per metric, mean of the raw bootstrap replicates minus the point estimate: the bias that
            resampling adds, removed from every interval by recentering.
        n_generated: rows of the generated set.
        n_real: rows of the reference set.
    """

    fd: Interval
    fd_inf: Interval
    kid: Interval
    kid_subset_sd: float
    kid_subset_size: int
    bootstrap_bias: dict[str, float]
    n_generated: int
    n_real: int


@dataclass(frozen=True)
class _SizePlan:
    """FD∞ subsample sizes: x = N / n (one x for both sets), rows per subset for each set."""

    x: np.ndarray  # [S] > 1
    n_real: np.ndarray  # [S]
    n_gen: np.ndarray  # [S]


@dataclass(frozen=True)
class _FdDraws:
    """Seeded subsample positions of one FD∞ estimate, shared by all methods; ``[size][repeat]`` index arrays."""

    real: list[list[np.ndarray]]
    gen: list[list[np.ndarray]]


def _as_features(name: str, features: np.ndarray, dim: int | None = None) -> np.ndarray:
    """float64 [N, D] with finite values, or a FeatureError naming the set and the first bad row."""
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2:
        raise FeatureError(f"{name}: expected features [N, D], got shape {x.shape}")
    if dim is not None and x.shape[1] != dim:
        raise FeatureError(f"{name}: features have D={x.shape[1]}, the reference set has D={dim}")
    if x.shape[0] < 2:
        raise FeatureError(f"{name}: needs at least 2 rows, got {x.shape[0]}")
    bad = ~np.isfinite(x).all(axis=1)
    if bad.any():
        raise FeatureError(f"{name}: {int(bad.sum())} rows have NaN/inf features (first: row {np.flatnonzero(bad)[0]})")
    return x


def _size_plan(n_real: int, n_gen: int, dim: int, sizes: int, gen_name: str) -> _SizePlan:
    """Subset sizes for FD∞ (see the module docstring), or a FeatureError when a set is too small."""
    if sizes < 1:
        raise FeatureError(f"fd_inf: needs at least 1 subset size, got {sizes}")
    need = int(np.ceil(ROWS_PER_DIM * dim / MAX_MIN_FRACTION))
    for name, n in (("reference", n_real), (gen_name, n_gen)):
        if n < need:
            raise FeatureError(
                f"{name}: FD∞ needs at least {need} rows at D={dim} (subsets of >= {ROWS_PER_DIM}·D rows, "
                f"at most {MAX_MIN_FRACTION:g} of the set), got {n}"
            )
    f_min = max(MIN_FRACTION, ROWS_PER_DIM * dim / min(n_real, n_gen))
    x = np.linspace(1.0, 1.0 / f_min, sizes + 1)[1:]
    return _SizePlan(x=x, n_real=np.rint(n_real / x).astype(int), n_gen=np.rint(n_gen / x).astype(int))


def _fd_draws(rng: np.random.Generator, plan: _SizePlan | None, n_real: int, n_gen: int, repeats: int) -> _FdDraws:
    """``repeats`` random subsets without replacement per size, for both sets, from one seeded generator."""
    if plan is None:
        return _FdDraws(real=[], gen=[])
    if repeats < 1:
        raise FeatureError(f"fd_inf: needs at least 1 subset per size, got {repeats}")

    def draw(total: int, sizes: np.ndarray) -> list[list[np.ndarray]]:
        return [[rng.choice(total, size=int(n), replace=False) for _ in range(repeats)] for n in sizes]

    return _FdDraws(real=draw(n_real, plan.n_real), gen=draw(n_gen, plan.n_gen))


def _fd(a: FeatureStats, b: FeatureStats) -> float:
    """FD without threadpoolctl's per-call cost; callers hold ``threadpool_limits(limits=1)``."""
    return frechet_distance_in_caller_pool(a.mu, a.sigma, b.mu, b.sigma)


@dataclass(frozen=True)
class _Reference:
    """Statistics of the reference rows of one FD∞ estimate: the full set and each drawn subset."""

    full: FeatureStats
    subsets: list[list[FeatureStats]]


def _reference(real: np.ndarray, draws: _FdDraws) -> _Reference:
    """Computed once per estimate and shared by every method."""
    subsets = [[stats_from_features(real[p]) for p in per_size] for per_size in draws.real]
    return _Reference(full=stats_from_features(real), subsets=subsets)


def _fd_and_fd_inf(ref: _Reference, gen: np.ndarray, draws: _FdDraws, plan: _SizePlan | None) -> tuple[float, float]:
    """FD at the full sets and FD∞ = FD(N) − b̂, b̂ = Σ (mean FD_i − FD(N)) / Σ (x_i − 1) (module docstring);
    FD∞ is NaN without a plan (sets too small for it)."""
    fd = _fd(ref.full, stats_from_features(gen))
    if plan is None:
        return fd, float("nan")
    sub = np.array(
        [
            np.mean([_fd(r, stats_from_features(gen[p])) for r, p in zip(refs, positions, strict=True)])
            for refs, positions in zip(ref.subsets, draws.gen, strict=True)
        ]
    )
    return fd, fd - float((sub - fd).sum() / (plan.x - 1.0).sum())


def _kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """torchmetrics' KID kernel (x·y / D + 1)³ in float64: [Nx, Ny]."""
    from torchmetrics.image.kid import poly_kernel  # lazily: see FrechetVideoDistance

    return poly_kernel(torch.from_numpy(x), torch.from_numpy(y)).numpy()


def _pair_mean(k: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Mean of ``k[i, j]`` over pairs of drawn rows with different original indices, per row of counts.

    Pairs of copies of one original row are left out, not only a row paired with itself: they are k(x, x), the
    diagonal a U-statistic excludes, and a bootstrap resample repeats rows, so keeping them would inflate the term
    by about (k(x, x) − k(x, y)) / N.

    Args:
        k: kernel matrix [N, N] of the original rows.
        counts: [B, N] times each original row is drawn (1 for the full set, 0/1 for a subset, bootstrap counts).

    Returns:
        [B] means.
    """
    squares = counts * counts
    total = np.einsum("bi,bi->b", counts @ k, counts)
    pairs = counts.sum(axis=1) ** 2 - squares.sum(axis=1)
    return (total - squares @ np.diag(k)) / pairs


def _cross_mean(k_xy: np.ndarray, counts_x: np.ndarray, counts_y: np.ndarray) -> np.ndarray:
    """Mean of ``k_xy`` [Nx, Ny] over all drawn (x, y) pairs for counts [B, Nx] and [B, Ny]: [B]."""
    return np.einsum("bj,bj->b", counts_x @ k_xy, counts_y) / (counts_x.sum(axis=1) * counts_y.sum(axis=1))


def _subset_counts(rng: np.random.Generator, total: int, size: int, subsets: int) -> np.ndarray:
    """0/1 counts [subsets, total] of random subsets without replacement (torchmetrics' ``randperm[:size]``)."""
    counts = np.zeros((subsets, total))
    for row in counts:
        row[rng.choice(total, size=size, replace=False)] = 1.0
    return counts


@dataclass(frozen=True)
class _KidSubsets:
    """Seeded subsets shared by all methods, with the reference's within-set term already computed."""

    size: int
    real: np.ndarray  # [S, N_real] 0/1
    gen: np.ndarray  # [S, N_gen] 0/1
    real_term: np.ndarray  # [S]


def _kid_subsets(k_rr: np.ndarray, n_gen: int, subsets: int, subset_size: int, seed: int) -> _KidSubsets:
    """torchmetrics-style subsets of both sets. The size is capped, not refused as torchmetrics does, because the
    default 1000 exceeds small evaluation sets; the result records the size used."""
    if subsets < 1 or subset_size < 2:
        raise FeatureError(f"kid: needs subsets >= 1 and subset_size >= 2, got {subsets} and {subset_size}")
    size = min(subset_size, k_rr.shape[0], n_gen)
    if size < subset_size:
        log.info("kid: subset size %d capped to %d by the set sizes", subset_size, size)
    rng = numpy_rng(seed, "kid-subsets")
    real = _subset_counts(rng, k_rr.shape[0], size, subsets)
    gen = _subset_counts(rng, n_gen, size, subsets)
    return _KidSubsets(size=size, real=real, gen=gen, real_term=_pair_mean(k_rr, real))


def _kid_point_and_sd(
    k_rr_term: float, k_rg: np.ndarray, k_gg: np.ndarray, subsets: _KidSubsets
) -> tuple[float, float]:
    """Full-set unbiased MMD² and the population sd over subsets (torchmetrics' ``std(unbiased=False)``)."""
    ones_r, ones_g = np.ones((1, k_rg.shape[0])), np.ones((1, k_rg.shape[1]))
    point = k_rr_term + _pair_mean(k_gg, ones_g)[0] - 2.0 * _cross_mean(k_rg, ones_r, ones_g)[0]
    per_subset = subsets.real_term + _pair_mean(k_gg, subsets.gen) - 2.0 * _cross_mean(k_rg, subsets.real, subsets.gen)
    return float(point), float(per_subset.std())


def kid(
    real: np.ndarray, gen: np.ndarray, *, subsets: int = 100, subset_size: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """Kernel inception distance (unbiased poly-kernel MMD²) of two feature sets.

    Args:
        real: reference features [N_real, D].
        gen: generated features [N_gen, D]; N_gen may differ from N_real (general U-statistic).
        subsets: random subsets for the subset sd.
        subset_size: rows per subset in each set, capped by both set sizes.
        seed: seed of the subset draws.

    Returns:
        (MMD² of the full sets, population sd of MMD² over subsets as torchmetrics' KID reports it).
    """
    real = _as_features("reference", real)
    gen = _as_features("generated", gen, real.shape[1])
    k_rr = _kernel(real, real)
    draws = _kid_subsets(k_rr, gen.shape[0], subsets, subset_size, seed)
    k_rr_term = float(_pair_mean(k_rr, np.ones((1, real.shape[0])))[0])
    return _kid_point_and_sd(k_rr_term, _kernel(real, gen), _kernel(gen, gen), draws)


def fd_inf(
    real: np.ndarray, gen: np.ndarray, *, sizes: int = 8, repeats: int = 8, seed: int = 0
) -> tuple[float, float]:
    """Fréchet distance extrapolated to infinitely many rows in both sets (module docstring), and FD at the full N.

    Args:
        real: reference features [N_real, D], N_real >= 4·D.
        gen: generated features [N_gen, D], N_gen >= 4·D.
        sizes: subset sizes below the full sets.
        repeats: random subsets per size (averaged before the fit).
        seed: seed of the subset draws.

    Returns:
        (FD∞, FD of the full sets).
    """
    real = _as_features("reference", real)
    gen = _as_features("generated", gen, real.shape[1])
    plan = _size_plan(real.shape[0], gen.shape[0], real.shape[1], sizes, "generated")
    draws = _fd_draws(numpy_rng(seed, "fd-inf", "point"), plan, real.shape[0], gen.shape[0], repeats)
    with threadpool_limits(limits=1):
        fd, inf = _fd_and_fd_inf(_reference(real, draws), gen, draws, plan)
    return inf, fd


def _interval(point: float, replicates: np.ndarray, level: float) -> Interval:
    """Percentile interval of (recentered) replicates around the point estimate."""
    tail = 100.0 * (1.0 - level) / 2.0
    low, high = np.percentile(replicates, [tail, 100.0 - tail])
    return Interval(float(point), float(low), float(high), np.asarray(replicates, dtype=np.float64))


def _check_inputs(
    real: np.ndarray, generated: dict[str, np.ndarray], ratio_pairs: list[tuple[str, str]], bootstrap: int, level: float
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """float64 reference and methods, or a FeatureError naming the set and the problem."""
    if not generated:
        raise FeatureError("score_sets: no generated methods")
    if bootstrap < 2:
        raise FeatureError(f"score_sets: bootstrap needs at least 2 replicates, got {bootstrap}")
    if not 0.0 < level < 1.0:
        raise FeatureError(f"score_sets: level must be in (0, 1), got {level}")
    real = _as_features("reference", real)
    gens = {name: _as_features(f"method {name!r}", x, real.shape[1]) for name, x in generated.items()}
    first, n = next((name, x.shape[0]) for name, x in gens.items())
    for name, x in gens.items():
        if x.shape[0] != n:
            raise FeatureError(
                f"method {name!r}: {x.shape[0]} rows, method {first!r} has {n}; the paired bootstrap needs row i of "
                "every method to be prompt i"
            )
    for pair in ratio_pairs:
        missing = [name for name in pair if name not in gens]
        if missing:
            raise FeatureError(f"ratio {pair}: unknown method {missing[0]!r} (methods: {sorted(gens)})")
    return real, gens


def score_sets(
    real: np.ndarray,
    generated: dict[str, np.ndarray],
    *,
    ratio_pairs: list[tuple[str, str]] | None = None,
    bootstrap: int = 200,
    seed: int = 0,
    level: float = 0.95,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    fd_inf_sizes: int = 8,
    fd_inf_repeats: int = 8,
    fd_inf_bootstrap_repeats: int = 1,
    resample_reference: bool = True,
) -> tuple[dict[str, DistanceResult], dict[tuple[str, str], dict[str, Interval]]]:
    """FD, FD∞ and KID of every generated set against one reference, with paired-bootstrap intervals and ratios.

    Args:
        real: reference features [N_real, D] (clips other than the prompt clips).
        generated: method -> features [N, D]; row i of every method is prompt i (the ``real`` method, the prompt
            clips themselves, included), so every method has the same N.
        ratio_pairs: (numerator, denominator) methods whose metric ratios get intervals, e.g. ("monolith", "ddm").
        bootstrap: bootstrap replicates (200+ for stable 95 % percentiles).
        seed: seed of every random choice; the same inputs and seed give identical numbers.
        level: coverage of the intervals.
        kid_subsets: random subsets for ``kid_subset_sd``.
        kid_subset_size: rows per KID subset, capped by both set sizes.
        fd_inf_sizes: subset sizes of the FD∞ fit below the full sets.
        fd_inf_repeats: random subsets per size for the point estimate.
        fd_inf_bootstrap_repeats: random subsets per size inside each replicate; fewer than ``fd_inf_repeats``
            keeps the bootstrap fast and adds subsampling noise to the replicates, so FD∞ intervals come out
            slightly wider, not narrower (2 instead of 1 narrowed them ~7 % at D = 128 and doubled the run time).
        resample_reference: also resample the reference in every replicate (one draw shared by all methods); False
            gives intervals conditional on this reference set, which miss its sampling noise.

    Returns:
        (method -> DistanceResult, (numerator, denominator) -> metric -> ratio Interval). A ratio is NaN where the
        denominator's interval reaches 0 or below: the data cannot bound it. FD∞ and its ratios are NaN when a
        set has fewer than 4·D rows (the extrapolation needs subsets of at least 2·D rows).
    """
    ratio_pairs = list(ratio_pairs or [])
    real, gens = _check_inputs(real, generated, ratio_pairs, bootstrap, level)
    names = list(gens)
    n_real, dim = real.shape
    n = gens[names[0]].shape[0]
    try:
        plan: _SizePlan | None = _size_plan(n_real, n, dim, fd_inf_sizes, f"methods {names}")
    except FeatureError as exc:  # small runs (the tiny config, per-cluster rows) still get FD and KID
        log.warning("%s; fd_inf is reported as NaN", exc)
        plan = None

    # KID: kernel matrices once per method; full sets, subsets and replicates are products with count vectors.
    k_rr = _kernel(real, real)
    k_rr_term = float(_pair_mean(k_rr, np.ones((1, n_real)))[0])
    kid_draws = _kid_subsets(k_rr, n, kid_subsets, kid_subset_size, seed)
    prompt_idx = numpy_rng(seed, "bootstrap", "prompts").integers(0, n, size=(bootstrap, n))
    prompt_counts = np.stack([np.bincount(row, minlength=n) for row in prompt_idx]).astype(np.float64)
    if resample_reference:
        real_idx = numpy_rng(seed, "bootstrap", "reference").integers(0, n_real, size=(bootstrap, n_real))
    else:
        real_idx = np.tile(np.arange(n_real), (bootstrap, 1))
    real_counts = np.stack([np.bincount(row, minlength=n_real) for row in real_idx]).astype(np.float64)
    real_terms = _pair_mean(k_rr, real_counts)

    points: dict[str, dict[str, float]] = {name: {} for name in names}
    reps = {name: {metric: np.empty(bootstrap) for metric in METRICS} for name in names}
    subset_sd: dict[str, float] = {}
    for name, gen in gens.items():
        k_rg, k_gg = _kernel(real, gen), _kernel(gen, gen)
        points[name]["kid"], subset_sd[name] = _kid_point_and_sd(k_rr_term, k_rg, k_gg, kid_draws)
        reps[name]["kid"][:] = (
            real_terms + _pair_mean(k_gg, prompt_counts) - 2.0 * _cross_mean(k_rg, real_counts, prompt_counts)
        )

    with threadpool_limits(limits=1):
        draws = _fd_draws(numpy_rng(seed, "fd-inf", "point"), plan, n_real, n, fd_inf_repeats)
        ref = _reference(real, draws)
        for name, gen in gens.items():
            points[name]["fd"], points[name]["fd_inf"] = _fd_and_fd_inf(ref, gen, draws, plan)
        for r in range(bootstrap):
            draws = _fd_draws(numpy_rng(seed, "fd-inf", "bootstrap", r), plan, n_real, n, fd_inf_bootstrap_repeats)
            ref = _reference(real[real_idx[r]], draws)
            for name, gen in gens.items():
                reps[name]["fd"][r], reps[name]["fd_inf"][r] = _fd_and_fd_inf(ref, gen[prompt_idx[r]], draws, plan)

    # Recentre every replicate set on its point estimate: removes the bias of resampling with replacement.
    bias = {name: {m: float(reps[name][m].mean() - points[name][m]) for m in METRICS} for name in names}
    centred = {name: {m: reps[name][m] - bias[name][m] for m in METRICS} for name in names}
    results = {
        name: DistanceResult(
            **{m: _interval(points[name][m], centred[name][m], level) for m in METRICS},
            kid_subset_sd=subset_sd[name],
            kid_subset_size=kid_draws.size,
            bootstrap_bias=bias[name],
            n_generated=n,
            n_real=n_real,
        )
        for name in names
    }
    ratios = {
        (num, den): {m: _ratio(num, den, m, points, centred, results[den], level) for m in METRICS}
        for num, den in ratio_pairs
    }
    return results, ratios


def _ratio(
    num: str,
    den: str,
    metric: str,
    points: dict[str, dict[str, float]],
    centred: dict[str, dict[str, np.ndarray]],
    den_result: DistanceResult,
    level: float,
) -> Interval:
    """``num / den`` of one metric from the paired, recentered replicates of both methods.

    NaN where the denominator's interval reaches 0 or below: replicates near a zero denominator make the ratio
    unbounded, so neither an interval nor a point would mean anything.
    """
    low = getattr(den_result, metric).low
    if low <= 0.0:
        log.warning("%s ratio %s/%s: denominator interval reaches %.4g <= 0, reported as NaN", metric, num, den, low)
        return Interval(float("nan"), float("nan"), float("nan"))
    return _interval(points[num][metric] / points[den][metric], centred[num][metric] / centred[den][metric], level)


REPLICATE_METRICS = ("fd", "fd_inf", "kid")


def save_replicates(
    path: str | Path,
    results: dict[str, DistanceResult],
    ratios: dict[tuple[str, str], dict[str, Interval]],
) -> Path:
    """Write every interval's point estimate and recentred replicates of one ``score_sets`` call to an ``.npz``.

    Why: a run keeps its intervals, but pooling training seeds that ran in separate sessions needs the replicates
    themselves (the pooled interval is the percentile interval of all seeds' replicates together). Keys read
    ``method|<name>|<metric>`` and ``ratio|<numerator>|<denominator>|<metric>``, each with a ``|mean`` twin.
    An interval without replicates (a ratio whose denominator reaches 0, reported as NaN) is stored as an empty
    array and loads with a NaN interval. Plain arrays only, written atomically: ``load_replicates`` reads it
    without unpickling anything.
    """
    arrays: dict[str, np.ndarray] = {}

    def put(key: str, interval: Interval) -> None:  # no replicates (a ratio left undefined): an empty array
        reps = interval.replicates if interval.replicates is not None else np.empty(0)
        arrays[key] = np.asarray(reps, dtype=np.float64)
        arrays[f"{key}|mean"] = np.asarray([interval.mean], dtype=np.float64)

    for method, result in results.items():
        for metric in REPLICATE_METRICS:
            put(f"method|{method}|{metric}", getattr(result, metric))
    for (num, den), by_metric in ratios.items():
        for metric, interval in by_metric.items():
            put(f"ratio|{num}|{den}|{metric}", interval)
    def write(tmp: Path) -> None:
        with tmp.open("wb") as handle:
            np.savez(handle, **arrays)

    return atomic_write(path, write)


def load_replicates(path: str | Path) -> dict[str, Interval]:
    """``save_replicates``'s file back as {key: Interval} (mean, 95 % percentile interval, replicates)."""
    with np.load(path, allow_pickle=False) as data:
        keys = [k for k in data.files if not k.endswith("|mean")]
        out = {}
        for key in keys:
            reps = data[key]
            defined = len(reps) > 0 and np.isfinite(reps).all()
            low, high = np.percentile(reps, [2.5, 97.5]) if defined else (float("nan"),) * 2
            out[key] = Interval(float(data[f"{key}|mean"][0]), float(low), float(high), reps)
    return out

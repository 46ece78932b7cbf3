"""Reading a regime map: the cells of a comparison grid, each a DDM against its matched monolith, read by a rule
fixed before the grid ran (``benchmarks/regime_protocol.md``).

Why a module: the rule (a noise scale from reruns under another seed, differences that count only beyond 2σ, the
four predictions of the literature, the budget where the two sides would cross when no cell wins) is arithmetic on
the cells' records that a reader should be able to check and rerun, not prose in a notebook. The measure is the
cell's **loss ratio**: the monolith's held-out flow-matching loss over the DDM's (as it samples), each averaged over
the t grid; above 1 the DDM is better.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from lib.evaluate.cells import SIZES
from lib.seeding import numpy_rng

BUDGET_1X = 16_000  # training samples per side of the protocol's 1x budget (4 experts x 500 steps x batch 8)
SIDES = ("ddm", "monolith")


def mean_loss(record: dict, side: str) -> float:
    """A side's held-out loss averaged over the t grid (``side``: ddm, monolith or oracle)."""
    by_t = record["heldout_loss_oracle"] if side == "oracle" else record["heldout_loss"][side]
    return float(np.mean(list(by_t.values())))


def loss_ratio(record: dict, side: str = "ddm") -> float:
    """Monolith mean loss over ``side``'s (the DDM as it samples, or with oracle routing): > 1 favours the DDM."""
    return mean_loss(record, "monolith") / mean_loss(record, side)


def budget(record: dict) -> float:
    """The cell's training samples per side as a multiple of the protocol's 1x."""
    expert = record["config"]["expert"]
    return expert["steps"] * record["num_clusters"] * expert["batch_size"] / BUDGET_1X


def size_name(record: dict) -> str:
    """Which ``SIZES`` preset the cell's network is (``?`` for none)."""
    expert = record["config"]["expert"]
    return next((n for n, fields in SIZES.items() if all(expert[k] == v for k, v in fields.items())), "?")


@dataclass
class Reading:
    """The map read by the protocol's rule."""

    sigma: float  # the noise scale: the largest |Δ loss ratio| between a cell and its rerun under another seed
    reruns: dict[str, tuple[float, float]]  # cell -> (loss ratio, rerun's loss ratio)
    ratios: dict[str, float]  # every cell's loss ratio
    winners: list[str]  # cells whose loss ratio exceeds 1 + 2σ
    predictions: dict[str, dict]  # a..d: verdict (confirmed | refuted | not shown) and the differences behind it
    crossings: dict[str, dict]  # per size, when no cell wins: the budget where the two sides' loss fits cross


def noise_scale(cells: dict[str, dict], reruns: dict[str, dict]) -> tuple[float, dict[str, tuple[float, float]]]:
    """σ = the largest |Δ loss ratio| between a cell and its rerun (same setting, another seed)."""
    pairs = {name: (loss_ratio(cells[name]), loss_ratio(rec)) for name, rec in reruns.items() if name in cells}
    if not pairs:
        raise ValueError("no rerun matches a cell of the grid: the noise scale needs at least one")
    return max(abs(a - b) for a, b in pairs.values()), pairs


def _verdict(diffs: list[float], sigma: float) -> str:
    """Confirmed when any of the differences the prediction names exceeds 2σ."""
    return "confirmed" if any(d > 2 * sigma for d in diffs) else "not shown"


def read_map(cells: dict[str, dict], reruns: dict[str, dict], seed: int = 0) -> Reading:
    """Apply the protocol's reading rule to the grid's records (by cell name) and the noise reruns."""
    sigma, pairs = noise_scale(cells, reruns)
    ratios = {name: loss_ratio(rec) for name, rec in cells.items()}
    by = {name: (size_name(rec), budget(rec)) for name, rec in cells.items()}
    grid_a = {n: v for n, v in by.items() if _only_size_or_steps(n)}
    predictions: dict[str, dict] = {}
    # (a) per size: the ratio at the largest budget minus at the smallest
    rise = {}
    for size in sorted({s for s, _ in grid_a.values()}):
        mine = sorted((b, ratios[n]) for n, (s, b) in grid_a.items() if s == size)
        if len(mine) >= 2:
            rise[size] = mine[-1][1] - mine[0][1]
    ups = sum(d > 2 * sigma for d in rise.values())
    downs = sum(d < -2 * sigma for d in rise.values())
    larger_for_small = "xs" in rise and "m" in rise and rise["xs"] > rise["m"]
    verdict = "confirmed" if ups >= 2 and larger_for_small else "refuted" if downs >= 2 else "not shown"
    predictions["a_budget_per_parameter"] = {"verdict": verdict, "rise_smallest_to_largest_budget": rise}
    # (b) K: 4 (the base) or 8 against 2
    k_cells = {rec["num_clusters"]: ratios[n] for n, rec in cells.items() if n == "base" or n.startswith("cluster.")}
    diffs = [k_cells[k] - k_cells[2] for k in (4, 8) if k in k_cells and 2 in k_cells]
    predictions["b_k"] = {"verdict": _verdict(diffs, sigma), "ratio_by_k": dict(sorted(k_cells.items()))}
    # (c) distinctness: overlap 0 against overlap 1
    overlap = {rec["config"]["data"]["family_overlap"]: ratios[n] for n, rec in cells.items()
               if n == "base" or n.startswith("data.family_overlap")}  # fmt: skip
    diffs = [overlap[0.0] - overlap[1.0]] if {0.0, 1.0} <= set(overlap) else []
    predictions["c_distinctness"] = {"verdict": _verdict(diffs, sigma),
                                     "ratio_by_overlap": dict(sorted(overlap.items()))}  # fmt: skip
    # (d) a seed model: f = 0.25 or 0.5 against f = 0 (the base)
    seeded = {rec["config"]["expert"]["seed_fraction"]: ratios[n] for n, rec in cells.items()
              if n == "base" or n.startswith("expert.seed_fraction")}  # fmt: skip
    diffs = [seeded[f] - seeded[0.0] for f in (0.25, 0.5) if f in seeded and 0.0 in seeded]
    predictions["d_seed_model"] = {"verdict": _verdict(diffs, sigma), "ratio_by_fraction": dict(sorted(seeded.items()))}
    winners = sorted((n for n, r in ratios.items() if r > 1 + 2 * sigma), key=lambda n: -ratios[n])
    crossings = {} if winners else _crossings({n: cells[n] for n in grid_a}, seed)
    return Reading(sigma, pairs, ratios, winners, predictions, crossings)


@dataclass
class SeedReading:
    """The cells rerun under several seeds, read by the follow-up protocol (``benchmarks/regime_seeds_protocol.md``)."""

    ratios: dict[str, dict[int, float]]  # cell -> seed -> loss ratio (cells with a record under every seed)
    means: dict[str, float]
    standard_errors: dict[str, float]  # sample SD / sqrt(seeds)
    pooled_sd: float  # the seed noise of one cell's loss ratio, pooled over every cell with all seeds
    dof: int  # its degrees of freedom
    win_bar: float  # a cell wins above this mean (1 + 2 pooled_sd / sqrt(seeds)), if every seed's ratio is above 1
    winners: list[str]
    budget_rise: dict  # prediction (a) at one size: the high-budget cell's mean against the low-budget cell


def read_seeds(by_seed: dict[int, dict[str, dict]], low: str, high: str) -> SeedReading:
    """Per cell: the mean loss ratio over the seeds and its standard error; the pooled seed SD over the cells that
    have every seed; the winners (mean above 1 + 2 SD / sqrt(n) and every seed above 1); and the rise from the cell
    ``low`` (what seeds it has) to ``high``, which counts beyond 2 SD sqrt(1/n_high + 1/n_low).

    Args:
        by_seed: seed -> cell name -> record.
        low, high: the low- and high-budget cells of one size (prediction (a)).
    """
    seeds = sorted(by_seed)
    names = sorted(set.intersection(*(set(cells) for cells in by_seed.values())))
    if not names:
        raise ValueError(f"no cell has a record under every seed {seeds}")
    ratios = {n: {s: loss_ratio(by_seed[s][n]) for s in seeds} for n in names}
    values = {n: np.array(list(r.values())) for n, r in ratios.items()}
    dof = sum(len(v) - 1 for v in values.values())
    if dof < 1:
        raise ValueError("the seed noise needs at least two seeds")
    pooled = float(np.sqrt(sum(((v - v.mean()) ** 2).sum() for v in values.values()) / dof))
    means = {n: float(v.mean()) for n, v in values.items()}
    errors = {n: float(v.std(ddof=1) / np.sqrt(len(v))) for n, v in values.items()}
    bar = 1 + 2 * pooled / np.sqrt(len(seeds))
    winners = sorted((n for n in names if means[n] > bar and (values[n] > 1).all()), key=lambda n: -means[n])
    low_values = [loss_ratio(cells[low]) for cells in by_seed.values() if low in cells]
    if high not in values or not low_values:
        raise ValueError(f"prediction (a) needs {high!r} under every seed and {low!r} under at least one")
    rise = means[high] - float(np.mean(low_values))
    needed = 2 * pooled * float(np.sqrt(1 / len(values[high]) + 1 / len(low_values)))
    verdict = "supported" if rise > needed else "refuted" if rise < -needed else "not shown"
    budget_rise = {"low": low, "high": high, "low_seeds": len(low_values), "rise": rise, "needed": needed,
                   "verdict": verdict}  # fmt: skip
    return SeedReading(ratios, means, errors, pooled, dof, float(bar), winners, budget_rise)


def _only_size_or_steps(name: str) -> bool:
    """A cell of the capacity x budget block: its setting names only the size and the steps (or nothing)."""
    return name == "base" or all(part.startswith(("size-", "expert.steps-")) for part in name.split("_"))


def _crossings(cells: dict[str, dict], seed: int, replicates: int = 2000) -> dict[str, dict]:
    """Per size: each side's mean loss fitted against budget (log-log, least squares); the budget where the fits
    cross, and its 95 % interval from a residual bootstrap (each side's residuals resampled onto its fit)."""
    out = {}
    for size in sorted({size_name(r) for r in cells.values()}):
        mine = [r for r in cells.values() if size_name(r) == size]
        if len(mine) < 3:
            continue
        x = np.log([budget(r) for r in mine])
        ys = {side: np.log([mean_loss(r, side) for r in mine]) for side in SIDES}
        fits = {side: np.polyfit(x, y, 1) for side, y in ys.items()}
        point = _cross(fits)
        rng = numpy_rng(seed, "regime-crossing", size)
        draws = []
        for _ in range(replicates):
            boot = {}
            for side, y in ys.items():
                fitted = np.polyval(fits[side], x)
                resid = y - fitted
                boot[side] = np.polyfit(x, fitted + rng.choice(resid, len(resid)), 1)
            draws.append(_cross(boot))
        draws = np.array([d for d in draws if np.isfinite(d)])
        low, high = (np.percentile(draws, [2.5, 97.5]) if len(draws) else (np.nan, np.nan))
        out[size] = {"budget_x": point, "interval_95": [float(low), float(high)], "finite_draws": int(len(draws)),
                     "slopes": {side: float(f[0]) for side, f in fits.items()},
                     # the side whose loss falls faster with budget is the better one beyond the crossing
                     "ddm_better_above": bool(fits["ddm"][0] < fits["monolith"][0])}  # fmt: skip
    return out


def _cross(fits: dict[str, np.ndarray]) -> float:
    """exp of the log budget where two lines (slope, intercept) meet; inf for parallel lines."""
    (sd, ad), (sm, am) = fits["ddm"], fits["monolith"]
    if np.isclose(sd, sm):
        return float("inf")
    return float(np.exp((am - ad) / (sd - sm)))


def plot_map(cells: dict[str, dict], reading: Reading, path: str | Path) -> Path:
    """The map in four panels, loss ratio against budget per size, against K, distinctness and the seed fraction;
    the band is 1 ± 2σ (inside it no difference counts)."""
    fig = Figure(figsize=(16, 3.6))
    axes = fig.subplots(1, 4, sharey=True)
    band = (1 - 2 * reading.sigma, 1 + 2 * reading.sigma)
    capacity = {n: r for n, r in cells.items() if _only_size_or_steps(n)}
    for size in [s for s in SIZES if any(size_name(r) == s for r in capacity.values())]:
        pts = sorted((budget(r), reading.ratios[n]) for n, r in capacity.items() if size_name(r) == size)
        axes[0].plot(*zip(*pts, strict=True), "o-", label=f"size {size}")
    axes[0].set(xscale="log", xlabel="budget (x the 1x of 16,000 samples per side)", ylabel="loss ratio monolith / DDM")
    axes[0].legend(fontsize=8)
    panels = [(axes[1], "b_k", "ratio_by_k", "K (experts), 1x, size s"),
              (axes[2], "c_distinctness", "ratio_by_overlap", "family overlap (1 shared, 0 disjoint)"),
              (axes[3], "d_seed_model", "ratio_by_fraction", "seed-model fraction f")]  # fmt: skip
    for ax, key, values, label in panels:
        by = reading.predictions[key][values]
        ax.plot(list(by), list(by.values()), "o-")
        ax.set(xlabel=label, title=reading.predictions[key]["verdict"])
    axes[0].set_title(reading.predictions["a_budget_per_parameter"]["verdict"])
    for ax in axes:
        ax.axhspan(*band, color="0.85", zorder=0)
        ax.axhline(1.0, color="0.4", lw=0.8)
    fig.suptitle(f"Regime map: held-out flow-matching loss ratio (> 1: the DDM is better); band 1 ± 2σ, σ = "
                 f"{reading.sigma:.4f}", fontsize=10)  # fmt: skip
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    return path

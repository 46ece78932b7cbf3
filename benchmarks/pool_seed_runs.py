"""Pool the headline over training seeds that were trained and scored in separate runs.

The protocol pools the seeds' recentred bootstrap replicates. On a 2-core machine a session fits one training seed,
so each seed was trained and scored by its own ``ddm_vs_monolith.py`` run (its own codec fit and AttrNet, same
config and seeds), and a run keeps only its intervals, not its replicates. What can still be computed exactly is the
mean and sd of the per-seed estimates (the decision rule's second half). The pooled interval itself is bounded: the
2.5th percentile of the union of the seeds' replicates lies between the smallest and the largest per-seed 2.5th
percentile, and likewise the 97.5th. The rule's first half ("the pooled interval lies above 1") is therefore settled
when every per-seed lower bound is above 1 (met) or none is (not met); otherwise this says "undecided" instead of
guessing. Runs that saved their replicates (``replicates-s<seed>.npz``, written by ``ddm_vs_monolith.py`` since
protocol v6) are pooled exactly instead: the pooled interval is the percentile interval of all seeds' recentred
replicates together, as the protocol says, and the rule is decided on it.

    python benchmarks/pool_seed_runs.py --runs benchmarks/results/v5 benchmarks/results/v5-seed1 \
        benchmarks/results/v5-seed2 --out benchmarks/results/v5-seeds

Writes ``seeds.json`` (machine-readable) and ``seeds.md`` under ``--out``. With ``--current`` the pooled result
becomes the current headline: ``benchmarks/results/headline.json`` (= seeds.json) and ``quality.json`` (issue 15's
file: a run's keys, averaged over seeds, plus per-seed values and whether each seed meets the bar).
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np

from lib.evaluate.attrnet import HEADLINE_ATTRIBUTES as ATTRS
from lib.evaluate.distances import load_replicates
from lib.evaluate.report import BASELINE
from lib.io import atomic_write

REPO = Path(__file__).resolve().parents[1]


RESULTS = REPO / "benchmarks" / "results"
BAR = {"mean": 0.75, "object_found": 0.90}  # issue 15's bar: mean attribute accuracy and object found


class PoolError(ValueError):
    """Runs that cannot be pooled (another protocol, a repeated seed, a run of several seeds)."""


def load_run(folder: Path) -> dict:
    """One run's headline.json and quality.json; a run must hold exactly one training seed."""
    try:
        headline = json.loads((folder / "headline.json").read_text())
        quality = json.loads((folder / "quality.json").read_text())
    except FileNotFoundError as err:
        raise PoolError(f"{folder}: not a finished headline run ({err.filename} missing)") from err
    seeds = headline["training_seeds"]
    if len(seeds) != 1:
        raise PoolError(f"{folder}: holds training seeds {seeds}; pool runs of one seed each")
    return {"folder": str(folder), "seed": int(seeds[0]), "headline": headline, "quality": quality}


def settle(lows: list[float], mean: float, sd: float) -> str:
    """The protocol's rule on bounds: pooled lower bound in [min(lows), max(lows)], gain iff it is > 1 and
    mean - 2 sd > 1."""
    if not mean - 2 * sd > 1.0 or max(lows) <= 1.0:
        return "not claimed"
    return "claimed" if min(lows) > 1.0 else "undecided"


def pool_ratio(runs: list[dict], key: str) -> dict:
    per_seed = {}
    for run in runs:
        details = run["headline"]["ratio_details"][f"{key}_per_seed"]
        per_seed[run["seed"]] = details[str(run["seed"])]
    points = np.array([v[0] for v in per_seed.values()])
    lows = [v[1] for v in per_seed.values()]
    highs = [v[2] for v in per_seed.values()]
    mean = float(points.mean())
    sd = float(points.std(ddof=1)) if len(points) > 1 else float("nan")
    pooled = {
        "per_seed": per_seed,
        "mean": round(mean, 4),
        "sd_seeds": round(sd, 4),
        "pooled_low_between": [round(min(lows), 4), round(max(lows), 4)],
        "pooled_high_between": [round(min(highs), 4), round(max(highs), 4)],
        "decision": settle(lows, mean, sd),
    }
    replicates = pooled_replicates(runs, key)
    if replicates is not None:
        low, high = (np.percentile(replicates, [2.5, 97.5]) if np.isfinite(replicates).all()
                     else (float("nan"), float("nan")))  # fmt: skip
        pooled["pooled_interval"] = [round(float(low), 4), round(float(high), 4)]
        pooled["decision"] = "claimed" if low > 1.0 and mean - 2 * sd > 1.0 else "not claimed"
    return pooled


def pooled_replicates(runs: list[dict], key: str) -> np.ndarray | None:
    """All runs' recentred replicates of the ratio monolith / head method, or None unless every run saved them."""
    head = runs[0]["headline"].get("head_method")
    files = [Path(r["folder"]) / f"replicates-s{r['seed']}.npz" for r in runs]
    if head is None or not all(f.is_file() for f in files):
        return None
    parts = [load_replicates(f)[f"ratio|{BASELINE}|{head}|{key}"].replicates for f in files]
    if any(len(p) == 0 for p in parts):  # a seed whose ratio was undefined leaves the pooled interval undefined
        return np.array([np.nan])
    return np.concatenate(parts)


def pool_quality(runs: list[dict]) -> dict:
    """Issue 15's record: per method, each attribute's accuracy averaged over the seeds that scored it (a
    diagnostic method such as ``ddm:oracle`` may run under one seed only: ``training_seeds`` says which), with the
    per-seed values."""
    methods = {}
    names = list(dict.fromkeys(m for r in runs for m in r["quality"]["methods"]))
    for method in names:
        per_seed = {r["seed"]: r["quality"]["methods"][method] for r in runs if method in r["quality"]["methods"]}
        entry = {k: round(float(np.mean([v[k] for v in per_seed.values()])), 4) for k in (*ATTRS, "object_found")}
        entry["mean"] = round(float(np.mean([entry[a] for a in ATTRS])), 4)
        entry["prompts"] = int(min(v["prompts"] for v in per_seed.values()))
        entry["training_seeds"] = sorted(per_seed)
        if method != "real":
            entry["meets_bar_per_seed"] = {
                s: bool(v["mean"] >= BAR["mean"] and v["object_found"] >= BAR["object_found"])
                for s, v in per_seed.items()
            }
        entry["per_seed"] = {s: {k: v[k] for k in (*ATTRS, "mean", "object_found")} for s, v in per_seed.items()}
        methods[method] = entry
    codec = {r["seed"]: r["quality"]["codec"] for r in runs}
    return {
        "scorer": runs[0]["quality"]["scorer"] + "; pooled over separate runs, one training seed each",
        "methods": methods,
        "codec": codec,
    }


AMI_LINE = re.compile(r"AMI with attributes: (.*)$", re.M)


def cluster_ami(run: dict) -> dict[str, float] | None:
    """The run's clusters' AMI per attribute: from its headline.json, or, for runs written before the headline
    carried it, from the cluster line the driver printed to the run's log (``run-s<seed>.log`` in its folder)."""
    if "cluster_ami" in run["headline"]:
        return run["headline"]["cluster_ami"]
    log = Path(run["folder"]) / f"run-s{run['seed']}.log"
    found = AMI_LINE.search(log.read_text()) if log.is_file() else None
    if found is None:
        return None
    pairs = (item.rsplit(" ", 1) for item in found.group(1).split(", "))
    return {name: float(value) for name, value in pairs}


def per_seed(runs: list[dict], key: str) -> dict[str, float | None]:
    """A per-seed value the runs' headlines keep as {seed: value} (router accuracy at t = 1, the caption ceiling)."""
    return {str(r["seed"]): r["headline"].get(key, {}).get(str(r["seed"])) for r in runs}


def pool(runs: list[dict]) -> dict:
    shas = {r["headline"]["protocol_sha256"] for r in runs}
    if len(shas) != 1:
        raise PoolError(f"runs under different protocols ({sorted(s[:8] for s in shas)}): they cannot be pooled")
    seeds = [r["seed"] for r in runs]
    if len(set(seeds)) != len(seeds):
        raise PoolError(f"training seed(s) {sorted({s for s in seeds if seeds.count(s) > 1})} appear in two runs")
    runs = sorted(runs, key=lambda r: r["seed"])
    distances = {}
    for method in runs[0]["headline"]["methods"]:
        if all(method in r["headline"]["methods"] for r in runs):
            per = {r["seed"]: {k: r["headline"]["methods"][method][k] for k in ("fd_inf", "kid")} for r in runs}
            distances[method] = {
                "per_seed": per,
                **{k: round(float(np.mean([v[k][0] for v in per.values()])), 3) for k in ("fd_inf", "kid")},
            }
    return {
        "protocol_sha256": shas.pop(),
        "training_seeds": [r["seed"] for r in runs],
        "runs": [r["folder"] for r in runs],
        "metric_names": runs[0]["headline"]["metric_names"],
        "ratio_fd_inf": pool_ratio(runs, "fd_inf"),
        "ratio_kid": pool_ratio(runs, "kid"),
        "distances": distances,
        "router_accuracy_t1": per_seed(runs, "router_accuracy_t1"),
        "caption_ceiling_t1": per_seed(runs, "caption_ceiling_t1"),
        "cluster_ami": cluster_ami(runs[0]),  # the data seed's clusters: the same under every training seed
        "quality": pool_quality(runs),
    }


def markdown(result: dict) -> str:
    names = result["metric_names"]
    lines = [
        f"# Headline pooled over training seeds {result['training_seeds']} (separate runs)",
        "",
        f"Protocol sha256 `{result['protocol_sha256'][:8]}…`; runs: {', '.join(result['runs'])}.",
        "",
        "| ratio monolith / DDM | " + " | ".join(f"seed {s}" for s in result["training_seeds"])
        + " | mean ± sd over seeds | pooled 95 % interval (or the bounds on it) | decision |",
        "|---|" + "---|" * (len(result["training_seeds"]) + 3),
    ]
    for key in ("fd_inf", "kid"):
        r = result[f"ratio_{key}"]
        cells = [f"{v[0]:.3f} [{v[1]:.3f}, {v[2]:.3f}]" for v in r["per_seed"].values()]
        lows, highs = r["pooled_low_between"], r["pooled_high_between"]
        interval = (f"[{r['pooled_interval'][0]:.3f}, {r['pooled_interval'][1]:.3f}] (exact)" if "pooled_interval" in r
                    else f"[{lows[0]:.3f}…{lows[1]:.3f}, {highs[0]:.3f}…{highs[1]:.3f}]")  # fmt: skip
        lines.append(
            f"| {names[key]} | " + " | ".join(cells) + f" | {r['mean']:.3f} ± {r['sd_seeds']:.3f} | "
            f"{interval} | gain {r['decision']} |"
        )
    router, ceiling = result["router_accuracy_t1"], result["caption_ceiling_t1"]
    lines += ["", "Router accuracy at t = 1 per seed (caption-only ceiling): "
              + ", ".join(f"seed {s} {router[s]} ({ceiling[s]})" for s in router) + "."]  # fmt: skip
    if result["cluster_ami"]:
        lines += ["Clusters' AMI with each attribute: "
                  + ", ".join(f"{a} {v:.2f}" for a, v in result["cluster_ami"].items()) + "."]  # fmt: skip
    lines += ["", "| method | seed | mean4 | colour / shape / bg / motion | object found | issue-15 bar |",
              "|---|---|---|---|---|---|"]  # fmt: skip
    for method, q in result["quality"]["methods"].items():
        for seed, v in q["per_seed"].items():
            bar = q.get("meets_bar_per_seed", {}).get(seed)
            attrs = " / ".join(f"{v[a]:.2f}" for a in ATTRS)
            mark = "–" if bar is None else ("met" if bar else "missed")
            lines.append(f"| {method} | {seed} | {v['mean']:.3f} | {attrs} | {v['object_found']:.3f} | {mark} |")
        attrs = " / ".join(f"{q[a]:.2f}" for a in ATTRS)
        lines.append(f"| **{method}** | mean | **{q['mean']:.3f}** | {attrs} | **{q['object_found']:.3f}** | |")
    return "\n".join(lines) + "\n"


def write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", nargs="+", type=Path, required=True, help="run folders, one training seed each")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--current", action="store_true", help="also write benchmarks/results/{headline,quality}.json")
    args = parser.parse_args(argv)
    result = pool([load_run(f) for f in args.runs])
    args.out.mkdir(parents=True, exist_ok=True)
    text = markdown(result)
    write_text(args.out / "seeds.json", json.dumps(result, indent=1) + "\n")
    write_text(args.out / "seeds.md", text)
    if args.current:
        write_text(RESULTS / "headline.json", json.dumps(result, indent=1) + "\n")
        write_text(RESULTS / "quality.json", json.dumps(result["quality"], indent=1) + "\n")
    print(text)
    return result


if __name__ == "__main__":
    main()

"""The evaluation protocol of a run: which held-out clips are the reference, which are the "real" method.

Fixed before any result is seen, and the same in the pipeline, the re-evaluation and the benchmark:
- prompts are held-out ``prompt`` clips (``lib.sample.prompts``), and those clips form the ``real`` method (same
  prompts, same N as every generated method: it must sit near FD∞ ≈ 0 and KID ≈ 0);
- the reference set is up to ``evaluate.num_real`` held-out ``reference`` clips (a seeded choice);
- no clip of either role, nor any ``validation`` clip, was seen by a generator or by the feature network;
- one video per prompt and method; intervals are a paired bootstrap over prompts (``lib.evaluate.report``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from lib.config import EvalConfig
from lib.data.shards import load_clips
from lib.data.split import PROMPT, REFERENCE, SplitError, rows_with_role
from lib.evaluate.attrnet import AttrNet
from lib.evaluate.report import evaluate_methods
from lib.seeding import numpy_rng


def reference_clip_ids(index: pd.DataFrame, num_real: int, seed: int) -> list[str]:
    """A seeded choice of up to ``num_real`` reference-role clip ids, in a stable (sorted) order."""
    pool = sorted(rows_with_role(index, REFERENCE)["clip_id"].astype(str))
    if not pool:
        raise SplitError("evaluate: no clip has role 'reference' (see data.reference_fraction)")
    chosen = numpy_rng(seed, "eval-reference").permutation(len(pool))[:num_real]
    return [pool[i] for i in sorted(chosen)]


def compare_methods(
    shards_dir: str,
    index: pd.DataFrame,
    attributes: pd.DataFrame,
    assignments: pd.DataFrame,
    generated: dict[str, np.ndarray],
    prompts: pd.DataFrame,
    cfg: EvalConfig,
    featnet: AttrNet | None,
    seed: int,
) -> pd.DataFrame:
    """EvalReport of every generated method plus the ``real`` prompt clips, all prompts and per cluster."""
    prompt_ids = prompts["clip_id"].astype(str).tolist()
    roles = index.set_index("clip_id").loc[prompt_ids, "role"]
    if (roles != PROMPT).any():
        bad = roles[roles != PROMPT]
        raise SplitError(f"evaluate: prompt clip(s) {bad.index[:5].tolist()} have role(s) {sorted(set(bad))}")
    reference = reference_clip_ids(index, cfg.num_real, seed)
    clusters = assignments.set_index("clip_id")["cluster_id"]
    attrs = attributes.set_index("clip_id") if len(attributes) else None
    methods = {**generated, "real": load_clips(shards_dir, index, prompt_ids)}
    return evaluate_methods(
        reference_videos=load_clips(shards_dir, index, reference),
        generated=methods,
        prompts_attrs=attrs.loc[prompt_ids].reset_index() if attrs is not None else attributes,
        cfg=cfg,
        featnet=featnet,
        prompts=prompts["caption"].tolist(),
        reference_clusters=clusters.loc[reference].to_numpy(),
        prompt_clusters=prompts["cluster_id"].to_numpy(),
        seed=seed,
    )


HEADLINE_PREFIXES = ("fd_inf_", "fvd_inf_", "kid_", "kvd_", "ratio_fd_inf_", "ratio_fvd_inf_", "ratio_kid_",
                     "ratio_kvd_", "attr_acc_", "object_found_", "clip_sim", "motion_flow")  # fmt: skip


def _cell(mean: float, low: float, high: float) -> str:
    digits = 3 if abs(mean) < 10 else 1
    if np.isnan(low) or np.isnan(high):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def headline(report: pd.DataFrame) -> pd.DataFrame:
    """Method x metric table of all-prompt estimates with their 95 % intervals: the summary a person reads first."""
    main = report[(report["cluster"] == -1) & report["metric"].str.startswith(HEADLINE_PREFIXES)]
    main = main[~main["metric"].str.contains(".", regex=False)]
    cells = main.assign(cell=[_cell(m, lo, hi) for m, lo, hi in zip(main["mean"], main["ci_low"], main["ci_high"],
                                                                     strict=True)])  # fmt: skip
    order = [m for p in HEADLINE_PREFIXES for m in dict.fromkeys(cells["metric"]) if m.startswith(p)]
    table = cells.pivot(index="method", columns="metric", values="cell")
    return table[list(dict.fromkeys(order))].fillna("")

"""The evaluation protocol of a run: which real clips are the reference, which are the "real" method, how scored.

Fixed before any result is seen:
- prompts are the captions of cluster-stratified clips (``PromptSet``); the clips themselves form the ``real``
  method (same prompts, same N as every generated method: the floor every score is read against);
- the Fréchet reference set is ``eval.num_real`` other clips (a seeded choice, disjoint from the prompt clips),
  so the ``real`` row is a true real-vs-real distance at the generated N;
- every method has ``eval.draws`` generated sets (different seeds); scores are mean ± sd over draws.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from lib.config import EvalConfig
from lib.data.shards import load_clips
from lib.evaluate.featnet import AttrNet
from lib.evaluate.report import evaluate_methods
from lib.seeding import numpy_rng


def reference_clip_ids(index: pd.DataFrame, exclude: set[str], num_real: int, seed: int) -> list[str]:
    """A seeded choice of up to ``num_real`` clip ids not in ``exclude``, in a stable order."""
    pool = sorted(set(index["clip_id"]) - exclude)
    chosen = numpy_rng(seed, "eval-reference").permutation(len(pool))[:num_real]
    return [pool[i] for i in sorted(chosen)]


def compare_methods(
    shards_dir: str,
    index: pd.DataFrame,
    attributes: pd.DataFrame,
    assignments: pd.DataFrame,
    generated: dict[str, list[np.ndarray]],
    prompts: pd.DataFrame,
    cfg: EvalConfig,
    featnet: AttrNet | None,
    seed: int,
) -> pd.DataFrame:
    """EvalReport of every generated method plus the ``real`` reference, all prompts and per cluster."""
    prompt_ids = prompts["clip_id"].tolist()
    reference = reference_clip_ids(index, set(prompt_ids), cfg.num_real, seed)
    clusters = assignments.set_index("clip_id")["cluster_id"]
    attrs = attributes.set_index("clip_id") if len(attributes) else None
    methods = {**generated, "real": [load_clips(shards_dir, index, prompt_ids)]}
    return evaluate_methods(
        real_videos=load_clips(shards_dir, index, reference),
        real_attrs=attrs.loc[reference].reset_index() if attrs is not None else attributes,
        generated=methods,
        prompts_attrs=attrs.loc[prompt_ids].reset_index() if attrs is not None else attributes,
        cfg=cfg,
        featnet=featnet,
        prompts=prompts["caption"].tolist(),
        real_clusters=clusters.loc[reference].to_numpy(),
        prompt_clusters=prompts["cluster_id"].to_numpy(),
    )


def headline(report: pd.DataFrame) -> pd.DataFrame:
    """Method x metric table of the all-prompt means: the summary a person reads first."""
    main = report[(report["cluster"] == -1) & ~report["metric"].str.contains(".", regex=False)]
    return main.pivot_table(index="method", columns="metric", values="mean", sort=False)

"""Scores of every sampling method in one EvalReport table (its HTML page: ``lib.evaluate.page``).

Rules that keep the numbers meaningful:
- the reference set is held-out ``reference`` clips and the prompts are held-out ``prompt`` clips
  (lib.data.split); the ``real`` method is the prompt clips themselves, so it sits near FD∞ ≈ 0 and KID ≈ 0;
- one video per prompt for every method, row i = prompt i, so every interval and ratio is a *paired* bootstrap
  over prompts (lib.evaluate.distances);
- distances that do not depend on N (``fd_inf_<net>``, ``kid_<net>``) next to the fixed-N ``fd_<net>`` that papers
  report (compare that one only at equal N); ``ratio_<distance>`` rows give monolith / method;
- metric names carry the extractor: ``fvd_i3d`` only with the user's I3D file, otherwise ``fd_attrnet``;
  ``clip_sim`` only with a CLIP folder; prompt-attribute accuracy ``attr_acc_attrnet`` (an "absent" answer of the
  feature net counts as wrong) and ``object_found_attrnet`` with the offline AttrNet;
- ``cluster`` -1 scores all prompts; with cluster labels every cluster also gets its own rows (its prompts against
  the reference clips of that cluster).
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
from pandera.typing import DataFrame

from data_schemas.evaluate import EvalReport
from lib.config import EvalConfig
from lib.evaluate.attrnet import HEADLINE_ATTRIBUTES, AttrNet, attrnet_id
from lib.evaluate.attrnet_scoring import attribute_hits
from lib.evaluate.distances import score_sets
from lib.evaluate.fd_features import FeatureSpec, fd_feature_spec, video_features
from lib.evaluate.motion import mean_abs_frame_diff, normal_flow_magnitude
from lib.features.aesthetic import AestheticScorer
from lib.features.batch import FeatureError, as_video_batch
from lib.features.clip import ClipSimilarity
from lib.seeding import derive_seed, numpy_rng

log = logging.getLogger(__name__)

ALL_CLUSTERS = -1
BASELINE = "monolith"  # ratios are baseline / method
MIN_SET = 4  # fewest videos on either side for a distance row


def bootstrap_mean(values: np.ndarray, replicates: int, seed: int) -> tuple[float, float, float]:
    """Mean of per-prompt values and its 95 % percentile bootstrap interval over prompts."""
    values = np.asarray(values, dtype=np.float64)
    idx = numpy_rng(seed, "bootstrap-mean").integers(0, len(values), (replicates, len(values)))
    reps = values[idx].mean(axis=1)
    return float(values.mean()), float(np.percentile(reps, 2.5)), float(np.percentile(reps, 97.5))


def _row(method: str, metric: str, extractor: str, cluster: int, n_real: int, n_gen: int, mean: float,
         low: float = float("nan"), high: float = float("nan")) -> dict[str, object]:  # fmt: skip
    return {
        "method": method,
        "metric": metric,
        "extractor": extractor,
        "cluster": cluster,
        "n_real": n_real,
        "n_generated": n_gen,
        "mean": mean,
        "ci_low": low,
        "ci_high": high,
    }


def _check_generated(generated: dict[str, np.ndarray], n_prompts: int | None) -> int:
    """All methods must hold uint8 videos, one per prompt, in prompt order."""
    if not generated:
        raise ValueError("evaluate: no generated videos (the dict of methods is empty)")
    sizes = {}
    for method, videos in generated.items():
        try:
            sizes[method] = int(as_video_batch(videos).shape[0])
        except FeatureError as exc:
            raise ValueError(f"evaluate: {method!r}: {exc}") from None
    distinct = sorted(set(sizes.values()))
    if len(distinct) != 1:
        raise ValueError(f"evaluate: methods have different numbers of videos {sizes}; one video per prompt each")
    if n_prompts is not None and distinct[0] != n_prompts:
        raise ValueError(f"evaluate: {distinct[0]} generated videos per method but {n_prompts} prompts")
    return distinct[0]


def _distance_rows(
    spec: FeatureSpec, ref: np.ndarray, gen: dict[str, np.ndarray], cluster: int, cfg: EvalConfig, seed: int
) -> list[dict[str, object]]:
    names = {"fd": spec.metric, "fd_inf": spec.metric.replace("fd_", "fd_inf_", 1).replace("fvd_", "fvd_inf_", 1),
             "kid": spec.metric.replace("fd_", "kid_", 1).replace("fvd_", "kvd_", 1)}  # fmt: skip
    pairs = [(BASELINE, m) for m in gen if m != BASELINE] if BASELINE in gen else []
    results, ratios = score_sets(ref, gen, bootstrap=cfg.bootstrap, seed=derive_seed(seed, "eval", cluster),
                                 ratio_pairs=pairs)  # fmt: skip
    rows = []
    n_gen = len(next(iter(gen.values())))
    for method, res in results.items():
        for key, name in names.items():
            iv = getattr(res, key)
            if np.isfinite(iv.mean):  # FD∞ needs 4·D rows per set; score_sets logs why it is missing
                rows.append(_row(method, name, spec.extractor_id, cluster, len(ref), n_gen, iv.mean, iv.low, iv.high))
    for (_, method), by_metric in ratios.items():
        for key, name in names.items():
            iv = by_metric[key]
            if np.isfinite(iv.mean):  # undefined where the method's own interval reaches 0 (e.g. the real clips)
                rows.append(_row(method, f"ratio_{name}", spec.extractor_id, cluster, len(ref), n_gen, iv.mean,
                                 iv.low, iv.high))  # fmt: skip
    return rows


def evaluate_methods(
    reference_videos: np.ndarray,
    generated: dict[str, np.ndarray],
    prompts_attrs: pd.DataFrame,
    cfg: EvalConfig,
    featnet: AttrNet | None = None,
    prompts: list[str] | None = None,
    reference_clusters: np.ndarray | None = None,
    prompt_clusters: np.ndarray | None = None,
    clip: ClipSimilarity | None = None,
    seed: int = 0,
) -> DataFrame[EvalReport]:
    """Score every method on N-independent distances, text-video alignment and motion, with paired intervals.

    Args:
        reference_videos: held-out reference clips uint8 [N, T, H, W, 3] (all of them are used).
        generated: method name (``ddm:topk``, ``monolith``, ``expert:0``, ``real`` ...) -> uint8 [P, T, H, W, 3],
            row i answering prompt i; ``real`` should be the prompt clips themselves.
        prompts_attrs: P rows of the prompts' generating attributes (empty: no attribute accuracy).
        cfg: the ``evaluate`` config section (I3D / CLIP / aesthetic-head paths, bootstrap replicates).
        featnet: the run's AttrNet (distance features without I3D, and attribute accuracy).
        prompts: the P captions (needed for ``clip_sim``).
        reference_clusters: cluster label per reference clip [N] (per-cluster rows).
        prompt_clusters: cluster label per prompt [P] (per-cluster rows).
        clip: an already loaded CLIP scorer; built from ``cfg.clip_path`` when None and the path is set.
        seed: bootstrap seed.

    Returns:
        EvalReport rows for every (method, metric, cluster); ratios monolith / method when a monolith is scored.
    """
    n_prompts = len(prompts_attrs) if len(prompts_attrs) else (len(prompts) if prompts is not None else None)
    p = _check_generated(generated, n_prompts)
    ref_videos = as_video_batch(reference_videos)
    spec = fd_feature_spec(cfg, featnet, ref_videos)
    if clip is None and cfg.clip_path:
        clip = ClipSimilarity(cfg.clip_path)
    if clip is not None and (prompts is None or len(prompts) != p):
        got = None if prompts is None else len(prompts)
        raise ValueError(f"evaluate: clip_sim needs one prompt per generated video ({p}), got {got}")
    ref_feats = video_features(spec.module, ref_videos)
    gen_feats = {m: video_features(spec.module, v) for m, v in generated.items()}
    hits = {}
    if featnet is not None and len(prompts_attrs) > 0:
        hits = {m: attribute_hits(featnet, v, prompts_attrs) for m, v in generated.items()}
    sims = {m: clip.scores(v, prompts) for m, v in generated.items()} if clip is not None else {}
    aesthetic = AestheticScorer(cfg.aesthetic_path, clip) if cfg.aesthetic_path else None  # clip_path is required
    pretty = {m: np.array([aesthetic.score(video) for video in v]) for m, v in generated.items()} if aesthetic else {}
    motion = {m: {"motion_mad": mean_abs_frame_diff(v), "motion_flow": normal_flow_magnitude(v)}
              for m, v in generated.items()}  # fmt: skip

    groups = [(ALL_CLUSTERS, np.arange(p), np.arange(len(ref_videos)))]
    if prompt_clusters is not None:
        prompt_lab = np.asarray(prompt_clusters)
        if len(prompt_lab) != p:
            raise ValueError(f"evaluate: {len(prompt_lab)} prompt cluster labels for {p} prompts")
        ref_lab = np.asarray(reference_clusters) if reference_clusters is not None else None
        for c in sorted(set(prompt_lab.tolist())):
            ref_idx = np.flatnonzero(ref_lab == c) if ref_lab is not None else np.arange(0)
            groups.append((int(c), np.flatnonzero(prompt_lab == c), ref_idx))

    rows = []
    for cluster, gen_idx, ref_idx in groups:
        if len(ref_idx) >= MIN_SET and len(gen_idx) >= MIN_SET:
            gen = {m: f[gen_idx] for m, f in gen_feats.items()}
            rows += _distance_rows(spec, ref_feats[ref_idx], gen, cluster, cfg, seed)
        else:
            log.warning("cluster %d: %d reference / %d prompts, too few for distances", cluster, len(ref_idx),
                        len(gen_idx))  # fmt: skip
        bseed = derive_seed(seed, "eval-means", cluster)
        for method in generated:
            per_video = {}
            if hits:
                h = hits[method].iloc[gen_idx]
                per_video["attr_acc_attrnet"] = h[list(HEADLINE_ATTRIBUTES)].mean(axis=1).to_numpy()
                per_video |= {f"attr_acc_attrnet.{k}": h[k].to_numpy() for k in featnet.vocab}
                per_video["object_found_attrnet"] = h["object_found"].to_numpy()
            if sims:
                per_video["clip_sim"] = np.asarray(sims[method])[gen_idx]
            if pretty:
                per_video["aesthetic_laion"] = pretty[method][gen_idx]
            per_video |= {name: values[gen_idx] for name, values in motion[method].items()}
            for name, values in per_video.items():
                extractor = {"clip_sim": clip.extractor_id if clip else "", "motion_mad": "pixels",
                             "motion_flow": "pixels", "aesthetic_laion": aesthetic.extractor_id if aesthetic else ""
                             }.get(name, attrnet_id(featnet) if featnet else "")  # fmt: skip
                mean, low, high = bootstrap_mean(values.astype(np.float64), cfg.bootstrap, bseed)
                rows.append(_row(method, name, extractor, cluster, 0, len(gen_idx), mean, low, high))
    return EvalReport.validate(pd.DataFrame(rows, columns=list(EvalReport.to_schema().columns)))

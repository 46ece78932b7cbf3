"""Scores of every sampling method in one EvalReport table, and its HTML rendering for a Flyte Deck.

Rules that keep the numbers meaningful (DESIGN §7):
- one real reference set (``eval.num_real`` clips) and one generated N for every method: draws of different sizes
  are refused, because the Fréchet distance depends on N;
- mean ± sd and a 95 % t-interval over generated draws (same prompts, different seeds);
- metric names carry the extractor: ``fvd_i3d`` only with the user's I3D file, otherwise ``fd_attrnet``;
  ``clip_sim`` only with a CLIP folder, otherwise ``attr_acc_attrnet`` (prompt-attribute accuracy).
- ``cluster`` -1 scores all prompts; with cluster labels every cluster also gets its own rows (its prompts against
  the real clips of that cluster). Per-cluster FDs use a smaller N, so compare them only with each other.

The "real" method is the reference itself: its motion statistics are reported so generated motion can be read
against them. To get an FD floor, pass held-out real clips (with their attributes as prompts) as a method "real".
"""

from __future__ import annotations

import base64
import html
import io
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from pandera.typing import DataFrame
from scipy import stats
from torch import nn

from data_schemas.evaluate import EvalReport
from lib.config import EvalConfig
from lib.evaluate.clip_score import ClipSimilarity
from lib.evaluate.featnet import AttrNet, AttrNetFeatures, attribute_accuracy, attrnet_id
from lib.evaluate.frechet import FeatureError, FrechetVideoDistance, as_video_batch
from lib.evaluate.i3d import I3DFeatures
from lib.evaluate.motion import mean_abs_frame_diff, normal_flow_magnitude

log = logging.getLogger(__name__)

ALL_CLUSTERS = -1


@dataclass
class FeatureSpec:
    """A Fréchet feature extractor with the metric name and id it reports under."""

    module: nn.Module
    metric: str
    extractor_id: str

    def provenance(self, n_real: int, n_generated: int, frames: int, height: int, width: int) -> dict[str, object]:
        """What decides whether two scores may be compared; I3D adds its file hash and frame rule."""
        if isinstance(self.module, I3DFeatures):
            return self.module.provenance(n_real, n_generated, frames, height, width)
        return {
            "extractor": self.extractor_id,
            "metric": self.metric,
            "source_frames": frames,
            "source_resolution": f"{height}x{width}",
            "n_real": n_real,
            "n_generated": n_generated,
        }


def fd_feature_spec(cfg: EvalConfig, featnet: AttrNet | None) -> FeatureSpec:
    """I3D when ``eval.i3d_path`` is set (FVD proper), else the run's AttrNet (``fd_attrnet``)."""
    if cfg.i3d_path:
        i3d = I3DFeatures(cfg.i3d_path)
        return FeatureSpec(i3d, "fvd_i3d", i3d.extractor_id)
    if featnet is None:
        raise FeatureError(
            "eval: no I3D file (eval.i3d_path) and no AttrNet given; a Fréchet score needs one of them "
            "(AttrNet trains only on data with generating attributes, i.e. the built-in dataset)"
        )
    return FeatureSpec(AttrNetFeatures(featnet), "fd_attrnet", attrnet_id(featnet))


def _summary(values: list[float]) -> tuple[float, float, float]:
    """Mean, sample sd and 95 % t-interval half-width; sd and ci95 are NaN for one value."""
    arr = np.asarray(values, dtype=np.float64)
    if len(arr) < 2:
        return float(arr.mean()), float("nan"), float("nan")
    sd = float(arr.std(ddof=1))
    return float(arr.mean()), sd, float(stats.t.ppf(0.975, len(arr) - 1) * sd / np.sqrt(len(arr)))


def _row(method: str, metric: str, extractor: str, cluster: int, n_real: int, n_gen: int, values: list[float]):
    mean, sd, ci95 = _summary(values)
    return {
        "method": method,
        "metric": metric,
        "extractor": extractor,
        "cluster": cluster,
        "n_real": n_real,
        "n_generated": n_gen,
        "draws": len(values),
        "mean": mean,
        "sd": sd,
        "ci95": ci95,
    }


def _check_generated(generated: dict[str, list], n_prompts: int | None) -> int:
    """All draws of all methods must be uint8 videos with one N (and one per prompt when prompts are given)."""
    if not generated:
        raise ValueError("evaluate: no generated videos (the dict of methods is empty)")
    sizes = {}
    for method, draws in generated.items():
        if not draws:
            raise ValueError(f"evaluate: method {method!r} has no draws")
        for i, draw in enumerate(draws):
            try:
                sizes[(method, i)] = int(as_video_batch(draw).shape[0])
            except FeatureError as exc:
                raise ValueError(f"evaluate: {method!r} draw {i}: {exc}") from None
    distinct = sorted(set(sizes.values()))
    if len(distinct) != 1:
        raise ValueError(f"evaluate: generated draws differ in size {distinct}; scores are only comparable at one N")
    if n_prompts is not None and distinct[0] != n_prompts:
        raise ValueError(f"evaluate: {distinct[0]} generated videos per draw but {n_prompts} prompts")
    return distinct[0]


def evaluate_methods(
    real_videos: np.ndarray,
    real_attrs: pd.DataFrame,
    generated: dict[str, list[np.ndarray]],
    prompts_attrs: pd.DataFrame,
    cfg: EvalConfig,
    featnet: AttrNet | None = None,
    prompts: list[str] | None = None,
    real_clusters: np.ndarray | None = None,
    prompt_clusters: np.ndarray | None = None,
    clip: ClipSimilarity | None = None,
) -> DataFrame[EvalReport]:
    """Score every method on Fréchet distance, text-video alignment and motion.

    Args:
        real_videos: reference clips uint8 [N, T, H, W, 3]; the first ``cfg.num_real`` are used.
        real_attrs: their ClipAttributes rows (may be empty for real data without attributes).
        generated: method name (``ddm:topk``, ``monolith``, ``expert:0`` ...) -> draws, each uint8
            [P, T, H, W, 3] for the same P prompts in the same order.
        prompts_attrs: P rows of the prompts' generating attributes (empty: no attribute accuracy).
        cfg: the ``eval`` config section (I3D / CLIP paths, N real).
        featnet: the run's AttrNet (Fréchet features without I3D, and attribute accuracy).
        prompts: the P captions (needed for ``clip_sim``).
        real_clusters: cluster label per real clip [N] (per-cluster Fréchet rows).
        prompt_clusters: cluster label per prompt [P] (per-cluster rows).
        clip: an already loaded CLIP scorer; built from ``cfg.clip_path`` when None and the path is set.

    Returns:
        EvalReport rows for every (method, metric, cluster).
    """
    n_prompts = len(prompts_attrs) if len(prompts_attrs) else (len(prompts) if prompts is not None else None)
    p = _check_generated(generated, n_prompts)
    real = as_video_batch(real_videos)[: cfg.num_real]
    n_real = real.shape[0]
    if n_real < cfg.num_real:
        log.warning(
            "evaluate: only %d real clips for eval.num_real=%d; n_real in the report says so", n_real, cfg.num_real
        )
    spec = fd_feature_spec(cfg, featnet)
    if clip is None and cfg.clip_path:
        clip = ClipSimilarity(cfg.clip_path)
    if clip is not None and (prompts is None or len(prompts) != p):
        raise ValueError(
            f"evaluate: clip_sim needs one prompt per generated video ({p}), got {prompts and len(prompts)}"
        )
    use_attrs = featnet is not None and len(prompts_attrs) > 0
    real_lab = None if real_clusters is None else np.asarray(real_clusters)[:n_real]
    groups = [(ALL_CLUSTERS, np.arange(p), np.arange(n_real))]
    if prompt_clusters is not None:
        prompt_lab = np.asarray(prompt_clusters)
        if len(prompt_lab) != p:
            raise ValueError(f"evaluate: {len(prompt_lab)} prompt cluster labels for {p} prompts")
        for c in sorted(set(prompt_lab.tolist())):
            real_idx = np.flatnonzero(real_lab == c) if real_lab is not None else np.arange(0)
            groups.append((int(c), np.flatnonzero(prompt_lab == c), real_idx))

    rows = []
    for cluster, gen_idx, real_idx in groups:
        if len(real_idx) >= 2 and len(gen_idx) >= 2:
            fd = FrechetVideoDistance(spec.module, spec.metric)
            fd.update(real[real_idx], real=True)
            for method, draws in generated.items():
                values = []
                for draw in draws:
                    fd.reset_generated()
                    fd.update(as_video_batch(draw)[gen_idx], real=False)
                    values.append(fd.compute())
                rows.append(_row(method, spec.metric, spec.extractor_id, cluster, len(real_idx), len(gen_idx), values))
        else:
            log.warning(
                "cluster %d: %d real / %d prompts, too few for %s", cluster, len(real_idx), len(gen_idx), spec.metric
            )
        for method, draws in generated.items():
            batches = [as_video_batch(d)[gen_idx] for d in draws]
            if use_attrs:
                target = prompts_attrs.iloc[gen_idx].reset_index(drop=True)
                accs = [attribute_accuracy(featnet, b, target) for b in batches]
                fid = attrnet_id(featnet)
                for key in accs[0]:
                    name = "attr_acc_attrnet" if key == "mean" else f"attr_acc_attrnet.{key}"
                    rows.append(_row(method, name, fid, cluster, 0, len(gen_idx), [a[key] for a in accs]))
            if clip is not None:
                texts = [prompts[i] for i in gen_idx]
                sims = [float(clip.scores(b, texts).mean()) for b in batches]
                rows.append(_row(method, "clip_sim", clip.extractor_id, cluster, 0, len(gen_idx), sims))
            for name, fn in (("motion_mad", mean_abs_frame_diff), ("motion_flow", normal_flow_magnitude)):
                rows.append(
                    _row(method, name, "pixels", cluster, 0, len(gen_idx), [float(fn(b).mean()) for b in batches])
                )
        if len(real_idx) >= 1 and "real" not in generated:
            for name, fn in (("motion_mad", mean_abs_frame_diff), ("motion_flow", normal_flow_magnitude)):
                rows.append(_row("real", name, "pixels", cluster, len(real_idx), 0, [float(fn(real[real_idx]).mean())]))
    return EvalReport.validate(pd.DataFrame(rows, columns=list(EvalReport.to_schema().columns)))


def _bar_chart_png(report: pd.DataFrame) -> bytes:
    """One panel per headline metric (all prompts), bars per method with sd error bars."""
    main = report[
        (report[EvalReport.cluster] == ALL_CLUSTERS) & ~report[EvalReport.metric].str.contains(".", regex=False)
    ]
    metrics = list(dict.fromkeys(main[EvalReport.metric]))
    fig = Figure(figsize=(3.2 * max(len(metrics), 1), 3.0))
    axes = fig.subplots(1, max(len(metrics), 1), squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=False):
        sub = main[main[EvalReport.metric] == metric]
        ax.bar(sub[EvalReport.method], sub[EvalReport.mean], yerr=sub[EvalReport.sd].fillna(0.0), capsize=3)
        ax.set_title(metric, fontsize=9)
        ax.tick_params(axis="x", labelrotation=45, labelsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    return buf.getvalue()


def report_html(report_df: pd.DataFrame, sample_gifs: dict[str, list[str]]) -> str:
    """Self-contained HTML: the EvalReport table, a bar chart and sample animations side by side per method."""
    report = EvalReport.validate(report_df)
    png = base64.b64encode(_bar_chart_png(report)).decode()
    parts = [
        "<h3>Evaluation</h3>",
        "<p>Metric names carry their feature network: <code>fd_attrnet</code> and <code>attr_acc_attrnet</code> "
        "are offline proxies, not FVD or CLIP. Compare numbers only at equal n_real / n_generated.</p>",
        report.to_html(index=False, float_format=lambda v: f"{v:.4g}", na_rep="–"),
        f'<img alt="metrics" src="data:image/png;base64,{png}"/>',
        "<h4>Samples</h4><table>",
    ]
    for method, paths in sample_gifs.items():
        cells = []
        for path in paths:
            data = base64.b64encode(Path(path).read_bytes()).decode()
            cells.append(f'<td><img alt="{html.escape(Path(path).name)}" src="data:image/gif;base64,{data}"/></td>')
        parts.append(f"<tr><th>{html.escape(method)}</th>{''.join(cells)}</tr>")
    parts.append("</table>")
    return "\n".join(parts)

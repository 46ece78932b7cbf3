"""What a clustering looks like: balance, separation, example captions, alignment with known attributes, a plot.

The report is what a person reads before spending K expert trainings on a split: a catch-all cluster shows as
a large max/min size ratio and a low normalised entropy, a meaningless split as a silhouette near 0 and low
adjusted mutual information (AMI) with the procedural dataset's generating attributes. ``to_html`` gives a
fragment the cluster task puts in a Flyte Deck; this module never imports flytekit.
"""

from __future__ import annotations

import base64
import html
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from sklearn.decomposition import PCA
from sklearn.metrics import adjusted_mutual_info_score, silhouette_score

from data_schemas.cluster import ClusterAMI, ClusterAssignment, ClusterSummary
from lib.cluster.kmeans import ClusterResult, validate_embeddings
from lib.io import atomic_write
from lib.seeding import derive_seed, numpy_rng

log = logging.getLogger(__name__)

EXAMPLES_PER_CLUSTER = 5
ATTRIBUTE_KEY = "clip_id"  # identifier column of attribute tables; not an attribute to score
PLOT_MAX_POINTS = 5000  # points drawn in the projection (a seeded sample beyond that; PCA still sees all)
CAPTION_SEPARATOR = " | "
SCORE_COLUMNS = ("motion", "aesthetic")  # ClipIndex quality scores (lib.data.filters), when ingestion measured them
SCORE_BINS = 30


@dataclass
class ClusterReport:
    """Summary numbers of one clustering.

    Attributes:
        method: ``cluster.method`` of the clustering.
        sizes: members per cluster, length K.
        size_ratio: largest / smallest cluster size (inf when a cluster is empty).
        size_entropy: entropy of the size distribution divided by log K; 1.0 is perfectly balanced.
        silhouette: mean cosine silhouette on a seeded sample, in [-1, 1]; NaN when the sample holds one cluster.
        silhouette_n: samples the silhouette was computed on.
        examples: per cluster, up to 5 captions of the members closest to the centroid.
        ami: adjusted mutual information of the labels with each attribute column.
        plot_path: PNG of the 2-D PCA projection coloured by cluster.
        score_plot_path: PNG of the quality-score histograms per cluster (None when the clips carry no scores).
    """

    method: str
    sizes: list[int]
    size_ratio: float
    size_entropy: float
    silhouette: float
    silhouette_n: int
    examples: dict[int, list[str]]
    plot_path: Path
    ami: dict[str, float] = field(default_factory=dict)
    score_plot_path: Path | None = None

    def summary_frame(self) -> pd.DataFrame:
        """One row per cluster, validated against ``ClusterSummary``."""
        total = max(sum(self.sizes), 1)
        frame = pd.DataFrame(
            {
                ClusterSummary.cluster_id: np.arange(len(self.sizes), dtype=np.int64),
                ClusterSummary.size: np.asarray(self.sizes, dtype=np.int64),
                ClusterSummary.fraction: np.asarray(self.sizes, dtype=np.float64) / total,
                ClusterSummary.example_captions: [
                    CAPTION_SEPARATOR.join(self.examples.get(c, [])) for c in range(len(self.sizes))
                ],
            }
        )
        return ClusterSummary.validate(frame)

    def ami_frame(self) -> pd.DataFrame:
        """AMI per attribute, highest first, validated against ``ClusterAMI`` (empty without attributes)."""
        ranked = sorted(self.ami.items(), key=lambda item: -item[1])
        frame = pd.DataFrame(
            {
                ClusterAMI.attribute: pd.Series([name for name, _ in ranked], dtype=str),
                ClusterAMI.ami: pd.Series([value for _, value in ranked], dtype=np.float64),
            }
        )
        return ClusterAMI.validate(frame)

    def to_html(self) -> str:
        """An HTML fragment: metrics table, AMI per attribute (when the clips carry attributes), per-cluster table
        with example captions, the projection as a PNG."""
        metrics = [
            ("method", self.method),
            ("clusters", str(len(self.sizes))),
            ("max/min size ratio", f"{self.size_ratio:.3f}"),
            ("normalised size entropy", f"{self.size_entropy:.3f}"),
            (f"silhouette (cosine, n={self.silhouette_n})", f"{self.silhouette:.3f}"),
        ]
        metric_rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in metrics)
        ami = ""
        if self.ami:
            ami_rows = "".join(f"<tr><td>{html.escape(row.attribute)}</td><td>{row.ami:.3f}</td></tr>"
                               for row in self.ami_frame().itertuples(index=False))  # fmt: skip
            ami = (
                '<table class="cluster-ami"><caption>what the clusters follow: adjusted mutual information with each '
                "attribute (0 = chance, 1 = the clusters are that attribute)</caption>"
                f"<tr><th>attribute</th><th>AMI</th></tr>{ami_rows}</table>"
            )
        summary = self.summary_frame()
        cluster_rows = "".join(
            f"<tr><td>{row.cluster_id}</td><td>{row.size}</td><td>{row.fraction:.3f}</td>"
            f"<td>{'<br>'.join(html.escape(c) for c in self.examples.get(row.cluster_id, []))}</td></tr>"
            for row in summary.itertuples(index=False)
        )
        png = base64.b64encode(Path(self.plot_path).read_bytes()).decode("ascii")
        scores = ""
        if self.score_plot_path is not None:
            score_png = base64.b64encode(Path(self.score_plot_path).read_bytes()).decode("ascii")
            scores = f'<img alt="quality scores per cluster" src="data:image/png;base64,{score_png}"/>'
        return (
            '<div class="cluster-report">'
            f'<table class="cluster-metrics">{metric_rows}</table>{ami}'
            '<table class="cluster-sizes"><tr><th>cluster</th><th>size</th><th>fraction</th>'
            f"<th>example captions</th></tr>{cluster_rows}</table>"
            f'<img alt="PCA projection coloured by cluster" src="data:image/png;base64,{png}"/>'
            f"{scores}</div>"
        )


def assignment_frame(clip_ids: list[str], result: ClusterResult, roles: list[str] | np.ndarray) -> pd.DataFrame:
    """The ClusterAssignment table of a clustering, rows in the order of ``clip_ids`` (``roles`` aligned)."""
    if len(clip_ids) != len(result.labels) or len(roles) != len(clip_ids):
        raise ValueError(f"{len(clip_ids)} clip ids for {len(result.labels)} cluster labels and {len(roles)} roles")
    frame = pd.DataFrame(
        {
            ClusterAssignment.clip_id: list(clip_ids),
            ClusterAssignment.cluster_id: result.labels.astype(np.int64),
            ClusterAssignment.distance: result.distances.astype(np.float64),
            ClusterAssignment.fine_cluster: result.fine_labels.astype(np.int64),
            ClusterAssignment.role: list(roles),
        }
    )
    return ClusterAssignment.validate(frame)


def balance(sizes: np.ndarray) -> tuple[float, float]:
    """(max/min size ratio, entropy of the size distribution / log K); K = 1 counts as balanced."""
    sizes = np.asarray(sizes, dtype=np.float64)
    ratio = math.inf if sizes.min() == 0 else float(sizes.max() / sizes.min())
    if len(sizes) == 1:
        return ratio, 1.0
    p = sizes[sizes > 0] / sizes.sum()
    return ratio, float(-(p * np.log(p)).sum() / math.log(len(sizes)))


def _silhouette(xn: np.ndarray, labels: np.ndarray, seed: int, sample: int) -> tuple[float, int]:
    """Cosine silhouette on a seeded subsample (it is O(n^2)); NaN when the sample holds fewer than 2 labels."""
    n = len(labels)
    idx = np.sort(numpy_rng(seed, "cluster", "silhouette").choice(n, size=min(sample, n), replace=False))
    distinct = len(np.unique(labels[idx]))
    if distinct < 2 or distinct >= len(idx):
        log.warning("silhouette undefined: %d cluster(s) among %d sampled points", distinct, len(idx))
        return math.nan, len(idx)
    return float(silhouette_score(xn[idx], labels[idx], metric="cosine")), len(idx)


def _examples(result: ClusterResult, captions: list[str]) -> dict[int, list[str]]:
    """Captions of the members closest to each centroid: the most typical clips of the cluster."""
    out = {}
    for c in range(result.num_clusters):
        members = np.flatnonzero(result.labels == c)
        closest = members[np.argsort(result.distances[members], kind="stable")[:EXAMPLES_PER_CLUSTER]]
        out[c] = [captions[i] for i in closest]
    return out


def attribute_ami(labels: np.ndarray, attributes: pd.DataFrame) -> dict[str, float]:
    """Adjusted mutual information of cluster ``labels`` [N] with every attribute column but ``clip_id`` (N rows,
    row-aligned): 0 when the clusters tell no more about the attribute than chance, 1 when they are it."""
    if len(attributes) != len(labels):
        raise ValueError(f"attributes have {len(attributes)} rows for {len(labels)} clustered clips")
    return {
        str(col): float(adjusted_mutual_info_score(attributes[col].astype(str).to_numpy(), labels))
        for col in attributes.columns
        if col != ATTRIBUTE_KEY
    }


def _plot(xn: np.ndarray, result: ClusterResult, seed: int, path: Path) -> Path:
    """2-D PCA of the normalised embeddings with the centroids marked, written atomically as PNG."""
    pca = PCA(n_components=min(2, xn.shape[1]), random_state=derive_seed(seed, "cluster", "pca") % 2**32)
    proj = pca.fit_transform(xn)
    cent = pca.transform(result.centroids)
    if proj.shape[1] == 1:
        proj, cent = np.pad(proj, ((0, 0), (0, 1))), np.pad(cent, ((0, 0), (0, 1)))
    shown = np.arange(len(proj))
    if len(shown) > PLOT_MAX_POINTS:
        shown = np.sort(numpy_rng(seed, "cluster", "plot").choice(len(proj), PLOT_MAX_POINTS, replace=False))
    fig = Figure(figsize=(6, 5), dpi=100)
    ax = fig.add_subplot()
    cmap = "tab10" if result.num_clusters <= 10 else "tab20"
    ax.scatter(proj[shown, 0], proj[shown, 1], c=result.labels[shown], cmap=cmap, s=6, alpha=0.6, linewidths=0)
    ax.scatter(cent[:, 0], cent[:, 1], c="black", marker="x", s=60, label="centroids")
    for c, (cx, cy) in enumerate(cent[:, :2]):
        ax.annotate(str(c), (cx, cy), textcoords="offset points", xytext=(4, 4), fontsize=9)
    ax.set_title(f"{result.method}: {result.num_clusters} clusters, {len(proj)} clips (PCA)")
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    ax.legend(loc="best", fontsize=8)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    return path


def _score_plot(scores: pd.DataFrame, labels: np.ndarray, num_clusters: int, path: Path) -> Path | None:
    """One histogram per measured quality score, stacked by cluster (shared bins), written atomically as PNG: a
    cluster made of still or ugly clips shows here before an expert trains on it. None when nothing was measured."""
    columns = [c for c in SCORE_COLUMNS if c in scores.columns and scores[c].notna().any()]
    if not columns:
        return None
    fig = Figure(figsize=(5 * len(columns), 3.5), dpi=100)
    for i, column in enumerate(columns):
        ax = fig.add_subplot(1, len(columns), i + 1)
        values = scores[column].to_numpy(dtype=np.float64)
        ok = np.isfinite(values)
        bins = np.histogram_bin_edges(values[ok], bins=SCORE_BINS)
        per_cluster = [values[ok & (labels == c)] for c in range(num_clusters)]
        ax.hist(per_cluster, bins=bins, stacked=True, label=[f"cluster {c}" for c in range(num_clusters)])
        ax.set_title(f"{column} ({ok.sum()} clips)")
        ax.set_xlabel(column)
        ax.set_ylabel("clips")
    ax.legend(loc="best", fontsize=7)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    return path


def cluster_report(
    x: np.ndarray,
    result: ClusterResult,
    captions: list[str],
    attributes: pd.DataFrame | None,
    seed: int,
    silhouette_sample: int,
    plot_path: str | Path,
    scores: pd.DataFrame | None = None,
) -> ClusterReport:
    """Measure a clustering of ``x`` and draw it.

    Args:
        x: float32 [N, D] the embeddings that were clustered.
        result: their ``cluster_embeddings`` result.
        captions: N captions, row-aligned with ``x``.
        attributes: optional N-row table of known attributes (e.g. ClipAttributes); AMI is computed for every
            column except ``clip_id``.
        seed: run seed; the silhouette and plot samples derive from it.
        silhouette_sample: at most this many points enter the silhouette.
        plot_path: where the projection PNG is written.
        scores: optional N-row table of quality scores (``motion``/``aesthetic`` columns of the ClipIndex); their
            histograms per cluster go to ``scores.png`` beside the projection.

    Returns:
        ClusterReport.
    """
    xn = validate_embeddings(x)
    n = len(xn)
    if len(result.labels) != n or len(captions) != n:
        raise ValueError(f"{n} embeddings but {len(result.labels)} labels and {len(captions)} captions")
    sizes = result.sizes()
    ratio, entropy = balance(sizes)
    silhouette, silhouette_n = _silhouette(xn, result.labels, seed, silhouette_sample)
    return ClusterReport(
        method=result.method,
        sizes=sizes.tolist(),
        size_ratio=ratio,
        size_entropy=entropy,
        silhouette=silhouette,
        silhouette_n=silhouette_n,
        examples=_examples(result, captions),
        plot_path=_plot(xn, result, seed, Path(plot_path)),
        ami=attribute_ami(result.labels, attributes) if attributes is not None else {},
        score_plot_path=None
        if scores is None
        else _score_plot(scores, result.labels, result.num_clusters, Path(plot_path).with_name("scores.png")),
    )

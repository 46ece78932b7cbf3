"""Split clip embeddings into K semantic clusters, one per expert (DESIGN §1, "Clustering").

The default is the two-stage recipe of the DDM papers: spherical k-means with many fine centroids, then an
agglomerative (cosine, average linkage) merge of those centroids into K groups, and every sample assigned
through its nearest fine centroid. Plain k-means straight to K tends to make one catch-all cluster; merging
many small, tight clusters follows the shape of the data instead. ``"balanced"`` adds size balancing on top,
for runs where every expert must see about the same amount of data.

Everything here is deterministic given the seed: faiss k-means is seeded, its assignment and centroid
updates do not depend on the thread count (checked in tests), and every other step is plain numpy/sklearn.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import faiss
import numpy as np
from sklearn.cluster import AgglomerativeClustering

from lib.config import ClusterConfig
from lib.seeding import derive_seed

log = logging.getLogger(__name__)

MIN_POINTS_PER_FINE = 4  # fewer samples per fine centroid makes centroids that are single noisy samples
FAISS_MIN_POINTS_PER_CENTROID = 39  # faiss's own default; below it k-means centroids are poorly estimated
TRAIN_POINTS_PER_CENTROID = 256  # faiss default: rows per centroid used to fit centroids
ASSIGN_CHUNK = 65536  # rows per block when scoring samples against centroids (bounds memory at N x K floats)
MAX_LISTED_ROWS = 5  # bad row indices named in an error message
DISTINCT_DECIMALS = 5  # unit rows equal to this many decimals count as one direction (x and 3x are duplicates)


class ClusterInputError(ValueError):
    """Embeddings that cannot be clustered as asked (wrong shape/dtype, non-finite, zero or too few rows)."""


@dataclass
class ClusterResult:
    """Cluster assignment of N samples.

    Attributes:
        labels: int64 [N], cluster of each sample in 0..K-1.
        distances: float32 [N], cosine distance (1 - cos) of each sample to its cluster's centroid, >= 0.
        centroids: float32 [K, D], unit-norm; the normalised mean of each cluster's members.
        fine_centroids: float32 [F, D], unit-norm first-stage centroids (F = K for ``"kmeans"``).
        fine_labels: int64 [N], nearest fine centroid of each sample.
        fine_to_cluster: int64 [F], the cluster each fine centroid was merged into.
        method: the ``cluster.method`` that produced this result.
    """

    labels: np.ndarray
    distances: np.ndarray
    centroids: np.ndarray
    fine_centroids: np.ndarray
    fine_labels: np.ndarray
    fine_to_cluster: np.ndarray
    method: str

    @property
    def num_clusters(self) -> int:
        return int(self.centroids.shape[0])

    def sizes(self) -> np.ndarray:
        """int64 [K] members per cluster (zeros included)."""
        return np.bincount(self.labels, minlength=self.num_clusters).astype(np.int64)


def _bad_rows(mask: np.ndarray) -> str:
    rows = np.flatnonzero(mask)
    listed = ", ".join(map(str, rows[:MAX_LISTED_ROWS]))
    more = f" and {len(rows) - MAX_LISTED_ROWS} more" if len(rows) > MAX_LISTED_ROWS else ""
    return f"{len(rows)} row(s): {listed}{more}"


def validate_embeddings(x: np.ndarray, num_clusters: int | None = None) -> np.ndarray:
    """Refuse embeddings faiss would silently mis-cluster (or crash on); return them L2-normalised.

    Checked before faiss so that the error names the problem and the rows instead of a C++ assertion.

    Args:
        x: float32 [N, D] embeddings.
        num_clusters: K, when clustering; None when only assigning to existing centroids.

    Returns:
        float32 [N, D], each row divided by its L2 norm.
    """
    if not isinstance(x, np.ndarray):
        raise ClusterInputError(f"embeddings must be a numpy array, got {type(x).__name__}")
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ClusterInputError(f"embeddings must be a non-empty 2-D array [N, D], got shape {x.shape}")
    if x.dtype != np.float32:
        raise ClusterInputError(f"embeddings must be float32, got {x.dtype} (convert with x.astype(np.float32))")
    n = x.shape[0]
    if num_clusters is not None and n < num_clusters:
        raise ClusterInputError(f"{n} clips but K={num_clusters}: need at least one clip per cluster")
    finite = np.isfinite(x).all(axis=1)
    if not finite.all():
        raise ClusterInputError(f"embeddings hold NaN/inf in {_bad_rows(~finite)}")
    norms = np.linalg.norm(x, axis=1)
    zero = norms <= np.finfo(np.float32).tiny
    if zero.any():
        raise ClusterInputError(f"embeddings hold zero vectors (cannot normalise for cosine) in {_bad_rows(zero)}")
    xn = np.ascontiguousarray(x / norms[:, None], dtype=np.float32)
    if num_clusters is not None:
        distinct = len(np.unique(np.round(xn, DISTINCT_DECIMALS), axis=0))
        if distinct < num_clusters:
            raise ClusterInputError(
                f"only {distinct} distinct embedding direction(s) among {n} clips but K={num_clusters}: "
                "duplicate clips cannot be split into that many clusters"
            )
    return xn


def _cosine_scores(xn: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """float32 [N, C] cosine similarity of unit rows to unit centroids, computed in blocks."""
    out = np.empty((xn.shape[0], centroids.shape[0]), dtype=np.float32)
    for start in range(0, xn.shape[0], ASSIGN_CHUNK):
        out[start : start + ASSIGN_CHUNK] = xn[start : start + ASSIGN_CHUNK] @ centroids.T
    return out


def _nearest(xn: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centroid (ties: lowest index) and cosine distance, for unit rows and unit centroids."""
    scores = _cosine_scores(xn, centroids)
    labels = scores.argmax(axis=1).astype(np.int64)
    best = np.take_along_axis(scores, labels[:, None], axis=1)[:, 0]
    return labels, np.maximum(1.0 - best, 0.0).astype(np.float32)


def assign(x: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Assign new points to the nearest of existing centroids by cosine similarity (prompts, routing targets).

    Args:
        x: float32 [N, D] embeddings (need not be normalised).
        centroids: float32 [K, D] cluster centroids, e.g. ``ClusterResult.centroids``.

    Returns:
        labels int64 [N] in 0..K-1 and cosine distances float32 [N] (>= 0).
    """
    xn = validate_embeddings(x)
    c = np.asarray(centroids, dtype=np.float32)
    if c.ndim != 2 or c.shape[1] != xn.shape[1] or c.shape[0] == 0:
        raise ClusterInputError(f"centroids must be [K, {xn.shape[1]}] to match the embeddings, got {c.shape}")
    return _nearest(xn, _unit(c))


def _unit(v: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    return np.ascontiguousarray(v / np.maximum(norms, np.finfo(np.float32).tiny), dtype=np.float32)


def spherical_kmeans(xn: np.ndarray, k: int, niter: int, seed: int, stage: str = "kmeans") -> np.ndarray:
    """faiss spherical k-means++ on unit rows; returns unit centroids [k, D].

    Centroids are fitted on at most ``TRAIN_POINTS_PER_CENTROID`` x k rows (a seeded faiss subsample; every row
    when N is smaller, as at the built-in sizes). Beyond that many rows per centroid the centroids barely move
    while the cost grows with N: on 200k x 384 embeddings this is what makes the path 18x faster than
    scikit-learn's KMeans at +0.4 % inertia (``benchmarks/kmeans_faiss_vs_sklearn.py``). Every row is still
    assigned afterwards by the caller.
    """
    n, d = xn.shape
    if n < FAISS_MIN_POINTS_PER_CENTROID * k:
        log.info("%s: %d samples for %d centroids (%.1f per centroid)", stage, n, k, n / k)
    km = faiss.Kmeans(
        d,
        k,
        niter=niter,
        spherical=True,
        seed=derive_seed(seed, "cluster", stage) % 2**31,
        init_method=faiss.ClusteringInitMethod_KMEANS_PLUS_PLUS,  # random init often splits a big cluster
        max_points_per_centroid=TRAIN_POINTS_PER_CENTROID,
        min_points_per_centroid=1,  # the caller sized k; faiss's stderr warning would only repeat that
    )
    km.train(xn)
    return _unit(km.centroids)


def _merge_fine(fine: np.ndarray, k: int) -> np.ndarray:
    """Group F fine centroids into k clusters (agglomerative, cosine, average linkage); int64 [F]."""
    f = fine.shape[0]
    if k == 1:
        return np.zeros(f, dtype=np.int64)
    if k == f:
        return np.arange(f, dtype=np.int64)
    merge = AgglomerativeClustering(n_clusters=k, metric="cosine", linkage="average")
    return merge.fit_predict(fine).astype(np.int64)


def _member_centroids(xn: np.ndarray, labels: np.ndarray, k: int, fallback: np.ndarray) -> np.ndarray:
    """Normalised mean of each cluster's members; an empty cluster keeps its ``fallback`` row (until balanced)."""
    sums = np.zeros((k, xn.shape[1]), dtype=np.float64)
    np.add.at(sums, labels, xn)
    counts = np.bincount(labels, minlength=k)
    empty = counts == 0
    sums[empty] = fallback[empty]
    return _unit(sums.astype(np.float32))


def _balanced_labels(scores: np.ndarray) -> np.ndarray:
    """Assign samples to clusters with sizes floor(N/K) or ceil(N/K), most confident samples first.

    Samples are taken in order of decreasing margin between their best and second-best cluster, so a sample
    that clearly belongs somewhere gets its cluster and only ambiguous samples are moved to fill others.
    Exactly N mod K clusters reach ceil(N/K); hence sizes differ by at most one.
    """
    n, k = scores.shape
    low, extra = divmod(n, k)
    ranked = np.argsort(-scores, axis=1, kind="stable")
    top = np.take_along_axis(scores, ranked[:, :2], axis=1) if k > 1 else np.zeros((n, 2), dtype=np.float32)
    order = np.lexsort((np.arange(n), -(top[:, 0] - top[:, 1])))  # margin descending, ties by row
    sizes = np.zeros(k, dtype=np.int64)
    labels = np.empty(n, dtype=np.int64)
    at_high = 0
    for i in order:
        for c in ranked[i]:
            cap = low + 1 if at_high < extra else low
            if sizes[c] < cap:
                sizes[c] += 1
                at_high += int(sizes[c] == low + 1)
                labels[i] = c
                break
    return labels


def _fine_stage(xn: np.ndarray, cfg: ClusterConfig, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fine spherical k-means + agglomerative merge: fine centroids, fine labels, fine_to_cluster."""
    n, k = xn.shape[0], cfg.num_clusters
    f = max(k, min(cfg.fine_clusters, n // MIN_POINTS_PER_FINE))
    if f != cfg.fine_clusters:
        log.warning(
            "cluster.fine_clusters=%d lowered to %d for %d samples (at least %d samples per fine centroid)",
            cfg.fine_clusters,
            f,
            n,
            MIN_POINTS_PER_FINE,
        )
    fine = spherical_kmeans(xn, f, cfg.niter, seed, "fine_kmeans")
    fine_labels, _ = _nearest(xn, fine)
    return fine, fine_labels, _merge_fine(fine, k)


def cluster_embeddings(x: np.ndarray, cfg: ClusterConfig, seed: int) -> ClusterResult:
    """Cluster clip embeddings into ``cfg.num_clusters`` groups with ``cfg.method``.

    - ``two_stage``: spherical k-means to ``cfg.fine_clusters`` (lowered when N is small, logged), cosine
      average-linkage merge to K, each sample takes the cluster of its nearest fine centroid.
    - ``kmeans``: spherical k-means straight to K (the baseline the DDM papers warn about).
    - ``balanced``: the two-stage clusters, then rounds of size-capped reassignment (``_balanced_labels``)
      and centroid updates, up to ``cfg.balance_rounds``; sizes differ by at most one. Here a sample's cluster
      may differ from ``fine_to_cluster[fine_labels]``, since balancing moves single samples.

    In every method the final centroids are the normalised mean of each cluster's members and ``distances``
    are cosine distances to them.

    Args:
        x: float32 [N, D] embeddings (any norm; they are L2-normalised here).
        cfg: the ``cluster`` config section.
        seed: run seed; faiss seeds derive from it.

    Returns:
        ClusterResult with labels in 0..K-1.
    """
    k = cfg.num_clusters
    xn = validate_embeddings(x, k)
    if cfg.method == "kmeans":
        fine = spherical_kmeans(xn, k, cfg.niter, seed, "kmeans")
        fine_labels, _ = _nearest(xn, fine)
        fine_to_cluster = np.arange(k, dtype=np.int64)
    else:
        fine, fine_labels, fine_to_cluster = _fine_stage(xn, cfg, seed)
    labels = fine_to_cluster[fine_labels]
    fallback = _unit(np.stack([fine[fine_to_cluster == c].mean(axis=0) for c in range(k)]))
    centroids = _member_centroids(xn, labels, k, fallback)
    if cfg.method == "balanced":
        for _ in range(cfg.balance_rounds):
            new = _balanced_labels(_cosine_scores(xn, centroids))
            centroids = _member_centroids(xn, new, k, centroids)
            if np.array_equal(new, labels):
                break
            labels = new
    sizes = np.bincount(labels, minlength=k)
    if (sizes == 0).any():
        raise ClusterInputError(
            f"{cfg.method} clustering left cluster(s) {np.flatnonzero(sizes == 0).tolist()} of K={k} empty: "
            "the embeddings are too concentrated (near-duplicates) for that many clusters; lower "
            "cluster.num_clusters or use cluster.method=balanced"
        )
    distances = np.maximum(1.0 - np.einsum("nd,nd->n", xn, centroids[labels]), 0.0).astype(np.float32)
    log.info("%s clustering of %d samples into %d clusters: sizes %s", cfg.method, len(xn), k, sizes.tolist())
    return ClusterResult(
        labels=labels,
        distances=distances,
        centroids=centroids,
        fine_centroids=fine,
        fine_labels=fine_labels,
        fine_to_cluster=fine_to_cluster,
        method=cfg.method,
    )


def cluster_fit_on(x: np.ndarray, fit_rows: np.ndarray, cfg: ClusterConfig, seed: int) -> ClusterResult:
    """Fit the clustering on ``fit_rows`` only (the training clips) and assign every row of ``x`` to it.

    Why: held-out clips (validation, reference, prompt) need a cluster — prompts are stratified by it, the oracle
    route and per-cluster scores use it — but they must not shape the clusters the experts train on. A held-out
    row takes the cluster of its nearest fine centroid, as a training row does (``balanced``: its nearest final
    centroid, since balancing moves single rows away from their fine centroid's cluster).

    Args:
        x: float32 [N, D] embeddings of every clip.
        fit_rows: bool [N], the rows the centroids are fitted on.
    """
    fit_rows = np.asarray(fit_rows, dtype=bool)
    if fit_rows.shape != (len(x),) or not fit_rows.any():
        raise ClusterInputError(f"cluster: need a non-empty boolean mask of {len(x)} rows to fit on")
    fitted = cluster_embeddings(np.asarray(x)[fit_rows], cfg, seed)
    xn = validate_embeddings(x)
    fine_labels, _ = _nearest(xn, fitted.fine_centroids)
    if cfg.method == "balanced":
        labels, _ = _nearest(xn, fitted.centroids)
        labels[fit_rows] = fitted.labels
    else:
        labels = fitted.fine_to_cluster[fine_labels]
    fine_labels[fit_rows] = fitted.fine_labels
    distances = np.maximum(1.0 - np.einsum("nd,nd->n", xn, fitted.centroids[labels]), 0.0).astype(np.float32)
    return ClusterResult(
        labels=labels.astype(np.int64),
        distances=distances,
        centroids=fitted.centroids,
        fine_centroids=fitted.fine_centroids,
        fine_labels=fine_labels.astype(np.int64),
        fine_to_cluster=fitted.fine_to_cluster,
        method=cfg.method,
    )

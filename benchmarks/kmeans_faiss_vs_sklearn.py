"""faiss k-means against scikit-learn's KMeans on the same embeddings, same initial centroids, same iterations.

Why: the cluster stage runs k-means with many fine centroids on every clip embedding of a run; this measures
what faiss buys over the scikit-learn baseline at equal clustering quality.

Data: a seeded mixture of anisotropic Gaussian blobs around random directions, L2-normalised (the shape of real
clip embeddings fed to spherical k-means). Both libraries start from the same K rows of the data (seeded) and
run the same number of Lloyd iterations (sklearn: ``algorithm="lloyd"``, ``n_init=1``, ``tol=0``). Inertia is
computed the same way for every row: the sum of squared L2 distances of all N points to their nearest centroid.

Rows:
- ``faiss``: plain L2 k-means on all N points (``max_points_per_centroid`` raised): the like-for-like run.
- ``faiss-sub``: faiss with its default training subsample (at most 256 points per centroid), as a library
  user gets it out of the box; inertia still over all N points.
- ``faiss-sph``: spherical k-means on all points, what ``lib.cluster.kmeans`` runs. Its unit-norm centroids are
  not the L2 optimum of their own clusters (a mean of unit vectors is shorter than 1), so its inertia is that of
  its partition: each cluster's centroid replaced by the mean of its members, then the same inertia as above.
- ``sklearn``: the baseline.

Usage: ``python benchmarks/kmeans_faiss_vs_sklearn.py [--n 200000 --dim 384 --k 256 8 --niter 20]``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import faiss
import numpy as np
from sklearn.cluster import KMeans
from threadpoolctl import threadpool_info

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lib.seeding import derive_seed, numpy_rng  # noqa: E402

NUM_BLOBS = 64
LOW_RANK = 8  # each blob stretches along this many random directions (anisotropy)
FAISS_DEFAULT_MAX_POINTS = 256  # faiss ClusteringParameters.max_points_per_centroid default


def make_embeddings(n: int, dim: int, seed: int) -> np.ndarray:
    """float32 [n, dim] unit rows: NUM_BLOBS anisotropic Gaussian blobs of uneven sizes around random directions."""
    rng = numpy_rng(seed, "bench", "data")
    centers = rng.standard_normal((NUM_BLOBS, dim)).astype(np.float32)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    weights = rng.dirichlet(np.full(NUM_BLOBS, 2.0))
    blob = rng.choice(NUM_BLOBS, size=n, p=weights)
    scales = np.exp(rng.normal(-3.0, 0.5, size=(NUM_BLOBS, dim))).astype(np.float32)  # per-axis noise
    stretch = (rng.standard_normal((NUM_BLOBS, LOW_RANK, dim)) * 0.15 / np.sqrt(dim)).astype(np.float32)
    x = centers[blob] + rng.standard_normal((n, dim)).astype(np.float32) * scales[blob]
    x += np.einsum("nr,nrd->nd", rng.standard_normal((n, LOW_RANK)).astype(np.float32), stretch[blob])
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x, dtype=np.float32)


def inertia(x: np.ndarray, centroids: np.ndarray) -> float:
    """Sum of squared L2 distances of every row of x to its nearest centroid (exact, float64 sum)."""
    index = faiss.IndexFlatL2(x.shape[1])
    index.add(np.ascontiguousarray(centroids, dtype=np.float32))
    dist, _ = index.search(x, 1)
    return float(dist.astype(np.float64).sum())


def partition_means(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Means of the clusters that unit ``centroids`` induce by cosine (an empty cluster keeps its centroid)."""
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(np.ascontiguousarray(centroids, dtype=np.float32))
    labels = index.search(x, 1)[1][:, 0]
    sums = np.zeros(centroids.shape, dtype=np.float64)
    np.add.at(sums, labels, x)
    counts = np.bincount(labels, minlength=len(centroids))[:, None]
    return np.where(counts > 0, sums / np.maximum(counts, 1), centroids).astype(np.float32)


def run_faiss(x: np.ndarray, init: np.ndarray, niter: int, seed: int, full: bool, spherical: bool) -> np.ndarray:
    n, d = x.shape
    k = len(init)
    km = faiss.Kmeans(
        d,
        k,
        niter=niter,
        seed=seed,
        spherical=spherical,
        max_points_per_centroid=n if full else FAISS_DEFAULT_MAX_POINTS,
        min_points_per_centroid=1,
    )
    km.train(x, init_centroids=init.copy())
    return km.centroids


def run_sklearn(x: np.ndarray, init: np.ndarray, niter: int, seed: int) -> np.ndarray:
    km = KMeans(n_clusters=len(init), init=init.copy(), n_init=1, max_iter=niter, tol=0.0, algorithm="lloyd")
    km.set_params(random_state=seed)
    km.fit(x)
    return km.cluster_centers_.astype(np.float32)


def bench_k(x: np.ndarray, k: int, niter: int, seed: int) -> list[tuple[str, float, float]]:
    """(name, seconds, inertia) for every method at this k, all from the same initial centroids."""
    init = x[np.sort(numpy_rng(seed, "bench", "init", k).choice(len(x), size=k, replace=False))].copy()
    faiss_seed = derive_seed(seed, "bench", "faiss", k) % 2**31
    runs = {
        "faiss": lambda: run_faiss(x, init, niter, faiss_seed, full=True, spherical=False),
        "faiss-sub": lambda: run_faiss(x, init, niter, faiss_seed, full=False, spherical=False),
        "faiss-sph": lambda: run_faiss(x, init, niter, faiss_seed, full=True, spherical=True),
        "sklearn": lambda: run_sklearn(x, init, niter, seed),
    }
    rows = []
    for name, fit in runs.items():
        start = time.perf_counter()
        centroids = fit()
        seconds = time.perf_counter() - start
        if name == "faiss-sph":  # untimed: only makes its inertia comparable (see module docstring)
            centroids = partition_means(x, centroids)
        rows.append((name, seconds, inertia(x, centroids)))
    return rows


def main(argv: list[str] | None = None) -> list[dict[str, float | int | str]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=200_000, help="number of embeddings")
    parser.add_argument("--dim", type=int, default=384, help="embedding dimension")
    parser.add_argument("--k", type=int, nargs="+", default=[256, 8], help="cluster counts to benchmark")
    parser.add_argument("--niter", type=int, default=20, help="Lloyd iterations for every method")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.n < max(args.k) or args.dim < 1 or args.niter < 1:
        parser.error(f"need n >= max(k) and positive dim/niter, got n={args.n} k={args.k}")

    blas = ", ".join(f"{p['internal_api']}={p['num_threads']}" for p in threadpool_info())
    print(f"cpus={os.cpu_count()} faiss {faiss.__version__} omp_threads={faiss.omp_get_max_threads()} blas[{blas}]")
    start = time.perf_counter()
    x = make_embeddings(args.n, args.dim, args.seed)
    print(f"data: {args.n} x {args.dim} float32, {NUM_BLOBS} blobs, built in {time.perf_counter() - start:.1f}s")
    print(f"{'k':>5} {'method':>10} {'seconds':>9} {'sk/faiss':>9} {'inertia':>14} {'rel_diff':>9}")
    results = []
    for k in args.k:
        rows = bench_k(x, k, args.niter, args.seed)
        sk_time, sk_inertia = next((t, i) for name, t, i in rows if name == "sklearn")
        for name, seconds, value in rows:
            ratio = sk_time / seconds
            rel = (value - sk_inertia) / sk_inertia
            print(f"{k:>5} {name:>10} {seconds:>9.2f} {ratio:>8.2f}x {value:>14.2f} {rel:>+9.4%}")
            results.append({"k": k, "method": name, "seconds": seconds, "speedup": ratio, "inertia": value})
    return results


if __name__ == "__main__":
    main()

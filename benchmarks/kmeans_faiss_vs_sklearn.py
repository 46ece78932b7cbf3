"""faiss k-means against scikit-learn's KMeans on the same embeddings: out of the box, and like for like.

Why: the cluster stage runs k-means with many fine centroids on every clip embedding of a run; this measures
what our faiss path buys over the scikit-learn baseline a user would otherwise write, at equal clustering quality.

Two tables, speed-ups always against the scikit-learn row of the same table:

1. ``defaults`` — what each side runs out of the box: ``sklearn.cluster.KMeans(n_clusters=k, random_state=seed)``
   (k-means++ init, Lloyd to convergence, tol 1e-4) against ``lib.cluster.kmeans.spherical_kmeans`` (the path
   the cluster stage runs: spherical faiss k-means++, ``cluster.niter`` iterations, centroids fitted on a seeded
   subsample of 256 rows per centroid) and plain ``faiss.Kmeans`` with its defaults. Besides the L2 inertia,
   the ``cos_obj`` column scores every partition by the objective spherical k-means minimises (sum of 1 - cos
   to the unit mean of its cluster): L2 inertia favours the L2 methods, ``cos_obj`` the spherical one.
2. ``like-for-like`` — same initial centroids, same number of Lloyd iterations, every point: the two libraries'
   raw Lloyd speed on this machine (both spend their time in the same BLAS sgemm).

Data: a seeded mixture of anisotropic Gaussian blobs around random directions, L2-normalised (the shape of real
clip embeddings fed to spherical k-means). Both libraries start from the same K rows of the data (seeded) and
run the same number of Lloyd iterations (sklearn: ``algorithm="lloyd"``, ``n_init=1``, ``tol=0``). Inertia is
computed the same way for every row: the sum of squared L2 distances of all N points to their nearest centroid.

Rows of the like-for-like table:
- ``faiss``: plain L2 k-means on all N points (``max_points_per_centroid`` raised): the like-for-like run.
- ``faiss-sub``: faiss with its default training subsample (at most 256 points per centroid), as a library
  user gets it out of the box; inertia still over all N points.
- ``faiss-sph``: spherical k-means on all points. Spherical centroids (here and ``ours`` above) are unit-norm,
  not the L2 optimum of their own clusters (a mean of unit vectors is shorter than 1), so their inertia is that
  of their partition: each cluster's centroid replaced by the mean of its members, then the same inertia.
- ``sklearn``: the baseline.

Usage: ``python benchmarks/kmeans_faiss_vs_sklearn.py [--n 200000 --dim 384 --k 256 8 --niter 20]``.
"""

from __future__ import annotations

import argparse
import os
import time

import faiss
import numpy as np
from sklearn.cluster import KMeans
from threadpoolctl import threadpool_info

from lib.cluster.kmeans import spherical_kmeans
from lib.config import ClusterConfig
from lib.seeding import derive_seed, numpy_rng

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


def _timed(fit) -> tuple[float, np.ndarray]:
    start = time.perf_counter()
    centroids = fit()
    return time.perf_counter() - start, centroids


def cosine_objective(x: np.ndarray, centroids: np.ndarray, spherical: bool) -> float:
    """What spherical k-means minimises, for any partition: sum of (1 - cos) of every row to the unit mean of its
    cluster. The partition is the one the method itself uses (cosine-nearest when ``spherical``, else L2-nearest)."""
    index = faiss.IndexFlatIP(x.shape[1]) if spherical else faiss.IndexFlatL2(x.shape[1])
    index.add(np.ascontiguousarray(centroids, dtype=np.float32))
    labels = index.search(x, 1)[1][:, 0]
    sums = np.zeros(centroids.shape, dtype=np.float64)
    np.add.at(sums, labels, x)
    units = sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)
    return float((1.0 - np.einsum("nd,nd->n", x, units[labels])).sum())


def bench_defaults(x: np.ndarray, k: int, seed: int) -> list[tuple[str, float, float, float]]:
    """(name, seconds, inertia, cosine objective): each library out of the box (module docstring, table 1)."""
    sk_seconds, sk = _timed(lambda: KMeans(n_clusters=k, random_state=seed).fit(x).cluster_centers_)
    ours_seconds, ours = _timed(lambda: spherical_kmeans(x, k, ClusterConfig().niter, seed))
    plain_seconds, plain = _timed(lambda: _faiss_defaults(x, k, seed))
    sk = sk.astype(np.float32)
    return [
        ("ours", ours_seconds, inertia(x, partition_means(x, ours)), cosine_objective(x, ours, spherical=True)),
        ("faiss", plain_seconds, inertia(x, plain), cosine_objective(x, plain, spherical=False)),
        ("sklearn", sk_seconds, inertia(x, sk), cosine_objective(x, sk, spherical=False)),
    ]


def _faiss_defaults(x: np.ndarray, k: int, seed: int) -> np.ndarray:
    km = faiss.Kmeans(x.shape[1], k, seed=derive_seed(seed, "bench", "faiss", k) % 2**31)
    km.train(x)
    return km.centroids


def bench_k(x: np.ndarray, k: int, niter: int, seed: int) -> list[tuple[str, float, float, float]]:
    """(name, seconds, inertia, nan) for every method at this k, all from the same initial centroids."""
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
        seconds, centroids = _timed(fit)
        if name == "faiss-sph":  # untimed: only makes its inertia comparable (see module docstring)
            centroids = partition_means(x, centroids)
        rows.append((name, seconds, inertia(x, centroids), float("nan")))
    return rows


def main(argv: list[str] | None = None) -> list[dict[str, float | int | str]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=200_000, help="number of embeddings")
    parser.add_argument("--dim", type=int, default=384, help="embedding dimension")
    parser.add_argument("--k", type=int, nargs="+", default=[256, 8], help="cluster counts to benchmark")
    parser.add_argument("--niter", type=int, default=20, help="Lloyd iterations of the like-for-like table")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.n < max(args.k) or args.dim < 1 or args.niter < 1:
        parser.error(f"need n >= max(k) and positive dim/niter, got n={args.n} k={args.k}")

    blas = ", ".join(f"{p['internal_api']}={p['num_threads']}" for p in threadpool_info())
    print(f"cpus={os.cpu_count()} faiss {faiss.__version__} omp_threads={faiss.omp_get_max_threads()} blas[{blas}]")
    start = time.perf_counter()
    x = make_embeddings(args.n, args.dim, args.seed)
    print(f"data: {args.n} x {args.dim} float32, {NUM_BLOBS} blobs, built in {time.perf_counter() - start:.1f}s")
    header = ("table", "k", "method", "seconds", "sk/this", "inertia", "vs_sk", "cos_obj")
    print(" ".join(f"{h:>{w}}" for h, w in zip(header, (13, 5, 10, 8, 8, 11, 8, 9), strict=True)))
    results = []
    for k in args.k:
        tables = {"defaults": bench_defaults(x, k, args.seed), "like-for-like": bench_k(x, k, args.niter, args.seed)}
        for table, rows in tables.items():
            sk_time, sk_inertia = next((t, i) for name, t, i, _ in rows if name == "sklearn")
            for name, seconds, value, cos in rows:
                ratio, rel = sk_time / seconds, (value - sk_inertia) / sk_inertia
                print(f"{table:>13} {k:>5} {name:>10} {seconds:>8.2f} {ratio:>7.2f}x", end=" ")
                print(f"{value:>11.1f} {rel:>+8.3%} {cos:>9.1f}")
                results.append(
                    {"table": table, "k": k, "method": name, "seconds": seconds, "speedup": ratio, "inertia": value,
                     "cosine_objective": cos}
                )  # fmt: skip
    return results


if __name__ == "__main__":
    main()

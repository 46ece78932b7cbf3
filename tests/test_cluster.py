import json
import logging

import faiss
import numpy as np
import pandas as pd
import pandera.errors
import pytest
from sklearn.metrics import adjusted_mutual_info_score

from data_schemas.cluster import ClusterAMI, ClusterAssignment, ClusterSummary
from lib.cluster.kmeans import ClusterInputError, assign, cluster_embeddings, cluster_fit_on
from lib.cluster.report import assignment_frame, balance, cluster_report
from lib.config import ClusterConfig, ConfigError


def blobs(sizes, dim=16, spread=0.05, seed=0):
    """Unit-norm clusters around random directions: float32 [N, dim] and the true labels."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((len(sizes), dim))
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    y = np.repeat(np.arange(len(sizes)), sizes)
    x = centers[y] + spread * rng.standard_normal((len(y), dim))
    return x.astype(np.float32), y


def unit(v):
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_same_seed_same_result_for_any_thread_count():
    x, _ = blobs([150, 100, 80, 60], spread=0.6)
    cfg = ClusterConfig(num_clusters=3, fine_clusters=16)
    a = cluster_embeddings(x, cfg, seed=3)
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        b = cluster_embeddings(x, cfg, seed=3)
    finally:
        faiss.omp_set_num_threads(threads)
    for name in ("labels", "distances", "centroids", "fine_centroids", "fine_labels", "fine_to_cluster"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    other = cluster_embeddings(x, cfg, seed=4)
    assert not np.array_equal(a.fine_centroids, other.fine_centroids)


def test_two_stage_assigns_through_nearest_fine_centroid():
    x, _ = blobs([120, 90, 60, 50, 40, 40], spread=0.7, seed=1)
    r = cluster_embeddings(x, ClusterConfig(num_clusters=3, fine_clusters=24), seed=0)
    xn = unit(x.astype(np.float64))
    assert r.fine_centroids.shape == (24, 16) and r.fine_to_cluster.shape == (24,)
    nearest = np.argmax(xn @ r.fine_centroids.T, axis=1)
    assert np.array_equal(r.fine_labels, nearest)
    assert np.array_equal(r.labels, r.fine_to_cluster[nearest])
    assert set(r.fine_to_cluster) == {0, 1, 2} and r.labels.dtype == np.int64
    # final centroids: normalised member means; distances: cosine distance to them
    for c in range(3):
        assert np.allclose(r.centroids[c], unit(xn[r.labels == c].mean(0, keepdims=True))[0], atol=1e-5)
    assert np.allclose(r.distances, 1 - np.sum(xn * r.centroids[r.labels], axis=1), atol=1e-5)
    assert r.distances.dtype == np.float32 and r.distances.min() >= 0
    assert np.allclose(np.linalg.norm(r.centroids, axis=1), 1, atol=1e-5)


@pytest.mark.parametrize("method", ["two_stage", "kmeans"])
def test_separated_blobs_are_recovered(method):
    x, y = blobs([200, 150, 100, 60, 40])
    r = cluster_embeddings(x, ClusterConfig(num_clusters=5, fine_clusters=40, method=method), seed=0)
    assert adjusted_mutual_info_score(y, r.labels) > 0.999
    assert sorted(r.sizes().tolist()) == [40, 60, 100, 150, 200]


def test_balanced_sizes_on_imbalanced_blobs():
    x, y = blobs([400, 100, 40, 23])
    r = cluster_embeddings(x, ClusterConfig(num_clusters=4, fine_clusters=32, method="balanced"), seed=0)
    sizes = r.sizes()
    assert sizes.sum() == 563 and sizes.max() - sizes.min() <= 1
    plain = cluster_embeddings(x, ClusterConfig(num_clusters=4, fine_clusters=32), seed=0)
    assert plain.sizes().max() == 400  # the imbalance balancing removes
    # the small blobs keep their own clusters: balancing only moves members of the big blob
    for blob in (1, 2, 3):
        assert len(np.unique(r.labels[y == blob])) == 1


def test_fine_clusters_are_lowered_for_small_inputs(caplog):
    x, _ = blobs([20, 20])
    with caplog.at_level(logging.WARNING, logger="lib.cluster.kmeans"):
        r = cluster_embeddings(x, ClusterConfig(num_clusters=2, fine_clusters=32), seed=0)
    assert len(r.fine_centroids) == 10  # 40 samples // 4 per fine centroid
    assert "cluster.fine_clusters=32 lowered to 10 for 40 samples" in caplog.text


def _with_row(x, i, value):
    x = x.copy()
    x[i] = value
    return x


GOOD, _ = blobs([10, 10])


@pytest.mark.parametrize(
    "x, message",
    [
        (GOOD[:3], r"3 clips but K=8"),
        (_with_row(GOOD, 4, np.nan), r"NaN/inf in 1 row\(s\): 4"),
        (_with_row(_with_row(GOOD, 2, np.inf), 7, -np.inf), r"NaN/inf in 2 row\(s\): 2, 7"),
        (_with_row(GOOD, 5, 0.0), r"zero vectors \(cannot normalise for cosine\) in 1 row\(s\): 5"),
        (GOOD.astype(np.float64), r"must be float32, got float64"),
        (GOOD[:, 0], r"2-D array \[N, D\], got shape \(20,\)"),
        (GOOD.tolist(), r"must be a numpy array, got list"),
        (np.tile(GOOD[:1], (20, 1)), r"only 1 distinct embedding direction\(s\) among 20 clips but K=8"),
        (np.concatenate([GOOD[:5], 3 * GOOD[:5]] * 2), r"only 5 distinct .* among 20 clips but K=8"),
    ],
    ids=["too_few", "nan", "inf", "zero", "float64", "1d", "list", "duplicates", "scaled_duplicates"],
)
def test_degenerate_input_is_refused_with_reason(x, message):
    with pytest.raises(ClusterInputError, match=message):
        cluster_embeddings(x, ClusterConfig(num_clusters=8, fine_clusters=8), seed=0)


def test_assign_new_points_to_centroids():
    x, y = blobs([50, 50, 50])
    r = cluster_embeddings(x, ClusterConfig(num_clusters=3, fine_clusters=12), seed=0)
    new, new_y = blobs([5, 5, 5], seed=0)  # same centres, fresh noise
    labels, dist = assign(new * 7.0, r.centroids)
    mapping = {t: r.labels[y == t][0] for t in range(3)}
    assert labels.tolist() == [mapping[t] for t in new_y]
    assert dist.dtype == np.float32 and (dist >= 0).all() and dist.max() < 0.05
    with pytest.raises(ClusterInputError, match=r"centroids must be \[K, 16\]"):
        assign(new, r.centroids[:, :8])


def test_balance_rounds_config_is_validated():
    with pytest.raises(ConfigError, match="cluster.balance_rounds: must be > 0"):
        ClusterConfig(balance_rounds=0)


def test_report_values_plot_and_html(tmp_path):
    x, y = blobs([120, 80, 50], spread=0.1)
    r = cluster_embeddings(x, ClusterConfig(num_clusters=3, fine_clusters=12), seed=0)
    captions = [f"clip {i} of blob {t}" for i, t in enumerate(y)]
    attrs = pd.DataFrame(
        {"clip_id": [f"c{i}" for i in range(len(y))], "blob": y, "noise": np.random.default_rng(0).integers(0, 3, 250)}
    )
    rep = cluster_report(x, r, captions, attrs, seed=0, silhouette_sample=100, plot_path=tmp_path / "p" / "proj.png")
    assert rep.silhouette_n == 100 and 0.5 < rep.silhouette <= 1.0
    assert set(rep.ami) == {"blob", "noise"}
    assert rep.ami["blob"] > 0.99 and abs(rep.ami["noise"]) < 0.05
    assert sorted(rep.sizes) == [50, 80, 120]
    assert rep.size_ratio == pytest.approx(120 / 50)
    for c, examples in rep.examples.items():
        assert len(examples) == 5 and all(f"of blob {y[r.labels == c][0]}" in e for e in examples)
    png = rep.plot_path.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000
    summary = rep.summary_frame()
    ClusterSummary.validate(summary)
    assert summary["size"].tolist() == rep.sizes and summary["fraction"].sum() == pytest.approx(1.0)
    page = rep.to_html()
    assert '<table class="cluster-sizes">' in page and '<table class="cluster-ami">' in page
    assert page.index("<td>blob</td>") < page.index("<td>noise</td>"), "highest AMI first"
    ami = rep.ami_frame()
    ClusterAMI.validate(ami)
    assert ami["attribute"].tolist() == ["blob", "noise"] and ami["ami"].tolist() == [rep.ami["blob"], rep.ami["noise"]]
    assert "data:image/png;base64,iVBORw0KGgo" in page  # base64 of the PNG signature
    assert "clip 0 of blob 0" in page or any(e in page for e in rep.examples[r.labels[0]])


def test_report_escapes_captions_and_handles_single_cluster(tmp_path):
    x, _ = blobs([30])
    r = cluster_embeddings(x, ClusterConfig(num_clusters=1, fine_clusters=4), seed=0)
    rep = cluster_report(x, r, ["<b>x</b>"] * 30, None, seed=0, silhouette_sample=50, plot_path=tmp_path / "p.png")
    assert np.isnan(rep.silhouette) and rep.ami == {} and rep.size_entropy == 1.0
    assert rep.ami_frame().empty and "cluster-ami" not in rep.to_html()
    assert "&lt;b&gt;x&lt;/b&gt;" in rep.to_html() and "<b>x</b>" not in rep.to_html()
    with pytest.raises(ValueError, match="30 embeddings but 30 labels and 2 captions"):
        cluster_report(x, r, ["a", "b"], None, seed=0, silhouette_sample=50, plot_path=tmp_path / "q.png")


def test_balance_numbers():
    assert balance(np.array([10, 10, 10])) == (1.0, pytest.approx(1.0))
    ratio, entropy = balance(np.array([90, 5, 5]))
    assert ratio == 18.0 and 0.3 < entropy < 0.4
    assert balance(np.array([4, 0]))[0] == float("inf")


def test_assignment_frame_schema():
    x, _ = blobs([10, 10])
    r = cluster_embeddings(x, ClusterConfig(num_clusters=2, fine_clusters=4), seed=0)
    frame = assignment_frame([f"clip-{i}" for i in range(20)], r, ["train"] * 19 + ["prompt"])
    assert frame["cluster_id"].tolist() == r.labels.tolist()
    assert frame["role"].tolist() == ["train"] * 19 + ["prompt"]
    assert frame["fine_cluster"].tolist() == r.fine_labels.tolist()
    with pytest.raises(pandera.errors.SchemaError, match="clip_id"):
        assignment_frame(["same"] * 20, r, ["train"] * 20)
    with pytest.raises(pandera.errors.SchemaError, match="role"):
        assignment_frame([f"clip-{i}" for i in range(20)], r, ["test"] * 20)
    with pytest.raises(pandera.errors.SchemaError):
        ClusterAssignment.validate(frame.assign(distance=-frame["distance"] - 1))
    with pytest.raises((pandera.errors.SchemaError, pandera.errors.SchemaErrors), match="extra"):
        ClusterAssignment.validate(frame.assign(extra=1))
    with pytest.raises(ValueError, match="3 clip ids for 20 cluster labels"):
        assignment_frame(["a", "b", "c"], r, ["train"] * 3)


@pytest.mark.parametrize("method", ["two_stage", "balanced"])
def test_clusters_are_fitted_on_train_rows_and_held_out_rows_are_assigned(method):
    """Held-out clips get a cluster but do not move the centroids: the fit equals a fit on the train rows alone."""
    x, truth = blobs([30, 30, 30])
    fit = np.arange(90) % 3 != 0  # every third row is held out
    cfg = ClusterConfig(num_clusters=3, fine_clusters=12, method=method)
    r = cluster_fit_on(x, fit, cfg, seed=0)
    alone = cluster_embeddings(x[fit], cfg, seed=0)
    np.testing.assert_array_equal(r.centroids, alone.centroids)
    np.testing.assert_array_equal(r.labels[fit], alone.labels)
    assert r.labels.shape == (90,) and r.distances.shape == (90,) and (r.distances >= 0).all()
    assert adjusted_mutual_info_score(truth[~fit], r.labels[~fit]) == pytest.approx(1.0)  # held-out rows land right
    with pytest.raises(ClusterInputError, match="non-empty boolean mask"):
        cluster_fit_on(x, np.zeros(90, bool), cfg, seed=0)


def test_benchmark_smoke(capsys, benchmark_script):
    bench = benchmark_script("kmeans_faiss_vs_sklearn")
    rows = bench.main(["--n", "3000", "--dim", "16", "--k", "16", "--niter", "5"])
    like = {row["method"]: row for row in rows if row["table"] == "like-for-like"}
    defaults = {row["method"]: row for row in rows if row["table"] == "defaults"}
    assert set(like) == {"faiss", "faiss-sub", "faiss-sph", "sklearn"}
    assert set(defaults) == {"ours", "faiss", "sklearn"}
    # same data, same initial centroids, same Lloyd iterations: same inertia
    assert like["faiss"]["inertia"] == pytest.approx(like["sklearn"]["inertia"], rel=1e-3)
    # out of the box, every method reaches a partition of about the converged scikit-learn quality
    for row in defaults.values():
        assert row["inertia"] == pytest.approx(defaults["sklearn"]["inertia"], rel=0.05)
    assert "sk/this" in capsys.readouterr().out


def test_empty_cluster_is_an_error_not_a_silent_expert_without_data(monkeypatch):
    import lib.cluster.kmeans as km

    x, y = blobs([30, 30, 30])
    x[:, 8:] = 0  # data lives in the first 8 dims; two fine centroids point elsewhere and attract no sample
    centres = unit(np.stack([x[y == t].mean(0) for t in range(3)]))
    fine = np.concatenate([centres, np.eye(16)[[15, 14]]]).astype(np.float32)
    monkeypatch.setattr(km, "spherical_kmeans", lambda xn, k, niter, seed, stage: fine)
    monkeypatch.setattr(km, "_merge_fine", lambda fine, k: np.array([0, 0, 0, 1, 2]))
    with pytest.raises(ClusterInputError, match=r"left cluster\(s\) \[1, 2\] of K=3 empty"):
        cluster_embeddings(x, ClusterConfig(num_clusters=3, fine_clusters=12), seed=0)
    balanced = cluster_embeddings(x, ClusterConfig(num_clusters=3, fine_clusters=12, method="balanced"), seed=0)
    assert balanced.sizes().tolist() == [30, 30, 30]


def test_cluster_ami_measures_one_run_per_varied_value(tmp_path, benchmark_script):
    out = tmp_path / "distinctness.json"
    benchmark_script("cluster_ami").main([
        "--config", "configs/tiny.yaml", "--num-clips", "120", "--ks", "8", "--seeds", "0",
        "--set", "data.num_families=8", "data.scenes=[]", "--vary", "data.family_overlap=1,0", "--out", str(out),
    ])  # fmt: skip
    result = json.loads(out.read_text())
    assert result["vary"] == "data.family_overlap" and result["set"] == ["data.num_families=8", "data.scenes=[]"]
    shared, disjoint = result["runs"]
    assert (shared["family_overlap"], disjoint["family_overlap"], disjoint["num_families"]) == (1.0, 0.0, 8)
    assert disjoint["family_ami"]["shape"] == pytest.approx(1.0) and shared["family_ami"]["shape"] < 0.2
    assert {r["k"] for r in disjoint["rows"]} == {8} and len(disjoint["mean_over_seeds"]) == 3

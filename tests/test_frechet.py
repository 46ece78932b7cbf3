import hashlib

import numpy as np
import pytest
import scipy.linalg
import torch
from torch import nn

from lib.evaluate.frechet import (
    FrechetVideoDistance,
    fd_from_stats,
    frechet_distance,
    load_stats,
    save_stats,
    stats_from_features,
)
from lib.evaluate.i3d import I3D_FRAMES, I3DFeatures, fit_frames
from lib.features.batch import FeatureError


def _fd(x, y):
    return fd_from_stats(stats_from_features(x), stats_from_features(y))


def _gauss(seed, n=400, d=6):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(d, d))
    return rng.normal(size=(n, d)) @ a + rng.normal(size=d)


class LookupFeatures(nn.Module):
    """Returns row i of a fixed table for a video whose first two pixels encode i: pushes any features through
    the torchmetrics path, which only ever sees videos."""

    def __init__(self, table: np.ndarray) -> None:
        super().__init__()
        self.table = torch.from_numpy(table)
        self.num_features = table.shape[1]

    def forward(self, videos: torch.Tensor) -> torch.Tensor:
        idx = videos[:, 0, 0, 0, 0].long() * 256 + videos[:, 0, 0, 0, 1].long()
        return self.table[idx]


def _index_videos(indices, t=2, h=2, w=2):
    v = np.zeros((len(indices), t, h, w, 3), dtype=np.uint8)
    v[:, 0, 0, 0, 0] = np.asarray(indices) // 256
    v[:, 0, 0, 0, 1] = np.asarray(indices) % 256
    return v


def test_closed_forms_self_shift_scale():
    x, y = _gauss(0), _gauss(1)
    assert abs(_fd(x, x)) < 1e-9
    v = np.array([1.0, -2.0, 0.5, 3.0, 0.0, 1.5])
    assert _fd(x, x + v) == pytest.approx(float(v @ v), rel=1e-9)
    base = _fd(x, y)
    assert base > 1.0
    assert _fd(3.0 * x, 3.0 * y) == pytest.approx(9.0 * base, rel=1e-9)


def test_commuting_covariances_closed_form():
    rng = np.random.default_rng(0)
    lam1, lam2 = rng.uniform(0.1, 4.0, 8), rng.uniform(0.1, 4.0, 8)
    mu1, mu2 = rng.normal(size=8), rng.normal(size=8)
    want = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(lam1) - np.sqrt(lam2)) ** 2)
    assert frechet_distance(mu1, np.diag(lam1), mu2, np.diag(lam2)) == pytest.approx(want, rel=1e-12)


def test_matches_scipy_sqrtm():
    s1, s2 = stats_from_features(_gauss(2, d=32, n=300)), stats_from_features(_gauss(3, d=32, n=300))
    root = scipy.linalg.sqrtm(s1.sigma @ s2.sigma).real
    want = np.sum((s1.mu - s2.mu) ** 2) + np.trace(s1.sigma + s2.sigma - 2 * root)
    assert fd_from_stats(s1, s2) == pytest.approx(want, rel=1e-6)


def test_shape_mismatch_is_refused():
    with pytest.raises(FeatureError, match="shapes differ"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
    with pytest.raises(FeatureError, match="at least 2 samples"):
        stats_from_features(np.zeros((1, 3)))


def test_torchmetrics_path_agrees_with_formula_and_stats_round_trip(tmp_path):
    real, fake = _gauss(4, n=300), _gauss(5, n=200)
    table = np.concatenate([real, fake]).astype(np.float32)
    metric = FrechetVideoDistance(LookupFeatures(table), "fd_test", batch_size=64)
    metric.update(_index_videos(range(300)), real=True)
    metric.update(_index_videos(range(300, 500)), real=False)
    got = metric.compute()
    want = _fd(real.astype(np.float32), fake.astype(np.float32))  # the extractor emits float32 features
    assert got == pytest.approx(want, rel=1e-9)
    assert float(metric.metric.compute()) == pytest.approx(got, rel=1e-6)  # torchmetrics' own eigvals formula

    path = save_stats(tmp_path / "real.safetensors", metric.real_stats(), "lookup-1")
    stored = load_stats(path, "lookup-1")
    assert stored.mu.dtype == np.float64 and stored.n == 300
    fresh = FrechetVideoDistance(LookupFeatures(table), "fd_test")
    fresh.load_real_stats(stored)
    fresh.update(_index_videos(range(300, 500)), real=False)
    assert fresh.compute() == pytest.approx(got, rel=1e-9)
    with pytest.raises(FeatureError, match="lookup-1"):
        load_stats(path, "other-extractor")


def test_float64_accumulation_survives_feature_means_in_the_thousands():
    rng = np.random.default_rng(6)
    n = 4000
    real = 2000.0 + rng.normal(size=(n, 4))
    fake = 2000.0 + 0.3 + 1.5 * rng.normal(size=(n, 4))
    truth = _fd(real - 2000.0, fake - 2000.0)  # FD is invariant to a common shift; centred data is exact
    metric = FrechetVideoDistance(LookupFeatures(np.concatenate([real, fake])), "fd_test", batch_size=100)
    metric.update(_index_videos(range(n)), real=True)
    metric.update(_index_videos(range(n, 2 * n)), real=False)
    assert metric.compute() == pytest.approx(truth, rel=1e-6)

    # The same streaming sums kept in float32 (as a float32 metric state would) lose the covariance.
    def stats32(x):
        total, outer = torch.zeros(4), torch.zeros(4, 4)
        for chunk in torch.from_numpy(x).float().split(100):
            total += chunk.sum(0)
            outer += chunk.t() @ chunk
        mu = total / n
        cov = (outer - n * torch.outer(mu, mu)) / (n - 1)
        return mu.double().numpy(), ((cov + cov.t()) / 2).double().numpy()

    (m1, c1), (m2, c2) = stats32(real), stats32(fake)
    assert abs(frechet_distance(m1, c1, m2, c2) - truth) / truth > 0.1


class TinyI3D(nn.Module):
    """Same call signature as the StyleGAN-V I3D TorchScript; refuses any other protocol."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(3, 398)

    def forward(self, x: torch.Tensor, rescale: bool = False, resize: bool = False, return_features: bool = False):
        if not (rescale and resize and return_features):
            raise RuntimeError("expected rescale=True, resize=True, return_features=True")
        x = x / 127.5 - 1.0
        b = x.shape[0]
        frames = torch.full([b, 1], float(x.shape[2]), dtype=x.dtype)
        peak = x.amax(dim=(1, 2, 3, 4)).unsqueeze(1)
        return torch.cat([frames, peak, self.proj(x.mean(dim=(2, 3, 4)))], dim=1)


@pytest.fixture
def i3d_file(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "i3d_torchscript.pt"
    torch.jit.script(TinyI3D().double().eval()).save(str(path))
    return path


def _videos(seed, n, t):
    return np.random.default_rng(seed).integers(0, 256, size=(n, t, 8, 8, 3), dtype=np.uint8)


def test_i3d_protocol_padding_dtype_and_provenance(i3d_file):
    ext = I3DFeatures(i3d_file)
    assert ext.num_features == 400 and ext.dtype == torch.float64  # input cast to the weights' dtype
    short = _videos(0, 3, 5)
    feats = ext(torch.from_numpy(short))
    assert feats.shape == (3, 400)
    assert torch.all(feats[:, 0] == I3D_FRAMES)  # the network always sees 16 frames
    assert torch.all(feats[:, 1] <= 1.0)  # [0, 255] input rescaled by the network itself
    padded = np.concatenate([short, np.repeat(short[:, -1:], I3D_FRAMES - 5, axis=1)], axis=1)
    assert torch.equal(feats, ext(torch.from_numpy(padded)))
    long = _videos(1, 2, 20)
    assert torch.equal(ext(torch.from_numpy(long)), ext(torch.from_numpy(long[:, :16].copy())))
    assert fit_frames(torch.from_numpy(short)).shape[1] == I3D_FRAMES

    prov = ext.provenance(n_real=10, n_generated=6, frames=5, height=8, width=8)
    assert prov["i3d_sha256"] == hashlib.sha256(i3d_file.read_bytes()).hexdigest()
    assert ext.extractor_id == f"i3d-{prov['i3d_sha256'][:12]}"
    assert prov["n_real"] == 10 and prov["source_resolution"] == "8x8" and "repeating the last frame" in str(prov)


def test_i3d_through_torchmetrics_with_5d_batches(i3d_file):
    ext = I3DFeatures(i3d_file)
    real, fake = _videos(2, 12, 8), _videos(3, 12, 8)
    fvd = FrechetVideoDistance(ext, "fvd_i3d", batch_size=5)
    fvd.update(real, real=True)
    fvd.update(real, real=False)
    assert abs(fvd.compute()) < 1e-6
    fvd.reset_generated()
    fvd.update(fake, real=False)
    feats = lambda v: ext(torch.from_numpy(v)).double().numpy()  # noqa: E731
    assert fvd.compute() == pytest.approx(_fd(feats(real), feats(fake)), rel=1e-6)


def test_i3d_missing_or_invalid_file(tmp_path):
    with pytest.raises(FeatureError, match="not found"):
        I3DFeatures(tmp_path / "nope.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a torchscript archive")
    with pytest.raises(FeatureError, match="not a loadable TorchScript"):
        I3DFeatures(bad)

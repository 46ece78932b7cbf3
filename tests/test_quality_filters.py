"""Quality scores as filters: motion and aesthetic scores, FilteredClip rows, histograms in the cluster report."""

import numpy as np
import pandas as pd
import pytest
import torch

from data_schemas.ingest import FilteredClip
from lib.cluster.kmeans import cluster_embeddings
from lib.cluster.report import cluster_report
from lib.config import ClusterConfig, DataConfig
from lib.data.filters import motion_score
from lib.data.ingest import ingest
from lib.data.video import write_mp4
from lib.features.aesthetic import AestheticError, AestheticScorer, load_aesthetic_head
from tests.test_clip_score import clip_dir  # noqa: F401  (the tiny CLIP folder fixture)


def _texture(seed=0, h=32, w=96):
    """A smooth random texture: Farneback needs gradients at every scale of its pyramid."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (h // 4, w // 4, 3)).astype(np.float32)
    return np.kron(coarse, np.ones((4, 4, 1))).astype(np.uint8)


def _panning(speed, frames=8, size=32):
    tex = _texture()
    return np.stack([tex[:, i * speed : i * speed + size] for i in range(frames)])


def test_motion_score_is_flow_in_pixels_per_frame():
    assert motion_score(_panning(0)) == pytest.approx(0.0, abs=0.05)
    for speed in (1, 2, 4):  # up to ~4 px/frame at 32 px (the pyramid's reach); faster motion is underestimated
        assert motion_score(_panning(speed)) == pytest.approx(speed, rel=0.1)
    assert motion_score(_panning(0, frames=1)) == 0.0


def test_filtered_clips_are_listed_with_scores_and_rule_never_dropped(tmp_path):
    write_mp4(tmp_path / "still.mp4", _panning(0), fps=8)
    write_mp4(tmp_path / "pan.mp4", _panning(2), fps=8)
    write_mp4(tmp_path / "fast.mp4", _panning(4), fps=8)
    (tmp_path / "m.csv").write_text("path,caption,clip_id\nstill.mp4,still,s\npan.mp4,pan,p\nfast.mp4,fast,f\n")
    cfg = DataConfig(source="manifest", manifest=str(tmp_path / "m.csv"), frames=8, height=32, width=32,
                     min_motion=0.5, max_motion=3.0)  # fmt: skip
    result = ingest(cfg, seed=0, out_dir=tmp_path / "out")
    filtered = FilteredClip.validate(result.filtered)
    assert dict(zip(filtered["clip_id"], filtered["rule"], strict=True)) == {"s": "min_motion", "f": "max_motion"}
    by_id = filtered.set_index("clip_id")
    assert by_id.loc["s", "motion"] < 0.5 and by_id.loc["f", "motion"] > 3.0
    assert "data.min_motion 0.5" in by_id.loc["s", "detail"] and "data.max_motion 3" in by_id.loc["f", "detail"]
    assert list(result.index["clip_id"]) == ["p"] and result.index["aesthetic"].isna().all()
    assert "2 filtered (max_motion: 1, min_motion: 1)" in result.summary()


def _save_head(path, layers):
    """A LAION-style head: Linear layers at ``layers.{0,2,...}`` (dropout between them holds no weights)."""
    torch.manual_seed(1)
    state = {}
    for i, (n_in, n_out) in enumerate(layers):
        state[f"layers.{2 * i}.weight"] = torch.randn(n_out, n_in)
        state[f"layers.{2 * i}.bias"] = torch.randn(n_out)
    torch.save(state, path)
    return state


def test_aesthetic_head_scores_the_middle_frame_clip_embedding(tmp_path, clip_dir):  # noqa: F811
    state = _save_head(tmp_path / "head.pth", [(16, 8), (8, 1)])  # the tiny CLIP projects to 16-d
    scorer = AestheticScorer(tmp_path / "head.pth", clip_dir)
    clip = np.random.default_rng(0).integers(0, 256, (5, 24, 24, 3), dtype=np.uint8)
    emb = scorer.clip.image_embeddings(torch.from_numpy(clip[2:3]))  # the middle frame, unit norm
    expected = (emb @ state["layers.0.weight"].T + state["layers.0.bias"]) @ state["layers.2.weight"].T
    assert scorer.score(clip) == pytest.approx(float(expected + state["layers.2.bias"]), rel=1e-5)
    assert len(load_aesthetic_head(tmp_path / "head.pth")) == 2


def test_aesthetic_head_errors_name_the_file(tmp_path, clip_dir):  # noqa: F811
    _save_head(tmp_path / "vitl.pth", [(768, 1)])
    with pytest.raises(AestheticError, match=r"vitl.pth: the head takes 768-d embeddings but the CLIP .* gives 16-d"):
        AestheticScorer(tmp_path / "vitl.pth", clip_dir)
    _save_head(tmp_path / "two.pth", [(16, 2)])
    with pytest.raises(AestheticError, match=r"two.pth: the last layer gives 2 outputs"):
        load_aesthetic_head(tmp_path / "two.pth")
    with pytest.raises(AestheticError, match=r"nothere.pth: no such file"):
        load_aesthetic_head(tmp_path / "nothere.pth")


def test_cluster_report_shows_score_histograms_when_clips_carry_scores(tmp_path):
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 1, (20, 4)) + 5 * np.eye(4)[i % 2] for i in range(2)]).astype(np.float32)
    r = cluster_embeddings(x, ClusterConfig(num_clusters=2, fine_clusters=4), seed=0)
    scores = pd.DataFrame({"motion": rng.uniform(0, 3, 40), "aesthetic": np.nan})
    rep = cluster_report(x, r, ["c"] * 40, None, 0, 40, tmp_path / "proj.png", scores)
    assert rep.score_plot_path == tmp_path / "scores.png" and rep.score_plot_path.is_file()
    assert 'alt="quality scores per cluster"' in rep.to_html()
    plain = cluster_report(x, r, ["c"] * 40, None, 0, 40, tmp_path / "b" / "proj.png", pd.DataFrame(index=range(40)))
    assert plain.score_plot_path is None and "quality scores" not in plain.to_html()

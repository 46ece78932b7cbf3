import json

import numpy as np
import pytest
import torch
import transformers
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_mutual_info_score

from lib.cluster.embedders import ImageTower, compute_embeddings
from lib.config import ClusterConfig, ConfigError, DataConfig
from lib.data.ingest import ingest_builtin
from lib.data.shards import load_clips
from lib.features.visual_stats import VISUAL_GROUPS, EmbedderError, standardise_groups, visual_stats_features

DIM = sum(VISUAL_GROUPS.values())


@pytest.fixture(scope="module", autouse=True)
def hub_offline():
    """Model loading must never reach the hub: offline mode (read by huggingface_hub at call time) on top of
    ``local_files_only=True`` in lib."""
    import huggingface_hub.constants

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
        yield


@pytest.fixture(scope="module")
def builtin200(tmp_path_factory):
    shards = tmp_path_factory.mktemp("clips200")
    result = ingest_builtin(DataConfig(num_clips=200, frames=8, height=32, width=32, shard_size=64), 0, shards)
    return shards, result.index, result.attributes


def _moving_square(direction: str, t: int = 6, size: int = 32) -> np.ndarray:
    """A white 6x6 square on black moving 2 px per frame (or growing), uint8 [T, H, W, 3]."""
    video = np.zeros((t, size, size, 3), np.uint8)
    for f in range(t):
        y, x, half = 13, 13, 3
        if direction == "right":
            x = 6 + 2 * f
        elif direction == "down":
            y = 6 + 2 * f
        elif direction == "grow":
            half = 2 + f
        video[f, y - half : y + half, x - half : x + half] = 255
    return video


def _group(features: np.ndarray, name: str) -> np.ndarray:
    offsets = np.cumsum([0, *VISUAL_GROUPS.values()])
    start = offsets[list(VISUAL_GROUPS).index(name)]
    return features[:, start : start + VISUAL_GROUPS[name]]


def test_visual_stats_values_on_known_clips():
    flat = np.broadcast_to(np.array([200, 100, 0], np.uint8), (4, 16, 16, 3))
    clips = np.ascontiguousarray(flat[None])
    feats = visual_stats_features(clips)
    assert feats.shape == (1, DIM) and feats.dtype == np.float32
    np.testing.assert_allclose(_group(feats, "colour")[0], [200 / 255, 100 / 255, 0, 0, 0, 0], atol=1e-6)
    hist = _group(feats, "histogram")[0] ** 2  # stored square-rooted
    assert hist.sum() == pytest.approx(1.0) and hist[(3 * 4 + 1) * 4 + 0] == pytest.approx(1.0)
    np.testing.assert_allclose(_group(feats, "layout")[0].reshape(16, 3), np.tile([200 / 255, 100 / 255, 0], (16, 1)))
    assert not _group(feats, "texture").any() and not _group(feats, "motion").any()

    moving = visual_stats_features(np.stack([_moving_square(d) for d in ("right", "down", "grow")]))
    motion = _group(moving, "motion")  # [amount, centroid step x, centroid step y, spread step]
    assert (motion[:, 0] > 0).all()
    assert motion[0, 1] == pytest.approx(2 / 32, abs=1e-3) and abs(motion[0, 2]) < 1e-6  # right: +2 px / frame
    assert motion[1, 2] == pytest.approx(2 / 32, abs=1e-3) and abs(motion[1, 1]) < 1e-6  # down
    assert motion[2, 3] > 0 and abs(motion[2, 1]) < 1e-6  # growing: spread increases, centre stays
    with pytest.raises(EmbedderError, match="uint8"):
        visual_stats_features(clips.astype(np.float32))


def test_standardise_groups_gives_equal_group_weight():
    rng = np.random.default_rng(0)
    raw = rng.normal(size=(500, DIM)) * rng.uniform(0.01, 100, DIM)
    z, fitted = standardise_groups(raw)
    offsets = np.cumsum([0, *VISUAL_GROUPS.values()])
    energy = [np.mean(np.sum(z[:, a:b] ** 2, axis=1)) for a, b in zip(offsets[:-1], offsets[1:], strict=True)]
    np.testing.assert_allclose(energy, 1.0, rtol=1e-4)
    # the same standard applied to other rows: no re-fit (their group energies are not normalised to 1)
    again, _ = standardise_groups(raw[:50] * 3.0, fitted)
    weights = np.concatenate([np.full(n, n**-0.5) for n in VISUAL_GROUPS.values()])
    expected = (raw[:50] * 3.0 - raw.mean(axis=0)) / raw.std(axis=0) * weights
    np.testing.assert_allclose(again, expected, rtol=1e-3, atol=1e-4)
    with pytest.raises(EmbedderError, match="standard has shape"):
        standardise_groups(raw[:, :10], fitted)


def test_visual_stats_separates_scene_families(builtin200):
    shards, index, attrs = builtin200
    emb, standard = compute_embeddings(ClusterConfig(), shards, index)
    assert emb.shape == (200, DIM) and emb.dtype == np.float32
    assert standard["visual_stats_mean"].shape == standard["visual_stats_std"].shape == (DIM,)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
    assert np.array_equal(emb, compute_embeddings(ClusterConfig(), shards, index)[0]), "deterministic"
    # rows follow the clip index order, whatever order it comes in
    shuffled = index.iloc[::-1]
    assert np.allclose(compute_embeddings(ClusterConfig(), shards, shuffled)[0], emb[::-1], atol=1e-6)
    # a subset embedded with the whole corpus's standard lands where the whole corpus put it; fitted on itself, not
    sub = index.iloc[:40]
    np.testing.assert_allclose(compute_embeddings(ClusterConfig(), shards, sub, standard=standard)[0], emb[:40],
                               atol=1e-5)
    assert not np.allclose(compute_embeddings(ClusterConfig(), shards, sub)[0], emb[:40], atol=1e-3)

    sim = emb @ emb.T
    np.fill_diagonal(sim, -np.inf)
    scene = attrs["scene"].to_numpy()
    nn_agreement = (scene[sim.argmax(1)] == scene).mean()  # measured 0.90 (chance ~0.26)
    assert nn_agreement > 0.8, nn_agreement
    background = attrs["background"].to_numpy()
    labels = KMeans(9, n_init=4, random_state=0).fit_predict(emb)
    ami = adjusted_mutual_info_score(background, labels)  # measured 0.74
    assert ami > 0.5, ami


def test_concatenation_normalises_each_part(builtin200):
    shards, index, _ = builtin200
    pooled = np.random.default_rng(0).normal(size=(200, 384)).astype(np.float32) * 1000
    cfg = ClusterConfig(embedders=["visual_stats", "text"])
    emb, _ = compute_embeddings(cfg, shards, index, pooled_text=pooled)
    assert emb.shape == (200, DIM + 384)
    np.testing.assert_allclose(np.linalg.norm(emb[:, :DIM], axis=1), 2**-0.5, rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(emb[:, DIM:], axis=1), 2**-0.5, rtol=1e-5)
    text_only, fitted = compute_embeddings(ClusterConfig(embedders=["text"]), shards, index, pooled_text=pooled)
    assert fitted == {}
    np.testing.assert_allclose(text_only, pooled / np.linalg.norm(pooled, axis=1, keepdims=True), rtol=1e-5)


def test_embedder_errors(builtin200, tmp_path):
    shards, index, _ = builtin200
    with pytest.raises(ConfigError, match="cluster.embedders: 'dino' is not one of"):
        ClusterConfig(embedders=["dino"])
    with pytest.raises(ConfigError, match="cluster.image_tower_path: required"):
        ClusterConfig(embedders=["image_tower"])
    with pytest.raises(EmbedderError, match="lists an embedder twice"):
        compute_embeddings(ClusterConfig(embedders=["text", "text"]), shards, index, np.ones((200, 4)))
    with pytest.raises(EmbedderError, match=r"text embedder needs pooled caption vectors \[200, P\], got none"):
        compute_embeddings(ClusterConfig(embedders=["text"]), shards, index)
    with pytest.raises(EmbedderError, match=r"got \(10, 4\)"):
        compute_embeddings(ClusterConfig(embedders=["text"]), shards, index, np.ones((10, 4)))
    missing = tmp_path / "no-dino"
    cfg = ClusterConfig(embedders=["image_tower"], image_tower_path=str(missing))
    with pytest.raises(EmbedderError, match=f"{missing}: image tower folder not found"):
        compute_embeddings(cfg, shards, index)
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(EmbedderError, match="model_type 'bert' is not a supported image tower"):
        ImageTower.from_path(tmp_path / "bert")


def _tiny_dinov2(path):
    torch.manual_seed(0)
    cfg = transformers.Dinov2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32, patch_size=8
    )
    model = transformers.Dinov2Model(cfg).eval()
    model.save_pretrained(path)
    return model


def test_image_tower_dinov2_frame_average(builtin200, tmp_path):
    shards, index, _ = builtin200
    model = _tiny_dinov2(tmp_path / "dino")
    sub = index.iloc[:20]
    cfg = ClusterConfig(embedders=["image_tower"], image_tower_path=str(tmp_path / "dino"), image_tower_frames=3)
    emb, _ = compute_embeddings(cfg, shards, sub)
    assert emb.shape == (20, 32)
    assert np.array_equal(emb, compute_embeddings(cfg, shards, sub)[0])

    frames = load_clips(shards, index, [sub["clip_id"].iloc[5]])[0][[0, 4, 7]]  # 3 evenly spaced of 8 frames
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255  # 32x32 is the model's image_size
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    with torch.no_grad():
        ref = model(pixel_values=(x - mean[:, None, None]) / std[:, None, None]).pooler_output.mean(0)
    expected = ref / ref.norm()
    np.testing.assert_allclose(emb[5], expected.numpy(), atol=1e-5)


def test_image_tower_clip_vision_uses_preprocessor_config(tmp_path):
    torch.manual_seed(0)
    cfg = transformers.CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
        projection_dim=12,
    )
    transformers.CLIPVisionModelWithProjection(cfg).eval().save_pretrained(tmp_path)
    pre = {"image_mean": [0.5, 0.5, 0.5], "image_std": [0.25, 0.25, 0.25], "crop_size": {"height": 16, "width": 16}}
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(pre))
    tower = ImageTower.from_path(tmp_path)
    assert tower.image_size == 16 and tower.output == "image_embeds"
    assert torch.allclose(tower.mean.flatten(), torch.tensor(0.5)) and torch.allclose(
        tower.std.flatten(), torch.tensor(0.25)
    )
    images = np.random.default_rng(0).integers(0, 256, (5, 24, 24, 3), dtype=np.uint8)
    feats = tower.embed_images(images, batch_size=2)
    assert feats.shape == (5, 12)
    np.testing.assert_allclose(feats, tower.embed_images(images, batch_size=5), atol=1e-5)  # batching-invariant

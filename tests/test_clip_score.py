import json

import numpy as np
import pytest
import torch
from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

from lib.evaluate.motion import mean_abs_frame_diff, normal_flow_magnitude
from lib.features.clip import CLIP_MEAN, ClipError, ClipSimilarity

WORDS = ["a", "red", "blue", "ball", "box", "moving", "left", "on", "black", "background"]


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    """A tiny random CLIP model and a word-level BPE tokenizer, saved the way a real CLIP folder is."""
    path = tmp_path_factory.mktemp("clip")
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for w in WORDS:
        vocab[f"{w}</w>"] = len(vocab)
    for ch in sorted({c for w in WORDS for c in w}):
        vocab.setdefault(ch, len(vocab))
        vocab.setdefault(f"{ch}</w>", len(vocab))
    merges = []
    for w in WORDS:  # merge characters left to right into the whole word
        for i in range(1, len(w)):
            left, right = w[:i], w[i] + ("</w>" if i == len(w) - 1 else "")
            merges.append((left, right))
            vocab.setdefault(left + right, len(vocab))
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges)
    config = CLIPConfig(
        text_config={
            "vocab_size": len(vocab),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "max_position_embeddings": 16,
            "bos_token_id": 0,
            "eos_token_id": 1,
            "pad_token_id": 1,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": 24,
            "patch_size": 8,
        },
        projection_dim=16,
    )
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    (path / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.5] * 3, "image_std": [0.25] * 3}))
    return path


def _videos(seed, n=3, t=4, h=16, w=20):
    return np.random.default_rng(seed).integers(0, 256, size=(n, t, h, w, 3), dtype=np.uint8)


def test_clip_sim_is_the_frame_averaged_cosine(clip_dir):
    scorer = ClipSimilarity(clip_dir)
    assert scorer.image_size == 24 and torch.allclose(scorer.mean.flatten(), torch.tensor([0.5] * 3))
    prompts = ["a red ball moving left", "a blue box", "a ball on a black background"]
    videos = _videos(0)
    got = scorer.scores(videos, prompts)
    assert got.shape == (3,) and np.all(np.abs(got) <= 1.0)

    # Reference: per-frame cosine through the plain transformers API, then the mean over frames.
    model = CLIPModel.from_pretrained(clip_dir).eval()
    tok = CLIPTokenizer.from_pretrained(clip_dir)
    with torch.no_grad():
        text = model.get_text_features(**tok(prompts, padding=True, return_tensors="pt")).pooler_output
        frames = torch.from_numpy(videos).reshape(12, 16, 20, 3)
        image = model.get_image_features(pixel_values=scorer.preprocess(frames)).pooler_output
    cos = torch.nn.functional.cosine_similarity(image.view(3, 4, -1), text[:, None, :], dim=-1)
    np.testing.assert_allclose(got, cos.mean(dim=1).numpy(), rtol=1e-5, atol=1e-6)
    assert scorer.scores(videos, prompts[::-1])[1] == pytest.approx(got[1], rel=1e-6)  # middle prompt unchanged
    assert not np.allclose(scorer.scores(videos, prompts[::-1]), got)


def test_preprocess_resizes_short_side_and_centre_crops(clip_dir):
    scorer = ClipSimilarity(clip_dir)
    frames = torch.zeros(2, 16, 32, 3, dtype=torch.uint8)
    frames[:, :, :4] = 255  # a white band on the left edge is cropped away
    x = scorer.preprocess(frames)
    assert x.shape == (2, 3, 24, 24)
    assert torch.allclose(x, torch.full_like(x, (0.0 - 0.5) / 0.25), atol=1e-4)


def test_default_constants_and_errors(clip_dir, tmp_path):
    assert CLIP_MEAN[0] == pytest.approx(0.4815, abs=1e-4)
    with pytest.raises(ClipError, match="config.json missing"):
        ClipSimilarity(tmp_path)
    with pytest.raises(ClipError, match="2 prompts for 3 videos"):
        ClipSimilarity(clip_dir).scores(_videos(1), ["a", "b"])


def test_motion_statistics():
    still = np.full((2, 5, 16, 16, 3), 100, dtype=np.uint8)
    assert np.all(mean_abs_frame_diff(still) == 0.0) and np.all(normal_flow_magnitude(still) == 0.0)
    # A vertical edge moving right by s pixels per frame: normal flow ~ s, frame difference grows with s.
    xs = np.arange(32)
    speeds = [1, 2, 3]
    videos = np.zeros((3, 6, 16, 32, 3), dtype=np.uint8)
    for i, s in enumerate(speeds):
        for t in range(6):
            ramp = np.clip((xs - (8 + s * t)) / 4.0 + 0.5, 0.0, 1.0)  # soft edge 4 px wide
            videos[i, t] = (ramp * 255).astype(np.uint8)[None, :, None]
    flow = normal_flow_magnitude(videos)
    np.testing.assert_allclose(flow, speeds, rtol=0.25)
    mad = mean_abs_frame_diff(videos)
    assert np.all(np.diff(mad) > 0) and mad.max() <= 1.0
    with pytest.raises(ValueError, match="at least 2 frames"):
        mean_abs_frame_diff(still[:, :1])

"""The codec the pipeline trains for itself: it loads as a plain diffusers VAE, its latents are normalised, it
reconstructs held-out frames better than their mean colour, it trains on train-role clips only, and it is cached."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from lib.config import CodecConfig, ConfigError, EncodeConfig, config_from_dict
from lib.data.ingest import ingest
from lib.data.procedural import iter_builtin_clips
from lib.encode.codec import ImageVAECodec, load_vae_codec
from lib.encode.learned import REPORT_FILE, psnr, train_codec
from lib.encode.prepare import codec_key, fit_codec

SMALL = CodecConfig(block_out_channels=[16, 32], norm_num_groups=8, steps=400, batch_size=16, lr=3e-3, warmup_steps=10)


def _clips(start: int, count: int) -> np.ndarray:
    clips = list(iter_builtin_clips(seed=3, num_clips=start + count, frames=4, height=16, width=16))[start:]
    return np.stack([c.frames for c in clips])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("codec") / "c"
    train, heldout = _clips(0, 48), _clips(48, 12)
    vae_dir, report = train_codec(train, heldout, SMALL, 0, folder)
    return folder, vae_dir, report, train, heldout


def test_learned_codec_loads_as_a_diffusers_vae_with_normalised_latents(trained):
    _, vae_dir, report, train, _ = trained
    codec = load_vae_codec(vae_dir)
    assert isinstance(codec, ImageVAECodec)
    assert codec.latent_shape(4, 16, 16) == (4, 4, 8, 8)
    z = codec.encode(train)
    assert z.shape == (48, 4, 4, 8, 8)
    assert abs(float(z.mean())) < 0.1 and abs(float(z.std()) - 1.0) < 0.1  # shift/scale from the train latents
    assert codec.shift_factor == pytest.approx(report.shift_factor)
    assert codec.scaling_factor == pytest.approx(report.scaling_factor)


def test_learned_codec_beats_the_mean_colour_of_each_frame_on_held_out_clips(trained):
    _, vae_dir, report, _, heldout = trained
    flat = np.broadcast_to(heldout.mean(axis=(2, 3), keepdims=True).round().astype(np.uint8), heldout.shape)
    baseline = psnr(heldout, flat)
    codec = load_vae_codec(vae_dir)
    measured = psnr(heldout, codec.decode(codec.encode(heldout)).numpy())
    assert measured == pytest.approx(report.psnr_heldout, abs=1e-6)
    assert measured > baseline + 2.0, (measured, baseline)


def test_learned_codec_is_deterministic_and_reused(trained, tmp_path):
    folder, vae_dir, report, train, heldout = trained
    again, report2 = train_codec(train, heldout, SMALL, 0, tmp_path / "again")
    a = (vae_dir / "diffusion_pytorch_model.safetensors").read_bytes()
    assert a == (again / "diffusion_pytorch_model.safetensors").read_bytes()
    stamp = (folder / REPORT_FILE).stat().st_mtime_ns
    reused, report3 = train_codec(train[:4], heldout, SMALL, 0, folder)  # a finished folder is not retrained
    assert reused == vae_dir and report3 == report and (folder / REPORT_FILE).stat().st_mtime_ns == stamp
    assert json.loads((folder / REPORT_FILE).read_text())["steps"] == SMALL.steps


def test_train_codec_refuses_frames_the_network_cannot_downsample(tmp_path):
    odd = np.zeros((2, 2, 9, 9, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="9x9"):
        train_codec(odd, odd, SMALL, 0, tmp_path / "c")


def test_codec_config_is_checked_by_name():
    with pytest.raises(ConfigError, match="codec.block_out_channels"):
        config_from_dict({"codec": {"block_out_channels": [12], "norm_num_groups": 8}})
    assert EncodeConfig(codec="learned").vae_path == ""


def test_fit_codec_trains_on_train_clips_only(tmp_path, monkeypatch):
    cfg = config_from_dict({
        "data": {"num_clips": 40, "frames": 4, "height": 16, "width": 16, "validation_fraction": 0.2},
        "encode": {"codec": "learned"},
    })  # fmt: skip
    result = ingest(cfg.data, cfg.seed, tmp_path / "shards")
    seen = {}

    def spy(train_videos, heldout_videos, codec_cfg, seed, out_dir):
        seen["train"], seen["heldout"] = len(train_videos), len(heldout_videos)
        return Path(out_dir) / "vae", None

    monkeypatch.setattr("lib.encode.prepare.train_codec", spy)
    fit_codec(SMALL, 0, tmp_path / "shards", result.index, tmp_path / "codec")
    roles = result.index["role"].value_counts()
    assert seen == {"train": roles["train"], "heldout": roles["validation"]}
    # the codec's identity follows the train clips and their pixels, not the held-out ones
    shards = tmp_path / "shards"
    key = codec_key(SMALL, 0, result.index, shards)
    moved = result.index.copy()
    moved.loc[moved["role"] == "reference", "role"] = "prompt"
    assert codec_key(SMALL, 0, moved, shards) == key
    fewer = result.index.copy()
    fewer.loc[fewer.index[fewer["role"] == "train"][0], "role"] = "validation"
    assert codec_key(SMALL, 0, fewer, shards) != key
    assert codec_key(SMALL, 1, result.index, shards) != key
    # same clip ids, other pixels: built-in clips redrawn with one object each must not reuse the codec
    one = ingest(dataclasses.replace(cfg.data, max_objects=1), cfg.seed, tmp_path / "one")
    assert one.index["clip_id"].tolist() == result.index["clip_id"].tolist()
    assert codec_key(SMALL, 0, one.index, tmp_path / "one") != key


def test_learned_codec_travels_with_the_encoded_folder_and_the_ddm(trained, tmp_path, monkeypatch):
    """Encode with the trained codec, train a 1-step expert on its latents, assemble a DDM, move both folders
    elsewhere (as a Flyte blob download would) and sample: the decoder must come from inside the moved folders."""
    import shutil

    import huggingface_hub.constants

    from lib.config import DataConfig, ExpertConfig
    from lib.data.ingest import ingest
    from lib.encode.learned import VAE_DIR
    from lib.encode.store import encode_dataset, load_encoded, read_codec_info
    from lib.sample.folder import assemble_ddm
    from lib.sample.pipeline import DDMPipeline
    from lib.train.trainer import TrainData, train

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    _, vae_dir, report, _, _ = trained
    result = ingest(DataConfig(num_clips=12, frames=4, height=16, width=16), 0, tmp_path / "shards")
    with pytest.raises(ValueError, match="learned_codec"):
        encode_dataset(tmp_path / "shards", result.index, EncodeConfig(codec="learned"), tmp_path / "bad")
    encode_dataset(tmp_path / "shards", result.index, EncodeConfig(codec="learned"), tmp_path / "enc",
                   learned_codec=vae_dir)  # fmt: skip
    raw = json.loads((tmp_path / "enc" / "codec.json").read_text())
    assert raw["vae_path"] == VAE_DIR and raw["learned"]["psnr_heldout"] == pytest.approx(report.psnr_heldout)
    assert raw["latent_shape"] == [4, 4, 8, 8]
    shutil.move(tmp_path / "enc", tmp_path / "moved-enc")
    info = read_codec_info(tmp_path / "moved-enc")
    assert info["vae_path"] == str((tmp_path / "moved-enc" / VAE_DIR).resolve())
    data = load_encoded(tmp_path / "moved-enc")
    cfg = ExpertConfig(num_layers=1, num_heads=2, head_dim=8, ffn_dim=16, patch_size=[1, 2, 2], steps=1, batch_size=4,
                       warmup_steps=1)  # fmt: skip
    expert = train(TrainData(data.clip_ids, data.latents, data.tokens, data.mask), cfg, tmp_path / "e", 0, "e")
    ddm = assemble_ddm(tmp_path / "ddm", {0: expert.model_dir}, None, info, None, EncodeConfig(codec="learned"))
    assert (ddm / VAE_DIR / "config.json").is_file()
    shutil.rmtree(tmp_path / "moved-enc")
    shutil.move(ddm, tmp_path / "moved-ddm")
    videos = DDMPipeline.from_pretrained(tmp_path / "moved-ddm")(["a red ball"], num_inference_steps=2, seed=0).frames
    assert videos.shape == (1, 4, 16, 16, 3) and videos.dtype == np.uint8

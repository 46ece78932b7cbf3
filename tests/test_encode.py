import json
import shutil

import numpy as np
import pandas as pd
import pandera.errors
import pytest
import torch
import transformers
from diffusers import AutoencoderKL, AutoencoderKLWan
from safetensors.torch import load_file

from data_schemas.encode import EncodedIndex
from lib.config import EncodeConfig, load_config
from lib.data.ingest import ingest_builtin
from lib.encode.codec import CodecLoadError, ImageVAECodec, PixelCodec, WanVideoCodec, codec_from_config
from lib.encode.store import caption_cut_record, encode_dataset, load_encoded, read_codec_info
from lib.encode.text import EncoderLoadError, TextEncoder
from lib.io import SUMS_FILE

WORDS = "a red crimson blue ball square moving left growing on checkerboard".split()


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
def minilm(hub_offline):
    return TextEncoder.from_config(EncodeConfig(batch_size=2))


def _tokenizer() -> transformers.BertTokenizer:
    """A small WordPiece tokenizer built from an in-test vocabulary (no download)."""
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    return transformers.BertTokenizer(vocab={w: i for i, w in enumerate(vocab)}, model_max_length=32)


def _save(model, tokenizer, path):
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


# ---------------------------------------------------------------- text encoders


def test_minilm_shapes_norm_and_semantics(minilm):
    captions = ["a red ball moving left", "a crimson ball moving left", "a blue square growing on a checkerboard"]
    out = minilm.encode(captions)
    length = EncodeConfig().max_tokens
    assert out.tokens.shape == (3, length, 384) and out.tokens.dtype == torch.float32
    assert out.mask.dtype == torch.bool and out.mask.shape == (3, length)
    assert out.lengths.tolist() == [7, 7, 11]  # checkerboard is two WordPiece tokens
    assert out.pooled.shape == (3, 384)
    torch.testing.assert_close(out.pooled.norm(dim=1), torch.ones(3))
    # [CLS] a red ball moving left [SEP] -> 7 real tokens, padded positions are zero
    assert out.mask[0].sum() == 7 and not out.mask[0, 7:].any()
    assert out.tokens[0, 7:].abs().sum() == 0
    sim = out.pooled @ out.pooled.T
    assert sim[0, 1] > sim[0, 2] + 0.2, sim
    again = minilm.encode(captions)
    assert torch.equal(again.tokens, out.tokens) and torch.equal(again.pooled, out.pooled)
    alone = minilm.encode(captions[2:])  # a different batch (batch_size=2) gives the same numbers
    torch.testing.assert_close(alone.pooled[0], out.pooled[2], atol=1e-5, rtol=0)


def test_minilm_pooled_sees_whole_caption_tokens_are_truncated():
    long = "a small red ball moving slowly left and a big blue square spinning in front of a forest gradient"
    out = TextEncoder.from_config(EncodeConfig(max_tokens=16)).encode([long, long.replace("forest", "ocean")])
    assert out.mask.all(), "a caption longer than max_tokens fills every token slot"
    assert (out.lengths > 16).all(), "the lengths are counted before the cut"
    assert not torch.allclose(out.pooled[0], out.pooled[1], atol=1e-3), "the scene word at the end must count"


def test_minilm_refuses_empty_captions(minilm):
    with pytest.raises(ValueError, match=r"positions \[1\]"):
        minilm.encode(["a ball", "  "])


@pytest.mark.parametrize("projected", [False, True])
def test_tiny_clip_text_tower_loads_from_folder(tmp_path, projected):
    tok = _tokenizer()
    cfg = transformers.CLIPTextConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=24,
        projection_dim=16,
        bos_token_id=tok.cls_token_id,
        eos_token_id=tok.sep_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    cls = transformers.CLIPTextModelWithProjection if projected else transformers.CLIPTextModel
    model = cls(cfg).eval()
    path = _save(model, tok, tmp_path / "clip")
    enc = TextEncoder.from_config(EncodeConfig(text_encoder=path, max_tokens=4))
    out = enc.encode(["a red ball moving left", "a blue square"])
    assert out.tokens.shape == (2, 4, 32)
    assert out.pooled.shape == (2, 16 if projected else 32)
    assert enc.max_length == 24, "CLIP inputs are capped at its position-embedding count"
    batch = tok(["a red ball moving left"], return_tensors="pt")
    with torch.no_grad():
        ref = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    expected = ref.text_embeds if projected else ref.pooler_output
    torch.testing.assert_close(out.pooled[0], torch.nn.functional.normalize(expected[0], dim=0), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.tokens[0], ref.last_hidden_state[0, :4], atol=1e-5, rtol=0)


def test_tiny_t5_encoder_loads_from_folder(tmp_path):
    tok = _tokenizer()
    torch.manual_seed(0)
    t5 = transformers.T5EncoderModel(
        transformers.T5Config(vocab_size=len(tok), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=2)
    ).eval()
    path = _save(t5, tok, tmp_path / "t5")
    out = TextEncoder.from_config(EncodeConfig(text_encoder=path, max_tokens=8)).encode(["a red ball", "a blue ball"])
    assert out.tokens.shape == (2, 8, 32) and out.mask[0].tolist() == [True] * 5 + [False] * 3
    batch = tok(["a red ball"], return_tensors="pt")
    with torch.no_grad():
        hidden = t5(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state[0]
    torch.testing.assert_close(out.pooled[0], torch.nn.functional.normalize(hidden.mean(0), dim=0), atol=1e-5, rtol=0)


def test_text_encoder_bad_folders_name_the_path(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(EncoderLoadError, match=f"{missing}: text encoder folder not found"):
        TextEncoder.from_config(EncodeConfig(text_encoder=str(missing)))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(EncoderLoadError, match=f"{empty}: no config.json"):
        TextEncoder.from_config(EncodeConfig(text_encoder=str(empty)))
    untokenized = tmp_path / "t5-no-tokenizer"
    transformers.T5EncoderModel(
        transformers.T5Config(d_model=8, d_kv=4, d_ff=8, num_layers=1, num_heads=2)
    ).save_pretrained(untokenized)
    with pytest.raises(EncoderLoadError, match=f"{untokenized}: no tokenizer files"):
        TextEncoder.from_config(EncodeConfig(text_encoder=str(untokenized)))
    gpt = tmp_path / "gpt"
    gpt.mkdir()
    (gpt / "config.json").write_text(json.dumps({"model_type": "gpt2", "architectures": ["GPT2Model"]}))
    with pytest.raises(EncoderLoadError, match=r"gpt.config\.json: model_type 'gpt2'.*not a supported text encoder"):
        TextEncoder.from_config(EncodeConfig(text_encoder=str(gpt)))


# ---------------------------------------------------------------- codecs


def _videos(b=2, t=5, h=16, w=16, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (b, t, h, w, 3), dtype=np.uint8))


def test_pixel_codec_exact_round_trip():
    codec = codec_from_config(EncodeConfig())
    assert isinstance(codec, PixelCodec) and codec.name == "pixel" and codec.latent_channels == 3
    x = _videos()
    z = codec.encode(x)
    assert z.shape == (2, 3, 5, 16, 16) == (2, *codec.latent_shape(5, 16, 16)) and z.dtype == torch.float32
    assert z.min() >= -1 and z.max() <= 1
    assert torch.equal(z[0, :, 1, 2, 3], x[0, 1, 2, 3].float() / 127.5 - 1)
    assert torch.equal(codec.decode(z), x)
    assert torch.equal(codec.decode(z.half().float()), x), "float16 storage must not lose pixel values"
    assert torch.equal(codec.decode(z * 3), codec.decode((z * 3).clamp(-1, 1))), "decode clamps"
    with pytest.raises(ValueError, match="expected uint8 videos"):
        codec.encode(x.float())


def _tiny_kl(path, shift_factor=None):
    torch.manual_seed(0)
    vae = AutoencoderKL(
        block_out_channels=[8, 16],
        down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=16,
        scaling_factor=0.5,
        shift_factor=shift_factor,
    ).eval()
    vae.save_pretrained(path)
    return vae


@pytest.mark.parametrize("shift_factor", [None, 0.25])
def test_image_vae_codec_scales_per_frame_latents(tmp_path, shift_factor):
    vae = _tiny_kl(tmp_path / "vae", shift_factor)
    codec = codec_from_config(EncodeConfig(codec="vae", vae_path=str(tmp_path / "vae")))
    assert isinstance(codec, ImageVAECodec) and codec.latent_channels == 4
    assert codec.latent_shape(5, 16, 16) == (4, 5, 8, 8)
    x = _videos()
    z = codec.encode(x)
    assert z.shape == (2, 4, 5, 8, 8) and z.dtype == torch.float32
    frame = x[1, 3].permute(2, 0, 1)[None].float() / 127.5 - 1
    with torch.no_grad():
        mode = vae.encode(frame).latent_dist.mode()[0]
    torch.testing.assert_close(z[1, :, 3], (mode - (shift_factor or 0.0)) * 0.5, atol=1e-5, rtol=0)
    assert torch.equal(codec.encode(x), z), "mode, not a sample: deterministic"
    out = codec.decode(z)
    assert out.shape == x.shape and out.dtype == torch.uint8
    with torch.no_grad():
        manual = vae.decode(mode[None]).sample[0]
    manual_u8 = ((manual.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0)
    assert (out[1, 3].int() - manual_u8.int()).abs().max() <= 1
    with pytest.raises(ValueError, match="not divisible by the VAE's factor 2"):
        codec.encode(_videos(h=15))


def _tiny_wan(path):
    torch.manual_seed(0)
    vae = AutoencoderKLWan(
        base_dim=8,
        z_dim=4,
        dim_mult=[1, 2],
        num_res_blocks=1,
        temperal_downsample=[True],
        latents_mean=[0.1, -0.2, 0.3, 0.0],
        latents_std=[2.0, 0.5, 1.0, 4.0],
    ).eval()
    vae.save_pretrained(path)
    return vae


def test_wan_video_codec_normalises_with_latents_mean_std(tmp_path):
    vae = _tiny_wan(tmp_path / "wan")
    codec = codec_from_config(EncodeConfig(codec="vae", vae_path=str(tmp_path / "wan")))
    assert isinstance(codec, WanVideoCodec) and codec.latent_channels == 4
    assert codec.latent_shape(9, 16, 16) == (4, 5, 8, 8)
    x = _videos(b=1, t=9)
    z = codec.encode(x)
    assert z.shape == (1, 4, 5, 8, 8)
    with torch.no_grad():
        mode = vae.encode(x.permute(0, 4, 1, 2, 3).float() / 127.5 - 1).latent_dist.mode()
    mean = torch.tensor([0.1, -0.2, 0.3, 0.0]).view(1, 4, 1, 1, 1)
    std = torch.tensor([2.0, 0.5, 1.0, 4.0]).view(1, 4, 1, 1, 1)
    torch.testing.assert_close(z, (mode - mean) / std, atol=1e-5, rtol=0)
    out = codec.decode(z)
    assert out.shape == (1, 9, 16, 16, 3) and out.dtype == torch.uint8
    with pytest.raises(ValueError, match=r"needs 1 \+ 2\*n frames, got 8"):
        codec.encode(_videos(b=1, t=8))


def test_codec_bad_folders_name_the_path(tmp_path):
    missing = tmp_path / "missing"
    with pytest.raises(CodecLoadError, match=f"{missing}: VAE folder not found"):
        codec_from_config(EncodeConfig(codec="vae", vae_path=str(missing)))
    (tmp_path / "empty").mkdir()
    with pytest.raises(CodecLoadError, match="empty: no config.json"):
        codec_from_config(EncodeConfig(codec="vae", vae_path=str(tmp_path / "empty")))
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text(json.dumps({"_class_name": "UNet2DModel"}))
    with pytest.raises(CodecLoadError, match=r"other.config\.json: _class_name 'UNet2DModel' is not a supported VAE"):
        codec_from_config(EncodeConfig(codec="vae", vae_path=str(tmp_path / "other")))


# ---------------------------------------------------------------- encoded store


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    from lib.config import DataConfig

    shards = tmp_path_factory.mktemp("clips")
    result = ingest_builtin(DataConfig(num_clips=24, frames=5, height=16, width=16, shard_size=10), 0, shards)
    return shards, result.index


def test_encode_dataset_round_trip(tmp_path, clips, minilm):
    shards, index = clips
    out = tmp_path / "encoded"
    enc_index = encode_dataset(shards, index, EncodeConfig(batch_size=4), out)
    EncodedIndex.validate(enc_index)
    assert enc_index["clip_id"].tolist() == index["clip_id"].tolist()
    assert sorted(p.name for p in out.iterdir()) == [
        "SHA256SUMS",
        "codec.json",
        "encoded-00000.safetensors",
        "encoded-00001.safetensors",
        "encoded-00002.safetensors",
        "encoded_index.parquet",
    ]
    raw = load_file(str(out / "encoded-00001.safetensors"))
    assert {k: (v.dtype, tuple(v.shape)) for k, v in raw.items()} == {
        "latents": (torch.float16, (10, 3, 5, 16, 16)),
        "tokens": (torch.float16, (10, 40, 384)),
        "mask": (torch.uint8, (10, 40)),
        "pooled": (torch.float32, (10, 384)),
    }
    info = read_codec_info(out)
    assert info["name"] == "pixel" and info["latent_shape"] == [3, 5, 16, 16]
    assert info["text_encoder"] == {"name": "minilm", "max_tokens": 40, "dim": 384, "pooled_dim": 384}
    assert info["captions"]["count"] == 24 and info["captions"]["cut"] == 0 and info["captions"]["max_tokens"] == 40

    wanted = [index["clip_id"][i] for i in (23, 0, 11)]
    data = load_encoded(out, wanted)
    assert data.clip_ids == wanted
    assert data.latents.shape == (3, 3, 5, 16, 16) and data.latents.dtype == torch.float32
    assert data.mask.dtype == torch.bool and data.tokens.dtype == torch.float32
    from lib.data.shards import load_clips

    assert torch.equal(PixelCodec().decode(data.latents), torch.from_numpy(load_clips(shards, index, wanted)))
    captions = index.set_index("clip_id").loc[wanted, "caption"].tolist()
    direct = minilm.encode(captions)
    torch.testing.assert_close(data.pooled, direct.pooled, atol=1e-5, rtol=0)
    torch.testing.assert_close(data.tokens, direct.tokens, atol=1e-2, rtol=1e-2)  # float16 storage
    assert torch.equal(data.mask, direct.mask)
    assert len(load_encoded(out).clip_ids) == 24
    with pytest.raises(ValueError, match=r"1 clip id\(s\) not encoded, e.g. \['nope'\]"):
        load_encoded(out, [wanted[0], "nope"])
    with pytest.raises(ValueError, match="no encoded_index.parquet"):
        load_encoded(tmp_path)


def test_a_flipped_bit_in_an_encoded_shard_is_refused_naming_the_file(tmp_path, clips, caplog):
    from lib.io import ChecksumError, file_sha256

    shards, index = clips
    out = tmp_path / "encoded"
    enc_index = encode_dataset(shards, index.iloc[:20], EncodeConfig(batch_size=10), out)  # two encoded shards
    digests = enc_index.groupby("shard")[EncodedIndex.shard_sha256].unique()
    assert {s: list(d) for s, d in digests.items()} == {s: [file_sha256(out / s)] for s in digests.index}
    first, second = enc_index["clip_id"].iloc[0], enc_index["clip_id"].iloc[-1]
    before = load_encoded(out, [first, second])  # an untouched folder loads

    shard = out / "encoded-00001.safetensors"
    data = bytearray(shard.read_bytes())
    header = int.from_bytes(data[:8], "little")  # safetensors: header length, JSON header, then the tensors' bytes
    end = 8 + header + json.loads(data[8 : 8 + header])["pooled"]["data_offsets"][1]
    data[end - 1] ^= 1 << 6  # an exponent bit of the last clip's last pooled value (float32, little-endian)
    shard.write_bytes(bytes(data))
    unchecked = load_file(str(shard))["pooled"][-1, -1]
    assert unchecked != before.pooled[1, -1], "unchecked, the flip reads as a wrong number"
    expected, found = digests[shard.name][0], file_sha256(shard)
    with pytest.raises(ChecksumError, match=rf"{shard}: sha256 mismatch: expected {expected} .*found {found}"):
        load_encoded(out, [first, second])
    assert torch.equal(load_encoded(out, [first]).pooled, before.pooled[:1]), "the untouched shard still loads"

    # a folder encoded before checksums (no shard digests, no SHA256SUMS): loads unchecked, warning once per check
    enc_index.drop(columns=EncodedIndex.shard_sha256).to_parquet(out / "encoded_index.parquet", index=False)
    (out / SUMS_FILE).unlink()
    with caplog.at_level("WARNING", logger="lib.io"):
        assert load_encoded(out, [second]).pooled[0, -1] == unchecked
        load_encoded(out)
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 2 and all(str(out) in w and "re-run the encode stage" in w for w in warnings)


def test_a_flipped_bit_in_the_index_or_codec_json_is_refused_naming_the_file(tmp_path, clips):
    from lib.io import ChecksumError

    shards, index = clips
    out = tmp_path / "encoded"
    encode_dataset(shards, index.iloc[:10], EncodeConfig(batch_size=10), out)
    assert read_codec_info(out)["scaling"]["shift"] == -1.0 and len(load_encoded(out).clip_ids) == 10
    for name in ("codec.json", "encoded_index.parquet"):
        copy = shutil.copytree(out, tmp_path / f"flipped-{name}")
        text = bytearray((copy / name).read_bytes())
        at = text.find(b'"shift": -1.0') + len(b'"shift": -') if name == "codec.json" else len(text) // 2
        text[at] ^= 0b100  # codec.json: the pixel codec's shift -1.0 -> -5.0, still valid JSON
        (copy / name).write_bytes(bytes(text))
        with pytest.raises(ChecksumError, match=rf"{copy / name}: sha256 mismatch: {copy / SUMS_FILE} records"):
            load_encoded(copy) if name != "codec.json" else read_codec_info(copy)


def test_encode_dataset_counts_cut_captions_and_warns_above_one_percent(tmp_path, clips, caplog):
    shards, index = clips
    with caplog.at_level("WARNING", logger="lib.encode.store"):
        encode_dataset(shards, index, EncodeConfig(max_tokens=12, batch_size=8), tmp_path / "enc")
    lengths = TextEncoder.from_config(EncodeConfig()).encode(index["caption"].tolist()).lengths
    cut = read_codec_info(tmp_path / "enc")["captions"]
    assert cut["cut"] == int((lengths > 12).sum()) > 0 and cut["longest_tokens"] == int(lengths.max())
    assert cut["cut_fraction"] == pytest.approx(cut["cut"] / 24) and cut["count"] == 24
    assert "longer than encode.max_tokens=12" in caplog.text


def test_caption_cut_record_warns_only_above_one_percent(caplog):
    lengths = torch.full((1000,), 10)
    lengths[:10] = 41  # 1 % cut: at the threshold, no warning
    with caplog.at_level("WARNING", logger="lib.encode.store"):
        record = caption_cut_record(lengths, 40)
    assert record == {"count": 1000, "cut": 10, "cut_fraction": 0.01, "longest_tokens": 41, "max_tokens": 40}
    assert not caplog.records
    lengths[10] = 40  # exactly max_tokens fits
    lengths[11] = 41  # 11 cut: above 1 %
    with caplog.at_level("WARNING", logger="lib.encode.store"):
        assert caption_cut_record(lengths, 40)["cut"] == 11
    assert "11 of 1000 captions (1.1 %) are longer than encode.max_tokens=40" in caplog.text
    with pytest.raises(ValueError, match="no caption lengths"):
        caption_cut_record(torch.zeros(0, dtype=torch.int64), 40)


@pytest.mark.parametrize(("themed", "families", "limit"), [
    (False, 4, EncodeConfig().max_tokens), (True, 4, EncodeConfig().max_tokens),  # the default world: the default
    (True, 8, "configs/regime.yaml"), (False, 8, "configs/regime.yaml"),  # 8 families: the config that uses them
])  # fmt: skip
def test_max_tokens_holds_every_builtin_caption(minilm, themed, families, limit):
    """The longest caption a world's templates can write, built word by word, fits the token limit of the config
    that uses that world: WordPiece splits on spaces first, so a caption's token count is the sum over its words and
    the longest caption takes the longest word of every slot (two objects, the second in the colour with the
    next-longest word). Themed scenes draw from subsets of the same words, so one bound holds both regimes; each
    regime's drawn captions (all families shared, and each owning its own) are checked against it.
    """
    from lib.data import procedural as p

    world = p.World(families)
    max_tokens = limit if isinstance(limit, int) else load_config(limit).encode.max_tokens

    def longest(words) -> str:
        return max(words, key=lambda w: len(minilm.tokenizer.tokenize(w)))

    colours = sorted(p.COLORS, key=lambda c: -len(minilm.tokenizer.tokenize(longest(p._COLOR_WORDS[c]))))
    size = longest([w for ws in p._SIZE_WORDS.values() for w in ws])
    shape = longest([w for s in world.shapes for w in p._SHAPE_WORDS[s]])
    motion = longest([w for m in world.motions for w in p._MOTION_WORDS[m]])
    scenes = [(f, bg) for f in world.families for bg in p.FAMILIES[f].palette]
    where = longest([w.format(bg=bg) for f, bg in scenes for w in p._SCENE_WORDS[f]])
    objects = [f"a {size} {longest(p._COLOR_WORDS[c])} {shape} {motion}" for c in colours[:2]]
    caption = f"{' and '.join(objects)} {where}"
    worst = minilm.encode([caption]).lengths.item()
    assert worst <= max_tokens, caption
    drawn = [p.clip_spec(0, i, 2, themed, world=p.World(families, overlap)).caption
             for overlap in (1.0, 0.0) for i in range(1000)]  # fmt: skip
    assert max(map(len, minilm.tokenizer(drawn)["input_ids"])) <= worst, "a drawn caption is longer than the bound"


def test_encode_dataset_with_vae_records_scaling(tmp_path, clips):
    shards, index = clips
    _tiny_kl(tmp_path / "vae")
    cfg = EncodeConfig(codec="vae", vae_path=str(tmp_path / "vae"), batch_size=8)
    encode_dataset(shards, index.iloc[:6], cfg, tmp_path / "enc")
    info = read_codec_info(tmp_path / "enc")
    assert info["latent_shape"] == [4, 5, 8, 8] and info["vae_class"] == "AutoencoderKL"
    assert info["scaling"] == {"scaling_factor": 0.5, "shift_factor": 0.0}
    assert load_encoded(tmp_path / "enc").latents.shape == (6, 4, 5, 8, 8)


def test_encoded_index_schema_rejects_bad_tables():
    bad = pd.DataFrame({"clip_id": ["a", "a"], "shard": ["encoded-00000.safetensors", "shard-00000.safetensors"]})
    bad["index"] = [0, -1]
    with pytest.raises(pandera.errors.SchemaErrors) as info:
        EncodedIndex.validate(bad, lazy=True)
    assert {"clip_id", "shard", "index"} <= set(info.value.failure_cases["column"])
    with pytest.raises((pandera.errors.SchemaError, pandera.errors.SchemaErrors), match="extra"):
        EncodedIndex.validate(bad.iloc[:1].assign(index=0, extra=1))

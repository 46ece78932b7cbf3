"""The encoded dataset on disk: latents and caption embeddings computed once, then read by every later stage.

Layout of an encoded folder::

    encoded-00000.safetensors   latents float16 [n, C, T, H, W], tokens float16 [n, L, D],
    encoded-00001.safetensors   mask uint8 [n, L], pooled float32 [n, P]
    encoded_index.parquet       EncodedIndex: clip_id -> (shard, index, shard_sha256)
    codec.json                  codec name, latent shape, scaling, text encoder — what sampling needs to decode —
                                and how many captions were cut to encode.max_tokens (``captions``)

Why float16 for latents and tokens: they are the bulk of the bytes and half precision is far below the noise the
models add (the pixel codec still round-trips exactly: 1/127.5 steps survive float16). Pooled vectors stay float32
because clustering compares them by small cosine differences. Every file is written atomically, the index and
``codec.json`` last, so a folder with an index is complete. The index records each shard file's sha256, computed when
it is written; ``load_encoded`` hashes each shard it opens once (streamed) and refuses one whose bytes changed
(``lib.io.ChecksumError`` naming the file and both digests) instead of training on wrong latents. ``SHA256SUMS``
(``lib.io``), written last, records every file; the index and ``codec.json`` are checked against it when read (a
flipped digit there would change a scaling factor or a clip's row without an error). A folder encoded before
checksums loads unchecked, with one warning.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from safetensors.torch import load_file, save_file

from data_schemas.encode import EncodedIndex
from lib.config import EncodeConfig
from lib.data.shards import iter_shards
from lib.encode.codec import codec_from_config, load_vae_codec
from lib.encode.learned import REPORT_FILE, VAE_DIR
from lib.encode.text import TextEncoder
from lib.io import atomic_write, file_sha256, read_sums, verify_shard, verify_sums, write_sums
from lib.progress import progress

log = logging.getLogger(__name__)

ENCODED_INDEX = "encoded_index.parquet"
CODEC_FILE = "codec.json"
STAGE = "encode"  # the stage that writes encoded shards, named by the checksum errors
# above this share of captions cut to encode.max_tokens the encode stage warns: the experts and the monolith then
# learn from captions whose last words (in the built-in captions: the second object and the scene) are missing
CUT_WARN_FRACTION = 0.01


def encoded_shard_name(number: int) -> str:
    return f"encoded-{number:05d}.safetensors"


@dataclass
class EncodedData:
    clip_ids: list[str]
    latents: torch.Tensor  # float32 [N, C, T, H, W]
    tokens: torch.Tensor  # float32 [N, L, D]
    mask: torch.Tensor  # bool [N, L]
    pooled: torch.Tensor  # float32 [N, P]


def caption_cut_record(lengths: torch.Tensor, max_tokens: int) -> dict[str, Any]:
    """How many captions the token embeddings cut, as ``codec.json`` records it; warns above ``CUT_WARN_FRACTION``.

    Why: only the first ``max_tokens`` tokens reach cross-attention, so a caption longer than that loses its last
    words without any error; this count is the only place the loss shows.

    Args:
        lengths: int [N] tokens of each caption before the cut (``TextEmbeddings.lengths``).
        max_tokens: tokens kept (``encode.max_tokens``).

    Returns:
        ``{"count", "cut", "cut_fraction", "longest_tokens", "max_tokens"}``.
    """
    if lengths.numel() == 0:
        raise ValueError("caption_cut_record: no caption lengths given")
    cut = int((lengths > max_tokens).sum())
    record = {
        "count": int(lengths.numel()),
        "cut": cut,
        "cut_fraction": cut / lengths.numel(),
        "longest_tokens": int(lengths.max()),
        "max_tokens": max_tokens,
    }
    if record["cut_fraction"] > CUT_WARN_FRACTION:
        log.warning(
            "encode: %d of %d captions (%.1f %%) are longer than encode.max_tokens=%d and lose their last words in "
            "cross-attention; the longest has %d tokens: raise encode.max_tokens to at least that",
            cut, record["count"], 100 * record["cut_fraction"], max_tokens, record["longest_tokens"],
        )  # fmt: skip
    return record


def encode_dataset(
    shards_dir: str | Path,
    clip_index: pd.DataFrame,
    cfg: EncodeConfig,
    out_dir: str | Path,
    device: str | torch.device = "cpu",
    learned_codec: str | Path | None = None,
) -> pd.DataFrame:
    """Encode every clip of ``clip_index`` (videos with the codec, captions with the text encoder).

    Streams one clip shard at a time and writes one encoded shard per clip shard, so memory stays bounded by
    ``data.shard_size`` clips whatever the dataset size.

    Args:
        shards_dir: folder of the clip shards (ingest output).
        clip_index: ClipIndex rows to encode (needs clip_id, shard, index, caption).
        cfg: codec, text encoder, token length and batch size.
        out_dir: folder to write (created if needed).
        device: where the codec and text encoder run.
        learned_codec: with ``cfg.codec == "learned"``, the VAE folder ``lib.encode.prepare.fit_codec`` trained. It
            is copied into ``out_dir/vae`` and ``codec.json`` names it relative to ``out_dir``, so the encoded folder
            carries its own decoder wherever it is downloaded (a Flyte blob, another machine).

    Returns:
        The EncodedIndex table (also written to ``out_dir/encoded_index.parquet``).
    """
    missing = {"clip_id", "shard", "index", "caption"} - set(clip_index.columns)
    if missing:
        raise ValueError(f"encode_dataset: clip index lacks column(s) {', '.join(sorted(missing))}")
    if clip_index.empty:
        raise ValueError(f"encode_dataset: empty clip index for {shards_dir}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if cfg.codec == "learned":
        if learned_codec is None:
            raise ValueError("encode_dataset: encode.codec=learned needs the trained codec folder (learned_codec)")
        shutil.rmtree(out_dir / VAE_DIR, ignore_errors=True)
        shutil.copytree(learned_codec, out_dir / VAE_DIR)
        codec = load_vae_codec(out_dir / VAE_DIR, device)
        report = Path(learned_codec).parent / REPORT_FILE
        learned = json.loads(report.read_text()) if report.is_file() else {}
    else:
        codec, learned = codec_from_config(cfg, device), None
    text = TextEncoder.from_config(cfg, device)
    load_seconds = time.perf_counter() - t0

    rows: list[dict[str, Any]] = []
    latent_shape: tuple[int, ...] = ()
    video_shape: tuple[int, ...] = ()
    pooled_dim = 0
    lengths: list[torch.Tensor] = []
    bar = progress(total=len(clip_index), desc="encode", unit="clip")
    for number, (clip_rows, frames) in enumerate(iter_shards(shards_dir, clip_index)):
        bar.update(len(clip_rows))
        video = torch.from_numpy(frames)
        latents = torch.cat([codec.encode(video[i : i + cfg.batch_size]) for i in range(0, len(video), cfg.batch_size)])
        emb = text.encode(clip_rows["caption"].tolist())
        lengths.append(emb.lengths)
        tensors = {
            "latents": latents.to(torch.float16).contiguous(),
            "tokens": emb.tokens.to(torch.float16).contiguous(),
            "mask": emb.mask.to(torch.uint8).contiguous(),
            "pooled": emb.pooled.float().contiguous(),
        }
        name, digest = encoded_shard_name(number), {}

        def write(tmp: Path, tensors=tensors, digest=digest) -> None:
            save_file(tensors, str(tmp))
            digest["sha256"] = file_sha256(tmp)  # the bytes as written, before the rename publishes them

        atomic_write(out_dir / name, write)
        rows.extend({"clip_id": cid, "shard": name, "index": i, EncodedIndex.shard_sha256: digest["sha256"]}
                    for i, cid in enumerate(clip_rows["clip_id"]))  # fmt: skip
        latent_shape, video_shape = tuple(latents.shape[1:]), tuple(frames.shape[1:])
        pooled_dim = int(emb.pooled.shape[1])

    bar.close()
    columns = ["clip_id", "shard", "index", EncodedIndex.shard_sha256]
    index = pd.DataFrame(rows, columns=columns).astype({"index": "int64"})
    index = EncodedIndex.validate(index)
    info = {
        **codec.info(),
        **({"vae_path": VAE_DIR, "learned": learned} if learned is not None else {}),
        "latent_shape": list(latent_shape),
        "video_shape": list(video_shape),  # T, H, W, C of the source clips
        "text_encoder": {
            "name": text.name,
            "max_tokens": text.max_tokens,
            "dim": text.dim,
            "pooled_dim": pooled_dim,
        },
        "captions": caption_cut_record(torch.cat(lengths), text.max_tokens),
    }
    atomic_write(out_dir / CODEC_FILE, lambda tmp: tmp.write_text(json.dumps(info, indent=2)))
    atomic_write(out_dir / ENCODED_INDEX, lambda tmp: index.to_parquet(tmp, index=False))
    write_sums(out_dir)
    seconds = time.perf_counter() - t0 - load_seconds
    log.info(
        "encoded %d clips into %d shard(s) in %.1f s (%.1f clips/s, models loaded in %.1f s); latents %s",
        len(index),
        index["shard"].nunique(),
        seconds,
        len(index) / max(seconds, 1e-9),
        load_seconds,
        latent_shape,
    )
    return index


def read_encoded_index(encoded_dir: str | Path) -> pd.DataFrame:
    """The folder's EncodedIndex, checked against its ``SHA256SUMS`` first (``lib.io.ChecksumError`` names it)."""
    path = Path(encoded_dir) / ENCODED_INDEX
    if not path.is_file():
        raise ValueError(f"{encoded_dir}: not an encoded folder (no {ENCODED_INDEX}); run the encode stage first")
    verify_sums(encoded_dir, [ENCODED_INDEX], STAGE)
    return EncodedIndex.validate(pd.read_parquet(path))


def read_codec_info(encoded_dir: str | Path) -> dict[str, Any]:
    """The ``codec.json`` written by ``encode_dataset``, checked against ``SHA256SUMS``: how to decode the cached
    latents (a learned codec's ``vae_path`` is resolved against ``encoded_dir``, where the folder lives)."""
    path = Path(encoded_dir) / CODEC_FILE
    if not path.is_file():
        raise ValueError(f"{encoded_dir}: no {CODEC_FILE}; run the encode stage first")
    verify_sums(encoded_dir, [CODEC_FILE], STAGE)
    info = json.loads(path.read_text())
    if "learned" in info:
        info["vae_path"] = str((Path(encoded_dir) / info["vae_path"]).resolve())
    return info


def load_encoded(encoded_dir: str | Path, clip_ids: list[str] | None = None) -> EncodedData:
    """Load cached latents and embeddings as float32/bool tensors.

    Args:
        encoded_dir: folder written by ``encode_dataset``.
        clip_ids: clips to load, in the order wanted; ``None`` loads all in index order.

    Returns:
        EncodedData whose rows follow ``clip_ids``.

    Raises:
        lib.io.ChecksumError: a shard file's bytes differ from the sha256 the index records (names the file).
    """
    index = read_encoded_index(encoded_dir)
    if clip_ids is None:
        clip_ids = index["clip_id"].tolist()
    clip_ids = list(clip_ids)
    if not clip_ids:
        raise ValueError(f"{encoded_dir}: load_encoded got an empty list of clip ids")
    by_id = index.set_index("clip_id")
    unknown = [c for c in clip_ids if c not in by_id.index]
    if unknown:
        raise ValueError(f"{encoded_dir}: {len(unknown)} clip id(s) not encoded, e.g. {unknown[:5]}")
    rows = by_id.loc[clip_ids].assign(position=range(len(clip_ids)))

    out: dict[str, torch.Tensor] = {}
    sums = read_sums(encoded_dir)
    for shard, sub in rows.groupby("shard", sort=True):
        path = Path(encoded_dir) / str(shard)
        verify_shard(path, sub, EncodedIndex.shard_sha256, STAGE, sums)  # before safetensors parses a byte of it
        tensors = load_file(str(path))
        take = torch.tensor(sub["index"].tolist())
        where = torch.tensor(sub["position"].tolist())
        for key in ("latents", "tokens", "mask", "pooled"):
            values = tensors[key][take]
            if key not in out:
                dtype = torch.bool if key == "mask" else torch.float32
                out[key] = torch.empty((len(clip_ids), *values.shape[1:]), dtype=dtype)
            out[key][where] = values.to(out[key].dtype)
    return EncodedData(clip_ids, out["latents"], out["tokens"], out["mask"], out["pooled"])

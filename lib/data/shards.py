"""Clip shards: uint8 video tensors in safetensors files, written in a stream.

Safetensors instead of pickles or .npy: it is safe to load from untrusted storage and memory-maps
cleanly. One shard holds up to ``shard_size`` clips as a ``[N, T, H, W, C]`` uint8 tensor; the ClipIndex
table says which shard and row hold each clip, and the sha256 of that shard file (``shard_sha256``), computed when
the file is written. Every read hashes each shard it opens once (streamed) and refuses one whose bytes changed
(``lib.io.ChecksumError`` naming the file and both digests), so a flipped bit never reaches a model as a wrong
pixel. The folder's ``SHA256SUMS`` (``lib.io``), written last, records every file, and ``read_index`` checks the
index against it. An index written before checksums loads unchecked, with one warning per folder.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from safetensors.numpy import load_file, save_file

from data_schemas.ingest import ClipIndex
from lib.io import atomic_write, file_sha256, read_sums, verify_shard, verify_sums, write_sums

INDEX_FILE = "index.parquet"
STAGE = "ingest"  # the stage that writes shards, named by the checksum errors


def shard_name(number: int) -> str:
    return f"shard-{number:05d}.safetensors"


class ShardWriter:
    """Buffer at most one shard of clips in memory and flush it atomically when full."""

    def __init__(self, out_dir: str | Path, shard_size: int, source: str):
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.shard_size = shard_size
        self.source = source
        self.rows: list[dict[str, object]] = []
        self._buffer: list[np.ndarray] = []
        self._shard = 0
        self._digests: dict[str, str] = {}  # shard file name -> sha256 of its bytes

    def add(self, clip_id: str, frames: np.ndarray, caption: str) -> None:
        if frames.dtype != np.uint8 or frames.ndim != 4:
            raise ValueError(f"clip {clip_id}: expected uint8 [T, H, W, C], got {frames.dtype} {frames.shape}")
        if self._buffer and frames.shape != self._buffer[0].shape:
            raise ValueError(f"clip {clip_id}: shape {frames.shape} differs from {self._buffer[0].shape}")
        self.rows.append(
            {
                "clip_id": clip_id,
                "shard": shard_name(self._shard),
                "index": len(self._buffer),
                "caption": caption,
                "source": self.source,
            }
        )
        self._buffer.append(frames)
        if len(self._buffer) == self.shard_size:
            self._flush()

    def _flush(self) -> None:
        if not self._buffer:
            return
        stacked, name = np.stack(self._buffer), shard_name(self._shard)

        def write(tmp: Path) -> None:
            save_file({"frames": stacked}, str(tmp))
            self._digests[name] = file_sha256(tmp)  # the bytes as written, before the rename publishes them

        atomic_write(self.out_dir / name, write)
        self._buffer = []
        self._shard += 1

    def close(self) -> pd.DataFrame:
        """Flush the last shard and write the index next to the shards, then ``SHA256SUMS``; returns the index."""
        self._flush()
        index = pd.DataFrame(self.rows, columns=["clip_id", "shard", "index", "caption", "source"])
        index["index"] = index["index"].astype("int64")
        index[ClipIndex.shard_sha256] = [self._digests[name] for name in index["shard"]]
        atomic_write(self.out_dir / INDEX_FILE, lambda tmp: index.to_parquet(tmp, index=False))
        write_sums(self.out_dir)
        return index


def read_index(shards_dir: str | Path) -> pd.DataFrame:
    """The folder's ClipIndex, checked against its ``SHA256SUMS`` first (``lib.io.ChecksumError`` names the file)."""
    verify_sums(shards_dir, [INDEX_FILE], STAGE)
    return pd.read_parquet(Path(shards_dir) / INDEX_FILE)


def load_shard(path: str | Path, rows: pd.DataFrame, sums: dict[str, str] | None) -> np.ndarray:
    """All clips of one shard, uint8 [N, T, H, W, C], after checking the file against the sha256 ``rows`` (its
    ClipIndex rows) record, which must agree with ``sums`` (the folder's ``SHA256SUMS``, None for a folder without).

    Raises:
        lib.io.ChecksumError: the file's bytes differ from the recorded digest (the message names the file).
    """
    verify_shard(Path(path), rows, ClipIndex.shard_sha256, STAGE, sums)
    return load_file(str(path))["frames"]


def iter_shards(shards_dir: str | Path, index: pd.DataFrame) -> Iterator[tuple[pd.DataFrame, np.ndarray]]:
    """Yield (index rows, frames) one shard at a time, rows in the order of the frames tensor."""
    sums = read_sums(shards_dir)
    for shard, rows in index.groupby("shard", sort=True):
        frames = load_shard(Path(shards_dir) / str(shard), rows, sums)
        rows = rows.sort_values("index")
        yield rows, frames[rows["index"].to_numpy()]


def load_clips(shards_dir: str | Path, index: pd.DataFrame, clip_ids: Sequence[str]) -> np.ndarray:
    """Frames of the given clips, in the given order: uint8 [N, T, H, W, C]."""
    rows = index.set_index("clip_id").loc[list(clip_ids)].assign(position=np.arange(len(clip_ids)))
    out, sums = None, read_sums(shards_dir)
    for shard, sub in rows.groupby("shard", sort=True):
        frames = load_shard(Path(shards_dir) / str(shard), sub, sums)
        if out is None:
            out = np.empty((len(rows),) + frames.shape[1:], dtype=np.uint8)
        out[sub["position"].to_numpy()] = frames[sub["index"].to_numpy()]
    if out is None:
        raise ValueError("load_clips: no clip ids given")
    return out

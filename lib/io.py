"""File helpers shared by every stage: atomic writes, file checksums, and copying results to a local folder or URI."""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import fsspec
import pandas as pd

log = logging.getLogger(__name__)

HASH_CHUNK = 1 << 20  # bytes read at a time when hashing a file: memory stays flat whatever the file's size
_WARNED_UNCHECKED: set[str] = set()  # folders already reported as carrying no checksums (one warning each)


class ChecksumError(ValueError):
    """A stored file whose bytes differ from the sha256 recorded when it was written: a flipped bit, a truncated or
    replaced copy. Reading on would give wrong numbers (or NaN) instead of an error, so the read stops here."""


def file_sha256(path: str | Path) -> str:
    """sha256 of a file, read in ``HASH_CHUNK`` pieces (never the whole file in memory)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(HASH_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_sha256(path: str | Path, expected: str) -> None:
    """Raise ChecksumError naming ``path``, the recorded and the found digest when the file's bytes changed."""
    found = file_sha256(path)
    if found != expected:
        raise ChecksumError(
            f"{path}: sha256 mismatch: expected {expected} (recorded when the file was written), found {found}; "
            "the file changed since (a flipped bit, a truncated or replaced copy): re-run the stage that wrote it"
        )


def verify_shard(path: Path, rows: pd.DataFrame, column: str, stage: str) -> None:
    """Check a shard file against the sha256 its index rows record in ``column``, before anything reads it.

    An index written before checksums were recorded (no ``column``, or no value for this shard) is read unchecked,
    with one warning per folder naming the stage to re-run; an index recording two digests for one file is refused.

    Args:
        path: the shard file.
        rows: the index rows of the clips it holds.
        column: the index column holding the shard's sha256.
        stage: the stage that wrote it, for the messages.
    """
    digests = rows[column].dropna().unique() if column in rows.columns else []
    if len(digests) > 1:
        raise ChecksumError(f"{path}: its index rows record {len(digests)} different sha256 ({', '.join(digests)}); "
                            f"the index is inconsistent: re-run the {stage} stage")  # fmt: skip
    if len(digests) == 1:
        verify_sha256(path, str(digests[0]))
        return
    folder = str(path.parent)
    if folder not in _WARNED_UNCHECKED:
        _WARNED_UNCHECKED.add(folder)
        log.warning("%s: its index records no sha256 of the shards (written before checksums were recorded), so "
                    "they are read unchecked; re-run the %s stage to record them", folder, stage)  # fmt: skip


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temporary file next to ``path`` and rename it into place.

    A reader (or a retried task after a crash) therefore sees either the old file or the complete new one,
    never a half-written one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def persist(local: str | Path, dest: str) -> str:
    """Copy a local file or folder to ``dest`` (a local folder or any fsspec URI); returns ``dest``."""
    local = Path(local)
    fs, root = fsspec.core.url_to_fs(dest)
    if local.is_dir():
        fs.makedirs(root, exist_ok=True)
        for src in sorted(p for p in local.rglob("*") if p.is_file()):
            target = f"{root}/{src.relative_to(local).as_posix()}"
            fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
            fs.put_file(str(src), target)
    else:
        fs.makedirs(root.rsplit("/", 1)[0], exist_ok=True)
        fs.put_file(str(local), root)
    return dest


def write_parquet(table: pd.DataFrame, dest: str) -> str:
    """Write a table to a local path or any fsspec URI (parent folders created)."""
    with fsspec.open(dest, "wb", auto_mkdir=True) as f:
        table.to_parquet(f, index=False)
    return dest

"""File helpers shared by every stage: atomic writes and copying results to a local folder or fsspec URI."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import fsspec
import pandas as pd


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

"""File helpers shared by every stage: atomic writes, file checksums, and copying results to a local folder or URI.

A folder whose files are read as numbers (ingest and encoded shards with their index, a checkpoint, a DDM folder)
carries ``SHA256SUMS``, the sha256 of every file in it in ``sha256sum`` format (``sha256sum -c SHA256SUMS`` checks it
by hand), and its readers check the files they open against it. Why: a flipped bit in a tensor, a JSON value or a
parquet page otherwise loads as a wrong number, or as NaN several stages later, instead of an error naming the file.
A flipped bit in ``SHA256SUMS`` itself is caught too: a changed digest disagrees with its file, a changed name
lists a file that is not there, anything else no longer parses.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import fsspec
import pandas as pd

log = logging.getLogger(__name__)

SUMS_FILE = "SHA256SUMS"
_SUMS_LINE = re.compile(r"([0-9a-f]{64})  (\S[^\n]*)")
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


def verify_shard(path: Path, rows: pd.DataFrame, column: str, stage: str, sums: dict[str, str] | None) -> None:
    """Check a shard file against the sha256 its index rows record in ``column``, before anything reads it.

    An index written before checksums were recorded (no ``column``, or no value for this shard) is read unchecked,
    with one warning per folder naming the stage to re-run; an index recording two digests for one file, or another
    digest than the folder's ``SHA256SUMS``, is refused.

    Args:
        path: the shard file.
        rows: the index rows of the clips it holds.
        column: the index column holding the shard's sha256.
        stage: the stage that wrote it, for the messages.
        sums: the folder's ``read_sums`` (read once by the caller for all its shards), None for a folder without.
    """
    digests = rows[column].dropna().unique() if column in rows.columns else []
    if len(digests) > 1:
        raise ChecksumError(f"{path}: its index rows record {len(digests)} different sha256 ({', '.join(digests)}); "
                            f"the index is inconsistent: re-run the {stage} stage")  # fmt: skip
    if len(digests) == 1:
        if sums is not None and sums.get(path.name) != digests[0]:
            raise ChecksumError(f"{path}: {path.parent / SUMS_FILE} records sha256 {sums.get(path.name, '(none)')}, "
                                f"its index {digests[0]}; one of them changed since the {stage} stage wrote them: "
                                "re-run it")  # fmt: skip
        verify_sha256(path, str(digests[0]))
        return
    folder = str(path.parent)
    if folder not in _WARNED_UNCHECKED:
        _WARNED_UNCHECKED.add(folder)
        log.warning("%s: its index records no sha256 of the shards (written before checksums were recorded), so "
                    "they are read unchecked; re-run the %s stage to record them", folder, stage)  # fmt: skip


def write_sums(folder: str | Path) -> Path:
    """Record the sha256 of every file under ``folder`` in ``folder/SHA256SUMS`` (written atomically, the last file
    of the folder); returns its path."""
    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p != folder / SUMS_FILE)
    lines = "".join(f"{file_sha256(p)}  {p.relative_to(folder).as_posix()}\n" for p in files)
    return atomic_write(folder / SUMS_FILE, lambda tmp: tmp.write_text(lines))


def read_sums(folder: str | Path) -> dict[str, str] | None:
    """File name (relative, posix) -> sha256 from ``folder/SHA256SUMS``; None when the folder has none.

    Raises:
        ChecksumError: the file does not parse (names it and the line).
    """
    path = Path(folder) / SUMS_FILE
    try:
        text = path.read_bytes().decode("ascii")
    except FileNotFoundError:
        return None
    except UnicodeDecodeError as exc:
        raise ChecksumError(f"{path}: not a sha256sum listing ({exc}); the file changed since it was written") from exc
    lines = text.split("\n")
    if lines[-1]:
        raise ChecksumError(f"{path}: its last line is cut ({lines[-1][:80]!r}); the file changed since it was written")
    sums = {}
    for number, line in enumerate(lines[:-1], start=1):
        match = _SUMS_LINE.fullmatch(line)
        if match is None:
            raise ChecksumError(f"{path}:{number}: not a sha256sum line ({line[:80]!r}); the file changed since it "
                                "was written")  # fmt: skip
        sums[match.group(2)] = match.group(1)
    return sums


def verify_sums(folder: str | Path, names: Iterable[str] | None, stage: str) -> None:
    """Check files of ``folder`` against its ``SHA256SUMS`` before they are read: ``names`` (relative paths), or
    every listed file when None. A folder written before checksums were recorded (no ``SHA256SUMS``) is read
    unchecked, with one warning naming the stage to re-run.

    Raises:
        ChecksumError: a file differs from its recorded digest, or is missing or unlisted (names the file and the
            listing).
    """
    folder = Path(folder)
    sums = read_sums(folder)
    if sums is None:
        if f"{folder}/{SUMS_FILE}" not in _WARNED_UNCHECKED:
            _WARNED_UNCHECKED.add(f"{folder}/{SUMS_FILE}")
            log.warning("%s: no %s (written before checksums were recorded), so it is read unchecked; re-run the %s "
                        "stage to record them", folder, SUMS_FILE, stage)  # fmt: skip
        return
    listing = folder / SUMS_FILE
    for name in sums if names is None else names:
        path = folder / name
        if name not in sums:
            raise ChecksumError(f"{path}: not listed in {listing}; one of them changed since the {stage} stage wrote "
                                "them: re-run it")  # fmt: skip
        if not path.is_file():
            raise ChecksumError(f"{path}: listed in {listing} but missing; re-run the {stage} stage")
        found = file_sha256(path)
        if found != sums[name]:
            raise ChecksumError(
                f"{path}: sha256 mismatch: {listing} records {sums[name]}, the file has {found}; one of the two "
                f"changed since it was written (a flipped bit, a truncated or replaced copy): re-run the {stage} stage"
            )


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


@contextlib.contextmanager
def exclusive(lock_file: str | Path, waiting: str = "") -> Iterator[None]:
    """Hold an advisory ``flock`` on ``lock_file`` (created if missing) for the ``with`` body: the processes that
    read, change and rewrite one local file or folder take turns instead of losing each other's update. The kernel
    drops the lock when its process dies, so a killed holder leaves none. ``waiting`` is logged when another
    process holds it."""
    lock_file = Path(lock_file)
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_file, "a+b") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if waiting:
                log.info("%s", waiting)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


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

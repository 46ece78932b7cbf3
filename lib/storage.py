"""Stage folders on an object store (``output_dir: s3://bucket/prefix``, ``gs://``, any fsspec URI), and locally.

An object store has no atomic folder rename, so a folder is *published*: its files go under a fresh attempt
prefix, ``<dest>/attempts/<attempt>/...``, and only then is ``<dest>/PUBLISHED.json`` (one object, so one atomic
PUT) written, naming that attempt and its files. Readers resolve a folder through that pointer and nothing else.
So a crash mid-upload leaves no pointer (or the previous one), and two runs publishing the same stage at once each
write a complete attempt of their own, the last pointer winning: a reader never sees a mix of two runs' files, and
an attempt, once pointed to, is never written again. Losing attempts cost storage, not correctness; each publish
prunes the losing attempts of its folder once they are older than ``STALE_ATTEMPT_S`` (by the start time in their
name), never the one the pointer names: a reader that resolved a pointer hours ago could lose files, one that
resolved it a moment ago cannot.

Every failure of the store is raised as ``StorageError`` naming the URI that failed: a bucket that does not exist,
credentials the store refuses, a write that fails half-way. ``check_output_dir`` runs before a stage does any work,
so a typo in a bucket name fails in seconds, not after an hour of training (and fsspec's ``auto_mkdir`` never gets
to create a bucket from a typo).
"""

from __future__ import annotations

import calendar
import json
import logging
import re
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import fsspec

POINTER = "PUBLISHED.json"
ATTEMPTS = "attempts"
EMPTY = ".empty"  # the one object of an attempt that published an empty folder
STALE_ATTEMPT_S = 6 * 3600.0  # an attempt (local or in a bucket) older than this that nothing points to is pruned
_ATTEMPT_PART = re.compile(rf"/{ATTEMPTS}/[0-9]{{8}}T[0-9]{{6}}-[0-9a-f]{{8}}(?=/|$)")
_checked: set[str] = set()  # output dirs found usable by this process
log = logging.getLogger(__name__)


class StorageError(OSError):
    """An output location that cannot be used; the message starts with the URI."""


def is_remote(uri: str) -> bool:
    """True for fsspec URIs other than local files (``s3://``, ``gs://``, ``memory://`` ...)."""
    return "://" in uri and not uri.startswith("file://")


def _fs(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    return fsspec.core.url_to_fs(uri)


def _explain(uri: str, exc: BaseException, doing: str) -> StorageError:
    if isinstance(exc, PermissionError):
        why = f"access refused by the store (check the credentials and their permissions): {exc}"
    elif isinstance(exc, FileNotFoundError):
        why = f"not found: {exc}"
    else:
        why = f"{type(exc).__name__}: {exc}"
    return StorageError(f"{uri}: {doing} failed: {why}")


def check_output_dir(uri: str) -> None:
    """Fail early, naming ``uri``, when its bucket does not exist or the credentials cannot write there.

    Writes and removes one small probe object; checked once per process and URI.
    """
    if not is_remote(uri) or uri in _checked:
        return
    fs, root = _fs(uri)
    bucket = root.split("/", 1)[0]
    try:
        try:
            fs.info(bucket)  # not ``exists``: s3fs answers False there when the credentials are refused
        except FileNotFoundError:
            raise StorageError(f"{uri}: bucket {bucket!r} does not exist (create it, or fix output_dir)") from None
        probe = f"{root.rstrip('/')}/.write-probe-{uuid.uuid4().hex[:8]}"
        fs.pipe_file(probe, b"")
        fs.rm_file(probe)
    except StorageError:
        raise
    except OSError as exc:
        raise _explain(uri, exc, "writing to the output location") from exc
    _checked.add(uri)


def upload_file(local: str | Path, uri: str) -> None:
    """Copy one local file to ``uri``; a failure names the destination."""
    fs, root = _fs(uri)
    try:
        fs.put_file(str(local), root)
    except OSError as exc:
        raise _explain(uri, exc, "upload") from exc


def read_text(uri: str) -> str | None:
    """The text of the file at ``uri`` (local or remote); None when there is none. Read as one whole-object GET: a
    file handle (``fs.open``) pins the object's ETag when opened and fails its read with PreconditionFailed if another
    run rewrote the object in between (a republished pointer)."""
    fs, path = _fs(uri)
    try:
        return fs.cat_file(path).decode()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise _explain(uri, exc, "reading") from exc


def write_bytes(uri: str, data: bytes) -> None:
    """One object, written whole (object stores make a single PUT atomic)."""
    fs, root = _fs(uri)
    try:
        fs.pipe_file(root, data)
    except OSError as exc:
        raise _explain(uri, exc, "write") from exc


def publish_dir(local: str | Path, dest: str) -> str:
    """Upload the files of folder ``local`` as a new attempt of ``dest`` and point ``dest`` at it (pointer last).

    Returns:
        The URI of the published attempt, which holds exactly the files of ``local``.
    """
    local, dest = Path(local), dest.rstrip("/")
    attempt = f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:8]}"
    target = f"{dest}/{ATTEMPTS}/{attempt}"
    files = {}
    for src in sorted(p for p in local.rglob("*") if p.is_file()):
        rel = src.relative_to(local).as_posix()
        upload_file(src, f"{target}/{rel}")
        files[rel] = src.stat().st_size
    if not files:  # an object store has no empty folders: one empty object makes the attempt exist
        write_bytes(f"{target}/{EMPTY}", b"")
    pointer = {"attempt": attempt, "files": files, "published_at": time.time()}
    write_bytes(f"{dest}/{POINTER}", json.dumps(pointer, indent=1).encode())
    prune_remote_attempts(dest, STALE_ATTEMPT_S)
    return target


def prune_remote_attempts(dest: str, older_than_s: float) -> int:
    """Delete the attempts of the published folder ``dest`` that the pointer does not name and that started more
    than ``older_than_s`` seconds ago (losers of concurrent publishes, runs that crashed mid-upload); returns how many.
    """
    fs, root = _fs(dest)
    root = root.rstrip("/")
    try:
        names = [p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(f"{root}/{ATTEMPTS}", detail=False)]
    except FileNotFoundError:
        return 0
    except OSError as exc:
        raise _explain(dest, exc, "listing attempts") from exc
    cutoff = time.time() - older_than_s
    stale = []
    for name in names:
        try:
            started = calendar.timegm(time.strptime(name.split("-", 1)[0], "%Y%m%dT%H%M%S"))
        except ValueError:  # not an attempt this module named: leave it alone
            continue
        if started < cutoff:
            stale.append(name)
    pointed = (_pointer(dest) or {}).get("attempt")  # read last: a pointer written meanwhile is never pruned
    stale = [n for n in stale if n != pointed]
    for name in stale:
        try:
            fs.rm(f"{root}/{ATTEMPTS}/{name}", recursive=True)
        except OSError as exc:
            raise _explain(f"{dest}/{ATTEMPTS}/{name}", exc, "pruning a stale attempt") from exc
    if stale:
        log.warning("%s: pruned %d losing attempt(s) older than %.0f h", dest, len(stale), older_than_s / 3600)
    return len(stale)


def publish_folder(local: str | Path, dest: str) -> str:
    """Put the files of ``local`` at ``dest`` as one unit, replacing what was there: on an object store a published
    attempt (``publish_dir``), on a disk a copy beside ``dest`` swapped in by renames. A reader sees the old folder or
    the new one (locally, for an instant, none), never a mix; two runs finishing at once leave one run's folder whole.
    """
    if is_remote(dest):
        return publish_dir(local, dest)
    final = Path(dest)
    final.parent.mkdir(parents=True, exist_ok=True)
    tag = f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:8]}"
    fresh, old = final.with_name(f".{final.name}.new-{tag}"), final.with_name(f".{final.name}.old-{tag}")
    shutil.copytree(local, fresh)
    try:
        final.rename(old)
    except FileNotFoundError:  # the first publication
        pass
    fresh.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    return str(final)


def _pointer(dest: str) -> dict[str, Any] | None:
    """The publication pointer of ``dest`` (``read_text``: whole, never a half-replaced one); None if unpublished."""
    text = read_text(f"{dest.rstrip('/')}/{POINTER}")
    return None if text is None else json.loads(text)


def resolve(uri: str) -> str | None:
    """The attempt URI that published folder ``uri`` (or a path inside one) stands for; None if unpublished.

    ``s3://b/p/results/ddm`` resolves through ``s3://b/p/results/PUBLISHED.json`` to
    ``s3://b/p/results/attempts/<attempt>/ddm``: users and launch plans keep stable names.
    """
    uri = uri.rstrip("/")
    scheme, _, path = uri.partition("://")
    parts = path.split("/")
    for cut in range(len(parts), 1, -1):  # the folder itself first, then its parents (never the bare bucket)
        base = f"{scheme}://{'/'.join(parts[:cut])}"
        pointer = _pointer(base)
        if pointer is not None:
            rest = "/".join(parts[cut:])
            return f"{base}/{ATTEMPTS}/{pointer['attempt']}" + (f"/{rest}" if rest else "")
    return None


def stable_uri(uri: str) -> str:
    """``uri`` without its attempt part: the identity of what was published, the same across republishing."""
    return _ATTEMPT_PART.sub("", uri)


def download_dir(uri: str, local: str | Path) -> bool:
    """Copy the folder at ``uri``, as it is, into ``local``; False when there is none."""
    fs, root = _fs(uri)
    try:
        if not fs.isdir(root):
            return False
        fs.get(root.rstrip("/") + "/", str(local), recursive=True)
    except OSError as exc:
        raise _explain(uri, exc, "download") from exc
    return True


def download_published(uri: str, local: str | Path) -> bool:
    """Copy the published folder ``uri`` (its pointed attempt) into ``local``; False when nothing is published."""
    target = resolve(uri)
    return target is not None and download_dir(target, local)


# A local folder has what an object store lacks, an atomic rename, so a local stage is published by renaming: it is
# assembled in ``<stage>/.attempts/<key>-<attempt>`` and renamed to ``<stage>/<key>``; just before the rename a mark
# ``<stage>/.published/<key>`` is written (beside the folder, so the folder holds only the stage's files). Two runs
# computing the same stage at once each fill an attempt of their own; the first rename wins and the other run reads
# the winner (same key, same inputs, so the same outputs) and drops its attempt. A stage folder without its mark (left
# by a version that wrote in place, possibly torn by a crash) is replaced. Attempts a crash left behind are pruned
# once older than ``STALE_ATTEMPT_S``.
LOCAL_ATTEMPTS = ".attempts"
MARKS = ".published"


def local_attempt(final: Path) -> Path:
    """A new, empty attempt folder for the local stage folder ``final`` (stale attempts of its stage pruned)."""
    attempts = final.parent / LOCAL_ATTEMPTS
    prune_attempts(attempts, STALE_ATTEMPT_S)
    attempt = attempts / f"{final.name}-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"
    attempt.mkdir(parents=True)
    return attempt


def attempt_root(path: Path) -> Path | None:
    """The attempt folder ``path`` lies in (or is), if any."""
    for folder in (path, *path.parents):
        if folder.parent.name == LOCAL_ATTEMPTS:
            return folder
    return None


def publish_local(attempt: Path) -> Path:
    """Rename a finished ``local_attempt`` folder to its stage folder; returns the stage folder (the winner's)."""
    final = attempt.parent.parent / attempt.name.rsplit("-", 2)[0]
    mark = final.parent / MARKS / final.name
    if final.exists() and not mark.is_file():  # written in place by an older version, maybe torn: replace it
        aside = attempt.parent / f"{attempt.name}.replaced"
        final.rename(aside)
        shutil.rmtree(aside, ignore_errors=True)
    mark.parent.mkdir(exist_ok=True)
    mark.write_text(json.dumps({"attempt": attempt.name, "published_at": time.time()}))
    try:
        attempt.rename(final)
    except OSError:  # another run published the same stage first: its folder stands, this attempt goes
        if not final.is_dir():
            raise
        shutil.rmtree(attempt, ignore_errors=True)
    return final


def prune_attempts(attempts: Path, older_than_s: float) -> int:
    """Delete attempt folders not touched for ``older_than_s`` seconds (left by crashed runs); returns how many."""
    if not attempts.is_dir():
        return 0
    cutoff = time.time() - older_than_s
    stale = []
    for folder in attempts.iterdir():
        try:
            if folder.stat().st_mtime < cutoff:
                stale.append(folder)
        except FileNotFoundError:  # published (renamed away) by another run while we looked
            continue
    for folder in stale:
        shutil.rmtree(folder, ignore_errors=True)
    if stale:
        hours = older_than_s / 3600
        log.warning("%s: pruned %d stale attempt folder(s) older than %.0f h", attempts, len(stale), hours)
    return len(stale)


# Where a task's outputs go: Flyte's local cache stores the path a task returned, and when that path is a temporary
# folder that later vanishes a cache hit hands back a missing path (a known flytekit behaviour). So a stage's outputs
# live in ``<output_dir>/stages/<stage>/<key>``, keyed by the task's inputs: locally a persistent folder published by
# a rename (``publish_local``), so a cache hit stays valid as long as the outputs are kept; with a remote
# ``output_dir`` a scratch folder laid out like that, published by ``publish_dir``, so the task returns a bucket URI.
STAGES = "stages"


def stage_folder(output_dir: str, stage: str, key: str, scratch: Path, fresh: bool = True) -> Path:
    """A folder for one task's outputs, keyed by ``key``; ``publish_path`` makes it the stage's.

    ``fresh`` (a stage that computes now): locally a new attempt folder that ``publish_path`` renames into
    ``<output_dir>/stages/<stage>/<key>`` (concurrent runs never see a torn stage); with a remote ``output_dir`` an
    emptied folder laid out like that under ``scratch`` (the task's own working folder), which ``publish_path``
    uploads (the output location checked first, ``check_output_dir``). Not ``fresh`` (training, which resumes from
    its own checkpoints and writes its model atomically): the stage folder itself.
    """
    if is_remote(output_dir):
        check_output_dir(output_dir)
        path = scratch / STAGES / stage / key
        if fresh and path.exists():
            shutil.rmtree(path)
    else:
        path = Path(output_dir.removeprefix("file://")).resolve() / STAGES / stage / key
        if fresh:
            return local_attempt(path)
    path.mkdir(parents=True, exist_ok=True)
    return path


def publish_path(output_dir: str, path: Path, scratch: Path) -> str:
    """The path or URI a task returns for ``path``, a file or folder inside a ``stage_folder`` folder.

    Locally the attempt folder ``path`` lies in is renamed into place (a path outside an attempt, a training
    stage's, is returned as it is). With a remote ``output_dir`` the stage folder is published to
    ``<output_dir>/stages/<stage>/<key>`` (``publish_dir``: a fresh attempt, the pointer last) and the URI of ``path``
    inside the published attempt is returned: downstream tasks read the bucket, and a Flyte cache hit hands back a
    URI that outlives the task's working folder ``scratch``.
    """
    if not is_remote(output_dir):
        attempt = attempt_root(path)
        return str(path if attempt is None else publish_local(attempt) / path.relative_to(attempt))
    rel = path.relative_to(scratch)
    stage_root = Path(*rel.parts[:3])  # stages/<stage>/<key>
    attempt = publish_dir(scratch / stage_root, f"{output_dir.rstrip('/')}/{stage_root.as_posix()}")
    rest = Path(*rel.parts[3:]).as_posix() if len(rel.parts) > 3 else ""
    return f"{attempt}/{rest}" if rest else attempt

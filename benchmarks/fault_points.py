"""One pipeline run as ``pyflyte run`` makes it, with fault points: the child process of ``benchmarks/faults.py``.

Every training step, checkpoint file, rename or copy into the output folder, upload to a bucket, sampling step and
feature batch of evaluation is appended to a trace file (one JSON line each, written unbuffered so it survives a
SIGKILL), and the run can SIGKILL its own process group at a chosen one of them. Why hooks rather than timers
alone: a kill at a random time lands mostly where the run spends its time (imports, training arithmetic), rarely in
the few milliseconds between a publish mark and its rename; a hook puts it exactly there. The campaign also kills
from outside at a random delay after a point, which lands anywhere.

Points are named so that a rerun recognises them: ``(kind, detail, occurrence)``, with the random parts of attempt
and temporary names left out of ``detail``. ``--reference`` gives the trace of an uninterrupted run; each point
found there carries its index in it (``ref``), and ``--kill-at N`` kills at the first point whose ``ref`` is at
least N (a rerun skips what is done, so it may never meet point N itself).

Usage (``benchmarks/faults.py`` runs it)::

    python -m benchmarks.fault_points --trace T.jsonl [--reference R.jsonl --kill-at N] --out DIR -- \
        run workflows/pipeline.py pipeline --cfg CFG
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Parts of names that differ between runs of the same pipeline: publish attempts (locally <key>-<UTC time>-<hex>, on
# an object store attempts/<time>-<hex>), mkstemp/mkdtemp names (.<name>.<8 random chars>[.tmp]), a replaced model's
# .model.old.<pid>, and stage keys (16 hex digits: a hash of the stage's inputs, which name upstream stages by path,
# so they change with the output folder; several folders of one stage are told apart by the occurrence count).
_RANDOM = [
    (re.compile(r"-\d{8}T\d{6}-[0-9a-f]{8}"), ""),
    (re.compile(r"(?<=/)\d{8}T\d{6}-[0-9a-f]{8}"), "*"),
    (re.compile(r"(/\.[^/]+?)\.[a-z0-9_]{8}(?=\.tmp|/|$)"), r"\1"),
    (re.compile(r"\.old\.\d+"), ".old"),
    (re.compile(r"(?<![0-9a-f])[0-9a-f]{16}(?![0-9a-f])"), "*"),
]
# Renames that are not the pipeline's outputs: Flyte's temp folders, its local cache, MLflow's store
_OUTSIDE = re.compile(r"(^|/)(\.flyte-tmp|\.flyte-home|mlartifacts|mlflow\.db)")


def stable(text: str) -> str:
    """``text`` (a path or URI) without its random parts, so a rerun names the same point the same way."""
    for pattern, repl in _RANDOM:
        text = pattern.sub(repl, text)
    return text


class Points:
    """The trace of this process and the kill trigger."""

    def __init__(self, trace: Path, out: str, reference: Path | None, kill_at: int | None) -> None:
        self.fd = os.open(trace, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self.out = out.rstrip("/")
        self.kill_at = kill_at
        self.seen: dict[tuple[str, str], int] = {}
        self.ref: dict[tuple[str, str, int], int] = {}
        if reference is not None:
            for i, line in enumerate(reference.read_text().splitlines()):
                p = json.loads(line)
                self.ref[(p["kind"], p["detail"], p["n"])] = i

    def relative(self, path: Any) -> str | None:
        """``path`` relative to the run's output folder (stable), or None when it lies outside it."""
        text = os.fspath(path) if not isinstance(path, str) else path
        if not text.startswith(self.out + "/"):
            return None
        rel = text[len(self.out) + 1 :]
        return None if _OUTSIDE.search(rel) else stable(rel)

    def hit(self, kind: str, detail: str) -> None:
        """Record a point; SIGKILL the process group when it is the chosen one."""
        n = self.seen.get((kind, detail), 0)
        self.seen[(kind, detail)] = n + 1
        ref = self.ref.get((kind, detail, n))
        line = {"kind": kind, "detail": detail, "n": n, "ref": ref, "t": time.time()}
        os.write(self.fd, (json.dumps(line) + "\n").encode())
        if self.kill_at is not None and ref is not None and ref >= self.kill_at:
            os.killpg(os.getpgrp(), signal.SIGKILL)


def _wrap(owner: Any, name: str, before: Callable | None = None, after: Callable | None = None) -> None:
    """Replace ``owner.name`` by a wrapper calling ``before(*args)`` / ``after(*args)`` around it."""
    real = getattr(owner, name)

    @functools.wraps(real)
    def wrapper(*args, **kwargs):
        if before is not None:
            before(*args, **kwargs)
        result = real(*args, **kwargs)
        if after is not None:
            after(*args, **kwargs)
        return result

    setattr(owner, name, wrapper)


def install(points: Points) -> None:
    """Hook the points into the modules the pipeline runs (looked up at call time, so patching the module works)."""
    from fsspec.implementations.local import LocalFileSystem

    import lib.evaluate.report
    import lib.sample.ddm
    import lib.storage
    import lib.train.checkpoint
    import lib.train.trainer

    def renamed(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:  # before: written, not yet published
        rel = points.relative(os.path.abspath(os.fspath(dst)))
        if rel is not None:
            points.hit("rename", rel)

    def uploaded(local: Any, uri: str, *args: Any) -> None:  # after: one more object of an upload is in the bucket
        rel = points.relative(uri)
        if rel is not None:
            points.hit("upload", rel)

    def wrote(uri: str, data: bytes) -> None:
        rel = points.relative(uri)
        if rel is not None:
            points.hit("upload", rel)

    def checkpoint_file(tensors: Any, path: str, *args: Any, **kwargs: Any) -> None:  # after one group file
        rel = points.relative(os.path.abspath(path))
        points.hit("ckpt", rel or stable(Path(path).name))

    def copied(fs: Any, local: Any, dest: str, *args: Any, **kwargs: Any) -> None:  # after: one file of a results copy
        rel = points.relative(os.path.abspath(dest))
        if rel is not None:
            points.hit("copy", rel)

    def step(callback: Any, row: dict) -> None:  # after the optimizer step and EMA, before any checkpoint
        points.hit("step", f"{callback.name} {int(row['step'])}")

    _wrap(os, "replace", before=renamed)
    _wrap(os, "rename", before=renamed)  # Path.rename: the publish of a local stage (after its mark)
    _wrap(lib.storage, "upload_file", after=uploaded)
    lib.train.checkpoint.upload_file = lib.storage.upload_file  # imported by name there (checkpoint mirroring)
    _wrap(lib.storage, "write_bytes", after=wrote)
    _wrap(LocalFileSystem, "put_file", after=copied)  # lib.io.persist: the local results folder, file by file
    _wrap(lib.train.checkpoint, "save_file", after=checkpoint_file)
    _wrap(lib.train.trainer.ProgressCallback, "on_step", after=step)
    _wrap(lib.sample.ddm, "mix_velocity", after=lambda *a, **k: points.hit("sample", "velocity"))
    _wrap(lib.evaluate.report, "video_features", after=lambda *a, **k: points.hit("evaluate", "features"))
    _wrap(lib.evaluate.report, "bootstrap_mean", after=lambda *a, **k: points.hit("evaluate", "bootstrap"))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trace", type=Path, required=True, help="append the points passed here (JSON lines)")
    parser.add_argument("--out", required=True, help="the run's output_dir (local path or bucket URI)")
    parser.add_argument("--reference", type=Path, help="trace of an uninterrupted run: gives points their index")
    parser.add_argument("--kill-at", type=int, help="SIGKILL the process group at the first point >= this index")
    parser.add_argument("pyflyte", nargs=argparse.REMAINDER, help="-- then pyflyte's arguments")
    args = parser.parse_args(argv)
    out = args.out if "://" in args.out else os.path.realpath(args.out)  # as stage_dir resolves it
    install(Points(args.trace, out, args.reference, args.kill_at))
    from flytekit.clis.sdk_in_container.pyflyte import main as pyflyte

    sys.argv = ["pyflyte", *[a for a in args.pyflyte if a != "--"]]
    pyflyte()


if __name__ == "__main__":
    main()

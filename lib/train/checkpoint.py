"""Training checkpoints without pickle: tensors in safetensors, everything else in JSON, published atomically.

Layout of ``<root>/step-0000100/``: one ``<group>.safetensors`` per tensor group (model, ema, optimizer, state),
``manifest.json`` and ``SHA256SUMS`` (``lib.io``: the sha256 of every other file). The folder is assembled under a
temporary name and renamed into place, so a crash leaves either no folder or a complete one;
``complete_checkpoints`` additionally ignores any folder whose manifest is missing or unreadable, so only complete
checkpoints are ever loaded. ``load_checkpoint`` checks every file against ``SHA256SUMS`` first: a flipped bit in a
weight or an optimizer moment would otherwise resume training from wrong numbers without a word. A write that fails
(a full disk) raises ``CheckpointWriteError`` naming the file and leaves the checkpoints already there untouched.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import fsspec
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from lib.io import SUMS_FILE, atomic_write, verify_sums, write_sums
from lib.storage import upload_file

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
PREFIX = "step-"
KEEP_LAST = 2  # enough to survive a crash while the newest one is written
STAGE = "train"  # named by the checksum errors


class CheckpointWriteError(OSError):
    """Writing a checkpoint failed (a full disk, a quota, an I/O error); the message names the file. The checkpoints
    written before are untouched, so a rerun resumes from the newest of them."""


def checkpoint_name(step: int) -> str:
    return f"{PREFIX}{step:07d}"


def optimizer_to_flat(state_dict: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer ``state_dict`` into safetensors-ready tensors (``state.<param>.<key>``) and JSON."""
    tensors: dict[str, torch.Tensor] = {}
    plain: dict[str, dict[str, Any]] = {}
    for index, state in state_dict["state"].items():
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f"state.{index}.{key}"] = value.detach().cpu().contiguous()
            else:
                plain.setdefault(str(index), {})[key] = value
    return tensors, {"param_groups": state_dict["param_groups"], "state": plain}


def optimizer_from_flat(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    """Inverse of ``optimizer_to_flat``."""
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        _, index, key = name.split(".", 2)
        state.setdefault(int(index), {})[key] = value
    for index, values in meta["state"].items():
        state.setdefault(int(index), {}).update(values)
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(root: Path, step: int, groups: dict[str, dict[str, torch.Tensor]], meta: dict[str, Any]) -> Path:
    """Write tensor ``groups`` and JSON ``meta`` as checkpoint ``step`` under ``root``; returns its folder.

    Raises:
        CheckpointWriteError: a file could not be written (names it; safetensors' own error on a full disk does not).
    """
    root.mkdir(parents=True, exist_ok=True)
    final = root / checkpoint_name(step)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=root))
    writing = tmp
    try:
        for group, tensors in groups.items():
            writing = tmp / f"{group}.safetensors"
            save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(writing))
        manifest = {"step": step, "groups": sorted(groups), **meta}
        writing = tmp / MANIFEST
        atomic_write(writing, lambda p: p.write_text(json.dumps(manifest, indent=1)))
        writing = tmp / SUMS_FILE
        write_sums(tmp)
        writing = final
        if final.exists():  # same step written before a crash and a resume from an earlier checkpoint
            shutil.rmtree(final)
        os.replace(tmp, final)
    except (OSError, SafetensorError) as exc:
        kept = [f.name for _, f in complete_checkpoints(root)]
        raise CheckpointWriteError(
            f"{final}: writing checkpoint step {step} failed writing {writing}: {exc}; "
            f"the checkpoints already there are kept ({', '.join(kept) or 'none'}) and a rerun resumes from the newest"
        ) from exc
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return final


def read_manifest(folder: Path) -> dict[str, Any] | None:
    """The manifest of a complete checkpoint, or None for a partial/foreign folder."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("step") is None:
        return None
    if not all((folder / f"{g}.safetensors").is_file() for g in manifest.get("groups", [])):
        return None
    return manifest


def complete_checkpoints(root: Path) -> list[tuple[int, Path]]:
    """(step, folder) of every complete checkpoint under ``root``, oldest first."""
    found = []
    for folder in root.glob(f"{PREFIX}*") if root.is_dir() else []:
        manifest = read_manifest(folder)
        if manifest is not None and folder.name == checkpoint_name(int(manifest["step"])):
            found.append((int(manifest["step"]), folder))
    return sorted(found)


def load_checkpoint(folder: Path) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, Any]]:
    """Tensor groups and manifest of a complete checkpoint folder, every file checked against its ``SHA256SUMS``.

    Raises:
        lib.io.ChecksumError: a file's bytes changed since it was written (names the file).
    """
    verify_sums(folder, None, STAGE)
    manifest = read_manifest(folder)
    if manifest is None:
        raise ValueError(f"{folder}: not a complete checkpoint (missing or unreadable {MANIFEST})")
    groups = {g: load_file(str(folder / f"{g}.safetensors")) for g in manifest["groups"]}
    return groups, manifest


def prune_checkpoints(root: Path, keep: int = KEEP_LAST) -> None:
    """Keep the ``keep`` newest complete checkpoints; drop older ones and leftovers of interrupted writes."""
    for _, folder in complete_checkpoints(root)[:-keep]:
        shutil.rmtree(folder)
    for leftover in root.glob(f".{PREFIX}*.tmp"):
        shutil.rmtree(leftover, ignore_errors=True)


def mirror_checkpoint(folder: Path, remote_root: str, keep: list[str]) -> None:
    """Copy complete checkpoint ``folder`` to ``<remote_root>/<folder name>`` and drop remote checkpoints not in
    ``keep`` (the names kept locally).

    An object store cannot rename a folder, so the manifest plays the rename's part: a stale manifest of the same
    step is deleted first and the new one is uploaded last. A copy that fails half-way therefore leaves a folder
    without a manifest, which ``complete_checkpoints`` ignores: the previous checkpoint stays the one resumed from.
    A failed upload raises ``lib.storage.StorageError`` naming the file's URI.
    """
    target = f"{remote_root.rstrip('/')}/{folder.name}"
    fs, root = fsspec.core.url_to_fs(target)
    if fs.exists(f"{root}/{MANIFEST}"):
        fs.rm_file(f"{root}/{MANIFEST}")
    for file in sorted(folder.iterdir(), key=lambda p: p.name == MANIFEST):
        upload_file(file, f"{target}/{file.name}")
    base = root.rsplit("/", 1)[0]
    for entry in fs.ls(base, detail=False):
        name = entry.rstrip("/").rsplit("/", 1)[-1]
        if name.startswith(PREFIX) and name not in keep and name != folder.name:
            fs.rm(entry, recursive=True)


def remove_checkpoints(root: Path) -> None:
    """Drop every checkpoint under ``root`` (used when they belong to a different run)."""
    for _, folder in complete_checkpoints(root):
        log.warning("removing checkpoint %s: it was written for a different run", folder)
        shutil.rmtree(folder)

"""A grown DDM: the parent's experts as they are, new experts for new clusters, a router refit over all of them.

Why the parent's experts are copied byte for byte and never retrained: decentralized training's promise is that new
data costs one new expert, not a new run. The grown folder is an ordinary DDM folder (``DDMPipeline.from_pretrained``
loads it); its ``ddm.json`` adds ``lineage``: the parent folder and its manifest's sha256, the version (parent + 1),
which experts are reused (with the parent's weight sha256, which the load-time check then enforces on the copy) and
which are new, and the numbers of the new-data placement (``lib.extend.assign``).

Optionally (``extend.continue_steps`` > 0) a parent expert whose cluster new clips joined continues from its weights
on its old and new clips (``lib.train.specs.continue_specs``) and replaces the parent's in the grown folder; the
lineage lists it under ``continued_experts`` with both weights' sha256. One that failed to train costs nothing but
its update: the parent's expert is kept unchanged (listed as reused, and under ``continue_failed``).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file

from lib.config import EncodeConfig
from lib.encode.learned import VAE_DIR
from lib.models.factory import TRAINING_INFO, weights_digest, weights_sha256
from lib.sample.folder import MANIFEST, DDMLoadError, assemble_ddm, codec_and_text

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ParentDDM:
    """What a grown DDM takes from its parent folder."""

    folder: Path
    manifest: dict[str, Any]
    manifest_sha256: str
    centroids: np.ndarray  # [K, D]
    state: dict[str, np.ndarray]  # the embedders' fitted state (visual_stats standardisation)
    clustering: dict[str, Any]  # embedders and image tower fields

    @property
    def num_experts(self) -> int:
        return int(self.manifest["num_experts"])

    @property
    def version(self) -> int:
        return int((self.manifest.get("lineage") or {}).get("version", 1))

    def expert_folders(self) -> dict[int, Path | None]:
        return {e["cluster_id"]: (self.folder / e["path"] if e["present"] else None) for e in self.manifest["experts"]}

    def present_experts(self) -> dict[int, dict[str, Any]]:
        """The manifest entries of the experts the parent holds, by cluster id."""
        return {e["cluster_id"]: e for e in self.manifest["experts"] if e["present"]}

    def start_weights(self) -> dict[int, str]:
        """Each held expert's ``weights_digest``: what a continued expert's spec names as its start."""
        return {c: weights_digest(e["weights_sha256"]) for c, e in self.present_experts().items()}

    def start_folder(self, cluster_id: int, init_sha256: str) -> Path:
        """The parent expert a continued spec starts from, refused unless its weights are the spec's start."""
        folder = self.expert_folders().get(cluster_id)
        found = weights_digest(weights_sha256(folder)) if folder is not None else None
        if found != init_sha256:
            raise DDMLoadError(
                f"{self.folder}: expert {cluster_id} ({folder}) is not the start its continued spec names "
                f"(weights digest {found}, spec {init_sha256}): the parent changed after placement"
            )
        return folder


def read_parent(folder: str | Path) -> ParentDDM:
    """Read a DDM folder as the parent of a grown one; it must carry its centroids and clustering record."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        raise DDMLoadError(f"{path}: missing (DDM manifest); the parent must be an assembled DDM folder")
    raw = path.read_bytes()
    manifest = json.loads(raw)
    clustering = manifest.get("clustering")
    if not manifest.get("centroids") or not clustering:
        raise DDMLoadError(
            f"{path}: no centroids or clustering record, so new clips cannot be placed among its clusters "
            "(a DDM assembled before the clustering record existed: assemble it again from its run)"
        )
    arrays = load_file(str(folder / manifest["centroids"]))
    missing = [name for name in ["centroids", *clustering["state"]] if name not in arrays]
    if missing:
        raise DDMLoadError(f"{folder / manifest['centroids']}: lacks {missing}")
    return ParentDDM(
        folder=folder,
        manifest=manifest,
        manifest_sha256=hashlib.sha256(raw).hexdigest(),
        centroids=arrays["centroids"],
        state={name: arrays[name] for name in clustering["state"]},
        clustering={k: v for k, v in clustering.items() if k != "state"},
    )


def check_same_codec(parent: ParentDDM, encoded_info: dict[str, Any], encode_cfg: EncodeConfig) -> None:
    """Refuse new data encoded otherwise than the parent's experts were trained: their latents would differ."""
    codec, text = codec_and_text(encoded_info, encode_cfg)
    ours, theirs = parent.manifest["codec"], codec
    diff = [k for k in sorted(set(ours) | set(theirs)) if k != "vae_path" and ours.get(k) != theirs.get(k)]
    if "learned" in ours:  # the parent carries its trained codec: the new data must come through the same weights
        same = weights_sha256(parent.folder / VAE_DIR) == weights_sha256(theirs["vae_path"])
        diff += [] if same else ["learned codec weights"]
    elif ours.get("vae_path") != theirs.get("vae_path"):
        diff.append("vae_path")
    if parent.manifest["text_encoder"] != text:
        diff.append("text_encoder")
    if diff:
        raise DDMLoadError(f"the new data is encoded otherwise than the parent DDM {parent.folder} ({', '.join(diff)})")


def grow_ddm(
    out_dir: str | Path,
    parent: ParentDDM,
    new_experts: dict[int, str | Path | None],
    router_dir: str | Path,
    encoded_info: dict[str, Any],
    centroids: np.ndarray,
    encode_cfg: EncodeConfig,
    placement: dict[str, Any],
    continued: dict[int, str | Path | None] | None = None,
) -> Path:
    """Assemble the grown DDM: parent experts 0..K-1 reused or ``continued``, ``new_experts`` K.. new, the refit
    router.

    Args:
        out_dir: the grown DDM folder (replaced whole if it exists).
        parent: ``read_parent`` of the parent folder.
        new_experts: trained folder per new cluster id K..K+n-1 (None: failed training, recorded as missing).
        router_dir: the router refit over all K + n clusters.
        encoded_info: ``codec.json`` of the new data's encoding (the parent's codec; ``check_same_codec``).
        centroids: [K + n, D], the parent's followed by the new clusters'.
        encode_cfg: the run's encode config.
        placement: ``NewClips.summary``, recorded in the lineage.
        continued: trained folder per parent cluster id whose expert continued on its joined clips (None: its
            training failed, so the parent's expert is kept unchanged); each must have started from the parent's.
    """
    k = parent.num_experts
    if sorted(new_experts) != list(range(k, k + len(new_experts))) or not new_experts:
        raise DDMLoadError(f"new experts must be keyed {k}..{k + len(new_experts) - 1}, got {sorted(new_experts)}")
    check_same_codec(parent, encoded_info, encode_cfg)
    held = parent.present_experts()
    continued = continued or {}
    if not set(continued) <= set(held):
        raise DDMLoadError(f"continued experts {sorted(continued)} must be among the parent's {sorted(held)}")
    done = {c: Path(p) for c, p in continued.items() if p is not None}
    failed = sorted(c for c, p in continued.items() if p is None)
    for c in failed:
        log.warning("extend: expert %d failed to continue; the grown DDM keeps the parent's expert unchanged", c)
    lineage = {
        "version": parent.version + 1,
        "parent": {"path": str(parent.folder), "manifest_sha256": parent.manifest_sha256, "version": parent.version},
        "reused_experts": [
            {"cluster_id": c, "weights_sha256": e["weights_sha256"]} for c, e in held.items() if c not in done
        ],
        "continued_experts": [_continued_entry(c, done[c], held[c], placement) for c in sorted(done)],
        "continue_failed": failed,
        "new_experts": sorted(new_experts),
        "placement": placement,
    }
    clustering = {**parent.clustering, "state": parent.state}
    new = {c: (Path(p) if p is not None else None) for c, p in new_experts.items()}
    experts = {**parent.expert_folders(), **done, **new}
    return assemble_ddm(out_dir, experts, router_dir, encoded_info, centroids, encode_cfg, clustering, lineage)



def _continued_entry(cluster_id: int, folder: Path, parent_entry: dict[str, Any], placement: dict[str, Any]) -> dict:
    """Lineage of one continued expert, after checking from its training record that it started from the parent's
    expert of that cluster (a model trained from elsewhere must not pass as its update)."""
    info = json.loads((folder / TRAINING_INFO).read_text())
    if info.get("init_weights_sha256") != parent_entry["weights_sha256"]:
        raise DDMLoadError(
            f"{folder}: did not start from the parent's expert {cluster_id} (started from "
            f"{info.get('init_weights_sha256')}, the parent's weights are {parent_entry['weights_sha256']})"
        )
    return {
        "cluster_id": cluster_id,
        "parent_weights_sha256": parent_entry["weights_sha256"],
        "weights_sha256": info["weights_sha256"],
        "steps": info["steps"],
        "joined_clips": placement["joined_parent_clusters"].get(str(cluster_id), 0),
    }


def grown_lines(folder: Path) -> list[str]:
    """What a run prints about a grown DDM folder: its version and experts (reused, continued, new, missing), after
    a note on any continued expert that failed."""
    manifest = json.loads((folder / MANIFEST).read_text())
    lineage = manifest["lineage"]
    lines = []
    if lineage["continue_failed"]:
        lines.append(f"extend: expert(s) {lineage['continue_failed']} failed to continue on their joined clips; the "
                     "grown DDM keeps the parent's experts there unchanged (listed as reused)")  # fmt: skip
    lines.append(f"extend: DDM version {lineage['version']} with {manifest['num_experts']} experts "
                 f"(reused {[e['cluster_id'] for e in lineage['reused_experts']]}, "
                 f"continued {[e['cluster_id'] for e in lineage['continued_experts']]}, new {lineage['new_experts']}, "
                 f"missing {manifest['missing_experts'] or 'none'}) -> {folder}")  # fmt: skip
    return lines

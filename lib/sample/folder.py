"""The DDM folder: one folder, one manifest, everything sampling needs (``DDMPipeline.from_pretrained`` loads it).

Why a folder of its own: the experts, the router, the codec and the text encoder are produced by different stages
(and the experts on different machines). ``assemble_ddm`` gathers what sampling needs into one self-describing
folder so that sampling, evaluation and a scheduled re-evaluation load the same thing with plain Python::

    ddm.json                 manifest (format_version, K, experts, codec, text encoder, router)
    experts/expert-00/       diffusers save_pretrained folders as the trainer wrote them (+ training.json)
    router/                  RouterModel save_pretrained folder
    centroids.safetensors    cluster centroids [K, E] (when given) and the embedders' fitted state, to place new data

Experts that failed training are recorded as missing and the sampler renormalises the router over the survivors.
The weights' sha256 are recorded in the manifest and checked on load, so a truncated or swapped file is refused;
``SHA256SUMS`` (``lib.io``), written last, records every file of the folder (configs, manifest, training logs,
centroids, codec) and ``DDMPipeline.from_pretrained`` checks them all first, so a flipped bit anywhere is an error
naming the file, never a changed config value or centroid.
The text encoder and a user's VAE are referenced (by name / local path), not copied: they are frozen, shared by every
model of a run and, at scale, larger than the experts. A learned codec is part of the model and is copied (``vae/``).
The monolith and a distilled student are saved the same way, one model and no router (``assemble_single``).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from lib.config import ClusterConfig, EncodeConfig
from lib.encode.learned import VAE_DIR
from lib.io import atomic_write, write_sums
from lib.models.factory import TRAINING_INFO, weights_sha256

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST = "ddm.json"
CENTROIDS = "centroids.safetensors"
ROUTER_DIR = "router"
STAGE = "assemble"  # the stage that writes DDM folders, named by the checksum errors


class DDMLoadError(ValueError):
    """A DDM folder (or one of its parts) that is incomplete, inconsistent or fails its integrity check."""


def expert_dir_name(cluster_id: int) -> str:
    return f"experts/expert-{cluster_id:02d}"


def read_json(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise DDMLoadError(f"{path}: missing ({what})")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DDMLoadError(f"{path}: not valid JSON: {exc}") from exc


def check_sha(folder: Path, expected: dict[str, str]) -> None:
    """Refuse a folder whose safetensors files differ from ``expected`` (file name -> sha256), naming each file."""
    found = weights_sha256(folder)
    bad = [
        f"{folder / name} (expected sha256 {expected.get(name, 'no entry')[:12]}..., got "
        f"{found[name][:12] + '...' if name in found else 'no file'})"
        for name in sorted(set(expected) | set(found))
        if expected.get(name) != found.get(name)
    ]
    if bad:
        raise DDMLoadError(f"weights fail their integrity check: {'; '.join(bad)}")


def expert_entry(cluster_id: int, src: Path, codec: dict[str, Any], text: dict[str, Any]) -> dict[str, Any]:
    """Manifest entry of one trained expert folder, after checking it fits the codec and the text encoder."""
    config = read_json(src / "config.json", "diffusers model config")
    info = read_json(src / TRAINING_INFO, "training record with objective and weights sha256")
    if "weights_sha256" not in info or "objective" not in info:
        raise DDMLoadError(f"{src / TRAINING_INFO}: lacks objective or weights_sha256; not written by the trainer")
    check_sha(src, info["weights_sha256"])
    channels, sample_shape = codec["latent_shape"][0], codec["latent_shape"][1:]
    if config.get("in_channels") != channels or list(info.get("sample_shape", sample_shape)) != sample_shape:
        raise DDMLoadError(
            f"{src}: expert takes {config.get('in_channels')} channels at {info.get('sample_shape')}, but the codec "
            f"gives latents {codec['latent_shape']}"
        )
    if config.get("text_dim") != text["dim"]:
        raise DDMLoadError(f"{src}: expert text_dim {config.get('text_dim')} != text encoder dim {text['dim']}")
    return {
        "cluster_id": cluster_id,
        "present": True,
        "path": expert_dir_name(cluster_id),
        "class_name": config.get("_class_name"),
        "objective": info["objective"],
        "weights_sha256": info["weights_sha256"],
    }


def router_entry(src: Path, k: int, codec: dict[str, Any], text: dict[str, Any]) -> dict[str, Any]:
    config = read_json(src / "config.json", "RouterModel config")
    want = {
        "num_clusters": k,
        "in_channels": codec["latent_shape"][0],
        "sample_shape": codec["latent_shape"][1:],
        "text_dim": text.get("pooled_dim", text["dim"]),
    }
    wrong = {key: (config.get(key), value) for key, value in want.items() if config.get(key) != value}
    if wrong:
        raise DDMLoadError(f"{src}: router does not fit this DDM (field: (router, expected)): {wrong}")
    return {"path": ROUTER_DIR, "weights_sha256": weights_sha256(src)}


def codec_and_text(encoded_info: dict[str, Any], encode_cfg: EncodeConfig) -> tuple[dict, dict]:
    """Codec and text-encoder records from ``codec.json``, checked against the encode config that made them."""
    missing = {"name", "latent_shape", "video_shape", "text_encoder"} - set(encoded_info)
    if missing:
        raise DDMLoadError(f"encoded_info (codec.json) lacks {', '.join(sorted(missing))}")
    text = dict(encoded_info["text_encoder"])
    mismatch = [
        f"{field}: codec.json {ours!r} vs encode config {theirs!r}"
        for field, ours, theirs in (
            ("codec", encoded_info["name"], "vae" if encode_cfg.codec == "learned" else encode_cfg.codec),
            ("text_encoder", text.get("name"), encode_cfg.text_encoder),
            ("max_tokens", text.get("max_tokens"), encode_cfg.max_tokens),
        )
        if ours != theirs
    ]
    if mismatch:
        raise DDMLoadError(f"the encoded data was made with another encode config ({'; '.join(mismatch)})")
    codec = {
        "name": encoded_info["name"],
        "latent_shape": list(encoded_info["latent_shape"]),
        "video_shape": list(encoded_info["video_shape"]),
        "scaling": encoded_info.get("scaling", {}),
        "vae_path": encoded_info.get("vae_path", encode_cfg.vae_path) if encoded_info["name"] == "vae" else "",
        "vae_class": encoded_info.get("vae_class", ""),
    }
    if "learned" in encoded_info:
        codec["learned"] = encoded_info["learned"]
    return codec, text


def clustering_record(cfg: ClusterConfig) -> dict[str, Any]:
    """What of the cluster config decides where a clip lands: the embedders and the image tower they may use."""
    return {"embedders": list(cfg.embedders), "image_tower_path": cfg.image_tower_path,
            "image_tower_frames": cfg.image_tower_frames}  # fmt: skip


def assemble_ddm(
    out_dir: str | Path,
    experts: dict[int, str | Path | None],
    router_dir: str | Path | None,
    encoded_info: dict[str, Any],
    centroids: np.ndarray | None,
    encode_cfg: EncodeConfig,
    clustering: dict[str, Any] | None = None,
    lineage: dict[str, Any] | None = None,
) -> Path:
    """Write a self-contained DDM folder (see module docstring); built in a temporary sibling, then renamed.

    Args:
        out_dir: folder to create; an existing one is replaced whole.
        experts: trained expert folder (the trainer's ``model/``) per cluster id 0..K-1; None for a failed expert.
        router_dir: RouterModel folder, or None (then only ``oracle`` and ``expert:<id>`` strategies can sample).
        encoded_info: the encode stage's ``codec.json`` (codec name, latent/video shape, text encoder).
        centroids: cluster centroids [K, E], saved for inspection; None to skip.
        encode_cfg: the encode config of the run; must agree with ``encoded_info``.
        clustering: how clips were placed among the clusters: ``embedders`` (+ image tower fields) in JSON and
            ``state``, the embedders' fitted arrays (the ``visual_stats`` standardisation), saved beside the
            centroids. A grown DDM places new data with them (``lib.extend``).
        lineage: where this DDM came from when it was grown from another (``lib.extend.grow``).

    Returns:
        ``out_dir``.
    """
    out_dir = Path(out_dir)
    k = len(experts)
    if sorted(experts) != list(range(k)) or k == 0:
        raise DDMLoadError(f"experts must be keyed by cluster ids 0..K-1, got {sorted(experts)}")
    if all(path is None for path in experts.values()):
        raise DDMLoadError("no expert is present: every expert failed training")
    if centroids is not None and (centroids.ndim != 2 or centroids.shape[0] != k):
        raise DDMLoadError(f"centroids must be [K={k}, E], got {centroids.shape}")
    codec, text = codec_and_text(encoded_info, encode_cfg)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        entries = []
        for cluster_id in range(k):
            src = experts[cluster_id]
            if src is None:
                entries.append({"cluster_id": cluster_id, "present": False, "path": None})
                continue
            entry = expert_entry(cluster_id, Path(src), codec, text)
            shutil.copytree(src, tmp / entry["path"])
            check_sha(tmp / entry["path"], entry["weights_sha256"])  # the copy, not only the source
            entries.append(entry)
        if "learned" in codec:  # the pipeline's own codec is part of the model: the folder carries it
            shutil.copytree(codec["vae_path"], tmp / VAE_DIR)
            codec = {**codec, "vae_path": VAE_DIR}
        router = None
        if router_dir is not None:
            router = router_entry(Path(router_dir), k, codec, text)
            shutil.copytree(router_dir, tmp / ROUTER_DIR)
        state = dict((clustering or {}).get("state", {}))
        if centroids is not None:
            arrays = {"centroids": centroids, **state}
            save_file({name: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)) for name, a in arrays.items()},
                      str(tmp / CENTROIDS))  # fmt: skip
        manifest = {
            "format_version": FORMAT_VERSION,
            "num_experts": k,
            "experts": entries,
            "missing_experts": [e["cluster_id"] for e in entries if not e["present"]],
            "router": router,
            "codec": codec,
            "text_encoder": text,
            "centroids": CENTROIDS if centroids is not None else None,
            "clustering": ({k: v for k, v in clustering.items() if k != "state"} | {"state": sorted(state)}
                           if clustering is not None and centroids is not None else None),  # fmt: skip
            "lineage": lineage,
        }
        atomic_write(tmp / MANIFEST, lambda p: p.write_text(json.dumps(manifest, indent=2)))
        write_sums(tmp)
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old.{os.getpid()}")
            os.replace(out_dir, old)
            shutil.rmtree(old)
        os.replace(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    log.info("assembled DDM with %d/%d experts at %s", k - len(manifest["missing_experts"]), k, out_dir)
    return out_dir


def assemble_single(out_dir: str | Path, model_dir: str | Path, encoded_info: dict[str, Any],
                    encode_cfg: EncodeConfig) -> Path:  # fmt: skip
    """One trained model (the monolith, a distilled student) as a K = 1 DDM folder with its own codec, so that
    ``DDMPipeline.from_pretrained`` loads it wherever the folder is moved, like the DDM beside it."""
    return assemble_ddm(out_dir, {0: model_dir}, None, encoded_info, None, encode_cfg)

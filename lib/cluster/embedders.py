"""Clip embeddings for clustering: what "semantically similar" means when the data is split among experts.

``compute_embeddings(cfg, shards_dir, clip_index, pooled_text)`` returns one float32 row per clip of
``clip_index`` (same order), and the state it fitted (the ``visual_stats`` standardisation), which the DDM folder
keeps so that new data can be placed among its clusters later. ``cluster.embedders`` names one embedder or
several; several are concatenated after each part is L2-normalised (and the whole divided by sqrt(#parts)), so every
part weighs the same in the cosine geometry the k-means uses whatever its dimension or scale, and every row has unit
norm.

Embedders:

- ``visual_stats`` (offline default, no weights): hand-made video statistics (``lib.features.visual_stats``),
  streamed shard by shard in numpy, each group standardised over the dataset.
- ``text``: the pooled caption vector from the encoded store (passed in as ``pooled_text``).
- ``image_tower``: a local DINOv2 or CLIP vision model (``cluster.image_tower_path``), the model type read
  from its ``config.json``. ``image_tower_frames`` evenly spaced frames per clip are resized (bilinear, no crop:
  clips are already centre-cropped) to the model's input size, normalised with the mean/std of
  ``preprocessor_config.json`` (ImageNet's when absent), and the per-frame features (CLS/pooler output, or
  CLIP's projected ``image_embeds``) averaged over frames. Torch-only preprocessing: no torchvision needed.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from lib.config import ClusterConfig
from lib.data.shards import iter_shards
from lib.features.visual_stats import VISUAL_GROUPS, EmbedderError, standardise_groups, visual_stats_features
from lib.progress import progress

log = logging.getLogger(__name__)

EMBEDDERS = ("visual_stats", "text", "image_tower")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_EPS = 1e-6
_DINO_TYPES = ("dinov2", "dinov2_with_registers")
_CLIP_TYPES = ("clip", "clip_vision_model")


def _positions(clip_index: pd.DataFrame) -> pd.Series:
    if clip_index.empty:
        raise EmbedderError("no clips to embed (empty clip index)")
    if clip_index["clip_id"].duplicated().any():
        dup = clip_index.loc[clip_index["clip_id"].duplicated(), "clip_id"].tolist()[:5]
        raise EmbedderError(f"clip index has duplicate clip ids, e.g. {dup}")
    return pd.Series(np.arange(len(clip_index)), index=clip_index["clip_id"].to_numpy())


def embed_visual_stats(
    shards_dir: str | Path, clip_index: pd.DataFrame, standard: dict[str, np.ndarray] | None = None
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """``visual_stats`` embedding of every clip of ``clip_index`` (rows in its order), shard by shard, and the
    standardisation it used (``standardise_groups``)."""
    where = _positions(clip_index)
    out = np.zeros((len(clip_index), sum(VISUAL_GROUPS.values())), np.float32)
    with progress(total=len(clip_index), desc="embed visual_stats", unit="clip") as bar:
        for rows, frames in iter_shards(shards_dir, clip_index):
            out[where.loc[rows["clip_id"].to_numpy()].to_numpy()] = visual_stats_features(frames)
            bar.update(len(rows))
    return standardise_groups(out, standard)


class ImageTower:
    """A frozen DINOv2 / CLIP vision model with its own torch-only preprocessing."""

    def __init__(
        self,
        model: torch.nn.Module,
        image_size: int,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        output: str,
        device: str | torch.device = "cpu",
    ):
        self.model = model.to(device).eval()
        self.image_size = image_size
        # CLIP refuses inputs whose size differs from its position table unless asked to interpolate it
        resized = image_size != int(model.config.image_size)
        self.forward_kwargs = {"interpolate_pos_encoding": True} if resized and "CLIP" in type(model).__name__ else {}
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        self.output = output  # attribute of the model output used as the feature
        self.device = torch.device(device)

    @classmethod
    def from_path(cls, path: str | Path, device: str | torch.device = "cpu") -> ImageTower:
        """Load the vision model in ``path``; the class follows ``config.json``'s model_type/architectures."""
        import transformers

        path = Path(path)
        if not path.is_dir():
            raise EmbedderError(f"{path}: image tower folder not found (expected a local DINOv2 or CLIP vision model)")
        config_file = path / "config.json"
        if not config_file.is_file():
            raise EmbedderError(f"{path}: no config.json (expected a transformers DINOv2 or CLIP vision folder)")
        config = json.loads(config_file.read_text())
        model_type, architectures = config.get("model_type", ""), config.get("architectures") or []
        if model_type in _DINO_TYPES:
            model_cls, output = transformers.AutoModel, "pooler_output"
        elif model_type in _CLIP_TYPES:
            projected = model_type == "clip" or "CLIPVisionModelWithProjection" in architectures
            model_cls = transformers.CLIPVisionModelWithProjection if projected else transformers.CLIPVisionModel
            output = "image_embeds" if projected else "pooler_output"
        else:
            raise EmbedderError(
                f"{config_file}: model_type {model_type!r} is not a supported image tower; "
                f"expected one of {', '.join(_DINO_TYPES + _CLIP_TYPES)}"
            )
        try:
            model = model_cls.from_pretrained(path, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise EmbedderError(f"{path}: cannot load {model_cls.__name__}: {exc}") from exc
        size, mean, std = _preprocessing(path, model.config)
        log.info("image tower %s from %s (input %d px, feature %s)", type(model).__name__, path, size, output)
        return cls(model, size, mean, std, output, device)

    @torch.no_grad()
    def embed_images(self, images: np.ndarray, batch_size: int) -> np.ndarray:
        """uint8 [M, H, W, 3] -> float32 [M, D] features."""
        feats = []
        for i in range(0, len(images), batch_size):
            x = torch.from_numpy(np.ascontiguousarray(images[i : i + batch_size])).permute(0, 3, 1, 2).float() / 255.0
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
            x = ((x - self.mean) / self.std).to(self.device)
            feats.append(getattr(self.model(pixel_values=x, **self.forward_kwargs), self.output).float().cpu())
        return torch.cat(feats).numpy()


def _preprocessing(path: Path, config) -> tuple[int, tuple[float, ...], tuple[float, ...]]:
    """(input size, mean, std) from preprocessor_config.json when present, else the model config + ImageNet."""
    size = int(config.image_size)
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    pre_file = path / "preprocessor_config.json"
    if pre_file.is_file():
        pre = json.loads(pre_file.read_text())
        mean = tuple(pre.get("image_mean", mean))
        std = tuple(pre.get("image_std", std))
        crop = pre.get("crop_size") if pre.get("do_center_crop", True) else None
        if isinstance(crop, dict) and "height" in crop:
            size = int(crop["height"])
        elif isinstance(crop, int):
            size = crop
    return size, mean, std


def _frame_choice(frames: int, wanted: int) -> np.ndarray:
    """Evenly spaced frame indices (all frames when wanted is 0 or >= frames)."""
    if wanted == 0 or wanted >= frames:
        return np.arange(frames)
    return np.unique(np.round(np.linspace(0, frames - 1, wanted)).astype(int))


def embed_image_tower(
    cfg: ClusterConfig, shards_dir: str | Path, clip_index: pd.DataFrame, device: str | torch.device = "cpu"
) -> np.ndarray:
    """Frame-averaged image-tower features of every clip of ``clip_index`` (rows in its order)."""
    if not cfg.image_tower_path:
        raise EmbedderError("image_tower embedder needs cluster.image_tower_path (a local DINOv2/CLIP vision folder)")
    tower = ImageTower.from_path(cfg.image_tower_path, device)
    where = _positions(clip_index)
    out: np.ndarray | None = None
    with progress(total=len(clip_index), desc="embed image_tower", unit="clip") as bar:
        for rows, frames in iter_shards(shards_dir, clip_index):
            chosen = frames[:, _frame_choice(frames.shape[1], cfg.image_tower_frames)]  # [n, k, H, W, C]
            n, k = chosen.shape[:2]
            feats = tower.embed_images(chosen.reshape(n * k, *chosen.shape[2:]), cfg.embed_batch_size)
            if out is None:
                out = np.zeros((len(clip_index), feats.shape[1]), np.float32)
            out[where.loc[rows["clip_id"].to_numpy()].to_numpy()] = feats.reshape(n, k, -1).mean(axis=1)
            bar.update(n)
    return out


def l2_normalise(x: np.ndarray) -> np.ndarray:
    return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), _EPS)).astype(np.float32)


def compute_embeddings(
    cfg: ClusterConfig,
    shards_dir: str | Path,
    clip_index: pd.DataFrame,
    pooled_text: np.ndarray | None = None,
    device: str | torch.device = "cpu",
    standard: dict[str, np.ndarray] | None = None,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Embeddings named by ``cfg.embedders`` for every clip of ``clip_index``, concatenated (module docstring).

    Args:
        cfg: cluster config (``embedders``, ``image_tower_*``, ``embed_batch_size``).
        shards_dir: clip shards (ingest output).
        clip_index: ClipIndex rows to embed; output rows follow its order.
        pooled_text: float [N, P] pooled caption vectors aligned with ``clip_index`` (needed for ``text``).
        device: where the image tower runs.
        standard: the fitted state of an earlier call (``visual_stats`` standardisation), to embed new clips in the
            same space; None fits it on these clips.

    Returns:
        float32 [N, D] with unit-norm rows, and the fitted state (empty without ``visual_stats``).
    """
    unknown = [e for e in cfg.embedders if e not in EMBEDDERS]
    if unknown:
        raise EmbedderError(f"unknown embedder(s) {unknown}; expected one of {', '.join(EMBEDDERS)}")
    if len(set(cfg.embedders)) != len(cfg.embedders):
        raise EmbedderError(f"cluster.embedders lists an embedder twice: {cfg.embedders}")
    parts, fitted = [], {}
    for name in cfg.embedders:
        if name == "visual_stats":
            part, fitted = embed_visual_stats(shards_dir, clip_index, standard or None)
        elif name == "text":
            if pooled_text is None or len(pooled_text) != len(clip_index) or np.ndim(pooled_text) != 2:
                got = "none" if pooled_text is None else str(np.shape(pooled_text))
                raise EmbedderError(f"text embedder needs pooled caption vectors [{len(clip_index)}, P], got {got}")
            part = np.asarray(pooled_text, dtype=np.float32)
        else:
            part = embed_image_tower(cfg, shards_dir, clip_index, device)
        if not np.isfinite(part).all():
            raise EmbedderError(f"{name} embedder produced non-finite values")
        parts.append(l2_normalise(part))
        log.info("embedder %s: %d x %d", name, *part.shape)
    return (np.concatenate(parts, axis=1) / math.sqrt(len(parts))).astype(np.float32), fitted

"""CLIP text-video similarity (``clip_sim``) with a CLIP model from a local folder.

Definition: for each video, the mean over its frames of cos(image_embedding(frame), text_embedding(prompt)), as a
raw cosine in [−1, 1] (not ×100 like torchmetrics' CLIPScore, and not clipped at 0): this is the scale of the
published Paris 2.0 numbers (0.2178 vs 0.2032). Per-frame cosines are averaged (rather than the cosine of the
mean frame embedding) so one bad frame lowers the score in proportion.

Preprocessing is plain torch (transformers 5's CLIP image processor needs torchvision): frames are resized with
bicubic interpolation so the shorter side equals the model's image size, centre-cropped to a square, scaled to
[0, 1] and normalised with ``image_mean``/``image_std`` from the folder's ``preprocessor_config.json`` (the standard
OpenAI CLIP constants when the file is absent). Embeddings come from ``get_image_features``/``get_text_features``,
which return a tensor in transformers 4 and a ``BaseModelOutputWithPooling`` whose ``pooler_output`` holds the
projected embedding in transformers 5; both are accepted.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers import AutoTokenizer, CLIPModel

from lib.features.batch import as_video_batch

log = logging.getLogger(__name__)

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class ClipError(ValueError):
    """A CLIP folder or input that cannot give a similarity."""


def _embedding(out: object) -> torch.Tensor:
    return out if isinstance(out, torch.Tensor) else out.pooler_output


class ClipSimilarity:
    """Frame-averaged CLIP cosine between videos and their prompts.

    Args:
        path: local folder with a transformers ``CLIPModel`` and its tokenizer (``save_pretrained`` layout).
        batch_size: frames per image-tower call.
    """

    def __init__(self, path: str | Path, batch_size: int = 64) -> None:
        path = Path(path)
        if not (path / "config.json").is_file():
            raise ClipError(f"{path}: not a CLIP model folder (config.json missing); evaluate.clip_path must be local")
        self.path = path
        self.model = CLIPModel.from_pretrained(str(path)).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(str(path))
        self.batch_size = batch_size
        self.image_size = int(self.model.config.vision_config.image_size)
        mean, std = CLIP_MEAN, CLIP_STD
        pre = path / "preprocessor_config.json"
        if pre.is_file():
            cfg = json.loads(pre.read_text())
            mean, std = tuple(cfg.get("image_mean", mean)), tuple(cfg.get("image_std", std))
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        self.max_length = int(self.model.config.text_config.max_position_embeddings)

    @property
    def extractor_id(self) -> str:
        return f"clip-{self.path.name}"

    def preprocess(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 frames [N, H, W, 3] -> normalised pixel_values [N, 3, S, S]."""
        x = frames.permute(0, 3, 1, 2).float() / 255.0
        h, w = x.shape[-2:]
        scale = self.image_size / min(h, w)
        size = (max(self.image_size, round(h * scale)), max(self.image_size, round(w * scale)))
        x = F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=scale < 1).clamp(0.0, 1.0)
        top, left = (size[0] - self.image_size) // 2, (size[1] - self.image_size) // 2
        x = x[..., top : top + self.image_size, left : left + self.image_size]
        return (x - self.mean) / self.std

    @torch.no_grad()
    def text_embeddings(self, prompts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(prompts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        return F.normalize(_embedding(self.model.get_text_features(**tokens)), dim=-1)  # [N, D]

    @torch.no_grad()
    def image_embeddings(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 frames [N, H, W, 3] -> unit-norm image embeddings [N, D], ``batch_size`` frames per call."""
        return torch.cat(
            [
                F.normalize(_embedding(self.model.get_image_features(pixel_values=self.preprocess(chunk))), dim=-1)
                for chunk in frames.split(self.batch_size)
            ]
        )

    @torch.no_grad()
    def scores(self, videos: np.ndarray | torch.Tensor, prompts: list[str]) -> np.ndarray:
        """Per-video clip_sim [N] (float64).

        Args:
            videos: uint8 [N, T, H, W, 3].
            prompts: N captions, one per video.
        """
        clips = as_video_batch(videos)
        if len(prompts) != clips.shape[0]:
            raise ClipError(f"clip_sim: {len(prompts)} prompts for {clips.shape[0]} videos")
        n, t = clips.shape[:2]
        frames = clips.reshape(n * t, *clips.shape[2:])
        image = self.image_embeddings(frames).view(n, t, -1)  # [N, T, D]
        text = self.text_embeddings(list(prompts))  # [N, D]
        return torch.einsum("ntd,nd->nt", image, text).mean(dim=1).double().numpy()

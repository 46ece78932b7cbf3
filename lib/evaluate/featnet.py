"""The offline video feature network: a small 3-D conv net trained on the run's REAL clips only.

Why it exists: without a user-supplied I3D file there is no pretrained video network offline. The built-in
dataset knows what generated each clip (scene, background, shape, colour, size, motion), so a network trained to
recover those attributes from real clips learns exactly the features that matter to this data. Its penultimate
features drive the Fréchet distance ``fd_attrnet`` (never called FVD), and its heads judge whether a generated
video shows what its prompt asked for (prompt-attribute accuracy).

It never sees generated videos, so it cannot be tuned toward any method. Attributes are those of object 1;
two-object clips make the object heads harder (object order is not visible), which the held-out accuracy shows.

Real data without attributes (manifest source) cannot train it: ``train_attrnet`` refuses with a clear error and
the caller must provide an I3D file (``eval.i3d_path``) for a Fréchet score. The planned fallback is a contrastive
objective against the caption embeddings (CLIP-style InfoNCE between the pooled video feature and the pooled text
vector); it is not implemented.
"""

from __future__ import annotations

import hashlib
import logging
import time

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import nn

from lib.data.procedural import BACKGROUNDS, COLORS, MOTIONS, SCENES, SHAPES, SIZES
from lib.evaluate.frechet import as_video_batch
from lib.seeding import derive_seed

log = logging.getLogger(__name__)

ATTRIBUTE_VOCAB: dict[str, list[str]] = {
    "scene": list(SCENES),
    "background": sorted({b for names in BACKGROUNDS.values() for b in names}),
    "shape": list(SHAPES),
    "color": list(COLORS),
    "size": list(SIZES),
    "motion": list(MOTIONS),
}


class AttributeTableError(ValueError):
    """Attribute tables that cannot train or score the network."""


class AttrNet(ModelMixin, ConfigMixin):
    """uint8 videos [B, T, H, W, 3] -> penultimate features [B, feature_dim] and one logit head per attribute.

    Args:
        vocab: attribute name -> class names (JSON-able, saved in config.json so heads decode after loading).
        channels: widths of the two per-frame convs and of the space-time convs.
        feature_dim: size of the penultimate feature vector (``num_features`` for the Fréchet distance).
    """

    @register_to_config
    def __init__(
        self,
        vocab: dict[str, list[str]] | None = None,
        channels: tuple[int, int, int] = (24, 48, 64),
        feature_dim: int = 128,
    ):
        super().__init__()
        vocab = vocab or ATTRIBUTE_VOCAB
        c1, c2, c3 = channels
        # Per-frame 2-D stem (frames folded into the batch): conv2d is far cheaper than conv3d on CPU at full size.
        self.stem = nn.Sequential(
            nn.Conv2d(3, c1, 4, stride=2, padding=1),  # [B*T, c1, H/2, W/2]
            nn.BatchNorm2d(c1),
            nn.SiLU(),
            nn.Conv2d(c1, c2, 3, stride=2, padding=1),  # [B*T, c2, H/4, W/4]
            nn.BatchNorm2d(c2),
            nn.SiLU(),
        )
        # Space-time convs on the small maps see motion (direction, speed, growth) across frames.
        self.temporal = nn.Sequential(
            nn.Conv3d(c2, c3, 3, stride=(1, 2, 2), padding=1),  # [B, c3, T, H/8, W/8]
            nn.BatchNorm3d(c3),
            nn.SiLU(),
            nn.Conv3d(c3, c3, 3, stride=(2, 1, 1), padding=1),  # [B, c3, T/2, H/8, W/8]
            nn.BatchNorm3d(c3),
            nn.SiLU(),
            # Keep a coarse 4x4x4 space-time layout instead of a global pool: where the object is in each
            # frame is what tells left from right, slow from fast and growing from shrinking.
            nn.AdaptiveAvgPool3d(4),  # [B, c3, 4, 4, 4] (identity for 8x32x32 clips)
            nn.Flatten(),  # [B, 64 c3]
            nn.Linear(64 * c3, feature_dim),
            nn.SiLU(),
        )
        self.heads = nn.ModuleDict({name: nn.Linear(feature_dim, len(classes)) for name, classes in vocab.items()})

    @property
    def num_features(self) -> int:
        return self.config.feature_dim

    @property
    def vocab(self) -> dict[str, list[str]]:
        return self.config.vocab or ATTRIBUTE_VOCAB

    def features(self, videos: torch.Tensor) -> torch.Tensor:
        x = as_video_batch(videos).to(self.device)
        b, t, h, w, _ = x.shape
        x = x.reshape(b * t, h, w, 3).permute(0, 3, 1, 2).to(self.dtype) / 127.5 - 1.0  # [B*T, 3, H, W] in [-1, 1]
        y = self.stem(x)  # [B*T, c2, H/4, W/4]
        y = y.reshape(b, t, *y.shape[1:]).transpose(1, 2)  # [B, c2, T, H/4, W/4]
        return self.temporal(y)  # [B, feature_dim]

    def forward(self, videos: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = self.features(videos)
        return {name: head(feats) for name, head in self.heads.items()}  # name -> [B, classes]


class AttrNetFeatures(nn.Module):
    """The feature module handed to the Fréchet metric: AttrNet's penultimate layer, with ``num_features``."""

    def __init__(self, model: AttrNet) -> None:
        super().__init__()
        self.model = model
        self.num_features = model.num_features

    @torch.no_grad()
    def forward(self, videos: torch.Tensor) -> torch.Tensor:
        return self.model.features(videos)


def attrnet_id(model: AttrNet) -> str:
    """``attrnet-<12 hex>``: a hash of the weights, so scores from different networks are never mixed up."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return f"attrnet-{h.hexdigest()[:12]}"


def encode_attributes(attrs: pd.DataFrame, vocab: dict[str, list[str]]) -> dict[str, torch.Tensor]:
    """Attribute table (ClipAttributes columns) -> class indices per attribute [N] (long)."""
    if len(attrs) == 0:
        raise AttributeTableError(
            "attributes: the table is empty; fd_attrnet and attribute accuracy need the generating attributes "
            "of the built-in dataset (for real videos without attributes set eval.i3d_path for FVD)"
        )
    out = {}
    for name, classes in vocab.items():
        if name not in attrs.columns:
            raise AttributeTableError(f"attributes: column {name!r} is missing (have {', '.join(attrs.columns)})")
        index = {c: i for i, c in enumerate(classes)}
        bad = sorted(set(attrs[name]) - set(index))
        if bad:
            raise AttributeTableError(f"attributes: column {name!r} holds unknown values {bad[:5]}; known: {classes}")
        out[name] = torch.tensor([index[v] for v in attrs[name]], dtype=torch.long)
    return out


def holdout_split(n: int, holdout_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded permutation split into (train indices, held-out indices), both sorted."""
    if not 0.0 < holdout_fraction < 1.0:
        raise ValueError(f"holdout_fraction must lie in (0, 1), got {holdout_fraction}")
    perm = np.random.default_rng(derive_seed(seed, "attrnet-split")).permutation(n)
    n_hold = max(1, int(round(n * holdout_fraction)))
    if n_hold >= n:
        raise ValueError(f"holdout split: {n} clips leave nothing to train on")
    return np.sort(perm[n_hold:]), np.sort(perm[:n_hold])


def train_attrnet(
    videos: np.ndarray | torch.Tensor,
    attrs: pd.DataFrame,
    steps: int = 300,
    batch_size: int = 64,
    lr: float = 3e-3,
    seed: int = 0,
    channels: tuple[int, int, int] = (24, 48, 64),
    feature_dim: int = 128,
) -> AttrNet:
    """Fit AttrNet on real clips: sum of per-attribute cross-entropies, AdamW with cosine decay.

    Deterministic given ``seed`` (initialisation and batches come from derived generators; the global RNG is
    restored afterwards).

    Args:
        videos: real clips, uint8 [N, T, H, W, 3].
        attrs: their ClipAttributes rows, aligned with ``videos``.
    """
    clips = as_video_batch(videos)
    targets = encode_attributes(attrs, ATTRIBUTE_VOCAB)
    if len(attrs) != clips.shape[0]:
        raise AttributeTableError(f"attributes: {len(attrs)} rows for {clips.shape[0]} videos")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, "attrnet-init"))
        model = AttrNet(vocab=ATTRIBUTE_VOCAB, channels=tuple(channels), feature_dim=feature_dim)
    gen = torch.Generator().manual_seed(derive_seed(seed, "attrnet-batches"))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    model.train()
    start = time.perf_counter()
    for step in range(steps):
        idx = torch.randint(0, clips.shape[0], (min(batch_size, clips.shape[0]),), generator=gen)
        logits = model(clips[idx])
        loss = sum(F.cross_entropy(logits[k], targets[k][idx]) for k in logits)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if (step + 1) % 100 == 0 or step + 1 == steps:
            log.info("attrnet step %d/%d loss %.4f (%.1fs)", step + 1, steps, loss.item(), time.perf_counter() - start)
    return model.eval()


@torch.no_grad()
def predict_attributes(model: AttrNet, videos: np.ndarray | torch.Tensor, batch_size: int = 128) -> pd.DataFrame:
    """Most likely class name per attribute for each video."""
    clips = as_video_batch(videos)
    model.eval()
    preds: dict[str, list[torch.Tensor]] = {k: [] for k in model.vocab}
    for s in range(0, clips.shape[0], batch_size):
        for k, logits in model(clips[s : s + batch_size]).items():
            preds[k].append(logits.argmax(dim=1))
    return pd.DataFrame({k: [model.vocab[k][i] for i in torch.cat(v).tolist()] for k, v in preds.items()})


def attribute_accuracy(
    model: AttrNet, videos: np.ndarray | torch.Tensor, target_attributes: pd.DataFrame, batch_size: int = 128
) -> dict[str, float]:
    """Fraction of videos whose predicted attribute matches the target (the prompt's), per attribute and ``mean``.

    Args:
        videos: uint8 [N, T, H, W, 3].
        target_attributes: N rows with the attribute columns (e.g. the prompts' ClipAttributes rows).
    """
    if len(target_attributes) != len(videos):
        raise AttributeTableError(f"attributes: {len(target_attributes)} target rows for {len(videos)} videos")
    targets = encode_attributes(target_attributes.reset_index(drop=True), model.vocab)
    pred = predict_attributes(model, videos, batch_size)
    acc = {k: float((pred[k].to_numpy() == target_attributes[k].to_numpy()).mean()) for k in targets}
    acc["mean"] = float(np.mean(list(acc.values())))
    return acc


def chance_accuracy(vocab: dict[str, list[str]] | None = None) -> dict[str, float]:
    """Accuracy of uniform guessing per attribute (for reading the accuracies against)."""
    vocab = vocab or ATTRIBUTE_VOCAB
    acc = {k: 1.0 / len(v) for k, v in vocab.items()}
    acc["mean"] = float(np.mean(list(acc.values())))
    return acc


def fit_attrnet(
    videos: np.ndarray, attrs: pd.DataFrame, steps: int, holdout_fraction: float, seed: int
) -> tuple[AttrNet, dict[str, float]]:
    """Train AttrNet on a seeded share of the real clips and measure it on the rest.

    The held-out accuracy is reported next to every ``fd_attrnet``/``attr_acc_attrnet`` score: it says how much
    the proxy metric can be trusted (a head near chance cannot judge that attribute).
    """
    train_idx, held_idx = holdout_split(len(videos), holdout_fraction, seed)
    attrs = attrs.reset_index(drop=True)
    model = train_attrnet(videos[train_idx], attrs.iloc[train_idx], steps=steps, seed=seed)
    return model, attribute_accuracy(model, videos[held_idx], attrs.iloc[held_idx])

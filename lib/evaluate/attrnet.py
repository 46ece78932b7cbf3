"""The offline video feature network: a small 3-D conv net trained on the run's REAL clips only.

Why it exists: without a user-supplied I3D file there is no pretrained video network offline. The built-in
dataset knows what generated each clip (scene, background, shape, colour, size, motion), so a network trained to
recover those attributes from real clips learns exactly the features that matter to this data. Its penultimate
features drive the Fréchet distance ``fd_attrnet`` (never called FVD), and its heads judge whether a generated
video shows what its prompt asked for (prompt-attribute accuracy).

It never sees generated videos, so it cannot be tuned toward any method. Attributes are those of object 1;
two-object clips make the object heads harder (object order is not visible), which the held-out accuracy shows.

It can say "nothing there": every object head (``OBJECT_ATTRIBUTES``) has the extra class ``ABSENT``, learnt from
negatives (``lib.evaluate.negatives``: noise, flat colour, specks, fields of coloured patches, bare or pixelated or
washed-out real clips) mixed into every batch. Without it the heads named a shape and colour for anything — uniform
noise was a "square" — so prompt-attribute accuracy rewarded junk. An ``ABSENT`` answer never matches a prompt.

Real data without attributes (manifest source) cannot train it: ``train_attrnet`` refuses with a clear error and
the caller must provide an I3D file (``evaluate.i3d_path``) for a Fréchet score. The planned fallback is a contrastive
objective against the caption embeddings (CLIP-style InfoNCE between the pooled video feature and the pooled text
vector); it is not implemented.
"""

from __future__ import annotations

import hashlib

import pandas as pd
import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import nn

from lib.data.procedural import COLORS, FAMILIES, SIZES, World
from lib.features.batch import as_video_batch

ABSENT = "none"  # the object heads' answer when the video shows no object
OBJECT_ATTRIBUTES = ("shape", "color", "size", "motion")  # heads that describe object 1, each with ABSENT
HEADLINE_ATTRIBUTES = ("color", "shape", "background", "motion")  # ``mean4``: what a prompt is mostly about
CLAIM_HEAD = "color"  # the head whose non-ABSENT answer means "an object is there" (see ``claims_object``)
IGNORE_INDEX = -100  # target of a head that must not learn from a sample (scene of a noise video)


def attribute_vocab(world: World) -> dict[str, list[str]]:
    """Class names of every head for a world of the built-in dataset (``data.num_families``)."""
    return {
        "scene": list(world.families),
        "background": sorted(world.backgrounds),
        "shape": [*world.shapes, ABSENT],
        "color": [*COLORS, ABSENT],
        "size": [*SIZES, ABSENT],
        "motion": [*world.motions, ABSENT],
    }


ATTRIBUTE_VOCAB = attribute_vocab(World())  # the default world's


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
        """Heads in ``ATTRIBUTE_VOCAB`` order: config.json stores them sorted, and reports should not reorder."""
        vocab, order = self.config.vocab or ATTRIBUTE_VOCAB, list(ATTRIBUTE_VOCAB)
        return {k: vocab[k] for k in sorted(vocab, key=lambda k: (order.index(k) if k in order else len(order), k))}

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


def vocab_for(attrs: pd.DataFrame) -> dict[str, list[str]]:
    """``ATTRIBUTE_VOCAB`` when it names every value of the table, else the vocabulary of every family: a larger world
    (``data.num_families``) brings scenes, shapes, motions and backgrounds the default heads lack, and the default
    world keeps the heads (and so the numbers) it always had."""
    if all(set(attrs[k]) <= set(classes) for k, classes in ATTRIBUTE_VOCAB.items() if k in attrs.columns):
        return ATTRIBUTE_VOCAB
    return attribute_vocab(World(len(FAMILIES)))


def encode_attributes(attrs: pd.DataFrame, vocab: dict[str, list[str]]) -> dict[str, torch.Tensor]:
    """Attribute table (ClipAttributes columns) -> class indices per attribute [N] (long).

    ``ABSENT`` is refused: a real clip or a prompt always has an object; "none" is only ever a negative's label.
    """
    if len(attrs) == 0:
        raise AttributeTableError(
            "attributes: the table is empty; fd_attrnet and attribute accuracy need the generating attributes "
            "of the built-in dataset (for real videos without attributes set evaluate.i3d_path for FVD)"
        )
    out = {}
    for name, classes in vocab.items():
        if name not in attrs.columns:
            raise AttributeTableError(f"attributes: column {name!r} is missing (have {', '.join(attrs.columns)})")
        index = {c: i for i, c in enumerate(classes) if c != ABSENT}
        bad = sorted(set(attrs[name]) - set(index))
        if bad:
            known = list(index)
            raise AttributeTableError(f"attributes: column {name!r} holds unknown values {bad[:5]}; known: {known}")
        out[name] = torch.tensor([index[v] for v in attrs[name]], dtype=torch.long)
    return out

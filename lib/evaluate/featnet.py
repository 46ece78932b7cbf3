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

from lib.data.procedural import COLORS, FAMILIES, SIZES, World
from lib.evaluate.negatives import NEGATIVE_KINDS, NOT_REAL, make_negatives
from lib.features.batch import as_video_batch
from lib.progress import progress
from lib.seeding import derive_seed

log = logging.getLogger(__name__)

ABSENT = "none"  # the object heads' answer when the video shows no object
OBJECT_ATTRIBUTES = ("shape", "color", "size", "motion")  # heads that describe object 1, each with ABSENT
HEADLINE_ATTRIBUTES = ("color", "shape", "background", "motion")  # ``mean4``: what a prompt is mostly about
CLAIM_HEAD = "color"  # the head whose non-ABSENT answer means "an object is there" (see ``claims_object``)
IGNORE_INDEX = -100  # target of a head that must not learn from a sample (scene of a noise video)
# Share of each training batch that is negatives: 0.3 puts 27 next to 64 real clips, so each of the 7 kinds shows up
# ~4 times in every batch. Measured at 400 steps on 1600 themed clips, 4 seeds: claims <= 0.02 on every kind (0.00 on
# noise, flat and specks), held-out real accuracy per attribute within 0.01 of the net without negatives (seed mean).
# The real clips keep the full ``batch_size`` (negatives come on top), so the real heads get the same signal per step
# as before, at ~40 % more compute per step.
NEGATIVE_FRACTION = 0.3
SELFTEST_PER_KIND = 64  # negatives per kind in the abstention self-test: a rate of 0.05 is 3 videos


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
            "of the built-in dataset (for real videos without attributes set eval.i3d_path for FVD)"
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


def encode_negatives(labels: pd.DataFrame, vocab: dict[str, list[str]]) -> dict[str, torch.Tensor]:
    """Targets of negatives (``make_negatives`` labels) per head [N] (long).

    Object heads learn ``ABSENT``. Scene and background heads learn the names of a real backdrop and ignore
    (``IGNORE_INDEX``) every other one: noise or a flat colour is no scene, and guessing one would only add noise.
    """
    out = {}
    for name, classes in vocab.items():
        if name in OBJECT_ATTRIBUTES:
            out[name] = torch.full((len(labels),), classes.index(ABSENT), dtype=torch.long)
        else:
            out[name] = torch.tensor(
                [IGNORE_INDEX if v == NOT_REAL else classes.index(v) for v in labels[name]], dtype=torch.long
            )
    return out


def train_attrnet(
    videos: np.ndarray | torch.Tensor,
    attrs: pd.DataFrame,
    steps: int = 300,
    batch_size: int = 64,
    lr: float = 3e-3,
    seed: int = 0,
    channels: tuple[int, int, int] = (24, 48, 64),
    feature_dim: int = 128,
    negative_fraction: float = NEGATIVE_FRACTION,
) -> AttrNet:
    """Fit AttrNet on real clips plus negatives: sum of per-head cross-entropies, AdamW with one-cycle decay.

    Each step sees ``batch_size`` real clips and as many fresh negatives as make them ``negative_fraction`` of the
    batch (``make_negatives`` with a per-step seed; pixelated and washed-out ones come from these training clips).
    Deterministic given ``seed`` (initialisation, batches and negatives come from derived generators; the global
    RNG is restored afterwards).

    Args:
        videos: real clips, uint8 [N, T, H, W, 3].
        attrs: their ClipAttributes rows, aligned with ``videos``.
        steps: optimizer steps.
        batch_size: real clips per step.
        lr: peak learning rate.
        seed: run seed; sub-seeds are derived from it.
        channels: AttrNet conv widths.
        feature_dim: AttrNet feature size.
        negative_fraction: share of each batch that is negatives, in [0, 1); 0 trains on real clips only.
    """
    clips = as_video_batch(videos)
    vocab = vocab_for(attrs)
    targets = encode_attributes(attrs, vocab)
    if len(attrs) != clips.shape[0]:
        raise AttributeTableError(f"attributes: {len(attrs)} rows for {clips.shape[0]} videos")
    if not 0.0 <= negative_fraction < 1.0:
        raise ValueError(f"negative_fraction must lie in [0, 1), got {negative_fraction}")
    real_bs = min(batch_size, clips.shape[0])
    n_neg = round(real_bs * negative_fraction / (1.0 - negative_fraction))
    real_np, real_attrs = clips.numpy(), attrs.reset_index(drop=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, "attrnet-init"))
        model = AttrNet(vocab=vocab, channels=tuple(channels), feature_dim=feature_dim)
    gen = torch.Generator().manual_seed(derive_seed(seed, "attrnet-batches"))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    model.train()
    start = time.perf_counter()
    for step in progress(range(steps), desc="AttrNet", unit="step"):
        idx = torch.randint(0, clips.shape[0], (real_bs,), generator=gen)
        x, y = clips[idx], {k: v[idx] for k, v in targets.items()}  # [B, T, H, W, 3], name -> [B]
        if n_neg:
            seed_step = derive_seed(seed, "attrnet-negatives", step)
            neg, labels = make_negatives(seed_step, n_neg, tuple(clips.shape[1:4]), real_np, real_attrs)
            neg_y = encode_negatives(labels, vocab)
            x = torch.cat([x, torch.from_numpy(neg)])  # [B + n_neg, T, H, W, 3]
            y = {k: torch.cat([y[k], neg_y[k]]) for k in y}
        logits = model(x)
        loss = sum(F.cross_entropy(logits[k], y[k], ignore_index=IGNORE_INDEX) for k in logits)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if (step + 1) % 100 == 0 or step + 1 == steps:
            log.info("attrnet step %d/%d loss %.4f (%.1fs)", step + 1, steps, loss.item(), time.perf_counter() - start)
    return model.eval()


@torch.no_grad()
def predict_attributes(model: AttrNet, videos: np.ndarray | torch.Tensor, batch_size: int = 128) -> pd.DataFrame:
    """Most likely class name per attribute for each video (object heads may answer ``ABSENT``)."""
    clips = as_video_batch(videos)
    model.eval()
    preds: dict[str, list[torch.Tensor]] = {k: [] for k in model.vocab}
    for s in range(0, clips.shape[0], batch_size):
        for k, logits in model(clips[s : s + batch_size]).items():
            preds[k].append(logits.argmax(dim=1))
    return pd.DataFrame({k: [model.vocab[k][i] for i in torch.cat(v).tolist()] for k, v in preds.items()})


def claims_object(model: AttrNet, videos: np.ndarray | torch.Tensor, batch_size: int = 128) -> np.ndarray:
    """Per video, whether the net says an object is there: its ``CLAIM_HEAD`` (colour) answers anything but ABSENT.

    One head decides, so that "claims an object" is a single yes/no per video. Colour, because it is what a person
    sees of an object first and what ``object_found`` scores. The other object heads agree with it: on the negatives
    of the measured run at most 2 % of videos had some object head answer while colour said ``ABSENT``.

    Returns:
        bool [N].
    """
    return predict_attributes(model, videos, batch_size)[CLAIM_HEAD].to_numpy() != ABSENT


def attribute_hits(
    model: AttrNet, videos: np.ndarray | torch.Tensor, target_attributes: pd.DataFrame, batch_size: int = 128
) -> pd.DataFrame:
    """Per video: does the net's answer match the target (the prompt's), per head; and is an object of a target
    colour there.

    An ``ABSENT`` answer never matches a target, so a video without a visible object scores 0 on every object
    attribute instead of a lucky guess.

    Args:
        videos: uint8 [N, T, H, W, 3].
        target_attributes: N rows with the attribute columns (e.g. the prompts' ClipAttributes rows).
        batch_size: videos per forward pass.

    Returns:
        N rows of booleans: one column per head, and ``object_found``: the ``CLAIM_HEAD`` (colour) names a colour
        the target asked for — object 1's, or object 2's (``color2``) where there is one, since the net reads one
        object and cannot tell which of two is "object 1".
    """
    if len(target_attributes) != len(videos):
        raise AttributeTableError(f"attributes: {len(target_attributes)} target rows for {len(videos)} videos")
    targets = target_attributes.reset_index(drop=True)
    encode_attributes(targets, model.vocab)  # refuses missing columns and unknown values with a clear error
    pred = predict_attributes(model, videos, batch_size)
    hits = pd.DataFrame({k: pred[k].to_numpy() == targets[k].to_numpy() for k in model.vocab})
    found = hits[CLAIM_HEAD].to_numpy()
    if "color2" in targets:
        found = found | ((pred[CLAIM_HEAD] == targets["color2"]) & (targets["color2"] != "")).to_numpy()
    hits["object_found"] = found
    return hits


def attribute_accuracy(
    model: AttrNet, videos: np.ndarray | torch.Tensor, target_attributes: pd.DataFrame, batch_size: int = 128
) -> dict[str, float]:
    """Share of videos whose predicted attribute matches the target (``attribute_hits``), with summaries.

    Args:
        videos: uint8 [N, T, H, W, 3].
        target_attributes: N rows with the attribute columns (e.g. the prompts' ClipAttributes rows).
        batch_size: videos per forward pass.

    Returns:
        per attribute (``scene``, ``background``, ``shape``, ``color``, ``size``, ``motion``); ``mean`` over all of
        them; ``mean4`` over ``HEADLINE_ATTRIBUTES``; ``object_found``.
    """
    hits = attribute_hits(model, videos, target_attributes, batch_size)
    acc = {k: float(hits[k].mean()) for k in model.vocab}
    return _with_summaries(acc, float(hits["object_found"].mean()))


def _with_summaries(per_attribute: dict[str, float], object_found: float) -> dict[str, float]:
    """One place for the summary keys, so scores and chance levels always carry the same ones."""
    return {
        **per_attribute,
        "mean": float(np.mean(list(per_attribute.values()))),
        "mean4": float(np.mean([per_attribute[k] for k in HEADLINE_ATTRIBUTES])),
        "object_found": object_found,
    }


def chance_accuracy(vocab: dict[str, list[str]] | None = None) -> dict[str, float]:
    """Accuracy of uniform guessing among the real classes (not ``ABSENT``), with the summaries of
    ``attribute_accuracy`` (``object_found`` as for one-object prompts)."""
    vocab = vocab or ATTRIBUTE_VOCAB
    chance = {k: 1.0 / len([c for c in v if c != ABSENT]) for k, v in vocab.items()}
    return _with_summaries(chance, chance[CLAIM_HEAD])


def abstention_rates(
    model: AttrNet,
    real_videos: np.ndarray | torch.Tensor,
    real_attrs: pd.DataFrame,
    seed: int,
    per_kind: int = SELFTEST_PER_KIND,
) -> dict[str, float]:
    """The abstention self-test: how often the net claims an object (``claims_object``) where there is none.

    Args:
        real_videos: uint8 [N, T, H, W, 3] real clips the net was not trained on (the pixelated and washed-out
            negatives are made from them); also scored for false absences.
        real_attrs: their attribute rows.
        seed: seed of the negatives; use one the training negatives did not come from.
        per_kind: negatives per kind.

    Returns:
        ``claims.<kind>`` for every kind in ``NEGATIVE_KINDS`` (0 is perfect), and ``false_absent``: the share of
        the real clips in which the net claims no object (0 is perfect).
    """
    real_videos = as_video_batch(real_videos).numpy()
    rates = {}
    for kind in NEGATIVE_KINDS:
        negatives, _ = make_negatives(
            derive_seed(seed, kind), per_kind, tuple(real_videos.shape[1:4]), real_videos, real_attrs, kinds=(kind,)
        )
        rates[f"claims.{kind}"] = float(claims_object(model, negatives).mean())
    rates["false_absent"] = float(1.0 - claims_object(model, real_videos).mean())
    return rates


def fit_attrnet(
    train_videos: np.ndarray,
    train_attrs: pd.DataFrame,
    val_videos: np.ndarray,
    val_attrs: pd.DataFrame,
    steps: int,
    seed: int,
    batch_size: int = 64,
    negative_fraction: float = NEGATIVE_FRACTION,
    channels: tuple[int, int, int] = (24, 48, 64),
    feature_dim: int = 128,
) -> tuple[AttrNet, dict[str, float]]:
    """Train AttrNet on the caller's training clips and measure it on its validation clips.

    The numbers are reported next to every ``fd_attrnet``/``attr_acc_attrnet`` score: they say how much the proxy
    metric can be trusted (a head near chance cannot judge that attribute; a net that claims objects in noise
    rewards junk).

    Args:
        train_videos: uint8 [N, T, H, W, 3] real training clips.
        train_attrs: their ClipAttributes rows.
        val_videos: uint8 [M, T, H, W, 3] real validation clips, disjoint from the training clips.
        val_attrs: their ClipAttributes rows.
        steps: optimizer steps.
        seed: run seed; training and self-test negatives come from different derived seeds.
        batch_size: real clips per step.
        negative_fraction: share of each batch that is negatives.
        channels: AttrNet conv widths.
        feature_dim: AttrNet feature size.

    Returns:
        The net, and its held-out numbers: ``attribute_accuracy`` on the validation clips (per attribute, ``mean``,
        ``mean4``, ``object_found``) and the ``abstention_rates`` (``claims.<kind>``, ``false_absent``).
    """
    if len(val_videos) == 0:
        raise AttributeTableError("fit_attrnet: no validation clips; its accuracy and self-test need held-out clips")
    model = train_attrnet(
        train_videos, train_attrs, steps=steps, batch_size=batch_size, seed=seed, channels=channels,
        feature_dim=feature_dim, negative_fraction=negative_fraction,
    )  # fmt: skip
    stats = attribute_accuracy(model, val_videos, val_attrs)
    stats.update(abstention_rates(model, val_videos, val_attrs, derive_seed(seed, "attrnet-selftest")))
    return model, stats


def featnet_note(stats: dict[str, float], vocab: dict[str, list[str]] | None = None) -> str:
    """One line for logs and reports: held-out accuracy against chance (among ``vocab``'s classes, the net's own:
    ``AttrNet.vocab``), then the abstention self-test."""
    chance = chance_accuracy(vocab)
    accuracy = ", ".join(f"{k} {v:.2f} ({chance[k]:.2f})" for k, v in stats.items() if k in chance)
    claims = ", ".join(f"{k.split('.', 1)[1]} {v:.2f}" for k, v in stats.items() if k.startswith("claims."))
    return (
        f"AttrNet held-out accuracy (chance): {accuracy}; claims an object in: {claims}; "
        f"misses the object in real clips: {stats['false_absent']:.2f}"
    )

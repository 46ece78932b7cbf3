"""The run configuration: one typed dataclass tree, filled in by YAML files under ``configs/``.

Every stage takes the whole tree or its own subtree. The tree is a plain (frozen) dataclass so that
flytekit can pass it as a workflow input, and so that its JSON form is a stable cache key: changing
one field only invalidates the tasks that take the subtree holding it.

Validation happens in ``__post_init__`` so that a bad value is refused wherever a config is built
(YAML, ``pyflyte run --cfg '{json}'``, tests), with the dotted name of the field in the message.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import logging
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from data_schemas.ingest import DEFAULT_FAMILIES, DEFAULT_SCENES, FAMILY_NAMES, MANIFEST_COLUMNS
from lib.strategy import parse_schedule

log = logging.getLogger(__name__)


class ConfigError(ValueError):
    """A config file or value that cannot describe a run."""


def _check(ok: bool, where: str, msg: str) -> None:
    if not ok:
        raise ConfigError(f"{where}: {msg}")


def _one_of(value: str, allowed: tuple[str, ...], where: str) -> None:
    _check(value in allowed, where, f"{value!r} is not one of {', '.join(allowed)}")


ADDED_LATER = "added_later"  # field metadata key, set by ``added_later``


def added_later(default: Any) -> Any:
    """A config field added after results were cached under keys of its section (a dataset, a trained model).

    ``key_values`` leaves it out while it holds ``default``, so every key computed before the field existed keeps its
    value and nothing cached is rebuilt; set to anything else, it joins the key like any field.
    """
    return field(default=default, metadata={ADDED_LATER: True})


KEY_NAME = "key_name"  # field metadata: the name a renamed field goes by in cache keys (so they do not move)


def key_values(obj: Any) -> dict[str, Any]:
    """``dataclasses.asdict(obj)`` without the ``added_later`` fields (of ``obj`` and of the dataclasses inside it)
    that hold their default: what a cache key hashes."""
    values = dataclasses.asdict(obj)
    _drop_later_defaults(obj, values)
    return values


def _drop_later_defaults(obj: Any, values: dict[str, Any]) -> None:
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if f.metadata.get(ADDED_LATER) and value == f.default:
            del values[f.name]
        elif dataclasses.is_dataclass(value):
            _drop_later_defaults(value, values[f.name])
        if KEY_NAME in f.metadata and f.name in values:  # a renamed field keeps the name its keys were made with
            values[f.metadata[KEY_NAME]] = values.pop(f.name)


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return key_values(value)
    return str(value)


def input_key(*parts: Any) -> str:
    """A short stable hash of a task's inputs (dataclasses by value, without the ``added_later`` fields that hold their
    default; everything else by str): it names the task's stage folder and a model's run."""
    text = json.dumps(parts, sort_keys=True, default=_jsonable)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class DataConfig:
    source: str = "builtin"  # "builtin" (procedural), "manifest" (CSV/Parquet of videos) or "webdataset" (tars)
    manifest: str = ""  # path or fsspec URI of the manifest when source == "manifest"
    # source == "raw": long videos cut into scenes (lib.data.raw): a folder, a glob or a CSV/Parquet manifest
    # (path, optional caption and clip_id columns), local or fsspec URI; captions from the manifest or sidecars
    raw: str = ""
    # tar shards when source == "webdataset": local paths or fsspec URIs, brace patterns, "::" between patterns
    webdataset: str = ""
    # project column -> the user's column (manifests) or JSON key (WebDataset samples), e.g. WebVid's
    # {caption: name, path: contentUrl, clip_id: videoid}; Open-Sora's names (text) need none (lib.data.columns)
    columns: dict[str, str] = field(default_factory=dict)
    num_clips: int = 1200  # built-in dataset size
    frames: int = 8  # T, frames per clip
    height: int = 32  # H after resize + centre crop
    width: int = 32  # W after resize + centre crop
    fps: float = 8.0  # frame rate clips are resampled to (manifest videos)
    # a source slower than fps fills its clip by repeating frames (sample-and-hold; counted in the ingest report);
    # true quarantines such clips instead (reason held_frames)
    quarantine_held_frames: bool = False
    max_objects: int = 2  # built-in clips hold 1..max_objects objects
    themed_scenes: bool = False  # built-in: each scene family has its own shapes and motions (lib.data.procedural)
    # built-in: the scene families drawn from, of the first num_families of FAMILY_NAMES; []: all
    scenes: list[str] = field(default_factory=lambda: list(DEFAULT_SCENES))
    # built-in: the world's scene families, the first 4..8 of FAMILY_NAMES; what they own is the vocabulary
    num_families: int = added_later(DEFAULT_FAMILIES)
    # built-in: share of shape, motion and background draws from the pool the families share; the rest come from what
    # the clip's family owns alone (0: families with disjoint shapes, motions and backgrounds; 1: as before the knob)
    family_overlap: float = added_later(1.0)
    shard_size: int = 256  # clips per shard file
    max_bad_fraction: float = 0.1  # ingest fails when more than this fraction of manifest rows is quarantined
    max_source_pixels: int = 4096 * 4096  # frames larger than this are quarantined (decode bomb guard)
    # held-out roles (lib.data.split): fractions of clips, by a hash of (seed, clip id); the rest trains
    validation_fraction: float = 0.05  # feature-net accuracy, held-out losses, tuning sweeps
    reference_fraction: float = 0.15  # real statistics of the distances
    prompt_fraction: float = 0.15  # prompts to generate from; their clips are the ``real`` method
    # scene cutting (source == "raw", lib.data.scenes): PySceneDetect over the PyAV backend
    scene_detector: str = "content"  # "content" (HSV/edge change vs a fixed threshold) or "adaptive" (vs its window)
    scene_threshold: float = 27.0  # content: ContentDetector threshold; adaptive: AdaptiveDetector ratio (e.g. 3)
    scene_detect_width: int = 256  # frames are downscaled to about this width for detection (cost, not accuracy)
    min_scene_seconds: float = 0.5  # the detector's minimum scene length; shorter scenes are quarantined
    max_scene_seconds: float = 60.0  # longer scenes are windowed as consecutive pieces of at most this length
    windows_per_scene: int = 1  # clip windows (data.frames at data.fps) per scene piece, evenly spaced, disjoint
    # quality filters (lib.data.filters), on every decoded manifest/raw clip; a filtered clip is a FilteredClip row
    min_motion: float = 0.0  # mean Farneback flow, pixels per frame at HxW and data.fps; 0: no lower bound
    max_motion: float = 0.0  # 0: no upper bound (a clip across a missed cut scores high)
    min_aesthetic: float = 0.0  # LAION aesthetic score (about 1..10); 0: off; needs aesthetic_path
    aesthetic_path: str = ""  # local LAION aesthetic-predictor head (.pth/.safetensors) on CLIP ViT-L/14 embeddings
    aesthetic_clip_path: str = ""  # local CLIP folder whose image embeddings the head scores (as evaluate.clip_path)

    def __post_init__(self) -> None:
        _one_of(self.source, ("builtin", "manifest", "webdataset", "raw"), "data.source")
        _check(self.source != "raw" or bool(self.raw), "data.raw", "required when source=raw")
        _check(self.source != "manifest" or bool(self.manifest), "data.manifest", "required when source=manifest")
        ok = self.source != "webdataset" or bool(self.webdataset)
        _check(ok, "data.webdataset", "required when source=webdataset")
        _check(isinstance(self.columns, dict), "data.columns", f"expected a mapping, got {self.columns!r}")
        for project, user in self.columns.items():
            _one_of(project, MANIFEST_COLUMNS, "data.columns")
            _check(isinstance(user, str) and bool(user), f"data.columns.{project}", f"expected a name, got {user!r}")
        used = list(self.columns.values())
        _check(len(set(used)) == len(used), "data.columns", f"one user column per project column, got {used}")
        for name in ("num_clips", "frames", "height", "width", "shard_size", "max_source_pixels"):
            _check(getattr(self, name) > 0, f"data.{name}", f"must be > 0, got {getattr(self, name)}")
        _check(self.fps > 0, "data.fps", f"must be > 0, got {self.fps}")
        _check(1 <= self.max_objects <= 2, "data.max_objects", f"must be 1 or 2, got {self.max_objects}")
        lo, hi, n = DEFAULT_FAMILIES, len(FAMILY_NAMES), self.num_families
        _check(lo <= n <= hi, "data.num_families", f"must lie in [{lo}, {hi}], got {n} (fewer families: data.scenes)")
        overlap = self.family_overlap
        _check(0.0 <= overlap <= 1.0, "data.family_overlap", f"must lie in [0, 1], got {overlap}")
        world = FAMILY_NAMES[:n]
        for scene in self.scenes:
            _one_of(scene, world, "data.scenes")
        _check(len(set(self.scenes)) == len(self.scenes), "data.scenes", f"distinct families of {world}")
        _check(self.num_families == DEFAULT_FAMILIES or self.scenes != list(DEFAULT_SCENES), "data.scenes",
               f"still the {DEFAULT_FAMILIES} default families while data.num_families={self.num_families}: "
               "list the families to draw from, or [] for all of them")  # fmt: skip
        _check(0.0 <= self.max_bad_fraction <= 1.0, "data.max_bad_fraction", "must lie in [0, 1]")
        for name in ("validation_fraction", "reference_fraction", "prompt_fraction"):
            _check(0.0 < getattr(self, name) < 1.0, f"data.{name}", f"must lie in (0, 1), got {getattr(self, name)}")
        held = self.validation_fraction + self.reference_fraction + self.prompt_fraction
        _check(held < 0.9, "data.prompt_fraction", f"held-out fractions sum to {held:.2f}; keep >= 0.1 for training")
        _one_of(self.scene_detector, ("content", "adaptive"), "data.scene_detector")
        for name in ("scene_threshold", "scene_detect_width", "max_scene_seconds", "windows_per_scene"):
            _check(getattr(self, name) > 0, f"data.{name}", f"must be > 0, got {getattr(self, name)}")
        _check(self.min_scene_seconds >= 0, "data.min_scene_seconds", f"must be >= 0, got {self.min_scene_seconds}")
        clip = self.frames / self.fps
        _check(self.max_scene_seconds >= clip, "data.max_scene_seconds",
               f"{self.max_scene_seconds} s is shorter than one clip (data.frames / data.fps: {clip:g} s)")  # fmt: skip
        for name in ("min_motion", "max_motion", "min_aesthetic"):
            _check(getattr(self, name) >= 0, f"data.{name}", f"must be >= 0 (0: off), got {getattr(self, name)}")
        _check(self.max_motion == 0 or self.max_motion > self.min_motion, "data.max_motion",
               f"{self.max_motion} must be above data.min_motion ({self.min_motion}) or 0 (off)")  # fmt: skip
        _check(self.min_aesthetic == 0 or bool(self.aesthetic_path), "data.aesthetic_path",
               "required when data.min_aesthetic > 0")  # fmt: skip
        _check(not self.aesthetic_path or bool(self.aesthetic_clip_path), "data.aesthetic_clip_path",
               "required with data.aesthetic_path (the CLIP ViT-L/14 folder the head was trained on)")  # fmt: skip


@dataclass(frozen=True)
class EncodeConfig:
    text_encoder: str = "minilm"  # "minilm" (bundled all-MiniLM-L6-v2) or a local folder of a CLIP/T5 text tower
    # caption tokens kept for cross-attention (longer captions lose their last words; the encode stage counts them):
    # the longest built-in caption is 35 MiniLM tokens ([CLS] and [SEP] included), rounded up to a multiple of 8
    max_tokens: int = 40
    codec: str = "pixel"  # "pixel" (identity), "vae" (diffusers VAE from vae_path) or "learned" (trained: codec.*)
    vae_path: str = ""  # local folder of a diffusers AutoencoderKL / video VAE
    batch_size: int = 64

    def __post_init__(self) -> None:
        _one_of(self.codec, ("pixel", "vae", "learned"), "encode.codec")
        _check(self.codec != "vae" or bool(self.vae_path), "encode.vae_path", "required when codec=vae")
        _check(self.max_tokens > 0, "encode.max_tokens", "must be > 0")
        _check(self.batch_size > 0, "encode.batch_size", "must be > 0")


@dataclass(frozen=True)
class CodecConfig:
    """The per-frame AutoencoderKL the pipeline trains on the train clips when ``encode.codec: learned``."""

    latent_channels: int = 4
    block_out_channels: list[int] = field(default_factory=lambda: [32, 64, 64])  # 2^(n-1) down: 32x32 -> 8x8
    layers_per_block: int = 1
    norm_num_groups: int = 32
    kl_weight: float = 1e-5  # per latent element, against the per-pixel L1 reconstruction loss
    steps: int = 1500
    batch_size: int = 32  # frames per step
    lr: float = 2e-3
    warmup_steps: int = 50

    def __post_init__(self) -> None:
        _check(self.latent_channels > 0, "codec.latent_channels", "must be > 0")
        _check(len(self.block_out_channels) >= 1, "codec.block_out_channels", "needs at least one block")
        for c in self.block_out_channels:
            _check(c > 0 and c % self.norm_num_groups == 0, "codec.block_out_channels",
                   f"{c} must be a positive multiple of codec.norm_num_groups ({self.norm_num_groups})")  # fmt: skip
        for name in ("layers_per_block", "steps", "batch_size", "norm_num_groups"):
            _check(getattr(self, name) > 0, f"codec.{name}", f"must be > 0, got {getattr(self, name)}")
        _check(self.kl_weight >= 0, "codec.kl_weight", "must be >= 0")
        _check(self.lr > 0, "codec.lr", "must be > 0")
        _check(self.warmup_steps >= 0, "codec.warmup_steps", "must be >= 0")


@dataclass(frozen=True)
class ClusterConfig:
    embedders: list[str] = field(default_factory=lambda: ["visual_stats"])  # visual_stats | text | image_tower
    image_tower_path: str = ""  # local DINOv2/CLIP vision folder for the "image_tower" embedder
    image_tower_frames: int = 4  # frames per clip (evenly spaced) fed to the image tower; 0: all frames
    embed_batch_size: int = 64  # images per image-tower forward pass
    num_clusters: int = 3  # K, the number of experts
    fine_clusters: int = 32  # first-stage spherical k-means centroids
    method: str = "two_stage"  # two_stage | kmeans | balanced
    niter: int = 25
    silhouette_sample: int = 2000
    balance_rounds: int = 10  # method=balanced: max rounds of size-capped reassignment + centroid update

    def __post_init__(self) -> None:
        _check(len(self.embedders) > 0, "cluster.embedders", "needs at least one embedder")
        for e in self.embedders:
            _one_of(e, ("visual_stats", "text", "image_tower"), "cluster.embedders")
        _one_of(self.method, ("two_stage", "kmeans", "balanced"), "cluster.method")
        _check(self.num_clusters >= 1, "cluster.num_clusters", f"must be >= 1, got {self.num_clusters}")
        _check(
            self.fine_clusters >= self.num_clusters,
            "cluster.fine_clusters",
            f"must be >= num_clusters ({self.num_clusters}), got {self.fine_clusters}",
        )
        _check(self.niter > 0, "cluster.niter", "must be > 0")
        ok = "image_tower" not in self.embedders or bool(self.image_tower_path)
        _check(ok, "cluster.image_tower_path", "required when cluster.embedders has image_tower")
        _check(self.image_tower_frames >= 0, "cluster.image_tower_frames", "must be >= 0")
        _check(self.embed_batch_size > 0, "cluster.embed_batch_size", "must be > 0")
        _check(self.balance_rounds > 0, "cluster.balance_rounds", "must be > 0")
        _check(self.silhouette_sample > 1, "cluster.silhouette_sample", "must be > 1")


# "auto": compile on CUDA, and on the CPU for runs long enough to win back the compile (lib.models.levers); words,
# not on/off: YAML 1.1 reads on/off/yes/no as booleans
COMPILE_MODES = ("auto", "always", "never")
# ExpertConfig fields that change how a model trains, not what it computes (up to float rounding): a run may be
# resumed, and a finished model reused, with other values (e.g. a retry on another GPU type with another micro-batch)
RUN_ONLY_FIELDS = (
    "checkpoint_every", "log_every", "micro_batch", "compile", "precision", "activation_checkpointing"
)  # fmt: skip
PRECISIONS = ("auto", "fp32", "bf16")  # bf16: autocast of the forward pass; weights and optimizer stay fp32


@dataclass(frozen=True)
class ExpertConfig:
    model: str = "wan"  # diffusers video transformer family built by lib.models.factory
    num_layers: int = 4
    num_heads: int = 4  # with head_dim 32 and ffn_dim 512: ~1.3M parameters at text_dim 384
    head_dim: int = 32
    ffn_dim: int = 512
    patch_size: list[int] = field(default_factory=lambda: [2, 4, 4])  # (t, h, w)
    objective: str = "flow"  # flow (v = eps - x0) | eps (DDPM-style, converted to v at sampling)
    steps: int = 300  # optimizer steps per expert
    batch_size: int = 16  # effective batch per optimizer step (of each expert)
    # how the monolith spends the K experts' compute: "steps" = K x steps at the same batch; "batch" = the same
    # steps at K x batch (what the experts' K GPUs would run as one data-parallel job in the same wall-clock)
    monolith_scaling: str = "steps"
    # how the K experts share their K x steps: "equal" (each expert.steps) or "by_size" (in proportion to each
    # cluster's train clips, at least 1, summing exactly to K x steps: every train clip gets the same share of samples)
    budget_split: str = "equal"
    # the monolith's learning rate is lr x this (a fairness control: sqrt(K) ~ 1.73 asks whether a DDM gain comes from
    # an under-tuned monolith, whose K x larger batch would take a larger step); the experts' lr is untouched
    monolith_lr_scale: float = 1.0
    # branch-train-merge: a seed model (the monolith's network and batch) trains on all train clips for this fraction
    # of the monolith's budget, then every expert starts from it and trains apart with the rest, the total matched;
    # 0 is the plain recipe (experts from scratch)
    seed_fraction: float = 0.0
    micro_batch: int = 0  # 0: pick from free memory; >0 forces it
    lr: float = 5e-4
    warmup_steps: int = 20
    lr_schedule: str = "constant"  # after warm-up: constant | cosine (down to 10% of lr at the last step)
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.99
    caption_dropout: float = 0.1
    timestep_sampling: str = "logit_normal"  # logit_normal | uniform
    checkpoint_every: int = 100
    log_every: int = 25
    # how the model runs, not what it computes (RUN_ONLY_FIELDS): throughput levers
    compile: str = "auto"  # torch.compile of each transformer block: auto | always | never (lib.models.levers)
    precision: str = "auto"  # forward pass: auto (bf16 on CUDA and on compiled AMX CPUs) | fp32 | bf16
    activation_checkpointing: bool = False  # recompute block activations in backward: larger micro-batches fit

    def __post_init__(self) -> None:
        _one_of(self.model, ("wan",), "expert.model")
        _one_of(self.compile, COMPILE_MODES, "expert.compile")
        _one_of(self.precision, PRECISIONS, "expert.precision")
        _one_of(self.objective, ("flow", "eps"), "expert.objective")
        _one_of(self.timestep_sampling, ("logit_normal", "uniform"), "expert.timestep_sampling")
        _one_of(self.lr_schedule, ("constant", "cosine"), "expert.lr_schedule")
        _one_of(self.monolith_scaling, ("steps", "batch"), "expert.monolith_scaling")
        _one_of(self.budget_split, ("equal", "by_size"), "expert.budget_split")
        _check(self.monolith_lr_scale > 0, "expert.monolith_lr_scale", f"must be > 0, got {self.monolith_lr_scale}")
        _check(0.0 <= self.seed_fraction < 1.0, "expert.seed_fraction", f"must lie in [0, 1), got {self.seed_fraction}")
        _check(self.warmup_steps >= 0, "expert.warmup_steps", "must be >= 0")
        _check(self.weight_decay >= 0, "expert.weight_decay", "must be >= 0")
        _check(self.grad_clip > 0, "expert.grad_clip", "must be > 0")
        _check(self.log_every > 0, "expert.log_every", "must be > 0")
        _check(len(self.patch_size) == 3 and min(self.patch_size) > 0, "expert.patch_size", "needs 3 positive ints")
        for name in ("num_layers", "num_heads", "head_dim", "ffn_dim", "steps", "batch_size", "checkpoint_every"):
            _check(getattr(self, name) > 0, f"expert.{name}", f"must be > 0, got {getattr(self, name)}")
        _check(self.micro_batch >= 0, "expert.micro_batch", "must be >= 0")
        _check(self.lr > 0, "expert.lr", "must be > 0")
        _check(0.0 <= self.ema_decay < 1.0, "expert.ema_decay", "must lie in [0, 1)")
        _check(0.0 <= self.caption_dropout < 1.0, "expert.caption_dropout", "must lie in [0, 1)")


@dataclass(frozen=True)
class RouterConfig:
    num_layers: int = 2
    num_heads: int = 2
    hidden_dim: int = 64
    patch_size: list[int] = field(default_factory=lambda: [2, 8, 8])
    steps: int = 300
    batch_size: int = 32
    lr: float = 1e-3
    timestep_sampling: str = "uniform"
    # fraction of every batch trained at exactly t = 1: the sampler's first step, pure noise, where only the caption
    # tells the cluster and a continuous t distribution never lands; 0.5 at 400 steps took the tiny run's router at
    # t = 1 from 0.65 to 0.94, within 0.03 of its caption-only ceiling 0.96 (benchmarks/router_endpoint.py)
    endpoint_mass: float = 0.5
    t_buckets: int = 5  # RouterReport resolution
    report_t: list[float] = field(default_factory=lambda: [0.9, 0.95, 1.0])  # also reported at exactly these t

    def __post_init__(self) -> None:
        _one_of(self.timestep_sampling, ("logit_normal", "uniform"), "router.timestep_sampling")
        for name in ("num_layers", "num_heads", "hidden_dim", "steps", "batch_size", "t_buckets"):
            _check(getattr(self, name) > 0, f"router.{name}", f"must be > 0, got {getattr(self, name)}")
        _check(0.0 <= self.endpoint_mass < 1.0, "router.endpoint_mass", f"must lie in [0, 1), got {self.endpoint_mass}")
        ok = all(0.0 <= t <= 1.0 for t in self.report_t) and len(set(self.report_t)) == len(self.report_t)
        _check(ok, "router.report_t", f"must be distinct times in [0, 1], got {self.report_t}")


@dataclass(frozen=True)
class SampleConfig:
    strategy: str = "topk"  # the DDM's routing: top1 | topk | full | sample | oracle | expert:<id>, or a schedule
    compare_strategies: list[str] = field(default_factory=lambda: ["top1", "full", "oracle"])  # also sampled
    single_experts: bool = True  # also sample each expert alone on every prompt (paired with the DDM)
    top_k: int = 2
    num_steps: int = 20
    guidance_scale: float = 4.0
    shift: float = 1.0  # time-grid shift t' = s t / (1 + (s - 1) t): > 1 spends more Euler steps at high noise
    num_prompts: int = 0  # prompts from the held-out prompt role, clusters in proportion; 0: every prompt clip
    batch_size: int = 16  # prompts per sampler call
    eps_x0_clamp: float = 3.0  # eps experts: |x0_hat| bound in the eps -> v conversion (pixels lie in [-1, 1])
    eps_alpha_floor: float = 0.05  # eps experts: smallest 1 - t divided by when recovering x0_hat

    def __post_init__(self) -> None:
        for where, strategy in [("sample.strategy", self.strategy)] + [
            ("sample.compare_strategies", s) for s in self.compare_strategies
        ]:
            try:
                parse_schedule(strategy)
            except ValueError as err:
                raise ConfigError(f"{where}: {err} (a schedule reads e.g. topk>top1@0.5)") from None
        _check(self.batch_size > 0, "sample.batch_size", "must be > 0")
        _check(self.top_k >= 1, "sample.top_k", "must be >= 1")
        _check(self.num_steps > 0, "sample.num_steps", "must be > 0")
        _check(self.shift > 0, "sample.shift", "must be > 0")
        _check(self.num_prompts >= 0, "sample.num_prompts", "must be >= 0 (0: every prompt-role clip)")
        _check(self.eps_x0_clamp > 0, "sample.eps_x0_clamp", "must be > 0")
        _check(0.0 < self.eps_alpha_floor <= 1.0, "sample.eps_alpha_floor", "must lie in (0, 1]")


@dataclass(frozen=True)
class EvalConfig:
    i3d_path: str = ""  # local TorchScript I3D (Kinetics-400); empty: offline feature network, metric fd_attrnet
    clip_path: str = ""  # local CLIP folder; empty: prompt-attribute accuracy instead of CLIP similarity
    aesthetic_path: str = ""  # local LAION aesthetic head on evaluate.clip_path's CLIP: metric aesthetic_laion
    num_real: int = 256  # real clips in the Fréchet reference set (fixed N: never compare scores across N)
    featnet_steps: int = 300
    bootstrap: int = 200  # paired bootstrap replicates over prompts for every interval (lib.evaluate.distances)

    def __post_init__(self) -> None:
        for name in ("num_real", "bootstrap"):
            _check(getattr(self, name) > 0, f"evaluate.{name}", f"must be > 0, got {getattr(self, name)}")
        _check(not self.aesthetic_path or bool(self.clip_path), "evaluate.clip_path",
               "required with evaluate.aesthetic_path")  # fmt: skip
        # AttrNet's one-cycle schedule needs a warm-up of at least 2 steps (10 % of the steps)
        _check(self.featnet_steps >= 20, "evaluate.featnet_steps", f"must be >= 20, got {self.featnet_steps}")


@dataclass(frozen=True)
class ResourcesConfig:
    expert_cpu: str = "2"
    expert_mem: str = "4Gi"
    expert_gpu: int = 0  # GPUs per expert task; 0 on CPU-only clusters and laptops
    accelerator: str = ""  # e.g. "nvidia-tesla-a100"; empty: any GPU the node pool offers
    retries: int = 2
    min_success_ratio: float = 1.0  # fraction of experts that must train for the pipeline to go on
    # Data parallelism inside one expert (torch DDP through flytekitplugins-kfpytorch ``Elastic``): an expert whose
    # model or batch outgrows one GPU trains on nnodes x nproc_per_node processes, same recipe, same numbers.
    expert_nnodes: int = 1  # > 1: a PyTorchJob per expert (needs the Kubeflow training operator)
    expert_nproc_per_node: int = 1  # processes per node, usually = expert_gpu
    # A GPU pool YAML (local path or URI; see configs/pools/): when set, lib.plan places each expert on a GPU type
    # and count of the pool and the expert_gpu/accelerator/nnodes/nproc fields above apply to the monolith only.
    pool: str = ""

    @property
    def expert_world_size(self) -> int:
        return self.expert_nnodes * self.expert_nproc_per_node

    def __post_init__(self) -> None:
        _check(self.expert_gpu >= 0, "resources.expert_gpu", "must be >= 0")
        _check(self.expert_nnodes >= 1, "resources.expert_nnodes", f"must be >= 1, got {self.expert_nnodes}")
        _check(
            self.expert_nproc_per_node >= 1,
            "resources.expert_nproc_per_node",
            f"must be >= 1, got {self.expert_nproc_per_node}",
        )
        _check(
            self.expert_gpu == 0 or self.expert_nproc_per_node <= self.expert_gpu,
            "resources.expert_nproc_per_node",
            f"{self.expert_nproc_per_node} processes per node but expert_gpu={self.expert_gpu}: one GPU per process",
        )
        _check(self.retries >= 0, "resources.retries", "must be >= 0")
        _check(0.0 < self.min_success_ratio <= 1.0, "resources.min_success_ratio", "must lie in (0, 1]")


@dataclass(frozen=True)
class DistillConfig:
    """Distilling the DDM into one dense student (``workflows/distill.py``); the student is the expert network."""

    strategy: str = "topk"  # the teacher's routing: top1 | topk | full (deterministic, so a resumed run repeats it)
    top_k: int = 2
    guidance_scale: float = 1.0  # teacher CFG baked into the student's conditional velocity (1: plain, CFG at sampling)
    size: str = "expert"  # expert | monolith: the student trains with the expert's or the monolith's steps and batch

    def __post_init__(self) -> None:
        _one_of(self.strategy, ("top1", "topk", "full"), "distill.strategy")
        _one_of(self.size, ("expert", "monolith"), "distill.size")
        _check(self.top_k >= 1, "distill.top_k", f"must be >= 1, got {self.top_k}")
        _check(self.guidance_scale >= 1.0, "distill.guidance_scale", f"must be >= 1, got {self.guidance_scale}")


@dataclass(frozen=True)
class ExtendConfig:
    """New data for a grown DDM (``workflows/extend.py``): the run's ``data`` section with these fields replaced,
    and when a new clip joins an existing cluster rather than founding a new one."""

    source: str = "builtin"  # builtin | manifest, as data.source
    manifest: str = ""  # the new clips' manifest when source == "manifest"
    num_clips: int = 400  # built-in: clips drawn (all roles)
    scenes: list[str] = field(default_factory=lambda: ["checker"])  # built-in: the new data's scene families
    join_distance: float = 0.3  # cosine distance to the nearest parent centroid up to which a clip joins its cluster
    new_clusters: int = 1  # clusters (= new experts) the far clips are split into
    # > 0: every parent expert whose cluster new train clips joined continues from its weights for this many steps
    # on its old train clips plus the joined ones (expert config otherwise); 0: off, joined clips teach the router only
    continue_steps: int = 0

    def __post_init__(self) -> None:
        _one_of(self.source, ("builtin", "manifest"), "extend.source")
        _check(self.source != "manifest" or bool(self.manifest), "extend.manifest", "required when source=manifest")
        _check(self.num_clips > 0, "extend.num_clips", f"must be > 0, got {self.num_clips}")
        for scene in self.scenes:
            _one_of(scene, FAMILY_NAMES, "extend.scenes")
        _check(len(self.scenes) > 0, "extend.scenes", "needs at least one family")
        _check(0.0 <= self.join_distance <= 2.0, "extend.join_distance", "a cosine distance: must lie in [0, 2]")
        _check(self.new_clusters >= 1, "extend.new_clusters", f"must be >= 1, got {self.new_clusters}")
        _check(self.continue_steps >= 0, "extend.continue_steps", f"must be >= 0 (0: off), got {self.continue_steps}")

    def data_config(self, parent: DataConfig) -> DataConfig:
        """The new data's config: the parent's frames, size and split, with this section's source and clips."""
        return dataclasses.replace(parent, source=self.source, manifest=self.manifest, num_clips=self.num_clips,
                                   scenes=list(self.scenes))  # fmt: skip


@dataclass(frozen=True)
class RunConfig:
    seed: int = 0
    output_dir: str = "outputs"  # local folder or fsspec URI where results are persisted
    data: DataConfig = field(default_factory=DataConfig)
    encode: EncodeConfig = field(default_factory=EncodeConfig)
    codec: CodecConfig = field(default_factory=CodecConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    expert: ExpertConfig = field(default_factory=ExpertConfig)
    router: RouterConfig = field(default_factory=RouterConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    evaluate: EvalConfig = field(default_factory=EvalConfig, metadata={KEY_NAME: "eval"})
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    extend: ExtendConfig = field(default_factory=ExtendConfig)

    @classmethod
    def from_json(cls, text: str) -> RunConfig:
        """``pyflyte run --cfg`` builds the input through this hook, so CLI JSON/YAML gets the checks of ``load_config``
        (without it flytekit would silently drop unknown keys). flytekit hands over only a YAML file's contents, so an
        error names the file from the command line, as ``load_config`` does."""
        try:
            return config_from_dict(json.loads(text))
        except ConfigError as exc:
            source = _cli_config_file()
            raise ConfigError(f"{source}: {exc}" if source else str(exc)) from None

    def __post_init__(self) -> None:
        _check(self.seed >= 0, "seed", f"must be >= 0, got {self.seed}")
        world = self.resources.expert_world_size
        _check(
            self.expert.batch_size >= world,
            "expert.batch_size",
            f"{self.expert.batch_size} is smaller than the {world} processes per expert (resources.expert_nnodes x "
            "expert_nproc_per_node): each needs at least one sample per step",
        )
        families = FAMILY_NAMES[: self.data.num_families]  # the new data lives in the run's world
        outside = [scene for scene in self.extend.scenes if scene not in families]
        _check(not outside, "extend.scenes", f"{outside} are not among the {len(families)} of data.num_families")
        if self.data.source == "builtin":
            _check(
                self.cluster.num_clusters <= self.data.num_clips,
                "cluster.num_clusters",
                f"K={self.cluster.num_clusters} is larger than data.num_clips={self.data.num_clips}",
            )


def _build(cls: type, values: Any, where: str) -> Any:
    """Build dataclass ``cls`` from a mapping, refusing unknown keys and wrong types by dotted name."""
    if not isinstance(values, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {type(values).__name__}")
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        prefix = f"{where}." if where else ""
        hints = [f"{prefix}{k} (did you mean {prefix}{close[0]}?)" if (close := _close_key(k, known)) else prefix + k
                 for k in unknown]  # fmt: skip
        raise ConfigError(f"unknown key(s) {', '.join(hints)}; known: {', '.join(sorted(known))}")
    kwargs = {}
    for name, value in values.items():
        dotted = f"{where}.{name}" if where else name
        sub = _SECTIONS.get(name) if cls is RunConfig else None
        if sub is not None:
            kwargs[name] = _build(sub, value, dotted)
        else:
            kwargs[name] = _coerce(value, getattr(cls(), name), dotted)
    return cls(**kwargs)


def _close_key(key: str, known: dict[str, Any]) -> list[str]:
    return difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)


# PyYAML follows YAML 1.1, where a float needs a dot: `1e-3` arrives as the string "1e-3". Users write it anyway.
_EXPONENT_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _coerce(value: Any, default: Any, where: str) -> Any:
    """Accept a YAML value only where its type matches the field's default (ints widen to float, and a float field
    takes `1e-3`, which YAML 1.1 reads as a string)."""
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, float):
        if isinstance(value, str) and _EXPONENT_FLOAT.fullmatch(value.strip()):
            value = float(value)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, str):
        ok = isinstance(value, str)
    elif isinstance(default, list):
        ok = isinstance(value, list) and all(isinstance(v, type(default[0])) for v in value) if default else True
        value = list(value) if isinstance(value, list) else value
    else:
        ok = True
    if not ok:
        raise ConfigError(f"{where}: expected {type(default).__name__}, got {type(value).__name__} {value!r}")
    return value


_SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "encode": EncodeConfig,
    "codec": CodecConfig,
    "cluster": ClusterConfig,
    "expert": ExpertConfig,
    "router": RouterConfig,
    "sample": SampleConfig,
    "evaluate": EvalConfig,
    "resources": ResourcesConfig,
    "distill": DistillConfig,
    "extend": ExtendConfig,
}


def _cli_config_file() -> str:
    """The file given as ``--cfg <path>`` on this process's command line, if any (``pyflyte run ... --cfg x.yaml``)."""
    args = sys.argv
    for flag, value in zip(args, args[1:], strict=False):
        if flag == "--cfg" and Path(value).is_file():
            return value
    return ""


# Sections renamed since config files were written: the old name still loads, with one warning, so users' files keep
# working. ``eval`` became ``evaluate`` because a Flyte workflow reads ``cfg.eval`` as the Promise's own ``eval``.
RENAMED_SECTIONS = {"eval": "evaluate"}


def _current_names(values: Any) -> Any:
    if not isinstance(values, dict):
        return values  # _build names what is wrong with it
    for old, new in RENAMED_SECTIONS.items():
        if old in values:
            _check(new not in values, old, f"renamed {new}; give one of the two, not both")
            log.warning("config section %r is now %r; the old name still works", old, new)
            values = {(new if k == old else k): v for k, v in values.items()}
    return values


def config_from_dict(values: dict[str, Any]) -> RunConfig:
    """Build and validate a RunConfig from nested mappings (missing keys keep their defaults)."""
    return _build(RunConfig, _current_names(values), "")


def load_config(path: str | Path) -> RunConfig:
    """Read a YAML config file; errors name the file and the offending key."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    values = _read_yaml(path)
    try:
        return config_from_dict(values)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def _read_yaml(path: Path) -> Any:
    """The file's YAML, or one line naming file, line and column of a syntax error (PyYAML's own message spans
    several lines and, through pyflyte, a 200-line traceback)."""
    try:
        return yaml.safe_load(path.read_text()) or {}
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        what = " ".join(part for part in (exc.context, exc.problem) if part)
        raise ConfigError(f"{where}: not valid YAML: {what}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None


def cli_config_error(argv: list[str]) -> str | None:
    """What is wrong with the ``--cfg`` file of a ``pyflyte run`` command line, in one line, or None.

    Why: pyflyte parses ``--cfg`` itself before any project code runs and shows a mistake as a long traceback;
    ``workflows/__init__.py`` calls this first and prints the line instead.
    """
    for flag, value in zip(argv, argv[1:], strict=False):
        if flag == "--cfg" and value.endswith((".yaml", ".yml")) and Path(value).is_file():
            try:
                load_config(value)
            except ConfigError as exc:
                return str(exc)
    return None


def config_to_dict(cfg: RunConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def config_to_yaml(cfg: RunConfig) -> str:
    """The resolved config as YAML in field order, which ``load_config`` reads back into the same config."""
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)


def replace_in(cfg: RunConfig, **sections: dict[str, Any]) -> RunConfig:
    """Copy ``cfg`` with some fields of some sections changed, e.g. ``replace_in(cfg, expert={"steps": 5})``."""
    values = config_to_dict(cfg)
    for section, changes in sections.items():
        if isinstance(changes, dict):
            values[section].update(changes)
        else:
            values[section] = changes
    return config_from_dict(values)


def with_overrides(cfg: RunConfig, assignments: list[str]) -> RunConfig:
    """``cfg`` with command-line ``section.field=value`` assignments applied (values parsed as YAML scalars).

    Why: a benchmark variant ("the same run on themed scenes", "a smaller expert") should be one flag on the
    command that produced it, not a second config file that drifts from the first.
    """
    values = config_to_dict(cfg)
    for item in assignments:
        key, sep, raw = item.partition("=")
        section, dot, name = key.partition(".")
        section = RENAMED_SECTIONS.get(section, section)  # --set eval.num_real=... as protocols wrote it
        _check(bool(sep and dot and name), item, "expected section.field=value, e.g. data.themed_scenes=true")
        _check(section in values, item, f"unknown section {section!r}")
        values[section][name] = yaml.safe_load(raw)
    return config_from_dict(values)


def build_section(cls: type, values: Any, where: str) -> Any:
    """A flat config-like dataclass from a mapping, with the same checks as the run config (other YAML files)."""
    return _build(cls, values, where)

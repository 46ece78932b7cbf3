"""Expert (and monolith) networks: a registry of diffusers video transformers sized entirely by ``ExpertConfig``.

Why ``WanTransformer3DModel`` is the default:
- it patchifies in 3-D (``patch_size`` = t, h, w) and places tokens with a 3-D rotary position embedding, so one
  config works at any T/H/W that the patch divides, with no learned position table tied to a training size
  (Latte and CogVideoX both carry sinusoidal/learned tables sized by ``sample_size``/``sample_frames``);
- text enters by cross-attention on token embeddings (``encoder_hidden_states``), which is what classifier-free
  guidance and the MiniLM/T5 token encoders of ``lib.encode`` produce; CogVideoX instead concatenates text and
  video tokens in one joint attention, which costs (S + L)^2 and ties the text length into the model;
- it lives in diffusers with ``save_pretrained``/``from_pretrained`` and safetensors, so an expert loads back with
  plain diffusers in a fresh process and no project code;
- it is cheap at small sizes: a 4-layer, 1.3M-parameter model trains at a few tenths of a second per step on
  8x32x32 clips on 2 CPU cores, while ``UNet3DConditionModel`` at a similar size runs ~40x slower (its attention
  runs at full resolution).

The registry (``EXPERT_FAMILIES``) maps a model name to a builder and a forward adapter, so another diffusers class
is one entry away; ``expert_forward`` hides each class's call convention (timestep scale, caption masking) from
the trainer and the sampler.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import ModelMixin, WanTransformer3DModel

from lib.config import ExpertConfig
from lib.seeding import derive_seed

WAN_TIMESTEP_SCALE = 1000.0  # Wan was trained with timesteps in [0, 1000]; our t lives in [0, 1]
TRAINING_INFO = "training.json"  # written by lib.train.trainer next to the weights; holds their sha256


class ExpertLoadError(ValueError):
    """A saved expert folder that is incomplete, unknown or fails its integrity check."""


@dataclass(frozen=True)
class ExpertFamily:
    """How to build one diffusers class from an ``ExpertConfig`` and how to call it."""

    model_class: type[ModelMixin]
    build: Callable[[ExpertConfig, int, int], ModelMixin]  # (cfg, in_channels, text_dim) -> model
    forward: Callable[[ModelMixin, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]  # (model, x_t, t, tok)


def _build_wan(cfg: ExpertConfig, in_channels: int, text_dim: int) -> ModelMixin:
    return WanTransformer3DModel(
        patch_size=tuple(cfg.patch_size),
        num_attention_heads=cfg.num_heads,
        attention_head_dim=cfg.head_dim,
        in_channels=in_channels,
        out_channels=in_channels,
        text_dim=text_dim,
        ffn_dim=cfg.ffn_dim,
        num_layers=cfg.num_layers,
    )


def _forward_wan(model: ModelMixin, x_t: torch.Tensor, t: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    # Wan embeds the timestep sinusoidally on the [0, 1000] scale it was designed for.
    return model(hidden_states=x_t, timestep=t * WAN_TIMESTEP_SCALE, encoder_hidden_states=tokens, return_dict=False)[0]


EXPERT_FAMILIES: dict[str, ExpertFamily] = {
    "wan": ExpertFamily(WanTransformer3DModel, _build_wan, _forward_wan),
}


def _family_of(model: ModelMixin) -> ExpertFamily:
    for family in EXPERT_FAMILIES.values():
        if isinstance(model, family.model_class):
            return family
    known = ", ".join(f.model_class.__name__ for f in EXPERT_FAMILIES.values())
    raise ValueError(f"{type(model).__name__} is not a registered expert class (known: {known})")


def build_expert(
    cfg: ExpertConfig, in_channels: int, text_dim: int, sample_shape: tuple[int, int, int], seed: int = 0
) -> ModelMixin:
    """Build a freshly initialised expert network.

    Args:
        cfg: network sizes (``model``, ``num_layers``, ``num_heads``, ``head_dim``, ``ffn_dim``, ``patch_size``).
        in_channels: latent channels C (3 for the pixel codec); the output has the same channel count.
        text_dim: width D of the caption token embeddings.
        sample_shape: latent (T, H, W) the model will see; checked against the patch size here so that a
            mismatch fails at build time, not deep inside the first forward pass.
        seed: initial weights are drawn from this seed (the global torch RNG is left untouched).

    Returns:
        A diffusers ``ModelMixin`` in float32 on CPU.
    """
    if cfg.model not in EXPERT_FAMILIES:
        raise ValueError(f"expert.model: {cfg.model!r} is not one of {', '.join(EXPERT_FAMILIES)}")
    if in_channels <= 0 or text_dim <= 0:
        raise ValueError(f"in_channels and text_dim must be > 0, got {in_channels} and {text_dim}")
    for axis, size, patch in zip("THW", sample_shape, cfg.patch_size, strict=True):
        if size % patch:
            raise ValueError(f"sample {axis}={size} is not divisible by expert.patch_size {cfg.patch_size}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, "expert-init"))
        return EXPERT_FAMILIES[cfg.model].build(cfg, in_channels, text_dim)


def expert_forward(
    model: ModelMixin, x_t: torch.Tensor, t: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Call any registered expert with the project's conventions.

    Caption handling: Wan's cross-attention takes no attention mask, so padded tokens are zeroed instead of
    masked. The unconditional input of classifier-free guidance is the same thing taken to the limit: all-zero
    tokens with an all-False mask. Training drops captions the same way (``caption_dropout``), so the model
    learns exactly the unconditional input the sampler will give it.

    Args:
        model: a network from ``build_expert`` or ``load_expert``, or such a network wrapped in DDP.
        x_t: noisy latents [B, C, T, H, W].
        t: flow-matching time in [0, 1], float [B] (t = 1 is pure noise).
        tokens: caption token embeddings [B, L, D].
        mask: [B, L] bool, True for real tokens.

    Returns:
        The network's prediction [B, C, T, H, W] (v = eps - x0 for flow experts, eps for eps experts).
    """
    if t.ndim != 1 or t.shape[0] != x_t.shape[0]:
        raise ValueError(f"t must be a float [B={x_t.shape[0]}] tensor, got shape {tuple(t.shape)}")
    if mask.shape != tokens.shape[:2]:
        raise ValueError(f"mask {tuple(mask.shape)} does not match tokens {tuple(tokens.shape)}")
    tokens = tokens * mask.unsqueeze(-1).to(tokens.dtype)  # [B, L, D], padded / dropped tokens -> 0
    family = _family_of(getattr(model, "module", model))  # a DDP wrapper is called, its module identifies the class
    return family.forward(model, x_t, t, tokens)


def weights_sha256(folder: str | Path) -> dict[str, str]:
    """sha256 of every safetensors file in a saved model folder, keyed by file name."""
    folder = Path(folder)
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.safetensors"))}


def weights_digest(shas: dict[str, str]) -> str:
    """One sha256 over a model's per-file digests (``weights_sha256``'s dict, or a ``ddm.json`` entry's): a single
    string a spec can carry as the identity of the weights a continued expert starts from."""
    return hashlib.sha256(json.dumps(shas, sort_keys=True).encode()).hexdigest()


def _architecture(model: ModelMixin) -> dict:
    """The JSON-able constructor arguments of a diffusers model (its config without diffusers' private keys)."""
    return json.loads(json.dumps({k: v for k, v in model.config.items() if not k.startswith("_")}))


def load_weights_into(model: ModelMixin, folder: str | Path) -> None:
    """Copy the weights saved in ``folder`` (a diffusers model folder, as the trainer writes under ``model/``) into
    ``model``, which must have the same class and architecture.

    Why not just ``from_pretrained``: the caller already built the network from its own config; loading into it
    checks that the saved one is the same network instead of silently training another. The weights are read by
    ``load_expert`` (safetensors, checked against ``training.json``), never unpickled.

    Raises:
        ExpertLoadError: the folder is not a saved expert, fails its sha256 check, or holds another architecture.
    """
    saved = load_expert(folder)
    ours, theirs = _architecture(model), _architecture(saved)
    if type(saved) is not type(model) or ours != theirs:
        keys = sorted(k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k))
        diff = {k: (theirs.get(k), ours.get(k)) for k in keys}
        raise ExpertLoadError(
            f"{folder}: cannot start from these weights: the saved {type(saved).__name__} differs from the "
            f"{type(model).__name__} this config builds (saved, configured): {diff}"
        )
    model.load_state_dict(saved.state_dict())


def load_expert(folder: str | Path, verify: bool = True) -> ModelMixin:
    """Load a saved expert with plain diffusers ``from_pretrained``.

    The class comes from the folder's ``config.json`` (``_class_name``). When ``verify`` and the folder holds
    a ``training.json`` (written by the trainer), the weights' sha256 must match the one recorded there, so a
    truncated or swapped file is refused instead of sampled from.
    """
    folder = Path(folder)
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ExpertLoadError(f"{folder}: no config.json, not a saved diffusers model")
    class_name = json.loads(config_file.read_text()).get("_class_name", "")
    classes = {f.model_class.__name__: f.model_class for f in EXPERT_FAMILIES.values()}
    if class_name not in classes:
        raise ExpertLoadError(f"{config_file}: _class_name {class_name!r} is not one of {', '.join(classes)}")
    info_file = folder / TRAINING_INFO
    if verify and info_file.is_file():
        expected = json.loads(info_file.read_text()).get("weights_sha256", {})
        found = weights_sha256(folder)
        if expected != found:
            raise ExpertLoadError(f"{folder}: weights do not match {TRAINING_INFO} (expected {expected}, got {found})")
    return classes[class_name].from_pretrained(folder)


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def tokens_per_sample(cfg: ExpertConfig, sample_shape: tuple[int, int, int]) -> int:
    """Number of video tokens S the transformer sees for one clip: prod(sample_shape / patch_size)."""
    return math.prod(size // patch for size, patch in zip(sample_shape, cfg.patch_size, strict=True))

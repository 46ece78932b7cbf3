"""A loadable decentralized diffusion model, from prompts to uint8 videos with one call (the folder it loads:
``lib.sample.folder``).

Pairing: the starting noise of prompt i comes from its own generator seeded by ``derive_seed(seed, "sample", i)``,
so a prompt's video depends neither on the batch size nor on the other prompts, and the DDM, the monolith
(``DDMPipeline.from_single``) and every single expert (``strategy="expert:<id>"``) start from the same noise.
"""

from __future__ import annotations

import logging
import os
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import ModelMixin
from safetensors.torch import load_file

from lib.config import EncodeConfig
from lib.data.video import write_gif, write_mp4
from lib.encode.codec import LatentCodec, PixelCodec, load_vae_codec
from lib.encode.text import TextEncoder
from lib.io import verify_sums
from lib.models.factory import TRAINING_INFO, expert_forward, load_expert
from lib.models.levers import compile_options, forward_context, inference_bf16, sampling_compiles
from lib.models.router import RouterModel
from lib.progress import progress
from lib.sample.ddm import (
    DEFAULT_ALPHA_FLOOR,
    DEFAULT_X0_CLAMP,
    ExpertHandle,
    SampleResult,
    SamplerStats,
    sample_ddm,
)
from lib.sample.folder import (
    FORMAT_VERSION,
    MANIFEST,
    STAGE,
    DDMLoadError,
    check_sha,
    codec_and_text,
    expert_dir_name,
    expert_entry,
    read_json,
)
from lib.seeding import derive_seed
from lib.strategy import parse_schedule, parse_strategy

log = logging.getLogger(__name__)

VIDEO_FORMATS = ("gif", "mp4")


@dataclass(frozen=True)
class PipelineOutput:
    """Videos plus what the sampler did, for analysis.

    Attributes:
        videos: uint8 [N, T, H, W, 3] (also ``frames``, diffusers' name).
        result: the sampler's result over all prompts: x0 [N, C, T', H', W'], weights [num_steps, N, K], timesteps
            [num_steps], stats summed over the batches.
    """

    videos: np.ndarray
    result: SampleResult

    @property
    def frames(self) -> np.ndarray:
        """The videos under the name diffusers' video pipelines give them (``pipe(prompts).frames``)."""
        return self.videos


def _load_codec(codec: dict[str, Any], device: str | torch.device) -> LatentCodec:
    if codec["name"] == "pixel":
        return PixelCodec()
    if codec["name"] == "vae":
        return load_vae_codec(codec["vae_path"], device)
    raise DDMLoadError(f"codec {codec['name']!r} is not one of pixel, vae")


class DDMPipeline:
    """Prompts -> videos with a DDM (router-mixed experts) or a single model, on one device.

    Build it with ``from_pretrained`` (an ``assemble_ddm`` folder) or ``from_single`` (one expert or the monolith).

    Args:
        experts: network per cluster id 0..K-1; None for an expert that failed training.
        objectives: "flow" or "eps" per present expert.
        router: the router, or None (then only ``oracle`` / ``expert:<id>`` sample, unless K = 1).
        text_encoder: the caption encoder the experts were trained with.
        codec: decodes sampled latents to uint8 videos.
        latent_shape: (C, T', H', W') of one sample's latents.
        name: where the model came from, for error messages.
        centroids: cluster centroids [K, E], if the DDM folder holds them.
        device: where the networks run.
    """

    def __init__(
        self,
        experts: dict[int, ModelMixin | None],
        objectives: dict[int, str],
        router: RouterModel | None,
        text_encoder: TextEncoder,
        codec: LatentCodec,
        latent_shape: Sequence[int],
        name: str,
        centroids: np.ndarray | None = None,
        device: str | torch.device = "cpu",
    ):
        self.device = torch.device(device)
        self.experts = {k: (m.to(self.device).eval() if m is not None else None) for k, m in experts.items()}
        self.objectives = objectives
        self.router = router.to(self.device).eval() if router is not None else None
        self.text_encoder = text_encoder
        self.codec = codec
        self.latent_shape = tuple(latent_shape)  # C, T', H', W'
        self.name = name
        self.centroids = centroids
        self.compiled = False  # the experts' blocks, once a job is long enough (``compile_for``)

    @property
    def num_experts(self) -> int:
        return len(self.experts)

    @property
    def missing_experts(self) -> list[int]:
        return [k for k, m in self.experts.items() if m is None]

    @classmethod
    def from_pretrained(cls, folder: str | Path, device: str | torch.device = "cpu") -> DDMPipeline:
        """Load an ``assemble_ddm`` folder, verifying every file against its ``SHA256SUMS`` and every expert's and the
        router's weights against the manifest (``lib.io.ChecksumError`` / ``DDMLoadError`` name the file).

        Args:
            folder: the DDM folder (holds ``ddm.json``).
            device: where the networks, the text encoder and a VAE run.
        """
        folder = Path(folder)
        if not (folder / MANIFEST).is_file() and (folder / TRAINING_INFO).is_file():
            if (folder.parent.parent / MANIFEST).is_file():  # one expert of a DDM folder: that expert alone
                return cls._expert_of(folder.parent.parent, folder, device)
            raise DDMLoadError(
                f"{folder}: a trainer's model folder, which does not record its codec: load it with "
                "DDMPipeline.from_single(folder, codec_info), or make it loadable alone with assemble_single"
            )
        if (folder / MANIFEST).is_file():  # a folder without one gets read_json's error, which says what it lacks
            verify_sums(folder, None, STAGE)
        manifest = read_json(folder / MANIFEST, "DDM manifest; build the folder with assemble_ddm")
        if manifest.get("format_version") != FORMAT_VERSION:
            raise DDMLoadError(
                f"{folder / MANIFEST}: format_version {manifest.get('format_version')} is not {FORMAT_VERSION}"
            )
        experts: dict[int, ModelMixin | None] = {}
        objectives: dict[int, str] = {}
        for entry in manifest["experts"]:
            k = entry["cluster_id"]
            if not entry["present"]:
                experts[k] = None
                continue
            path = folder / entry["path"]
            if not path.is_dir():
                raise DDMLoadError(f"{path}: expert {k} is listed as present but its folder is missing")
            check_sha(path, entry["weights_sha256"])
            experts[k] = load_expert(path, verify=False)  # just verified against the manifest
            objectives[k] = entry["objective"]
        router = None
        if manifest.get("router"):
            path = folder / manifest["router"]["path"]
            if not path.is_dir():
                raise DDMLoadError(f"{path}: the manifest lists a router but its folder is missing")
            check_sha(path, manifest["router"]["weights_sha256"])
            router = RouterModel.from_pretrained(path)
        centroids = None
        if manifest.get("centroids"):
            centroids = load_file(str(folder / manifest["centroids"]))["centroids"].numpy()
        text = manifest["text_encoder"]
        encoder = TextEncoder.from_config(
            EncodeConfig(text_encoder=text["name"], max_tokens=text["max_tokens"]), device
        )
        if encoder.dim != text["dim"]:
            raise DDMLoadError(f"{folder}: text encoder {text['name']} gives dim {encoder.dim}, manifest says {text}")
        codec = dict(manifest["codec"])
        if "learned" in codec:
            codec["vae_path"] = str(folder / codec["vae_path"])
        log.info("loaded DDM %s: %d experts (missing %s)", folder, len(experts), manifest["missing_experts"])
        return cls(experts, objectives, router, encoder, _load_codec(codec, device), codec["latent_shape"],
                   str(folder), centroids, device)  # fmt: skip

    @classmethod
    def _expert_of(cls, ddm_folder: Path, expert_folder: Path, device: str | torch.device) -> DDMPipeline:
        """Expert ``expert_folder`` of the DDM in ``ddm_folder`` as a K = 1 pipeline, with the DDM's codec."""
        ddm = cls.from_pretrained(ddm_folder, device)
        for k, model in ddm.experts.items():
            if model is not None and (ddm_folder / expert_dir_name(k)).resolve() == expert_folder.resolve():
                return cls({0: model}, {0: ddm.objectives[k]}, None, ddm.text_encoder, ddm.codec, ddm.latent_shape,
                           str(expert_folder), None, device)  # fmt: skip
        raise DDMLoadError(f"{expert_folder}: not one of the present experts of {ddm_folder / MANIFEST}")

    @classmethod
    def from_single(
        cls, model_dir: str | Path, encoded_info: dict[str, Any], device: str | torch.device = "cpu"
    ) -> DDMPipeline:
        """A K = 1 pipeline over one trained model folder (the monolith or one expert), with no router.

        Every routing strategy runs the one model, so the monolith is sampled with exactly the arguments, prompts
        and seeds given to the DDM (paired comparison).

        Args:
            model_dir: trainer output folder (config.json + safetensors + training.json).
            encoded_info: the encode stage's ``codec.json``.
            device: where to run.
        """
        model_dir = Path(model_dir)
        if not {"name", "text_encoder"} <= set(encoded_info):
            raise DDMLoadError(f"encoded_info (codec.json) lacks name or text_encoder: {sorted(encoded_info)}")
        text = encoded_info["text_encoder"]
        cfg = EncodeConfig(
            text_encoder=text["name"], max_tokens=text["max_tokens"], codec=encoded_info["name"],
            vae_path=encoded_info.get("vae_path", "") if encoded_info["name"] == "vae" else "",
        )  # fmt: skip
        codec, text = codec_and_text(encoded_info, cfg)
        entry = expert_entry(0, model_dir, codec, text)  # checks sha against training.json and shapes
        model = load_expert(model_dir, verify=False)
        encoder = TextEncoder.from_config(cfg, device)
        return cls({0: model}, {0: entry["objective"]}, None, encoder, _load_codec(codec, device),
                   codec["latent_shape"], str(model_dir), None, device)  # fmt: skip

    def _resolve_strategy(self, strategy: str) -> str:
        """Single models have nothing to route; otherwise refuse a fixed expert that is absent, naming the model."""
        steps = [parse_strategy(s) for _, s in parse_schedule(strategy)]
        if self.router is None and self.num_experts == 1 and all(name != "expert" for name, _ in steps):
            return "expert:0"
        for name, fixed in steps:
            if name == "expert" and (fixed >= self.num_experts or self.experts[fixed] is None):
                state = "missing (failed training)" if fixed < self.num_experts else "not one of its experts"
                raise ValueError(f"{self.name}: strategy {strategy!r}: expert {fixed} is {state}")
        return strategy

    def noise(self, count: int, seed: int, prompt_keys: Sequence[int | str] | None = None) -> torch.Tensor:
        """Starting noise [N, C, T', H', W'], one CPU generator per prompt, so it is the same on every device.

        Args:
            count: N, the number of prompts.
            seed: sampling seed.
            prompt_keys: key of each prompt in ``derive_seed(seed, "sample", key)``; default 0..N-1.
        """
        keys = range(count) if prompt_keys is None else prompt_keys
        return torch.stack(
            [torch.randn(self.latent_shape, generator=torch.Generator().manual_seed(derive_seed(seed, "sample", key)))
             for key in keys]
        )  # fmt: skip

    @staticmethod
    def route_uniforms(
        count: int, num_steps: int, seed: int, prompt_keys: Sequence[int | str] | None = None
    ) -> torch.Tensor:
        """[N, num_steps] numbers in [0, 1) with which ``sample`` routing draws each prompt's expert at each step,
        from the prompt's own generator (``derive_seed(seed, "route", key)``), so a prompt's draws, like its noise,
        do not depend on which prompts share its batch."""
        keys = range(count) if prompt_keys is None else prompt_keys
        return torch.stack(
            [torch.rand(num_steps, generator=torch.Generator().manual_seed(derive_seed(seed, "route", key)))
             for key in keys]
        )  # fmt: skip

    def handle(self, k: int) -> ExpertHandle:
        """Expert k as the sampler calls it (bf16 where it pays, ``lib.models.levers``); also the teacher of
        distillation."""
        model, bf16 = self.experts[k], inference_bf16(self.device, self.compiled)

        def predict(x_t: torch.Tensor, t: torch.Tensor, cond: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
            with forward_context(self.device, bf16):
                return expert_forward(model, x_t, t, cond[0], cond[1]).float()

        return ExpertHandle(predict=predict, objective=self.objectives[k], cluster_id=k)

    def compile_for(self, videos: int) -> None:
        """Compile every expert's transformer blocks in place (dynamic batch; the weights and keys stay the same) when
        a job of ``videos`` videos wins the compile back (``lib.models.levers.sampling_compiles``); once per
        pipeline. Handles made after it run the compiled blocks, in bf16 where that pays."""
        if self.compiled or not sampling_compiles(self.device, videos):
            return
        bf16 = inference_bf16(self.device, True)
        for model in self.experts.values():
            if model is not None:
                model.compile_repeated_blocks(dynamic=True, options=compile_options(self.device, bf16))
        self.compiled = True
        log.info("%s: experts' blocks compiled for %d videos (%s)", self.name, videos, "bf16" if bf16 else "fp32")

    @torch.no_grad()
    def generate(
        self,
        prompts: list[str],
        num_inference_steps: int = 20,
        guidance_scale: float = 4.0,
        strategy: str = "topk",
        top_k: int = 2,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        oracle_clusters: Sequence[int] | None = None,
        batch_size: int = 16,
        prompt_keys: Sequence[int | str] | None = None,
        eps_x0_clamp: float = DEFAULT_X0_CLAMP,
        eps_alpha_floor: float = DEFAULT_ALPHA_FLOOR,
        shift: float = 1.0,
        num_steps: int | None = None,
    ) -> PipelineOutput:
        """Sample one video per prompt and keep the routing weights.

        Conditioning is what the trainer used: caption tokens + mask; the unconditional input of CFG is the
        trainer's caption dropout, i.e. an all-False mask (``expert_forward`` zeroes the tokens). The router gets
        the pooled caption vector.

        Args:
            prompts: N captions.
            num_inference_steps: Euler steps.
            guidance_scale: CFG scale (1 disables CFG).
            strategy: top1 | topk | full | sample | oracle | expert:<id>, or a schedule such as ``topk>top1@0.5``.
            top_k: experts kept by topk.
            seed: noise seed (default 0); prompt i starts from ``derive_seed(seed, "sample", prompt_keys[i])`` (and
                draws its experts under ``sample`` routing from ``derive_seed(seed, "route", prompt_keys[i])``).
            generator: as in diffusers, instead of ``seed``: its ``initial_seed()`` is the seed. Each prompt still
                gets its own generator from it, so a prompt's video does not depend on its batch.
            oracle_clusters: true cluster per prompt, for ``oracle``.
            batch_size: prompts per sampler call (does not change any prompt's noise).
            prompt_keys: noise key per prompt (default: its index), e.g. stable prompt ids of a prompt set.
            eps_x0_clamp: ε-experts only: |x̂0| bound of the ε -> v conversion (``sample.eps_x0_clamp``).
            eps_alpha_floor: ε-experts only: smallest 1 - t divided by in that conversion (``sample.eps_alpha_floor``).
            shift: time-grid shift of the Euler steps (``sample.shift``; 1 keeps the uniform grid).
            num_steps: the old name of ``num_inference_steps``, accepted with a DeprecationWarning until 0.3.

        Returns:
            PipelineOutput (``.frames`` / ``.videos``, ``.result``).
        """
        if num_steps is not None:
            warnings.warn("num_steps is deprecated (removed in 0.3): use num_inference_steps, as diffusers does",
                          DeprecationWarning, stacklevel=2)  # fmt: skip
            num_inference_steps = num_steps
        if seed is not None and generator is not None:
            raise ValueError("give seed or generator, not both")
        seed = generator.initial_seed() if generator is not None else (0 if seed is None else seed)
        if not prompts:
            raise ValueError(f"{self.name}: no prompts given")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if prompt_keys is not None and len(prompt_keys) != len(prompts):
            raise ValueError(f"prompt_keys has {len(prompt_keys)} entries for {len(prompts)} prompts")
        oracle = None
        if oracle_clusters is not None:
            oracle = torch.as_tensor(list(oracle_clusters), dtype=torch.long)
            if oracle.shape != (len(prompts),):
                raise ValueError(f"oracle_clusters has {oracle.numel()} entries for {len(prompts)} prompts")
        strategy = self._resolve_strategy(strategy)
        emb = self.text_encoder.encode(list(prompts))  # all at once: a prompt's embedding ignores sampler batching
        noise = self.noise(len(prompts), seed, prompt_keys)
        uniforms = self.route_uniforms(len(prompts), num_inference_steps, seed, prompt_keys)
        self.compile_for(len(prompts))
        handles = {k: (self.handle(k) if m is not None else None) for k, m in self.experts.items()}
        results = []
        bar = progress(total=len(prompts), desc=f"sample {strategy}", unit="video")
        for lo in range(0, len(prompts), batch_size):
            sl = slice(lo, lo + batch_size)
            tokens, mask = emb.tokens[sl].to(self.device), emb.mask[sl].to(self.device)
            results.append(
                sample_ddm(
                    handles, self.router, noise[sl].to(self.device),
                    cond=(tokens, mask), uncond=(torch.zeros_like(tokens), torch.zeros_like(mask)),
                    pooled=emb.pooled[sl].to(self.device), strategy=strategy, top_k=top_k,
                    num_steps=num_inference_steps,
                    guidance_scale=guidance_scale, oracle_clusters=None if oracle is None else oracle[sl],
                    clamp=eps_x0_clamp, alpha_floor=eps_alpha_floor, route_uniforms=uniforms[sl].to(self.device),
                    shift=shift,
                )
            )  # fmt: skip
            bar.update(len(results[-1].x0))
        bar.close()
        x0 = torch.cat([r.x0.cpu() for r in results])
        stats = SamplerStats(router_calls=sum(r.stats.router_calls for r in results))
        for r in results:
            for k, n in r.stats.expert_calls.items():
                stats.expert_calls[k] = stats.expert_calls.get(k, 0) + n
            for k, n in r.stats.expert_rows.items():
                stats.expert_rows[k] = stats.expert_rows.get(k, 0) + n
        merged = SampleResult(x0, torch.cat([r.weights for r in results], dim=1), results[0].timesteps, stats)
        videos = torch.cat([self.codec.decode(x0[i : i + batch_size]) for i in range(0, len(x0), batch_size)])
        return PipelineOutput(videos.numpy(), merged)

    def __call__(self, prompts: str | list[str], return_dict: bool = True, **kwargs: Any) -> PipelineOutput | tuple:
        """Videos as diffusers pipelines return them: ``pipe(prompts).frames`` (uint8 [N, T, H, W, 3]), or the tuple
        ``(frames,)`` with ``return_dict=False``; keyword arguments as ``generate``."""
        output = self.generate([prompts] if isinstance(prompts, str) else list(prompts), **kwargs)
        return output if return_dict else (output.frames,)


def save_videos(
    videos: np.ndarray,
    out_dir: str | Path,
    prefix: str,
    fps: float = 8.0,
    formats: Sequence[str] = VIDEO_FORMATS,
) -> list[Path]:
    """Write each video as ``{prefix}-{i:04d}.{fmt}``; each file is written in a temporary folder, then renamed.

    Args:
        videos: uint8 [N, T, H, W, 3].
        out_dir: destination folder (created if needed).
        prefix: file name prefix, e.g. ``ddm-topk``.
        fps: frame rate of the files.
        formats: any of gif, mp4.

    Returns:
        Paths written, video by video and format by format.
    """
    videos = np.asarray(videos)
    if videos.dtype != np.uint8 or videos.ndim != 5 or videos.shape[-1] != 3:
        raise ValueError(f"save_videos: expected uint8 [N, T, H, W, 3], got {videos.dtype} {videos.shape}")
    unknown = sorted(set(formats) - set(VIDEO_FORMATS))
    if unknown or not formats:
        raise ValueError(f"save_videos: formats {list(formats)} must be a non-empty subset of {VIDEO_FORMATS}")
    writers = {"gif": write_gif, "mp4": write_mp4}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    with tempfile.TemporaryDirectory(prefix=f".{prefix}.", dir=out_dir) as tmp:
        for i, video in enumerate(videos):
            for fmt in formats:
                name = f"{prefix}-{i:04d}.{fmt}"
                writers[fmt](Path(tmp) / name, video, fps=fps)  # the writers pick the container by extension
                os.replace(Path(tmp) / name, out_dir / name)
                paths.append(out_dir / name)
    return paths

"""Sample every method the evaluation compares, on the same prompts with the same seeds (paired comparisons).

Methods: ``ddm:<strategy>`` for the configured strategy and the comparison strategies, ``monolith``, and
``expert:<k>`` (each expert alone on every prompt). Every method starts prompt i from the same noise (seed
``derive_seed(seed, "sample-draw", 0)``, keyed by prompt id), so differences between methods come from the models,
not from the noise. One video per prompt: the evaluation's uncertainty comes from many held-out prompts (a paired
bootstrap over them), not from re-drawing the same few prompts.
"""

from __future__ import annotations

import base64
import html
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from safetensors import safe_open
from safetensors.numpy import save_file

from lib.config import SampleConfig
from lib.io import atomic_write
from lib.sample.pipeline import DDMPipeline, save_videos
from lib.seeding import derive_seed

log = logging.getLogger(__name__)

VIDEOS_FILE = "videos.safetensors"
GIFS_PER_METHOD = 6


@dataclass
class SampledMethods:
    videos: dict[str, np.ndarray]  # method -> uint8 [P, T, H, W, 3], row i = prompt i
    seconds: dict[str, float]  # method -> sampling time
    skipped: dict[str, str]  # method -> why it was not sampled (e.g. its expert failed)


def method_list(cfg: SampleConfig, ddm: DDMPipeline) -> tuple[list[tuple[str, str]], dict[str, str]]:
    """(method name, strategy) pairs to sample with the DDM, and the methods skipped with the reason."""
    strategies = [cfg.strategy] + [s for s in cfg.compare_strategies if s != cfg.strategy]
    methods = [(f"ddm:{s}", s) for s in strategies]
    if cfg.single_experts:
        methods += [(f"expert:{k}", f"expert:{k}") for k in range(ddm.num_experts)]
    skipped = {}
    for k in ddm.missing_experts:
        skipped[f"expert:{k}"] = f"expert {k} failed training"
        if "oracle" in strategies:
            skipped["ddm:oracle"] = f"expert {k} is missing, so its cluster's prompts have no oracle expert"
    return [(m, s) for m, s in methods if m not in skipped], skipped


def sample_methods(
    ddm: DDMPipeline,
    monolith: DDMPipeline,
    prompts: pd.DataFrame,
    cfg: SampleConfig,
    seed: int,
    out_dir: str | Path,
) -> SampledMethods:
    """Sample all methods, one video per prompt; writes ``videos.safetensors`` and a few GIFs to ``out_dir``.

    Args:
        ddm: the decentralized model (experts + router).
        monolith: the matched-compute baseline as a single-model pipeline.
        prompts: table with prompt_id, caption, cluster_id (``stratified_prompts``).
        cfg: sampling settings.
        seed: run seed.
        out_dir: output folder.
    """
    out_dir = Path(out_dir)
    plan, skipped = method_list(cfg, ddm)
    runs = [(name, ddm, strategy) for name, strategy in plan] + [("monolith", monolith, "expert:0")]
    videos: dict[str, np.ndarray] = {}
    seconds: dict[str, float] = {}
    for name, pipe, strategy in runs:
        t0 = time.perf_counter()
        videos[name] = sample_prompts(pipe, prompts, cfg, seed, strategy)
        seconds[name] = time.perf_counter() - t0
        log.info("sampled %s: %d videos in %.1f s", name, len(prompts), seconds[name])
        save_videos(videos[name][:GIFS_PER_METHOD], out_dir / "gifs", name.replace(":", "-"), formats=("gif",))
    tensors = {name: np.ascontiguousarray(v) for name, v in videos.items()}
    meta = {"prompts": json.dumps(prompts.to_dict("list")), "skipped": json.dumps(skipped)}
    atomic_write(out_dir / VIDEOS_FILE, lambda tmp: save_file(tensors, str(tmp), metadata=meta))
    return SampledMethods(videos, seconds, skipped)


def gallery_html(out_dir: str | Path, methods: list[str], captions: list[str]) -> str:
    """Self-contained HTML (GIFs inline): one row per method, one column per prompt, the same prompts in every row,
    from the GIFs ``sample_methods`` wrote (the first ``GIFS_PER_METHOD`` prompts)."""
    gifs = Path(out_dir) / "gifs"
    count = min(GIFS_PER_METHOD, len(captions))
    head = "".join(f"<th>{html.escape(c)}</th>" for c in captions[:count])
    rows = [f"<tr><th>method</th>{head}</tr>"]
    for method in methods:
        cells = []
        for i in range(count):
            path = gifs / f"{method.replace(':', '-')}-{i:04d}.gif"
            data = base64.b64encode(path.read_bytes()).decode() if path.is_file() else ""
            cells.append(f'<td><img alt="{html.escape(method)} {i}" src="data:image/gif;base64,{data}"/></td>')
        rows.append(f"<tr><th>{html.escape(method)}</th>{''.join(cells)}</tr>")
    return "<h3>Samples</h3><p>Same prompts and starting noise in every row.</p><table>" + "".join(rows) + "</table>"


def sampling_seed(seed: int) -> int:
    """The noise seed every method shares (prompt i's noise is keyed by its prompt id under it)."""
    return derive_seed(seed, "sample-draw", 0)


def sample_prompts(pipe: DDMPipeline, prompts: pd.DataFrame, cfg: SampleConfig, seed: int, strategy: str) -> np.ndarray:
    """One video per prompt with the run's sampler settings and the shared noise: uint8 [P, T, H, W, 3]."""
    return pipe.generate(
        prompts["caption"].tolist(), num_inference_steps=cfg.num_steps, guidance_scale=cfg.guidance_scale,
        strategy=strategy, top_k=cfg.top_k, seed=sampling_seed(seed), oracle_clusters=prompts["cluster_id"].tolist(),
        batch_size=cfg.batch_size, prompt_keys=prompts["prompt_id"].tolist(), eps_x0_clamp=cfg.eps_x0_clamp,
        eps_alpha_floor=cfg.eps_alpha_floor, shift=cfg.shift,
    ).videos  # fmt: skip


def load_sampled(folder: str | Path) -> tuple[dict[str, np.ndarray], pd.DataFrame, dict[str, str]]:
    """Videos per method, the prompt table and the skipped methods, as written by ``sample_methods``."""
    path = Path(folder) / VIDEOS_FILE
    with safe_open(str(path), framework="numpy") as f:
        meta = f.metadata()
        videos = {key: f.get_tensor(key) for key in sorted(f.keys())}
    return videos, pd.DataFrame(json.loads(meta["prompts"])), json.loads(meta["skipped"])

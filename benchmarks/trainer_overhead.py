"""Overhead of our trainer's bookkeeping against a bare diffusers + PyTorch loop doing the same math.

Why: ``lib.train.trainer.train`` adds determinism, resumable checkpoints, NaN checks, a per-step log, tqdm and an
integrity-stamped final save. This measures what that costs per step; the goal is at most 1.05x.

Both sides: the default ``ExpertConfig`` network (4-layer, ~1.3M-parameter ``WanTransformer3DModel``), the same
clips (built-in dataset, 8x32x32, pixel codec) with random MiniLM-shaped tokens (16 x 384), batch 16, the same
per-epoch permutation, logit-normal t, noise and caption dropout drawn from a seeded CPU generator, AdamW with
warm-up, grad clipping, an EMA update every step and a final ``save_pretrained`` of the EMA weights. Only the
trainer writes checkpoints (every ``checkpoint_every`` steps, as configured) and the log table. Wall time of
the whole call (model build to saved weights) is divided by the step count. Runs alternate (bare, ours, bare,
ours, ...) and the best of ``--repeats`` is kept for each, so that load from other processes hits both alike.

Usage: ``python benchmarks/trainer_overhead.py [--steps 100 --checkpoint-every 50 --repeats 2 --clips 64]``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch

from lib.config import ExpertConfig
from lib.data.procedural import iter_builtin_clips
from lib.models.factory import build_expert, count_parameters, expert_forward
from lib.models.schedule import ema_decay_at, lr_at
from lib.seeding import torch_generator
from lib.train.trainer import (
    BatchSampler,
    TrainData,
    flow_matching_batch,
    sample_timesteps,
    train,
    update_ema,
)

TEXT_LEN, TEXT_DIM = 16, 384  # all-MiniLM-L6-v2 token embeddings at encode.max_tokens 16 (its results; default now 40)


def make_data(num_clips: int, frames: int, size: int) -> TrainData:
    clips = list(iter_builtin_clips(seed=0, num_clips=num_clips, frames=frames, height=size, width=size))
    latents = torch.stack([torch.from_numpy(c.frames).permute(3, 0, 1, 2).float() / 127.5 - 1 for c in clips])
    tokens = torch.randn(num_clips, TEXT_LEN, TEXT_DIM, generator=torch.Generator().manual_seed(0))
    mask = torch.ones(num_clips, TEXT_LEN, dtype=torch.bool)
    return TrainData([c.clip_id for c in clips], latents, tokens, mask)


def bare_loop(
    data: TrainData,
    cfg: ExpertConfig,
    out: Path,
    device: torch.device | None = None,
    on_step: Callable[[float], None] | None = None,
) -> None:
    """The same math as ``train`` with nothing else: no checkpoints, no log table, no checks, no progress bar.

    On CUDA it runs like ``train`` there (bf16 autocast, batch moved per step) and ``on_step`` gets each step's
    seconds, measured after a device synchronisation.
    """
    device = device or torch.device("cpu")
    cuda = device.type == "cuda"
    model = build_expert(cfg, data.in_channels, data.text_dim, data.sample_shape, seed=1).to(device).train()
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch_generator(0, "bare")
    sampler = BatchSampler(len(data), cfg.batch_size, gen)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else contextlib.nullcontext()
    for step in range(cfg.steps):
        started = time.perf_counter()
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        idx = sampler.next_batch()
        t = sample_timesteps(len(idx), cfg.timestep_sampling, gen)
        x0 = data.latents[idx]
        eps = torch.randn(x0.shape, generator=gen)
        keep = torch.rand(len(idx), generator=gen) >= cfg.caption_dropout
        x_t, target = flow_matching_batch(x0, t, eps, cfg.objective)
        tokens, mask = data.tokens[idx].to(device), (data.mask[idx] & keep[:, None]).to(device)
        with autocast:
            pred = expert_forward(model, x_t.to(device), t.to(device), tokens, mask)
        loss = (pred.float() - target.to(device)).pow(2).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        update_ema(ema, model, ema_decay_at(step, cfg.ema_decay))
        if on_step is not None:
            if cuda:
                torch.cuda.synchronize(device)
            on_step(time.perf_counter() - started)
    ema.to("cpu").save_pretrained(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--checkpoint-every", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--clips", type=int, default=64)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0 keeps the default")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    data = make_data(args.clips, args.frames, args.size)
    cfg = replace(ExpertConfig(), steps=args.steps, checkpoint_every=args.checkpoint_every)
    n_params = count_parameters(build_expert(cfg, data.in_channels, data.text_dim, data.sample_shape))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device cpu")
    print(f"model {n_params / 1e6:.2f}M params, clips {tuple(data.latents.shape[1:])}, batch {cfg.batch_size}, "
          f"{cfg.steps} steps, checkpoint every {cfg.checkpoint_every}")  # fmt: skip
    times: dict[str, list[float]] = {"bare loop": [], "our trainer": []}
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as tmp:
            started = time.perf_counter()
            bare_loop(data, cfg, Path(tmp) / "bare")
            times["bare loop"].append((time.perf_counter() - started) / cfg.steps)
            started = time.perf_counter()
            train(data, cfg, Path(tmp) / "ours", seed=0, name="bench")
            times["our trainer"].append((time.perf_counter() - started) / cfg.steps)
        print(
            f"  run: bare {times['bare loop'][-1]:.4f} s/step, ours {times['our trainer'][-1]:.4f} s/step", flush=True
        )
    for label, values in times.items():
        print(f"{label:12s} {min(values):.4f} s/step (runs: {', '.join(f'{v:.4f}' for v in values)})")
    print(f"ratio ours / bare: {min(times['our trainer']) / min(times['bare loop']):.3f} (goal <= 1.05)")


if __name__ == "__main__":
    main()

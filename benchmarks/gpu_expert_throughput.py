"""Training throughput of one expert on a GPU: step time, tokens/s and model FLOP utilisation (MFU) in bf16.

Why: the experts are trained on whatever GPU each map element gets; users size runs from tokens/s and want to
know how much of the card the trainer uses. MFU = analytic training FLOPs per step (``lib.train.compute``,
the 6 x params x tokens + attention accounting used for compute matching) / step time / peak bf16 FLOP/s.
Two peaks are reported: the card's dense bf16 datasheet figure, and what an 8192^3 bf16 matmul reaches on the
machine right now (the practical ceiling).

Both sides of each row run the same math on the same random latents/tokens: our ``train`` (checkpoints only at
the end, log table, NaN checks, micro-batch probe, EMA) and the bare diffusers + PyTorch loop of
``trainer_overhead.py`` moved to the GPU. Step times are medians after ``--warmup`` steps; they include the
host-to-device copy of each batch, as in real training.

Usage (needs CUDA): ``python benchmarks/gpu_expert_throughput.py [--sizes medium large --steps 30]``.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from trainer_overhead import bare_loop  # noqa: E402

from lib.config import ExpertConfig  # noqa: E402
from lib.models.factory import build_expert, count_parameters, tokens_per_sample  # noqa: E402
from lib.train.compute import flops_per_step  # noqa: E402
from lib.train.trainer import TrainCallback, TrainData, train  # noqa: E402

# Dense bf16 tensor-core peaks from NVIDIA's datasheets (SXM parts), FLOP/s.
DATASHEET_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12}
# Latents of a 16-channel video VAE (Wan-style: 4x temporal, 8x spatial compression of 29 x 256 x 256 frames)
LATENT = (16, 8, 32, 32)
SIZES = {  # name: (layers, heads, head_dim, ffn, batch)
    "medium": (12, 12, 64, 3072, 16),
    "large": (24, 16, 64, 4096, 32),
}


class StepTimes(TrainCallback):
    def __init__(self) -> None:
        self.seconds: list[float] = []

    def on_step(self, row: dict[str, float]) -> None:
        self.seconds.append(row["seconds"])


def matmul_peak(device: torch.device, n: int = 8192, repeats: int = 10) -> float:
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize(device)
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    torch.cuda.synchronize(device)
    return 2 * n**3 * repeats / (time.perf_counter() - started)


def datasheet_peak(name: str) -> float | None:
    return next((peak for key, peak in DATASHEET_BF16.items() if key in name), None)


def random_data(num_clips: int, text_len: int, text_dim: int) -> TrainData:
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(num_clips, *LATENT, generator=g)
    tokens = torch.randn(num_clips, text_len, text_dim, generator=g)
    mask = torch.ones(num_clips, text_len, dtype=torch.bool)
    return TrainData([f"clip-{i:04d}" for i in range(num_clips)], latents, tokens, mask)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5, help="steps left out of the median")
    parser.add_argument("--text-len", type=int, default=64)
    parser.add_argument("--text-dim", type=int, default=768)
    args = parser.parse_args(argv)
    logging.basicConfig(format="  %(name)s: %(message)s")
    logging.getLogger("lib.train").setLevel(logging.INFO)  # the micro-batch the trainer picks from free memory
    if not torch.cuda.is_available():
        parser.error("needs a CUDA device")
    device = torch.device("cuda")
    name = torch.cuda.get_device_name(device)
    measured = matmul_peak(device)
    sheet = datasheet_peak(name)
    print(f"{name}, torch {torch.__version__}; bf16 matmul 8192^3: {measured / 1e12:.0f} TFLOP/s; "
          f"datasheet dense bf16: {sheet / 1e12 if sheet else float('nan'):.0f} TFLOP/s")  # fmt: skip
    data = random_data(4 * max(s[-1] for s in SIZES.values()), args.text_len, args.text_dim)
    for size in args.sizes:
        layers, heads, head_dim, ffn, batch = SIZES[size]
        cfg = replace(
            ExpertConfig(),
            num_layers=layers,
            num_heads=heads,
            head_dim=head_dim,
            ffn_dim=ffn,
            patch_size=[1, 2, 2],
            batch_size=batch,
            steps=args.steps,
            checkpoint_every=args.steps,
            log_every=args.steps,
            warmup_steps=1,
        )
        params = count_parameters(build_expert(cfg, data.in_channels, data.text_dim, data.sample_shape))
        tokens = tokens_per_sample(cfg, data.sample_shape) * batch
        flops = flops_per_step(cfg, data.in_channels, data.sample_shape, args.text_len, args.text_dim)
        print(f"\n{size}: {params / 1e6:.0f}M params, {layers} layers, d={heads * head_dim}, batch {batch}, "
              f"{tokens} video tokens/step, {flops / 1e12:.1f} TFLOP/step")  # fmt: skip
        times: dict[str, float] = {}
        with tempfile.TemporaryDirectory() as tmp:
            bare: list[float] = []
            bare_loop(data, cfg, Path(tmp) / "bare", device=device, on_step=bare.append)
            times["bare loop"] = statistics.median(bare[args.warmup :])
            torch.cuda.reset_peak_memory_stats(device)
            ours = StepTimes()
            train(data, cfg, Path(tmp) / "ours", seed=0, name=size, callbacks=[ours])
            times["our trainer"] = statistics.median(ours.seconds[args.warmup :])
            peak_mem = torch.cuda.max_memory_allocated(device) / 2**30
        for label, seconds in times.items():
            achieved = flops / seconds
            mfu = f"MFU {achieved / sheet:.1%} of datasheet, " if sheet else ""
            print(f"  {label:11s} {seconds * 1e3:7.1f} ms/step  {tokens / seconds:9.0f} tokens/s  "
                  f"{achieved / 1e12:6.1f} TFLOP/s  {mfu}{achieved / measured:.1%} of measured matmul")  # fmt: skip
        print(f"  ratio ours / bare: {times['our trainer'] / times['bare loop']:.3f}; "
              f"peak memory (ours) {peak_mem:.1f} GiB")  # fmt: skip


if __name__ == "__main__":
    main()

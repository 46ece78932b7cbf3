"""How a network runs on its device, not what it computes: torch.compile, bf16 autocast, the attention kernel, threads.

Every choice here changes float rounding only, so none of them is part of a model's identity (``RUN_ONLY_FIELDS``).
The CPU defaults come from ``benchmarks/cpu_throughput.py`` (one expert step of the benchmark network, 64 latent
tokens, batch 8, one thread, on a 2-core Sapphire Rapids with AMX; ``benchmarks/results/cpu_throughput.json``):

- At these sizes an eager step spends most of its time outside the matrix multiplies (per-op dispatch of the
  elementwise work: RoPE, modulation, GELU, norms), so compiling the transformer blocks (inductor fuses that work)
  buys more than any kernel choice. A cold compile costs about 25 s on two cores, which a short run does not win
  back: ``auto`` compiles on the CPU only from ``COMPILE_MIN_CPU_STEPS`` steps, and inductor's cache is kept under
  the run's output folder (``use_compile_cache``) so a rerun or the next expert of the same shape loads the kernels.
- bf16 matrix multiplies run 3-6x faster than fp32 where the CPU has AMX tiles, but only inside a compiled graph
  (there the casts fuse into the neighbouring kernels; eager bf16 is slower than fp32) and only with the plain
  ("math") attention: PyTorch's CPU flash-attention backward in bf16 is about 13x slower than in fp32 at 64 tokens.
  Without AMX (AVX-512 bf16 alone, about 2x fp32) the casts eat the gain, so ``auto`` stays in fp32 there.
- Sampling (``DDMPipeline.generate``) compiles the experts' blocks with dynamic shapes (top-k routing gives each
  expert a sub-batch of a different size at every step) for jobs of at least ``COMPILE_MIN_CPU_VIDEOS`` videos, and
  runs them in bf16 where the CPU has AMX: 2.01x the videos/s of eager fp32 (median of 5 pairs side by side); on the
  tiny run's 168 held-out prompts it moved attribute accuracy by 0.0015 where the noise seed moves it by 0.013
  (``benchmarks/sampling_parity.py``). Compiled fp32 alone is bit-identical to eager and 1.3x faster; eager bf16
  does not pay.
- Threads: one process per core. Two processes of two OpenMP threads each on two cores ran 1.7x slower than two
  single-thread processes (threads spin-wait on a busy core; under a third process it reached 70x), and a pod that
  is limited to 2 CPUs on a 64-core node would otherwise start 64 threads. ``limit_threads`` caps torch at the
  container's CPU quota.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import warnings
from pathlib import Path

import torch
from torch._inductor.runtime.cache_dir_utils import default_cache_dir
from torch.nn.attention import SDPBackend, sdpa_kernel

from lib.config import PRECISIONS

log = logging.getLogger(__name__)

# A cold compile of the blocks (~25 s on two cores) is won back after about 1000 steps at the measured saving
# (~29 ms per step at batch 8, one thread); shorter CPU runs train eagerly under ``auto``.
COMPILE_MIN_CPU_STEPS = 1000
# Sampling: a cold compile of the three benchmark experts' blocks costs 20-30 s (one thread) and saves 0.09 s a
# video (5.4 -> 10.4 videos/s), won back after 240-330 videos; the evaluation samples 1024 per method.
COMPILE_MIN_CPU_VIDEOS = 384


# Under bf16 autocast diffusers' fp32 norms get bf16 inputs; eager PyTorch warns once per trace that its fused norm
# kernel does not take mixed dtypes, which is moot where inductor writes the kernel.
warnings.filterwarnings("ignore", message="Mismatch dtype between input and weight", category=UserWarning)


def compiler_for(device: torch.device) -> str | None:
    """The compiler torch.compile builds its kernels with on ``device``: Triton's C compiler on CUDA ($CC, gcc or
    clang), inductor's C++ compiler on the CPU ($CXX or g++); None where there is none (PyTorch's CUDA *runtime*
    images ship without one)."""
    if device.type == "cuda":
        return os.environ.get("CC") or shutil.which("gcc") or shutil.which("clang")
    return shutil.which(os.environ.get("CXX", "g++"))


def compiles(mode: str, device: torch.device, steps: int | None = None) -> bool:
    """Whether ``expert.compile`` = ``mode`` compiles the transformer blocks on ``device`` for a run of ``steps``:
    ``always``; ``auto`` on CUDA, and on the CPU when the run has at least ``COMPILE_MIN_CPU_STEPS`` steps (None:
    the length is not known, so the compile is taken to pay). Without a compiler (``compiler_for``) ``auto`` runs
    uncompiled with a warning and ``always`` raises."""
    if mode == "never":
        return False
    if mode == "auto" and device.type != "cuda" and steps is not None and steps < COMPILE_MIN_CPU_STEPS:
        return False
    if compiler_for(device) is None:
        what = "C compiler ($CC, gcc or clang) for Triton" if device.type == "cuda" else "C++ compiler ($CXX, g++)"
        if mode == "always":
            raise RuntimeError(
                f"expert.compile=always: torch.compile on {device.type} needs a {what}; none is installed here. "
                "Install one (the Dockerfile adds gcc) or set expert.compile: never"
            )
        log.warning("expert.compile=auto: no %s on this node; running without torch.compile", what)
        return False
    return True


def cpu_has_amx() -> bool:
    """Whether this CPU multiplies bf16 matrices in AMX tiles (Sapphire Rapids and later)."""
    return bool(torch.cpu._is_amx_tile_supported())


def uses_bf16(precision: str, device: torch.device, compiled: bool) -> bool:
    """Whether the forward pass runs under bf16 autocast (weights, gradients, optimizer state and EMA stay fp32).

    ``auto``: on CUDA; on the CPU only in a compiled graph on a CPU with AMX (see the module docstring).
    ``bf16`` / ``fp32`` force it either way.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    if precision != "auto":
        return precision == "bf16"
    return device.type == "cuda" or (compiled and cpu_has_amx())


def sampling_compiles(device: torch.device, videos: int) -> bool:
    """Whether a sampling job of ``videos`` videos compiles the experts' blocks: on the CPU, with a C++ compiler, from
    ``COMPILE_MIN_CPU_VIDEOS`` on (below that the cold compile costs more than it saves). CUDA sampling stays eager:
    its dynamic-shape compile has not been measured."""
    return device.type == "cpu" and videos >= COMPILE_MIN_CPU_VIDEOS and compiler_for(device) is not None


def inference_bf16(device: torch.device, compiled: bool) -> bool:
    """Whether sampling runs its networks in bf16: on CUDA, as they trained there; on the CPU only in compiled blocks
    on a CPU with AMX (eager bf16 sampling ran as fast as fp32, so not worth its rounding; see the module docstring)."""
    return device.type == "cuda" or (compiled and cpu_has_amx())


def compile_options(device: torch.device, bf16: bool) -> dict[str, bool]:
    """Inductor options for compiling the blocks on the CPU (CUDA keeps inductor's defaults):

    - the C++ wrapper: each compiled graph calls its kernels from C++ instead of generated Python, which takes 3-7 %
      off a compiled step at batch 8 (bf16 and fp32 alike, identical losses; 5 alternated pairs,
      ``docs/results.md``), where a quarter of the step is framework time around the kernels;
    - in bf16, tanh (in the GELU of every feed-forward layer) as 2 / (1 + exp(-2x)) - 1 instead of Sleef's: a compiled
      bf16 step took 6-8 % less (46.3 against 50.4 ms, 44.0 against 47.0, side by side), and its error (about 1e-7
      near 0) is far under bf16's rounding (4e-3). fp32 graphs keep Sleef's tanh, which matches eager to the last bit.
    """
    if device.type != "cpu":
        return {}
    return {"cpp_wrapper": True, "cpp.use_decompose_tanh": True} if bf16 else {"cpp_wrapper": True}


def forward_context(device: torch.device, bf16: bool) -> contextlib.AbstractContextManager:
    """Autocast (when ``bf16``) plus, on the CPU in bf16, the math attention kernel (see the module docstring)."""
    if not bf16:
        return contextlib.nullcontext()
    stack = contextlib.ExitStack()
    stack.enter_context(torch.autocast(device.type, dtype=torch.bfloat16))
    if device.type == "cpu":
        stack.enter_context(sdpa_kernel(SDPBackend.MATH))
    return stack


def use_compile_cache(output_dir: str) -> None:
    """Keep inductor's compiled kernels under a local ``output_dir`` (``.inductor-cache``), where a rerun of the same
    config and the next model of the same shape find them. A $TORCHINDUCTOR_CACHE_DIR the user chose wins; the one
    inductor writes back itself on first use (its per-user temp folder) does not. An object store URI leaves
    inductor's default."""
    current = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    chosen = current is not None and os.path.abspath(current) != os.path.abspath(default_cache_dir())
    if chosen or "://" in output_dir:
        return
    folder = Path(output_dir).resolve() / ".inductor-cache"
    folder.mkdir(parents=True, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder)


def cpu_quota(cgroup_root: str | Path = "/sys/fs/cgroup") -> int | None:
    """Whole CPUs this container may use by its cgroup v2 quota (``cpu.max``: "<quota> <period>" or "max"), e.g. a
    Kubernetes pod's CPU limit (Flyte sets it to the task's request); None where there is no quota."""
    try:
        quota, period = (Path(cgroup_root) / "cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        return None
    return None if quota == "max" else max(1, int(quota) // int(period))


def limit_threads(cgroup_root: str | Path = "/sys/fs/cgroup") -> int:
    """Cap torch's intra-op threads at the cores this process may run on and its container's CPU quota (torch counts
    the node's cores: a pod limited to 2 CPUs on a 64-core node would start 64 spinning threads); returns the count."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = cpu_quota(cgroup_root)
    threads = min(cores, quota) if quota is not None else cores
    if threads < torch.get_num_threads():
        torch.set_num_threads(threads)
    return torch.get_num_threads()

"""The flow-matching trainer shared by the experts and the monolith.

``train`` reads top to bottom in the nanoGPT/DiT order (lr, forward, loss, backward, clip, step, EMA, log,
checkpoint); everything else here is a small pure helper. What it guarantees:

- Determinism: initial weights, batch order (a per-epoch permutation), timesteps, noise and caption dropout all
  come from generators derived from ``(seed, name)``. Everything random for a step is drawn for the whole batch
  before it is split into micro-batches, so the micro-batch size (picked from the memory found) changes nothing
  but float rounding: every device reaches the configured effective batch.
- Resumability: checkpoints (``lib.train.checkpoint``) hold model, EMA, optimizer, generator and sampler state
  and the log so far (the learning rate is a pure function of the step, ``lr_at``, so the step is the whole
  scheduler state); a run interrupted at any point and restarted on the same ``out_dir`` ends with bit-identical
  weights on CPU. Callers that retry (Flyte retries) must therefore pass a stable ``out_dir``; checkpoints of a
  different run (config, seed, name, clips or spec_hash) found there are removed, not resumed from. Only the
  ``RUN_ONLY_FIELDS`` of ``lib.config`` (checkpoint and log intervals, micro-batch, compile, activation
  checkpointing) may change across a resume (e.g. a retry on another GPU).
- Fail fast: a non-finite loss or gradient norm raises ``NonFiniteLossError`` naming the step and the clips,
  before the optimizer step, so no checkpoint or model is ever written from a poisoned state.
- Data parallelism (``lib.train.distributed``): under torchrun / Flyte ``Elastic`` every rank draws the same
  global batch and computes its slice; DDP averages the gradients, so N processes train the same recipe as one
  (up to float rounding) and rank 0 alone logs, checkpoints and writes the model.
- Throughput (``expert.compile``, ``expert.precision``, ``expert.activation_checkpointing``; ``lib.models.levers``
  says where each pays, CPU included): each transformer block compiled in place (so state-dict keys, checkpoints
  and saved models stay plain), bf16 autocast (weights, optimizer state and EMA stay fp32), activations recomputed
  in backward so larger micro-batches fit, fused AdamW and a multi-tensor gradient clip, each step's batch copied
  to the device once (pinned, asynchronous), and one device-to-host sync per step.
- Continuing: ``init_from`` starts the model and its EMA from a saved model of the same architecture (a grown
  DDM's expert learning the clips that joined its cluster, ``lib.extend``); the optimizer and the lr schedule, warm-up
  included, start afresh, and the start weights' sha256 joins the run's identity and ``training.json``.
- Idempotence: ``out_dir/model`` holds the EMA weights (diffusers ``save_pretrained``), ``training.json`` (with
  the weights' sha256 and the caller's ``spec_hash``) and the TrainingLog; a second call with the same
  ``spec_hash`` returns that result without training.
- One trainer per folder: the process training in ``out_dir`` holds an advisory lock on it, so a second run started
  on the same output folder waits and then reuses the first's model instead of writing the same files at once.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from diffusers import ModelMixin
from pandera.typing import DataFrame

from data_schemas.train import TrainingLog
from lib.config import RUN_ONLY_FIELDS, ExpertConfig
from lib.io import atomic_write, exclusive
from lib.models.factory import (
    TRAINING_INFO,
    build_expert,
    count_parameters,
    expert_forward,
    load_weights_into,
    weights_sha256,
)
from lib.models.levers import compile_options, compiles, forward_context, uses_bf16
from lib.models.schedule import ema_decay_at, lr_at
from lib.progress import progress
from lib.seeding import derive_seed, torch_generator
from lib.train import checkpoint as ckpt
from lib.train.compute import flops_per_step, probe_micro_batch
from lib.train.distributed import Workers, workers_from_env

log = logging.getLogger(__name__)

LOG_FILE = "training_log.parquet"
LOCK_FILE = ".lock"  # held by the process training in a run folder (``_one_trainer``)


class NonFiniteLossError(ValueError):
    """Training produced a NaN/inf loss or gradient; raised before the step is applied."""


@dataclass
class TrainData:
    """The encoded training set of one expert (or of the monolith), held in memory.

    Attributes:
        clip_ids: one id per sample, used in error messages and to fingerprint the data.
        latents: float32 [N, C, T, H, W]; the pixel codec gives values in [-1, 1].
        tokens: float32 [N, L, D] caption token embeddings.
        mask: bool [N, L], True for real (non-padding) tokens.
    """

    clip_ids: list[str]
    latents: torch.Tensor
    tokens: torch.Tensor
    mask: torch.Tensor

    def __post_init__(self) -> None:
        n = len(self.clip_ids)
        if n == 0:
            raise ValueError("TrainData: no clips to train on")
        if self.latents.ndim != 5 or self.latents.dtype != torch.float32 or self.latents.shape[0] != n:
            raise ValueError(
                f"TrainData.latents: expected float32 [N={n}, C, T, H, W], got "
                f"{self.latents.dtype} {tuple(self.latents.shape)}"
            )
        if self.tokens.ndim != 3 or self.tokens.dtype != torch.float32 or self.tokens.shape[0] != n:
            raise ValueError(
                f"TrainData.tokens: expected float32 [N={n}, L, D], got {self.tokens.dtype} {tuple(self.tokens.shape)}"
            )
        if self.mask.dtype != torch.bool or self.mask.shape != self.tokens.shape[:2]:
            raise ValueError(
                f"TrainData.mask: expected bool {tuple(self.tokens.shape[:2])}, got "
                f"{self.mask.dtype} {tuple(self.mask.shape)}"
            )

    def __len__(self) -> int:
        return len(self.clip_ids)

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        return tuple(self.latents.shape[2:])

    @property
    def in_channels(self) -> int:
        return self.latents.shape[1]

    @property
    def text_len(self) -> int:
        return self.tokens.shape[1]

    @property
    def text_dim(self) -> int:
        return self.tokens.shape[2]


@dataclass
class TrainResult:
    """What a training call leaves behind. ``model_dir`` is None when ``max_steps`` stopped the run early."""

    model_dir: Path | None
    log: DataFrame[TrainingLog]
    steps: int
    skipped: bool = False  # served from an existing model with the same spec_hash
    resumed_from: int = 0  # step of the checkpoint the run continued from (0: fresh start)
    info: dict[str, Any] = field(default_factory=dict)  # training.json


class TrainCallback:
    """Hooks around the loop; subclass and override what you need (all no-ops here)."""

    def on_start(self, step: int, total: int) -> None: ...

    def on_step(self, row: dict[str, float]) -> None: ...

    def on_checkpoint(self, step: int, folder: Path) -> None: ...

    def on_end(self, result: TrainResult) -> None: ...


class ProgressCallback(TrainCallback):
    """A progress bar (``lib.progress``: step/total, loss, lr, s/step, ETA) and a log line with the mean loss every
    ``log_every`` steps (what a Flyte pod's log shows, where there is no bar)."""

    def __init__(self, log_every: int, name: str = "train") -> None:
        self.log_every, self.name, self.bar, self.window = log_every, name, None, []
        self.last = time.perf_counter()

    def on_start(self, step: int, total: int) -> None:
        self.bar = progress(total=total, desc=self.name, unit="step", initial=step)  # a resumed run: its checkpoint
        self.last = time.perf_counter()

    def on_step(self, row: dict[str, float]) -> None:
        self.window.append(row["loss"])
        now = time.perf_counter()
        self.bar.update(1)
        postfix = f"loss {row['loss']:.4f} lr {row['lr']:.2e} {now - self.last:.2f} s/step"
        self.bar.set_postfix_str(postfix, refresh=False)
        self.last = now
        if row["step"] % self.log_every == 0:
            mean = sum(self.window) / len(self.window)
            log.info(
                "%s step %d loss %.4f lr %.2e grad %.3f", self.name, row["step"], mean, row["lr"], row["grad_norm"]
            )
            self.window = []

    def on_end(self, result: TrainResult) -> None:
        self.bar.close()


Teacher = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@torch.no_grad()
def teacher_targets(
    teacher: Teacher, x_t: torch.Tensor, t: torch.Tensor, idx: torch.Tensor, keep: torch.Tensor, chunk: int
) -> torch.Tensor:
    """Distillation targets: ``teacher(x_t, t, clip indices, caption kept)`` -> velocity, in chunks of the
    micro-batch so the teacher never holds more activations than the student does."""
    parts = [teacher(x_t[i : i + chunk], t[i : i + chunk], idx[i : i + chunk], keep[i : i + chunk])
             for i in range(0, len(x_t), chunk)]  # fmt: skip
    return torch.cat(parts).float()


def batch_to_device(tensors: Sequence[torch.Tensor], rows: slice, device: torch.device) -> list[torch.Tensor]:
    """``rows`` of each batch tensor (built on the CPU) on ``device``: on CUDA one pinned, asynchronous copy each
    (the host moves on; the stream orders the copies before the kernels that read them), on the CPU views."""
    if device.type != "cuda":
        return [x[rows] for x in tensors]
    return [x[rows].pin_memory().to(device, non_blocking=True) for x in tensors]


@torch.no_grad()
def update_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model (buffers are copied); one multi-tensor kernel on GPUs, where a
    launch per parameter tensor would cost more than the arithmetic."""
    ema_params, params = list(ema.parameters()), [p.detach() for p in model.parameters()]
    if len(ema_params) != len(params):
        raise ValueError(f"EMA has {len(ema_params)} parameter tensors, the model {len(params)}")
    torch._foreach_lerp_(ema_params, params, 1.0 - decay)
    for e, b in zip(ema.buffers(), model.buffers(), strict=True):
        e.copy_(b)


def clip_gradients(params: Sequence[torch.Tensor], max_norm: float, norm: torch.Tensor, norm_value: float) -> None:
    """``clip_grad_norm_`` given the total gradient norm (``norm``, and ``norm_value``, the same on the host), bit for
    bit, but scaling the gradients only where clipping can bite: a multiply by the clamped factor 1.0 is exact yet
    reads and writes every gradient (0.6 ms of a 40 ms CPU step), and about 99 % of steps stay under the norm. The
    margin covers the float32 rounding of clip_grad_norm_'s factor max_norm / (norm + 1e-6)."""
    if norm_value + 1e-6 >= max_norm * (1 - 1e-5):
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm, foreach=True)


def sample_timesteps(n: int, mode: str, generator: torch.Generator) -> torch.Tensor:
    """Training times t in [0, 1], float [n]: ``uniform`` or ``logit_normal`` (sigmoid of a standard normal,
    SD3's choice: most samples at mid noise levels, where the velocity is hardest to predict)."""
    if mode == "uniform":
        return torch.rand(n, generator=generator)
    if mode == "logit_normal":
        return torch.sigmoid(torch.randn(n, generator=generator))
    raise ValueError(f"timestep sampling {mode!r} is not one of uniform, logit_normal")


def flow_matching_batch(
    x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor, objective: str = "flow"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Noisy input and regression target: x_t = (1 - t) x0 + t eps; target v = eps - x0 (``flow``) or eps (``eps``).

    Shapes: x0, eps [B, C, T, H, W]; t [B]. Returns (x_t, target), both [B, C, T, H, W].
    """
    tt = t.view(-1, *([1] * (x0.ndim - 1)))
    x_t = (1 - tt) * x0 + tt * eps
    if objective == "flow":
        return x_t, eps - x0
    if objective == "eps":
        return x_t, eps
    raise ValueError(f"objective {objective!r} is not one of flow, eps")


class BatchSampler:
    """Batches of indices from a fresh random permutation per epoch; its state goes into checkpoints."""

    def __init__(self, n: int, batch_size: int, generator: torch.Generator) -> None:
        self.n, self.batch_size, self.generator = n, batch_size, generator
        self.perm, self.cursor = torch.randperm(n, generator=generator), 0

    def next_batch(self) -> torch.Tensor:
        parts, need = [], self.batch_size
        while need:
            if self.cursor == self.n:
                self.perm, self.cursor = torch.randperm(self.n, generator=self.generator), 0
            take = self.perm[self.cursor : self.cursor + need]
            parts.append(take)
            self.cursor, need = self.cursor + len(take), need - len(take)
        return torch.cat(parts)

    def state(self) -> dict[str, torch.Tensor]:
        return {"perm": self.perm, "cursor": torch.tensor(self.cursor), "rng": self.generator.get_state()}

    def load(self, state: dict[str, torch.Tensor]) -> None:
        self.perm, self.cursor = state["perm"], int(state["cursor"])
        self.generator.set_state(state["rng"])


def _fingerprint(
    data: TrainData, cfg: ExpertConfig, seed: int, name: str, spec_hash: str | None, start: dict[str, str] | None
) -> str:
    """Identity of a run for resuming: everything that changes the math (not ``RUN_ONLY_FIELDS``, how it runs),
    including the start weights' sha256 when the run continues a saved model (``start``; left out otherwise, so the
    checkpoints of every run from a fresh init keep their identity)."""
    values = {k: v for k, v in asdict(cfg).items() if k not in RUN_ONLY_FIELDS}
    clips = hashlib.sha256("\n".join(data.clip_ids).encode()).hexdigest()
    key = {
        "cfg": values,
        "seed": seed,
        "name": name,
        "spec": spec_hash,
        "clips": clips,
        "latents": list(data.latents.shape),
        "tokens": list(data.tokens.shape),
    }
    if start is not None:
        key["start"] = start
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def _stored_result(model_dir: Path, spec_hash: str | None) -> TrainResult | None:
    """The finished result in ``model_dir`` if it was trained for ``spec_hash`` and its weights are intact."""
    info_file = model_dir / TRAINING_INFO
    if spec_hash is None or not info_file.is_file():
        return None
    info = json.loads(info_file.read_text())
    if info.get("spec_hash") != spec_hash:
        return None
    if info.get("weights_sha256") != weights_sha256(model_dir):
        log.warning("%s: weights do not match %s; retraining", model_dir, TRAINING_INFO)
        return None
    table = TrainingLog.validate(pd.read_parquet(model_dir / LOG_FILE))
    return TrainResult(model_dir, table, int(info["steps"]), skipped=True, info=info)


def _non_finite(
    step: int, loss: float, grad_norm: float, per_sample: torch.Tensor, ids: list[str], lr: float
) -> NonFiniteLossError:
    bad = [cid for cid, ok in zip(ids, torch.isfinite(per_sample).tolist(), strict=True) if not ok]
    what = f"loss {loss}" if not math.isfinite(loss) else f"gradient norm {grad_norm} (loss {loss:.4g})"
    return NonFiniteLossError(
        f"non-finite {what} at step {step}; clips with a non-finite loss: {bad or 'none'}; batch clip ids: {ids}. "
        f"Hint: check these clips' latents/tokens for NaN/inf, or lower expert.lr (now {lr:g}) / expert.grad_clip."
    )


def _checkpoint_state(
    model: ModelMixin, ema: ModelMixin, opt: torch.optim.Optimizer, sampler: BatchSampler, rows: list, fingerprint: str
) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, Any]]:
    opt_tensors, opt_meta = ckpt.optimizer_to_flat(opt.state_dict())
    log_tensors = {k: torch.tensor([r[k] for r in rows], dtype=torch.float64) for k in TrainingLog.to_schema().columns}
    state = {**sampler.state(), **{f"log.{k}": v for k, v in log_tensors.items()}}
    groups = {"model": model.state_dict(), "ema": ema.state_dict(), "optimizer": opt_tensors, "state": state}
    return groups, {"fingerprint": fingerprint, "optimizer": opt_meta}


def _resume(
    root: Path,
    fingerprint: str,
    model: ModelMixin,
    ema: ModelMixin,
    opt: torch.optim.Optimizer,
    sampler: BatchSampler,
    remove_foreign: bool = True,
) -> tuple[int, list[dict[str, float]]]:
    """Load the newest complete checkpoint of this run; returns (step, log rows). Foreign checkpoints are removed
    (by rank 0 only: ``remove_foreign``)."""
    found = ckpt.complete_checkpoints(root)
    if not found:
        return 0, []
    groups, manifest = ckpt.load_checkpoint(found[-1][1])
    if manifest.get("fingerprint") != fingerprint:
        if remove_foreign:
            ckpt.remove_checkpoints(root)
        return 0, []
    model.load_state_dict(groups["model"])
    ema.load_state_dict(groups["ema"])
    opt.load_state_dict(ckpt.optimizer_from_flat(groups["optimizer"], manifest["optimizer"]))
    sampler.load(groups["state"])
    cols = {k[len("log.") :]: v.tolist() for k, v in groups["state"].items() if k.startswith("log.")}
    rows = [{k: (int(cols[k][i]) if k == "step" else cols[k][i]) for k in cols} for i in range(len(cols["step"]))]
    log.info("resuming from %s (step %d)", found[-1][1], manifest["step"])
    return int(manifest["step"]), rows


def _training_info(
    data: TrainData, cfg: ExpertConfig, seed: int, name: str, spec_hash: str | None, start: dict[str, str] | None
) -> dict:
    """What later stages need to know about a trained model (the sampler reads ``objective``; a grown DDM checks that
    a continued expert started from its parent's weights, ``init_weights_sha256``)."""
    info = {
        "name": name,
        "seed": seed,
        "spec_hash": spec_hash,
        "objective": cfg.objective,
        "timestep_sampling": cfg.timestep_sampling,
        "steps": cfg.steps,
        "num_clips": len(data),
        "in_channels": data.in_channels,
        "sample_shape": list(data.sample_shape),
        "text_len": data.text_len,
        "text_dim": data.text_dim,
        "flops_per_step": flops_per_step(cfg, data.in_channels, data.sample_shape, data.text_len, data.text_dim),
        "expert": asdict(cfg),
    }
    return info if start is None else {**info, "init_weights_sha256": start}


def _write_model(ema: ModelMixin, model_dir: Path, table: pd.DataFrame, info: dict[str, Any]) -> dict[str, Any]:
    """Publish EMA weights + log + training.json (written last) as ``model_dir``, replacing an older one whole."""
    tmp = Path(tempfile.mkdtemp(prefix=".model.", suffix=".tmp", dir=model_dir.parent))
    ema.save_pretrained(tmp, safe_serialization=True)
    table.to_parquet(tmp / LOG_FILE, index=False)
    info = {**info, "weights_sha256": weights_sha256(tmp)}
    atomic_write(tmp / TRAINING_INFO, lambda p: p.write_text(json.dumps(info, indent=1)))
    if model_dir.exists():
        old = model_dir.with_name(f".model.old.{os.getpid()}")
        os.replace(model_dir, old)
        shutil.rmtree(old)
    os.replace(tmp, model_dir)
    return info


@contextlib.contextmanager
def _one_trainer(out_dir: Path, is_main: bool) -> Iterator[None]:
    """Hold ``out_dir/.lock`` (an advisory ``flock``) while training: two runs started at once on one output folder
    would otherwise write the same checkpoints and model folder at once (a rename onto the other's folder fails, a
    prune deletes what the other reads). The second waits, then finds the first's model (same ``spec_hash``) or
    resumes from its checkpoints. The kernel drops the lock when its process dies, so a killed run leaves none.
    Rank 0 alone takes it: the other ranks of a distributed run write nothing and wait at its barriers."""
    if not is_main:
        yield
        return
    with exclusive(out_dir / LOCK_FILE, f"{out_dir}: another process is training here; waiting for it"):
        yield


def train(
    data: TrainData,
    cfg: ExpertConfig,
    out_dir: str | Path,
    seed: int,
    name: str,
    callbacks: Sequence[TrainCallback] | None = None,
    max_steps: int | None = None,
    spec_hash: str | None = None,
    teacher: Teacher | None = None,
    init_from: str | Path | None = None,
) -> TrainResult:
    """Train one expert (or the monolith) with flow matching; resume from ``out_dir/checkpoints`` if present.

    Args:
        data: latents, caption tokens and mask of the clips to train on.
        cfg: network size and optimisation settings.
        out_dir: stable folder of this run: ``checkpoints/`` while training, ``model/`` at the end.
        seed: run seed; with ``name`` it derives every generator of this run.
        name: run name, e.g. ``expert-02`` or ``monolith`` (also seeds, so experts differ).
        callbacks: hooks around the loop; default ``[ProgressCallback]`` (bar + logging).
        max_steps: stop after this many optimizer steps in total (a checkpoint is written there) without
            writing ``model/``; a later call continues from it. None: run all ``cfg.steps``.
        spec_hash: caller's identity of the run (config + data, and the teacher's when distilling); an existing
            ``model/`` with the same one is returned as is, without training.
        teacher: distillation (``lib.distill``): ``teacher(x_t, t, clip indices, caption kept)`` gives the velocity
            the model learns instead of the data's flow-matching target (noise, times and caption dropout are
            drawn as always, so the student also learns the unconditional velocity CFG needs).
        init_from: a saved model folder (the trainer's ``model/``, same architecture) whose weights the model and
            its EMA start from instead of a fresh init: a grown DDM's expert continuing on new clips. Only a fresh
            run reads it; a resumed checkpoint already continues from it (its sha256 is part of the run's identity).

    Returns:
        TrainResult with the model folder, the TrainingLog and the step count.
    """
    out_dir = Path(out_dir)
    with _one_trainer(out_dir, workers_from_env().is_main):
        model_dir, ckpt_root = out_dir / "model", out_dir / "checkpoints"
        stored = _stored_result(model_dir, spec_hash)
        if stored is not None:
            log.info("%s: %s already trained for spec %s; skipping", name, model_dir, spec_hash)
            return stored
        if teacher is not None and cfg.objective != "flow":
            raise ValueError(
                f"{name}: a teacher gives velocities; distilling needs objective flow, not {cfg.objective}"
            )
        stop = cfg.steps if max_steps is None else min(max_steps, cfg.steps)
        start = weights_sha256(init_from) if init_from is not None else None
        fingerprint = _fingerprint(data, cfg, seed, name, spec_hash, start)
        run, step, rows = _set_up(data, cfg, ckpt_root, seed, name, fingerprint, init_from)
        is_main = run.workers.is_main
        callbacks = [ProgressCallback(cfg.log_every, name)] if callbacks is None else list(callbacks)
        callbacks = callbacks if is_main else []
        resumed_from = step
        for cb in callbacks:
            cb.on_start(step, stop)
        while step < stop:
            rows.append(_step(run, data, cfg, step, teacher))
            step += 1
            for cb in callbacks:
                cb.on_step(rows[-1])
            if (step % cfg.checkpoint_every == 0 or step == stop) and is_main:
                groups, meta = _checkpoint_state(run.model, run.ema, run.opt, run.sampler, rows, fingerprint)
                folder = ckpt.save_checkpoint(ckpt_root, step, groups, meta)
                ckpt.prune_checkpoints(ckpt_root)
                for cb in callbacks:
                    cb.on_checkpoint(step, folder)

        table = TrainingLog.validate(pd.DataFrame(rows, columns=list(TrainingLog.to_schema().columns)))
        result = TrainResult(None, table, step, resumed_from=resumed_from)
        if step == cfg.steps:
            info = _training_info(data, cfg, seed, name, spec_hash, start)
            if is_main:
                info = _write_model(run.ema.to("cpu"), model_dir, table, info)
            result.info, result.model_dir = info, model_dir
        run.workers.barrier()  # the other ranks return once rank 0 has published the model
        for cb in callbacks:
            cb.on_end(result)
        return result


@dataclass
class _Run:
    """What one run carries from step to step once set up: the networks, the optimizer, the generator every random
    draw of a step comes from, and how a step's batch splits across ranks and micro-batches."""

    model: ModelMixin  # the weights being trained (compiled blocks in place when compiling)
    net: torch.nn.Module  # what the forward pass runs: the model, or its DDP wrapper when distributed
    ema: ModelMixin  # fp32, plain, never compiled: what ``model/`` holds at the end
    opt: torch.optim.Optimizer
    gen: torch.Generator  # batches, timesteps, noise, caption dropout
    sampler: BatchSampler
    device: torch.device
    bf16: bool
    workers: Workers  # this process's rank among the run's processes (one without torchrun)
    rows_here: slice  # this rank's rows of every global batch
    micro: int  # rows per forward + backward


def _forward_loss(run: _Run, x_t, t, target, tokens, mask, module: torch.nn.Module | None = None) -> torch.Tensor:
    """Per-sample MSE [b] of the model's prediction, on the device (``module``: the bare model, to skip DDP)."""
    with forward_context(run.device, run.bf16):
        pred = expert_forward(run.net if module is None else module, x_t, t, tokens, mask)
    return (pred.float() - target).pow(2).flatten(1).mean(1)


def _set_up(
    data: TrainData,
    cfg: ExpertConfig,
    ckpt_root: Path,
    seed: int,
    name: str,
    fingerprint: str,
    init_from: str | Path | None,
) -> tuple[_Run, int, list[dict[str, float]]]:
    """Build the run (fresh, from ``init_from``, or resumed from its newest checkpoint) and size its micro-batches;
    returns it with the step and the log rows it resumes at."""
    workers = workers_from_env()
    device = workers.device()
    compile_blocks = compiles(cfg.compile, device, cfg.steps)  # before any work: a missing compiler fails fast
    model = build_expert(cfg, data.in_channels, data.text_dim, data.sample_shape, seed=derive_seed(seed, name))
    if init_from is not None:  # a resumed checkpoint (below) replaces these weights, model and EMA alike
        load_weights_into(model, init_from)
    model = model.to(device).train()
    ema = copy.deepcopy(model).requires_grad_(False)
    if cfg.activation_checkpointing:
        model.enable_gradient_checkpointing()  # diffusers: each block's activations are recomputed in backward
    net = model
    if workers.distributed:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    # one kernel for all parameters (a CPU step spent 7 % of its time in the per-parameter loop)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    gen = torch_generator(seed, name, "train")
    sampler = BatchSampler(len(data), cfg.batch_size, gen)
    rows_here = workers.shard(cfg.batch_size)
    run = _Run(model, net, ema, opt, gen, sampler, device, uses_bf16(cfg.precision, device, compile_blocks),
               workers, rows_here, micro=0)  # fmt: skip
    # Rank 0 resumes first (and removes foreign checkpoints); the others then read what it kept.
    step, rows = _resume(ckpt_root, fingerprint, model, ema, opt, sampler) if workers.is_main else (0, [])
    workers.barrier()
    if not workers.is_main:
        step, rows = _resume(ckpt_root, fingerprint, model, ema, opt, sampler, remove_foreign=False)

    def probe(n: int) -> None:  # forward + backward on n samples, to measure memory (CUDA only)
        z, tokens, mask = torch.zeros(n, *data.latents.shape[1:], device=device), data.tokens[:1], data.mask[:1]
        tokens, mask, z_t = tokens.to(device), mask.to(device), torch.full((n,), 0.5, device=device)
        # the bare model, not the DDP wrapper: probing must not all-reduce
        _forward_loss(run, z, z_t, z, tokens.expand(n, -1, -1), mask.expand(n, -1), module=model).sum().backward()
        model.zero_grad(set_to_none=True)

    adam_bytes = 2 * sum(p.numel() * p.element_size() for p in model.parameters())
    local_batch = rows_here.stop - rows_here.start
    micro = cfg.micro_batch or probe_micro_batch(probe, local_batch, device, reserve_bytes=adam_bytes)
    run.micro = math.ceil(local_batch / math.ceil(local_batch / min(micro, local_batch)))  # even: 16 + 16, not 31 + 1
    if compile_blocks:  # after the probe: eager memory bounds the compiled one, and its sizes 1, 2 are not compiled
        # each block in place (same keys); one graph per micro shape
        model.compile_repeated_blocks(dynamic=False, options=compile_options(device, run.bf16))
    log.info("%s: %d clips, %d params, batch %d = %d process(es) x %d x %d on %s (%s, %s)", name, len(data),
             count_parameters(model), cfg.batch_size, workers.world, math.ceil(local_batch / run.micro), run.micro,
             device, "compiled" if compile_blocks else "eager", "bf16 autocast" if run.bf16 else "fp32")  # fmt: skip
    return run, step, rows


def _step(run: _Run, data: TrainData, cfg: ExpertConfig, step: int, teacher: Teacher | None) -> dict[str, float]:
    """One optimizer step (the ``step``-th, counted from 0); returns its log row."""
    workers = run.workers
    started = time.perf_counter()
    lr = lr_at(step, cfg)
    for group in run.opt.param_groups:
        group["lr"] = lr
    # Everything random for this step is drawn for the whole batch, before any split into micro-batches.
    idx = run.sampler.next_batch()
    t = sample_timesteps(len(idx), cfg.timestep_sampling, run.gen)  # [B]
    x0 = data.latents[idx]  # [B, C, T, H, W]
    eps = torch.randn(x0.shape, generator=run.gen)
    keep = torch.rand(len(idx), generator=run.gen) >= cfg.caption_dropout  # [B], False: train unconditionally
    x_t, target = flow_matching_batch(x0, t, eps, cfg.objective)
    tokens, mask = data.tokens[idx], data.mask[idx] & keep[:, None]
    x_t, t, target, tokens, mask = batch_to_device([x_t, t, target, tokens, mask], run.rows_here, run.device)
    if teacher is not None:  # distillation: the teacher's velocity replaces the data's target
        target = teacher_targets(teacher, x_t, t, idx[run.rows_here], keep[run.rows_here], run.micro)
    per_sample = []
    # Gradient accumulation over this rank's rows: the micro losses sum to its share of the batch mean, scaled by
    # the world size because DDP averages (not sums) the ranks' gradients, in the last backward only.
    starts = range(0, run.rows_here.stop - run.rows_here.start, run.micro)
    for lo in starts:
        sl = slice(lo, min(lo + run.micro, starts.stop))
        sync = lo == starts[-1] or not workers.distributed
        with contextlib.nullcontext() if sync else run.net.no_sync():
            loss_i = _forward_loss(run, x_t[sl], t[sl], target[sl], tokens[sl], mask[sl])
            (loss_i.sum() * workers.world / len(idx)).backward()
        per_sample.append(loss_i.detach())
    per_sample = workers.gather_rows(torch.cat(per_sample), run.rows_here, len(idx))
    params = [p for p in run.model.parameters() if p.grad is not None]
    norm = torch.nn.utils.get_total_norm([p.grad for p in params], foreach=True)
    # One device-to-host sync per step: the losses and the norm travel together (each sync stalls the GPU).
    host = torch.cat([per_sample.float(), norm.reshape(1).float()]).cpu()
    per_sample, grad_norm = host[:-1], host[-1].item()
    loss = per_sample.mean().item()
    if not (math.isfinite(loss) and math.isfinite(grad_norm)):
        raise _non_finite(step + 1, loss, grad_norm, per_sample, [data.clip_ids[i] for i in idx], lr)
    clip_gradients(params, cfg.grad_clip, norm, grad_norm)
    run.opt.step()
    run.opt.zero_grad(set_to_none=True)
    update_ema(run.ema, run.model, ema_decay_at(step, cfg.ema_decay))
    return {"step": step + 1, "loss": loss, "lr": lr, "grad_norm": grad_norm, "seconds": time.perf_counter() - started}

"""A GPU pool as a platform team describes it: GPU types with counts, speed, memory and price, and the network.

Read from YAML (``configs/pools/*.yaml``)::

    gpus:
      - {name: H100, count: 16, memory_gib: 80, bf16_tflops: 989, price_per_hour: 2.9,
         accelerator: nvidia-tesla-h100, gpus_per_node: 8, intra_node_gbit_s: 7200, mfu: 0.35}
    network: {inter_node_gbit_s: 400}
    failures: {mtbf_hours_per_gpu: 50000, checkpoint_minutes: 30, restart_minutes: 10}

Speed is either measured (``tokens_per_s``: video tokens per second per GPU for a model, keyed by its parameter
count in millions as the throughput benchmark prints it, e.g. ``"413"``) or assumed: the datasheet's dense bf16
peak times ``mfu``. The planner uses a measured figure when the pool has one for the model it places.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fsspec
import yaml

from lib.config import ConfigError, build_section


def _check(ok: bool, where: str, msg: str) -> None:
    if not ok:
        raise ConfigError(f"{where}: {msg}")


@dataclass(frozen=True)
class GpuType:
    name: str = ""  # e.g. "H100"; names the type in plans and reports
    count: int = 0  # GPUs of this type free in the pool
    memory_gib: float = 0.0  # per GPU
    bf16_tflops: float = 0.0  # dense bf16 peak per GPU (datasheet)
    price_per_hour: float = 0.0  # per GPU
    accelerator: str = ""  # Flyte accelerator name the task requests, e.g. "nvidia-tesla-h100"
    gpus_per_node: int = 8  # an expert never spans nodes: its data-parallel group stays inside one
    intra_node_gbit_s: float = 2400.0  # GPU-to-GPU inside a node, per GPU (NVLink-class; PCIe cards far less)
    mfu: float = 0.35  # assumed model FLOP utilisation when tokens_per_s has no entry for the model
    tokens_per_s: dict[str, float] = field(default_factory=dict)  # measured, per GPU, keyed by params in millions

    def validate(self, where: str) -> None:
        _check(bool(self.name), f"{where}.name", "required")
        _check(self.count > 0, f"{where}.count", f"must be > 0, got {self.count}")
        _check(self.memory_gib > 0, f"{where}.memory_gib", f"must be > 0, got {self.memory_gib}")
        _check(self.bf16_tflops > 0, f"{where}.bf16_tflops", f"must be > 0, got {self.bf16_tflops}")
        _check(self.price_per_hour >= 0, f"{where}.price_per_hour", "must be >= 0")
        _check(self.gpus_per_node > 0, f"{where}.gpus_per_node", f"must be > 0, got {self.gpus_per_node}")
        _check(self.intra_node_gbit_s > 0, f"{where}.intra_node_gbit_s", "must be > 0")
        _check(0 < self.mfu <= 1, f"{where}.mfu", f"must lie in (0, 1], got {self.mfu}")
        for key, value in self.tokens_per_s.items():
            _check(isinstance(value, (int, float)) and value > 0, f"{where}.tokens_per_s.{key}", "must be > 0")


@dataclass(frozen=True)
class Network:
    inter_node_gbit_s: float = 400.0  # per node, e.g. one 400G InfiniBand/RoCE link
    allreduce_overlap: float = 1.0  # share of the backward pass that can hide gradient all-reduce (DDP buckets)

    def validate(self, where: str) -> None:
        _check(self.inter_node_gbit_s > 0, f"{where}.inter_node_gbit_s", "must be > 0")
        _check(0 <= self.allreduce_overlap <= 1, f"{where}.allreduce_overlap", "must lie in [0, 1]")


@dataclass(frozen=True)
class Failures:
    mtbf_hours_per_gpu: float = 50_000.0  # mean time between failures of one GPU (with its node share)
    checkpoint_minutes: float = 30.0  # a failure loses the work since the last checkpoint
    restart_minutes: float = 10.0  # rescheduling, image pull, loading the checkpoint

    def validate(self, where: str) -> None:
        _check(self.mtbf_hours_per_gpu > 0, f"{where}.mtbf_hours_per_gpu", "must be > 0")
        _check(self.checkpoint_minutes > 0, f"{where}.checkpoint_minutes", "must be > 0")
        _check(self.restart_minutes >= 0, f"{where}.restart_minutes", "must be >= 0")


@dataclass(frozen=True)
class Pool:
    gpus: tuple[GpuType, ...]
    network: Network = field(default_factory=Network)
    failures: Failures = field(default_factory=Failures)

    def gpu(self, name: str) -> GpuType:
        for gpu in self.gpus:
            if gpu.name == name:
                return gpu
        raise KeyError(f"no GPU type {name!r} in the pool (have {', '.join(g.name for g in self.gpus)})")

    def with_inter_node(self, gbit_s: float) -> Pool:
        network = Network(gbit_s, self.network.allreduce_overlap)
        return Pool(self.gpus, network, self.failures)


def pool_from_dict(values: dict[str, Any], where: str = "pool") -> Pool:
    """Build and validate a pool; errors name the dotted field (``pool.gpus[1].memory_gib``)."""
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(values).__name__}")
    unknown = sorted(set(values) - {"gpus", "network", "failures"})
    _check(not unknown, where, f"unknown key(s) {', '.join(unknown)}; known: failures, gpus, network")
    items = values.get("gpus")
    _check(isinstance(items, list) and len(items) > 0, f"{where}.gpus", "needs a non-empty list of GPU types")
    gpus = []
    for i, item in enumerate(items):
        if isinstance(item, dict) and isinstance(item.get("tokens_per_s"), dict):  # YAML reads `413: 9e5` as an int key
            item = {**item, "tokens_per_s": {str(k): v for k, v in item["tokens_per_s"].items()}}
        gpu = build_section(GpuType, item, f"{where}.gpus[{i}]")
        gpu.validate(f"{where}.gpus[{i}]")
        gpus.append(gpu)
    names = [g.name for g in gpus]
    _check(len(set(names)) == len(names), f"{where}.gpus", f"GPU type names repeat: {names}")
    network = build_section(Network, values.get("network", {}), f"{where}.network")
    network.validate(f"{where}.network")
    failures = build_section(Failures, values.get("failures", {}), f"{where}.failures")
    failures.validate(f"{where}.failures")
    return Pool(tuple(gpus), network, failures)


def load_pool(path: str | Path) -> Pool:
    """Read a pool YAML (local path or fsspec URI, so a cluster task can read it from the object store)."""
    try:
        with fsspec.open(str(path), "r") as f:
            values = yaml.safe_load(f) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: pool file not found") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    try:
        return pool_from_dict(values)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None

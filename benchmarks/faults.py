"""Faults, measured (issue 36 item 2): kills at points drawn from a seed, concurrent runs on one folder, a full disk
under a checkpoint, flipped bits in every kind of stored file; every figure in ``benchmarks/results/faults.json``.

What it runs: the whole pipeline on ``configs/faults.yaml`` (every stage, sized to take about a minute on one thread),
exactly as ``make run`` does (``pyflyte run workflows/pipeline.py pipeline``, Flyte's local cache and temp folders
inside the output folder), through ``benchmarks/fault_points.py``, which records where the run is and can kill it.

1. Reference: one uninterrupted run; its final numbers (the tensors of every weights and video file of the results,
   the evaluation and router reports' values) and its trace of points.
2. Kills: points of the reference trace drawn from the seed, evenly over where they fall (training steps, checkpoint
   writes, publishes, ingest/encode writes, sampling, evaluation); every other kill of a category at the point
   itself, the rest at a random delay after it (from outside, so anywhere: inside arithmetic, a cache write). Always
   SIGKILL to the whole process group. Kills are chained: a run is killed, its rerun killed at a later point, and so
   on, then a last rerun finishes; its final numbers must equal the reference's. Work repeated: training steps a
   rerun computed that a killed run had already computed (at most one checkpoint interval if resuming works). On a
   local folder, and on a moto S3 bucket (``output_dir: s3://...``, a ``ThreadedMotoServer``) where checkpoints are
   mirrored and stages published by pointer.
3. Concurrent: several runs started at once on one output folder; afterwards every stage folder is published whole
   (its mark beside it) and loads, and the results equal the reference's.
4. Disk full: a checkpoint write that fails (injected ENOSPC in a tensor file; a real kernel refusal via
   RLIMIT_FSIZE) must name the path, leave the previous checkpoint loadable, and a rerun must resume to the weights of
   an unfailed run.
5. Bit flips: one flipped bit in each file of each kind (ingest shards, encoded shards, a checkpoint, the DDM folder),
   each on a fresh copy, loaded with the project's loader: detected means an error naming the file.

Usage::

    python -m benchmarks.faults                  # the campaign: 20 local kills, 5 on S3, 3 concurrent runs (~20 min)
    python -m benchmarks.faults --kills 3 --s3-kills 1 --concurrent 2 --out /tmp/faults.json   # smoke size
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from safetensors.numpy import load_file

from lib.config import RunConfig, config_to_dict, load_config, replace_in
from lib.experiment.timer import say
from lib.io import atomic_write
from lib.seeding import numpy_rng

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "faults.json"
CONFIG = ROOT / "configs" / "faults.yaml"
RUN_TIMEOUT_S = 600
MAX_DELAY_S = 0.5  # a delayed kill lands up to this long after its point (longer ones mostly left its stage)
CATEGORIES = ("training step", "checkpoint write", "publish", "ingest/encode write", "sampling", "evaluation")
_STAGE_FOLDER = re.compile(r"stages/[^/]+/[^/]*\*(/model)?|results(/.*)?")  # a stage folder or the results


# ---------------------------------------------------------------------------------------------------- pipeline runs
@dataclass
class Run:
    """One pipeline process: its exit code (-9: SIGKILLed), its trace of points and its output's tail."""

    rc: int
    points: list[dict[str, Any]]
    seconds: float
    tail: str


@dataclass
class Site:
    """Where a run lives: ``out`` (a folder or bucket URI), Flyte's HOME and TMPDIR, and the environment."""

    out: str
    home: Path
    env: dict[str, str] = field(default_factory=dict)

    def cfg_json(self, cfg: RunConfig) -> str:
        return json.dumps(config_to_dict(replace_in(cfg, output_dir=self.out)))


def site_for(folder: Path, out: str | None = None, env: dict[str, str] | None = None) -> Site:
    """A run as ``make run`` sets it up: Flyte's cache (HOME) and temp folders in ``folder``, outputs in ``out``
    (``folder`` itself unless a bucket URI is given)."""
    folder.mkdir(parents=True, exist_ok=True)
    return Site(out or str(folder.resolve()), folder.resolve() / ".flyte-home", env or {})


def start(site: Site, cfg: RunConfig, trace: Path, reference: Path | None, kill_at: int | None) -> subprocess.Popen:
    """Start a pipeline run in a process group of its own (so a kill takes every process it started)."""
    (site.home.parent / ".flyte-tmp").mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **site.env, "HOME": str(site.home), "TMPDIR": str(site.home.parent / ".flyte-tmp"),
           "FLYTE_LOCAL_CACHE_ENABLED": "true", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}  # fmt: skip
    cmd = [sys.executable, "-m", "benchmarks.fault_points", "--trace", str(trace), "--out", site.out]
    if reference is not None:  # points get their reference index, which a kill from outside also waits for
        cmd += ["--reference", str(reference)]
    if kill_at is not None:
        cmd += ["--kill-at", str(kill_at)]
    cmd += ["--", "run", "workflows/pipeline.py", "pipeline", "--cfg", site.cfg_json(cfg)]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)  # fmt: skip


def read_trace(trace: Path) -> list[dict[str, Any]]:
    if not trace.is_file():
        return []
    return [json.loads(line) for line in trace.read_text().splitlines() if line.strip()]


def finish(proc: subprocess.Popen, trace: Path, began: float, delayed: tuple[int, float] | None = None) -> Run:
    """Wait for a run; ``delayed`` = (point index, seconds): SIGKILL its group that long after it passes the point."""
    deadline = began + RUN_TIMEOUT_S
    if delayed is not None:
        target, delay = delayed
        while proc.poll() is None and time.time() < deadline:
            if any(p["ref"] is not None and p["ref"] >= target for p in read_trace(trace)):
                time.sleep(delay)
                with_group(proc, signal.SIGKILL)
                break
            time.sleep(0.05)
    try:
        out, _ = proc.communicate(timeout=max(1.0, deadline - time.time()))
    except subprocess.TimeoutExpired:
        with_group(proc, signal.SIGKILL)
        out, _ = proc.communicate()
    return Run(proc.returncode, read_trace(trace), time.time() - began, out[-3000:])


def with_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:  # already gone
        pass


def run_once(site: Site, cfg: RunConfig, trace: Path, kill: Kill | None = None, reference: Path | None = None) -> Run:
    """One run to its end, or killed as ``kill`` says (at its point, or a delay after it)."""
    exact = kill is not None and kill.delay_s == 0
    began = time.time()
    proc = start(site, cfg, trace, reference, kill.target if exact else None)
    delayed = (kill.target, kill.delay_s) if kill is not None and not exact else None
    return finish(proc, trace, began, delayed)


# --------------------------------------------------------------------------------------------------- final numbers
def tensors_sha256(path: Path) -> str:
    """sha256 of a safetensors file's tensors (names, dtypes, shapes, values), not of its metadata: the sampled
    videos' metadata records sampling times, which differ between runs that computed the same numbers."""
    h = hashlib.sha256()
    for name, array in sorted(load_file(str(path)).items()):
        h.update(f"{name} {array.dtype} {array.shape}".encode())
        h.update(np.ascontiguousarray(array).tobytes())
    return h.hexdigest()


def final_numbers(results: Path) -> dict[str, str]:
    """What a run ends with: the tensors of every weights/centroids/videos file and the reports' values (not
    summary.md and config.yaml, which hold the output folder's path)."""
    numbers = {str(p.relative_to(results)): tensors_sha256(p) for p in sorted(results.rglob("*.safetensors"))}
    for table in ("eval_report.parquet", "router_report.parquet"):
        values = pd.read_parquet(results / table).to_csv(index=False, float_format="%.17g")
        numbers[table] = hashlib.sha256(values.encode()).hexdigest()
    return numbers


def results_of(site: Site, scratch: Path) -> Path:
    """The run's results folder on this machine (downloaded from the bucket when remote)."""
    if "://" not in site.out:
        return Path(site.out) / "results"
    from lib.storage import download_published

    local = scratch / "results"
    shutil.rmtree(local, ignore_errors=True)
    if not download_published(f"{site.out}/results", local):
        raise FileNotFoundError(f"{site.out}/results: nothing published")
    return local


# ------------------------------------------------------------------------------------------------------------ kills
def category(point: dict[str, Any]) -> str | None:
    """Which part of the pipeline a point lies in (None: a point no kill is planned at)."""
    kind, detail = point["kind"], point["detail"]
    if kind == "step":
        return "training step"
    if kind == "ckpt" or "/checkpoints/" in detail:
        return "checkpoint write"
    if kind == "sample" or detail.startswith("stages/samples"):
        return "sampling"
    if kind == "evaluate" or detail.startswith(("stages/evaluate", "stages/featnet")):
        return "evaluation"
    if _STAGE_FOLDER.fullmatch(detail) or "/attempts/" in detail or detail.endswith("PUBLISHED.json"):
        return "publish"
    if detail.startswith(("stages/ingest", "stages/encode", "stages/embed", "stages/codec")):
        return "ingest/encode write"
    return None


@dataclass
class Kill:
    """One planned kill and what came of it."""

    target: int  # index of the point in the reference trace
    category: str
    point: str  # that point, as kind:detail
    delay_s: float  # 0: killed at the point itself (from inside); else from outside, this long after it
    fired: bool = False
    landed: str = ""  # the last point the killed run passed
    landed_category: str = ""  # its category (a rerun that skips cached stages meets its target later, or not)
    rerun_rc: int | None = None
    resumed: bool = False
    repeated_steps: int = 0


def plan_kills(reference: list[dict[str, Any]], n: int, rng: np.random.Generator) -> list[Kill]:
    """``n`` distinct points of the reference trace, spread evenly over the categories (each in turn, in an order
    drawn from the seed). Every category's first kill (and third, fifth...) lands at the point itself, so each part of
    the pipeline is killed exactly inside at least once; the others a random delay after their point, anywhere."""
    pools = {c: [i for i, p in enumerate(reference) if category(p) == c] for c in CATEGORIES}
    pools = {c: list(rng.permutation(v)) for c, v in pools.items() if v}
    order = [str(c) for c in rng.permutation(sorted(pools))]
    kills, visits = [], dict.fromkeys(order, 0)
    while len(kills) < n and any(pools.values()):
        for c in order:
            if pools[c] and len(kills) < n:
                i = int(pools[c].pop())
                delay = 0.0 if visits[c] % 2 == 0 else round(float(rng.uniform(0.05, MAX_DELAY_S)), 3)
                visits[c] += 1
                kills.append(Kill(i, c, f"{reference[i]['kind']}:{reference[i]['detail']}", delay))
    return kills


def steps_done(run: Run) -> set[str]:
    return {p["detail"] for p in run.points if p["kind"] == "step"}


def repeated_steps(rerun: Run, before: set[str]) -> int:
    """Training steps ``rerun`` computed that earlier runs had computed, for the model that repeated most."""
    per_model: dict[str, int] = {}
    for step in steps_done(rerun) & before:
        model = step.rsplit(" ", 1)[0]
        per_model[model] = per_model.get(model, 0) + 1
    return max(per_model.values(), default=0)


def kill_chain(site: Site, cfg: RunConfig, kills: list[Kill], reference: Path, work: Path, expected: dict) -> dict:
    """Kill one run after another at ``kills`` (in the reference's order), then let a last rerun finish; compare."""
    kills = sorted(kills, key=lambda k: k.target)
    runs: list[Run] = []
    for i, kill in enumerate(kills):
        run = run_once(site, cfg, work / f"trace-{i:02d}.jsonl", kill, reference)
        runs.append(run)
        kill.fired = run.rc == -signal.SIGKILL
        last = run.points[-1] if run.points else None
        kill.landed = f"{last['kind']}:{last['detail']}" if last else "(before any point)"
        kill.landed_category = (category(last) if last else None) or "other"
        say(
            f"  kill {i + 1}/{len(kills)} at {kill.point} (+{kill.delay_s} s, {kill.category}): "
            f"{'killed' if kill.fired else f'exit {run.rc}'} after {run.seconds:.0f} s, last point {kill.landed}"
        )
        if not kill.fired:
            break  # the run ended on its own (finished, or failed: recorded as not resumed)
    final = run_once(site, cfg, work / "trace-final.jsonl")
    runs.append(final)
    say(f"  final rerun: exit {final.rc} after {final.seconds:.0f} s")
    done: set[str] = set()
    for i, kill in enumerate(kills):
        if not kill.fired:
            continue
        done |= steps_done(runs[i])
        after = runs[i + 1]
        kill.rerun_rc = after.rc
        killed_next = after.rc == -signal.SIGKILL and i + 1 < len(kills) and kills[i + 1].fired
        kill.resumed = after.rc == 0 or killed_next
        kill.repeated_steps = repeated_steps(after, done)
    identical = final.rc == 0 and final_numbers(results_of(site, work)) == expected
    if final.rc != 0:
        say(final.tail)
    return {"kills": [asdict(k) for k in kills], "final_rc": final.rc, "identical": identical,
            "leftovers": None if "://" in site.out else leftovers(Path(site.out)),
            "seconds": round(sum(r.seconds for r in runs), 1)}  # fmt: skip


def leftovers(out: Path) -> list[str]:
    """What killed runs left in a local output folder: attempt folders (pruned after ``STALE_ATTEMPT_S``) and
    temporary files or folders of interrupted writes. They cost space, not correctness: no reader opens them."""
    from lib.storage import LOCAL_ATTEMPTS

    stages = out / "stages"
    temporary = [
        p for p in stages.rglob(".*") if (".tmp" in p.name or ".old" in p.name) and LOCAL_ATTEMPTS not in p.parts
    ]
    found = [*stages.glob(f"*/{LOCAL_ATTEMPTS}/*"), *temporary]
    return sorted({str(p.relative_to(out)) for p in found})


def kill_campaign(site_of: Callable[[str], Site], cfg: RunConfig, reference: Path, n: int, chain: int,
                  rng: np.random.Generator, work: Path, expected: dict) -> dict:  # fmt: skip
    """``n`` kills in chains of ``chain``, each chain on a fresh output folder from ``site_of(name)``."""
    kills = plan_kills(read_trace(reference), n, rng)
    order = list(rng.permutation(len(kills)))
    chains = [[kills[j] for j in order[i : i + chain]] for i in range(0, len(kills), chain)]
    results = []
    for c, planned in enumerate(chains):
        say(f"chain {c + 1}/{len(chains)} ({len(planned)} kills)")
        results.append(kill_chain(site_of(f"chain-{c:02d}"), cfg, planned, reference, work / f"chain-{c:02d}",
                                  expected))  # fmt: skip
    fired = [k for r in results for k in r["kills"] if k["fired"]]
    by_category = {c: sum(k["landed_category"] == c for k in fired) for c in (*CATEGORIES, "other")}
    return {
        "tried": len(fired),
        "resumed": sum(k["resumed"] for k in fired),
        "identical": sum(r["identical"] for r in results for k in r["kills"] if k["fired"]),
        "max_repeated_steps": max((k["repeated_steps"] for k in fired), default=0),
        "planned": len(kills),
        "chains": len(results),
        "chains_identical": sum(r["identical"] for r in results),
        "by_category": by_category,
        "leftovers": sum(len(r["leftovers"] or []) for r in results),
        "at_point": sum(k["delay_s"] == 0 for k in fired),
        "delayed": sum(k["delay_s"] > 0 for k in fired),
        "runs": results,
    }


# ---------------------------------------------------------------------------------------------------- stage checks
def _stage_loaders() -> dict[str, Callable[[Path], Any]]:
    """How each stage folder is read downstream (a torn folder fails here)."""
    from lib.data.shards import iter_shards, read_index
    from lib.encode.store import load_encoded
    from lib.models.factory import load_expert
    from lib.sample.methods import load_sampled
    from lib.sample.pipeline import DDMPipeline
    from lib.train import checkpoint as ckpt

    def train(p: Path) -> None:
        load_expert(p / "model")
        for _, folder in ckpt.complete_checkpoints(p / "checkpoints"):
            ckpt.load_checkpoint(folder)

    return {
        "ingest": lambda p: [len(frames) for _, frames in iter_shards(p, read_index(p))],
        "encode": load_encoded,
        "train": train,
        "ddm": lambda p: DDMPipeline.from_pretrained(p / "ddm"),
        "single": lambda p: DDMPipeline.from_pretrained(next(q for q in p.iterdir() if (q / "ddm.json").is_file())),
        "samples": load_sampled,
    }


def torn_stages(out: Path) -> tuple[list[str], int]:
    """Stage folders that are not whole (no publish mark, or their loader fails) and attempt folders left over."""
    loaders, torn, leftovers = _stage_loaders(), [], 0
    for stage in sorted((out / "stages").iterdir()):
        leftovers += len(list((stage / ".attempts").iterdir())) if (stage / ".attempts").is_dir() else 0
        for folder in sorted(p for p in stage.iterdir() if not p.name.startswith(".")):
            if stage.name != "train" and not (stage / ".published" / folder.name).is_file():
                torn.append(f"{folder}: no publish mark")
                continue
            try:
                loaders.get(stage.name, lambda p: None)(folder)
            except Exception as exc:  # any failure to load is what the check looks for
                torn.append(f"{folder}: {type(exc).__name__}: {exc}")
    return torn, leftovers


def concurrent_runs(cfg: RunConfig, n: int, work: Path, expected: dict) -> dict:
    """``n`` runs started at once on one output folder, sharing Flyte's cache as ``make run`` does."""
    site = site_for(work)
    began = time.time()
    procs = [start(site, cfg, work / f"trace-{i}.jsonl", None, None) for i in range(n)]
    runs = [finish(p, work / f"trace-{i}.jsonl", began) for i, p in enumerate(procs)]
    for i, run in enumerate(runs):
        say(f"  concurrent run {i}: exit {run.rc} after {run.seconds:.0f} s")
        if run.rc != 0:
            say(run.tail)
    torn, leftovers = torn_stages(Path(site.out))
    completed = sum(r.rc == 0 for r in runs)
    identical = completed > 0 and final_numbers(Path(site.out) / "results") == expected
    return {"runs": n, "completed": completed, "torn": len(torn), "torn_folders": torn, "leftover_attempts": leftovers,
            "identical": identical, "seconds": round(time.time() - began, 1)}  # fmt: skip


# ------------------------------------------------------------------------------------------------------- disk full
# The child trains a small expert on the reference run's encoded clips; ARM decides how its second checkpoint's
# write fails. Injected ENOSPC: safetensors' writer raising what it raises on a full disk, part of the file written.
# RLIMIT_FSIZE: the kernel itself refusing the write (EFBIG; SIGXFSZ ignored, as a full disk sends no signal).
DISK_CHILD = r"""
import errno, json, os, resource, signal, sys
from pathlib import Path
from safetensors import SafetensorError
import lib.train.checkpoint as ckpt
from lib.config import ExpertConfig
from lib.encode.store import load_encoded
from lib.train.trainer import TrainCallback, TrainData, train

encoded, out, mode, cfg_json, result = sys.argv[1:6]
real = ckpt.save_file

def full_disk(tensors, path, *args, **kwargs):
    Path(path).write_bytes(b"\0" * 64)  # what got out before the disk filled
    raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

class Arm(TrainCallback):
    def on_checkpoint(self, step, folder):
        if mode == "enospc":
            ckpt.save_file = full_disk
        elif mode == "rlimit":
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.RLIM_INFINITY))

data = load_encoded(encoded)
cfg = ExpertConfig(**json.loads(cfg_json))
try:
    train(TrainData(data.clip_ids, data.latents, data.tokens, data.mask), cfg, out, seed=0, name="expert-00",
          callbacks=[Arm()], spec_hash="disk-full")
    error = None
except Exception as exc:
    error = f"{type(exc).__name__}: {exc}"
resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
Path(result).write_text(json.dumps({"error": error}))
"""


def _disk_child(encoded: Path, out: Path, mode: str, cfg: dict) -> str | None:
    result = out.with_suffix(".json")
    args = [str(encoded), str(out), mode, json.dumps(cfg), str(result)]
    proc = subprocess.run([sys.executable, "-c", DISK_CHILD, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=RUN_TIMEOUT_S, env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"disk-full child ({mode}) failed: {proc.stderr[-2000:]}")
    return json.loads(result.read_text())["error"]


def disk_full(cfg: RunConfig, encoded: Path, work: Path) -> dict:
    """A checkpoint write failing on a full disk: the error names the path, the previous checkpoint still loads and
    a rerun resumes from it to the weights of a run that never failed."""
    from lib.train import checkpoint as ckpt

    expert = {**asdict(cfg.expert), "steps": 3 * cfg.expert.checkpoint_every}
    _disk_child(encoded, work / "straight", "none", expert)
    straight = tensors_sha256(work / "straight" / "model" / "diffusion_pytorch_model.safetensors")
    cases = {}
    for mode in ("enospc", "rlimit"):
        out = work / mode
        error = _disk_child(encoded, out, mode, expert)
        root = out / "checkpoints"
        kept = [s for s, _ in ckpt.complete_checkpoints(root)]
        loadable = bool(kept) and ckpt.load_checkpoint(ckpt.complete_checkpoints(root)[-1][1]) is not None
        names = error is not None and str(root) in error
        leftovers = [p.name for p in root.iterdir() if p.name.startswith(".")] if root.is_dir() else []
        resumed = _disk_child(encoded, out, "none", expert) is None
        identical = resumed and tensors_sha256(out / "model" / "diffusion_pytorch_model.safetensors") == straight
        say(f"  {mode}: error {error!r}; checkpoints kept {kept}; leftovers {leftovers}; resumed identical {identical}")
        cases[mode] = {"error": error, "checkpoints_kept": kept, "previous_loadable": loadable,
                       "error_names_path": names, "leftover_files": leftovers,
                       "resumed_identical": identical}  # fmt: skip
    return {
        "previous_loadable": all(c["previous_loadable"] for c in cases.values()),
        "error_names_path": all(c["error_names_path"] for c in cases.values()),
        "resumed_identical": all(c["resumed_identical"] for c in cases.values()),
        "cases": cases,
    }


# ------------------------------------------------------------------------------------------------------- bit flips
def flip_bit(path: Path, rng: np.random.Generator) -> int:
    """Flip one bit of ``path`` at a position drawn from ``rng``; returns the bit's index."""
    data = bytearray(path.read_bytes())
    bit = int(rng.integers(0, 8 * len(data)))
    data[bit // 8] ^= 1 << (bit % 8)
    path.write_bytes(bytes(data))
    return bit


def flip_kinds(out: Path) -> dict[str, tuple[Path, Callable[[Path], Any]]]:
    """One stored instance of each kind of file and the loader that reads it downstream."""
    from lib.data.shards import iter_shards, read_index
    from lib.encode.store import load_encoded, read_codec_info
    from lib.sample.pipeline import DDMPipeline
    from lib.train import checkpoint as ckpt

    def stage(name: str) -> Path:
        return next(p for p in sorted((out / "stages" / name).iterdir()) if not p.name.startswith("."))

    trained = sorted(p for p in (out / "stages" / "train").iterdir() if (p / "checkpoints").is_dir())
    checkpoint = ckpt.complete_checkpoints(trained[0] / "checkpoints")[-1][1]
    return {
        "ingest shard": (stage("ingest"), lambda p: [len(f) for _, f in iter_shards(p, read_index(p))]),
        "encoded shard": (stage("encode"), lambda p: (read_codec_info(p), load_encoded(p))),
        "checkpoint": (checkpoint, ckpt.load_checkpoint),
        "DDM folder": (out / "results" / "ddm", DDMPipeline.from_pretrained),
    }


def bit_flips(kinds: dict[str, tuple[Path, Callable[[Path], Any]]], rng: np.random.Generator, work: Path) -> dict:
    """Every file of each kind's folder, one bit flipped on a fresh copy, loaded: detected = an error naming it."""
    report = {}
    for kind, (folder, load) in kinds.items():
        trials = []
        for rel in sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()):
            copy = work / kind.replace(" ", "-") / folder.name
            shutil.rmtree(copy.parent, ignore_errors=True)
            shutil.copytree(folder, copy)
            bit = flip_bit(copy / rel, rng)
            try:
                load(copy)
                outcome, message = "loaded", ""
            except Exception as exc:  # what the loader raises is the measurement
                message = f"{type(exc).__name__}: {exc}"
                named = str(copy / rel) in message or (
                    str((copy / rel).parent) in message and Path(rel).name in message
                )
                outcome = "detected" if named else "error not naming the file"
            trials.append({"file": rel, "bit": bit, "outcome": outcome, "error": message[:300]})
        detected = sum(t["outcome"] == "detected" for t in trials)
        say(f"  {kind}: {detected}/{len(trials)} detected"
            + "".join(f"\n    {t['file']}: {t['outcome']}" for t in trials if t["outcome"] != "detected"))  # fmt: skip
        report[kind] = {"tried": len(trials), "detected": detected, "trials": trials}
    return report


# ------------------------------------------------------------------------------------------------------------ S3
def moto_site(folder: Path) -> tuple[Any, Callable[[str], Site]]:
    """A moto S3 server in this process and a factory of sites, each on a fresh bucket of it."""
    import s3fs
    from moto.server import ThreadedMotoServer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # not one line per request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}  # fmt: skip
    os.environ.update(env)  # this process reads the buckets too (final numbers)
    s3fs.S3FileSystem.clear_instance_cache()

    def site_of(name: str) -> Site:
        bucket = f"faults-{name}".lower().replace("_", "-")
        s3fs.S3FileSystem().mkdir(bucket)
        return site_for(folder / name, f"s3://{bucket}/run", env)

    return server, site_of


# -------------------------------------------------------------------------------------------------------- campaign
def campaign(args: argparse.Namespace) -> dict:
    began = time.time()
    rng = numpy_rng(args.seed, "faults")
    cfg = load_config(args.config)
    work = args.work.resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)

    say("reference: one uninterrupted run")
    ref_site = site_for(work / "reference")
    ref = run_once(ref_site, cfg, work / "reference.jsonl")
    if ref.rc != 0:
        raise RuntimeError(f"the reference run failed:\n{ref.tail}")
    expected = final_numbers(Path(ref_site.out) / "results")
    say(f"  {ref.seconds:.0f} s, {len(ref.points)} points")
    result: dict[str, Any] = {"seed": args.seed, "config": str(Path(args.config).resolve().relative_to(ROOT)),
                              "config_values": config_to_dict(cfg), "reference_seconds": round(ref.seconds, 1),
                              "reference_points": len(ref.points)}  # fmt: skip

    say(f"kills on a local folder: {args.kills}")
    local = kill_campaign(lambda name: site_for(work / "local" / name), cfg, work / "reference.jsonl", args.kills,
                          args.chain, rng, work / "local", expected)  # fmt: skip
    kills = {"local": local}
    if args.s3_kills:
        say(f"kills on a moto S3 bucket: {args.s3_kills}")
        server, site_of = moto_site(work / "s3")
        try:
            s3_ref_site = site_of("reference")
            s3_ref = run_once(s3_ref_site, cfg, work / "s3-reference.jsonl")
            s3_identical = s3_ref.rc == 0 and final_numbers(results_of(s3_ref_site, work / "s3")) == expected
            say(f"  S3 reference: exit {s3_ref.rc} after {s3_ref.seconds:.0f} s, identical to local {s3_identical}")
            kills["s3"] = kill_campaign(site_of, cfg, work / "s3-reference.jsonl", args.s3_kills, args.chain, rng,
                                        work / "s3", expected)  # fmt: skip
            kills["s3"]["reference_identical_to_local"] = s3_identical
        finally:
            server.stop()
    parts = list(kills.values())
    result["kills"] = {
        "tried": sum(p["tried"] for p in parts),
        "resumed": sum(p["resumed"] for p in parts),
        "identical": sum(p["identical"] for p in parts),
        "max_repeated_steps": max(p["max_repeated_steps"] for p in parts),
        "checkpoint_every": cfg.expert.checkpoint_every,
        **kills,
    }

    say(f"concurrent: {args.concurrent} runs at once on one folder")
    result["concurrent"] = concurrent_runs(cfg, args.concurrent, work / "concurrent", expected)
    say("disk full under a checkpoint write")
    encoded = next(p for p in sorted((work / "reference" / "stages" / "encode").iterdir()) if p.name[0] != ".")
    result["disk_full"] = disk_full(cfg, encoded, work / "disk-full")
    say("bit flips")
    result["bit_flips"] = bit_flips(flip_kinds(work / "reference"), rng, work / "flips")
    result["wall_s"] = round(time.time() - began, 1)
    result["command"] = " ".join(["python -m benchmarks.faults", *sys.argv[1:]])
    return result


def table(result: dict) -> str:
    """The campaign's figures as the Markdown table of ``docs/faults.md``."""
    kills, conc, disk, flips = result["kills"], result["concurrent"], result["disk_full"], result["bit_flips"]
    where = " + ".join(f"{p['tried']} {name}" for name, p in kills.items() if isinstance(p, dict) and "tried" in p)
    rows = [
        ("kills tried", f"{kills['tried']} ({where})"),
        ("resumed", f"{kills['resumed']} / {kills['tried']}"),
        ("identical results", f"{kills['identical']} / {kills['tried']}"),
        ("work repeated", f"at most {kills['max_repeated_steps']} training steps (checkpoint every "
                          f"{kills['checkpoint_every']})"),
        ("concurrent runs", f"{conc['runs']} at once, {conc['completed']} completed, results identical: "
                            f"{conc['identical']}"),
        ("torn folders", str(conc["torn"])),
        ("full disk: previous checkpoint loadable", str(disk["previous_loadable"])),
        ("full disk: error names the path", str(disk["error_names_path"])),
        *((f"bit flips: {kind}", f"{v['detected']} / {v['tried']} detected") for kind, v in flips.items()),
    ]  # fmt: skip
    lines = ["| fault | measured |", "|---|---|", *(f"| {a} | {b} |" for a, b in rows)]
    return "\n".join(lines) + f"\n\nseed {result['seed']}, wall time {result['wall_s'] / 60:.1f} min\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0, help="draws the kill points, delays and flipped bits")
    parser.add_argument("--config", type=Path, default=CONFIG)
    parser.add_argument("--kills", type=int, default=20, help="kills on a local output folder")
    parser.add_argument("--s3-kills", type=int, default=5, help="kills with output_dir on a moto S3 bucket")
    parser.add_argument("--chain", type=int, default=5, help="kills per chain (one output folder, one final rerun)")
    parser.add_argument("--concurrent", type=int, default=3, help="runs started at once on one folder")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "ddm-faults",
                        help="scratch folder (emptied first)")  # fmt: skip
    parser.add_argument("--out", type=Path, default=RESULTS, help="where the JSON goes")
    args = parser.parse_args(argv)
    result = campaign(args)
    atomic_write(args.out, lambda p: p.write_text(json.dumps(result, indent=1) + "\n"))
    say(f"wrote {args.out} ({result['wall_s']:.0f} s)\n\n{table(result)}")


if __name__ == "__main__":
    main()

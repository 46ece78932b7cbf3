"""Faults the decentralized setup must survive: killed experts, torn checkpoints, unsafe loading paths."""

import ast
import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lib.train import checkpoint as ckpt

ROOT = Path(__file__).resolve().parents[1]

# A child process that trains one tiny expert in OUT; every checkpoint sleeps a little so the parent can kill it
# at a chosen point. SLOW_WRITE makes the checkpoint writer stall *inside* a write, after the tensors and before
# the manifest, so a kill there leaves a torn checkpoint on disk.
CHILD = r"""
import os, sys, time, torch
import lib.train.checkpoint as ckpt
from lib.config import ExpertConfig
from lib.data.procedural import iter_builtin_clips
from lib.train.trainer import TrainData, TrainCallback, train

out, stall = sys.argv[1], sys.argv[2]
if stall == "write":
    real_write = ckpt.atomic_write
    def slow_write(path, write):  # the manifest is the last file of a checkpoint
        if path.name == ckpt.MANIFEST and "step-0000006" in str(path):
            print("STALLED", flush=True)
            time.sleep(60)
        return real_write(path, write)
    ckpt.atomic_write = slow_write

class Pause(TrainCallback):
    def on_checkpoint(self, step, folder):
        print(f"CKPT {step}", flush=True)
        if stall == "after":
            time.sleep(0.5)

clips = list(iter_builtin_clips(seed=0, num_clips=12, frames=4, height=16, width=16))
lat = torch.stack([torch.from_numpy(c.frames).permute(3, 0, 1, 2).float() / 127.5 - 1 for c in clips])
tok = torch.randn(len(clips), 4, 16, generator=torch.Generator().manual_seed(0))
data = TrainData([c.clip_id for c in clips], lat, tok, torch.ones(len(clips), 4, dtype=torch.bool))
cfg = ExpertConfig(num_layers=1, num_heads=2, head_dim=8, ffn_dim=32, steps=12, batch_size=4, lr=1e-3,
                   warmup_steps=1, checkpoint_every=3, log_every=100)
result = train(data, cfg, out, seed=7, name="expert-00", callbacks=[Pause()], spec_hash="s")
print("RESUMED_FROM", result.resumed_from, flush=True)
"""


def _start(out: Path, stall: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, str(out), stall],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"},
    )


def _kill_when(proc: subprocess.Popen, marker: str) -> None:
    deadline = time.time() + 120
    for line in proc.stdout:
        if line.startswith(marker) or time.time() > deadline:
            break
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def _finish(out: Path) -> str:
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(out), "none"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"},
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _weights_hash(out: Path) -> str:
    return hashlib.sha256((out / "model" / "diffusion_pytorch_model.safetensors").read_bytes()).hexdigest()


@pytest.mark.slow
def test_sigkilled_expert_resumes_to_identical_weights(tmp_path):
    straight = tmp_path / "straight"
    assert "RESUMED_FROM 0" in _finish(straight)
    files = [p for p in straight.rglob("*") if p.is_file()]
    assert files and not [p for p in files if p.suffix in {".bin", ".pt", ".pth", ".pkl", ".ckpt"}], "no pickles"

    killed = tmp_path / "killed"
    _kill_when(_start(killed, "after"), "CKPT 6")
    assert not (killed / "model").exists()
    steps = [s for s, _ in ckpt.complete_checkpoints(killed / "checkpoints")]
    assert steps and max(steps) >= 6
    assert f"RESUMED_FROM {max(steps)}" in _finish(killed)
    assert _weights_hash(killed) == _weights_hash(straight)

    torn = tmp_path / "torn"
    _kill_when(_start(torn, "write"), "STALLED")  # killed in the middle of writing checkpoint 6
    assert [s for s, _ in ckpt.complete_checkpoints(torn / "checkpoints")] == [3], "a torn checkpoint is never used"
    assert "RESUMED_FROM 3" in _finish(torn)
    assert _weights_hash(torn) == _weights_hash(straight)


def _python_files():
    return [p for d in ("lib", "tasks", "workflows", "data_schemas", "benchmarks") for p in (ROOT / d).rglob("*.py")]


def _calls(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            base = func.value.id if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) else ""
            yield node, base, name


def test_no_unsafe_deserialisation_or_shell_in_the_code():
    problems = []
    for path in _python_files():
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + [getattr(node, "module", "") or ""]
                if any(n.split(".")[0] in {"pickle", "dill", "cloudpickle", "joblib", "shelve"} for n in names):
                    problems.append(f"{path}:{node.lineno}: imports a pickle library")
        for node, base, name in _calls(tree):
            kwargs = {k.arg: k.value for k in node.keywords}
            if base == "torch" and name == "load":
                safe = isinstance(kwargs.get("weights_only"), ast.Constant) and kwargs["weights_only"].value is True
                if not safe:
                    problems.append(f"{path}:{node.lineno}: torch.load without weights_only=True")
            if base == "os" and name in {"system", "popen"}:
                problems.append(f"{path}:{node.lineno}: os.{name} runs a shell")
            if base == "subprocess" and isinstance(kwargs.get("shell"), ast.Constant) and kwargs["shell"].value:
                problems.append(f"{path}:{node.lineno}: subprocess with shell=True")
            if isinstance(node.func, ast.Name) and name in {"eval", "exec"}:
                problems.append(f"{path}:{node.lineno}: {name}()")
            if name == "from_pretrained" and isinstance(kwargs.get("use_safetensors"), ast.Constant):
                if kwargs["use_safetensors"].value is False:
                    problems.append(f"{path}:{node.lineno}: from_pretrained(use_safetensors=False)")
    assert not problems, "\n".join(problems)

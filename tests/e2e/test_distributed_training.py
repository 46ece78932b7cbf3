"""Data-parallel training of one expert (torchrun, gloo on CPU) trains the same recipe as one process."""

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from lib.train.distributed import Workers
from lib.train.trainer import train
from tests.e2e.ddp_train_worker import CFG, NAME, NUM_CLIPS, SEED, STOP_AT
from tests.tiny_clips import tiny_train_data

ROOT = Path(__file__).resolve().parents[2]
WEIGHTS = "diffusion_pytorch_model.safetensors"


def _torchrun(out: Path, nproc: int) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    done = subprocess.run(
        [*cmd, str(ROOT / "tests" / "e2e" / "ddp_train_worker.py"), str(out)], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]


def _assert_close_weights(a: Path, b: Path) -> None:
    wa, wb = load_file(str(a / WEIGHTS)), load_file(str(b / WEIGHTS))
    assert wa.keys() == wb.keys()
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], rtol=1e-4, atol=2e-5, msg=key)


@pytest.mark.timeout(300)
@pytest.mark.skipif(torch.cuda.is_available(), reason="compares float32 CPU runs; on a GPU host the trainer uses bf16")
def test_two_processes_train_what_one_process_trains_and_their_checkpoint_resumes_on_one(tmp_path):
    data = tiny_train_data(NUM_CLIPS)
    reference = train(data, CFG, tmp_path / "one", SEED, NAME, callbacks=[])
    _torchrun(tmp_path / "ddp", nproc=2)

    full = tmp_path / "ddp" / "full"
    _assert_close_weights(reference.model_dir, full / "model")  # rank 0 published the model
    ddp_loss = pd.read_parquet(full / "model" / "training_log.parquet")["loss"]
    torch.testing.assert_close(torch.tensor(ddp_loss.tolist()), torch.tensor(reference.log["loss"].tolist()))

    # the 2-process run stopped at STOP_AT; one process resumes it (fingerprints ignore the world size)
    half = tmp_path / "ddp" / "half"
    assert not (half / "model").exists()
    resumed = train(data, CFG, half, SEED, NAME, callbacks=[])
    assert resumed.resumed_from == STOP_AT
    _assert_close_weights(reference.model_dir, resumed.model_dir)
    assert resumed.log["step"].tolist() == list(range(1, CFG.steps + 1))  # the loss curve continues


def test_shards_cover_the_batch_once_and_small_batches_are_refused():
    for world in (1, 2, 3, 8):
        rows = [Workers(rank, world).shard(13) for rank in range(world)]
        covered = [i for s in rows for i in range(s.start, s.stop)]
        assert covered == list(range(13))
        assert max(s.stop - s.start for s in rows) - min(s.stop - s.start for s in rows) <= 1
    with pytest.raises(ValueError, match="batch_size=2 is smaller than the 4 training processes"):
        Workers(0, 4).shard(2)

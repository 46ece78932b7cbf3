"""Run by ``torchrun`` from test_distributed_training.py: one expert trained by several processes (gloo, CPU).

Usage: ``torchrun --standalone --nproc_per_node N tests/e2e/ddp_train_worker.py OUT``. Trains the same tiny run
twice: to the end in ``OUT/full`` and interrupted after ``STOP_AT`` steps in ``OUT/half`` (left for a
single-process resume).
"""

import sys
from dataclasses import replace

import torch

from lib.train.trainer import train
from tests.tiny_clips import TINY_EXPERT, tiny_train_data

# uneven shards across 2 processes (3 + 4 rows)
CFG = replace(TINY_EXPERT, steps=6, batch_size=7, log_every=3)
STOP_AT = 3
NUM_CLIPS = 12
SEED, NAME = 0, "expert-00"


if __name__ == "__main__":
    torch.set_num_threads(1)
    out = sys.argv[1]
    data = tiny_train_data(NUM_CLIPS)
    # micro-batches of 2: rank 0 accumulates 2 micro-batches, rank 1 two as well but of other sizes (2+1, 2+2)
    ddp_cfg = replace(CFG, micro_batch=2)
    train(data, ddp_cfg, f"{out}/full", SEED, NAME, callbacks=[])
    train(data, ddp_cfg, f"{out}/half", SEED, NAME, callbacks=[], max_steps=STOP_AT)

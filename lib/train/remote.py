"""Where a training run lives when ``output_dir`` is an object store: what the bucket holds of it is fetched first
(so a retry on another node resumes and a rerun reuses a finished model), every checkpoint is mirrored back, and the
finished model is published there. Locally the run's own folder persists and none of this happens."""

from __future__ import annotations

from pathlib import Path

from lib.storage import download_dir, download_published, is_remote, publish_dir, resolve
from lib.train.checkpoint import complete_checkpoints, mirror_checkpoint
from lib.train.distributed import workers_from_env
from lib.train.trainer import ProgressCallback, TrainResult


class MirrorCheckpoints(ProgressCallback):
    """Copies each new checkpoint to the persistent URI (manifest last, so a partial copy is never loaded) and keeps
    there only the checkpoints kept locally."""

    def __init__(self, log_every: int, name: str, remote: str):
        super().__init__(log_every, name)
        self.remote = remote

    def on_checkpoint(self, step: int, folder: Path) -> None:
        keep = [f.name for _, f in complete_checkpoints(folder.parent)]
        mirror_checkpoint(folder, f"{self.remote}/checkpoints", keep)


def fetch_run(remote: str, local: Path) -> None:
    """What the bucket holds of this run: its checkpoints (complete or not: the trainer reads only complete ones)
    and its published model."""
    download_dir(f"{remote}/checkpoints", local / "checkpoints")
    download_published(f"{remote}/model", local / "model")


def remote_run(
    output_dir: str, stage: str, key: str, out: Path, log_every: int, name: str
) -> tuple[ProgressCallback, str | None]:
    """A training run's progress callback and, with a remote ``output_dir``, its folder there: what the bucket holds
    of the run is fetched into ``out`` first (so a retry on another node resumes, a rerun reuses a finished model)
    and every checkpoint is mirrored back. Locally ``out`` itself persists: (ProgressCallback, None)."""
    if not is_remote(output_dir):
        return ProgressCallback(log_every, name), None
    remote = f"{output_dir.rstrip('/')}/stages/{stage}/{key}"
    workers = workers_from_env()
    if workers.local_rank == 0:  # one download per node; the node's other processes read it
        fetch_run(remote, out)
    workers.barrier()
    return MirrorCheckpoints(log_every, name, remote), remote


def published_model(result: TrainResult, remote: str | None) -> str:
    """Where a training task's model is returned from: its local folder, or (remote run) the published model in the
    bucket; a reused model is the one it was fetched from, a new one is published now."""
    if remote is None:
        return str(result.model_dir)
    published = resolve(f"{remote}/model") if result.skipped else None
    return published or publish_dir(result.model_dir, f"{remote}/model")

"""One model's training run as the pipeline's training tasks run it (``tasks.train``, ``tasks.extend``): its
identity, its folder, its MLflow run, its remote mirror and the model it hands back.

Why apart from the tasks: an expert, the monolith, the seed model and a grown DDM's continued expert all run this
same sequence, and none of it needs Flyte; the tasks only turn their inputs into paths and the model back into a
FlyteDirectory. The run's identity (``run_key``) hashes the spec (what it trains, not how it runs: micro-batch,
compile) and the encoded folders it reads (size, frames, codec), so a rerun finds the same folder: a finished model
is reused by that hash and a half-trained one resumes from its checkpoints, whatever Flyte caches.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from lib.config import input_key
from lib.encode.store import read_codec_info
from lib.models.factory import weights_digest, weights_sha256
from lib.models.levers import limit_threads, use_compile_cache
from lib.storage import stage_folder
from lib.tracking import Tracker
from lib.train.distributed import workers_from_env
from lib.train.remote import published_model, remote_run
from lib.train.specs import SEED, ExpertSpec, training_data
from lib.train.trainer import TrainCallback, TrainResult, train

STAGE = "train"  # the stage folder of every model run: <output_dir>/stages/train/<key>


@dataclass(frozen=True)
class TrainedModel:
    """What one model's run leaves to its task.

    Attributes:
        result: the trainer's result (``skipped`` when a finished model was reused).
        location: the model folder, or its published URI when ``output_dir`` is an object store.
        summary: the line the task prints for the user (``expert-00: trained 4 steps on ...``); None on a DDP process
            other than rank 0, whose output Flyte does not use.
    """

    result: TrainResult
    location: str
    summary: str | None


class ModelRun(TrainCallback):
    """One model's run, opened when its training starts: a model reused from an earlier execution (the trainer skips
    it by spec hash and never starts) opens no run, so a rerun that trains nothing pays nothing for tracking. The
    trainer's per-step rows (loss, lr, grad norm, tokens/s) go to the run in batches of ``flush_every``."""

    def __init__(
        self,
        open_tracker: Callable[[], Tracker | None],
        model: str,
        params: Mapping[str, Any],
        tags: Mapping[str, str],
        tokens_per_step: int,
        flush_every: int = 50,
    ) -> None:
        self.open_tracker, self.model, self.params, self.tags = open_tracker, model, params, tags
        self.tokens_per_step, self.flush_every = tokens_per_step, flush_every
        self.tracker: Tracker | None = None
        self.run_id = ""
        self.pending: list[dict[str, float]] = []

    def on_start(self, step: int, total: int) -> None:
        self.tracker = self.open_tracker()
        if self.tracker is not None:
            self.run_id = self.tracker.model_run(self.model, self.params, self.tags)

    def on_step(self, row: dict[str, float]) -> None:
        if self.tracker is None:
            return
        seconds = max(row["seconds"], 1e-9)
        self.pending.append({"step": row["step"], "loss": row["loss"], "lr": row["lr"], "grad_norm": row["grad_norm"],
                             "tokens_per_s": self.tokens_per_step / seconds})  # fmt: skip
        if len(self.pending) >= self.flush_every:
            self.flush()

    def flush(self) -> None:
        if self.tracker is not None and self.pending:
            self.tracker.log_metrics(self.run_id, self.pending)
            self.pending = []

    def on_end(self, result: TrainResult) -> None:
        self.flush()
        if self.tracker is not None:
            self.tracker.finish(self.run_id)

    def failed(self) -> None:
        """Training raised: what was logged stays, and the run is marked failed."""
        if self.tracker is not None:
            self.flush()
            self.tracker.finish(self.run_id, failed=True)


def model_run(spec: ExpertSpec, run_hash: str, encoded: Path, open_tracker: Callable[[], Tracker | None]) -> ModelRun:
    """This model's MLflow run under the execution's run, opened only if it trains: the spec as params, its kind
    as a tag, and the tokens one step processes (for tokens/s) from the patch size and the latent shape of the
    ``encoded`` folder it trains on."""
    _, t, h, w = read_codec_info(encoded)["latent_shape"]
    pt, ph, pw = spec.expert.patch_size
    params = {"spec_hash": run_hash, "cluster_id": spec.cluster_id, "num_clips": spec.num_clips, "seed": spec.seed,
              "expert": dataclasses.asdict(spec.expert)}  # fmt: skip
    if spec.init_sha256:
        params["init_sha256"] = spec.init_sha256
    kind = ("seed" if spec.cluster_id == SEED else "monolith" if spec.cluster_id < 0
            else "branched expert" if spec.expert.seed_fraction > 0 else "continued expert" if spec.init_sha256
            else "expert")  # fmt: skip
    tokens_per_step = spec.expert.batch_size * (t // pt) * (h // ph) * (w // pw)
    return ModelRun(open_tracker, spec.name, params, {"ddm.kind": kind}, tokens_per_step, spec.expert.log_every)


def checked_start(spec: ExpertSpec, folder: Path | None) -> Path | None:
    """The folder a spec starts from (None: from scratch), checked to hold the weights its ``init_sha256`` names."""
    if folder is None:
        return None
    found = weights_digest(weights_sha256(folder))
    if found != spec.init_sha256:
        raise ValueError(f"{spec.name}: start weights {folder} have digest {found[:12]}, the spec names "
                         f"{spec.init_sha256[:12] or 'none'}")  # fmt: skip
    return folder


def run_key(spec: ExpertSpec, encoded_ids: Sequence[str]) -> str:
    """The run's identity: the spec's hash and the stable identities of the encoded folders it reads."""
    return input_key(spec.spec_hash(), *encoded_ids)


def run_model(
    spec: ExpertSpec,
    sources: Sequence[tuple[Path, pd.DataFrame]],
    encoded_ids: Sequence[str],
    output_dir: str,
    scratch: Path,
    open_tracker: Callable[[], Tracker | None],
    init_from: Path | None = None,
) -> TrainedModel:
    """Train one model (or reuse it by ``run_key``, or resume it) and publish it. Under DDP every process runs this
    and rank 0's model is the output; only rank 0 tracks and reports.

    Args:
        spec: the model to train.
        sources: (encoded folder, ClusterAssignment table) pairs its clips are loaded from, in order: one for the
            pipeline's models; the parent's and the new data's for a continued expert.
        encoded_ids: the stable identity of each source's encoded folder (its URI; ``lib.storage.stable_uri``).
        output_dir: the run's output location, a local folder or an object-store URI.
        scratch: the task's working folder, where a remote run's folder is assembled.
        open_tracker: opens the execution's MLflow tracker (None: tracking off), called only if the model trains.
        init_from: a saved model the run starts from (``checked_start``), named by ``spec.init_sha256``.
    """
    workers = workers_from_env()
    use_compile_cache(output_dir)
    limit_threads()
    run_hash = run_key(spec, encoded_ids)
    key = f"{spec.name}-{run_hash}"
    out = stage_folder(output_dir, STAGE, input_key(key), scratch, fresh=False)
    callback, remote = remote_run(output_dir, STAGE, key, out, spec.expert.log_every, spec.name)
    data = training_data(spec, sources)
    run = model_run(spec, run_hash, sources[0][0], open_tracker) if workers.is_main else None
    try:
        result = train(data, spec.expert, out, spec.seed, spec.name, callbacks=[callback] + ([run] if run else []),
                       spec_hash=run_hash, init_from=init_from)  # fmt: skip
    except BaseException:
        if run:
            run.failed()
        raise
    location = published_model(result, remote if workers.is_main else None)
    state = "reused" if result.skipped else f"trained {result.steps} steps"
    final = result.log["loss"].tail(20).mean() if len(result.log) else float("nan")
    summary = f"{spec.name}: {state} on {spec.num_clips} clips, final loss {final:.4f} -> {result.model_dir}"
    return TrainedModel(result, location, summary if workers.is_main else None)

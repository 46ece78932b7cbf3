"""Experiment tracking in MLflow: one run per pipeline execution, one nested run per model it trains.

Why MLflow, and why like this: comparing two runs should mean opening one UI, not reading two terminals. Every model
(expert k, monolith, router, evaluation network) gets a run nested under its execution's run, with the config subtree
and spec hash as params, its loss curve as metrics (per step: loss, lr, grad norm, tokens/s) and its reports as
artifacts, so curves of the experts and the monolith sit side by side on one training-sample axis.

Where runs go: ``MLFLOW_TRACKING_URI`` (a team's server) when set; otherwise a SQLite store in the run's local
``output_dir`` (``<output_dir>/mlflow.db``; open it with ``make ui``). A cloud ``output_dir`` without a tracking URI
tracks nothing (a SQLite file cannot live in a bucket) and says so once. ``DDM_TRACKING=0`` turns tracking off.

A local store keeps its artifacts beside it in ``<output_dir>/mlartifacts`` under MLflow's proxied scheme
(``mlflow-artifacts:/ddm-flyte/<run id>/artifacts``), so the database holds no absolute path and a moved or copied
``output_dir`` still finds them: MLflow's server resolves that scheme against its ``--artifacts-destination``
(``make ui`` passes ``<output_dir>/mlartifacts``), and ``Tracker`` against the folder beside the database. MLflow
itself refuses a relative ``file:`` location (it makes it absolute against the working directory) and writes to
``mlflow-artifacts:`` only through a server, hence ``Tracker.log_artifact`` writing those files itself.

Tasks run apart (map-task elements, pods), so they cannot hand each other a run object: each finds its execution's
run by the tag ``ddm.execution`` and creates it when it is the first. A training model's metrics are sent in
batches (``lib.train.run.ModelRun``: one request per ``flush_every`` steps), so tracking costs the training loop next
to nothing. MLflow itself (import and database set-up, about 3 s per process) is only loaded by a task that has
something to log.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

EXPERIMENT = "ddm-flyte"
EXECUTION_TAG = "ddm.execution"
MODEL_TAG = "ddm.model"
LEVEL_TAG = "ddm.level"  # "execution" (the parent) or "model": children carry the execution tag too
ENV_SWITCH = "DDM_TRACKING"
DB_FILE = "mlflow.db"
ARTIFACTS_DIR = "mlartifacts"  # beside DB_FILE: what ``mlflow-artifacts:/`` locations resolve against
PROXY_SCHEME = "mlflow-artifacts:"
# MLflow's limits (mlflow.utils.validation): longer param values are cut (the execution's config.yaml artifact holds
# them whole), and one log_batch request takes at most so many params or metrics
MAX_PARAM_CHARS = 6000
PARAMS_PER_BATCH = 100
METRICS_PER_BATCH = 1000


def tracking_uri(output_dir: str) -> str | None:
    """Where this run's tracking goes (module docstring), or None when tracking is off."""
    if os.environ.get(ENV_SWITCH, "1").strip().lower() in ("0", "false", "no", "off"):
        return None
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    if "://" in output_dir and not output_dir.startswith("file://"):
        log.info("tracking off: output_dir %s is not local and MLFLOW_TRACKING_URI is not set", output_dir)
        return None
    folder = Path(output_dir.removeprefix("file://")).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / DB_FILE}"


def flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config values as MLflow params (``expert.lr`` -> "0.002"); lists as JSON."""
    flat: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = json.dumps(value) if isinstance(value, list | tuple) else str(value)
    return flat


class Tracker:
    """The MLflow side of one pipeline execution (``execution``: a key unique to it, e.g. the Flyte execution id)."""

    def __init__(self, uri: str, execution: str, experiment: str = EXPERIMENT) -> None:
        from mlflow.tracking import MlflowClient  # imported here: a process that tracks nothing never loads mlflow

        for name in ("mlflow", "alembic"):  # their INFO lines (database set-up) would interleave with the run's own
            logging.getLogger(name).setLevel(logging.WARNING)
        self.client = MlflowClient(tracking_uri=uri)
        self.execution = execution
        # a local SQLite store keeps its artifacts beside it (MLflow's default is ./mlruns under the working directory)
        local = uri.startswith("sqlite:///")
        self.artifact_root = Path(uri.removeprefix("sqlite:///")).parent / ARTIFACTS_DIR if local else None
        found = self.client.get_experiment_by_name(experiment)
        location = f"{PROXY_SCHEME}/{experiment}" if local else None  # relative to the store (module docstring)
        self.experiment_id = found.experiment_id if found else self.client.create_experiment(experiment, location)

    def execution_run(self) -> str:
        """The execution's parent run id, created by the first task that asks."""
        query = f"tags.`{EXECUTION_TAG}` = '{self.execution}' and tags.`{LEVEL_TAG}` = 'execution'"
        runs = self.client.search_runs([self.experiment_id], filter_string=query, max_results=1)
        if runs:
            return runs[0].info.run_id
        run = self.client.create_run(self.experiment_id, run_name=f"pipeline {self.execution}",
                                     tags={EXECUTION_TAG: self.execution, LEVEL_TAG: "execution"})  # fmt: skip
        return run.info.run_id

    def model_run(
        self, model: str, params: Mapping[str, Any], tags: Mapping[str, str] | None = None, started: float | None = None
    ) -> str:
        """A run for one model, nested under the execution's run, with its params; it starts now or at ``started``
        (``time.time()`` seconds)."""
        parent = self.execution_run()
        all_tags = {"mlflow.parentRunId": parent, EXECUTION_TAG: self.execution, LEVEL_TAG: "model", MODEL_TAG: model,
                    **(tags or {})}  # fmt: skip
        start_ms = None if started is None else int(started * 1000)
        run = self.client.create_run(self.experiment_id, start_time=start_ms, tags=all_tags, run_name=model)
        run_id = run.info.run_id
        self.log_params(run_id, params)
        return run_id

    def record_model(
        self, model: str, kind: str, params: Mapping[str, Any], rows: list[dict[str, float]], started: float
    ) -> None:
        """A finished model's whole run at once (router, evaluation network): params, metric rows, done. It lasts
        from ``started`` (``time.time()`` when its training began) to now, so its duration is the training's."""
        run_id = self.model_run(model, params, tags={"ddm.kind": kind}, started=started)
        self.log_metrics(run_id, rows)
        self.finish(run_id)

    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        """Nested params under dotted names (``flatten``), each value cut to MLflow's limit."""
        from mlflow.entities import Param

        items = [Param(k, v[:MAX_PARAM_CHARS]) for k, v in flatten(params).items()]
        for i in range(0, len(items), PARAMS_PER_BATCH):
            self.client.log_batch(run_id, params=items[i : i + PARAMS_PER_BATCH])

    def log_config(self, run_id: str, config: Mapping[str, Any], text: str, name: str = "config.yaml") -> None:
        """The resolved run config on a run: every field as a param (``expert.lr``) and ``text`` (its YAML) as the
        artifact ``name``, which keeps any value too long for a param whole."""
        self.log_params(run_id, config)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / name
            path.write_text(text)
            self.log_artifact(run_id, path)

    def log_metrics(self, run_id: str, rows: list[dict[str, float]]) -> None:
        """Rows of {"step": n, name: value, ...}; every other key becomes a metric at that step, stamped now."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(name, float(value), now, int(row["step"]))
                   for row in rows for name, value in row.items() if name != "step"]  # fmt: skip
        for i in range(0, len(metrics), METRICS_PER_BATCH):
            self.client.log_batch(run_id, metrics=metrics[i : i + METRICS_PER_BATCH])

    def artifact_dir(self, run_id: str) -> Path | None:
        """Where a run's artifacts lie in a local store's ``mlartifacts`` folder (None for a server's run, or a run
        of a store made before artifact locations were relative: MLflow itself reaches those)."""
        uri = self.client.get_run(run_id).info.artifact_uri
        if self.artifact_root is None or not uri.startswith(PROXY_SCHEME):
            return None
        return self.artifact_root / uri.removeprefix(PROXY_SCHEME).lstrip("/")

    def log_artifact(self, run_id: str, path: str | Path, folder: str | None = None) -> None:
        """A file, or a whole folder's files, as artifacts of the run (under ``folder``)."""
        path = Path(path)
        local = self.artifact_dir(run_id)
        if local is not None:  # a proxied location of a local store: written where a server would write it
            from mlflow.store.artifact.local_artifact_repo import LocalArtifactRepository

            repo = LocalArtifactRepository(str(local))
            if path.is_dir():
                repo.log_artifacts(str(path), folder)
            else:
                repo.log_artifact(str(path), folder)
        elif path.is_dir():
            self.client.log_artifacts(run_id, str(path), folder)
        else:
            self.client.log_artifact(run_id, str(path), folder)

    def name_execution(self, run_id: str, workflow: str) -> None:
        """Name the execution's run after the workflow that ran (its first task could not know it)."""
        self.client.set_tag(run_id, "mlflow.runName", f"{workflow} {self.execution}")

    def finish(self, run_id: str, failed: bool = False) -> None:
        self.client.set_terminated(run_id, status="FAILED" if failed else "FINISHED")


def open_tracker(output_dir: str, execution: str) -> Tracker | None:
    """The MLflow tracker of one execution (``execution``: a key unique to it), or None when tracking is off
    (``tracking_uri``) or cannot start (server down, locked file): tracking costs a warning, never the run."""
    uri = tracking_uri(output_dir)
    if uri is None:
        return None
    try:
        return Tracker(uri, execution)
    except Exception as err:
        log.warning("MLflow tracking off for this task: %s", err)
        return None

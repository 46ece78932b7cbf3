"""Where tasks write their outputs, and which execution (and MLflow tracker) they belong to.

Flyte's local cache stores the path a task returned; when that path is a temporary folder that later vanishes,
a cache hit hands back a missing path (a known flytekit behaviour). So when ``output_dir`` is a local folder, a
task writes under ``<output_dir>/stages/<stage>/<key>``, a persistent folder keyed by the task's inputs, and a
cache hit stays valid as long as the outputs are kept. On a cluster (``output_dir`` is a URI) tasks write to their
working directory and Flyte uploads the result to its blob store, which is persistent by itself.
"""

import dataclasses
import hashlib
import json
import logging
import shutil
import uuid
from pathlib import Path
from typing import Any

from flytekit import current_context

from lib.tracking import Tracker, tracking_uri

log = logging.getLogger(__name__)

# Locally every execution is "local/local/local" to flytekit; one `pyflyte run` process is one execution.
_LOCAL_EXECUTION = f"local-{uuid.uuid4().hex[:12]}"
# Stages whose task body ran in this process (a Flyte cache hit runs no body): locally, the whole execution.
_RAN: list[str] = []


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    return str(value)


def input_key(*parts: Any) -> str:
    """A short stable hash of a task's inputs (dataclasses by value, everything else by str)."""
    text = json.dumps(parts, sort_keys=True, default=_jsonable)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def is_local(output_dir: str) -> bool:
    return "://" not in output_dir or output_dir.startswith("file://")


def stage_dir(output_dir: str, stage: str, *key_parts: Any, fresh: bool = True) -> Path:
    """A folder for one task's outputs; emptied first when ``fresh`` (a rerun must not mix in stale files)."""
    if is_local(output_dir):
        path = Path(output_dir.removeprefix("file://")).resolve() / "stages" / stage / input_key(*key_parts)
    else:
        path = Path(current_context().working_directory) / stage
    if fresh:  # a fresh folder means the stage computes now (training, which may reuse, says so itself)
        mark_ran(stage)
    if fresh and path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    return path


def uri_of(item: Any) -> str:
    """Stable identity of a FlyteFile/FlyteDirectory input: its blob URI on a cluster, its path locally."""
    return item.remote_source or item.path


def mark_ran(stage: str) -> None:
    """Record that a stage computed in this process (for ``tracker_for(..., only_after_work=True)``)."""
    _RAN.append(stage)


def execution_key() -> str:
    """The Flyte execution this task belongs to (project/domain/name), or this process's local execution."""
    eid = current_context().execution_id
    if eid is None or eid.name == "local":
        return _LOCAL_EXECUTION
    return f"{eid.project}/{eid.domain}/{eid.name}"


def tracker_for(output_dir: str, only_after_work: bool = False) -> Tracker | None:
    """The execution's MLflow tracker (``lib.tracking``), or None when tracking is off or unreachable: tracking
    never fails a run.

    ``only_after_work``: for the closing summary. A local rerun served wholly from Flyte's cache recomputed nothing,
    so it opens no MLflow run (its results are the earlier execution's) and does not pay MLflow's start-up (about
    3 s, most of such a rerun). On a cluster every task is its own pod and cannot know, so it always tracks."""
    if only_after_work and is_local(output_dir) and not _RAN:
        return None
    uri = tracking_uri(output_dir)
    if uri is None:
        return None
    try:
        return Tracker(uri, execution_key())
    except Exception as err:  # a tracker that cannot start (server down, locked file) costs a warning, not the run
        log.warning("MLflow tracking off for this task: %s", err)
        return None

"""What tasks share from their Flyte context: the working folder a stage is assembled in, the execution a task belongs
to (and its MLflow tracker), and the stages that computed in this process.

Where stage outputs go and why (``<output_dir>/stages/<stage>/<key>``, published by a rename locally or uploaded to a
bucket) is ``lib.storage``'s; these wrappers only add what Flyte knows: the task's working folder and its execution.
"""

import uuid
from pathlib import Path
from typing import Any

from flytekit import current_context

from lib.config import input_key
from lib.storage import is_remote, publish_path, stable_uri, stage_folder
from lib.tracking import Tracker, open_tracker

# Locally every execution is "local/local/local" to flytekit; one `pyflyte run` process is one execution.
_LOCAL_EXECUTION = f"local-{uuid.uuid4().hex[:12]}"
# Stages whose task body ran in this process (a Flyte cache hit runs no body): locally, the whole execution.
_RAN: list[str] = []


def scratch() -> Path:
    """Where a task assembles its outputs before publishing them to a remote ``output_dir``."""
    return Path(current_context().working_directory) / "scratch"


def stage_dir(output_dir: str, stage: str, *key_parts: Any, fresh: bool = True) -> Path:
    """``lib.storage.stage_folder`` keyed by the task's inputs (``lib.config.input_key``); a ``fresh`` folder means
    the stage computes now (training, which may reuse, says so itself)."""
    if fresh:
        mark_ran(stage)
    return stage_folder(output_dir, stage, input_key(*key_parts), scratch(), fresh=fresh)


def publish_stage(output_dir: str, path: Path) -> str:
    """The path or URI a task returns for ``path`` inside a ``stage_dir`` folder (``lib.storage.publish_path``)."""
    return publish_path(output_dir, path, scratch())


def uri_of(item: Any) -> str:
    """Stable identity of a FlyteFile/FlyteDirectory input: its blob URI on a cluster, its path locally; a
    published stage is named without its attempt (``lib.storage.stable_uri``), so reruns key on the same stage."""
    return stable_uri(item.remote_source or item.path)


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
    """The execution's MLflow tracker (``lib.tracking.open_tracker``), or None when tracking is off or unreachable.

    ``only_after_work``: for the closing summary. A local rerun served wholly from Flyte's cache recomputed nothing,
    so it opens no MLflow run (its results are the earlier execution's) and does not pay MLflow's start-up (about
    3 s, most of such a rerun). On a cluster every task is its own pod and cannot know, so it always tracks."""
    if only_after_work and not is_remote(output_dir) and not _RAN:
        return None
    return open_tracker(output_dir, execution_key())

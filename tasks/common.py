"""Where tasks write their outputs, and which execution (and MLflow tracker) they belong to.

Flyte's local cache stores the path a task returned; when that path is a temporary folder that later vanishes,
a cache hit hands back a missing path (a known flytekit behaviour). So when ``output_dir`` is a local folder, a
task's outputs go to ``<output_dir>/stages/<stage>/<key>``, a persistent folder keyed by the task's inputs, published
whole by a rename (``lib.storage.publish_local``), and a cache hit stays valid as long as the outputs are kept.
When ``output_dir`` is a URI (``s3://bucket/prefix``, on a cluster or locally) a task assembles its outputs in a
scratch folder of its working directory and publishes them to ``<output_dir>/stages/<stage>/<key>``
(``lib.storage``), returning the bucket URI as its FlyteFile/FlyteDirectory.
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

from lib.config import key_values
from lib.storage import attempt_root, check_output_dir, is_remote, local_attempt, publish_dir, publish_local, stable_uri
from lib.tracking import Tracker, tracking_uri

log = logging.getLogger(__name__)

# Locally every execution is "local/local/local" to flytekit; one `pyflyte run` process is one execution.
_LOCAL_EXECUTION = f"local-{uuid.uuid4().hex[:12]}"
# Stages whose task body ran in this process (a Flyte cache hit runs no body): locally, the whole execution.
_RAN: list[str] = []


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return key_values(value)
    return str(value)


def input_key(*parts: Any) -> str:
    """A short stable hash of a task's inputs (dataclasses by value, without the ``added_later`` fields that hold their
    default; everything else by str)."""
    text = json.dumps(parts, sort_keys=True, default=_jsonable)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def is_local(output_dir: str) -> bool:
    return not is_remote(output_dir)


def _scratch() -> Path:
    """Where a task assembles its outputs before publishing them to a remote ``output_dir``."""
    return Path(current_context().working_directory) / "scratch"


def stage_dir(output_dir: str, stage: str, *key_parts: Any, fresh: bool = True) -> Path:
    """A folder for one task's outputs, keyed by its inputs; ``publish_stage`` makes it the stage's.

    ``fresh`` (a stage that computes now): locally a new attempt folder that ``publish_stage`` renames into
    ``<output_dir>/stages/<stage>/<key>`` (``lib.storage.publish_local``: concurrent runs never see a torn stage);
    with a remote ``output_dir`` an emptied local scratch folder laid out like that, which ``publish_stage`` uploads
    (the output location checked first, ``lib.storage.check_output_dir``). Not ``fresh`` (training, which resumes
    from its own checkpoints and writes its model atomically): the stage folder itself.
    """
    if fresh:  # a fresh folder means the stage computes now (training, which may reuse, says so itself)
        mark_ran(stage)
    if is_local(output_dir):
        path = Path(output_dir.removeprefix("file://")).resolve() / "stages" / stage / input_key(*key_parts)
        if fresh:
            return local_attempt(path)
    else:
        check_output_dir(output_dir)
        path = _scratch() / "stages" / stage / input_key(*key_parts)
        if fresh and path.exists():
            shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    return path


def publish_stage(output_dir: str, path: Path) -> str:
    """The path or URI a task returns for ``path``, a file or folder inside a ``stage_dir`` folder.

    Locally the attempt folder ``path`` lies in is renamed into place (a path outside an attempt, a training
    stage's, is returned as it is). With a remote ``output_dir`` the stage folder is published to
    ``<output_dir>/stages/<stage>/<key>`` (``lib.storage.publish_dir``: a fresh attempt, the pointer last) and the
    URI of ``path`` inside the published attempt is returned: downstream tasks read the bucket, and a Flyte cache
    hit hands back a URI that outlives this task's working directory.
    """
    if is_local(output_dir):
        attempt = attempt_root(path)
        return str(path if attempt is None else publish_local(attempt) / path.relative_to(attempt))
    rel = path.relative_to(_scratch())
    stage_root = Path(*rel.parts[:3])  # stages/<stage>/<key>
    attempt = publish_dir(_scratch() / stage_root, f"{output_dir.rstrip('/')}/{stage_root.as_posix()}")
    rest = Path(*rel.parts[3:]).as_posix() if len(rel.parts) > 3 else ""
    return f"{attempt}/{rest}" if rest else attempt


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

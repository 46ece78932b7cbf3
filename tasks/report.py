"""Tasks that persist results to ``cfg.output_dir`` and tell the user where they are.

Not cached on purpose: they are cheap, and a cache hit upstream must still leave the files in place.
"""

import logging
import tempfile
from pathlib import Path

from flytekit import task
from flytekit.types.directory import FlyteDirectory
from pandera.typing import DataFrame

from data_schemas.ingest import ClipAttributes, ClipIndex, FilteredClip, QuarantineRecord
from lib.data.quarantine import held_line
from lib.storage import publish_folder
from tasks.common import uri_of
from tasks.image import TASK_IMAGE

log = logging.getLogger(__name__)


@task(container_image=TASK_IMAGE)
def report_ingest(
    output_dir: str,
    shards: FlyteDirectory,
    index: DataFrame[ClipIndex],
    quarantine: DataFrame[QuarantineRecord],
    attributes: DataFrame[ClipAttributes],
    filtered: DataFrame[FilteredClip],
) -> str:
    """The ingest tables in ``<output_dir>/ingest/``, published as one folder (a rerun replaces it whole)."""
    dest = f"{output_dir.rstrip('/')}/ingest"
    tables = {"clip_index": index, "quarantine": quarantine, "attributes": attributes, "filtered": filtered}
    with tempfile.TemporaryDirectory() as tmp:
        for name, table in tables.items():
            table.to_parquet(Path(tmp) / f"{name}.parquet", index=False)
        publish_folder(tmp, dest)
    reasons = quarantine["reason"].value_counts().to_dict()
    rules = filtered["rule"].value_counts().to_dict()
    held = f"\ningest: {held_line(index)}" if "held_frames" in index.columns else ""  # decoded sources only
    log.info(
        f"ingest: {len(index)} clips in {index['shard'].nunique()} shard(s) -> {uri_of(shards)}\n"
        f"ingest: tables -> {', '.join(f'{dest}/{name}.parquet' for name in tables)}\n"
        f"ingest: quarantined {len(quarantine)} row(s) {reasons if reasons else ''}\n"
        f"ingest: filtered {len(filtered)} clip(s) by quality rule {rules if rules else ''}{held}"
    )
    return dest

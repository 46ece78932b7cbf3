"""Column conventions users bring: the project's manifest names, Open-Sora's, and ``data.columns`` for the rest.

Why a mapping and not a conversion script: datasets arrive as their authors published them (Open-Sora's
``path, text, num_frames, fps, height, width``; WebVid's ``videoid, contentUrl, duration, page_dir, name``), and
a copy of a 10M-row CSV renamed by hand drifts from its source. ``data.columns`` maps a project column to the
user's column (``{caption: name, path: contentUrl, clip_id: videoid}`` for WebVid); Open-Sora's names work with
no mapping at all. The same mapping names the keys of a WebDataset sample's JSON metadata.

A column nobody asked for is carried along, and named once in a warning: a typo in a mapping (or a column the
user expected to matter) is visible in the log rather than silently ignored.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

import pandas as pd

from data_schemas.ingest import MANIFEST_COLUMNS, REQUIRED_COLUMNS

log = logging.getLogger(__name__)

# Names other conventions use for a project column, tried in order when neither a mapping nor the project name
# is present. Open-Sora's manifests call the caption ``text``.
ALIASES: dict[str, tuple[str, ...]] = {"caption": ("text",)}
# Columns of Open-Sora manifests that describe the video file: ingestion measures these from the decoded video
# itself, so they are recognised (no warning) and not trusted.
DESCRIPTIVE_COLUMNS = ("num_frames", "fps", "height", "width", "aspect_ratio", "resolution")


class ColumnError(ValueError):
    """A mapping that names a column the manifest does not have, or a required column nobody provides."""


def source_column(project: str, available: Iterable[str], mapping: Mapping[str, str]) -> str | None:
    """The user's column (or JSON key) that holds project column ``project``, or None when there is none.

    Order: the mapping in ``data.columns``, then the project's own name, then the aliases of known conventions.
    A mapped name that is absent is an error (a typo must not fall back to another column silently).
    """
    names = set(available)
    if project in mapping:
        if mapping[project] not in names:
            raise ColumnError(
                f"data.columns.{project}: column {mapping[project]!r} not found; found {sorted(names)}"
            )
        return mapping[project]
    for candidate in (project, *ALIASES.get(project, ())):
        if candidate in names:
            return candidate
    return None


def map_columns(table: pd.DataFrame, mapping: Mapping[str, str], where: str) -> pd.DataFrame:
    """``table`` with its columns renamed to the project's names; unused columns kept, and named in a warning.

    Args:
        table: the manifest as read, columns as the user named them.
        mapping: ``data.columns`` (project column -> user column).
        where: the manifest's path or URI, for messages.

    Raises:
        ColumnError: a mapped column is missing, or ``path``/``caption`` cannot be found.
    """
    try:
        chosen = {p: source_column(p, table.columns, mapping) for p in MANIFEST_COLUMNS}
    except ColumnError as exc:
        raise ColumnError(f"{where}: {exc}") from None
    missing = [p for p in REQUIRED_COLUMNS if chosen[p] is None]
    if missing:
        hints = {"caption": " (Open-Sora: text; WebVid: map it with data.columns.caption: name)"}
        raise ColumnError(
            f"{where}: missing required column(s) {', '.join(m + hints.get(m, '') for m in missing)}; "
            f"found {list(table.columns)}; map your names with data.columns.<column>"
        )
    used = {user: project for project, user in chosen.items() if user is not None}
    # a project-named column the mapping replaced by another one is renamed out of the way, not overwritten
    shadowed = {c: f"{c} (unused)" for c in table.columns if c in MANIFEST_COLUMNS and c not in used}
    unknown = [c for c in table.columns if c not in used and c not in DESCRIPTIVE_COLUMNS]
    if unknown:
        log.warning(
            "%s: column(s) %s not used by ingestion (carried along); known: %s, Open-Sora's text/%s; "
            "map a column with data.columns.<project column>",
            where, ", ".join(map(repr, unknown)), ", ".join(MANIFEST_COLUMNS), "/".join(DESCRIPTIVE_COLUMNS),
        )  # fmt: skip
    return table.rename(columns={**shadowed, **used})

"""One split of the clips into roles, made once at ingestion and carried by every table after it.

Why a role per clip: every claim the benchmark makes compares generators on data none of them trained on. The
roles are

- ``train``: the only clips experts, monolith, router and the evaluation feature network learn from;
- ``validation``: held out from all training; the feature network's held-out accuracy, held-out losses and any
  tuning (sampler sweeps) use these, never the test roles below;
- ``reference``: the real statistics of the Fréchet / kernel distances;
- ``prompt``: the captions generated from, and their clips as the ``real`` method.

Why a hash of the clip id: a clip's role depends only on (seed, clip id), not on row order or on how many other
clips there are, so a manifest that grows keeps every existing clip in its role, and a rerun with the same seed
reproduces the split exactly. The fractions hold in expectation (binomially), which the ingest summary reports.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from data_schemas.ingest import PROMPT, REFERENCE, ROLES, TRAIN, VALIDATION
from lib.seeding import derive_seed

HELD_OUT = (VALIDATION, REFERENCE, PROMPT)


class SplitError(ValueError):
    """A table without roles, or a role with too few clips for what it is asked to do."""


def assign_roles(clip_ids: list[str], seed: int, validation: float, reference: float, prompt: float) -> np.ndarray:
    """Role of every clip id (object array of role names), from a uniform draw hashed from (seed, clip id)."""
    if min(validation, reference, prompt) < 0 or validation + reference + prompt >= 1:
        raise SplitError(
            f"split fractions validation={validation}, reference={reference}, prompt={prompt} must be >= 0 and "
            "leave a positive fraction for training"
        )
    u = np.array([derive_seed(seed, "split", str(c)) / 2.0**63 for c in clip_ids], dtype=np.float64)
    edges = np.cumsum([validation, reference, prompt])
    roles = np.full(len(clip_ids), TRAIN, dtype=object)
    roles[u < edges[2]] = PROMPT
    roles[u < edges[1]] = REFERENCE
    roles[u < edges[0]] = VALIDATION
    return roles


def with_roles(table: pd.DataFrame, roles_of: pd.DataFrame) -> pd.DataFrame:
    """``table`` with the ``role`` column of ``roles_of`` (both keyed by clip_id); every clip must have one."""
    if "role" not in roles_of.columns:
        raise SplitError("split: the table has no 'role' column (ingest assigns it)")
    lookup = roles_of.set_index("clip_id")["role"]
    missing = sorted(set(table["clip_id"]) - set(lookup.index))
    if missing:
        raise SplitError(f"split: {len(missing)} clip(s) have no role, e.g. {missing[:5]}")
    return table.assign(role=lookup.loc[table["clip_id"]].to_numpy())


def rows_with_role(table: pd.DataFrame, role: str) -> pd.DataFrame:
    """The rows of one role; refuses a table without roles (a table that cannot say what is held out)."""
    if role not in ROLES:
        raise SplitError(f"split: unknown role {role!r}; roles are {', '.join(ROLES)}")
    if "role" not in table.columns:
        raise SplitError("split: the table has no 'role' column, so held-out clips cannot be told apart")
    return table[table["role"] == role]


def role_counts(table: pd.DataFrame) -> dict[str, int]:
    """Clips per role, every role listed (0 where empty)."""
    counts = table["role"].value_counts()
    return {r: int(counts.get(r, 0)) for r in ROLES}

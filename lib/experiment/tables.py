"""Writing an experiment's tables: GitHub markdown without tabulate, strict JSON without NaN."""

from __future__ import annotations

import numpy as np
import pandas as pd


def markdown(df: pd.DataFrame) -> str:
    """A GitHub markdown table (pandas' to_markdown needs tabulate, which the project does not ship)."""

    def cell(v: object) -> str:
        return ("nan" if np.isnan(v) else f"{v:.4g}") if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(map(str, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def json_safe(value: object) -> object:
    """NaN (a metric the data cannot give, e.g. FD∞ below 4·D videos) becomes null: headline.json stays strict JSON."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value

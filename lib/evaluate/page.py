"""The evaluation as one HTML page: the Deck of the evaluation stage and ``report.html`` in every results folder.

Why a page of its own: a reader opens it to see who won. The headline table (method × metric, each estimate with
its 95 % interval) comes first, then the charts, the contact sheet and the samples; the full EvalReport (hundreds
of rows: every cluster, every attribute) is folded away at the end. Self-contained (images inline), so it opens
offline, from a results folder, a bucket or a Flyte Deck, and its figures scale to the page.
"""

from __future__ import annotations

import base64
import io

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from data_schemas.evaluate import EvalReport
from lib.evaluate.compare import headline
from lib.evaluate.report import ALL_CLUSTERS

STYLE = (
    "<style>body{font-family:sans-serif}table{border-collapse:collapse;margin:8px 0}"
    "th,td{padding:3px 10px;border-bottom:1px solid #ddd;text-align:right;white-space:nowrap}"
    "th:first-child,td:first-child{text-align:left}img{max-width:100%;height:auto}</style>"
)
INTRO = (
    "<p>Metric names carry their feature network: <code>*_attrnet</code> metrics are offline proxies, not FVD or CLIP. "
    "<code>fd_inf</code> and <code>kid</code> do not depend on N; the fixed-N <code>fd</code> compares only at equal "
    "n_generated. Intervals: 95 % paired bootstrap over held-out prompts; <code>ratio_*</code> = monolith / method.</p>"
)


def _bar_chart_png(report: pd.DataFrame) -> bytes:
    """One panel per headline metric (all prompts), bars per method with their 95 % bootstrap intervals; panels
    wrap to rows of four, so the figure keeps a page's width however many metrics there are."""
    main = report[
        (report[EvalReport.cluster] == ALL_CLUSTERS) & ~report[EvalReport.metric].str.contains(".", regex=False)
    ]
    metrics = list(dict.fromkeys(main[EvalReport.metric])) or [""]
    cols = min(len(metrics), 4)
    rows = -(-len(metrics) // cols)
    fig = Figure(figsize=(3.2 * cols, 3.0 * rows))
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, metric in zip(axes, metrics, strict=False):
        sub = main[main[EvalReport.metric] == metric]
        err = np.stack([sub[EvalReport.mean] - sub[EvalReport.ci_low], sub[EvalReport.ci_high] - sub[EvalReport.mean]])
        ax.bar(sub[EvalReport.method], sub[EvalReport.mean], yerr=np.nan_to_num(np.clip(err, 0, None)), capsize=3)
        ax.set_title(metric, fontsize=9)
        ax.tick_params(axis="x", labelrotation=45, labelsize=7)
    for ax in axes[len(metrics) :]:
        ax.set_visible(False)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    return buf.getvalue()


def report_html(report_df: pd.DataFrame, samples_html: str, notes: str = "") -> str:
    """The page: headline table, ``notes`` (HTML, e.g. the feature network's accuracy), bar charts, then
    ``samples_html`` (the contact sheet, ``lib.sample.methods.gallery_html``), then every row of the report folded."""
    report = EvalReport.validate(report_df)
    png = base64.b64encode(_bar_chart_png(report)).decode()
    parts = [
        STYLE,
        "<h3>Evaluation</h3>",
        INTRO,
        headline(report).reset_index().to_html(index=False, na_rep="–"),
        notes,
        f'<img alt="metrics" src="data:image/png;base64,{png}"/>',
        samples_html,
        f"<details><summary>Every row of the report ({len(report)})</summary>",
        report.to_html(index=False, float_format=lambda v: f"{v:.4g}", na_rep="–"),
        "</details>",
    ]
    return "\n".join(parts)

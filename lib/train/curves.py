"""Loss curves of every model of a run on one axis of training samples: the Deck of the training stage.

Why samples, not steps: the experts and the monolith train at matched compute, but the monolith takes K times the
steps (or K times the batch). On an axis of training samples seen (steps x batch) each expert's curve ends where
1/K of the monolith's does, which is what "matched compute" looks like.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from lib.models.factory import TRAINING_INFO
from lib.train.trainer import LOG_FILE

SMOOTH = 25  # steps in the rolling mean drawn over the raw loss


def read_curve(model_dir: str | Path) -> tuple[str, pd.DataFrame]:
    """(model name, its training log with a ``samples`` column) from a trained model folder."""
    model_dir = Path(model_dir)
    info = json.loads((model_dir / TRAINING_INFO).read_text())
    log = pd.read_parquet(model_dir / LOG_FILE)
    return info["name"], log.assign(samples=log["step"] * int(info["expert"]["batch_size"]))


def curves_png(curves: dict[str, pd.DataFrame]) -> bytes:
    """Loss (rolling mean, log scale) against training samples, one line per model."""
    fig = Figure(figsize=(7.0, 3.6))
    ax = fig.subplots()
    for name, log in curves.items():
        smooth = log["loss"].rolling(SMOOTH, min_periods=1).mean()
        ax.plot(log["samples"], smooth, label=name, linewidth=2.2 if name == "monolith" else 1.2)
    ax.set_xlabel("training samples seen (steps x batch)")
    ax.set_ylabel(f"loss ({SMOOTH}-step mean)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    return buf.getvalue()


def curves_html(model_dirs: list[str | Path]) -> str:
    """Self-contained HTML (image inline): the plot and a table of each model's steps, samples and final loss."""
    curves = dict(read_curve(d) for d in model_dirs)
    rows = [{"model": name, "steps": int(log["step"].max()), "samples": int(log["samples"].max()),
             "final loss (last 20 steps)": float(log["loss"].tail(20).mean()),
             "seconds": float(log["seconds"].sum())} for name, log in curves.items()]  # fmt: skip
    png = base64.b64encode(curves_png(curves)).decode()
    return "\n".join([
        "<h3>Training</h3>",
        "<p>Every expert and the monolith on one axis of training samples: at matched compute each expert's curve "
        f"ends at 1/K of the monolith's. {html.escape(f'{len(curves)} models.')}</p>",
        f'<img alt="loss curves" src="data:image/png;base64,{png}"/>',
        pd.DataFrame(rows).to_html(index=False, float_format=lambda v: f"{v:.4g}"),
    ])  # fmt: skip


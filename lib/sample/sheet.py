"""Contact sheet: the held-out prompt clips above every method's videos, for the same prompts, as one PNG.

Why: the numbers say how far each method is from the real clips, not what it draws. Judging whether a model draws
what it is asked needs the caption, the real clip and every method's video on the same prompt side by side, and a
PNG opens anywhere (a results folder, a Deck, an MLflow run) where GIFs per method need a viewer per file. The
pipeline's evaluation and the benchmarks draw it with this one function, so every sheet has the same layout.
"""

from __future__ import annotations

import base64
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from lib.io import atomic_write

REAL_ROW = "real (held-out prompt clips)"  # the first row's name wherever the real clips are drawn
GRID_PROMPTS = 6  # prompts shown (columns), at most
PER_CLUSTER = 2  # prompts taken from each cluster (its first ones), so a few prompts span several clusters
GRID_FRAMES = 4  # frames per video, evenly spaced from the first to the last
GRID_SCALE = 3  # each pixel drawn as GRID_SCALE × GRID_SCALE (nearest), so 16–32 px frames stay readable
GAP = 4  # white pixels between rows and between prompts (before scaling)
CAPTION_WIDTH = 34  # characters per caption line
DPI = 100
MARGIN_IN = (2.4, 1.2)  # inches around the grid (width, height): method names on the left, captions on top


def pick_prompts(prompts: pd.DataFrame) -> list[int]:
    """Positions of the prompts shown, in table order, at most ``GRID_PROMPTS``: the first ``PER_CLUSTER`` of each
    cluster, then the next prompts in table order while columns are free (one cluster, e.g. a single expert's
    prompts, still fills the sheet)."""
    table = prompts.reset_index(drop=True)
    spread = [int(p) for p in table.groupby("cluster_id", sort=True).head(PER_CLUSTER).index[:GRID_PROMPTS]]
    taken = set(spread)
    rest = [p for p in range(len(table)) if p not in taken]
    return sorted(spread + rest[: GRID_PROMPTS - len(spread)])


def _check(rows: list[tuple[str, np.ndarray]], prompts: pd.DataFrame) -> None:
    if len(prompts) == 0:
        raise ValueError("contact_sheet: no prompts given")
    missing = {"caption", "cluster_id"} - set(prompts.columns)
    if missing:
        raise ValueError(
            f"contact_sheet: prompts table lacks column(s) {sorted(missing)} (has {list(prompts.columns)})"
        )
    if not rows:
        raise ValueError("contact_sheet: no rows given (the first row is the real prompt clips)")
    size = rows[0][1].shape[2:4]
    for name, videos in rows:
        if videos.ndim != 5 or videos.shape[-1] != 3 or videos.dtype != np.uint8:
            raise ValueError(f"contact_sheet: row {name!r}: expected uint8 videos [P, T, H, W, 3], "
                             f"got {videos.dtype} {list(videos.shape)}")  # fmt: skip
        if len(videos) != len(prompts):
            raise ValueError(f"contact_sheet: row {name!r} has {len(videos)} videos for {len(prompts)} prompts "
                             f"(rows: {[(n, len(v)) for n, v in rows]})")  # fmt: skip
        if videos.shape[2:4] != size:
            raise ValueError(f"contact_sheet: row {name!r} has {list(videos.shape[2:4])} frames, the real row "
                             f"{rows[0][0]!r} {list(size)}")  # fmt: skip


def sheet_image(rows: list[tuple[str, np.ndarray]], picks: list[int]) -> np.ndarray:
    """The grid before scaling and labels: uint8 [R·(H+GAP), len(picks)·(GRID_FRAMES·(W+1)+GAP), 3], white between.

    Row r, prompt c, frame i sits at y = r·(H+GAP), x = c·(GRID_FRAMES·(W+1)+GAP) + i·(W+1); each row's frames are
    spread over its own length T."""
    h, w = rows[0][1].shape[2:4]
    fw = w + 1
    cell_w = GRID_FRAMES * fw + GAP
    image = np.full((len(rows) * (h + GAP), len(picks) * cell_w, 3), 255, dtype=np.uint8)
    for r, (_, videos) in enumerate(rows):
        frames = np.linspace(0, videos.shape[1] - 1, GRID_FRAMES).round().astype(int)
        for c, p in enumerate(picks):
            for i, f in enumerate(frames):
                x0 = c * cell_w + i * fw
                image[r * (h + GAP) : r * (h + GAP) + h, x0 : x0 + w] = videos[p, f]
    return image


def contact_sheet(rows: list[tuple[str, np.ndarray]], prompts: pd.DataFrame, path: str | Path) -> Path:
    """Draw the contact sheet to ``path`` (PNG, written atomically) and return it.

    Args:
        rows: (name, videos) per row, top to bottom; the first is the real prompt clips (name ``REAL_ROW``), then one
            per method. Videos are uint8 [P, T, H, W, 3], one per prompt in the order of ``prompts``; every row has
            the same P, H and W.
        prompts: the prompt table (P rows, columns ``caption`` and ``cluster_id``).
        path: where the PNG goes; its size is the grid's times ``GRID_SCALE`` plus ``MARGIN_IN`` at ``DPI``.

    Returns:
        ``path``.

    Raises:
        ValueError: no prompts or rows, a row whose video count differs from the prompt count, a row that is not
            uint8 [P, T, H, W, 3], or frames of another size than the real row's.
    """
    _check(rows, prompts)
    table = prompts.reset_index(drop=True)
    picks = pick_prompts(table)
    h, w = rows[0][1].shape[2:4]
    cell_w = GRID_FRAMES * (w + 1) + GAP
    image = sheet_image(rows, picks).repeat(GRID_SCALE, 0).repeat(GRID_SCALE, 1)
    fig = Figure(figsize=(image.shape[1] / DPI + MARGIN_IN[0], image.shape[0] / DPI + MARGIN_IN[1]))
    ax = fig.subplots()
    ax.imshow(image, interpolation="nearest")
    ax.set_yticks([(r * (h + GAP) + h / 2) * GRID_SCALE for r in range(len(rows))], [n for n, _ in rows], fontsize=7)
    ax.set_xticks(
        [(c * cell_w + GRID_FRAMES * (w + 1) / 2) * GRID_SCALE for c in range(len(picks))],
        ["\n".join(textwrap.wrap(str(table.at[p, "caption"]), CAPTION_WIDTH)) for p in picks],
        fontsize=6,
    )
    ax.xaxis.tick_top()
    fig.tight_layout()
    return atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=DPI, format="png"))


def sheet_html(path: str | Path) -> str:
    """Self-contained HTML of a drawn sheet (PNG inline), for a Deck or report that opens offline."""
    png = base64.b64encode(Path(path).read_bytes()).decode()
    return (
        "<h3>Contact sheet</h3><p>The real prompt clips above every method's videos, the same prompts in every "
        f'row.</p><img alt="contact sheet" src="data:image/png;base64,{png}"/>'
    )

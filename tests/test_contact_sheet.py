"""The contact sheet (lib/sample/sheet.py): the real prompt clips on top, every method below, the same prompts."""

import struct

import numpy as np
import pandas as pd
import pytest

from lib.sample.sheet import (
    DPI,
    GAP,
    GRID_FRAMES,
    GRID_PROMPTS,
    GRID_SCALE,
    MARGIN_IN,
    REAL_ROW,
    contact_sheet,
    pick_prompts,
    sheet_html,
    sheet_image,
)

P, T, H, W = 8, 5, 8, 10
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _prompts() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "clip_id": [f"c{i}" for i in range(P)],
            "caption": [f"a red square number {i} sliding left over a long grey gradient" for i in range(P)],
            "cluster_id": [0, 0, 0, 1, 2, 2, 3, 3],
        },
        index=np.arange(100, 100 + P),  # not 0..P-1: videos are in prompt order, whatever the table's index
    )


def _solid(color: tuple[int, int, int], n: int = P, t: int = T) -> np.ndarray:
    return np.broadcast_to(np.array(color, dtype=np.uint8), (n, t, H, W, 3)).copy()


def _png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    return struct.unpack(">II", data[16:24])  # IHDR: width, height


def test_sheet_is_a_png_sized_by_rows_and_prompts_with_the_real_clips_on_top(tmp_path):
    rng = np.random.default_rng(0)
    real = rng.integers(0, 256, (P, T, H, W, 3), dtype=np.uint8)
    rows = [(REAL_ROW, real), ("ddm:topk", _solid((0, 0, 255))), ("monolith", _solid((0, 255, 0)))]
    prompts = _prompts()
    picks = pick_prompts(prompts)
    assert picks == [0, 1, 3, 4, 5, 6]  # two per cluster (not cluster 0's third), at most GRID_PROMPTS
    assert len(picks) == GRID_PROMPTS
    one_cluster = prompts.assign(cluster_id=0)
    assert pick_prompts(one_cluster) == list(range(GRID_PROMPTS))  # free columns fill in table order
    assert pick_prompts(prompts.iloc[[0, 1, 2, 3]]) == [0, 1, 2, 3]  # cluster 0's third fills a free column

    image = sheet_image(rows, picks)
    cell_w = GRID_FRAMES * (W + 1) + GAP
    assert image.shape == (len(rows) * (H + GAP), len(picks) * cell_w, 3)
    frames = np.linspace(0, T - 1, GRID_FRAMES).round().astype(int)
    for c, p in enumerate(picks):  # the real row's pixels, prompt by prompt and frame by frame, in the top band
        for i, f in enumerate(frames):
            x0 = c * cell_w + i * (W + 1)
            np.testing.assert_array_equal(image[:H, x0 : x0 + W], real[p, f])
    assert (image[H + GAP : 2 * H + GAP, :W] == (0, 0, 255)).all()  # then each method in row order
    assert (image[2 * (H + GAP) : 2 * (H + GAP) + H, :W] == (0, 255, 0)).all()
    assert (image[H : H + GAP] == 255).all()  # white between rows

    path = contact_sheet(rows, prompts, tmp_path / "sub" / "samples.png")
    assert path == tmp_path / "sub" / "samples.png" and not list(path.parent.glob(".*.tmp"))
    width, height = _png_size(path)
    assert (width, height) == (
        round(image.shape[1] * GRID_SCALE + MARGIN_IN[0] * DPI),
        round(image.shape[0] * GRID_SCALE + MARGIN_IN[1] * DPI),
    )

    four = [(name, videos[:2]) for name, videos in rows + [("expert:0", _solid((255, 0, 0)))]]
    more = contact_sheet(four, prompts.iloc[:2], tmp_path / "more.png")
    w2, h2 = _png_size(more)
    assert w2 == round(2 * cell_w * GRID_SCALE + MARGIN_IN[0] * DPI)  # 2 prompts: 2 columns
    assert h2 == round(4 * (H + GAP) * GRID_SCALE + MARGIN_IN[1] * DPI)  # 4 rows
    assert sheet_html(more).startswith("<h3>Contact sheet</h3>") and "data:image/png;base64,iVBOR" in sheet_html(more)


def test_drawn_sheet_is_not_blank_and_the_real_row_is_above_the_methods(tmp_path):
    from matplotlib.image import imread

    rows = [(REAL_ROW, _solid((255, 0, 0))), ("monolith", _solid((0, 0, 255), t=3))]  # rows may differ in length
    pixels = (imread(contact_sheet(rows, _prompts(), tmp_path / "s.png"))[..., :3] * 255).round().astype(int)
    red = np.argwhere((pixels == (255, 0, 0)).all(-1))
    blue = np.argwhere((pixels == (0, 0, 255)).all(-1))
    cells = GRID_PROMPTS * GRID_FRAMES * (H * GRID_SCALE) * (W * GRID_SCALE)
    assert len(red) >= 0.9 * cells and len(blue) >= 0.9 * cells
    assert red[:, 0].max() < blue[:, 0].min(), "the real prompt clips are the top row"


def test_bad_inputs_are_clear_errors(tmp_path):
    real, prompts = _solid((1, 2, 3)), _prompts()
    with pytest.raises(ValueError, match=r"row 'monolith' has 7 videos for 8 prompts"):
        contact_sheet([(REAL_ROW, real), ("monolith", real[:7])], prompts, tmp_path / "x.png")
    with pytest.raises(ValueError, match="no prompts"):
        contact_sheet([(REAL_ROW, real[:0])], prompts.iloc[:0], tmp_path / "x.png")
    with pytest.raises(ValueError, match="no rows"):
        contact_sheet([], prompts, tmp_path / "x.png")
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['cluster_id'\]"):
        contact_sheet([(REAL_ROW, real)], prompts.drop(columns="cluster_id"), tmp_path / "x.png")
    with pytest.raises(ValueError, match=r"row 'monolith': expected uint8 videos \[P, T, H, W, 3\]"):
        contact_sheet([(REAL_ROW, real), ("monolith", real.astype(np.float32))], prompts, tmp_path / "x.png")
    with pytest.raises(ValueError, match=r"row 'monolith' has \[4, 4\] frames"):
        contact_sheet([(REAL_ROW, real), ("monolith", real[:, :, :4, :4])], prompts, tmp_path / "x.png")
    assert not list(tmp_path.iterdir()), "nothing written on an error"

"""Decks worth opening: self-contained HTML (images inline) for training, sampling and evaluation."""

import base64
import json
import re

import numpy as np
import pandas as pd

from lib.models.factory import TRAINING_INFO
from lib.sample.methods import gallery_html
from lib.sample.pipeline import save_videos
from lib.train.curves import curves_html, read_curve
from lib.train.trainer import LOG_FILE


def _model(folder, name, steps, batch):
    folder.mkdir(parents=True)
    (folder / TRAINING_INFO).write_text(json.dumps({"name": name, "expert": {"batch_size": batch}}))
    step = np.arange(1, steps + 1)
    pd.DataFrame({"step": step, "loss": 1.0 / step, "lr": 1e-3, "grad_norm": 0.5, "seconds": 0.1}).to_parquet(
        folder / LOG_FILE
    )
    return folder


def test_training_deck_puts_every_model_on_one_axis_of_training_samples(tmp_path):
    experts = [_model(tmp_path / f"e{k}", f"expert-0{k}", steps=40, batch=8) for k in range(3)]
    mono = _model(tmp_path / "m", "monolith", steps=40, batch=24)  # monolith_scaling: batch
    name, curve = read_curve(mono)
    assert name == "monolith" and curve["samples"].max() == 40 * 24
    page = curves_html([*experts, mono])
    (png,) = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert base64.b64decode(png)[:8] == b"\x89PNG\r\n\x1a\n"  # inline: renders offline
    rows = dict(re.findall(r"<tr>\s*<td>([\w-]+)</td>\s*<td>\d+</td>\s*<td>(\d+)</td>", page))
    assert set(rows) == {"expert-00", "expert-01", "expert-02", "monolith"}
    assert int(rows["monolith"]) == 3 * int(rows["expert-00"])  # matched compute, visibly


def test_sampling_deck_shows_every_method_on_the_same_prompts(tmp_path):
    videos = np.random.default_rng(0).integers(0, 255, (3, 4, 8, 8, 3), dtype=np.uint8)
    for method in ("ddm:topk", "monolith"):
        save_videos(videos, tmp_path / "gifs", method.replace(":", "-"), formats=("gif",))
    page = gallery_html(tmp_path, ["ddm:topk", "monolith"], ["a red ball", "a blue square", "a green <diamond>"])
    assert "a green &lt;diamond&gt;" in page  # captions head the columns, escaped
    gifs = re.findall(r'src="data:image/gif;base64,([^"]+)"', page)
    assert len(gifs) == 6 and all(base64.b64decode(g)[:6] == b"GIF89a" for g in gifs)
    assert page.index("ddm:topk") < page.index("monolith")

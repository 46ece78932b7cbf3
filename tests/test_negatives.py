import dataclasses

import numpy as np
import pandas as pd
import pytest

from lib.data.procedural import BACKGROUNDS, clip_spec, iter_builtin_clips, render
from lib.evaluate.negatives import (
    NEGATIVE_COLUMNS,
    NEGATIVE_KINDS,
    NOT_REAL,
    SYNTHETIC_KINDS,
    WASH_MAX,
    fit_background,
    make_negatives,
)


@pytest.fixture(scope="module")
def real():
    clips = list(iter_builtin_clips(0, 24, 8, 32, 32, 2, themed=True))
    return np.stack([c.frames for c in clips]), pd.DataFrame([c.attributes for c in clips])


def test_negatives_are_deterministic_typed_and_labelled(real):
    videos, attrs = real
    a, labels = make_negatives(3, 21, (8, 32, 32), videos, attrs)
    b, labels_b = make_negatives(3, 21, (8, 32, 32), videos, attrs)
    c, _ = make_negatives(4, 21, (8, 32, 32), videos, attrs)
    assert a.dtype == np.uint8 and a.shape == (21, 8, 32, 32, 3)
    assert np.array_equal(a, b) and labels.equals(labels_b) and not np.array_equal(a, c)
    # negative i does not depend on how many are drawn
    assert np.array_equal(make_negatives(3, 7, (8, 32, 32), videos, attrs)[0], a[:7])
    assert list(labels.columns) == list(NEGATIVE_COLUMNS)
    assert labels["kind"].tolist() == [NEGATIVE_KINDS[i % len(NEGATIVE_KINDS)] for i in range(21)]
    real_backdrop = labels["kind"].isin(["background", "washed_out"])
    assert (labels.loc[real_backdrop, "scene"] != NOT_REAL).all()
    for scene, background in labels[labels["scene"] != NOT_REAL][["scene", "background"]].itertuples(index=False):
        assert background in BACKGROUNDS[scene]
    no_backdrop = labels["kind"].isin(["noise", "flat", "blocks", "pixelated"])
    assert (labels.loc[no_backdrop, ["scene", "background"]] == NOT_REAL).all().all()


def test_synthetic_kinds_need_no_real_clips_and_real_kinds_do(real):
    videos, attrs = real
    _, labels = make_negatives(0, 10, (4, 16, 16))
    assert set(labels["kind"]) == set(SYNTHETIC_KINDS)
    with pytest.raises(ValueError, match="need real clips"):
        make_negatives(0, 2, (4, 16, 16), kinds=("pixelated",))
    with pytest.raises(ValueError, match="unknown kinds"):
        make_negatives(0, 2, (8, 32, 32), videos, attrs, kinds=("ghost",))
    with pytest.raises(ValueError, match="asked for"):
        make_negatives(0, 2, (4, 16, 16), videos, attrs)


def test_fit_background_recovers_the_object_free_backdrop():
    for index in range(12):
        spec = clip_spec(0, index, 2, themed=True)
        clip = render(spec, 8, 32, 32)
        bare = render(dataclasses.replace(spec, objects=()), 8, 32, 32)
        assert np.array_equal(fit_background(clip, spec.scene, spec.background), bare), spec.scene


def test_real_clips_lose_their_objects(real):
    videos, attrs = real
    pix, _ = make_negatives(1, 16, (8, 32, 32), videos, attrs, kinds=("pixelated",))
    # 8x8 cells blended linearly: neighbours differ by at most 1/8 of a cell-to-cell step, so no edge is left
    for axis in (2, 3):
        assert np.abs(np.diff(pix.astype(int), axis=axis)).max() <= 255 / 8 + 1
        assert np.abs(np.diff(videos.astype(int), axis=axis)).max() > 100
    washed, _ = make_negatives(1, 16, (8, 32, 32), videos, attrs, kinds=("washed_out",))
    # The backdrop is still; what moves is the objects, blended into it to at most WASH_MAX of their contrast.
    moving = np.abs(washed.astype(int) - washed[:, :1].astype(int)).max()
    assert moving <= np.ceil(WASH_MAX * 255) + 1
    assert np.abs(videos.astype(int) - videos[:, :1].astype(int)).max() > 100

import tracemalloc

import numpy as np
import pytest

from lib.data.procedural import (
    _COLOR_WORDS,
    _MOTION_WORDS,
    _SHAPE_WORDS,
    COLORS,
    MOTIONS,
    SCENES,
    SHAPES,
    THEMES,
    clip_spec,
    iter_builtin_clips,
    render,
)


def _clips(seed, n, **kw):
    return list(iter_builtin_clips(seed, n, kw.get("frames", 8), 32, 32, kw.get("max_objects", 2)))


def test_same_seed_same_clips_and_different_seed_differs():
    a, b, c = _clips(0, 12), _clips(0, 12), _clips(1, 12)
    assert all(np.array_equal(x.frames, y.frames) and x.caption == y.caption for x, y in zip(a, b, strict=True))
    assert any(not np.array_equal(x.frames, z.frames) for x, z in zip(a, c, strict=True))


def test_clip_i_does_not_depend_on_dataset_size():
    small = _clips(5, 4)
    big = list(iter_builtin_clips(5, 8, 8, 32, 32, start=3))
    assert np.array_equal(small[3].frames, big[0].frames)
    assert small[3].clip_id == big[0].clip_id


def test_frames_layout():
    clip = _clips(0, 1, frames=12)[0]
    assert clip.frames.dtype == np.uint8 and clip.frames.shape == (12, 32, 32, 3)


def test_captions_describe_the_attributes():
    for clip in _clips(2, 60):
        a = clip.attributes
        assert any(w in clip.caption for w in _SHAPE_WORDS[a["shape"]])
        assert any(w in clip.caption for w in _COLOR_WORDS[a["color"]])
        assert any(w in clip.caption for w in _MOTION_WORDS[a["motion"]])
        assert a["background"] in clip.caption
        assert (a["shape2"] == "") == (a["num_objects"] == 1)


def test_attribute_coverage_over_a_few_hundred_clips():
    specs = [clip_spec(0, i) for i in range(400)]
    assert {s.scene for s in specs} == set(SCENES)
    assert {o.motion for s in specs for o in s.objects} == set(MOTIONS)
    assert {len(s.objects) for s in specs} == {1, 2}
    assert all(len(clip_spec(0, i, max_objects=1).objects) == 1 for i in range(50))


def test_themed_scenes_draw_objects_from_their_theme_and_together_cover_everything():
    specs = [clip_spec(0, i, themed=True) for i in range(400)]
    for s in specs:
        shapes, motions = THEMES[s.scene]
        assert all(o.shape in shapes and o.motion in motions for o in s.objects), s
        assert not any(o.shape == "circle" and o.motion == "spin" for o in s.objects)
    assert {o.shape for s in specs for o in s.objects} == set(SHAPES)
    assert {o.motion for s in specs for o in s.objects} == set(MOTIONS)
    # what a clip shows depends on its scene: no shape-and-motion pair is shared by all four scenes
    pairs = {scene: {(o.shape, o.motion) for s in specs if s.scene == scene for o in s.objects} for scene in SCENES}
    assert not set.intersection(*pairs.values())


def test_themed_scenes_keep_the_scene_and_background_of_each_clip():
    """Only the objects change with themes: clip i is still the same scene on the same backdrop."""
    for i in range(50):
        shared, themed = clip_spec(7, i), clip_spec(7, i, themed=True)
        assert (shared.scene, shared.background) == (themed.scene, themed.background)
        assert clip_spec(7, i, themed=False) == shared


def _object_track(frames: np.ndarray, color: str) -> list[tuple[float, float, int]]:
    """Centroid (x, y) and pixel count of the pixels close to an object's colour, per frame."""
    target = np.asarray(COLORS[color], dtype=np.int32)
    out = []
    for f in frames.astype(np.int32):
        mask = np.abs(f - target).sum(-1) < 30
        ys, xs = np.nonzero(mask)
        out.append((xs.mean(), ys.mean(), int(mask.sum())))
    return out


@pytest.mark.parametrize("motion", ["left_fast", "right_fast", "up", "down", "grow", "shrink"])
def test_motion_is_visible_in_the_pixels(motion):
    spec = next(
        s
        for s in (clip_spec(3, i, max_objects=1) for i in range(3000))
        if s.objects[0].motion == motion and s.objects[0].size == "large" and s.scene == "plain"
    )
    track = _object_track(render(spec, 8, 32, 32), spec.objects[0].color)
    (x0, y0, n0), (x1, y1, n1) = track[0], track[-1]
    moved = {
        "left_fast": x1 < x0 - 5,
        "right_fast": x1 > x0 + 5,
        "up": y1 < y0 - 5,
        "down": y1 > y0 + 5,
        "grow": n1 > 2 * n0,
        "shrink": n0 > 2 * n1,
    }
    assert moved[motion], track


def test_streaming_memory_does_not_grow_with_count():
    def peak(n):
        tracemalloc.start()
        for _ in iter_builtin_clips(0, n, 8, 32, 32):
            pass
        _, top = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        return top

    assert peak(400) < 1.5 * peak(40)

import hashlib
import json
import tracemalloc

import numpy as np
import pytest

from data_schemas.ingest import DEFAULT_FAMILIES, FAMILY_NAMES
from lib.config import DataConfig
from lib.data.procedural import (
    _COLOR_WORDS,
    _MOTION_WORDS,
    _SHAPE_WORDS,
    COLORS,
    FAMILIES,
    MOTIONS,
    SCENES,
    SHAPES,
    THEMES,
    World,
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


# Computed on the code before data.num_families and data.family_overlap existed (commit bfa694c): at their defaults
# the dataset must stay byte for byte what it was, or every cached dataset and model trained on it would be stale.
BEFORE_THE_KNOBS = {
    "default": ({}, "cea72930509ab65d"),
    "themed": ({"themed": True}, "44bcdc2badb554d5"),
    "subset": ({"scenes": ("gradient", "checker")}, "f781deae751e1164"),
    "one_object": ({"max_objects": 1}, "4da4169d9dd58f32"),
}


def _fingerprint(**kw) -> str:
    h = hashlib.sha256()
    for c in iter_builtin_clips(0, 40, 8, 32, 32, **kw):
        h.update(c.clip_id.encode())
        h.update(c.caption.encode())
        h.update(json.dumps(c.attributes, sort_keys=True).encode())
        h.update(c.frames.tobytes())
    return h.hexdigest()[:16]


@pytest.mark.parametrize("name", BEFORE_THE_KNOBS)
def test_the_default_world_draws_byte_identical_clips_captions_and_attributes(name):
    kw, expected = BEFORE_THE_KNOBS[name]
    data = DataConfig()
    assert _fingerprint(world=World(data.num_families, data.family_overlap), **kw) == expected


def test_families_own_disjoint_vocabularies_that_make_up_every_world():
    owned = {kind: [x for f in FAMILIES.values() for x in getattr(f, kind)] for kind in ("shapes", "motions")}
    owned["backgrounds"] = [b for f in FAMILIES.values() for b in f.backgrounds]
    assert all(len(items) == len(set(items)) for items in owned.values()), owned  # nobody owns what another owns
    for n in range(DEFAULT_FAMILIES, len(FAMILIES) + 1):
        world, fams = World(n), [FAMILIES[f] for f in World(n).families]
        assert set(world.shapes) == {s for f in fams for s in f.shapes}
        assert set(world.motions) == {m for f in fams for m in f.motions}
        assert set(world.backgrounds) == {b for f in fams for b in f.backgrounds}
    for name, f in FAMILIES.items():
        assert f.shapes and f.backgrounds and set(f.motions) - {"spin"}, name  # a circle can always move
        assert set(f.backgrounds) <= set(f.palette), name
        assert set(f.theme[0]) <= set(World(len(FAMILIES)).shapes) and set(f.theme[1]) - {"spin"}, name
    assert World().families == SCENES and World().shapes == SHAPES and World().motions == MOTIONS


def _draws(specs) -> dict[str, dict[str, set[str]]]:
    """Per family: the shapes, motions and backgrounds its clips show."""
    out: dict[str, dict[str, set[str]]] = {}
    for s in specs:
        seen = out.setdefault(s.scene, {"shapes": set(), "motions": set(), "backgrounds": set()})
        seen["shapes"] |= {o.shape for o in s.objects}
        seen["motions"] |= {o.motion for o in s.objects}
        seen["backgrounds"].add(s.background)
    return out


@pytest.mark.parametrize("themed", [False, True])
def test_overlap_zero_gives_each_of_eight_families_only_what_it_owns(themed):
    world = World(8, 0.0)
    draws = _draws(clip_spec(0, i, themed=themed, world=world) for i in range(600))
    assert set(draws) == set(world.families)  # 8 families' clips
    for family, seen in draws.items():
        for kind, items in seen.items():
            assert items <= set(getattr(FAMILIES[family], kind)), (family, kind, items)
    assert {s for seen in draws.values() for s in seen["shapes"]} == set(world.shapes)


def test_overlap_one_shares_the_whole_vocabulary_between_eight_families():
    draws = _draws(clip_spec(0, i, world=World(8, 1.0)) for i in range(800))
    assert len(draws) == 8
    for family, seen in draws.items():
        assert len(seen["shapes"]) == 8 and len(seen["motions"]) >= 12, (family, seen)
        assert seen["backgrounds"] == set(FAMILIES[family].palette), family
    # a shape every family shows: nothing but the backdrop tells two families apart
    assert set.intersection(*(seen["shapes"] for seen in draws.values())) == set(World(8).shapes)


def test_lower_overlap_draws_more_of_each_family_own_vocabulary():
    """Monotone per draw, not only on average: a draw shared at one overlap is shared at every higher one."""
    overlaps = [0.0, 0.25, 0.5, 0.75, 1.0]
    foreign = []
    for w in overlaps:
        specs = [clip_spec(0, i, world=World(8, w)) for i in range(300)]
        own = [o.shape in FAMILIES[s.scene].shapes for s in specs for o in s.objects]
        foreign.append(1.0 - float(np.mean(own)))
    assert foreign == sorted(foreign) and foreign[0] == 0.0 and foreign[-1] > 0.8, foreign
    for i in range(100):
        shared = [World(8, w).shared_draws(0, i) for w in overlaps]
        for low, high in zip(shared, shared[1:], strict=False):
            assert all(high[k] for k, v in low.items() if v), (i, low, high)


def test_larger_worlds_caption_render_and_name_their_clips():
    world = World(8, 0.5)
    clips = list(iter_builtin_clips(2, 80, 8, 32, 32, world=world))
    for clip in clips:
        a = clip.attributes
        assert any(w in clip.caption for w in _SHAPE_WORDS[a["shape"]])
        assert any(w in clip.caption for w in _MOTION_WORDS[a["motion"]])
        assert a["background"] in clip.caption and clip.frames.shape == (8, 32, 32, 3)
    assert clips[3].clip_id == "builtin-2-f8-o0.5-0000003"
    assert clip_spec(0, 3, world=World(4, 0.0)).clip_id == "builtin-0-o0-0000003"
    assert clip_spec(0, 3, scenes=("grid",), world=World(8)).clip_id == "builtin-0-f8-grid-0000003"
    assert len({c.attributes["scene"] for c in clips}) == 8


@pytest.mark.parametrize("motion", ["pulse", "orbit", "sway", "zigzag"])
def test_the_added_motions_move_the_object(motion):
    world = World(8, 0.0)
    spec = next(
        s
        for s in (clip_spec(3, i, max_objects=1, world=world) for i in range(3000))
        if s.objects[0].motion == motion and s.objects[0].size == "large"
    )
    track = _object_track(render(spec, 8, 32, 32), spec.objects[0].color)
    xs, ys, ns = (np.array(v, dtype=float) for v in zip(*track, strict=True))
    changed = {"pulse": np.ptp(ns) > 0.5 * ns.min(), "orbit": np.ptp(ys) > 4 and np.ptp(xs) > 4,
               "sway": np.ptp(xs) > 4, "zigzag": xs[-1] > xs[0] + 5}  # fmt: skip
    assert changed[motion], track


def test_worlds_refuse_what_they_cannot_draw():
    with pytest.raises(ValueError, match=r"num_families must lie in \[4, 8\], got 9"):
        World(9)
    with pytest.raises(ValueError, match=r"overlap must lie in \[0, 1\], got 1.5"):
        World(8, 1.5)
    with pytest.raises(ValueError, match="scenes must be families of"):
        clip_spec(0, 0, scenes=("spots",))  # not a family of the default world


def test_the_family_names_below_the_config_are_the_families_the_source_draws():
    assert tuple(FAMILIES) == FAMILY_NAMES and SCENES == FAMILY_NAMES[:DEFAULT_FAMILIES]

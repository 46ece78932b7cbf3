"""Negative videos for AttrNet: clips in which a person sees no object, so its object heads learn to answer "none".

Why: trained on real clips only, AttrNet must name a shape and a colour for any input; it called uniform noise
"square" and generator outputs of coloured speckle or fields of 4x4 coloured patches "triangle", so prompt-attribute
accuracy rewarded junk. These negatives cover what junk looks like:

- ``noise``: uniform noise, new each frame or frozen;
- ``flat``: one colour (random, or a colour of the dataset's object or background palette);
- ``specks``: sparse single coloured pixels on noise, a flat colour or a real (object-free) backdrop;
- ``blocks``: fields of ``BLOCK_PX`` x ``BLOCK_PX`` patches of random colours or around a background tone, with a
  few palette-coloured patches: what today's generators paint (their spatial patch size is 4);
- ``background``: a scene's backdrop rendered by ``lib.data.procedural.render`` with no objects;
- ``pixelated``: a real clip average-pooled to a ``PIXELATE_GRID`` x ``PIXELATE_GRID`` grid of cells, each as wide
  as a small object, and smoothly upsampled, so colour smears remain but no shape or edge does;
- ``washed_out``: a real clip whose objects are blended into its own backdrop (``fit_background``) until at most
  ``WASH_MAX`` of their contrast is left.

Each negative comes with its scene and background names when its backdrop is a real one (``background``,
``washed_out``, ``specks`` on a real backdrop): the scene heads can still learn from those. All other negatives
carry "" there, and the trainer ignores their scene and background loss.

Every video is drawn from its own generator seeded by ``(seed, index)``, so negative i is the same whatever the count
(the same habit as the procedural dataset).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from lib.data.procedural import BACKGROUNDS, BG_RGB, COLORS, SUPERSAMPLE, ClipSpec, backdrop, render
from lib.seeding import numpy_rng

SYNTHETIC_KINDS = ("noise", "flat", "specks", "blocks", "background")  # drawn without real clips
REAL_KINDS = ("pixelated", "washed_out")  # made from a real clip (and its scene/background names)
NEGATIVE_KINDS = SYNTHETIC_KINDS + REAL_KINDS
NEGATIVE_COLUMNS = ("kind", "scene", "background")
NOT_REAL = ""  # scene/background of a negative whose backdrop is not one the dataset draws

BLOCK_PX = 4  # side of the patches generators paint (expert.patch_size h, w)
PIXELATE_GRID = 4  # cells per side: at 32 px a cell is 8 px, the diameter of a small object, half a large one's
WASH_MAX = 0.05  # most object contrast left in a washed-out clip: <= 13 grey levels of 255, invisible at a glance
PHASE_STEPS = 16  # texture phases fit_background tries before a finer search around the best one
_PALETTE = np.asarray(list(COLORS.values()) + list(BG_RGB.values()), dtype=np.float32)
_OBJECT_PALETTE = np.asarray(list(COLORS.values()), dtype=np.float32)


def _scene_spec(scene: str, background: str, phase: float) -> ClipSpec:
    """A ClipSpec with no objects: ``render`` then draws the bare backdrop."""
    return ClipSpec(clip_id="negative", scene=scene, background=background, objects=(), caption="", phase=phase)


def _random_scene(rng: np.random.Generator) -> tuple[str, str]:
    scene = str(rng.choice(list(BACKGROUNDS)))
    return scene, str(rng.choice(list(BACKGROUNDS[scene])))


def _backdrops(scene: str, background: str, phases: np.ndarray, height: int, width: int) -> np.ndarray:
    """The bare backdrop at each phase, uint8 [P, H, W, 3], exactly as ``render`` draws a clip without objects.

    One broadcast call of the procedural background for all phases: P calls of ``render`` cost ten times more,
    and the fit runs for every washed-out negative of every training step.
    """
    hs, ws = height * SUPERSAMPLE, width * SUPERSAMPLE
    yy, xx = np.meshgrid((np.arange(hs) + 0.5) / hs, (np.arange(ws) + 0.5) / ws, indexing="ij")
    img = np.broadcast_to(backdrop(scene, background, phases[:, None, None], yy, xx), (len(phases), hs, ws, 3))
    small = img.reshape(len(phases), height, SUPERSAMPLE, width, SUPERSAMPLE, 3).mean(axis=(2, 4))
    return np.round(small * 255.0).astype(np.uint8)


def fit_background(clip: np.ndarray, scene: str, background: str) -> np.ndarray:
    """The backdrop of a real clip without its objects: uint8 [T, H, W, 3].

    The attribute table names the scene and background but not the stripe/checker offset (``ClipSpec.phase``), so
    the phase is searched: ``PHASE_STEPS`` phases, then a finer grid around the best, scored against the clip's
    per-pixel median over frames (moving objects drop out of the median; a still one covers too little of the frame
    to move the fit).

    Args:
        clip: uint8 [T, H, W, 3] of the built-in dataset.
        scene: its scene family.
        background: its background colour name.
    """
    t, h, w, _ = clip.shape
    target = np.median(clip, axis=0).astype(np.float32)  # [H, W, 3]
    phases = np.arange(PHASE_STEPS) / PHASE_STEPS
    two = _backdrops(scene, background, phases[[0, PHASE_STEPS // 3]], h, w)
    rounds = 2 if not np.array_equal(two[0], two[1]) else 0  # plain and gradient backdrops have no phase
    best = 0.0
    for _ in range(rounds):  # the grid, then a finer one around its best phase
        candidates = _backdrops(scene, background, phases, h, w)  # [P, H, W, 3]
        best = float(phases[int(np.argmin(np.abs(candidates - target).mean(axis=(1, 2, 3))))])
        phases = (best + np.linspace(-1.0, 1.0, 9) / PHASE_STEPS) % 1.0
    return np.broadcast_to(_backdrops(scene, background, np.array([best]), h, w), (t, h, w, 3)).copy()


def _noise(rng: np.random.Generator, t: int, h: int, w: int) -> np.ndarray:
    frames = 1 if rng.random() < 0.5 else t  # frozen or flickering
    return np.broadcast_to(rng.uniform(0, 256, (frames, h, w, 3)), (t, h, w, 3)).astype(np.float32)


def _flat(rng: np.random.Generator, t: int, h: int, w: int) -> np.ndarray:
    colour = _PALETTE[rng.integers(len(_PALETTE))] if rng.random() < 0.5 else rng.uniform(0, 256, 3)
    out = np.broadcast_to(colour.astype(np.float32), (t, h, w, 3))
    return out + rng.normal(0, rng.uniform(0, 6), (t, h, w, 3)) if rng.random() < 0.5 else out  # sensor-like grain


def _colours(rng: np.random.Generator, n: int) -> np.ndarray:
    """n colours [n, 3]: the object palette half the time (the hardest case), else uniform."""
    if rng.random() < 0.5:
        return _OBJECT_PALETTE[rng.integers(len(_OBJECT_PALETTE), size=n)]
    return rng.uniform(0, 256, (n, 3)).astype(np.float32)


def _specks(rng: np.random.Generator, t: int, h: int, w: int) -> tuple[np.ndarray, str, str]:
    backdrop = rng.integers(3)
    scene = background = NOT_REAL
    if backdrop == 0:
        out = _noise(rng, t, h, w).copy()
    elif backdrop == 1:
        out = _flat(rng, t, h, w).copy()
    else:
        scene, background = _random_scene(rng)
        out = render(_scene_spec(scene, background, rng.uniform()), t, h, w).astype(np.float32)
    density = rng.uniform(0.005, 0.08)
    frames = 1 if rng.random() < 0.5 else t
    hit = np.broadcast_to(rng.random((frames, h, w)) < density, (t, h, w))
    out[hit] = _colours(rng, int(hit.sum()))
    return out, scene, background


def _blocks(rng: np.random.Generator, t: int, h: int, w: int) -> np.ndarray:
    gh, gw = -(-h // BLOCK_PX), -(-w // BLOCK_PX)
    period = int(rng.choice([1, 2, t]))  # new patches every frame, every 2 frames (the generators' time patch), never
    n = -(-t // period)
    if rng.random() < 0.5:
        cells = rng.uniform(0, 256, (n, gh, gw, 3))
    else:  # around one background tone, as generators paint a backdrop
        tone = np.asarray(list(BG_RGB.values()), dtype=np.float32)[rng.integers(len(BG_RGB))]
        cells = tone + rng.normal(0, rng.uniform(8, 48), (n, gh, gw, 3))
        bright = rng.random((n, gh, gw)) < rng.uniform(0, 0.1)
        cells[bright] = _colours(rng, int(bright.sum()))
    out = cells.repeat(period, axis=0).repeat(BLOCK_PX, axis=1).repeat(BLOCK_PX, axis=2)[:t, :h, :w]
    return out + rng.normal(0, rng.uniform(0, 8), out.shape)  # the generators' patches are not perfectly flat


def _upsample_linear(cells: np.ndarray, axis: int, size: int, cell: int) -> np.ndarray:
    """Linear interpolation between cell centres along ``axis`` to ``size`` pixels (edge cells held)."""
    n = cells.shape[axis]
    pos = np.clip((np.arange(size) + 0.5) / cell - 0.5, 0, n - 1)
    lo = np.floor(pos).astype(int)
    frac = (pos - lo).reshape([size if a == axis else 1 for a in range(cells.ndim)])
    return np.take(cells, lo, axis) * (1 - frac) + np.take(cells, np.minimum(lo + 1, n - 1), axis) * frac


def _pixelate(clip: np.ndarray) -> np.ndarray:
    """Average-pool to a ``PIXELATE_GRID`` grid, then upsample smoothly: nearest-neighbour cells would be crisp
    one-colour squares, and a small square object is exactly that (a net taught to call them empty missed real
    squares)."""
    t, h, w, _ = clip.shape
    cell = max(2, min(h, w) // PIXELATE_GRID)
    gh, gw = -(-h // cell), -(-w // cell)
    padded = np.pad(clip.astype(np.float32), ((0, 0), (0, gh * cell - h), (0, gw * cell - w), (0, 0)), mode="edge")
    cells = padded.reshape(t, gh, cell, gw, cell, 3).mean(axis=(2, 4))  # [T, gh, gw, 3]
    return _upsample_linear(_upsample_linear(cells, 1, h, cell), 2, w, cell)


def _negative(
    kind: str, rng: np.random.Generator, shape: tuple[int, int, int], real_videos: np.ndarray | None,
    real_attrs: pd.DataFrame | None,
) -> tuple[np.ndarray, str, str]:  # fmt: skip
    """One negative video (float, unclipped) with its scene and background names."""
    t, h, w = shape
    if kind == "noise":
        return _noise(rng, t, h, w), NOT_REAL, NOT_REAL
    if kind == "flat":
        return _flat(rng, t, h, w), NOT_REAL, NOT_REAL
    if kind == "specks":
        return _specks(rng, t, h, w)
    if kind == "blocks":
        return _blocks(rng, t, h, w), NOT_REAL, NOT_REAL
    if kind == "background":
        scene, background = _random_scene(rng)
        return render(_scene_spec(scene, background, rng.uniform()), t, h, w).astype(np.float32), scene, background
    i = int(rng.integers(len(real_videos)))
    if kind == "pixelated":  # stripes and checks average out too: the backdrop is no longer a real one
        return _pixelate(real_videos[i]), NOT_REAL, NOT_REAL
    row = real_attrs.iloc[i]
    backdrop = fit_background(real_videos[i], row["scene"], row["background"]).astype(np.float32)
    alpha = rng.uniform(0.0, WASH_MAX)
    return backdrop + alpha * (real_videos[i].astype(np.float32) - backdrop), row["scene"], row["background"]


def make_negatives(
    seed: int,
    n: int,
    shape: tuple[int, int, int],
    real_videos: np.ndarray | None = None,
    real_attrs: pd.DataFrame | None = None,
    kinds: tuple[str, ...] | None = None,
) -> tuple[np.ndarray, pd.DataFrame]:
    """``n`` videos showing no object, kinds taken in turn (``kinds[i % len(kinds)]``), and their labels.

    Args:
        seed: negative i is drawn from ``numpy_rng(seed, "negative", i)``.
        n: how many.
        shape: (T, H, W) of each video.
        real_videos: uint8 [N, T, H, W, 3] real clips for the ``REAL_KINDS`` (training clips when training,
            validation clips when testing).
        real_attrs: their attribute rows (``scene`` and ``background`` columns), aligned with ``real_videos``.
        kinds: which kinds; default every kind when real clips are given, else ``SYNTHETIC_KINDS``.

    Returns:
        uint8 videos [n, T, H, W, 3] and a table with ``NEGATIVE_COLUMNS``: the kind, and the scene and background
        names where the backdrop is a real one (``NOT_REAL`` elsewhere).
    """
    has_real = real_videos is not None and real_attrs is not None and len(real_videos) > 0
    kinds = kinds or (NEGATIVE_KINDS if has_real else SYNTHETIC_KINDS)
    unknown = sorted(set(kinds) - set(NEGATIVE_KINDS))
    if unknown:
        raise ValueError(f"negatives: unknown kinds {unknown}; known: {NEGATIVE_KINDS}")
    if not has_real and set(kinds) & set(REAL_KINDS):
        raise ValueError(f"negatives: kinds {sorted(set(kinds) & set(REAL_KINDS))} need real clips and attributes")
    if has_real:
        if len(real_attrs) != len(real_videos):
            raise ValueError(f"negatives: {len(real_attrs)} attribute rows for {len(real_videos)} real clips")
        if tuple(real_videos.shape[1:4]) != tuple(shape):
            raise ValueError(f"negatives: real clips are {real_videos.shape[1:4]}, asked for {shape}")
        real_attrs = real_attrs.reset_index(drop=True)
    out = np.empty((n, *shape, 3), dtype=np.uint8)
    rows = []
    for i in range(n):
        kind = kinds[i % len(kinds)]
        video, scene, background = _negative(kind, numpy_rng(seed, "negative", i), shape, real_videos, real_attrs)
        out[i] = np.clip(np.round(video), 0, 255).astype(np.uint8)
        rows.append((kind, scene, background))
    return out, pd.DataFrame(rows, columns=list(NEGATIVE_COLUMNS))

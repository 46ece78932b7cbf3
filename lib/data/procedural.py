"""The built-in captioned video dataset: procedural, deterministic and streaming.

Why procedural: the pipeline must run offline on a laptop, and the evaluation needs ground truth about
what each clip shows. Every clip is drawn from its own generator seeded by ``(seed, index)``, so clip i is
the same whatever the dataset size, clips can be produced in any order, and memory does not grow with the
count. The generating attributes travel with the clip as metadata.

Semantic structure (what clustering and the experts can latch on to):
- scene family: plain, gradient, stripes, checker — each with its own background palette;
- 1–2 objects, each with shape, colour, size and one motion: moving left/right/up/down (slow or fast),
  bouncing, spinning, growing or shrinking;
- captions from templates with synonyms, so the same attributes are worded several ways.

Two content regimes (``data.themed_scenes``): shared (every scene shows every shape and motion, so scenes differ
only in their backdrop) and themed (each scene family has its own shapes and motions, ``THEMES``). Real footage is
themed — what moves, and how, depends on the setting — and that is the regime in which experts trained on
semantic clusters have something of their own to learn; in the shared regime nearly everything a model learns on
one cluster transfers to the others, which favours one model trained on all of them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

SCENES = ("plain", "gradient", "stripes", "checker")
BACKGROUNDS = {  # scene family -> background colour names it draws from
    "plain": ("black", "gray", "navy"),
    "gradient": ("sunset", "ocean", "forest"),
    "stripes": ("gray", "navy", "olive"),
    "checker": ("black", "teal", "brown"),
}
BG_RGB = {
    "black": (10, 10, 14),
    "gray": (96, 96, 100),
    "navy": (20, 28, 90),
    "sunset": (150, 60, 40),
    "ocean": (20, 80, 130),
    "forest": (25, 90, 40),
    "olive": (90, 90, 30),
    "teal": (20, 100, 100),
    "brown": (90, 55, 30),
}
SHAPES = ("circle", "square", "triangle", "diamond")
COLORS = {
    "red": (230, 40, 40),
    "green": (60, 220, 70),
    "blue": (60, 110, 255),
    "yellow": (250, 230, 50),
    "white": (245, 245, 245),
    "magenta": (235, 60, 220),
}
SIZES = {"small": 0.13, "large": 0.24}  # object radius as a fraction of the frame's shorter side
MOTIONS = (
    "left_slow",
    "left_fast",
    "right_slow",
    "right_fast",
    "up",
    "down",
    "bounce",
    "spin",
    "grow",
    "shrink",
)

THEMES = {  # scene family -> (shapes, motions) its objects draw from when scenes are themed; together: all of them
    "plain": (("circle", "square"), ("left_slow", "left_fast", "right_slow", "right_fast")),
    "gradient": (("triangle", "diamond"), ("up", "down", "bounce")),
    "stripes": (("square", "diamond"), ("spin", "grow", "shrink")),
    "checker": (("circle", "triangle"), ("bounce", "grow", "shrink", "left_fast", "right_fast")),
}

_SHAPE_WORDS = {
    "circle": ("circle", "ball", "disc"),
    "square": ("square", "box", "block"),
    "triangle": ("triangle", "wedge"),
    "diamond": ("diamond", "rhombus"),
}
_COLOR_WORDS = {
    "red": ("red", "crimson"),
    "green": ("green", "lime"),
    "blue": ("blue", "azure"),
    "yellow": ("yellow", "golden"),
    "white": ("white", "snow-white"),
    "magenta": ("magenta", "pink"),
}
_SIZE_WORDS = {"small": ("small", "little", "tiny"), "large": ("large", "big", "huge")}
_MOTION_WORDS = {
    "left_slow": ("drifting slowly to the left", "moving slowly left"),
    "left_fast": ("racing to the left", "moving quickly left"),
    "right_slow": ("drifting slowly to the right", "moving slowly right"),
    "right_fast": ("racing to the right", "moving quickly right"),
    "up": ("rising", "moving up", "floating upward"),
    "down": ("falling", "moving down", "sinking"),
    "bounce": ("bouncing", "hopping up and down"),
    "spin": ("spinning", "rotating", "turning in place"),
    "grow": ("growing", "getting bigger", "expanding"),
    "shrink": ("shrinking", "getting smaller", "contracting"),
}
_SCENE_WORDS = {
    "plain": ("on a plain {bg} background", "against a solid {bg} backdrop"),
    "gradient": ("in front of a {bg} gradient", "over a {bg}-toned gradient"),
    "stripes": ("on a {bg} striped background", "over {bg} stripes"),
    "checker": ("on a {bg} checkerboard", "over a {bg} checkered floor"),
}
_SUPERSAMPLE = 2  # render at 2x and box-filter down, for anti-aliased edges


@dataclass(frozen=True)
class ObjectSpec:
    shape: str
    color: str
    size: str
    motion: str
    x0: float  # start centre, fraction of width
    y0: float  # start centre, fraction of height
    angle0: float  # radians


@dataclass(frozen=True)
class ClipSpec:
    """Everything that decides a clip's pixels and caption."""

    clip_id: str
    scene: str
    background: str
    objects: tuple[ObjectSpec, ...]
    caption: str
    phase: float  # stripe/checker offset, so textures differ between clips

    def attributes(self) -> dict[str, object]:
        """Flat attribute row (ClipAttributes schema)."""
        first = self.objects[0]
        second = self.objects[1] if len(self.objects) > 1 else None
        return {
            "clip_id": self.clip_id,
            "scene": self.scene,
            "background": self.background,
            "num_objects": len(self.objects),
            "shape": first.shape,
            "color": first.color,
            "size": first.size,
            "motion": first.motion,
            "shape2": second.shape if second else "",
            "color2": second.color if second else "",
            "size2": second.size if second else "",
            "motion2": second.motion if second else "",
        }


@dataclass(frozen=True)
class Clip:
    clip_id: str
    frames: np.ndarray  # uint8 [T, H, W, C]
    caption: str
    attributes: dict[str, object]


def _pick(rng: np.random.Generator, options: tuple | list) -> object:
    return options[int(rng.integers(len(options)))]


def _start_position(rng: np.random.Generator, motion: str) -> tuple[float, float]:
    """Start where the motion keeps the object mostly inside the frame."""
    x, y = rng.uniform(0.3, 0.7, size=2)
    if motion.startswith("left"):
        x = rng.uniform(0.65, 0.8)
    elif motion.startswith("right"):
        x = rng.uniform(0.2, 0.35)
    elif motion == "up":
        y = rng.uniform(0.65, 0.8)
    elif motion == "down":
        y = rng.uniform(0.2, 0.35)
    elif motion == "bounce":
        y = 0.7
    return float(x), float(y)


def clip_spec(
    seed: int, index: int, max_objects: int = 2, themed: bool = False, scenes: tuple[str, ...] = SCENES
) -> ClipSpec:
    """Draw clip ``index`` of the dataset with ``seed``; independent of every other clip.

    ``scenes`` restricts the scene families (a corpus without one family, and later that family as new data for a
    grown DDM). All four draw exactly the clips of the default; a subset names itself in the clip ids, so two
    corpora of the same seed never share an id for different pixels.
    """
    unknown = sorted(set(scenes) - set(SCENES))
    if unknown or not scenes:
        raise ValueError(f"scenes must be a non-empty subset of {SCENES}, got {list(scenes)}")
    subset = "" if tuple(scenes) == SCENES else "+".join(scenes)
    rng = np.random.default_rng([seed, index])
    scene = str(_pick(rng, scenes))
    background = str(_pick(rng, BACKGROUNDS[scene]))
    n_obj = 1 if max_objects == 1 or rng.random() < 0.65 else 2
    shapes, scene_motions = THEMES[scene] if themed else (SHAPES, MOTIONS)
    objects = []
    for _ in range(n_obj):
        shape = str(_pick(rng, shapes))
        motions = [m for m in scene_motions if not (shape == "circle" and m == "spin")]  # spinning discs are invisible
        motion = str(_pick(rng, motions))
        x0, y0 = _start_position(rng, motion)
        if n_obj == 2:  # keep the two objects apart: one in each horizontal half
            y0 = 0.3 + 0.4 * len(objects) if motion not in ("up", "down", "bounce") else y0
        objects.append(
            ObjectSpec(
                shape=shape,
                color=str(_pick(rng, tuple(c for c in COLORS if c not in {o.color for o in objects}))),
                size=str(_pick(rng, tuple(SIZES))),
                motion=motion,
                x0=x0,
                y0=y0,
                angle0=float(rng.uniform(-0.25, 0.25)),  # near upright: a square tilted 45 degrees is a diamond
            )
        )
    caption = _caption(rng, scene, background, objects)
    return ClipSpec(
        clip_id=f"builtin-{seed}-{index:07d}" if subset == "" else f"builtin-{seed}-{subset}-{index:07d}",
        scene=scene,
        background=background,
        objects=tuple(objects),
        caption=caption,
        phase=float(rng.uniform(0, 1)),
    )


def _caption(rng: np.random.Generator, scene: str, background: str, objects: list[ObjectSpec]) -> str:
    phrases = [
        f"a {_pick(rng, _SIZE_WORDS[o.size])} {_pick(rng, _COLOR_WORDS[o.color])} "
        f"{_pick(rng, _SHAPE_WORDS[o.shape])} {_pick(rng, _MOTION_WORDS[o.motion])}"
        for o in objects
    ]
    where = str(_pick(rng, _SCENE_WORDS[scene])).format(bg=background)
    where = where.replace(f"a {background}", f"an {background}") if background[0] in "aeiou" else where
    return f"{' and '.join(phrases)} {where}"


def _background(scene: str, background: str, phase: float, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """Float RGB image in [0, 1], shape [H, W, 3]."""
    base = np.asarray(BG_RGB[background], dtype=np.float32) / 255.0
    if scene == "plain":
        pattern = np.zeros_like(xx)
    elif scene == "gradient":
        pattern = 0.9 * (yy - 0.5)  # lighter at the bottom, darker at the top
    elif scene == "stripes":
        pattern = 0.25 * np.sign(np.sin(2 * np.pi * (4 * xx + phase)))
    else:  # checker
        pattern = 0.25 * np.sign(np.sin(2 * np.pi * (3 * xx + phase)) * np.sin(2 * np.pi * (3 * yy + phase)))
    return np.clip(base[None, None, :] * (1.0 + pattern[..., None]) + 0.08 * pattern[..., None], 0.0, 1.0)


def _object_state(obj: ObjectSpec, s: float) -> tuple[float, float, float, float]:
    """Centre x, y (fractions), radius scale and angle at clip time s in [0, 1]."""
    x, y, scale, angle = obj.x0, obj.y0, 1.0, obj.angle0
    shift = {"slow": 0.3, "fast": 0.55}
    if obj.motion.startswith("left"):
        x -= shift[obj.motion.split("_")[1]] * s
    elif obj.motion.startswith("right"):
        x += shift[obj.motion.split("_")[1]] * s
    elif obj.motion == "up":
        y -= 0.45 * s
    elif obj.motion == "down":
        y += 0.45 * s
    elif obj.motion == "bounce":
        y = obj.y0 - 0.45 * abs(np.sin(2 * np.pi * s))  # two hops per clip
    elif obj.motion == "spin":
        angle += 2 * np.pi * s / 2
    elif obj.motion == "grow":
        scale = 0.55 + 0.9 * s
    elif obj.motion == "shrink":
        scale = 1.45 - 0.9 * s
    return x, y, scale, angle


def _shape_mask(shape: str, dx: np.ndarray, dy: np.ndarray, r: float, angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    u, v = c * dx + s * dy, -s * dx + c * dy  # coordinates in the object's rotated frame
    if shape == "circle":
        return dx**2 + dy**2 <= r**2
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.85 * r
    if shape == "diamond":
        return np.abs(u) + np.abs(v) <= 1.15 * r
    # triangle: equilateral, pointing along v
    return (v >= -0.5 * r) & (np.sqrt(3) * u + v <= r) & (-np.sqrt(3) * u + v <= r)


def render(spec: ClipSpec, frames: int, height: int, width: int) -> np.ndarray:
    """Pixels of a clip: uint8 [T, H, W, 3]."""
    hs, ws = height * _SUPERSAMPLE, width * _SUPERSAMPLE
    yy, xx = np.meshgrid((np.arange(hs) + 0.5) / hs, (np.arange(ws) + 0.5) / ws, indexing="ij")
    bg = _background(spec.scene, spec.background, spec.phase, yy, xx)
    short = min(height, width) / max(height, width)
    out = np.empty((frames, height, width, 3), dtype=np.uint8)
    for f in range(frames):
        img = bg.copy()
        s = f / max(frames - 1, 1)
        for obj in spec.objects:
            x, y, scale, angle = _object_state(obj, s)
            r = SIZES[obj.size] * scale * short
            mask = _shape_mask(
                obj.shape, (xx - x) * width / max(height, width), (yy - y) * height / max(height, width), r, angle
            )
            img[mask] = np.asarray(COLORS[obj.color], dtype=np.float32) / 255.0
        small = img.reshape(height, _SUPERSAMPLE, width, _SUPERSAMPLE, 3).mean(axis=(1, 3))
        out[f] = np.round(small * 255.0).astype(np.uint8)
    return out


def iter_builtin_clips(
    seed: int,
    num_clips: int,
    frames: int,
    height: int,
    width: int,
    max_objects: int = 2,
    start: int = 0,
    themed: bool = False,
    scenes: tuple[str, ...] = SCENES,
) -> Iterator[Clip]:
    """Stream clips ``start .. num_clips-1``; one clip in memory at a time."""
    for index in range(start, num_clips):
        spec = clip_spec(seed, index, max_objects, themed, scenes)
        yield Clip(spec.clip_id, render(spec, frames, height, width), spec.caption, spec.attributes())

"""The built-in captioned video dataset: procedural, deterministic and streaming.

Why procedural: the pipeline must run offline on a laptop, and the evaluation needs ground truth about
what each clip shows. Every clip is drawn from its own generator seeded by ``(seed, index)``, so clip i is
the same whatever the dataset size, clips can be produced in any order, and memory does not grow with the
count. The generating attributes travel with the clip as metadata.

Semantic structure (what clustering and the experts can latch on to):
- scene family: plain, gradient, stripes, checker (and, in larger worlds, spots, rings, waves, grid) — each a
  backdrop texture with its own background palette;
- 1–2 objects, each with shape, colour, size and one motion: moving left/right/up/down (slow or fast),
  bouncing, spinning, growing or shrinking (larger worlds add stars, hexagons, crescents and crosses that pulse,
  orbit, sway or zigzag);
- captions from templates with synonyms, so the same attributes are worded several ways.

Two content regimes (``data.themed_scenes``): shared (every scene shows every shape and motion, so scenes differ
only in their backdrop) and themed (each scene family has its own shapes and motions, ``THEMES``). Real footage is
themed — what moves, and how, depends on the setting — and that is the regime in which experts trained on
semantic clusters have something of their own to learn; in the shared regime nearly everything a model learns on
one cluster transfers to the others, which favours one model trained on all of them.

How distinct the families are is a knob, ``data.family_overlap`` (``World.overlap``), and how many there are is
another, ``data.num_families`` (``World.num_families``: the first n of ``FAMILIES``, 4 by default, up to 8 so that
K = 8 experts can each find a family). Every family owns shapes, motions and background colours no other family
owns (``Family``), and a world's vocabulary is the union of what its families own. Each clip decides, for its
background and for each object's shape and motion, whether that draw comes from the pool the families share (the
family's palette; every shape and motion of the world, or its theme when themed) or from what its family owns:
shared with probability ``overlap``. At 1 every draw is shared (the dataset as it was before the knob, clip for
clip); at 0 the families have disjoint shapes, motions and backgrounds. The coins come from a stream of their own,
one per draw whatever the overlap, so a clip's shared draws at a lower overlap stay shared at a higher one.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from data_schemas.ingest import DEFAULT_FAMILIES, DEFAULT_SCENES


@dataclass(frozen=True)
class Family:
    """A scene family: a backdrop texture (its name) on a background palette, and the vocabulary it owns.

    What a family owns (``backgrounds``, ``shapes``, ``motions``) no other family owns: at ``family_overlap`` 0 its
    clips show only those, so families differ in everything a clip shows.
    """

    palette: tuple[str, ...]  # background colours of shared draws; a few are in other families' palettes too
    backgrounds: tuple[str, ...]  # of its palette, the colours it owns
    shapes: tuple[str, ...]  # the shapes it owns
    motions: tuple[str, ...]  # the motions it owns: always one besides spin, which a disc cannot show
    theme: tuple[tuple[str, ...], tuple[str, ...]]  # (shapes, motions) of shared draws when scenes are themed


_LATERAL = ("left_slow", "left_fast", "right_slow", "right_fast")
FAMILIES = {  # the first four are the default world (data.num_families = 4); the rest join in order
    "plain": Family(("black", "gray", "navy"), ("black", "gray"), ("square",), _LATERAL,
                    (("circle", "square"), _LATERAL)),
    "gradient": Family(("sunset", "ocean", "forest"), ("sunset", "ocean", "forest"), ("triangle",), ("up", "down"),
                       (("triangle", "diamond"), ("up", "down", "bounce"))),
    "stripes": Family(("gray", "navy", "olive"), ("navy", "olive"), ("diamond",), ("spin", "grow", "shrink"),
                      (("square", "diamond"), ("spin", "grow", "shrink"))),
    "checker": Family(("black", "teal", "brown"), ("teal", "brown"), ("circle",), ("bounce",),
                      (("circle", "triangle"), ("bounce", "grow", "shrink", "left_fast", "right_fast"))),
    "spots": Family(("maroon", "plum", "gray"), ("maroon", "plum"), ("star",), ("pulse",),
                    (("star", "circle"), ("pulse", "bounce", "grow"))),
    "rings": Family(("slate", "sand", "navy"), ("slate", "sand"), ("hexagon",), ("orbit",),
                    (("hexagon", "square"), ("orbit", "spin"))),
    "waves": Family(("indigo", "steel", "ocean"), ("indigo", "steel"), ("crescent",), ("sway",),
                    (("crescent", "triangle"), ("sway", "up", "down"))),
    "grid": Family(("mint", "lilac", "black"), ("mint", "lilac"), ("cross",), ("zigzag",),
                   (("cross", "diamond"), ("zigzag", "left_slow", "right_slow"))),
}  # fmt: skip
SCENES = DEFAULT_SCENES
BACKGROUNDS = {scene: FAMILIES[scene].palette for scene in SCENES}  # the default world's palettes
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
    "maroon": (105, 20, 45),
    "plum": (85, 40, 95),
    "slate": (60, 70, 85),
    "sand": (150, 130, 85),
    "indigo": (45, 30, 120),
    "steel": (80, 105, 130),
    "mint": (50, 140, 110),
    "lilac": (140, 120, 170),
}
SHAPES = ("circle", "square", "triangle", "diamond")  # the default world's, in drawing order
COLORS = {
    "red": (230, 40, 40),
    "green": (60, 220, 70),
    "blue": (60, 110, 255),
    "yellow": (250, 230, 50),
    "white": (245, 245, 245),
    "magenta": (235, 60, 220),
}
SIZES = {"small": 0.13, "large": 0.24}  # object radius as a fraction of the frame's shorter side
MOTIONS = (*_LATERAL, "up", "down", "bounce", "spin", "grow", "shrink")  # the default world's, in drawing order
THEMES = {name: family.theme for name, family in FAMILIES.items()}  # together: every shape and motion of FAMILIES
ORBIT_RADIUS = 0.18  # of the frame, for the orbit motion
_OVERLAP_STREAM = 1  # third seed word of the generator of a clip's shared-or-own coins
_DRAWS = ("background", "shape", "motion", "shape2", "motion2")  # one coin each, in this order


@dataclass(frozen=True)
class World:
    """The scene families a built-in dataset has (``data.num_families``) and how much they share
    (``data.family_overlap``); the defaults are the dataset as it was before either existed."""

    num_families: int = DEFAULT_FAMILIES
    overlap: float = 1.0

    def __post_init__(self) -> None:
        if not DEFAULT_FAMILIES <= self.num_families <= len(FAMILIES):
            raise ValueError(f"num_families must lie in [{DEFAULT_FAMILIES}, {len(FAMILIES)}], got {self.num_families}")
        if not 0.0 <= self.overlap <= 1.0:
            raise ValueError(f"overlap must lie in [0, 1], got {self.overlap}")

    @property
    def families(self) -> tuple[str, ...]:
        return tuple(FAMILIES)[: self.num_families]

    @property
    def shapes(self) -> tuple[str, ...]:
        """Every shape of the world in drawing order: the default world's, then those the added families own."""
        return SHAPES + tuple(s for f in self.families[DEFAULT_FAMILIES:] for s in FAMILIES[f].shapes)

    @property
    def motions(self) -> tuple[str, ...]:
        return MOTIONS + tuple(m for f in self.families[DEFAULT_FAMILIES:] for m in FAMILIES[f].motions)

    @property
    def backgrounds(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(b for f in self.families for b in FAMILIES[f].palette))

    @property
    def tag(self) -> str:
        """What clip ids carry when the world is not the default: two worlds never share an id for other pixels."""
        parts = [f"f{self.num_families}"] if self.num_families != DEFAULT_FAMILIES else []
        return "-".join(parts + ([f"o{self.overlap:g}"] if self.overlap != 1.0 else []))

    def shared_draws(self, seed: int, index: int) -> dict[str, bool]:
        """For each draw of clip ``index`` (``_DRAWS``), whether it comes from the shared pool (else: the family's
        own). At overlap 1 no coin is drawn at all."""
        if self.overlap >= 1.0:
            return dict.fromkeys(_DRAWS, True)
        coins = np.random.default_rng([seed, index, _OVERLAP_STREAM]).random(len(_DRAWS))
        return {name: bool(coin < self.overlap) for name, coin in zip(_DRAWS, coins, strict=True)}


_SHAPE_WORDS = {
    "circle": ("circle", "ball", "disc"),
    "square": ("square", "box", "block"),
    "triangle": ("triangle", "wedge"),
    "diamond": ("diamond", "rhombus"),
    "star": ("star", "starburst"),
    "hexagon": ("hexagon", "hex"),
    "crescent": ("crescent", "moon"),
    "cross": ("cross", "plus sign"),
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
    "pulse": ("pulsing", "throbbing"),
    "orbit": ("circling", "moving in a circle"),
    "sway": ("swaying", "rocking side to side"),
    "zigzag": ("zigzagging right", "moving right in a zigzag"),
}
_SCENE_WORDS = {
    "plain": ("on a plain {bg} background", "against a solid {bg} backdrop"),
    "gradient": ("in front of a {bg} gradient", "over a {bg}-toned gradient"),
    "stripes": ("on a {bg} striped background", "over {bg} stripes"),
    "checker": ("on a {bg} checkerboard", "over a {bg} checkered floor"),
    "spots": ("on a {bg} polka-dot background", "over {bg} spots"),
    "rings": ("on a {bg} background of rings", "over {bg} concentric rings"),
    "waves": ("on a {bg} wavy background", "over {bg} waves"),
    "grid": ("on a {bg} grid", "over a {bg} grid of lines"),
}
SUPERSAMPLE = 2  # render at 2x and box-filter down, for anti-aliased edges


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
    elif motion == "zigzag":
        x = rng.uniform(0.2, 0.35)
    elif motion == "orbit":  # the circle's centre lies ORBIT_RADIUS left of the start
        x = rng.uniform(0.45, 0.7)
    return float(x), float(y)


def clip_spec(
    seed: int,
    index: int,
    max_objects: int = 2,
    themed: bool = False,
    scenes: tuple[str, ...] = (),
    world: World = World(),
) -> ClipSpec:
    """Draw clip ``index`` of the dataset with ``seed``; independent of every other clip.

    ``scenes`` restricts the scene families to some of the world's (a corpus without one family, and later that
    family as new data for a grown DDM); empty: all of them, which draws exactly the clips of the default. A subset
    and a world other than the default name themselves in the clip ids, so two corpora of the same seed never share
    an id for different pixels.
    """
    scenes = tuple(scenes) or world.families
    unknown = sorted(set(scenes) - set(world.families))
    if unknown:
        raise ValueError(f"scenes must be families of {world.families}, got {list(scenes)}")
    subset = "" if scenes == world.families else "+".join(scenes)
    rng = np.random.default_rng([seed, index])
    shared = world.shared_draws(seed, index)
    scene = str(_pick(rng, scenes))
    family = FAMILIES[scene]
    background = str(_pick(rng, family.palette if shared["background"] else family.backgrounds))
    n_obj = 1 if max_objects == 1 or rng.random() < 0.65 else 2
    shapes, scene_motions = family.theme if themed else (world.shapes, world.motions)
    objects = []
    for k in range(n_obj):
        suffix = "2" if k else ""
        shape = str(_pick(rng, shapes if shared[f"shape{suffix}"] else family.shapes))
        pool = scene_motions if shared[f"motion{suffix}"] else family.motions
        motions = [m for m in pool if not (shape == "circle" and m == "spin")]  # spinning discs are invisible
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
    name = "-".join(part for part in ("builtin", str(seed), world.tag, subset, f"{index:07d}") if part)
    return ClipSpec(
        clip_id=name,
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


def backdrop(scene: str, background: str, phase: float, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """Float RGB image in [0, 1], shape [H, W, 3]."""
    base = np.asarray(BG_RGB[background], dtype=np.float32) / 255.0
    if scene == "plain":
        pattern = np.zeros_like(xx)
    elif scene == "gradient":
        pattern = 0.9 * (yy - 0.5)  # lighter at the bottom, darker at the top
    elif scene == "stripes":
        pattern = 0.25 * np.sign(np.sin(2 * np.pi * (4 * xx + phase)))
    elif scene == "checker":
        pattern = 0.25 * np.sign(np.sin(2 * np.pi * (3 * xx + phase)) * np.sin(2 * np.pi * (3 * yy + phase)))
    elif scene == "spots":  # a 4 x 4 lattice of dots
        dx, dy = (4 * xx + phase) % 1.0 - 0.5, (4 * yy + phase) % 1.0 - 0.5
        pattern = np.where(dx**2 + dy**2 < 0.3**2, 0.25, -0.25)
    elif scene == "rings":  # concentric about the centre
        pattern = 0.25 * np.sign(np.sin(2 * np.pi * (5 * np.hypot(xx - 0.5, yy - 0.5) + phase)))
    elif scene == "waves":  # horizontal bands that undulate
        pattern = 0.25 * np.sign(np.sin(2 * np.pi * (3 * yy + 0.15 * np.sin(2 * np.pi * (2 * xx + phase)) + phase)))
    else:  # grid: thin lines
        line = ((4 * xx + phase) % 1.0 < 0.15) | ((4 * yy + phase) % 1.0 < 0.15)
        pattern = np.where(line, 0.25, -0.25)
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
    elif obj.motion == "pulse":  # two beats per clip
        scale = 1.0 + 0.45 * np.sin(4 * np.pi * s)
    elif obj.motion == "orbit":  # one turn per clip, starting at the circle's right-hand point
        x = obj.x0 - ORBIT_RADIUS + ORBIT_RADIUS * np.cos(2 * np.pi * s)
        y = obj.y0 - ORBIT_RADIUS * np.sin(2 * np.pi * s)
    elif obj.motion == "sway":  # one swing each way
        x = obj.x0 + 0.2 * np.sin(2 * np.pi * s)
    elif obj.motion == "zigzag":  # rightward, two zigs
        x += 0.45 * s
        y = obj.y0 + 0.12 * (2 / np.pi) * np.arcsin(np.sin(4 * np.pi * s))
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
    if shape == "star":  # five rounded points
        return np.hypot(u, v) <= r * (0.72 + 0.35 * np.cos(5 * np.arctan2(u, v)))
    if shape == "hexagon":
        apothem = r * np.sqrt(3) / 2
        return (np.abs(v) <= apothem) & (np.sqrt(3) / 2 * np.abs(u) + np.abs(v) / 2 <= apothem)
    if shape == "crescent":  # a disc with an offset bite taken out
        return (u**2 + v**2 <= r**2) & ((u - 0.45 * r) ** 2 + v**2 > (0.8 * r) ** 2)
    if shape == "cross":
        arm = 0.38 * r
        return ((np.abs(u) <= arm) & (np.abs(v) <= r)) | ((np.abs(v) <= arm) & (np.abs(u) <= r))
    # triangle: equilateral, pointing along v
    return (v >= -0.5 * r) & (np.sqrt(3) * u + v <= r) & (-np.sqrt(3) * u + v <= r)


def render(spec: ClipSpec, frames: int, height: int, width: int) -> np.ndarray:
    """Pixels of a clip: uint8 [T, H, W, 3]."""
    hs, ws = height * SUPERSAMPLE, width * SUPERSAMPLE
    yy, xx = np.meshgrid((np.arange(hs) + 0.5) / hs, (np.arange(ws) + 0.5) / ws, indexing="ij")
    bg = backdrop(spec.scene, spec.background, spec.phase, yy, xx)
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
        small = img.reshape(height, SUPERSAMPLE, width, SUPERSAMPLE, 3).mean(axis=(1, 3))
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
    scenes: tuple[str, ...] = (),
    world: World = World(),
) -> Iterator[Clip]:
    """Stream clips ``start .. num_clips-1``; one clip in memory at a time."""
    for index in range(start, num_clips):
        spec = clip_spec(seed, index, max_objects, themed, scenes, world)
        yield Clip(spec.clip_id, render(spec, frames, height, width), spec.caption, spec.attributes())

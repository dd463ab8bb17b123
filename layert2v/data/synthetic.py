"""Procedural VidLayer: layered clips whose ground truth is exact.

Each clip is a moving background under a camera (still, pan or zoom) and 1..K foreground sprites in depth
order (1 = nearest). Backgrounds and sprites are functions of continuous coordinates, so camera motion,
sub-pixel motion and scale change are just coordinate transforms, and sprite edges are anti-aliased by a
one-pixel ramp on a signed distance. Every attribute that a caption mentions is drawn first and recorded
in `metadata.json`; captions are built from those attributes with varied templates.

Splits: a fixed set of colour-shape combinations (drawn from the seed) is held out of train and val; every
test clip's nearest foreground uses one of them, so the test split measures generalisation to unseen
combinations.

Determinism: clip `i` draws only from `np.random.default_rng([seed, i])`, the geometry uses only IEEE arithmetic and
square roots (`_sin`, `_atan2`, `_tanh` below, not numpy's transcendental functions, whose results differ with the
CPU's vector units), and the video writers are bit-exact, so the same arguments give byte-identical files on any
machine with the same PyAV build.

Shapes: T frames, S x S pixels; float32 images `[T, S, S, 3]` in [0, 1], alphas `[T, S, S]`.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from layert2v.compose import over
from layert2v.config import SynthConfig
from layert2v.data.vidlayer import write_clip
from layert2v.io import to_uint8

SHAPES = ("circle", "square", "triangle", "diamond", "star", "hexagon")
COLOURS = {
    "red": (0.86, 0.12, 0.12),
    "orange": (0.98, 0.55, 0.08),
    "yellow": (0.96, 0.88, 0.15),
    "green": (0.15, 0.70, 0.22),
    "cyan": (0.12, 0.80, 0.86),
    "blue": (0.12, 0.25, 0.90),
    "purple": (0.55, 0.18, 0.78),
    "pink": (0.98, 0.45, 0.70),
}
SIZES = {"small": 0.11, "medium": 0.16, "large": 0.22}  # sprite radius as a fraction of the frame side
BG_COLOURS = {
    "navy": (0.10, 0.14, 0.32),
    "cream": (0.93, 0.90, 0.80),
    "slate grey": (0.40, 0.45, 0.50),
    "olive": (0.42, 0.45, 0.20),
    "sand": (0.80, 0.70, 0.52),
    "teal": (0.10, 0.45, 0.45),
    "maroon": (0.45, 0.10, 0.15),
    "lavender": (0.72, 0.68, 0.86),
    "charcoal": (0.18, 0.18, 0.20),
    "mint": (0.70, 0.88, 0.76),
}
BACKGROUNDS = ("gradient", "stripes", "checkers", "noise", "textured")
MOTIONS = ("linear", "curved", "bouncing")
CAMERAS = ("still", "pan", "zoom")
DIRECTIONS = {"right": (1.0, 0.0), "left": (-1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0)}


@dataclass(frozen=True, kw_only=True)
class Sprite:
    """One foreground object and its path; units are fractions of the frame side."""

    shape: str
    colour: str
    size: str
    opacity: float  # < 1 makes a semi-transparent object
    start: tuple[float, float]
    velocity: tuple[float, float]  # per frame
    motion: str
    curve: float  # amplitude of the curved path's sideways swing
    scale_rate: float  # relative size change over the clip (0 = constant)
    spin: float  # rotation per frame, radians


# ---------------------------------------------------------------- CPU-independent functions
# numpy's sin, arctan2, tanh and hypot take other code paths on AVX-512 hosts (SVML) than on AVX2 ones, and their
# last bits differ, which flips pixels at rounding boundaries: `make data` on an AVX2 host missed `data.dvc`'s hash.
# These use only +, -, *, /, sqrt and floor, which IEEE rounds the same on every path. Float64 inside.
LN2 = 0.6931471805599453  # the double nearest ln 2, written out: np.log would be one of the functions avoided


def _sin(x: np.ndarray | float) -> np.ndarray:
    """sin to about 1e-13: reduced to [-pi/2, pi/2], odd Taylor series to degree 19."""
    x = np.asarray(x, np.float64)
    r = x - 2 * np.pi * np.floor(x / (2 * np.pi) + 0.5)  # [-pi, pi]
    r = np.where(r > np.pi / 2, np.pi - r, np.where(r < -np.pi / 2, -np.pi - r, r))
    r2, term, total = r * r, r, r
    for n in range(1, 10):
        term = -term * r2 / ((2 * n) * (2 * n + 1))
        total = total + term
    return total


def _cos(x: np.ndarray | float) -> np.ndarray:
    return _sin(np.asarray(x, np.float64) + np.pi / 2)


def _atan(z: np.ndarray) -> np.ndarray:
    """atan to about 1e-15: |z| > 1 folded by atan(z) = +-pi/2 - atan(1/z), then the argument halved twice
    (atan(z) = 2 atan(z / (1 + sqrt(1 + z^2)))) to below tan(pi/16), then the Taylor series to degree 23."""
    big = np.abs(z) > 1
    w = np.where(big, 1 / np.where(big, z, 1.0), z)
    for _ in range(2):
        w = w / (1 + np.sqrt(1 + w * w))
    w2, term, total = w * w, w, w
    for n in range(1, 12):
        term = -term * w2
        total = total + term / (2 * n + 1)
    total = 4 * total
    return np.where(big, np.where(z > 0, np.pi / 2, -np.pi / 2) - total, total)


def _hypot(x: np.ndarray | float, y: np.ndarray | float) -> np.ndarray:
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    return np.sqrt(x * x + y * y)


def _atan2(y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """The angle of (x, y) in (-pi, pi], from the half-angle identity atan2(y, x) = 2 atan(y / (r + x))."""
    y, x = np.asarray(y, np.float64), np.asarray(x, np.float64)
    denominator = _hypot(x, y) + x
    negative_axis = denominator <= 0  # x <= 0 and y == 0
    angle = 2 * _atan(y / np.where(negative_axis, 1.0, denominator))
    return np.where(negative_axis, np.where(x < 0, np.pi, 0.0), angle)


def _tanh(x: np.ndarray) -> np.ndarray:
    """tanh from exp(2x) = 2^k exp(r), |r| <= ln 2 / 2 (Taylor series to degree 16); |x| clipped at 20."""
    t = 2 * np.clip(np.asarray(x, np.float64), -20, 20)
    k = np.floor(t / LN2 + 0.5)
    r = t - k * LN2
    term, total = np.ones_like(r), np.ones_like(r)
    for n in range(1, 17):
        term = term * r / n
        total = total + term
    return 1 - 2 / (np.ldexp(total, k.astype(np.int64)) + 1)


# ---------------------------------------------------------------- backgrounds


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    coords = (np.arange(size, dtype=np.float32) + 0.5) / size
    return np.meshgrid(coords, coords, indexing="xy")


def _mix(c0: np.ndarray, c1: np.ndarray, weight: np.ndarray) -> np.ndarray:
    return c0 * (1 - weight[..., None]) + c1 * weight[..., None]


def _background_frame(u: np.ndarray, v: np.ndarray, bg: dict, c0: np.ndarray, c1: np.ndarray) -> np.ndarray:
    """Evaluate the background pattern at continuous coordinates (u, v)."""
    angle, freq, phases = bg["angle"], bg["freq"], np.asarray(bg["phases"], np.float32)
    along = u * _cos(angle) + v * _sin(angle)
    kind = bg["kind"]
    if kind == "gradient":
        weight = np.clip(along * 0.8 + 0.3, 0, 1)
    elif kind == "stripes":
        weight = 0.5 + 0.5 * _tanh(3.0 * _sin(2 * np.pi * freq * along))
    elif kind == "checkers":
        across = -u * _sin(angle) + v * _cos(angle)
        weight = 0.5 + 0.5 * _tanh(3.0 * _sin(2 * np.pi * freq * along) * _sin(2 * np.pi * freq * across))
    elif kind == "noise":
        waves = [_sin(2 * np.pi * (k + 1.3) * (u * _cos(p) + v * _sin(p)) + p * 3) for k, p in enumerate(phases)]
        weight = 0.5 + 0.5 * _tanh(1.5 * sum(waves) / len(waves) * 2)
    else:  # textured solid: one colour, fine grain
        grain = sum(_sin(2 * np.pi * 17 * (k + 1) * (u * _cos(p) + v * _sin(p))) for k, p in enumerate(phases))
        return np.clip(c0 * (1 + 0.06 * grain[..., None] / len(phases)), 0, 1)
    return _mix(c0, c1, weight)


def render_background(bg: dict, camera: dict, size: int, frames: int) -> np.ndarray:
    """`[T, S, S, 3]` background under a still, panning or zooming camera."""
    x, y = _grid(size)
    c0, c1 = (
        np.asarray(BG_COLOURS[bg["colours"][0]], np.float32),
        np.asarray(BG_COLOURS[bg["colours"][1]], np.float32),
    )
    out = np.empty((frames, size, size, 3), np.float32)
    for t in range(frames):
        zoom = 1.0 + camera["zoom_rate"] * t
        dx, dy = (camera["pan"][0] * t, camera["pan"][1] * t)
        out[t] = _background_frame((x - 0.5) / zoom + 0.5 + dx, (y - 0.5) / zoom + 0.5 + dy, bg, c0, c1)
    return out


# ---------------------------------------------------------------- sprites


def _polygon_sdf(r: np.ndarray, theta: np.ndarray, sides: int, radius: float) -> np.ndarray:
    """Signed distance (approximate outside corners) to a regular polygon of circumradius `radius`."""
    sector = 2 * np.pi / sides
    folded = np.mod(theta, sector) - sector / 2
    return r * _cos(folded) - radius * _cos(np.pi / sides)


def shape_sdf(shape: str, dx: np.ndarray, dy: np.ndarray, radius: float, angle: float) -> np.ndarray:
    """Signed distance (in frame units) from each pixel to the sprite outline; < 0 inside."""
    r = _hypot(dx, dy)
    theta = _atan2(dy, dx) - angle
    if shape == "circle":
        return r - radius
    if shape == "square":
        return _polygon_sdf(r, theta + np.pi / 4, 4, radius * 1.2)
    if shape == "diamond":
        return _polygon_sdf(r, theta, 4, radius * 1.15)
    if shape == "triangle":
        return _polygon_sdf(r, theta - np.pi / 2, 3, radius * 1.3)
    if shape == "hexagon":
        return _polygon_sdf(r, theta, 6, radius * 1.05)
    if shape == "star":
        spikes = np.abs(_cos(2.5 * (theta - np.pi / 2)))
        return (r - radius * (0.55 + 0.6 * spikes**2)) * 0.8
    raise ValueError(f"unknown shape {shape!r}")


def _path(sprite: Sprite, t: int) -> tuple[float, float]:
    """Centre of the sprite at frame t."""
    x = sprite.start[0] + sprite.velocity[0] * t
    y = sprite.start[1] + sprite.velocity[1] * t
    if sprite.motion == "curved":
        swing = sprite.curve * _sin(0.6 * t)
        speed = _hypot(*sprite.velocity) + 1e-6
        x, y = x - swing * sprite.velocity[1] / speed, y + swing * sprite.velocity[0] / speed
    elif sprite.motion == "bouncing":
        x, y = (1 - abs((x % 2) - 1)) * 0.7 + 0.15, (1 - abs((y % 2) - 1)) * 0.7 + 0.15
    return float(x), float(y)


def render_sprite(sprite: Sprite, size: int, frames: int) -> tuple[np.ndarray, np.ndarray]:
    """Premultiplied RGB `[T, S, S, 3]` and alpha `[T, S, S]` of one sprite alone."""
    x, y = _grid(size)
    colour = np.asarray(COLOURS[sprite.colour], np.float32)
    ramp = 1.0 / size  # one-pixel anti-aliasing ramp
    rgb = np.empty((frames, size, size, 3), np.float32)
    alpha = np.empty((frames, size, size), np.float32)
    for t in range(frames):
        cx, cy = _path(sprite, t)
        radius = SIZES[sprite.size] * (1 + sprite.scale_rate * t / max(frames - 1, 1))
        dx, dy = x - cx, y - cy
        sdf = shape_sdf(sprite.shape, dx, dy, radius, sprite.spin * t)
        alpha[t] = np.clip(0.5 - sdf / ramp, 0, 1) * sprite.opacity
        shade = 1.0 - 0.18 * np.clip((dx + dy) / (2 * radius), -1, 1)  # soft light from the top left
        rgb[t] = np.clip(colour * shade[..., None], 0, 1) * alpha[t][..., None]
    return rgb, alpha


# ---------------------------------------------------------------- attributes and captions


def held_out_combos(seed: int, count: int) -> list[tuple[str, str]]:
    """The colour-shape pairs reserved for the test split, spread so no colour or shape is lost."""
    rng = np.random.default_rng([seed, 2**31 - 1])
    colours, shapes = list(COLOURS), list(SHAPES)
    order = rng.permutation(len(colours))
    shift = int(rng.integers(len(shapes)))
    return [(colours[order[i % len(colours)]], shapes[(i + shift) % len(shapes)]) for i in range(count)]


def _draw_sprite(rng: np.random.Generator, colour: str, shape: str) -> Sprite:
    motion = MOTIONS[int(rng.integers(len(MOTIONS)))]
    speed = float(rng.uniform(0.012, 0.035))
    direction = DIRECTIONS[list(DIRECTIONS)[int(rng.integers(4))]]
    wobble = rng.normal(0, 0.3, 2)
    velocity = (
        speed * (direction[0] + wobble[0] * abs(direction[1])),
        speed * (direction[1] + wobble[1] * abs(direction[0])),
    )
    start = (
        float(rng.uniform(0.25, 0.75)) - velocity[0] * 4,
        float(rng.uniform(0.25, 0.75)) - velocity[1] * 4,
    )
    if motion == "bouncing":  # fast enough, and anywhere, so that a 9-frame clip sees a reflection
        velocity = (velocity[0] * 2.5, velocity[1] * 2.5)
        start = (float(rng.uniform(0, 1)), float(rng.uniform(0, 1)))
    return Sprite(
        shape=shape,
        colour=colour,
        size=list(SIZES)[int(rng.integers(len(SIZES)))],
        opacity=float(rng.uniform(0.5, 0.8)) if rng.random() < 0.2 else 1.0,
        start=start,
        velocity=velocity,
        motion=motion,
        curve=float(rng.uniform(0.03, 0.08)),
        scale_rate=float(rng.choice([0.0, 0.0, 0.35, -0.3])),
        spin=float(rng.uniform(-0.12, 0.12)) if shape != "circle" and rng.random() < 0.5 else 0.0,
    )


HEADINGS = {"right": "to the right", "left": "to the left", "up": "upward", "down": "downward"}

# The words a caption may use for each named attribute: the name first, then synonyms a user might write. The last
# word of every list is held out: no caption of the data uses it (`synth.wording: varied` draws from the others,
# `fixed` uses the name alone), and `reworded` writes prompts with it, so adherence to a user's own words is measured
# on words the model never read. No word names another attribute ("sky blue" for cyan would say "blue").
WORDS: dict[str, tuple[str, ...]] = {
    "red": ("red", "scarlet", "cherry", "crimson"),
    "orange": ("orange", "tangerine", "apricot", "pumpkin"),
    "yellow": ("yellow", "lemon", "golden", "canary"),
    "green": ("green", "emerald", "leafy", "jade"),
    "cyan": ("cyan", "aqua", "turquoise"),
    "blue": ("blue", "cobalt", "ultramarine", "sapphire"),
    "purple": ("purple", "violet", "grape", "amethyst"),
    "pink": ("pink", "rose", "bubblegum", "fuchsia"),
    "circle": ("circle", "disc", "dot", "orb"),
    "square": ("square", "box", "block", "cube"),
    "triangle": ("triangle", "wedge", "three-sided shape", "pyramid"),
    "diamond": ("diamond", "rhombus", "lozenge"),
    "star": ("star", "five-pointed star", "starburst", "pentagram"),
    "hexagon": ("hexagon", "honeycomb cell", "six-sided shape"),
    "small": ("small", "little", "tiny"),
    "medium": ("medium", "mid-sized", "moderate"),
    "large": ("large", "big", "huge"),
    "navy": ("navy", "ink", "midnight"),
    "cream": ("cream", "ivory", "off-white"),
    "slate grey": ("slate grey", "steel grey", "pewter"),
    "olive": ("olive", "khaki", "moss"),
    "sand": ("sand", "beige", "tan"),
    "teal": ("teal", "petrol", "spruce"),
    "maroon": ("maroon", "burgundy", "wine"),
    "lavender": ("lavender", "lilac", "mauve"),
    "charcoal": ("charcoal", "graphite", "anthracite"),
    "mint": ("mint", "seafoam", "pistachio"),
}
WORDINGS = ("fixed", "varied", "held_out")


def _word(name: str, rng: np.random.Generator, wording: str) -> str:
    """The word a caption uses for attribute `name` under `wording` (see `WORDS`)."""
    words = WORDS.get(name, (name,))
    if wording == "fixed" or len(words) == 1:
        return name
    return words[-1] if wording == "held_out" else _choose(rng, list(words[:-1]))


def _forms(wording: str, fixed: list[str], varied: list[str], held_out: list[str]) -> list[str]:
    """Sentence forms by wording: `fixed` keeps the original templates, `varied` adds others, `held_out` has its own."""
    return {"fixed": fixed, "varied": fixed + varied, "held_out": held_out}[wording]


def _heading(sprite: Sprite) -> str:
    vx, vy = sprite.velocity
    return ("right" if vx > 0 else "left") if abs(vx) >= abs(vy) else ("down" if vy > 0 else "up")


def _article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _choose(rng: np.random.Generator, options: list[str]) -> str:
    return options[int(rng.integers(len(options)))]


def short_sprite(sprite: Sprite, rng: np.random.Generator, wording: str = "fixed") -> str:
    """`a large translucent red circle`: what the overall caption says of a sprite."""
    size, colour, shape = (_word(n, rng, wording) for n in (sprite.size, sprite.colour, sprite.shape))
    return _article(f"{size} {'translucent ' if sprite.opacity < 1 else ''}{colour} {shape}")


def sprite_caption(sprite: Sprite, rng: np.random.Generator, wording: str = "fixed") -> str:
    """A natural-language description of one sprite; every word comes from its attributes (`WORDS` by `wording`)."""
    size, colour, shape = (_word(n, rng, wording) for n in (sprite.size, sprite.colour, sprite.shape))
    look = f"{'translucent ' if sprite.opacity < 1 else ''}{colour} {shape}"
    way = HEADINGS[_heading(sprite)]
    moves = {
        "linear": [f"moving {way}", f"sliding steadily {way}", f"drifting {way}"],
        "curved": [f"weaving {way} along a curved path", f"swaying as it travels {way}"],
        "bouncing": ["bouncing off the edges of the frame", "ricocheting around the frame"],
    }[sprite.motion]
    extra = ["growing larger"] if sprite.scale_rate > 0 else ["shrinking"] if sprite.scale_rate < 0 else []
    extra += ["spinning slowly"] if sprite.spin else []
    templates = _forms(
        wording,
        ["{a_size} {look} {move}", "{a_look} of {size} size, {move}", "one {size} {look} that is {move}"],
        ["there is {a_size} {look} {move}", "{a_look}, {size}, {move}"],
        ["I'd like {a_size} {look} {move}", "show {a_look} ({size}) {move}"],
    )
    text = _choose(rng, templates).format(
        a_size=_article(size),
        size=size,
        look=look,
        a_look=_article(look),
        move=_choose(rng, moves),
    )
    return text + (", " + " and ".join(extra) if extra else "")


def _pattern(bg: dict, rng: np.random.Generator, wording: str = "fixed") -> str:
    c0, c1 = (_word(c, rng, wording) for c in bg["colours"])
    return _choose(
        rng,
        {
            "gradient": [f"a smooth gradient from {c0} to {c1}", _article(f"soft {c0}-to-{c1} gradient")],
            "stripes": [f"{c0} and {c1} stripes", f"a striped wall of {c0} and {c1}"],
            "checkers": [_article(f"{c0} and {c1} checkerboard"), f"checkered tiles in {c0} and {c1}"],
            "noise": [f"cloudy {c0} and {c1} blotches", _article(f"mottled {c0} and {c1} texture")],
            "textured": [_article(f"grainy {c0} surface"), _article(f"plain {c0} backdrop with fine grain")],
        }[bg["kind"]],
    )


def _camera_phrase(camera: dict, rng: np.random.Generator) -> str:
    """What the camera does; "still" is said explicitly so stability can be checked against it."""
    way = HEADINGS[camera["direction"]] if camera["kind"] == "pan" else ""
    return _choose(
        rng,
        {
            "still": ["with a still camera", "seen by a static camera"],
            "pan": [f"as the camera pans {way}", f"with the camera panning {way}"],
            "zoom": ["as the camera slowly zooms in", "with a slow zoom in"],
        }[camera["kind"]],
    )


def background_caption(bg: dict, camera: dict, rng: np.random.Generator, wording: str = "fixed") -> str:
    return f"{_pattern(bg, rng, wording)} {_camera_phrase(camera, rng)}"


def full_caption(
    sprites: list[Sprite], bg: dict, camera: dict, rng: np.random.Generator, wording: str = "fixed"
) -> str:
    """The overall prompt: every object (nearest first), the background and the camera, kept short."""
    objects = ", in front of ".join(short_sprite(s, rng, wording) for s in sprites)
    scene = f"{_pattern(bg, rng, wording)}, {_camera_phrase(camera, rng)}"
    templates = _forms(
        wording,
        ["{objects}, over {scene}", "A video of {objects}; behind, {scene}", "{objects} in a scene of {scene}"],
        ["{objects} against {scene}", "Footage of {objects} before {scene}"],
        ["Show me {objects}; the backdrop is {scene}", "I want {objects}; in the background, {scene}"],
    )
    text = _choose(rng, templates).format(objects=objects, scene=scene)
    return text[0].upper() + text[1:]


def captions(attributes: dict, rng: np.random.Generator, wording: str) -> dict[str, object]:
    """Overall, background and per-foreground captions of a clip's recorded `attributes` under `wording`."""
    sprites = [Sprite(**{k: v for k, v in f.items() if k != "depth"}) for f in attributes["foregrounds"]]
    bg, camera = attributes["background"], attributes["camera"]
    fgs = [sprite_caption(s, rng, wording) for s in sprites]
    background = background_caption(bg, camera, rng, wording)
    return {
        "full": full_caption(sprites, bg, camera, rng, wording),
        "background": background,
        "foreground": fgs[0],
        "foregrounds": fgs,
    }


def reworded(attributes: dict, seed: int = 0) -> tuple[str, str, list[str]]:
    """Prompts (overall, background, foregrounds) for a clip in words and sentence forms no caption of the data
    uses (`WORDS`' held-out words): what measures whether the model follows a user's wording or the templates'."""
    written = captions(attributes, np.random.default_rng(seed), "held_out")
    return written["full"], written["background"], written["foregrounds"]


def _draw_scene(rng: np.random.Generator) -> tuple[dict, dict]:
    kind = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    colour_ids = rng.choice(len(BG_COLOURS), 2, replace=False)
    bg = {
        "kind": kind,
        "colours": [list(BG_COLOURS)[int(i)] for i in colour_ids],
        "angle": float(rng.uniform(0, np.pi)),
        "freq": float(rng.uniform(2.5, 6.0)),
        "phases": [float(p) for p in rng.uniform(0, 2 * np.pi, 4)],
    }
    cam_kind = CAMERAS[int(rng.integers(len(CAMERAS)))]
    direction = list(DIRECTIONS)[int(rng.integers(4))]
    step = float(rng.uniform(0.01, 0.025))
    camera = {
        "kind": cam_kind,
        "direction": direction if cam_kind == "pan" else None,
        "pan": [DIRECTIONS[direction][0] * step, DIRECTIONS[direction][1] * step] if cam_kind == "pan" else [0.0, 0.0],
        "zoom_rate": float(rng.uniform(0.02, 0.05)) if cam_kind == "zoom" else 0.0,
    }
    return bg, camera


# ---------------------------------------------------------------- clips


def assign_split(rng: np.random.Generator, cfg: SynthConfig) -> str:
    draw = rng.random()
    if draw < cfg.test_fraction:
        return "test"
    return "val" if draw < cfg.test_fraction + cfg.val_fraction else "train"


def _draw_combos(
    rng: np.random.Generator, split: str, count: int, held: list[tuple[str, str]]
) -> list[tuple[str, str]]:
    seen = [(c, s) for c in COLOURS for s in SHAPES if (c, s) not in held]
    combos = [seen[int(rng.integers(len(seen)))] for _ in range(count)]
    if split == "test":
        combos[0] = held[int(rng.integers(len(held)))]
    return combos


def make_clip(cfg: SynthConfig, index: int) -> dict:
    """Render clip `index`: arrays of every layer plus its metadata (captions and attributes)."""
    rng = np.random.default_rng([cfg.seed, index])
    split = assign_split(rng, cfg)
    bg, camera = _draw_scene(rng)
    num_fg = int(rng.integers(1, cfg.max_fg + 1))
    sprites = [
        _draw_sprite(rng, c, s)
        for c, s in _draw_combos(rng, split, num_fg, held_out_combos(cfg.seed, cfg.held_out_combos))
    ]
    background = render_background(bg, camera, cfg.size, cfg.frames)
    layers = [render_sprite(s, cfg.size, cfg.frames) for s in sprites]
    metadata = {
        "clip_id": f"synth_{cfg.seed:04d}_{index:06d}",
        "split": split,
        "source": "synthetic",
        "seed": cfg.seed,
        "index": index,
        "fps": cfg.fps,
        "frames": cfg.frames,
        "size": [cfg.size, cfg.size],
        "attributes": {
            "background": bg,
            "camera": camera,
            "foregrounds": [{"depth": k + 1, **s.__dict__} for k, s in enumerate(sprites)],
        },
    }
    metadata["captions"] = captions(metadata["attributes"], rng, cfg.wording)
    return {
        "metadata": metadata,
        "full": over([rgb for rgb, _ in layers], [a for _, a in layers], background),
        "background": background,
        "foregrounds": [rgb for rgb, _ in layers],
        "alphas": [a for _, a in layers],
    }


def write_synthetic_clip(cfg: SynthConfig, index: int, out: Path) -> str:
    """Render and write clip `index` under `out/<split>/<clip_id>/`; returns the clip id."""
    clip = make_clip(cfg, index)
    meta = clip["metadata"]
    write_clip(
        out / meta["split"] / meta["clip_id"],
        metadata=meta,
        full=to_uint8(clip["full"]),
        background=to_uint8(clip["background"]),
        foregrounds=[to_uint8(f) for f in clip["foregrounds"]],
        alphas=[to_uint8(a) for a in clip["alphas"]],
        fps=cfg.fps,
    )
    return meta["clip_id"]


def write_dataset_card(cfg: SynthConfig, out: Path) -> None:
    """`out/dataset.json`: the generator settings and vocabularies, so the data describes itself."""
    card = {
        "source": "synthetic",
        "config": cfg.__dict__,
        "held_out_combos": held_out_combos(cfg.seed, cfg.held_out_combos),
        "shapes": list(SHAPES),
        "colours": list(COLOURS),
        "sizes": list(SIZES),
        "backgrounds": list(BACKGROUNDS),
        "motions": list(MOTIONS),
        "cameras": list(CAMERAS),
        "words": {name: list(words) for name, words in WORDS.items()},
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "dataset.json").write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")


def generate_dataset(cfg: SynthConfig, out: Path, workers: int = 2) -> list[str]:
    """Write `cfg.clips` clips and the dataset card under `out`; returns the clip ids in index order.

    `out` is replaced when it holds an earlier synthetic dataset (so a smaller regeneration leaves no
    stale clips behind) and refused when it holds anything else: real data is never overwritten.
    """
    from layert2v.progress import progress

    if out.exists() and any(out.iterdir()):
        card = out / "dataset.json"
        if not card.is_file() or json.loads(card.read_text()).get("source") != "synthetic":
            raise FileExistsError(f"{out} is not empty and holds no synthetic dataset.json; refusing to overwrite it")
        shutil.rmtree(out)
    write_dataset_card(cfg, out)
    ids = []
    with progress() as bar, mp.get_context("fork").Pool(workers) as pool:
        task = bar.add_task("synth: render and encode clips", total=cfg.clips)
        for clip_id in pool.imap(_write_indexed, [(cfg, i, out) for i in range(cfg.clips)], chunksize=4):
            ids.append(clip_id)
            bar.advance(task)
    return ids


def _write_indexed(args: tuple[SynthConfig, int, Path]) -> str:
    return write_synthetic_clip(*args)

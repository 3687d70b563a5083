"""The "shapes world": a deterministic, seeded generator of labelled demo images.

Every scene is one or two flat-coloured shapes on a muted background (plain, gradient,
noise or stripes) with a little pixel noise. Each object has a colour, a shape, a size
(small/medium/large) and a position (left/right/top/bottom/center), so every image comes
with exact labels and a caption::

    a small red circle on the left and a large blue square on the right

`write_collection` writes a folder of mixed JPEG and PNG files plus ``labels.csv`` with the
columns ``file,color,shape,size,position,palette,background,caption``; two-object rows list both
objects' values separated by ``;`` (e.g. color ``red;blue``). Two columns are words no caption uses:
``palette`` (warm/cool, a grouping of the colours, like a user's own category) and ``background``
(plain/gradient/noise/stripes). The same seed always gives byte-identical files.

`HELDOUT_COMBOS` are the colour-shape pairs that the shipped ``shapes-clip`` model never
saw during training, so its accuracy on them measures true zero-shot composition.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

COLORS: list[str] = ["red", "orange", "yellow", "green", "cyan", "blue", "purple", "pink"]
SHAPES: list[str] = ["circle", "square", "triangle", "star", "hexagon", "cross"]
SIZES: list[str] = ["small", "medium", "large"]
POSITIONS: list[str] = ["left", "right", "top", "bottom", "center"]
BACKGROUNDS: list[str] = ["plain", "gradient", "noise", "stripes"]

# Nominal RGB of each colour name; objects get a small per-object jitter around it.
COLOR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (215, 30, 35),
    "orange": (245, 135, 20),
    "yellow": (240, 220, 35),
    "green": (40, 165, 55),
    "cyan": (35, 205, 215),
    "blue": (35, 65, 215),
    "purple": (135, 45, 185),
    "pink": (245, 125, 195),
}

# A grouping of the colours that no caption names (so zero-shot prompts cannot know it).
PALETTE: dict[str, str] = {c: "warm" if c in ("red", "orange", "yellow", "pink") else "cool" for c in COLORS}

# Circumradius of an object as a fraction of the image side.
SIZE_RADIUS: dict[str, float] = {"small": 0.14, "medium": 0.2, "large": 0.26}

# Nominal centre of each position (fractions of the image side, y grows downwards).
POSITION_XY: dict[str, tuple[float, float]] = {
    "left": (0.27, 0.5),
    "right": (0.73, 0.5),
    "top": (0.5, 0.27),
    "bottom": (0.5, 0.73),
    "center": (0.5, 0.5),
}

# Phrase used for each position inside captions.
POSITION_PHRASE: dict[str, str] = {
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
    "center": "in the center",
}

# (colour, shape) pairs never shown to shapes-clip during training: one per shape, all colours distinct.
HELDOUT_COMBOS: list[tuple[str, str]] = [
    ("red", "circle"),
    ("green", "square"),
    ("blue", "triangle"),
    ("yellow", "star"),
    ("purple", "hexagon"),
    ("cyan", "cross"),
]

ALL_COMBOS: list[tuple[str, str]] = [(c, s) for c in COLORS for s in SHAPES]

LABEL_COLUMNS: list[str] = ["file", "color", "shape", "size", "position", "palette", "background", "caption"]

# Pairs of positions used by two-object scenes (kept apart so objects never overlap).
_PAIR_POSITIONS: list[tuple[str, str]] = [("left", "right"), ("top", "bottom")]

# Size pairs of two-object scenes (two large objects, or large with medium, would touch).
_PAIR_SIZES: list[tuple[str, str]] = [
    ("small", "small"), ("small", "medium"), ("medium", "small"), ("medium", "medium"),
    ("large", "small"), ("small", "large"),
]

_SUPERSAMPLE = 3


@dataclass(frozen=True)
class ShapeObject:
    """One object in a scene: its labels plus the exact rendering parameters."""

    color: str
    shape: str
    size: str
    position: str
    rotation: float = 0.0  # degrees, counter-clockwise
    center: tuple[float, float] = (0.5, 0.5)  # fractions of the image side
    rgb: tuple[int, int, int] = (0, 0, 0)  # jittered fill colour
    scale: float = 1.0  # multiplies the nominal radius of `size`

    def phrase(self) -> str:
        """E.g. 'a small red circle on the left'."""
        return f"a {self.size} {self.color} {self.shape} {POSITION_PHRASE[self.position]}"


@dataclass(frozen=True)
class Scene:
    """A full image description: objects plus background; `render_scene` draws it deterministically."""

    objects: tuple[ShapeObject, ...]
    background: str = "plain"
    bg_rgb: tuple[int, int, int] = (40, 40, 40)
    bg_rgb2: tuple[int, int, int] = (60, 60, 60)
    bg_angle: float = 0.0  # gradient / stripe direction, degrees
    stripe_period: float = 0.1  # fraction of the image side
    noise_sigma: float = 3.0  # per-pixel Gaussian noise, in 0..255 units
    noise_seed: int = 0
    fmt: str = "png"  # "png" or "jpeg": how write_collection stores it

    @property
    def caption(self) -> str:
        return " and ".join(o.phrase() for o in self.objects)

    def label_row(self, file: str) -> dict[str, str]:
        """The labels.csv row of this scene stored as `file`."""
        return {
            "file": file,
            "color": ";".join(o.color for o in self.objects),
            "shape": ";".join(o.shape for o in self.objects),
            "size": ";".join(o.size for o in self.objects),
            "position": ";".join(o.position for o in self.objects),
            "palette": ";".join(PALETTE[o.color] for o in self.objects),
            "background": self.background,
            "caption": self.caption,
        }

    def combos(self) -> set[tuple[str, str]]:
        return {(o.color, o.shape) for o in self.objects}


# ---------------------------------------------------------------- random scenes


def _as_rng(rng: np.random.Generator | int | None) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    return np.random.default_rng(rng)


def _normalise_combos(combos: Iterable[Sequence[str]] | None) -> set[tuple[str, str]] | None:
    if combos is None:
        return None
    out = set()
    for c in combos:
        color, shape = c
        if color not in COLORS or shape not in SHAPES:
            raise ValueError(f"unknown colour/shape combination: {color!r}, {shape!r}")
        out.add((color, shape))
    return out


def _pick(rng: np.random.Generator, items: Sequence):
    return items[int(rng.integers(len(items)))]


def random_object(
    rng: np.random.Generator,
    combo: tuple[str, str],
    size: str | None = None,
    position: str | None = None,
    pair_axis: str | None = None,
) -> ShapeObject:
    """A random object of the given (colour, shape); size/position random unless given.

    `pair_axis` ("x" or "y") marks an object of a two-object scene: its centre only moves
    along that axis so it never reaches its partner.
    """
    color, shape = combo
    size = size or _pick(rng, SIZES)
    position = position or _pick(rng, POSITIONS)
    base = COLOR_RGB[color]
    rgb = tuple(int(np.clip(v + rng.integers(-14, 15), 0, 255)) for v in base)
    scale = float(rng.uniform(0.9, 1.1))
    r = SIZE_RADIUS[size] * scale
    cx, cy = POSITION_XY[position]
    jx, jy = rng.uniform(-0.05, 0.05, size=2)
    if pair_axis == "x":  # left/right pair: only vertical jitter
        jx = 0.0
    elif pair_axis == "y":  # top/bottom pair: only horizontal jitter
        jy = 0.0
    margin = r + 0.015
    cx = float(np.clip(cx + jx, margin, 1 - margin))
    cy = float(np.clip(cy + jy, margin, 1 - margin))
    rotation = 0.0 if shape == "circle" else float(rng.uniform(0, 360))
    return ShapeObject(color, shape, size, position, round(rotation, 3), (round(cx, 4), round(cy, 4)), rgb,
                       round(scale, 4))


def random_scene(
    rng: np.random.Generator | int | None,
    allowed_combos: Iterable[Sequence[str]] | None = None,
    exclude_combos: Iterable[Sequence[str]] | None = None,
    two_object_prob: float = 0.25,
    combo: tuple[str, str] | None = None,
    n_objects: int | None = None,
) -> Scene:
    """A random scene drawn with `rng` (a numpy Generator or a seed).

    Objects use only `allowed_combos` (default: all colour-shape pairs) minus `exclude_combos`.
    With probability `two_object_prob` the scene has two objects (different combos) on opposite
    sides (left/right or top/bottom); `n_objects` forces 1 or 2. `combo` forces the first
    object's colour and shape.
    """
    rng = _as_rng(rng)
    allowed = _normalise_combos(allowed_combos) or set(ALL_COMBOS)
    excluded = _normalise_combos(exclude_combos) or set()
    pool = sorted(allowed - excluded, key=ALL_COMBOS.index)
    if not pool:
        raise ValueError("no colour-shape combination left to draw from")
    if n_objects is None:
        n_objects = 2 if rng.random() < two_object_prob else 1
    first = tuple(combo) if combo is not None else _pick(rng, pool)
    if n_objects == 2:
        second_pool = [c for c in pool if c != first]
        if not second_pool:
            n_objects = 1
    if n_objects == 1:
        objects = (random_object(rng, first),)
    else:
        pos_a, pos_b = _pick(rng, _PAIR_POSITIONS)
        if rng.random() < 0.5:
            pos_a, pos_b = pos_b, pos_a
        axis = "x" if {pos_a, pos_b} == {"left", "right"} else "y"
        size_a, size_b = _pick(rng, _PAIR_SIZES)
        second = _pick(rng, second_pool)
        objects = (
            random_object(rng, first, size_a, pos_a, axis),
            random_object(rng, second, size_b, pos_b, axis),
        )

    background = _pick(rng, BACKGROUNDS)
    dark = rng.random() < 0.5
    level = int(rng.integers(25, 75)) if dark else int(rng.integers(175, 225))
    tint = rng.integers(-8, 9, size=3)
    bg = tuple(int(np.clip(level + t, 0, 255)) for t in tint)
    delta = int(rng.integers(12, 30)) * (1 if dark else -1)
    tint2 = rng.integers(-6, 7, size=3)
    bg2 = tuple(int(np.clip(level + delta + t, 0, 255)) for t in tint2)
    return Scene(
        objects=objects,
        background=background,
        bg_rgb=bg,
        bg_rgb2=bg2,
        bg_angle=round(float(rng.uniform(0, 180)), 3),
        stripe_period=round(float(rng.uniform(0.06, 0.16)), 4),
        noise_sigma=round(float(rng.uniform(1.0, 6.0)), 3),
        noise_seed=int(rng.integers(0, 2**31 - 1)),
        fmt="jpeg" if rng.random() < 0.5 else "png",
    )


# ---------------------------------------------------------------- rendering


def _shape_polygon(shape: str, cx: float, cy: float, r: float, rot_deg: float) -> list[tuple[float, float]]:
    """Outline of `shape` with circumradius-ish `r` (sizes are tuned to look similar in area)."""
    rot = math.radians(rot_deg)

    def ring(radii: Sequence[float], n: int, offset: float = -math.pi / 2):
        pts = []
        for i in range(n):
            a = offset + rot + 2 * math.pi * i / n
            rr = radii[i % len(radii)]
            pts.append((cx + rr * math.cos(a), cy - rr * math.sin(a)))
        return pts

    if shape == "square":
        return ring([r * 0.95], 4, math.pi / 4)
    if shape == "triangle":
        return ring([r * 1.1], 3)
    if shape == "star":
        return ring([r * 1.12, r * 0.46], 10)
    if shape == "hexagon":
        return ring([r * 0.98], 6, 0.0)
    if shape == "cross":
        a, b = r * 0.95, r * 0.32
        base = [(-b, -a), (b, -a), (b, -b), (a, -b), (a, b), (b, b), (b, a), (-b, a), (-b, b), (-a, b),
                (-a, -b), (-b, -b)]
        c, s = math.cos(rot), math.sin(rot)
        return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in base]
    raise ValueError(f"unknown shape {shape!r}")


def _background(scene: Scene, size: int, rng: np.random.Generator) -> np.ndarray:
    c1 = np.array(scene.bg_rgb, dtype=np.float32)
    c2 = np.array(scene.bg_rgb2, dtype=np.float32)
    if scene.background == "plain":
        return np.broadcast_to(c1, (size, size, 3)).copy()
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / max(size - 1, 1)
    ang = math.radians(scene.bg_angle)
    proj = xx * math.cos(ang) + yy * math.sin(ang)
    if scene.background == "gradient":
        t = (proj - proj.min()) / max(float(proj.max() - proj.min()), 1e-6)
    elif scene.background == "stripes":
        t = (np.floor(proj / scene.stripe_period) % 2).astype(np.float32)
    elif scene.background == "noise":
        coarse = rng.random((max(size // 16, 2), max(size // 16, 2))).astype(np.float32)
        img = Image.fromarray((coarse * 255).astype(np.uint8)).resize((size, size), Image.BICUBIC)
        t = np.asarray(img, dtype=np.float32) / 255.0
    else:
        raise ValueError(f"unknown background {scene.background!r}")
    return c1 + (c2 - c1) * t[..., None]


def render_scene(scene: Scene, size: int = 128) -> Image.Image:
    """Draw `scene` as a square RGB image of `size` pixels (deterministic)."""
    rng = np.random.default_rng(scene.noise_seed)
    canvas = _background(scene, size, rng)
    big = size * _SUPERSAMPLE
    for obj in scene.objects:
        mask = Image.new("L", (big, big), 0)
        draw = ImageDraw.Draw(mask)
        cx, cy = obj.center[0] * big, obj.center[1] * big
        r = SIZE_RADIUS[obj.size] * obj.scale * big
        if obj.shape == "circle":
            rr = r * 0.9
            draw.ellipse([cx - rr, cy - rr, cx + rr, cy + rr], fill=255)
        else:
            draw.polygon(_shape_polygon(obj.shape, cx, cy, r, obj.rotation), fill=255)
        mask = mask.resize((size, size), Image.LANCZOS)
        alpha = np.asarray(mask, dtype=np.float32)[..., None] / 255.0
        canvas = canvas * (1 - alpha) + np.array(obj.rgb, dtype=np.float32) * alpha
    canvas = canvas + rng.normal(0.0, scene.noise_sigma, size=canvas.shape).astype(np.float32)
    img = Image.fromarray(np.clip(np.rint(canvas), 0, 255).astype(np.uint8), "RGB")
    if scene.noise_sigma > 4.5:  # a few images get a touch of blur, like a soft camera
        img = img.filter(ImageFilter.GaussianBlur(0.5))
    return img


def encode_image(img: Image.Image, fmt: str) -> bytes:
    """The exact bytes `write_collection` stores for `img` in format "png" or "jpeg"."""
    buf = io.BytesIO()
    if fmt == "jpeg":
        img.save(buf, format="JPEG", quality=90)
    elif fmt == "png":
        img.save(buf, format="PNG", optimize=False)
    else:
        raise ValueError(f"unknown format {fmt!r}")
    return buf.getvalue()


def roundtrip(scene: Scene, size: int = 128) -> Image.Image:
    """Render, encode in the scene's format and decode again: what a reader of the files sees."""
    data = encode_image(render_scene(scene, size), scene.fmt)
    with Image.open(io.BytesIO(data)) as im:
        return im.convert("RGB")


# ---------------------------------------------------------------- collections


def write_scenes(out_dir: str | Path, scenes: Sequence[Scene], image_size: int = 128,
                 prefix: str = "shape") -> Path:
    """Render `scenes` into `out_dir` (files named ``{prefix}_00000.jpg``...) plus labels.csv."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    width = max(5, len(str(len(scenes) - 1)))
    for i, scene in enumerate(scenes):
        ext = "jpg" if scene.fmt == "jpeg" else "png"
        name = f"{prefix}_{i:0{width}d}.{ext}"
        (out / name).write_bytes(encode_image(render_scene(scene, image_size), scene.fmt))
        rows.append(scene.label_row(name))
    labels = out / "labels.csv"
    with labels.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=LABEL_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return labels


def random_scenes(count: int, seed: int = 0, exclude_combos: Iterable[Sequence[str]] | None = None,
                  two_object_prob: float = 0.25) -> list[Scene]:
    """`count` scenes from one seeded generator (what write_collection renders)."""
    rng = np.random.default_rng(seed)
    excluded = _normalise_combos(exclude_combos)
    return [random_scene(rng, exclude_combos=excluded, two_object_prob=two_object_prob) for _ in range(count)]


def write_collection(
    out_dir: str | Path,
    count: int = 200,
    seed: int = 0,
    exclude_combos: Iterable[Sequence[str]] | None = None,
    image_size: int = 128,
    two_object_prob: float = 0.25,
) -> Path:
    """Write `count` random scenes (mixed JPEG/PNG) and labels.csv into `out_dir`; returns labels.csv.

    Deterministic: the same arguments give byte-identical files.
    """
    if count < 1:
        raise ValueError("count must be at least 1")
    scenes = random_scenes(count, seed, exclude_combos, two_object_prob)
    return write_scenes(out_dir, scenes, image_size)


def read_labels(labels_csv: str | Path) -> list[dict[str, str]]:
    """Rows of a labels.csv as dicts (values as written; split multi-object fields on ';')."""
    with Path(labels_csv).open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def row_objects(row: dict[str, str]) -> list[dict[str, str]]:
    """The objects of one labels.csv row: [{'color':..., 'shape':..., 'size':..., 'position':...}, ...]."""
    keys = ["color", "shape", "size", "position"]
    parts = [row[k].split(";") for k in keys]
    return [dict(zip(keys, vals)) for vals in zip(*parts)]


__all__ = [
    "ALL_COMBOS",
    "BACKGROUNDS",
    "COLORS",
    "COLOR_RGB",
    "HELDOUT_COMBOS",
    "LABEL_COLUMNS",
    "POSITIONS",
    "PALETTE",
    "POSITION_PHRASE",
    "SHAPES",
    "SIZES",
    "Scene",
    "ShapeObject",
    "encode_image",
    "random_object",
    "random_scene",
    "random_scenes",
    "read_labels",
    "render_scene",
    "roundtrip",
    "row_objects",
    "write_collection",
    "write_scenes",
]

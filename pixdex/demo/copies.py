"""A duplicate-finding benchmark collection: shapes-world originals, transformed copies, hard negatives.

For each original scene the collection holds copies made by one transformation each, at a graded
strength, and two hard negatives that are different photos:
    resize      scaled to 75% / 50% / 25% of the side
    recompress  saved again as JPEG at quality 85 / 60 / 30
    convert     PNG (lossless) / WebP q75 / GIF (256-colour palette)
    crop        2% / 5% / 10% cut from every side
    rotate      pixels turned 90 degrees with EXIF orientation 6 (shown upright), resized 100% / 75% / 50%
    same-kind   (negative) another scene of the same colour and shape
    moved       (negative) the same scene with one object moved by 0.2-0.3 of the side
`truth.csv` lists every file with its group (same group = duplicates), role, transformation and strength.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image

from pixdex.demo.world import POSITION_XY, Scene, encode_image, random_scene, render_scene

STRENGTHS = ("mild", "moderate", "strong")
TRANSFORMS = ("resize", "recompress", "convert", "crop", "rotate")
NEGATIVES = ("same-kind", "moved")
TRUTH_COLUMNS = ["file", "group", "role", "transform", "strength"]

_RESIZE = {"mild": 0.75, "moderate": 0.5, "strong": 0.25}
_QUALITY = {"mild": 85, "moderate": 60, "strong": 30}
_CROP = {"mild": 0.02, "moderate": 0.05, "strong": 0.10}
_ROTATE_SCALE = {"mild": 1.0, "moderate": 0.75, "strong": 0.5}


@dataclass(frozen=True)
class Entry:
    """One file of the benchmark collection."""

    file: str
    group: int  # files of one group are copies of one photo
    role: str  # original | copy | negative
    transform: str  # "" for originals; a TRANSFORMS or NEGATIVES name otherwise
    strength: str  # "" or one of STRENGTHS


def _jpeg(img: Image.Image, quality: int, exif: Image.Exif | None = None) -> bytes:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, "JPEG", quality=quality, **({"exif": exif} if exif is not None else {}))
    return buf.getvalue()


def _save(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def transform(img: Image.Image, name: str, strength: str) -> tuple[bytes, str]:
    """(file bytes, extension) of a copy of `img` made by transformation `name` at `strength`."""
    w, h = img.size
    if name == "resize":
        s = _RESIZE[strength]
        return _jpeg(img.resize((round(w * s), round(h * s)), Image.Resampling.LANCZOS), 90), "jpg"
    if name == "recompress":
        return _jpeg(img, _QUALITY[strength]), "jpg"
    if name == "convert":
        if strength == "mild":
            return _save(img, "PNG"), "png"
        if strength == "moderate":
            return _save(img, "WEBP", quality=75), "webp"
        return _save(img.convert("P", palette=Image.Palette.ADAPTIVE, colors=256), "GIF"), "gif"
    if name == "crop":
        c = _CROP[strength]
        return _jpeg(
            img.crop((round(w * c), round(h * c), round(w * (1 - c)), round(h * (1 - c)))), 90
        ), "jpg"
    if name == "rotate":
        s = _ROTATE_SCALE[strength]
        small = img.resize((round(w * s), round(h * s)), Image.Resampling.LANCZOS) if s != 1 else img
        exif = Image.Exif()
        exif[0x0112] = 6  # "rotate 90 CW to show": the stored pixels are turned 90 degrees the other way
        return _jpeg(small.transpose(Image.Transpose.ROTATE_90), 90, exif), "jpg"
    raise ValueError(f"unknown transformation {name!r}")


def moved(scene: Scene, rng: np.random.Generator) -> Scene:
    """The same scene (background, noise, colours) with its first object moved by 0.2-0.3 of the side."""
    obj = scene.objects[0]
    cx, cy = obj.center
    r = 0.26 * obj.scale + 0.015
    for _ in range(50):
        angle = rng.uniform(0, 2 * np.pi)
        dist = rng.uniform(0.2, 0.3)
        nx, ny = cx + dist * np.cos(angle), cy + dist * np.sin(angle)
        if r <= nx <= 1 - r and r <= ny <= 1 - r:
            break
    else:  # no room around: go to the opposite side of the centre
        nx, ny = 1 - cx, 1 - cy
    position = min(POSITION_XY, key=lambda p: (POSITION_XY[p][0] - nx) ** 2 + (POSITION_XY[p][1] - ny) ** 2)
    return replace(
        scene,
        objects=(replace(obj, center=(round(nx, 4), round(ny, 4)), position=position), *scene.objects[1:]),
    )


def write_duplicate_collection(
    out_dir: str | Path,
    originals: int = 60,
    seed: int = 0,
    image_size: int = 256,
    strengths: tuple[str, ...] = STRENGTHS,
) -> Path:
    """Write the benchmark collection into `out_dir`; returns truth.csv. Deterministic for a seed.

    Originals are assigned to `strengths` in turn; each gets one copy per transformation at its strength
    and the two hard negatives.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    entries: list[Entry] = []
    group = 0

    def add(name: str, data: bytes, role: str, grp: int, how: str = "", strength: str = "") -> None:
        (out / name).write_bytes(data)
        entries.append(Entry(name, grp, role, how, strength))

    for i in range(originals):
        strength = strengths[i % len(strengths)]
        scene = random_scene(rng, n_objects=1 if rng.random() < 0.8 else 2)
        img = render_scene(scene, image_size)
        ext = "jpg" if scene.fmt == "jpeg" else "png"
        group += 1
        add(f"o{i:05d}.{ext}", encode_image(img, scene.fmt), "original", group, "", strength)
        for how in TRANSFORMS:
            data, cext = transform(img, how, strength)
            add(f"o{i:05d}-{how}.{cext}", data, "copy", group, how, strength)
        obj = scene.objects[0]
        kind = random_scene(rng, combo=(obj.color, obj.shape), n_objects=1)
        twin = moved(scene, rng)
        for how, neg in (("same-kind", kind), ("moved", twin)):
            group += 1
            neg = replace(neg, fmt=scene.fmt)
            add(
                f"o{i:05d}-neg-{how}.{ext}",
                encode_image(render_scene(neg, image_size), neg.fmt),
                "negative",
                group,
                how,
                strength,
            )
    truth = out / "truth.csv"
    with truth.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=TRUTH_COLUMNS, lineterminator="\n")
        writer.writeheader()
        for e in entries:
            writer.writerow(
                {
                    "file": e.file,
                    "group": e.group,
                    "role": e.role,
                    "transform": e.transform,
                    "strength": e.strength,
                }
            )
    return truth


def read_truth(truth_csv: str | Path) -> list[Entry]:
    with Path(truth_csv).open(newline="", encoding="utf-8") as fh:
        return [
            Entry(r["file"], int(r["group"]), r["role"], r["transform"], r["strength"])
            for r in csv.DictReader(fh)
        ]


@dataclass(frozen=True)
class PairScore:
    """Precision and recall of duplicate pairs over one subset of the benchmark collection."""

    precision: float
    recall: float
    predicted: int
    true_pairs: int


def score_pairs(
    predicted: set[tuple[int, int]], truth: dict[int, Entry], strength: str | None = None
) -> PairScore:
    """P/R of `predicted` id pairs against the truth (id -> Entry), over the files of one strength (or all).

    Precision counts every predicted pair among those files: copies joined with hard negatives or with
    other photos' files are the false pairs.
    """
    keep = {i for i, e in truth.items() if strength is None or e.strength == strength}
    pred = {(a, b) for a, b in predicted if a in keep and b in keep}
    by_group: dict[int, list[int]] = {}
    for i in keep:
        by_group.setdefault(truth[i].group, []).append(i)
    true_pairs = {
        (min(a, b), max(a, b)) for ids in by_group.values() for k, a in enumerate(ids) for b in ids[k + 1 :]
    }
    tp = len(pred & true_pairs)
    return PairScore(
        tp / len(pred) if pred else 1.0,
        tp / len(true_pairs) if true_pairs else 1.0,
        len(pred),
        len(true_pairs),
    )

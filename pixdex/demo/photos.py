"""Demo photos: shapes-world scenes saved as JPEGs with camera EXIF (capture time, camera, GPS).

Lets the demo and the tests show what pixdex reads from real photo libraries without shipping photos.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from PIL import Image
from PIL.TiffImagePlugin import IFDRational


@dataclass(frozen=True)
class Shot:
    """What a camera writes about one photo."""

    taken: datetime | None = None
    offset: str | None = None  # "+02:00"
    make: str | None = None
    model: str | None = None
    lens: str | None = None
    gps: tuple[float, float] | None = None  # signed decimal degrees
    orientation: int | None = None


def _dms(value: float) -> tuple[IFDRational, IFDRational, IFDRational]:
    value = abs(value)
    deg = int(value)
    minutes = int((value - deg) * 60)
    seconds = round(((value - deg) * 60 - minutes) * 60 * 10000)
    return IFDRational(deg, 1), IFDRational(minutes, 1), IFDRational(seconds, 10000)


def shot_exif(shot: Shot) -> Image.Exif:
    """The EXIF block a camera would write for `shot` (IFD0, Exif and GPS IFDs)."""
    ex = Image.Exif()
    if shot.make:
        ex[0x010F] = shot.make
    if shot.model:
        ex[0x0110] = shot.model
    if shot.orientation:
        ex[0x0112] = shot.orientation
    sub = {}
    if shot.taken:
        sub[0x9003] = sub[0x9004] = shot.taken.strftime("%Y:%m:%d %H:%M:%S")
        ex[0x0132] = sub[0x9003]
    if shot.offset:
        sub[0x9011] = shot.offset
    if shot.lens:
        sub[0xA434] = shot.lens
    if sub:
        ex.get_ifd(0x8769).update(sub)
    if shot.gps:
        lat, lon = shot.gps
        ex.get_ifd(0x8825).update(
            {1: "N" if lat >= 0 else "S", 2: _dms(lat), 3: "E" if lon >= 0 else "W", 4: _dms(lon)}
        )
    return ex


def jpeg_with_exif(img: Image.Image, shot: Shot, quality: int = 90) -> bytes:
    """`img` as JPEG bytes carrying `shot`'s EXIF (pixels stored as given: orientation is only a tag)."""
    buf = io.BytesIO()
    img.convert("RGB").save(buf, "JPEG", quality=quality, exif=shot_exif(shot))
    return buf.getvalue()


ALBUM = [  # (file, shot): a small photo library spread over two years, two cameras, three places
    (
        "IMG_20230814_101500.jpg",
        Shot(datetime(2023, 8, 14, 10, 15), "+02:00", "Google", "Pixel 7", None, (48.8584, 2.2945)),
    ),
    ("IMG_20231224_183000.jpg", Shot(datetime(2023, 12, 24, 18, 30), "+01:00", "Google", "Pixel 7")),
    (
        "DSC04211.jpg",
        Shot(datetime(2024, 3, 2, 9, 5), None, "Canon", "Canon EOS R6", "RF24-105mm F4 L IS USM"),
    ),
    (
        "IMG_20240601_120000.jpg",
        Shot(datetime(2024, 6, 1, 12, 0), "+02:00", "Google", "Pixel 8", None, (41.9022, 12.4539)),
    ),
    (
        "IMG_20240715_074500.jpg",
        Shot(datetime(2024, 7, 15, 7, 45), "-04:00", "Google", "Pixel 8", None, (40.7580, -73.9855)),
    ),
    ("DSC05877.jpg", Shot(datetime(2025, 1, 3, 15, 20), None, "Canon", "Canon EOS R6")),
]


def write_album(out_dir: str | Path, seed: int = 2026, size: int = 256) -> list[Path]:
    """A few shapes-world 'photos' with camera EXIF, plus copies of one (exact, resized, EXIF-rotated).

    What `pixdex demo` indexes to show date filters, sorting by capture time and a duplicate group.
    """
    from pixdex.demo.copies import transform
    from pixdex.demo.world import random_scenes, render_scene

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    scenes = random_scenes(len(ALBUM), seed=seed, two_object_prob=0.0)
    for (name, shot), scene in zip(ALBUM, scenes):
        (out / name).write_bytes(jpeg_with_exif(render_scene(scene, size), shot))
        written.append(out / name)
    first = render_scene(scenes[3], size)
    copies = {
        "copy of IMG_20240601_120000.jpg": (out / ALBUM[3][0]).read_bytes(),  # a byte-identical copy
        "IMG_20240601_120000-small.jpg": transform(first, "resize", "moderate")[0],  # shared at half size
        "IMG_20240601_120000-rotated.jpg": transform(first, "rotate", "mild")[0],
    }  # turned by EXIF
    for name, data in copies.items():
        (out / name).write_bytes(data)
        written.append(out / name)
    return written

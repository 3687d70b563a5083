"""Demo photos: shapes-world scenes saved as JPEGs with camera EXIF (capture time, camera, GPS).

Lets the demo and the tests show what pixdex reads from real photo libraries without shipping photos.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from datetime import datetime

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
        ex.get_ifd(0x8825).update({1: "N" if lat >= 0 else "S", 2: _dms(lat), 3: "E" if lon >= 0 else "W",
                                   4: _dms(lon)})
    return ex


def jpeg_with_exif(img: Image.Image, shot: Shot, quality: int = 90) -> bytes:
    """`img` as JPEG bytes carrying `shot`'s EXIF (pixels stored as given: orientation is only a tag)."""
    buf = io.BytesIO()
    img.convert("RGB").save(buf, "JPEG", quality=quality, exif=shot_exif(shot))
    return buf.getvalue()

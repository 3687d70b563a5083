"""Photo metadata from the file itself: capture time, camera, lens, GPS position and orientation.

Read with Pillow's own EXIF reader (`Image.getexif` / `Exif.get_ifd`; no extra library: it already parses
JPEG, WebP, TIFF and PNG eXIf blocks, and the fields here need no more) from an image that was only
*opened*: the EXIF block sits in the header, so no pixel is decoded. PNG's own `getexif()` would load the
whole image to look for an eXIf chunk after the pixel data; the base-class reader used here does not.
Every field is parsed on its own: a malformed value (0000:00:00 dates, zero-denominator GPS rationals,
garbage strings, huge or looping IFDs) becomes a null plus a one-line warning, never an exception.
"""

from __future__ import annotations

import io
import math
import os
import re
import stat
import warnings
from dataclasses import asdict, dataclass, field
from datetime import datetime

from PIL import Image

# The store's typed photo columns, in order (width/height are base columns; mtime stays separate); the
# store maps these kinds to Arrow types (indexer.store.PHOTO_SCHEMA), so decoding needs no pyarrow.
PHOTO_KINDS = {
    "taken": "timestamp",  # capture time as shown on the camera's clock (local wall time)
    "taken_offset": "text",  # that clock's UTC offset, "+02:00", when the file gives it
    "camera_make": "text",
    "camera_model": "text",
    "lens": "text",
    "gps_lat": "float",  # decimal degrees, north positive
    "gps_lon": "float",  # decimal degrees, east positive
    "orientation": "int8",  # EXIF orientation 1-8 (already applied to width/height and pixels)
}
PHOTO_COLUMNS = tuple(PHOTO_KINDS)

# EXIF tags (TIFF/EXIF 2.32 numbers)
ORIENTATION, MAKE, MODEL, DATETIME = 0x0112, 0x010F, 0x0110, 0x0132
EXIF_IFD, GPS_IFD = 0x8769, 0x8825
DATETIME_ORIGINAL, DATETIME_DIGITIZED = 0x9003, 0x9004
OFFSET_TIME, OFFSET_ORIGINAL, OFFSET_DIGITIZED = 0x9010, 0x9011, 0x9012
LENS_MODEL = 0xA434
GPS_LAT_REF, GPS_LAT, GPS_LON_REF, GPS_LON = 1, 2, 3, 4

MAX_TEXT = 128  # longer "camera names" are garbage, not names
_DATE = re.compile(r"^\s*(\d{4})[:\-](\d{2})[:\-](\d{2})[ T](\d{2}):(\d{2}):(\d{2})")
_OFFSET = re.compile(r"^\s*([+-])(\d{2}):?(\d{2})\s*$")
_XMP_DATE = re.compile(
    rb'(?:exif:DateTimeOriginal|xmp:CreateDate|photoshop:DateCreated)\s*(?:=\s*"|>)\s*'
    rb"(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(?::\d{2})?(?:\.\d+)?)(Z|[+-]\d{2}:\d{2})?"
)


@dataclass
class PhotoMeta:
    """The photo columns of one image (None = not in the file, or unreadable) and what was wrong."""

    taken: datetime | None = None
    taken_offset: str | None = None
    camera_make: str | None = None
    camera_model: str | None = None
    lens: str | None = None
    gps_lat: float | None = None
    gps_lon: float | None = None
    orientation: int | None = None
    problems: list[str] = field(default_factory=list)

    def columns(self) -> dict:
        """The store columns (without the problems)."""
        out = asdict(self)
        out.pop("problems")
        return out

    def taken_iso(self) -> str | None:
        """The capture time as ISO 8601, with its offset when known."""
        if self.taken is None:
            return None
        return self.taken.isoformat() + (self.taken_offset or "")


def photo_meta(img: Image.Image) -> PhotoMeta:
    """Photo metadata of an opened (not decoded) image; never raises, never loads the pixels."""
    meta = PhotoMeta()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow warns "possibly corrupt EXIF data": we report our own
            exif = Image.Image.getexif(img)  # the base reader: PNG's override would decode the image
    except Exception as exc:  # hostile EXIF of any kind: no metadata, one warning
        meta.problems.append(f"unreadable EXIF ({_reason(exc)})")
        exif = Image.Exif()
    _fill(meta, exif)
    if meta.taken is None:
        _xmp_taken(meta, img.info)
    return meta


def photo_meta_from_bytes(data: bytes) -> PhotoMeta:
    """Photo metadata of encoded image bytes (opens the header only)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as img:
                return photo_meta(img)
    except Exception as exc:  # not an image: the decoder reports that, not us
        return PhotoMeta(problems=[f"unreadable header ({_reason(exc)})"])


def _fill(meta: PhotoMeta, exif: Image.Exif) -> None:
    sub = _ifd(meta, exif, EXIF_IFD, "Exif")
    gps = _ifd(meta, exif, GPS_IFD, "GPS")
    meta.orientation = _orientation(meta, _get(meta, exif, ORIENTATION))
    meta.camera_make = _text(meta, "camera make", _get(meta, exif, MAKE))
    meta.camera_model = _text(meta, "camera model", _get(meta, exif, MODEL))
    meta.lens = _text(meta, "lens", _get(meta, sub, LENS_MODEL))
    for when, offset, where in (
        (DATETIME_ORIGINAL, OFFSET_ORIGINAL, sub),
        (DATETIME_DIGITIZED, OFFSET_DIGITIZED, sub),
        (DATETIME, OFFSET_TIME, exif),
    ):
        value = _get(meta, where, when)
        if value is None:
            continue
        taken = _date(meta, value)
        if taken is not None:
            meta.taken = taken
            meta.taken_offset = _offset(meta, _get(meta, sub, offset))
            break
    lat = _coordinate(meta, "latitude", _get(meta, gps, GPS_LAT), _get(meta, gps, GPS_LAT_REF), "NS", 90)
    lon = _coordinate(meta, "longitude", _get(meta, gps, GPS_LON), _get(meta, gps, GPS_LON_REF), "EW", 180)
    if (lat is None) != (lon is None):
        meta.problems.append("GPS position has only one usable coordinate")
        lat = lon = None
    meta.gps_lat, meta.gps_lon = lat, lon


def _ifd(meta: PhotoMeta, exif: Image.Exif, tag: int, name: str) -> dict:
    """A sub-IFD as a dict ({} when absent or unreadable: a bad pointer, a loop, a huge count)."""
    if tag not in exif:
        return {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return dict(exif.get_ifd(tag))
    except Exception as exc:
        meta.problems.append(f"unreadable {name} IFD ({_reason(exc)})")
        return {}


def _get(meta: PhotoMeta, ifd, tag: int):
    try:
        return ifd.get(tag)
    except Exception as exc:  # a lazily read value that does not parse
        meta.problems.append(f"unreadable tag 0x{tag:04x} ({_reason(exc)})")
        return None


def _text(meta: PhotoMeta, what: str, value) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if not isinstance(value, str):
        meta.problems.append(f"{what} is not text ({type(value).__name__})")
        return None
    value = value.split("\x00", 1)[0].strip()
    if not value:
        return None
    if len(value) > MAX_TEXT or not value.isprintable():
        meta.problems.append(f"{what} is not a readable name")
        return None
    return value


def _orientation(meta: PhotoMeta, value) -> int | None:
    if value is None:
        return None
    try:
        o = int(value)
    except (TypeError, ValueError):
        o = 0
    if not 1 <= o <= 8:
        meta.problems.append(f"orientation {value!r} is not 1-8")
        return None
    return o


def _date(meta: PhotoMeta, value) -> datetime | None:
    text = value.decode("ascii", "replace") if isinstance(value, bytes) else value
    if not isinstance(text, str):
        meta.problems.append(f"date {value!r} is not text")
        return None
    m = _DATE.match(text.split("\x00", 1)[0])
    try:
        if m is None:
            raise ValueError
        taken = datetime(*(int(g) for g in m.groups()))
    except ValueError:
        meta.problems.append(f"bad date {text.strip()[:32]!r}")
        return None
    if not 1826 <= taken.year <= 2200:  # before the first photograph, or far future: a broken clock
        meta.problems.append(f"implausible date {text.strip()[:32]!r}")
        return None
    return taken


def _offset(meta: PhotoMeta, value) -> str | None:
    if value is None:
        return None
    text = value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)
    text = text.split("\x00", 1)[0]
    if not text.strip(" :"):
        return None  # the EXIF way of saying "unknown"
    m = _OFFSET.match(text)
    if m is None or int(m.group(2)) > 14 or int(m.group(3)) >= 60:
        meta.problems.append(f"bad time offset {text.strip()[:16]!r}")
        return None
    return f"{m.group(1)}{m.group(2)}:{m.group(3)}"


def _number(x) -> float:
    """A float from an EXIF rational/number (nan for zero denominators and garbage)."""
    try:
        if isinstance(x, tuple) and len(x) == 2:  # (numerator, denominator) as some writers leave it
            return x[0] / x[1] if x[1] else math.nan
        return float(x)
    except (TypeError, ValueError, ZeroDivisionError, OverflowError):
        return math.nan


def _coordinate(meta: PhotoMeta, what: str, value, ref, refs: str, limit: float) -> float | None:
    """Signed decimal degrees from EXIF (degrees, minutes, seconds) and its N/S or E/W reference."""
    if value is None:
        return None
    parts = list(value) if isinstance(value, (tuple, list)) else [value]
    if not 1 <= len(parts) <= 3:
        meta.problems.append(f"GPS {what} has {len(parts)} parts")
        return None
    nums = [_number(p) for p in parts]
    if not all(math.isfinite(n) and n >= 0 for n in nums) or any(n >= 60 for n in nums[1:]):
        meta.problems.append(f"bad GPS {what} {tuple(str(p) for p in parts)}")
        return None
    deg = sum(n / 60**i for i, n in enumerate(nums))
    if deg > limit:
        meta.problems.append(f"GPS {what} {deg:.4f} is beyond {limit}")
        return None
    ref = (
        (ref.decode("ascii", "replace") if isinstance(ref, bytes) else str(ref or "")).strip("\x00 ").upper()
    )
    if ref not in refs:
        meta.problems.append(f"GPS {what} reference {ref!r} is not {' or '.join(refs)}")
        return None
    return round(-deg if ref == refs[1] else deg, 7)


def _xmp_taken(meta: PhotoMeta, info: dict) -> None:
    """The capture time from an XMP packet (exif:DateTimeOriginal, xmp:CreateDate) when EXIF has none."""
    xmp = info.get("xmp") or info.get("XML:com.adobe.xmp")
    if not xmp:
        return
    raw = xmp.encode("utf-8", "replace") if isinstance(xmp, str) else bytes(xmp)
    m = _XMP_DATE.search(raw[:1_000_000])
    if m is None:
        return
    try:
        taken = datetime.fromisoformat(m.group(1).decode()).replace(microsecond=0)
    except ValueError:
        meta.problems.append("bad XMP date")
        return
    if 1826 <= taken.year <= 2200:
        meta.taken = taken
        zone = (m.group(2) or b"").decode()
        meta.taken_offset = "+00:00" if zone == "Z" else (zone or None)


def _reason(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}"[:120] if text else type(exc).__name__


def photo_meta_from_path(path: str) -> PhotoMeta:
    """Photo metadata of an image file (reads its header only; a FIFO or device is not opened: it could
    block)."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return PhotoMeta(problems=["unreadable header (not a regular file)"])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as img:
                return photo_meta(img)
    except Exception as exc:
        return PhotoMeta(problems=[f"unreadable header ({_reason(exc)})"])

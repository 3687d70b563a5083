"""Safe image decoding: every file becomes an RGB PIL image or a one-line reason why not.

Handles EXIF orientation, every PIL mode (CMYK, P+transparency, LA/RGBA on white, I;16, I, F, 1-bit),
the first frame of animations, a decompression-bomb guard, and JPEG draft decoding.
"""

from __future__ import annotations

import errno
import io
import os
import stat
import struct
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from indexer.exif import PhotoMeta, photo_meta
from indexer.params import DEFAULT_MAX_PIXELS

# We enforce our own, configurable pixel limit with a clear message (see check_pixels).
Image.MAX_IMAGE_PIXELS = None
ImageFile.LOAD_TRUNCATED_IMAGES = False


# Leading bytes of the formats we index; content decides, not the extension.
MAGIC = {
    b"\xff\xd8\xff": "jpeg",
    b"\x89PNG\r\n\x1a\n": "png",
    b"GIF87a": "gif",
    b"GIF89a": "gif",
    b"BM": "bmp",
    b"II*\x00": "tiff",
    b"MM\x00*": "tiff",
}
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
# The PIL plugins we let open a file: the formats above and their close kin. Others (EPS and PDF run
# Ghostscript, PSD, ...) are refused as "not an image" rather than handed to a decoder nobody asked for.
PIL_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "DIB", "TIFF", "WEBP", "ICO", "PPM", "TGA")


T = Image.Transpose
TRANSPOSE = {2: T.FLIP_LEFT_RIGHT, 3: T.ROTATE_180, 4: T.FLIP_TOP_BOTTOM, 5: T.TRANSPOSE, 6: T.ROTATE_270,
             7: T.TRANSVERSE, 8: T.ROTATE_90}  # EXIF orientation -> the transpose that shows it upright


class DecodeError(Exception):
    """A file that cannot become an image; str() is the one-line reason."""


@dataclass
class Decoded:
    """A decoded RGB image with the facts the store records about its file."""

    image: Image.Image
    width: int  # original pixel size, after EXIF orientation
    height: int
    photo: PhotoMeta = field(default_factory=PhotoMeta)  # capture time, camera, GPS... from the header


def sniff_format(head: bytes) -> str | None:
    """Image format from a file's first bytes, or None when it is not an image we index."""
    for magic, fmt in MAGIC.items():
        if head.startswith(magic):
            return fmt
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    return None


def looks_like_image(path: str | os.PathLike) -> bool:
    """True when the name or the content says image (so a mis-named image is still found).

    Only regular files are sniffed: opening a FIFO to read it would wait for a writer forever."""
    if Path(path).suffix.lower() in IMAGE_EXTENSIONS:
        return True
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return False
        with open(path, "rb") as fh:
            return sniff_format(fh.read(16)) is not None
    except OSError:
        return False


def file_kind(mode: int) -> str:
    """'a directory', 'a FIFO (named pipe)', ... for a stat mode that is not a regular file."""
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def check_pixels(width: int, height: int, max_pixels: int | None, option: str = "--max-pixels") -> None:
    """Refuse images whose declared pixel count exceeds the decompression-bomb limit (`option` raises it)."""
    if max_pixels and width * height > max_pixels:
        raise DecodeError(
            f"image too large: {width}x{height} = {width * height / 1e6:.0f} Mpx exceeds the "
            f"limit of {max_pixels / 1e6:g} Mpx (raise {option} to allow it)"
        )


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB correctly: alpha flattened on white, 16/32-bit scaled to 8-bit."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        mode = img.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img).astype(np.float64)
        if mode.startswith("I;16"):
            scale = 65535.0
        else:  # 32-bit int or float: use the data's own range, 16-bit if it fits there
            top = float(arr.max()) if arr.size else 0.0
            scale = 1.0 if mode == "F" and top <= 1.0 else (255.0 if top <= 255 else
                                                            65535.0 if top <= 65535 else top)
        arr = np.clip(arr / scale * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    if mode == "CMYK":
        return img.convert("RGB")
    return img.convert("RGB")  # "1", "L", "YCbCr", "LAB", "HSV"


def decode_bytes(
    data: bytes,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    draft_size: int | None = None,
    option: str = "--max-pixels",
) -> Decoded:
    """Decode image bytes to RGB; raise DecodeError with a one-line reason on failure.

    The declared size is checked against max_pixels before anything is decoded: nothing (EXIF
    included: PNG's getexif() decodes the whole image) is read past the header before that.
    draft_size: the model's input edge. JPEGs at least 4x larger are DCT-scaled while decoding
    (exact enough: the processor's bicubic resize to draft_size dominates; cosine >= 0.999 tested).
    option: the setting that raises the limit, named in the message.
    """
    if not data:
        raise DecodeError("empty file (0 bytes)")
    w = h = 0
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img = Image.open(io.BytesIO(data), formats=PIL_FORMATS)
            w, h = img.size
            check_pixels(w, h, max_pixels, option)
            photo = photo_meta(img)  # from the header: never decodes pixels, never raises
            if draft_size and img.format == "JPEG" and min(w, h) >= 4 * draft_size:
                img.draft("RGB", (2 * draft_size * w // min(w, h), 2 * draft_size * h // min(w, h)))
            if getattr(img, "is_animated", False):
                img.seek(0)
            img.load()
            orient = photo.orientation or late_orientation(img)
            if orient and orient != 1:
                img = img.transpose(TRANSPOSE[orient])
                if orient in (5, 6, 7, 8):
                    w, h = h, w
            rgb = to_rgb(img)
    except DecodeError:
        raise
    except UnidentifiedImageError:
        raise DecodeError(f"not an image (content starts {data[:8]!r})") from None
    except MemoryError:
        raise DecodeError(f"out of memory decoding a {w}x{h} image") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, struct.error,
            Image.DecompressionBombError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "truncated" in reason.lower() or isinstance(exc, EOFError):
            reason = f"truncated or corrupt image data ({reason})"
        raise DecodeError(reason) from None
    return Decoded(rgb, w, h, photo)


def late_orientation(img: Image.Image) -> int:
    """EXIF orientation found only once the pixels are decoded (a PNG's eXIf chunk after IDAT); 1 if none."""
    raw = img.info.get("exif")
    if not raw:
        return 1
    try:
        exif = Image.Exif()
        exif.load(raw)
        value = exif.get(0x0112, 1)
    except Exception:  # hostile EXIF: the pixels are fine, keep them as stored
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def read_file(path: str | os.PathLike) -> bytes:
    """Read a regular file's bytes, turning OS errors into DecodeError with the reason.

    FIFOs, devices (/dev/zero) and sockets are refused without reading: they could block or never end."""
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise DecodeError(f"{file_kind(st.st_mode)}, not a regular file")
        # O_NONBLOCK: should the path turn into a FIFO after the stat, open() still returns at once
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
        with open(fd, "rb") as fh:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise DecodeError(f"{file_kind(os.fstat(fd).st_mode)}, not a regular file")
            return fh.read()
    except DecodeError:
        raise
    except PermissionError:
        raise DecodeError("permission denied") from None
    except IsADirectoryError:
        raise DecodeError("is a directory") from None
    except FileNotFoundError:
        if os.path.islink(path):
            raise DecodeError(f"dangling symbolic link (to {os.readlink(path)}, "
                              "which does not exist)") from None
        raise DecodeError("file not found") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise DecodeError("symbolic link loop (the link leads back to itself)") from None
        raise DecodeError(exc.strerror or str(exc)) from None


def load_image(path: str | os.PathLike, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open an image file as RGB through the safe decoder."""
    return decode_bytes(read_file(path), max_pixels=max_pixels).image

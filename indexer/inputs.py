"""Image inputs the way transformers pipelines accept them: path, URL, PIL image, bytes, base64."""

from __future__ import annotations

import base64
import binascii
import os
import stat
import time

from PIL import Image

from indexer.decode import (
    DEFAULT_MAX_PIXELS,
    DecodeError,
    check_pixels,
    decode_bytes,
    file_kind,
    read_file,
    to_rgb,
)
from indexer.errors import PixdexError

ImageInput = str | os.PathLike | bytes | bytearray | Image.Image
DEFAULT_URL_TIMEOUT = 10.0
MAX_URL_BYTES = 64 * 1024 * 1024


def _http_only_opener():
    """A urllib opener that follows redirects only to http(s) (urllib would also follow one to ftp://).
    Built on first use: urllib.request costs a query that fetches nothing 0.02 s to import."""
    import urllib.request

    class HttpOnlyRedirects(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, req, fp, code, msg, headers, newurl):
            if not newurl.startswith(("http://", "https://")):
                raise PixdexError(f"refusing a redirect to {newurl[:80]}")
            return super().redirect_request(req, fp, code, msg, headers, newurl)

    return urllib.request.build_opener(HttpOnlyRedirects)


def fetch_url(url: str, timeout: float | None = DEFAULT_URL_TIMEOUT, max_bytes: int = MAX_URL_BYTES) -> bytes:
    """Download an http(s) image URL within `timeout` seconds in all (not per read) and `max_bytes`."""
    if not url.startswith(("http://", "https://")):
        raise PixdexError(f"cannot fetch {url[:80]}: only http(s) URLs are fetched")
    deadline = time.monotonic() + timeout if timeout is not None else None
    chunks, size = [], 0
    try:
        with _http_only_opener().open(url, timeout=timeout) as resp:
            while size <= max_bytes:
                if deadline is not None and time.monotonic() > deadline:
                    raise PixdexError(f"image URL {url} took longer than {timeout:g} s")
                chunk = resp.read(min(65536, max_bytes + 1 - size))
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
    except PixdexError:
        raise
    except Exception as exc:  # urllib raises many kinds; all mean "could not fetch"
        raise PixdexError(f"cannot fetch image URL {url}: "
                          f"{str(exc).splitlines()[0] if str(exc) else exc!r}") from None
    if size > max_bytes:
        raise PixdexError(f"image URL {url} is larger than {max_bytes:,} bytes")
    return b"".join(chunks)


def check_image_file(path: str) -> None:
    """Refuse a query image path that is missing or not a regular file (a FIFO would hang, /dev/zero never
    ends, a directory is a mistake) before any work starts; read_file refuses them again when reading."""
    try:
        st = os.stat(path)
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the path
        raise PixdexError(f"cannot read image {path}: {getattr(exc, 'strerror', None) or exc}") from None
    if not stat.S_ISREG(st.st_mode):
        raise PixdexError(f"cannot read image {path}: {file_kind(st.st_mode)}, not a regular file")


def read_image_file(path: str) -> bytes:
    """A query image file's bytes (a regular file only: read_file checks)."""
    try:
        return read_file(path)
    except DecodeError as exc:
        raise PixdexError(f"cannot read image {path}: {exc}") from None


def image_file_of(item: str) -> str | None:
    """The file path an image string names; None for a URL, a data: URI or (long, slash-free) base64."""
    if item.startswith(("http://", "https://", "data:image/")):
        return None
    if os.path.lexists(item) or len(item) < 256 or "/" in item[:64] and not item.endswith("="):
        return item
    return None


def input_bytes(item: ImageInput, timeout: float | None = DEFAULT_URL_TIMEOUT) -> tuple[bytes, str]:
    """The raw bytes of a non-PIL input and a short name for error messages."""
    if isinstance(item, (bytes, bytearray)):
        return bytes(item), "<bytes>"
    if isinstance(item, os.PathLike):
        item = os.fspath(item)
    if not isinstance(item, str):
        raise PixdexError(f"unsupported image input of type {type(item).__name__}")
    if item.startswith(("http://", "https://")):
        return fetch_url(item, timeout), item
    if item.startswith("data:image/") and "," in item:
        item = item.split(",", 1)[1]
    elif image_file_of(item) is not None:
        return read_image_file(item), item
    try:
        return base64.b64decode(item, validate=True), "<base64>"
    except (binascii.Error, ValueError):
        raise PixdexError("image input is neither an existing path, a URL nor base64: "
                          f"{item[:60]!r}") from None


def load_image_input(
    item: ImageInput, timeout: float | None = DEFAULT_URL_TIMEOUT,
    max_pixels: int | None = DEFAULT_MAX_PIXELS, option: str = "--max-pixels",
) -> Image.Image:
    """Any supported image input as an RGB PIL image; PixdexError names the input and the reason."""
    if isinstance(item, Image.Image):  # an opened, maybe not yet decoded image: its declared size first
        try:
            check_pixels(item.width, item.height, max_pixels, option)
        except DecodeError as exc:
            raise PixdexError(f"cannot decode image <PIL image>: {exc}") from None
        return to_rgb(item)
    data, name = input_bytes(item, timeout)
    try:
        return decode_bytes(data, max_pixels=max_pixels, option=option).image
    except DecodeError as exc:
        raise PixdexError(f"cannot decode image {name}: {exc}") from None


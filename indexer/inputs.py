"""Image inputs the way transformers pipelines accept them: path, URL, PIL image, bytes, base64."""

from __future__ import annotations

import base64
import binascii
import os
import urllib.request

from PIL import Image

from indexer.decode import DEFAULT_MAX_PIXELS, DecodeError, check_pixels, decode_bytes, read_file, to_rgb
from indexer.errors import PixdexError

ImageInput = str | os.PathLike | bytes | bytearray | Image.Image
DEFAULT_URL_TIMEOUT = 10.0
MAX_URL_BYTES = 64 * 1024 * 1024


def fetch_url(url: str, timeout: float | None = DEFAULT_URL_TIMEOUT) -> bytes:
    """Download an image URL with a timeout and a size cap."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            data = resp.read(MAX_URL_BYTES + 1)
    except Exception as exc:  # noqa: BLE001 - urllib raises many kinds; all mean "could not fetch"
        raise PixdexError(f"cannot fetch image URL {url}: {exc}") from None
    if len(data) > MAX_URL_BYTES:
        raise PixdexError(f"image URL {url} is larger than {MAX_URL_BYTES // 2**20} MiB")
    return data


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
    elif os.path.exists(item) or len(item) < 256 or "/" in item[:64] and not item.endswith("="):
        try:
            return read_file(item), item
        except DecodeError as exc:
            raise PixdexError(f"cannot read image {item}: {exc}") from None
    try:
        return base64.b64decode(item, validate=True), "<base64>"
    except (binascii.Error, ValueError):
        raise PixdexError(f"image input is neither an existing path, a URL nor base64: {item[:60]!r}") from None


def load_image_input(
    item: ImageInput, timeout: float | None = DEFAULT_URL_TIMEOUT, max_pixels: int | None = DEFAULT_MAX_PIXELS,
    option: str = "--max-pixels",
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


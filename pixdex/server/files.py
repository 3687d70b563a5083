"""Serving stored images safely: ids only, and bytes only when they are the bytes that were indexed."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import uuid
from pathlib import Path

from PIL import Image

from indexer.decode import DecodeError, decode_bytes


class NotServable(Exception):
    """The item's file is gone, changed, or not a regular file: refuse to serve it."""


def verified_bytes(item: dict) -> bytes:
    """The item's file bytes, only if their sha256 equals the hash stored at indexing time.

    This is what keeps the server to files that belong to the store: a path swapped for a symlink
    to another file, or a file changed since indexing, no longer matches and is refused.
    """
    path = item.get("path") or ""
    if not os.path.isabs(path) or not os.path.isfile(path):
        raise NotServable("the indexed file is not available")
    data = Path(path).read_bytes()
    if hashlib.sha256(data).hexdigest() != item.get("sha256"):
        raise NotServable("the file changed since it was indexed")
    return data


def thumbnail(item: dict, cache_dir: Path, edge: int, max_pixels: int) -> bytes:
    """A JPEG thumbnail (cached on disk in the store, keyed by content hash; not cached when the
    store is read-only or its disk is full)."""
    cached = cache_dir / f"{item['sha256']}-{edge}.jpg"
    if cached.is_file():
        return cached.read_bytes()
    data = verified_bytes(item)
    try:
        img = decode_bytes(data, max_pixels=max_pixels, draft_size=edge, option="--max-image-pixels").image
    except DecodeError as exc:
        raise NotServable(str(exc)) from None
    img.thumbnail((edge, edge), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=85)
    out = buf.getvalue()
    tmp = cached.with_name(f".tmp-{uuid.uuid4().hex}-{cached.name}")  # unique per thread
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(out)
        os.replace(tmp, cached)
    except OSError:  # a read-only store or a full disk: served, not cached
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
    return out


def media_type(data: bytes) -> str:
    from indexer.decode import sniff_format

    return f"image/{sniff_format(data[:16]) or 'octet-stream'}"

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


def thumbnail_cache(store: Path) -> Path | None:
    """Where thumbnails are cached: STORE/cache/thumbs, else (a read-only store) the user's pixdex cache,
    else nowhere (thumbnails are then made per request). Keyed by content hash, so sharing is safe."""
    from indexer.remote_store import cache_base

    for folder in (store / "cache" / "thumbs", cache_base() / "thumbs"):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            probe = folder / f".tmp-probe-{uuid.uuid4().hex}"
            probe.write_bytes(b"")
            probe.unlink()
            return folder
        except OSError:
            continue
    return None


def thumbnail(item: dict, cache_dir: Path | None, edge: int, max_pixels: int) -> bytes:
    """A JPEG thumbnail, cached in `cache_dir` (None: not cached) keyed by content hash."""
    cached = cache_dir / f"{item['sha256']}-{edge}.jpg" if cache_dir is not None else None
    if cached is not None and cached.is_file():
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
    if cached is not None:
        tmp = cached.with_name(f".tmp-{uuid.uuid4().hex}-{cached.name}")  # unique per thread
        try:
            tmp.write_bytes(out)
            os.replace(tmp, cached)
        except OSError:  # disk full or the folder turned read-only: serve it uncached
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
    return out


def media_type(data: bytes) -> str:
    from indexer.decode import sniff_format

    return f"image/{sniff_format(data[:16]) or 'octet-stream'}"

"""Bounds on every request, so one client cannot exhaust the server."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    """Per-request limits (documented defaults; `pixdex serve` flags change them)."""

    max_k: int = 200
    max_labels: int = 100
    max_query_chars: int = 1000
    max_queries: int = 16
    max_ids: int = 500  # ids per classify request
    max_upload_bytes: int = 10 * 1024 * 1024  # multipart bodies (plus 64 KiB for the form around the file)
    max_json_bytes: int = 1024 * 1024  # any other body: a 512-d embedding or 500 ids take ~10 KB
    max_image_pixels: int = 40_000_000
    thumbnail_edge: int = 256
    allow_url_queries: bool = False  # image:http(s)://... terms in queries (fetched within url_timeout)
    url_timeout: float = 5.0  # seconds for one image URL, all of it

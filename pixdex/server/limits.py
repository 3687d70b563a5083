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
    max_upload_bytes: int = 10 * 1024 * 1024
    max_image_pixels: int = 40_000_000
    thumbnail_edge: int = 256

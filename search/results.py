"""Search results as records, a text table, and a self-contained HTML page of thumbnails."""

from __future__ import annotations

import base64
import html
import io
import os
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from search.hits import Hit

THUMB_SIZE = 160


def records(results: Sequence[Sequence[Hit]]) -> list[list[dict]]:
    """For each query, a list of {"rank", "id", "path", "score"} (what `--json` prints)."""
    return [[h.to_dict() for h in hits] for hits in results]


def format_table(labels: Sequence[str], results: Sequence[Sequence[Hit]]) -> str:
    """A readable table per query: rank, score, path (with the query as a heading when there are several)."""
    lines: list[str] = []
    for n, (label, hits) in enumerate(zip(labels, results)):
        if len(labels) > 1 or label:
            if n:
                lines.append("")
            lines.append(f"query {n + 1}: {label}")
        if not hits:
            lines.append("  (no results)")
            continue
        width = max(4, len(str(max(h.rank for h in hits))))
        cols = list(hits[0].values)  # attached metadata (e.g. the --sort column), shown before the path
        sizes = [max(len(c), *(len(_cell(h.values.get(c))) for h in hits)) for c in cols]
        extra = "".join(f"{c:<{n}}  " for c, n in zip(cols, sizes))
        lines.append(f"{'rank':>{width}}  {'score':>7}  {extra}path")
        for h in hits:
            cells = "".join(f"{_cell(h.values.get(c)):<{n}}  " for c, n in zip(cols, sizes))
            lines.append(f"{h.rank:>{width}}  {h.score:7.4f}  {cells}{h.path}")
    return "\n".join(lines)


def _cell(v) -> str:
    return "-" if v is None else str(v)


def thumbnail_data_uri(image: Any, size: int = THUMB_SIZE) -> str | None:
    """A small base64 JPEG data URI for an image path/PIL image, or None when it cannot be read."""
    from PIL import Image

    from indexer.decode import DEFAULT_MAX_PIXELS, DecodeError, check_pixels, decode_bytes, read_file

    try:
        if isinstance(image, Image.Image):
            check_pixels(image.width, image.height, DEFAULT_MAX_PIXELS)
            img = image.copy()
        else:  # the safe decoder: regular files only, declared size checked before any pixel is decoded
            img = decode_bytes(read_file(os.fspath(image)), DEFAULT_MAX_PIXELS, draft_size=size).image
        img.thumbnail((size, size))
        buf = io.BytesIO()
        img.convert("RGB").save(buf, "JPEG", quality=80)
    except (DecodeError, OSError, ValueError, Image.DecompressionBombError):
        return None  # a placeholder, never a broken page
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


_CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em; background: #fafafa; color: #222; }
h1 { font-size: 1.3em; } .meta { color: #666; font-size: .85em; }
section { margin: 1.5em 0; padding: 1em; background: #fff; border: 1px solid #ddd; border-radius: 6px; }
h2 { font-size: 1.05em; margin: 0 0 .6em 0; font-family: ui-monospace, monospace; }
.grid { display: flex; flex-wrap: wrap; gap: 10px; }
figure { margin: 0; width: SIZEpx; font-size: .75em; }
figure img, .missing { width: SIZEpx; height: SIZEpx; object-fit: contain; background: #eee; display: block; }
.missing { display: flex; align-items: center; justify-content: center; color: #999; }
figcaption { overflow-wrap: anywhere; } .score { font-weight: 600; }
.query img { width: 96px; height: 96px; object-fit: contain; vertical-align: middle; margin-right: .6em; }
.none { color: #999; }
"""


def _figure(hit: Hit, size: int) -> str:
    uri = thumbnail_data_uri(hit.path, size)
    img = (f'<img src="{uri}" alt="{html.escape(hit.path)}" loading="lazy">' if uri
           else '<div class="missing">no preview</div>')
    extra = "".join(f'<span class="meta">{html.escape(str(v))}</span> '
                    for v in hit.values.values() if v is not None)
    return (f'<figure title="{html.escape(hit.path)}">{img}<figcaption>#{hit.rank} '
            f'<span class="score">{hit.score:.3f}</span> {html.escape(Path(hit.path).name)} {extra}'
            f'<span class="meta">(id {hit.id})</span></figcaption></figure>')


def write_html(path: str | os.PathLike, queries: Sequence[Any], results: Sequence[Sequence[Hit]],
               store: Any = None, title: str = "pixdex search", thumb_size: int = THUMB_SIZE) -> Path:
    """Write a self-contained HTML page (thumbnails inlined as base64 JPEG) with one section per query.

    queries: labels (str) or Query objects, one per entry of results; store: a Store, Searcher or path
    (only used to describe the store in the page header). Returns the written path.
    """
    if len(queries) != len(results):
        raise ValueError("queries and results differ in length")
    header = ""
    if store is not None:
        st = getattr(store, "store", store)
        if hasattr(st, "manifest"):
            header = (f"store {html.escape(str(st.path))} · {st.count} items · model "
                      f"{html.escape(str(st.model.get('name')))} · index "
                      f"{html.escape(str(st.index_info.get('type')))}")
        else:
            header = f"store {html.escape(str(st))}"
    made = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             f"<style>{_CSS.replace('SIZE', str(thumb_size))}</style></head><body>",
             f"<h1>{html.escape(title)}</h1><p class='meta'>{header} · {made}</p>"]
    for q, hits in zip(queries, results):
        label = getattr(q, "label", None) or str(q)
        query_img = ""
        qpath = _query_image_path(q)
        if qpath and (uri := thumbnail_data_uri(qpath, 96)):
            query_img = f'<img src="{uri}" alt="query image">'
        parts.append(f"<section class='query'><h2>{query_img}{html.escape(label)}</h2>")
        if hits:
            parts.append("<div class='grid'>" + "".join(_figure(h, thumb_size) for h in hits) + "</div>")
        else:
            parts.append("<p class='none'>no results</p>")
        parts.append("</section>")
    parts.append("</body></html>\n")
    return write_page(path, parts)


def write_page(path: str | os.PathLike, parts: list[str]) -> Path:
    """Write a page's parts to `path` (its folders created), returning the path."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(parts), encoding="utf-8")
    return out


def _query_image_path(q: Any) -> str | None:
    """The image file of a single-image query (shown next to its results), if any."""
    terms = getattr(q, "terms", None)
    if terms is not None:
        imgs = [t.value for t in terms if t.kind == "image" and isinstance(t.value, str)]
        return imgs[0] if len(terms) == 1 and imgs else None
    if isinstance(q, (str, os.PathLike)) and os.path.isfile(os.fspath(q)):
        return os.fspath(q)
    return None

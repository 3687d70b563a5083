"""The duplicate finder's report: a text listing and a self-contained HTML page, groups side by side."""

from __future__ import annotations

import html
import os
from datetime import UTC, datetime
from pathlib import Path

from search.duplicates import DupGroup, DupItem, DupReport
from search.results import THUMB_SIZE, thumbnail_data_uri, write_page

_CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em; background: #fafafa; color: #222; }
h1 { font-size: 1.3em; } .meta { color: #666; font-size: .85em; }
section { margin: 1em 0; padding: .8em 1em; background: #fff; border: 1px solid #ddd; border-radius: 6px; }
h2 { font-size: 1em; margin: 0 0 .6em 0; }
.row { display: flex; flex-wrap: wrap; gap: 10px; }
figure { margin: 0; width: SIZEpx; font-size: .75em; border: 2px solid transparent; padding: 2px; }
figure.keeper { border-color: #0a6b2b; }
figure img, .missing { width: SIZEpx; height: SIZEpx; object-fit: contain; background: #eee; display: block; }
.missing { display: flex; align-items: center; justify-content: center; color: #999; }
figcaption { overflow-wrap: anywhere; } .keep { color: #0a6b2b; font-weight: 700; }
"""


def describe(item: DupItem) -> str:
    """'4032x3024, 2.1 MB, taken 2024-06-01T12:00:00'."""
    taken = f", taken {item.taken}" if item.taken else ""
    size = f"{item.bytes / 1e6:.1f} MB" if item.bytes >= 1e6 else f"{item.bytes / 1e3:.0f} KB"
    return f"{item.width}x{item.height}, {size}{taken}"


def format_report(report: DupReport) -> str:
    """The groups as text: the keeper first (marked keep), then the others; the counts last."""
    lines = []
    for n, g in enumerate(report.groups, 1):
        lines.append(f"group {n} ({g.kind}, {len(g.items)} files, lowest cosine {g.score:.3f})")
        lines.append(f"  keep    {g.keeper.path}  ({describe(g.keeper)})")
        for o in g.others:
            lines.append(f"  copy    {o.path}  ({describe(o)})")
    if not report.groups:
        lines.append("no duplicates found")
    lines.append(report.line())
    return "\n".join(lines)


def _figure(item: DupItem, keeper: bool, size: int) -> str:
    uri = thumbnail_data_uri(item.path, size)
    img = (
        f'<img src="{uri}" alt="{html.escape(Path(item.path).name)}" loading="lazy">'
        if uri
        else '<div class="missing">no preview</div>'
    )
    badge = '<span class="keep">keep</span> ' if keeper else ""
    return (
        f'<figure class="{"keeper" if keeper else "copy"}" title="{html.escape(item.path)}">{img}<figcaption>'
        f'{badge}{html.escape(Path(item.path).name)}<br><span class="meta">{html.escape(describe(item))} '
        f"(id {item.id})</span></figcaption></figure>"
    )


def _section(n: int, g: DupGroup, size: int) -> str:
    figures = _figure(g.keeper, True, size) + "".join(_figure(o, False, size) for o in g.others)
    return (
        f"<section class='group'><h2>group {n}: {len(g.items)} "
        f"{'exact copies' if g.kind == 'exact' else 'near-duplicates'}"
        f" <span class='meta'>lowest cosine {g.score:.3f}</span></h2>"
        f"<div class='row'>{figures}</div></section>"
    )


def write_duplicates_html(
    path: str | os.PathLike, report: DupReport, store: str = "", thumb_size: int = THUMB_SIZE
) -> Path:
    """Write the groups as a self-contained page (thumbnails inlined), keeper first in each row."""
    made = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>pixdex duplicates</title>",
        f"<style>{_CSS.replace('SIZE', str(thumb_size))}</style></head><body>",
        f"<h1>pixdex duplicates</h1><p class='meta'>store {html.escape(store)} · "
        f"{html.escape(report.line())} · {made}. Nothing was deleted: the keeper is a suggestion "
        "(largest resolution, then earliest taken).</p>",
    ]
    parts += [_section(n, g, thumb_size) for n, g in enumerate(report.groups, 1)]
    if not report.groups:
        parts.append("<p>no duplicates found</p>")
    parts.append("</body></html>\n")
    return write_page(path, parts)

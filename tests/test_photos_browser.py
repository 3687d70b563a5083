"""The web page on a photo library: a date filter, the sort control, dates on results, duplicate groups."""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("playwright.sync_api")

from serving import ARTIFACTS, browser_page


@pytest.mark.slow
@pytest.mark.browser
def test_date_filter_sort_and_duplicates_in_browser(tmp_path, shapes_clip):
    from indexer.job import index_collection
    from pixdex.demo.photos import ALBUM, write_album
    from pixdex.server.app import create_app

    write_album(tmp_path / "photos")
    index_collection(
        [str(tmp_path / "photos")], tmp_path / "store", model=shapes_clip, progress=False, workers=0
    )
    with browser_page(create_app(tmp_path / "store")) as (base, page):

        page.fill("#where", "taken >= '2024-01-01'")
        page.select_option("#sort", "-taken")
        page.fill("#q", "a photo")
        page.press("#q", "Enter")
        page.wait_for_selector("#status:has-text('results for')")
        dates = page.eval_on_selector_all("#results time.date", "els => els.map(e => e.dateTime)")
        dated_2024 = sorted(
            (s.taken.isoformat() + (s.offset or "") for _, s in ALBUM if s.taken.year >= 2024), reverse=True
        )
        # newest first; the byte-identical copy carries the same date as its original
        assert dates == sorted([*dated_2024, "2024-06-01T12:00:00+02:00"], reverse=True)
        assert page.inner_text("#results li:first-child time") == "2025-01-03 15:20"

        page.select_option("#sort", "taken")
        page.press("#q", "Enter")
        page.wait_for_function(
            "document.querySelector('#results li:first-child time')?.textContent === '2024-03-02 09:05'"
        )

        page.fill("#where", "taken >= 'soon'")
        page.press("#q", "Enter")
        page.wait_for_selector("#status.error:has-text('holds times')")

        page.click("#dup-btn")
        page.wait_for_selector("#dup-groups .dup-group")
        groups = page.eval_on_selector_all("#dup-groups .dup-group", "els => els.length")
        assert groups == 1
        figures = page.eval_on_selector_all(".dup-group figure", "els => els.map(e => e.className)")
        assert figures == ["keeper", "copy", "copy", "copy"]
        assert "IMG_20240601_120000.jpg" in page.inner_text(".dup-group figure.keeper figcaption")
        page.wait_for_function(
            "[...document.querySelectorAll('.dup-group img')].every(i => i.complete && i.naturalWidth > 0)"
        )
        # side by side: one row, left to right
        xs = page.eval_on_selector_all(
            ".dup-group figure", "els => els.map(e => e.getBoundingClientRect().left)"
        )
        ys = page.eval_on_selector_all(
            ".dup-group figure", "els => els.map(e => e.getBoundingClientRect().top)"
        )
        assert xs == sorted(xs) and len(set(ys)) == 1
        page.screenshot(path=str(ARTIFACTS / "web-duplicates.png"), full_page=True)

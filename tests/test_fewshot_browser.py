"""Teach by example on the web page, in a real browser: tick results, say what they are, tags follow."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("playwright.sync_api")

from serving import ARTIFACTS, browser_page


@pytest.mark.slow
@pytest.mark.browser
def test_teach_by_example_loop_in_browser(shapes_store):
    from pixdex.demo.world import read_labels
    from pixdex.server.app import create_app

    images = shapes_store.parent / "images"
    palette = {str((images / r["file"]).resolve()): r["palette"] for r in read_labels(images / "labels.csv")}
    with browser_page(create_app(shapes_store), 1280, 1000) as (base, page):
        page.select_option("#k", "48")
        page.fill("#q", "a circle")
        page.keyboard.press("Enter")
        page.wait_for_selector("#status:has-text('48 results for')")
        page.wait_for_function("document.querySelectorAll('#results li input.pick').length === 48")
        page.fill("#labels", "warm, cool")
        page.fill("#template", "a photo of a {} coloured shape.")
        ids = [int(x) for x in page.eval_on_selector_all("#results li", "els => els.map(e => e.dataset.id)")]
        truth = {i: palette[str(Path(page.request.get(f"{base}/api/items/{i}").json()["path"]).resolve())]
                 for i in ids}
        single = [i for i in ids if ";" not in truth[i]]
        taught = set()
        for label in ("warm", "cool"):
            for i in [i for i in single if truth[i] == label][:4]:
                page.check(f'#results li[data-id="{i}"] input.pick')
                taught.add(i)
            page.select_option("#teach-label", label)
            page.click("#teach-btn")
        page.wait_for_selector("#teach-info:has-text('Taught by warm 4, cool 4')")
        page.wait_for_function("document.querySelectorAll('#teach-suggest li').length === 6")
        tags = dict(zip(ids, page.eval_on_selector_all("#results li .tag",
                                                       "els => els.map(e => e.textContent)")))
        others = [i for i in single if i not in taught]
        right = sum(tags[i].split(" ")[0] == truth[i] for i in others)
        assert right >= 0.75 * len(others), [(tags[i], truth[i]) for i in others]
        assert all(tags[i].startswith("example: ") for i in taught)
        page.screenshot(path=str(ARTIFACTS / "web-teach-by-example.png"), full_page=True)
        page.click("#teach-show")
        page.wait_for_selector("#status:has-text('images to label next')")
        assert page.locator("#results li").count() == 6

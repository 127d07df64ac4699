"""The browser harness itself: the watch behind the ``page`` fixture catches what it promises to,
so a green viewer test means no console error, page error or network request really happened."""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page

from tests.browser.conftest import screenshot_path, watch

pytestmark = pytest.mark.browser

NOISY_PAGE = """<!DOCTYPE html><html><head><meta charset="utf-8"></head><body>
<img src="data:image/gif;base64,R0lGODlhAQABAAAAACw=">
<script>
console.log("fine");
console.error("deliberate console error");
fetch("http://example.invalid/x.json").catch(() => {});
setTimeout(() => { throw new Error("deliberate page error"); }, 0);
setTimeout(() => { document.body.dataset.ready = "1"; }, 50);
</script></body></html>
"""


def test_watch_records_console_page_and_network_problems(browser: Browser, tmp_path: Path) -> None:
    html = tmp_path / "noisy.html"
    html.write_text(NOISY_PAGE, encoding="utf-8")
    context = browser.new_context()
    try:
        page = context.new_page()
        problems = watch(context, page)
        page.goto(html.as_uri())
        page.wait_for_function("document.body.dataset.ready === '1'")
        page.wait_for_timeout(100)  # let the aborted fetch's console error arrive
    finally:
        context.close()
    blocked = [p for p in problems if p.startswith("network request blocked:")]
    assert blocked == ["network request blocked: http://example.invalid/x.json"]
    assert "console error: deliberate console error" in problems
    assert [p for p in problems if p.startswith("page error:")] == ["page error: deliberate page error"]
    assert not any("fine" in p or "data:image" in p or "noisy.html" in p for p in problems)


def test_clean_local_page_records_nothing(page: Page, tmp_path: Path) -> None:
    html = tmp_path / "clean.html"
    html.write_text(
        '<!DOCTYPE html><html><body><img src="data:image/gif;base64,R0lGODlhAQABAAAAACw=">'
        "<script>document.body.dataset.ready = '1'</script></body></html>",
        encoding="utf-8",
    )
    page.goto(html.as_uri())
    page.wait_for_function("document.body.dataset.ready === '1'")
    assert page.evaluate("document.images.length") == 1


def test_screenshot_names_are_file_safe() -> None:
    assert screenshot_path("test_view[edge-circuit/eap]").name == "test_view_edge-circuit_eap.png"

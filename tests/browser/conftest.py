"""Headless Chromium for the browser tests: Debian's binary driven through Playwright, offline.

Playwright's own browser download cannot reach its server on the build machines, so the tests
launch the system chromium (``scripts/ensure-chromium.sh`` installs it; ``make test`` runs that).
A missing binary fails the tests instead of skipping them, so the browser tier never silently
passes without a browser. Every page gets a watch that fails the test on a console error, an
uncaught page error or any request that is not ``file:`` or ``data:`` (the viewer must work offline),
and a screenshot under ``build/screenshots/`` to look at afterwards. A test module of pages served by
a running service overrides the ``service_origin`` fixture: requests to that one origin then pass too.
A test that provokes a console error on purpose says so with ``console_allowance.allow(pattern)``.
"""

from __future__ import annotations

import re
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from playwright.sync_api import Browser, BrowserContext, ConsoleMessage, Page, Route, sync_playwright

from circuitd.viewer.chromium import ChromiumNotFound, chromium_path, launch_args

LOCAL_SCHEMES = ("file:", "data:")
SCREENSHOTS = Path(__file__).resolve().parents[2] / "build" / "screenshots"
_PROBLEMS = pytest.StashKey[list[str]]()


def find_chromium() -> str:
    """The chromium binary (:func:`circuitd.viewer.chromium.chromium_path`); fails the test with
    one line when there is none."""
    try:
        return chromium_path()
    except ChromiumNotFound as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    """One headless Chromium for the session; ``--no-sandbox`` as root, where Chromium's sandbox
    refuses to start."""
    args = launch_args()
    executable = find_chromium()
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, headless=True, args=args)
        yield launched
        launched.close()


@dataclass
class ConsoleAllowance:
    """Console errors one test provokes on purpose (a regular expression each, e.g. Chromium's line
    for a deliberate 422) and the lines they let through, for the test to count."""

    patterns: list[re.Pattern[str]] = field(default_factory=list)
    matched: list[str] = field(default_factory=list)

    def allow(self, pattern: str) -> None:
        self.patterns.append(re.compile(pattern))

    def takes(self, line: str) -> bool:
        if any(p.search(line) for p in self.patterns):
            self.matched.append(line)
            return True
        return False


def watch(
    context: BrowserContext, page: Page, origin: str | None = None, allowance: ConsoleAllowance | None = None
) -> list[str]:
    """Record what should never happen on a page, one readable line each: console errors (but those
    ``allowance`` takes), uncaught exceptions, and requests that leave ``file:``/``data:`` and, when
    given, ``origin`` (e.g. ``http://127.0.0.1:8000``); those are aborted."""
    problems: list[str] = []

    def route(r: Route) -> None:
        url = r.request.url
        if url.startswith(LOCAL_SCHEMES) or (origin is not None and url.startswith(f"{origin}/")):
            r.continue_()
        else:
            problems.append(f"network request blocked: {url}")
            r.abort()

    def console(message: ConsoleMessage) -> None:
        if message.type == "error" and not (allowance is not None and allowance.takes(message.text)):
            problems.append(f"console error: {message.text}")

    context.route("**/*", route)
    page.on("console", console)
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    return problems


def screenshot_path(test_name: str) -> Path:
    """``build/screenshots/<test name>.png``, parametrization brackets and all made file-safe."""
    return SCREENSHOTS / f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', test_name).strip('_')}.png"


@pytest.fixture
def service_origin() -> str | None:
    """The one origin besides ``file:``/``data:`` a page may reach: none here; a module testing a
    running service's pages overrides this fixture with that service's ``http://host:port``."""
    return None


@pytest.fixture
def console_allowance() -> ConsoleAllowance:
    """Nothing allowed unless the test calls ``allow``."""
    return ConsoleAllowance()


@pytest.fixture
def page(
    browser: Browser, request: pytest.FixtureRequest, service_origin: str | None,
    console_allowance: ConsoleAllowance,
) -> Iterator[Page]:
    """A fresh page under :func:`watch`; the test fails on any problem it recorded."""
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    new_page = context.new_page()
    request.node.stash[_PROBLEMS] = watch(context, new_page, service_origin, console_allowance)
    try:
        yield new_page
    finally:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        new_page.screenshot(path=screenshot_path(request.node.name), full_page=True)
        context.close()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, object, object]:
    """Fail the test itself (not its teardown) when its page recorded a problem."""
    result = yield
    problems = item.stash.get(_PROBLEMS, [])
    if problems:
        pytest.fail(f"{len(problems)} browser problem(s): " + " | ".join(problems), pytrace=False)
    return result

"""The web UI's HTTP surface in process: the shell and its files are served without a key under
a strict Content-Security-Policy, only from the table read at import (no path from a request
reaches the disk), and ``/`` and ``/ui`` lead to ``/ui/``. The page itself is tested in
tests/browser/test_ui.py."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.routes.ui import CSP, STATIC_FILES
from circuitd.settings import get_settings

STATIC_DIR = Path(__file__).resolve().parents[2] / "circuitd" / "viewer" / "static"
SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
}


@pytest.fixture
def client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    """The app on its own data dir with auth on (no CIRCUITD_AUTH_DISABLED) and no key sent."""
    for name in [k for k in os.environ if k.startswith("CIRCUITD_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("CIRCUITD_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("CIRCUITD_DATABASE_URL", f"sqlite:///{tmp_path / 'circuitd.db'}")
    get_settings.cache_clear()
    yield TestClient(create_app())
    get_settings.cache_clear()


def security_headers(headers: httpx.Headers) -> dict[str, str | None]:
    return {name: headers.get(name) for name in SECURITY_HEADERS}


def test_the_shell_is_served_with_the_security_headers_and_no_key(client: TestClient) -> None:
    assert CSP == SECURITY_HEADERS["content-security-policy"]
    r = client.get("/ui/")
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/html; charset=utf-8"
    assert security_headers(r.headers) == SECURITY_HEADERS
    assert r.content == (STATIC_DIR / "app.html").read_bytes()
    assert client.get("/v1/jobs").status_code == 401  # the data stays behind the key


def test_the_shell_has_no_inline_code_and_loads_only_served_files(client: TestClient) -> None:
    html = client.get("/ui/").text
    scripts = re.findall(r"<script\b([^>]*)>", html)
    assert len(scripts) == 5 and all('src="/ui/static/' in attrs for attrs in scripts)
    assert "<style" not in html and not re.search(r"\s(style|on[a-z]+)=", html)  # no inline style or handler
    assert '<meta id="__________cytoscape_stylesheet">' in html  # else cytoscape injects a <style>
    loaded = re.findall(r'(?:src|href)="/ui/static/([^"]+)"', html)
    assert loaded == [
        "vendor/uPlot.min.css", "viewer.css", "app.css", "vendor/cytoscape.min.js",
        "vendor/cytoscape-dagre.min.js", "vendor/uPlot.iife.min.js", "viewer.js", "app.js",
    ]
    for name in loaded:
        r = client.get(f"/ui/static/{name}")
        assert r.status_code == 200, name
        assert r.content == (STATIC_DIR / name).read_bytes(), name
        want = "text/javascript" if name.endswith(".js") else "text/css"
        assert r.headers["content-type"] == f"{want}; charset=utf-8", name
        assert security_headers(r.headers) == SECURITY_HEADERS, name


def test_the_static_table_holds_exactly_the_scripts_and_styles_of_the_tree() -> None:
    on_disk = {
        p.relative_to(STATIC_DIR).as_posix() for p in STATIC_DIR.rglob("*") if p.suffix in (".js", ".css")
    }
    assert set(STATIC_FILES) == on_disk
    assert {"app.js", "app.css", "viewer.js", "vendor/cytoscape.min.js"} <= on_disk


@pytest.mark.parametrize(
    "path",
    [
        "/ui/static/nope.js",
        "/ui/static/app.html",  # the shell is /ui/ only
        "/ui/static/vendor/LICENSE.uplot",  # in the tree, not a file the page loads
        "/ui/static/%2e%2e/html.py",  # ../html.py once decoded
        "/ui/static/..%2f..%2f..%2fpyproject.toml",
        "/ui/static/vendor/%2e%2e/viewer.js",  # a served file, but only under its own name
        "/ui/static//etc/passwd",
        "/ui/static/",
    ],
)
def test_any_other_static_name_is_404(client: TestClient, path: str) -> None:
    r = client.get(path)
    assert r.status_code == 404, path
    assert r.json()["code"] == "not_found"
    assert security_headers(r.headers) == SECURITY_HEADERS


@pytest.mark.parametrize("path", ["/", "/ui"])
def test_root_and_bare_ui_redirect_to_the_shell(client: TestClient, path: str) -> None:
    r = client.get(path, follow_redirects=False)
    assert r.status_code == 307
    assert r.headers["location"] == "/ui/"
    assert security_headers(r.headers) == SECURITY_HEADERS
    assert client.get(path).url.path == "/ui/"


def test_the_ui_is_not_part_of_the_api_document(client: TestClient) -> None:
    paths = set(client.get("/openapi.json").json()["paths"])
    assert "/v1/jobs" in paths
    assert not any(p == "/" or p.startswith("/ui") for p in paths)

"""The web UI: ``/ui/`` serves a static single-page app that talks to ``/v1`` with the user's key.

The shell and its scripts hold no data, so they need no key; every data call of the page sends
``Authorization: Bearer``. The files are read once, at import, from the package's
``circuitd/viewer/static`` tree into a name -> bytes table: a request names an entry of that
table and is never joined onto a path on disk, so no ``../`` can reach another file. A strict
Content-Security-Policy allows only this origin's scripts, styles and fetches.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.resources import files
from importlib.resources.abc import Traversable

from fastapi import APIRouter, status
from fastapi.responses import RedirectResponse, Response

from api.errors import problem

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
UI_HEADERS: dict[str, str] = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",  # revalidate: an upgraded service serves its new scripts at once
}
MEDIA_TYPES: dict[str, str] = {  # what the page loads; other files of the tree (licences) are not served
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
}
SHELL = "app.html"


@dataclass(frozen=True)
class StaticFile:
    """One servable file: its bytes and the media type it is sent with."""

    body: bytes
    media_type: str


def _collect(folder: Traversable, prefix: str = "") -> dict[str, StaticFile]:
    """Every .js and .css file under ``folder``, by its ``/``-separated name relative to the tree."""
    found: dict[str, StaticFile] = {}
    for entry in folder.iterdir():
        name = f"{prefix}{entry.name}"
        if entry.is_dir():
            found.update(_collect(entry, f"{name}/"))
            continue
        media_type = next((t for ext, t in MEDIA_TYPES.items() if entry.name.endswith(ext)), None)
        if media_type is not None:
            found[name] = StaticFile(entry.read_bytes(), media_type)
    return found


_TREE = files("circuitd.viewer") / "static"
STATIC_FILES: dict[str, StaticFile] = _collect(_TREE)
SHELL_HTML: bytes = (_TREE / SHELL).read_bytes()

router = APIRouter(tags=["ui"])


def _redirect_to_shell() -> Response:
    return RedirectResponse("/ui/", status_code=status.HTTP_307_TEMPORARY_REDIRECT, headers=UI_HEADERS)


@router.get("/")
def root() -> Response:
    """The service's root opens the UI."""
    return _redirect_to_shell()


@router.get("/ui")
def ui_without_slash() -> Response:
    """``/ui`` -> ``/ui/``, so the shell's relative paths and the browser's base agree."""
    return _redirect_to_shell()


@router.get("/ui/")
def shell() -> Response:
    """The app shell: markup only, its scripts and styles come from ``/ui/static/``."""
    return Response(SHELL_HTML, media_type="text/html; charset=utf-8", headers=UI_HEADERS)


@router.get("/ui/static/{name:path}")
def static_file(name: str) -> Response:
    """A file of the table read at import; any other name (``../``, a licence, a typo) is 404."""
    found = STATIC_FILES.get(name)
    if found is None:
        return problem(status.HTTP_404_NOT_FOUND, f"no UI file {name!r}", "not_found", headers=UI_HEADERS)
    return Response(found.body, media_type=found.media_type, headers=UI_HEADERS)

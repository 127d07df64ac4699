"""Where the headless Chromium that draws circuitd's pages is: Debian's ``chromium`` package
(``scripts/ensure-chromium.sh`` installs it), or the binary ``$CIRCUITD_CHROMIUM`` names. The
browser tests and ``bench/viewer.py`` launch it through Playwright with these settings."""

from __future__ import annotations

import os
import shutil

CHROMIUM_NAMES = ("chromium", "chromium-browser")


class ChromiumNotFound(LookupError):
    """No usable Chromium binary; the message says how to get one, in one line."""


def chromium_path() -> str:
    """The Chromium binary: ``$CIRCUITD_CHROMIUM`` if set, else ``chromium`` or
    ``chromium-browser`` on PATH."""
    override = os.environ.get("CIRCUITD_CHROMIUM")
    if override:
        path = shutil.which(override)
        if path is None:
            raise ChromiumNotFound(f"CIRCUITD_CHROMIUM={override!r} is not an executable")
        return path
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path is not None:
            return path
    raise ChromiumNotFound(
        "no chromium binary (chromium, chromium-browser or $CIRCUITD_CHROMIUM): "
        "run `bash scripts/ensure-chromium.sh` (make test does)"
    )


def launch_args() -> list[str]:
    """Chromium's flags: without its sandbox as root, where the sandbox cannot start."""
    return ["--no-sandbox"] if os.geteuid() == 0 else []

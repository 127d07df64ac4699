"""Files of a model directory: read from inside it, never through a name or link that leads
elsewhere (a directory is only as trusted as the root that admitted it)."""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

from circuitd.errors import ModelError


def file_in_dir(folder: Path, name: str, where: str) -> Path:
    """``folder / name``, refused in one line naming ``where`` unless ``name`` is a relative
    path without ``..`` whose real path (symlinks resolved) lies inside ``folder``: the weights
    of a model directory, and the shards its index names, are read from inside it (so from
    inside ``CIRCUITD_MODEL_ROOTS`` under the service's rules), never from elsewhere. A
    hub-cache snapshot (``models--org--name/snapshots/<rev>``) may also reach its repository's
    ``blobs``, where the hub client keeps the files its snapshot links to."""
    rel = PurePosixPath(name)
    if not name or rel.is_absolute() or ".." in rel.parts:
        raise ModelError(f"{where}: '{name}' is not a relative file name inside {folder}")
    real_dir = Path(os.path.realpath(folder))
    allowed = [real_dir]
    if real_dir.parent.name == "snapshots" and real_dir.parent.parent.name.startswith("models--"):
        allowed.append(real_dir.parent.parent / "blobs")
    path = folder / rel
    real = Path(os.path.realpath(path))
    if not any(real.is_relative_to(a) for a in allowed):
        raise ModelError(f"{where}: '{name}' leads outside {folder} (a symbolic link)")
    if not real.is_file():
        raise ModelError(f"{where}: '{name}' is not a file in {folder}")
    return path

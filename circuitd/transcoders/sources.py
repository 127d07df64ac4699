"""Where a job's transcoder set comes from: the zoo model's shipped set, a directory in
circuit-tracer's layout, or a hub repository; loaded once per (directory, device, dtype)."""

from __future__ import annotations

import threading
from pathlib import Path

from circuitd.errors import CircuitdError
from circuitd.models.adapter import ModelAdapter
from circuitd.models.ids import ZOO_DIR, parse_model_id
from circuitd.transcoders.io import load
from circuitd.transcoders.modules import TranscoderSet

TRANSCODERS_SUBDIR = "transcoders"

_CACHE: dict[tuple[str, str, str], TranscoderSet] = {}
_LOCK = threading.Lock()


def default_transcoders(model_id: str) -> Path | None:
    """The transcoder set shipped with a zoo model, if any."""
    ref = parse_model_id(model_id)
    path = ZOO_DIR / ref.name / TRANSCODERS_SUBDIR
    return path if ref.kind == "zoo" and (path / "config.yaml").is_file() else None


def _hub_snapshot(repo_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id))
    except Exception as exc:  # offline, unknown repo, no permission: one line either way
        first = " ".join(str(exc).split())[:200]
        raise CircuitdError(f"transcoders: cannot fetch hub repo '{repo_id}': {first}") from exc


def load_transcoders(source: str | None, model: ModelAdapter) -> TranscoderSet:
    """``source``: a directory in circuit-tracer's layout, a hub repo id (``org/name``), or None
    for the model's shipped set. Cached by (directory, device, dtype), like models."""
    if source is None:
        path = default_transcoders(model.model_id)
        if path is None:
            raise CircuitdError(
                f"transcoders: {model.model_id} ships no transcoders; give a directory or hub id"
            )
    elif Path(source).expanduser().is_dir():
        path = Path(source).expanduser()
    elif source.count("/") == 1 and not source.startswith((".", "/", "~")):
        path = _hub_snapshot(source)
    else:
        raise CircuitdError(f"transcoders: '{source}' is neither a directory nor a hub repo id (org/name)")
    key = (str(path.resolve()), str(model.device), str(model.dtype))
    with _LOCK:
        if key not in _CACHE:
            _CACHE[key] = load(path).to(model.device, model.dtype)
        return _CACHE[key]

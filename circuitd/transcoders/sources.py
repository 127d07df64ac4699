"""Where a job's transcoder set comes from: the zoo model's shipped set, a directory in
circuit-tracer's layout, or a hub repository (only its config and safetensors files are fetched).
Loaded sets are cached by (directory, device, dtype), at most ``CIRCUITD_TRANSCODER_CACHE_SIZE``
of them (least recently used dropped). Who may name which source is :mod:`circuitd.access`'s rule."""

from __future__ import annotations

from pathlib import Path

from circuitd.access import is_hub_repo
from circuitd.errors import CircuitdError, first_line
from circuitd.gpu_memory import free_cuda_of
from circuitd.lru import LRU
from circuitd.models.adapter import ModelAdapter
from circuitd.models.ids import ZOO_DIR, parse_model_id
from circuitd.settings import get_settings
from circuitd.transcoders.io import CONFIG_FILE, load
from circuitd.transcoders.modules import TranscoderSet

TRANSCODERS_SUBDIR = "transcoders"
HUB_FILES = [CONFIG_FILE, "*.safetensors"]
"""What a hub snapshot fetches: the set's config and weights at the repository's top level."""

_CACHE: LRU[tuple[str, str, str], TranscoderSet] = LRU(
    lambda: get_settings().transcoder_cache_size,
    serial=True,
    on_drop=free_cuda_of(lambda tset: str(tset.device)),
)


def default_transcoders(model_id: str) -> Path | None:
    """The transcoder set shipped with a zoo model, if any."""
    ref = parse_model_id(model_id)
    path = ZOO_DIR / ref.name / TRANSCODERS_SUBDIR
    return path if ref.kind == "zoo" and (path / "config.yaml").is_file() else None


def _hub_snapshot(repo_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, allow_patterns=HUB_FILES, ignore_patterns=["*/*"]))
    except Exception as exc:  # offline, unknown repo, no permission: one line either way
        raise CircuitdError(f"transcoders: cannot fetch hub repo '{repo_id}': {first_line(exc)}") from exc


def load_transcoders(source: str | None, model: ModelAdapter) -> TranscoderSet:
    """``source``: a directory in circuit-tracer's layout, a hub repo id (``org/name``), or None
    for the model's shipped set. A directory by that name wins over a hub id."""
    if source is None:
        path = default_transcoders(model.model_id)
        if path is None:
            raise CircuitdError(
                f"transcoders: {model.model_id} ships no transcoders; give a directory or hub id"
            )
    elif Path(source).expanduser().is_dir():
        path = Path(source).expanduser()
    elif is_hub_repo(source):
        path = _hub_snapshot(source)
    else:
        raise CircuitdError(f"transcoders: '{source}' is neither a directory nor a hub repo id (org/name)")
    key = (str(path.resolve()), str(model.device), str(model.dtype))
    return _CACHE.get_or_make(key, lambda: load(path).to(model.device, model.dtype))


def cached_transcoders() -> list[tuple[str, str, str]]:
    """(directory, device, dtype) of the loaded sets, least recently used first."""
    return _CACHE.keys()


def clear_cache() -> None:
    _CACHE.clear()

"""``/v1/models``, ``/v1/tasks`` and ``/v1/methods``: what a spec may name. Read from circuitd's
registries (models, task generators, the method registry and its parameter models), no torch."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter

from circuitd.methods import METHODS
from circuitd.models.ids import RANDOM_PRESETS, ZOO_DIR
from circuitd.names import ABLATIONS, METRICS
from circuitd.tasks import GENERATORS

router = APIRouter(tags=["catalog"])


def _zoo() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for d in sorted(p for p in ZOO_DIR.iterdir() if (p / "config.json").is_file()):
        card: dict[str, Any] = {}
        if (d / "card.json").is_file():
            card = json.loads((d / "card.json").read_text())
        out.append({"id": f"zoo:{d.name}", "kind": "zoo", "architecture": card.get("architecture")})
    return out


@router.get("/models")
def models() -> dict[str, Any]:
    """Shipped and random models by id, and the id forms that name others."""
    random = [{"id": f"random:{n}", "kind": "random", "architecture": c} for n, c in RANDOM_PRESETS.items()]
    return {
        "models": _zoo() + random,
        "id_forms": {
            "zoo:<name>": "a model shipped with circuitd",
            "random:<preset>[@seed]": "seeded random weights of a preset's shape",
            "local:<dir>": (
                "a directory on the worker's disk: circuitd's config.json + model.safetensors "
                "(+ tokenizer.json), or a Hugging Face checkpoint (config.json, weights whole or "
                "sharded, its tokenizer)"
            ),
            "<TransformerLens name>": "e.g. gpt2-small; the worker needs the model hub or its cache",
        },
    }


@router.get("/tasks")
def tasks() -> dict[str, Any]:
    """Task generators, metrics, methods and ablations a spec may name (or an inline task)."""
    return {
        "generators": list(GENERATORS),
        "generator_params": {name: g.describe() for name, g in GENERATORS.items()},  # task_params' schemas
        "metrics": list(METRICS),
        "methods": list(METHODS),
        "ablations": list(ABLATIONS),
        "inline_task": {
            "required": ["clean", "corrupted", "correct", "incorrect"],
            "optional": ["name", "description", "metric", "answer_position", "prepend_bos"],
        },
    }


@router.get("/methods")
def methods() -> dict[str, Any]:
    """Every method with its summary and its parameters' JSON schema (what ``params`` takes)."""
    return {"methods": [m.describe() for m in METHODS.values()]}

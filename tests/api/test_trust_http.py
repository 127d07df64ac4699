"""The trust boundary over real HTTP: a key holder may not make the service read local files,
fetch hub repositories the operator did not list, or name files outside the zoo. The service here
runs without CIRCUITD_MODEL_ROOTS, CIRCUITD_HUB_TRANSCODERS or a CIRCUITD_HUB_MODELS list."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from circuitd.models.ids import ZOO_DIR
from circuitd.transcoders import random_transcoders, save
from tests.support.service import TINY, Api

pytestmark = pytest.mark.service  # real Redis, a Celery worker and uvicorn over HTTP

AG = {"model": "zoo:synth", "method": "attribution-graph", "prompt": "When Mary and John went"}


def _jobs(api: Api) -> int:
    r = api.http.get("/v1/jobs")
    r.raise_for_status()
    return r.json()["total"]


@pytest.fixture(scope="module")
def synth_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("models") / "synth"
    out.mkdir()
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        shutil.copy(ZOO_DIR / "synth" / name, out / name)
    return out


@pytest.fixture(scope="module")
def tc_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save(random_transcoders(4, 128, 8), tmp_path_factory.mktemp("tc"))


def _cases(synth_copy: Path, tc_dir: Path) -> list[tuple[dict[str, Any], str, str]]:
    """(spec, field, a phrase of the message)."""
    return [
        (TINY | {"model": "local:/etc"}, "model", "CIRCUITD_MODEL_ROOTS is empty"),
        (TINY | {"model": f"local:{synth_copy}"}, "model", "CIRCUITD_MODEL_ROOTS is empty"),
        (TINY | {"model": "zoo:../.."}, "model", "a zoo name is lowercase letters"),
        (TINY | {"model": "zoo:/etc"}, "model", "no paths"),
        (TINY | {"model": "evil-org/backdoored-model"}, "model", "not an allowed hub model"),
        (AG | {"transcoders": "org/name"}, "params.transcoders", "CIRCUITD_HUB_TRANSCODERS"),
        (AG | {"transcoders": str(tc_dir)}, "params.transcoders", "CIRCUITD_MODEL_ROOTS is empty"),
        (AG | {"params": {"transcoders": "../x"}}, "params.transcoders", "CIRCUITD_MODEL_ROOTS is empty"),
    ]


def test_refused_specs_are_422_naming_the_field_and_create_no_job(
    alice: Api, synth_copy: Path, tc_dir: Path
) -> None:
    before = _jobs(alice)
    for spec, field, phrase in _cases(synth_copy, tc_dir):
        r = alice.submit(spec)
        assert r.status_code == 422, (spec, r.text)
        errors = r.json()["errors"]
        assert errors[0]["field"] == field and phrase in errors[0]["message"], (spec, errors)
        assert r.json()["detail"].startswith(f"{field}: ")
    assert _jobs(alice) == before


def test_allowed_sources_are_still_accepted(alice: Api) -> None:
    """The zoo model with its shipped transcoders passes the boundary, and its job runs in the worker."""
    before = _jobs(alice)
    r = alice.submit(AG)
    assert r.status_code == 202, r.text
    assert _jobs(alice) == before + 1
    assert alice.wait(r.json()["id"])["status"] == "succeeded"

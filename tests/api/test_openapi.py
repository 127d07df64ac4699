"""The API's contract is reviewed, not drifted into: its OpenAPI document must equal the
committed snapshot. A deliberate change regenerates it with ``make openapi``."""

from __future__ import annotations

import difflib
import json
from pathlib import Path

from api.app import openapi_text
from circuitd.methods import METHODS

SNAPSHOT = Path(__file__).with_name("openapi.json")


def test_openapi_matches_the_snapshot() -> None:
    want, got = SNAPSHOT.read_text(), openapi_text()
    diff = "".join(difflib.unified_diff(want.splitlines(True), got.splitlines(True), "snapshot", "app", n=2))
    assert got == want, f"the API changed; if that is meant, run `make openapi` and commit it:\n{diff[:4000]}"


def test_the_snapshot_is_the_real_document() -> None:
    """Not an empty file that any app would match: it holds the routes and the method names."""
    doc = json.loads(SNAPSHOT.read_text())
    assert {"/v1/jobs", "/v1/methods", "/v1/models", "/v1/tasks"} <= set(doc["paths"])
    method = doc["components"]["schemas"]["JobSpec"]["properties"]["method"]
    assert method["enum"] == list(METHODS)  # every registered method, in the registry's order
    new = {"eap-ig-act", "patching", "edge-pruning"}
    assert {"eap", "eap-ig", "acdc", "attribution-graph"} | new <= set(METHODS)

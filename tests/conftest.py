"""Shared fixtures; the models and services behind them live in :mod:`tests.support`."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from circuitd.settings import get_settings
from tests.support.models import RANDOM_MODEL_IDS

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


@pytest.fixture(params=RANDOM_MODEL_IDS)
def random_model_id(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def settings_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """Set CIRCUITD_* variables for one test (``settings_env.setenv`` then
    ``get_settings.cache_clear()``); the settings are read afresh before and after."""
    get_settings.cache_clear()
    yield monkeypatch
    monkeypatch.undo()
    get_settings.cache_clear()

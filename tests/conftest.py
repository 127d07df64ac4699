"""Shared fixtures; the models and services behind them live in :mod:`tests.support`."""

from __future__ import annotations

import pytest
import torch

from tests.support.models import RANDOM_MODEL_IDS

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


@pytest.fixture(params=RANDOM_MODEL_IDS)
def random_model_id(request: pytest.FixtureRequest) -> str:
    return request.param

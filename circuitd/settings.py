"""Settings from the environment (``CIRCUITD_*``); limits have defaults. Imports no torch."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CIRCUITD_", extra="ignore")

    data_dir: Path = Path.home() / ".circuitd"
    max_prompts: int = 1024
    max_tokens: int = 512  # per prompt
    max_edges: int = 200_000
    max_ig_steps: int = 64
    eval_max_elements: int = 2**27  # activations per patched pass when evaluating circuits


@lru_cache
def get_settings() -> Settings:
    return Settings()

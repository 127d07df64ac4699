"""Settings from the environment (``CIRCUITD_*``); limits have defaults. Imports no torch."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CIRCUITD_", extra="ignore")

    data_dir: Path = Path.home() / ".circuitd"
    max_prompts: int = 1024
    max_tokens: int = 512  # per prompt
    max_edges: int = 1_000_000
    max_ig_steps: int = 64
    max_mask_steps: int = 10_000  # edge-pruning: optimisation steps of one job
    max_refine_rounds: int = 200  # swap rounds refining one circuit (circuitd.refine)
    max_prune_steps: int = 5000  # edges pruning removes from one circuit, one exactly measured step each
    max_patching_trials: int = 20_000_000  # patching: edges x prompts (one single-edge pass each)
    eval_max_elements: int = 2**27  # activations per patched pass when evaluating circuits
    max_feature_nodes: int = 4096  # attribution graphs: features kept (by influence) past this
    max_logit_targets: int = 64  # attribution graphs: the most target logits of one graph
    max_batch_size: int = 256  # prompts per forward pass
    max_model_params: int = 3_000_000_000  # refused from the config, before any weights load
    max_model_bytes: int = 24 * 2**30  # estimated weights + activations, from the config
    model_cache_size: int = 2  # models a worker keeps loaded (least recently used evicted)
    transcoder_cache_size: int = 2  # transcoder sets a worker keeps loaded

    # The trust boundary: what a spec that arrives over the API may name (the CLI run by the
    # machine's own user has full access). Comma-separated lists.
    model_roots: str = ""  # local:<dir> only under these directories (default: none)
    hub_models: str = "*tl"  # hub model names allowed; "*tl" means TransformerLens's official names
    hub_transcoders: str = ""  # hub transcoder repos allowed (org/name); default none

    # The API's limits.
    max_body_bytes: int = 8 * 2**20  # request bodies past this are refused (413) before auth
    max_active_jobs_per_owner: int = 32  # queued + running jobs of one owner (429 past it)
    rate_limit_per_s: float = 20.0  # requests per second and owner, sustained (token bucket)
    rate_limit_burst: int = 60  # requests an owner may send at once
    max_paths: int = 10_000  # paths one /paths or /logit-paths query may enumerate
    reprune_cache_size: int = 64  # re-pruned attribution graphs kept per API process
    metrics_token: str | None = None  # when set, /metrics needs 'Authorization: Bearer <token>'

    # The service (API, workers, store). DATABASE_URL and BROKER_URL are read with or without the prefix.
    database_url: str | None = Field(
        default=None, validation_alias=AliasChoices("CIRCUITD_DATABASE_URL", "DATABASE_URL")
    )  # default: SQLite at data_dir/circuitd.db
    broker_url: str = Field(
        default="redis://127.0.0.1:6379/0", validation_alias=AliasChoices("CIRCUITD_BROKER_URL", "BROKER_URL")
    )
    auth_disabled: bool = False  # every request acts as owner "local"; only when set explicitly
    queue_prefix: str = ""  # queues are {prefix}cpu and {prefix}gpu: deployments can share one broker
    job_soft_time_limit: int = 3600  # seconds; the job fails with a message naming the limit
    job_time_limit: int = 3660  # the worker child is killed past this
    visibility_timeout: int = 7200  # Redis redelivers unacknowledged messages after this
    max_attempts: int = 3  # deliveries of one job before it fails (a job that kills its worker)
    heartbeat_s: float = 2.0  # a running job's worker writes its heartbeat this often
    stale_after_s: float = 60.0  # a running job without heartbeat this long (database time) is requeued
    db_busy_timeout_s: float = 30.0  # SQLite waits this long for a lock; stale_after_s must exceed it
    sweep_interval_s: float = 5.0  # how often each worker looks for stale or lost jobs
    requeue_after_s: float = 900.0  # a queued job's message is re-sent after this (lost messages)
    unserved_after_s: float = 3600.0  # a queued job whose queue no live worker serves fails after this
    retention_days: float | None = None  # finished jobs and their graphs are deleted after this (None: kept)
    progress_interval_s: float = 0.5  # progress writes per job at most this often
    worker_torch_threads: int | None = None  # torch.set_num_threads in the worker

    @field_validator("data_dir")
    @classmethod
    def _expand_home(cls, value: Path) -> Path:
        """``~`` in CIRCUITD_DATA_DIR means the home directory for every part (store, key file)."""
        return value.expanduser()


@lru_cache
def get_settings() -> Settings:
    return Settings()

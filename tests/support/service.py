"""Real parts for the service tests: Redis (started by scripts/ensure-redis.sh if silent),
Celery worker processes, uvicorn on a free loopback port, each with its own queue prefix and
SQLite store so that test sessions sharing one Redis never see each other's jobs."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[2]  # the repository
REDIS_URL = os.environ.get("CIRCUITD_TEST_REDIS", "redis://127.0.0.1:6379/0")
TINY = {
    "model": "random:tiny", "task": "random", "method": "eap", "n_prompts": 6, "top_n": 20, "curve": False,
}
CLI = [sys.executable, "-m", "circuitd.cli.service"]


def long_spec(n_prompts: int = 1024) -> dict[str, Any]:
    """A job that reports progress and checks for cancellation often, and runs long enough to be cancelled,
    killed or timed out mid-way; longer with more prompts (1024: the limit)."""
    return {
        "model": "random:small", "task": "random", "method": "eap-ig", "ig_steps": 8,
        "n_prompts": n_prompts, "batch_size": 2, "top_n": 50, "curve": False,
    }


def redis_answers(url: str = REDIS_URL) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2).ping())
    except redis.RedisError:
        return False


def ensure_redis() -> None:
    """Start Redis through the project's script when nothing answers; fail (never skip) if that fails."""
    if redis_answers():
        return
    subprocess.run(["bash", str(ROOT / "scripts" / "ensure-redis.sh")], check=True, timeout=120)
    assert redis_answers(), "Redis does not answer after scripts/ensure-redis.sh"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


@dataclass
class Service:
    """One deployment: its store, broker, queue prefix and the processes started for it."""

    root: Path
    broker: str = REDIS_URL
    extra_env: dict[str, str] = field(default_factory=dict)
    prefix: str = field(default_factory=lambda: f"t{uuid.uuid4().hex[:10]}-")
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    url: str = ""  # the API, once started
    keys: dict[str, str] = field(default_factory=dict)

    @property
    def database_url(self) -> str:
        return f"sqlite:///{self.root / 'circuitd.db'}"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CIRCUITD_")}
        env.update(
            CIRCUITD_DATA_DIR=str(self.root), CIRCUITD_DATABASE_URL=self.database_url,
            CIRCUITD_BROKER_URL=self.broker, CIRCUITD_QUEUE_PREFIX=self.prefix,
            CIRCUITD_HEARTBEAT_S="0.3", CIRCUITD_STALE_AFTER_S="2", CIRCUITD_SWEEP_INTERVAL_S="1",
            CIRCUITD_DB_BUSY_TIMEOUT_S="1",  # below stale_after less two heartbeats, as workers demand
            CIRCUITD_PROGRESS_INTERVAL_S="0.1", CIRCUITD_WORKER_TORCH_THREADS="1",
            OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1",
        )
        env.update(self.extra_env)
        return env

    def spawn(self, args: list[str], log_name: str) -> subprocess.Popen[bytes]:
        log = open(self.root / log_name, "ab")  # noqa: SIM115 - the child owns it
        proc = subprocess.Popen(
            args, cwd=ROOT, env=self.env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.procs.append(proc)
        return proc

    def log(self, name: str) -> str:
        path = self.root / name
        return path.read_text(errors="replace") if path.exists() else ""

    def start_worker(self, name: str = "w1", queues: str = "cpu,gpu", wait: bool = True) -> Any:
        args = [*CLI, "worker", "--queues", queues, "--name", f"{name}-{self.prefix}@%h"]
        proc = self.spawn(args, f"{name}.log")
        if wait:
            self.wait_ready(proc, name)
        return proc

    def wait_ready(self, proc: subprocess.Popen[bytes], name: str) -> None:
        log = f"{name}.log"
        wait_until(lambda: " ready." in self.log(log) or proc.poll() is not None, 120, f"worker {name}")
        assert proc.poll() is None, self.log(f"{name}.log")

    def start_api(self, no_auth: bool = False) -> str:
        port = free_port()
        args = [*CLI, "api", "--port", str(port), "--log-level", "warning"]
        proc = self.spawn(args + (["--no-auth"] if no_auth else []), f"api-{port}.log")
        url = f"http://127.0.0.1:{port}"

        def up() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(self.log(f"api-{port}.log"))
            try:
                return httpx.get(url + "/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(up, 60, "the API")
        return url

    def create_key(self, name: str, owner: str | None = None) -> str:
        args = [*CLI, "keys", "create", name]
        out = subprocess.run(
            args + (["--owner", owner] if owner else []), cwd=ROOT, env=self.env(), capture_output=True,
            text=True, check=True, timeout=60,
        )
        return out.stdout.strip()

    def store(self) -> Any:
        from circuitd.store import Store

        return Store(self.database_url)

    @staticmethod
    def kill(proc: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
        """Signal the whole process group: a Celery worker and its pool child."""
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        proc.wait(timeout=30)

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    continue
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill(proc)
        if self.broker.startswith("redis"):
            self.forget_queues()

    def forget_queues(self) -> None:
        """Leave the shared Redis as found: this deployment's queues and unacknowledged messages go."""
        import json

        import redis

        r = redis.Redis.from_url(self.broker)
        r.delete(f"{self.prefix}cpu", f"{self.prefix}gpu")
        for tag, raw in list(r.hscan_iter("unacked")):
            try:
                routing_key = json.loads(raw)[2]
            except (ValueError, IndexError, TypeError):
                continue
            if isinstance(routing_key, str) and routing_key.startswith(self.prefix):
                r.hdel("unacked", tag)
                r.zrem("unacked_index", tag)


@contextmanager
def deployment(
    root: Path, keys: tuple[str, ...] = (), no_auth: bool = False, broker: str = REDIS_URL,
    extra_env: dict[str, str] | None = None,
) -> Iterator[Service]:
    """One worker and the API, with a key per name in ``keys``; stopped afterwards, also when
    the start fails half-way, so no process outlives its test."""
    svc = Service(root, broker=broker, extra_env=extra_env or {})
    try:
        worker = svc.start_worker("w1", wait=False)
        svc.url = svc.start_api(no_auth=no_auth)
        svc.keys = {name: svc.create_key(name) for name in keys}
        svc.wait_ready(worker, "w1")
        yield svc
    finally:
        svc.stop()


class Api:
    """An HTTP client for one key."""

    def __init__(self, url: str, key: str | None):
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.http = httpx.Client(base_url=url, headers=headers, timeout=30)

    def submit(self, spec: dict[str, Any], **headers: str) -> httpx.Response:
        return self.http.post("/v1/jobs", json=spec, headers=headers)

    def job(self, job_id: str) -> dict[str, Any]:
        r = self.http.get(f"/v1/jobs/{job_id}")
        r.raise_for_status()
        return r.json()

    def wait(self, job_id: str, statuses: tuple[str, ...] = ("succeeded", "failed", "cancelled"),
             timeout: float = 240, check: Callable[[dict[str, Any]], bool] | None = None) -> dict[str, Any]:
        def done() -> dict[str, Any] | None:
            job = self.job(job_id)
            if check is not None:
                return job if check(job) else None
            return job if job["status"] in statuses else None

        return wait_until(done, timeout, f"job {job_id} to reach {statuses}", interval=0.1)

"""Throughput and latency of the API's two hot paths: submitting a job and reading its status.

Starts its own API (uvicorn, one process) on a free loopback port with a fresh SQLite store
and the local Redis as broker, under a queue prefix of its own that no worker consumes
(so only the API is measured), unless --url points at a running API. N client threads
each keep one request in flight. Prints per phase requests/s and p50/p99 latency, and ends
with one line ``submit_per_s=X status_p99_ms=Y``.

    python bench/api.py [--clients 8 --submits 400 --statuses 3000] [--broker sqlite]
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
SPEC = {
    "model": "random:tiny", "task": "random", "method": "eap", "n_prompts": 6, "top_n": 20, "curve": False,
}
# One key submits every job and nothing consumes them: the per-owner quota and request rate would
# refuse most of them, so the bench's own API lifts both (the checks still run on every request).
UNLIMITED = {
    "CIRCUITD_MAX_ACTIVE_JOBS_PER_OWNER": str(10**9), "CIRCUITD_RATE_LIMIT_PER_S": "1e9",
    "CIRCUITD_RATE_LIMIT_BURST": str(10**9),
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def run_phase(name: str, clients: int, total: int, call: Callable[[httpx.Client, int], None],
              make_client: Callable[[], httpx.Client]) -> tuple[float, list[float]]:
    """``total`` calls spread over ``clients`` threads; returns (calls per second, latencies in s)."""
    latencies: list[float] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    counter = iter(range(total))

    def worker() -> None:
        client = make_client()
        own: list[float] = []
        try:
            while True:
                with lock:
                    i = next(counter, None)
                if i is None:
                    break
                t0 = time.perf_counter()
                call(client, i)
                own.append(time.perf_counter() - t0)
        except BaseException as exc:  # reported after the phase
            errors.append(exc)
        finally:
            client.close()
            with lock:
                latencies.extend(own)

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    if errors:
        raise RuntimeError(f"{name}: {len(errors)} clients failed, first: {errors[0]!r}")
    rate = len(latencies) / wall
    p50, p99 = 1000 * statistics.median(latencies), 1000 * _percentile(latencies, 0.99)
    print(f"{name:<7} {len(latencies):>6} requests  {clients} clients  {rate:8.1f}/s  "
          f"p50 {p50:7.2f} ms  p99 {p99:7.2f} ms")
    return rate, latencies


def start_api(root: Path, broker: str, prefix: str) -> tuple[subprocess.Popen[bytes], str, str]:
    from circuitd.store import Store

    database = f"sqlite:///{root / 'circuitd.db'}"
    key = Store(database).create_key("bench")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CIRCUITD_")}
    env.update(CIRCUITD_DATABASE_URL=database, CIRCUITD_BROKER_URL=broker, CIRCUITD_QUEUE_PREFIX=prefix,
               CIRCUITD_DATA_DIR=str(root), **UNLIMITED)
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "api.app:app", "--port", str(port), "--log-level", "warning",
         "--no-access-log"],
        cwd=ROOT, env=env, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                return proc, url, key
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("the API did not become ready")
        time.sleep(0.2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--submits", type=int, default=400)
    parser.add_argument("--statuses", type=int, default=3000)
    parser.add_argument("--url", help="bench a running API instead (needs --key unless auth is off; its "
                        "quota and rate limit must allow the submissions: see UNLIMITED)")
    parser.add_argument("--key")
    parser.add_argument("--broker", default="redis://127.0.0.1:6379/0", help="a broker URL, or 'sqlite'")
    args = parser.parse_args()

    tmp = tempfile.TemporaryDirectory(prefix="circuitd-bench-")
    root = Path(tmp.name)
    prefix = f"bench{uuid.uuid4().hex[:8]}-"
    broker = f"sqla+sqlite:///{root / 'broker.db'}" if args.broker == "sqlite" else args.broker
    proc = None
    if args.url:
        url, key = args.url, args.key
    else:
        proc, url, key = start_api(root, broker, prefix)
    headers = {"Authorization": f"Bearer {key}"} if key else {}

    def make_client() -> httpx.Client:
        return httpx.Client(base_url=url, headers=headers, timeout=30)

    ids: list[str] = []

    def submit(client: httpx.Client, i: int) -> None:
        r = client.post("/v1/jobs", json=SPEC | {"seed": i})
        if r.status_code != 202:
            raise RuntimeError(f"submit: {r.status_code} {r.text[:200]}")
        ids.append(r.json()["id"])

    def status(client: httpx.Client, i: int) -> None:
        r = client.get(f"/v1/jobs/{random.choice(ids)}")
        if r.status_code != 200:
            raise RuntimeError(f"status: {r.status_code} {r.text[:200]}")

    try:
        where = "embedded SQLite broker" if args.broker == "sqlite" else args.broker
        print(f"API {url} (SQLite store, {where if not args.url else 'external'}), {os.cpu_count()} cores")
        run_phase("warm-up", args.clients, 2 * args.clients, submit, make_client)
        submit_rate, _ = run_phase("submit", args.clients, args.submits, submit, make_client)
        _, status_lat = run_phase("status", args.clients, args.statuses, status, make_client)
    finally:
        if proc is not None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        if not args.url and broker.startswith("redis"):
            import redis

            redis.Redis.from_url(broker).delete(f"{prefix}cpu")  # nobody consumes the bench's queue
        tmp.cleanup()
    print(f"submit_per_s={submit_rate:.1f} status_p99_ms={1000 * _percentile(status_lat, 0.99):.2f}")


if __name__ == "__main__":
    main()

"""A Redis of the test's own that wants a password (as compose.yaml runs it): started on a free
loopback port, nothing persisted, stopped afterwards; the shared test Redis is never touched."""

from __future__ import annotations

import secrets
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from tests.support.service import ensure_redis, free_port, wait_until


@dataclass(frozen=True)
class PrivateRedis:
    port: int
    password: str

    @property
    def url(self) -> str:
        return f"redis://:{self.password}@127.0.0.1:{self.port}/0"

    def ping(self, password: str | None) -> bool:
        import redis

        client = redis.Redis(host="127.0.0.1", port=self.port, password=password, socket_timeout=2)
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False


@contextmanager
def password_redis() -> Iterator[PrivateRedis]:
    if shutil.which("redis-server") is None:
        ensure_redis()  # installs redis-server where it can, as the other service tests do
    server = shutil.which("redis-server")
    assert server, "redis-server is not installed"
    found = PrivateRedis(free_port(), secrets.token_hex(16))
    # The password on the command line: a test server on loopback only, for a few seconds.
    proc = subprocess.Popen(
        [server, "--bind", "127.0.0.1", "--port", str(found.port), "--save", "", "--appendonly", "no",
         "--requirepass", found.password],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: proc.poll() is not None or found.ping(found.password), 30, "the private Redis")
        assert proc.poll() is None, f"redis-server exited with {proc.returncode}"
        yield found
    finally:
        proc.terminate()
        proc.wait(timeout=30)

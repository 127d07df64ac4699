"""The service commands' safe defaults: no auth-off on a public bind without saying so, no
secret printed, an owner-only data dir, the API key shown once."""

from __future__ import annotations

import logging
import os
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from circuitd.cli.service import _ensure_key, guard_no_auth, is_loopback, mask_url, secure_data_dir
from tests.support.private_redis import PrivateRedis, password_redis
from tests.support.service import ROOT, free_port, wait_until

CIRCUITD = str(Path(sys.executable).parent / "circuitd")  # the console script a user runs


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("CIRCUITD_") and k not in ("DATABASE_URL", "BROKER_URL")}
    env.update(PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1", **extra)
    return env


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- auth off on a public bind ---------------------------------------------------------------


@pytest.mark.parametrize(
    "args,env,switch,host",
    [
        (["up", "--no-auth", "--host", "0.0.0.0"], {}, "--no-auth", "0.0.0.0"),
        (["api", "--no-auth", "--host", "0.0.0.0"], {}, "--no-auth", "0.0.0.0"),
        (["up", "--host", "192.168.1.5"], {"CIRCUITD_AUTH_DISABLED": "1"}, "CIRCUITD_AUTH_DISABLED=1",
         "192.168.1.5"),
        (["api", "--host", "::"], {"CIRCUITD_AUTH_DISABLED": "true"}, "CIRCUITD_AUTH_DISABLED=1", "::"),
    ],
)
def test_auth_off_on_a_public_host_is_refused(
    args: list[str], env: dict[str, str], switch: str, host: str, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    out = subprocess.run(
        [CIRCUITD, *args, "--port", str(free_port())], cwd=ROOT, capture_output=True, text=True, timeout=60,
        env=clean_env(CIRCUITD_DATA_DIR=str(data), **env),
    )
    assert out.returncode == 2
    assert out.stderr.splitlines() == [
        f"circuitd: error: {switch} on the non-loopback --host {host} is refused: anyone who can reach it "
        "could run jobs and read every result; use --host 127.0.0.1, or add --allow-public-no-auth"
    ]
    assert not data.exists()  # refused before anything was made


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost", "LOCALHOST"])
def test_auth_off_on_loopback_is_quiet(host: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert is_loopback(host)
    guard_no_auth(host, "--no-auth", allow_public=False)
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.0.0.1", "example.org", ""])
def test_public_hosts_are_not_loopback(host: str) -> None:
    assert not is_loopback(host)


def test_auth_on_is_never_refused(capsys: pytest.CaptureFixture[str]) -> None:
    guard_no_auth("0.0.0.0", None, allow_public=False)
    assert capsys.readouterr().err == ""


def test_allowed_public_no_auth_warns_on_stderr_and_in_the_log(
    capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="circuitd.service"):
        guard_no_auth("0.0.0.0", "--no-auth", allow_public=True)
    line = ("WARNING: serving WITHOUT AUTH on 0.0.0.0 (--no-auth, --allow-public-no-auth): "
            "anyone who can reach this address can run jobs and read every result")
    assert capsys.readouterr().err == f"circuitd: {line}\n"
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [(logging.WARNING, line)]


# --- secrets are never printed ---------------------------------------------------------------


@pytest.mark.parametrize(
    "url,masked",
    [
        ("postgresql://circuitd:s3cret@db:5432/circuitd", "postgresql://circuitd:***@db:5432/circuitd"),
        ("postgresql://circuitd:p@ss@db/circuitd", "postgresql://circuitd:***@db/circuitd"),
        ("redis://:s3cret@redis:6379/0", "redis://:***@redis:6379/0"),
        ("postgresql://u@db/x?sslmode=require&password=s3cret", "postgresql://u@db/x?sslmode=require&password=***"),
        ("redis://redis:6379/0", "redis://redis:6379/0"),
        ("sqlite:////home/me/.circuitd/circuitd.db", "sqlite:////home/me/.circuitd/circuitd.db"),
        ("sqla+sqlite:////tmp/d/broker.db", "sqla+sqlite:////tmp/d/broker.db"),
        ("postgresql://circuitd@db/circuitd", "postgresql://circuitd@db/circuitd"),
    ],
)
def test_mask_url(url: str, masked: str) -> None:
    assert mask_url(url) == masked


def test_api_key_is_shown_once_then_only_its_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    database = f"sqlite:///{tmp_path / 'circuitd.db'}"
    _ensure_key(tmp_path, database)
    first = capsys.readouterr().err
    key = (tmp_path / "api-key").read_text().strip()
    assert mode(tmp_path / "api-key") == 0o600
    assert first == f"circuitd up: created API key 'local' (saved in {tmp_path / 'api-key'}): {key}\n"
    _ensure_key(tmp_path, database)
    assert capsys.readouterr().err == f"circuitd up: API key in {tmp_path / 'api-key'}\n"
    (tmp_path / "api-key").unlink()
    _ensure_key(tmp_path, database)
    again = capsys.readouterr().err
    assert key not in again and "circuitd keys create" in again


# --- the data dir ----------------------------------------------------------------------------


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


@pytest.mark.usefixtures("umask_022")
def test_data_dir_is_created_owner_only(tmp_path: Path) -> None:
    data = tmp_path / "a" / "data"
    assert secure_data_dir(data) == data
    assert mode(data) == 0o700


@pytest.mark.usefixtures("umask_022")
def test_own_open_data_dir_is_tightened(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    data.chmod(0o755)
    secure_data_dir(data)
    assert mode(data) == 0o700


# --- circuitd up, end to end -----------------------------------------------------------------


@pytest.fixture
def redis_server() -> Iterator[PrivateRedis]:
    with password_redis() as server:
        yield server


@pytest.mark.service
@pytest.mark.usefixtures("umask_022")
def test_up_tightens_its_data_dir_and_masks_the_broker_password(
    tmp_path: Path, redis_server: PrivateRedis
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    data.chmod(0o755)  # as an older circuitd left it
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "up.log"
    with open(log_path, "wb") as log:
        up = subprocess.Popen(
            [CIRCUITD, "up", "--port", str(port), "--data-dir", str(data), "--broker", redis_server.url,
             "--grace", "5", "--loglevel", "WARNING"],
            cwd=ROOT, env=clean_env(CIRCUITD_QUEUE_PREFIX="up-"), stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        def healthy() -> bool:
            assert up.poll() is None, log_path.read_text()
            try:
                return httpx.get(url + "/healthz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(healthy, 90, "circuitd up")
        assert mode(data) == 0o700
        assert mode(data / "api-key") == 0o600
        text = log_path.read_text()
        assert f"broker redis://:***@127.0.0.1:{redis_server.port}/0)" in text
        assert redis_server.password not in text
        key = (data / "api-key").read_text().strip()
        assert text.count(key) == 1  # shown once, on creation
    finally:
        os.killpg(up.pid, signal.SIGTERM)
        up.wait(timeout=60)
    assert up.returncode == 0, log_path.read_text()

"""The service's commands: ``up``, ``api``, ``worker`` (run it), ``submit``, ``status``,
``download`` (talk to it over HTTP) and ``keys`` (manage API keys in the store).

``circuitd.cli.build_parser`` calls ``add_service_commands``; ``python -m circuitd.cli.service``
runs these commands alone. Nothing here imports torch: the worker's pool child does that. Nor
does anything here import the ``workers`` or ``api`` packages: the worker and the API are
started by their import strings (Celery's ``-A``, uvicorn's app), so the core depends on neither.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast
from urllib.parse import parse_qsl, urlencode, urlsplit

from circuitd.errors import CircuitdError

DEFAULT_URL = "http://127.0.0.1:8000"
WORKER_APP = "workers.app:app"  # the Celery app, for Celery's -A
TERMINAL = ("succeeded", "failed", "cancelled")
SECRET_PARAMS = ("password", "passwd", "pass")  # query parameters that carry a password
log = logging.getLogger("circuitd.service")


# --- deployment safety ---------------------------------------------------------------------


def mask_url(url: str) -> str:
    """The URL with its password hidden (``user:***@``, ``password=***``), for anything printed or
    logged: a store or broker URL from the environment may hold one. Other URLs come back as given."""
    parts = urlsplit(url)
    masked = url
    userinfo, at, hostport = parts.netloc.rpartition("@")
    user, colon, password = userinfo.partition(":")
    if at and colon and password:
        masked = masked.replace(parts.netloc, f"{user}:***@{hostport}", 1)
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    if any(k.lower() in SECRET_PARAMS for k, _ in pairs):
        hidden = [(k, "***" if k.lower() in SECRET_PARAMS else v) for k, v in pairs]
        masked = masked.replace("?" + parts.query, "?" + urlencode(hidden, safe="*"), 1)
    return masked


def is_loopback(host: str) -> bool:
    """Only this machine can reach a server bound here (127.0.0.0/8, ::1, localhost)."""
    name = host.strip().strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def guard_no_auth(host: str, auth_off_by: str | None, allow_public: bool) -> None:
    """Serving without API keys is for one's own machine: refused on any other bind unless
    ``--allow-public-no-auth`` says it is meant, and then announced loudly.

    ``auth_off_by`` names what switched auth off (``--no-auth``, ``CIRCUITD_AUTH_DISABLED=1``), or None.
    """
    if auth_off_by is None or is_loopback(host):
        return
    if not allow_public:
        raise CircuitdError(
            f"{auth_off_by} on the non-loopback --host {host} is refused: anyone who can reach it could "
            "run jobs and read every result; use --host 127.0.0.1, or add --allow-public-no-auth"
        )
    line = (f"WARNING: serving WITHOUT AUTH on {host} ({auth_off_by}, --allow-public-no-auth): "
            "anyone who can reach this address can run jobs and read every result")
    print(f"circuitd: {line}", file=sys.stderr, flush=True)
    if logging.getLogger().hasHandlers() or log.hasHandlers():  # else logging would print it twice
        log.warning(line)


def _auth_off_by(no_auth: bool) -> str | None:
    """What switched auth off for this command, read after the flags reached the environment."""
    from circuitd.settings import get_settings

    if no_auth:
        return "--no-auth"
    return "CIRCUITD_AUTH_DISABLED=1" if get_settings().auth_disabled else None


def secure_data_dir(path: Path) -> Path:
    """Create the data dir owner-only (0700), or tighten it to that if this user owns it: it holds
    the store, the broker's messages and the API key. Someone else's is left as it is, with a word."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = path.stat()
    mode = stat.S_IMODE(info.st_mode)
    if mode != 0o700 and info.st_uid == os.getuid():
        path.chmod(0o700)
    elif mode & 0o077:
        print(f"circuitd: warning: data dir {path} (mode {mode:o}) is not this user's and others may "
              "read it", file=sys.stderr)
    return path


# --- running the service -------------------------------------------------------------------


def _set_env(**values: str | None) -> None:
    """Flags override the environment; settings are re-read afterwards."""
    from circuitd.settings import get_settings

    for name, value in values.items():
        if value is not None:
            os.environ[name] = value
    get_settings.cache_clear()


def _queues(value: str) -> str:
    """``auto``: gpu and cpu where an NVIDIA device is visible, else cpu (without touching CUDA,
    which must not be initialised before the pool forks)."""
    from circuitd.settings import get_settings

    prefix = get_settings().queue_prefix
    if value == "auto":
        gpu = Path("/dev/nvidiactl").exists() or bool(os.environ.get("NVIDIA_VISIBLE_DEVICES"))
        names = ["gpu", "cpu"] if gpu else ["cpu"]
    else:
        names = [q.strip() for q in value.split(",") if q.strip()]
        bad = [q for q in names if q not in ("cpu", "gpu")]
        if bad:
            raise CircuitdError(f"--queues: '{bad[0]}' is not a queue (cpu, gpu, or auto)")
    return ",".join(prefix + q for q in names)


def worker_argv(queues: str, name: str, loglevel: str = "INFO", concurrency: int = 1) -> list[str]:
    """Celery's own worker arguments: one process per worker, no gossip (faster start)."""
    return [
        "worker", "-Q", queues, "-c", str(concurrency), "-n", name, "-l", loglevel, "--pool", "prefork",
        "--without-gossip", "--without-mingle", "--without-heartbeat",
    ]


def _secure_default_data_dir() -> None:
    """For ``api`` and ``worker``: the data dir when they keep their store there (default SQLite)
    or it exists already; a PostgreSQL deployment gets no empty directory made for it."""
    from circuitd.settings import get_settings

    s = get_settings()
    if s.database_url is None or s.data_dir.is_dir():
        secure_data_dir(s.data_dir.resolve())


def cmd_worker(args: argparse.Namespace) -> int:
    _set_env(CIRCUITD_BROKER_URL=args.broker, CIRCUITD_DATABASE_URL=args.database)
    queues = _queues(args.queues)
    _secure_default_data_dir()
    from celery.bin.celery import celery

    # Celery's own command line, in this process (as Celery.worker_main runs it), given the app by name.
    celery.main(args=["-A", WORKER_APP, *worker_argv(queues, args.name, args.loglevel, args.concurrency)],
                standalone_mode=False)
    return 0


def cmd_api(args: argparse.Namespace) -> int:
    _set_env(
        CIRCUITD_BROKER_URL=args.broker, CIRCUITD_DATABASE_URL=args.database,
        CIRCUITD_AUTH_DISABLED="1" if args.no_auth else None,
    )
    guard_no_auth(args.host, _auth_off_by(args.no_auth), args.allow_public_no_auth)
    _secure_default_data_dir()
    import uvicorn

    uvicorn.run("api.app:app", host=args.host, port=args.port, workers=args.workers, log_level=args.log_level)
    return 0


def _embedded_broker(data_dir: Path) -> str:
    """kombu's SQLAlchemy transport on a SQLite file, in WAL mode (it persists in the file)."""
    path = data_dir / "broker.db"
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
    return f"sqla+sqlite:///{path}"


def _ensure_key(data_dir: Path, database_url: str) -> None:
    """First start with auth on: make a key named ``local``, keep it in data_dir/api-key (0600) and
    show it this once; later starts name the file, never the key."""
    from circuitd.store import Store

    store = Store(database_url)
    key_file = data_dir / "api-key"
    if store.list_keys():
        if key_file.exists():
            print(f"circuitd up: API key in {key_file}", file=sys.stderr)
        else:
            print("circuitd up: the store has API keys already; make one with 'circuitd keys create NAME'",
                  file=sys.stderr)
        return
    key = store.create_key("local", "local")
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        os.fchmod(fd, 0o600)  # a file left from another store keeps its mode otherwise
        f.write(key + "\n")
    print(f"circuitd up: created API key 'local' (saved in {key_file}): {key}", file=sys.stderr)


def cmd_up(args: argparse.Namespace) -> int:
    """The API and one worker on this machine, an embedded SQLite store and broker unless told otherwise."""
    from circuitd.settings import get_settings

    _set_env(CIRCUITD_DATA_DIR=args.data_dir)
    auth_off_by = _auth_off_by(args.no_auth)
    guard_no_auth(args.host, auth_off_by, args.allow_public_no_auth)
    s = get_settings()
    data_dir = secure_data_dir(s.data_dir.expanduser().resolve())
    database_url = s.database_url or f"sqlite:///{data_dir / 'circuitd.db'}"
    broker = args.broker or _embedded_broker(data_dir)
    env = dict(
        os.environ, CIRCUITD_DATA_DIR=str(data_dir), CIRCUITD_DATABASE_URL=database_url,
        CIRCUITD_BROKER_URL=broker,
    )
    if auth_off_by is not None:
        env["CIRCUITD_AUTH_DISABLED"] = "1"
    else:
        _ensure_key(data_dir, database_url)
    queues = _queues("cpu,gpu")
    py = sys.executable
    worker = [py, "-m", "celery", "-A", WORKER_APP, *worker_argv(queues, "circuitd-up@%h", args.loglevel)]
    api = [py, "-m", "uvicorn", "api.app:app", "--host", args.host, "--port", str(args.port),
           "--log-level", args.loglevel.lower()]
    procs = [subprocess.Popen(worker, env=env), subprocess.Popen(api, env=env)]
    print(
        f"circuitd up: API at http://{args.host}:{args.port} (store {mask_url(database_url)}, "
        f"broker {mask_url(broker)}); "
        "Ctrl-C stops", file=sys.stderr,
    )
    stopping = False

    def stop(*_: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    code = 0
    try:
        while not stopping:
            for p in procs:
                if p.poll() is not None:
                    name = cast(list[str], p.args)[2]  # started from an argv list: [python, -m, module, ...]
                    print(f"circuitd up: {name} exited with {p.returncode}", file=sys.stderr)
                    code, stopping = p.returncode or 1, True
            time.sleep(0.2)
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        deadline = time.monotonic() + args.grace
        for p in procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
    return code


# --- talking to it -------------------------------------------------------------------------


def _api_key(args: argparse.Namespace) -> str | None:
    """--key, then CIRCUITD_API_KEY, then the key ``circuitd up`` saved in the data dir."""
    if args.key:
        return args.key
    if os.environ.get("CIRCUITD_API_KEY"):
        return os.environ["CIRCUITD_API_KEY"]
    from circuitd.settings import get_settings

    path = get_settings().data_dir / "api-key"
    return path.read_text().strip() if path.is_file() else None


class Client:
    """A thin HTTP client; API errors become CircuitdError with the server's one-line detail."""

    def __init__(self, url: str, key: str | None, timeout: float = 30.0):
        import httpx

        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.http = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout)
        self.url = url

    def request(self, method: str, path: str, **kw: Any) -> Any:
        import httpx

        try:
            r = self.http.request(method, path, **kw)
        except httpx.HTTPError as exc:
            raise CircuitdError(f"--url: cannot reach {mask_url(self.url)}: {exc}") from exc
        if r.status_code >= 400:
            try:
                detail = r.json().get("detail", r.text)
            except ValueError:
                detail = r.text
            raise CircuitdError(f"{method} {path}: {r.status_code}: {detail}")
        return r


def _client(args: argparse.Namespace) -> Client:
    return Client(args.url, _api_key(args))


def _line(job: dict[str, Any]) -> str:
    out = f"{job['id']} {job['status']} {100 * job['progress']:.0f}% {job['stage']}"
    m = job.get("metrics") or {}
    if job["status"] == "succeeded" and m:
        out += f" (edges {m.get('n_edges')}/{m.get('n_edges_total')}, faithfulness {m.get('faithfulness')})"
    if job.get("error"):
        out += f": {job['error']}"
    return out


def _watch(client: Client, job_id: str, interval: float) -> int:
    last = None
    while True:
        job = client.request("GET", f"/v1/jobs/{job_id}").json()
        line = _line(job)
        if line != last:
            print(line, flush=True)
            last = line
        if job["status"] in TERMINAL:
            return 0 if job["status"] == "succeeded" else 1
        time.sleep(interval)


def cmd_submit(args: argparse.Namespace) -> int:
    try:
        text = sys.stdin.read() if args.spec == "-" else Path(args.spec).read_text()
        spec = json.loads(text)
    except (OSError, json.JSONDecodeError) as exc:
        raise CircuitdError(f"{args.spec}: not a JSON spec: {exc}") from exc
    headers = {"Idempotency-Key": args.idempotency_key} if args.idempotency_key else {}
    client = _client(args)
    job = client.request("POST", "/v1/jobs", json=spec, headers=headers).json()
    print(job["id"], flush=True)
    return _watch(client, job["id"], args.interval) if args.wait else 0


def cmd_status(args: argparse.Namespace) -> int:
    client = _client(args)
    if args.watch:
        return _watch(client, args.id, args.interval)
    print(_line(client.request("GET", f"/v1/jobs/{args.id}").json()))
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    params = {"all_edges": str(args.all_edges).lower(), "format": args.format}
    r = _client(args).request("GET", f"/v1/jobs/{args.id}/graph", params=params)
    out = Path(args.output)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_bytes(r.content)
    tmp.replace(out)
    print(f"{args.id} -> {out} ({len(r.content)} bytes)")
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    from circuitd.store import get_store

    _set_env(CIRCUITD_DATABASE_URL=args.database)
    store = get_store()
    if args.keys_command == "create":
        key = store.create_key(args.name, args.owner)
        print(key)
        print(f"key '{args.name}' for owner '{args.owner or args.name}': shown once, store it now",
              file=sys.stderr)
    elif args.keys_command == "list":
        for k in store.list_keys():
            print(f"{k.name}\t{k.owner}\t{k.created_at:%Y-%m-%d %H:%M}")
    elif not store.revoke_key(args.name):
        raise CircuitdError(f"keys: no key named '{args.name}'")
    return 0


# --- the parser ----------------------------------------------------------------------------


def _client_args(p: argparse.ArgumentParser) -> None:
    url = os.environ.get("CIRCUITD_URL", DEFAULT_URL)
    p.add_argument("--url", default=url, help=f"the API (default $CIRCUITD_URL or {DEFAULT_URL})")
    p.add_argument("--key", help="API key (default: $CIRCUITD_API_KEY, then the key 'circuitd up' saved)")


def _service_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--broker", help="broker URL (default: $CIRCUITD_BROKER_URL, redis://127.0.0.1:6379/0)")
    p.add_argument("--database", help="database URL (default: $DATABASE_URL, SQLite in the data dir)")


def _public_no_auth_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--allow-public-no-auth", action="store_true",
                   help="allow auth off (--no-auth, CIRCUITD_AUTH_DISABLED=1) on a non-loopback --host")


def add_service_commands(sub: Any) -> None:
    """Register up, api, worker, submit, status, download and keys on ``circuitd``'s subparsers."""
    p = sub.add_parser("up", help="run the API and one worker here (embedded SQLite store and broker)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--broker", help="use this broker (e.g. redis://127.0.0.1:6379/0) instead of SQLite")
    p.add_argument("--data-dir", help="where the store, broker and key live (default ~/.circuitd)")
    p.add_argument("--no-auth", action="store_true", help="serve without API keys (owner 'local')")
    _public_no_auth_arg(p)
    p.add_argument("--loglevel", default="INFO")
    p.add_argument("--grace", type=float, default=30.0, help="seconds a running job gets to finish on stop")
    p.set_defaults(func=cmd_up)

    p = sub.add_parser("api", help="serve the HTTP API (uvicorn)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--workers", type=int, default=1, help="uvicorn processes")
    p.add_argument("--log-level", default="info")
    p.add_argument("--no-auth", action="store_true", help="serve without API keys (owner 'local')")
    _public_no_auth_arg(p)
    _service_args(p)
    p.set_defaults(func=cmd_api)

    p = sub.add_parser("worker", help="run a Celery worker (one job at a time)")
    p.add_argument("--queues", default="auto", help="cpu, gpu, or both comma-separated (auto: by hardware)")
    p.add_argument("--name", default="circuitd@%h")
    p.add_argument("--concurrency", type=int, default=1, help="pool processes (one per GPU)")
    p.add_argument("--loglevel", default="INFO")
    _service_args(p)
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("submit", help="submit a job spec (JSON file, '-' for stdin); prints the job id")
    p.add_argument("spec")
    p.add_argument("--idempotency-key", help="resubmitting with the same key returns the same job")
    p.add_argument("--wait", action="store_true", help="then follow it until it ends")
    p.add_argument("--interval", type=float, default=1.0)
    _client_args(p)
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("status", help="a job's status and progress")
    p.add_argument("id")
    p.add_argument("--watch", action="store_true", help="follow until it ends (exit 0 only if it succeeded)")
    p.add_argument("--interval", type=float, default=1.0)
    _client_args(p)
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("download", help="download a succeeded job's graph")
    p.add_argument("id")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--all-edges", action="store_true", help="every scored edge, not only the circuit")
    p.add_argument("--format", choices=["json", "graphml"], default="json")
    _client_args(p)
    p.set_defaults(func=cmd_download)

    keys = sub.add_parser("keys", help="API keys (stored hashed)")
    keys = keys.add_subparsers(dest="keys_command", required=True)
    for name, text in (("create", "make a key and print it once"), ("revoke", "delete a key")):
        p = keys.add_parser(name, help=text)
        p.add_argument("name")
        if name == "create":
            p.add_argument("--owner", help="whose jobs the key sees (default: the name)")
        p.add_argument("--database", help="database URL (default: $DATABASE_URL, SQLite in the data dir)")
        p.set_defaults(func=cmd_keys)
    p = keys.add_parser("list", help="names and owners of the keys")
    p.add_argument("--database", help="database URL (default: $DATABASE_URL, SQLite in the data dir)")
    p.set_defaults(func=cmd_keys)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m circuitd.cli.service``: these commands without the rest of ``circuitd``."""
    parser = argparse.ArgumentParser(prog="circuitd", description="The circuitd service.")
    add_service_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except CircuitdError as exc:
        print(f"circuitd: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

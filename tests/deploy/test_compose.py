"""compose.yaml's safe defaults, checked by parsing it (the machine's docker has no compose):
no secret has a default, Redis and Flower want a password, nothing is published beyond this
host, no service runs without auth, and the file does not start without .env's values."""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.deploy.compose_file import (
    COMPOSE,
    InterpolationError,
    command_text,
    environment,
    interpolate,
    load,
    read_env_file,
    references,
    strings,
)

SECRETS = ("POSTGRES_PASSWORD", "REDIS_PASSWORD", "FLOWER_BASIC_AUTH")
REQUIRED_REF = re.compile(r"^\$\{(?P<name>[A-Z_]+):\?[^}]+\}$")  # the whole value: ${VAR:?message}
URL_USERINFO = re.compile(r"[a-z][a-z0-9+.-]*://(?P<user>[^:/@\s]*):(?P<password>\$\{[^}]*\}|[^@\s/]*)@")
SECRET_FLAGS = ("--requirepass", "--basic-auth", "--password", "-a")
SECRET_KEY = re.compile(r"PASSWORD|SECRET|TOKEN|BASIC_AUTH|REDISCLI_AUTH", re.IGNORECASE)


def required(value: str) -> str | None:
    """The variable a value requires, when the value is exactly ``${VAR:?message}``."""
    m = REQUIRED_REF.match(value)
    return m["name"] if m else None


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load()


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


@pytest.fixture(scope="module")
def example_env() -> dict[str, str]:
    return read_env_file()


# --- the interpolation rules this file relies on ---------------------------------------------


@pytest.mark.parametrize(
    "text,env,expected",
    [
        ("${A:-x}", {}, "x"),
        ("${A:-x}", {"A": ""}, "x"),
        ("${A-x}", {"A": ""}, ""),
        ("${A:-x}", {"A": "v"}, "v"),
        ("${A:+x}", {"A": "v"}, "x"),
        ("${A:+x}", {}, ""),
        ("$A/${B}", {"A": "1", "B": "2"}, "1/2"),
        ("$$A@$${B}", {"A": "1"}, "$A@${B}"),
        ("${A:?need A}", {"A": "v"}, "v"),
        ("${A?need A}", {"A": ""}, ""),
    ],
)
def test_interpolation_follows_composes_rules(text: str, env: dict[str, str], expected: str) -> None:
    assert interpolate({"k": text}, env) == {"k": expected}


@pytest.mark.parametrize("env", [{}, {"A": ""}])
def test_required_variable_without_a_value_fails_with_its_message(env: dict[str, str]) -> None:
    with pytest.raises(InterpolationError) as err:
        interpolate({"k": ["x-${A:?set A in .env}"]}, env)
    assert err.value.missing == {"A": "set A in .env"}


# --- compose.yaml ----------------------------------------------------------------------------


def test_secrets_are_required_never_defaulted(compose: dict[str, Any]) -> None:
    refs = [ref for text in strings(compose) for ref in references(text) if ref[0] in SECRETS]
    assert {name for name, _ in refs} == set(SECRETS)
    assert {op for _, op in refs} == {":?"}, refs  # the old file had ${POSTGRES_PASSWORD:-circuitd}


def test_no_literal_password(compose: dict[str, Any], services: dict[str, dict[str, Any]]) -> None:
    userinfo = [m for text in strings(compose) for m in URL_USERINFO.finditer(text)]
    assert {m["user"] for m in userinfo} == {"circuitd", ""}  # PostgreSQL's user; Redis has none
    for m in userinfo:
        assert required(m["password"]), f"a literal password in a URL: {m[0]}"
    secret_values = {
        f"{name}.{key}": value
        for name, service in services.items()
        for key, value in environment(service).items()
        if SECRET_KEY.search(key)
    }
    assert set(secret_values) == {
        "redis.REDISCLI_AUTH", "postgres.POSTGRES_PASSWORD", "flower.FLOWER_BASIC_AUTH",
    }
    for where, value in secret_values.items():
        assert required(value), f"{where} = {value!r}: not a required ${{VAR:?...}}"
    flagged = {}  # secrets given on a command line
    for name, service in services.items():
        args = service.get("command") or []
        for flag, value in zip(args, args[1:], strict=False):
            if flag in SECRET_FLAGS:
                flagged[f"{name} {flag}"] = value
        for arg in args:
            flag, eq, value = str(arg).partition("=")
            if eq and flag in SECRET_FLAGS:
                flagged[f"{name} {flag}"] = value
    assert set(flagged) == {"redis --requirepass"}
    for where, value in flagged.items():
        assert required(value), f"{where} {value!r}: not a required ${{VAR:?...}}"


def test_redis_wants_the_password_and_its_healthcheck_sends_it(services: dict[str, dict[str, Any]]) -> None:
    redis = services["redis"]
    command = redis["command"]
    assert command[0] == "redis-server"  # the image's entrypoint drops root only for redis-server
    assert required(command[command.index("--requirepass") + 1]) == "REDIS_PASSWORD"
    assert required(environment(redis)["REDISCLI_AUTH"]) == "REDIS_PASSWORD"
    assert redis["healthcheck"]["test"] == ["CMD-SHELL", "redis-cli ping | grep -q PONG"]


def test_every_broker_url_carries_the_password(services: dict[str, dict[str, Any]]) -> None:
    envs = {name: environment(s) for name, s in services.items()}
    brokers = {name: env["BROKER_URL"] for name, env in envs.items() if "BROKER_URL" in env}
    assert set(brokers) == {"api", "worker-gpu", "worker-cpu", "flower"}
    for name, url in brokers.items():
        assert re.fullmatch(r"redis://:\$\{REDIS_PASSWORD:\?[^}]+\}@redis:6379/0", url), f"{name}: {url}"
    for name, service in services.items():  # nor does any command name a broker of its own
        assert "--broker" not in command_text(service), name


def test_flower_is_opt_in_behind_a_login_on_this_host(services: dict[str, dict[str, Any]]) -> None:
    flower = services["flower"]
    assert flower["profiles"] == ["monitoring"]
    assert [name for name, s in services.items() if s.get("profiles")] == ["flower"]
    # FLOWER_BASIC_AUTH is Flower's --basic-auth option, read from the environment (off the command line).
    assert required(environment(flower)["FLOWER_BASIC_AUTH"]) == "FLOWER_BASIC_AUTH"
    assert flower["ports"] == ["127.0.0.1:${FLOWER_PORT:-5555}:5555"]


def test_ports_are_published_on_loopback_only(
    compose: dict[str, Any], example_env: dict[str, str]
) -> None:
    resolved = interpolate(compose, example_env)["services"]
    published = {name: s["ports"] for name, s in resolved.items() if s.get("ports")}
    assert published == {"api": ["127.0.0.1:8000:8000"], "flower": ["127.0.0.1:5555:5555"]}
    for name, ports in published.items():
        for port in ports:  # no bare "8000:8000" (all interfaces) nor 0.0.0.0
            assert isinstance(port, str) and port.count(":") == 2 and port.startswith("127.0.0.1:"), name


def test_no_service_runs_without_auth() -> None:
    text = COMPOSE.read_text()
    for switch in ("CIRCUITD_AUTH_DISABLED", "--no-auth", "--allow-public-no-auth"):
        assert switch not in text


def test_without_env_values_compose_refuses_naming_them(compose: dict[str, Any]) -> None:
    with pytest.raises(InterpolationError) as err:
        interpolate(compose, {})
    assert set(err.value.missing) == set(SECRETS)
    assert err.value.missing["POSTGRES_PASSWORD"] == "set POSTGRES_PASSWORD in .env"
    assert "POSTGRES_PASSWORD" in str(err.value)
    with pytest.raises(InterpolationError) as err:  # empty counts as unset
        interpolate(compose, {"POSTGRES_PASSWORD": "", "REDIS_PASSWORD": "r", "FLOWER_BASIC_AUTH": "a:b"})
    assert set(err.value.missing) == {"POSTGRES_PASSWORD"}


def test_with_env_example_values_compose_resolves(
    compose: dict[str, Any], example_env: dict[str, str]
) -> None:
    services = interpolate(compose, example_env)["services"]
    api = environment(services["api"])
    assert api["DATABASE_URL"] == "postgresql://circuitd:change-me-postgres@postgres:5432/circuitd"
    assert api["BROKER_URL"] == "redis://:change-me-redis@redis:6379/0"
    assert environment(services["flower"])["BROKER_URL"] == api["BROKER_URL"]
    assert environment(services["flower"])["FLOWER_BASIC_AUTH"] == "admin:change-me-flower"
    assert environment(services["postgres"])["POSTGRES_PASSWORD"] == "change-me-postgres"
    assert command_text(services["worker-cpu"]).endswith("--name $WORKER_NAME@$HOSTNAME")  # $$ -> $
    assert services["redis"]["command"][-2:] == ["--requirepass", "change-me-redis"]


def test_env_example_lists_every_variable_without_real_secrets(
    compose: dict[str, Any], example_env: dict[str, str]
) -> None:
    used = {name for text in strings(compose) for name, _ in references(text)}
    assert used <= set(example_env), used - set(example_env)
    required = {name for text in strings(compose) for name, op in references(text) if op == ":?"}
    assert required == set(SECRETS)
    for name in SECRETS:
        assert "change-me" in example_env[name], f"{name} in .env.example looks like a real secret"

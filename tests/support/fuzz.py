"""Schemathesis driven by hand for the API fuzz (tests/api/test_fuzz.py): what was sent, what came
back, and every distinct check failure with one request that shows it.

The cases come from schemathesis's Hypothesis strategies and state machine; the checks are its own
(no 5xx; status code, content type and body as the OpenAPI document declares them). A failed check is
recorded rather than raised, so one run lists every kind of failure instead of stopping (and
shrinking) at the first; the test asserts on the list at the end.
"""

from __future__ import annotations

import copy
import json
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import hypothesis
import hypothesis.errors
from hypothesis import HealthCheck, Phase
from hypothesis import strategies as st
from hypothesis.strategies import SearchStrategy
from schemathesis import Case, GenerationMode, HookContext, Response
from schemathesis.checks import CheckFunction, not_a_server_error
from schemathesis.core import NOT_SET
from schemathesis.core.failures import FailureGroup
from schemathesis.engine.errors import is_inconsistent_replay
from schemathesis.generation.stateful.state_machine import APIStateMachine
from schemathesis.schemas import APIOperation, BaseSchema
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

# "No 5xx and no response that breaks the schema", as schemathesis's own checks.
CHECKS: tuple[CheckFunction, ...] = (
    not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
)
ISOLATION = "isolation"  # the check of the second key: another owner's job is 404 as if it did not exist
SHOWN = 400  # characters of a request or response body kept in a finding


# Generating requests for a large schema is slow and filters a lot; neither is a failure here.
SLOW_OR_FILTERED = [
    HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large,
    HealthCheck.large_base_example,
]


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def settings(max_examples: int, **extra: Any) -> hypothesis.settings:
    """Generation only (no shrinking: failures are recorded, not raised), no example database (CI
    reproduces from the seed alone), no deadline (a loaded machine is slow, not wrong)."""
    return hypothesis.settings(
        max_examples=max_examples, phases=[Phase.explicit, Phase.generate], database=None, deadline=None,
        suppress_health_check=SLOW_OR_FILTERED, **extra,
    )


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= SHOWN else text[:SHOWN] + "..."


def describe_request(case: Case) -> str:
    """Method, path, query, headers other than the key, and body: enough to replay by hand."""
    parts = [f"{case.method.upper()} {case.formatted_path}"]
    if case.query:
        parts.append(f"query={dict(case.query)!r}")
    headers = {k: v for k, v in (case.headers or {}).items() if k.lower() != "authorization"}
    if headers:
        parts.append(f"headers={headers!r}")
    if isinstance(case.body, bytes):
        parts.append(f"body=<bytes> {_short(repr(case.body))}")
    elif case.body is not None and case.body is not NOT_SET:
        try:
            body = json.dumps(case.body, default=repr)
        except (TypeError, ValueError):
            body = repr(case.body)
        parts.append(f"body={_short(body)}")
    return " ".join(parts)


def describe_response(response: Response) -> str:
    content_type = response.headers.get("content-type", ["?"])[0]
    return f"{response.status_code} {content_type} {_short(response.text)}"


@dataclass
class Finding:
    """One kind of failure: an operation, a check and a status code, with the first request that
    showed it and how often it was seen."""

    operation: str
    check: str
    status: int
    message: str
    request: str
    response: str
    count: int = 1

    def render(self) -> str:
        return (
            f"[{self.check}] {self.operation} -> {self.status} (x{self.count})\n"
            f"    why: {self.message}\n    request: {self.request}\n    response: {self.response}"
        )


@dataclass
class Tally:
    """Counts for the report and the distinct findings, keyed by operation, check, status and reason."""

    operations: set[str] = field(default_factory=set)
    cases: Counter[str] = field(default_factory=Counter)  # per phase
    classes: Counter[str] = field(default_factory=Counter)  # "2xx", "4xx", ...
    statuses: Counter[int] = field(default_factory=Counter)
    findings: dict[tuple[str, str, int, str], Finding] = field(default_factory=dict)
    isolation_probes: int = 0
    unsatisfiable: list[str] = field(default_factory=list)  # nothing of this kind could be generated
    seconds: defaultdict[str, float] = field(default_factory=lambda: defaultdict(float))  # per phase
    scenarios: int = 0  # state machine runs started
    restarts: int = 0  # state machine runs Hypothesis stopped as inconsistent (see run_scenarios)

    @contextmanager
    def timed(self, phase: str) -> Iterator[None]:
        start = time.monotonic()
        try:
            yield
        finally:
            self.seconds[phase] += time.monotonic() - start

    def observe(self, phase: str, case: Case, response: Response) -> None:
        """Count one response and run the checks on it; failures become findings."""
        self.operations.add(case.operation.label)
        self.cases[phase] += 1
        self.classes[f"{response.status_code // 100}xx"] += 1
        self.statuses[response.status_code] += 1
        try:
            case.validate_response(response, checks=list(CHECKS))
        except FailureGroup as group:
            for failure in group.exceptions:
                where = "/".join(map(str, getattr(failure, "schema_path", ())))  # a body: the schema's rule
                self.add(Finding(
                    case.operation.label, failure.title, response.status_code, _short(failure.message),
                    describe_request(case), describe_response(response),
                ), where)

    def add(self, finding: Finding, where: str = "") -> None:
        """One finding per operation, check, status and (for a body) the rule of the schema it broke."""
        key = (finding.operation, finding.check, finding.status, where)
        seen = self.findings.get(key)
        if seen is None:
            self.findings[key] = finding
        else:
            seen.count += 1

    def expect_not_found(self, case: Case, response: Response, what: str, phase: str | None = None) -> None:
        """The second key's probe of the first key's job: anything but 404 leaks or touches it. With a
        ``phase`` the probe was a generated case of its own; else it replays one already counted."""
        self.isolation_probes += 1
        if phase is not None:
            self.cases[phase] += 1
        self.classes[f"{response.status_code // 100}xx"] += 1
        self.statuses[response.status_code] += 1
        if response.status_code != 404:
            self.add(Finding(
                case.operation.label, ISOLATION, response.status_code,
                f"{what}: expected 404 as for a job that does not exist",
                describe_request(case), describe_response(response),
            ))

    def report(self) -> str:
        total = sum(self.cases.values())
        phases = ", ".join(f"{p} {self.cases[p]} in {s:.0f} s" for p, s in self.seconds.items())
        classes = ", ".join(f"{c} {n}" for c, n in sorted(self.classes.items()))
        codes = ", ".join(f"{c}: {n}" for c, n in sorted(self.statuses.items()))
        lines = [
            f"operations tested: {len(self.operations)}",
            f"cases generated: {total} ({phases}); second-key probes: {self.isolation_probes}",
            f"stateful scenarios: {self.scenarios} ({self.restarts} restarts)",
            f"responses by class: {classes}",
            f"responses by status: {codes}",
            f"not generated (unsatisfiable): {', '.join(self.unsatisfiable) or 'none'}",
            f"failures: {len(self.findings)} distinct, {sum(f.count for f in self.findings.values())} in all",
        ]
        ordered = sorted(self.findings.values(), key=lambda f: (f.operation, f.check, f.status))
        return "\n".join(lines + [f.render() for f in ordered])


Send = Callable[[Case], Response]
Judge = Callable[[Case, Response], None]


def fuzz_operation(
    operation: APIOperation, mode: GenerationMode, tally: Tally, send: Send, judge: Judge, *,
    max_examples: int, seed: int, headers: Mapping[str, str], path_parameters: Mapping[str, str] | None = None
) -> None:
    """Hypothesis cases of one operation in one mode (headers and path parameters given are fixed),
    each sent and its response judged."""
    strategy = operation.as_strategy(
        generation_mode=mode, headers=dict(headers), path_parameters=dict(path_parameters or {}) or None,
    )

    @hypothesis.seed(seed)
    @settings(max_examples)
    @hypothesis.given(case=strategy)
    def run(case: Case) -> None:
        judge(case, send(case))

    try:
        run()
    except hypothesis.errors.Unsatisfiable:
        tally.unsatisfiable.append(f"{operation.label} {mode.value} {dict(path_parameters or {})}")


def has_inputs(operation: APIOperation, fixed: Iterable[str]) -> bool:
    """Whether anything of the operation is left to generate (and so to make invalid) past ``fixed``."""
    names = {p.name.lower() for p in operation.iter_parameters()} - {n.lower() for n in fixed}
    return bool(names) or len(operation.body) > 0


def offer_valid_bodies(schema: BaseSchema, bodies: Mapping[str, Sequence[Any]]) -> None:
    """Let valid cases of an operation (by label) also be one of ``bodies``, its other inputs as
    generated. A body can be valid by the schema and still refused by rules across its fields (a
    spec names a task; validation names nodes of the graph); without these no job would be created,
    and no chain of calls would start from one."""

    def flatmap_case(context: HookContext, case: Case) -> SearchStrategy[Case]:
        choices = bodies.get(case.operation.label)
        meta = case.meta
        if not choices or meta is None or not meta.generation.mode.is_positive:
            return st.just(case)

        def with_body(body: Any) -> Case:
            derived = case.derive()
            derived.body = copy.deepcopy(body)
            return derived

        return st.one_of(st.just(case), st.sampled_from(list(choices)).map(with_body))

    schema.hook(flatmap_case)


def two_key_workflow(schema: BaseSchema, tally: Tally, alice: str, bob: str) -> type[APIStateMachine]:
    """Schemathesis's state machine over the links it infers from the schema (a job's ``id`` feeds
    every ``{job_id}``), every call as ``alice``; each of her calls on a job that succeeds is sent
    again as ``bob``, who must get 404 (a DELETE goes as bob first, while the job still exists)."""
    base = schema.as_state_machine()

    class TwoKeys(base):  # type: ignore[valid-type, misc]
        def setup(self) -> None:
            tally.scenarios += 1

        def get_call_kwargs(self, case: Case) -> dict[str, Any]:
            return {"headers": bearer(alice)}

        def before_call(self, case: Case) -> None:
            if case.method.upper() == "DELETE" and "{job_id}" in case.operation.path:
                tally.expect_not_found(case, case.call(headers=bearer(bob)), "bob deletes alice's job")

        def validate_response(
            self, response: Response, case: Case, additional_checks: Any = None, **kwargs: Any
        ) -> None:
            tally.observe("stateful", case, response)
            if 200 <= response.status_code < 300 and "{job_id}" in case.operation.path:
                tally.expect_not_found(case, case.call(headers=bearer(bob)), "bob replays alice's call")

    return TwoKeys


def run_scenarios(
    machine: type[APIStateMachine], tally: Tally, *, scenarios: int, steps: int, seed: int, tries: int = 5
) -> None:
    """Run the state machine until ``scenarios`` have started. Which calls are possible depends on the
    server's state (the jobs that exist), which Hypothesis can take for a strategy that draws
    inconsistently and stop with ``Flaky``; as schemathesis's own engine does, a stopped run is
    continued, here with the next seed."""
    for attempt in range(tries):
        left = scenarios - tally.scenarios
        if left <= 0:
            return
        try:
            hypothesis.seed(seed + attempt)(machine).run(settings=settings(left, stateful_step_count=steps))
            return
        except (hypothesis.errors.Flaky, AssertionError) as exc:
            if not isinstance(exc, hypothesis.errors.Flaky) and not is_inconsistent_replay(exc):
                raise
            tally.restarts += 1

"""The web UI (``/ui/``) in headless Chromium against a real ``circuitd up`` (API, one worker,
embedded SQLite store and broker): the key typed into the page, jobs submitted through the form,
listed, cancelled and deleted, circuits drawn and re-pruned, two circuits compared. Every request
may reach only the service's origin, and no page may log a console error or throw (the ``page``
fixture fails the test on one); the one test that provokes a 422 allows exactly that line.

The numbers the page must show are read from the API with httpx, not from the page's code. The
page runs under ``script-src 'self'``, so waits poll ``page.evaluate`` (run by the DevTools
protocol) instead of ``wait_for_function``, whose string predicate the CSP refuses to eval."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Page

from tests.browser.conftest import ConsoleAllowance
from tests.support.service import ROOT, Api, free_port, long_spec, wait_until

pytestmark = pytest.mark.browser

CIRCUITD = str(Path(sys.executable).parent / "circuitd")  # the console script a user runs
JOB_S = 240  # a small zoo:synth job on a loaded 2-core machine, queued behind another
DRAW_MS = 60_000
IOI_PROMPT = "When Mary and John went to the store, John gave a drink to"  # as tests/api/test_jobs_http.py
EAP_SPEC: dict[str, Any] = {"model": "zoo:synth", "task": "ioi", "method": "eap", "n_prompts": 8}
TOP_N_A, TOP_N_B = 25, 40
COUNTS = ("shared", "only_a", "only_b", "n_a", "n_b")  # the compare endpoint's, per part


@dataclass(frozen=True)
class Up:
    """A running ``circuitd up``: where it answers and the key it wrote to its data dir."""

    url: str
    key: str


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    """``circuitd up`` as a user starts it, without any CIRCUITD_* setting of this shell, on its
    own queue prefix; the whole process group is stopped afterwards."""
    base = tmp_path_factory.mktemp("ui-up")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CIRCUITD_")}
    env.update(CIRCUITD_QUEUE_PREFIX=f"ui{uuid.uuid4().hex[:8]}-", PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    log_path = base / "up.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [CIRCUITD, "up", "--data-dir", str(base / "data"), "--port", str(port), "--grace", "5",
             "--loglevel", "WARNING"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        def healthy() -> bool:
            assert proc.poll() is None, log_path.read_text(errors="replace")
            try:
                return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(healthy, 90, "circuitd up")
        yield Up(url, (base / "data" / "api-key").read_text().strip())
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


@pytest.fixture
def service_origin(up: Up) -> str:
    """The pages may reach this service (tests/browser/conftest.py blocks every other origin)."""
    return up.url


@pytest.fixture(scope="module")
def api(up: Up) -> Api:
    return Api(up.url, up.key)


# --- driving the page -------------------------------------------------------------------------


def eventually(page: Page, expression: str, want: Any = True, timeout_s: float = 60) -> Any:
    """Poll a JavaScript expression until it equals ``want``; its last value otherwise (for the assert)."""
    deadline = time.monotonic() + timeout_s
    value = page.evaluate(expression)
    while value != want and time.monotonic() < deadline:
        page.wait_for_timeout(100)
        value = page.evaluate(expression)
    return value


def sign_in(page: Page, up: Up, route: str = "/jobs") -> None:
    """Open the UI, type the key into its field, then go to ``route``."""
    page.goto(f"{up.url}/")
    assert page.url == f"{up.url}/ui/#/jobs"
    page.wait_for_selector("#key-needed")
    assert page.inner_text("#key-status") == "API key needed"
    page.fill("#api-key", up.key)
    page.press("#api-key", "Enter")
    page.wait_for_selector("#jobs-table")
    assert page.evaluate("sessionStorage.getItem('circuitd.apiKey')") == up.key
    assert up.key not in page.url
    if route != "/jobs":
        page.goto(f"{up.url}/ui/#{route}")


def open_job(page: Page, up: Up, job_id: str, draws: int = 1) -> None:
    page.goto(f"{up.url}/ui/#/jobs/{job_id}")
    page.wait_for_selector(f"#viewer[data-draws='{draws}']", timeout=DRAW_MS)


def viewer(page: Page, call: str) -> Any:
    return page.evaluate(f"window.circuitdViewer.{call}")


def graph(api: Api, job_id: str, **params: Any) -> dict[str, Any]:
    r = api.http.get(f"/v1/jobs/{job_id}/graph", params=params)
    r.raise_for_status()
    return r.json()


def submit(api: Api, spec: dict[str, Any]) -> str:
    r = api.submit(spec)
    assert r.status_code == 202, r.text
    return r.json()["id"]


def finished(api: Api, job_id: str) -> dict[str, Any]:
    job = api.wait(job_id, timeout=JOB_S)
    assert job["status"] == "succeeded", job
    return job


def top_names(doc: dict[str, Any], n: int) -> set[str]:
    """The ``n`` edge names of largest |score|; the boundary must not be a tie, else n is ambiguous."""
    best: dict[str, float] = {}
    for link in doc["links"]:
        best[link["name"]] = max(best.get(link["name"], 0.0), abs(link["score"]))
    ranked = sorted(best, key=lambda name: -best[name])
    assert best[ranked[n - 1]] > best[ranked[n]], f"top {n}: a tie at the boundary"
    return set(ranked[:n])


def click_node(page: Page, node_id: str) -> None:
    """A real mouse click on the node where cytoscape (the viewer's ``cy``) drew it, scrolled to the
    middle of the window first; cytoscape learns its container moved from the scroll event, a frame later."""
    where = f"""(() => {{ const cy = window.circuitdViewer.cy;
        const p = cy.getElementById({json.dumps(node_id)}).renderedPosition();
        const box = cy.container().getBoundingClientRect();
        return {{x: box.x + p.x, y: box.y + p.y}}; }})()"""
    page.evaluate(f"window.scrollBy(0, {where}.y - window.innerHeight / 2)")
    page.wait_for_timeout(300)
    spot = page.evaluate(where)
    page.mouse.move(spot["x"], spot["y"])
    page.mouse.click(spot["x"], spot["y"])


# --- the pages --------------------------------------------------------------------------------


def test_jobs_page_says_next_to_the_key_field_when_the_key_is_refused(
    page: Page, up: Up, console_allowance: ConsoleAllowance
) -> None:
    console_allowance.allow(r"Failed to load resource: the server responded with a status of 401")
    page.goto(f"{up.url}/ui/")
    page.fill("#api-key", "cdk_not-a-key")
    page.press("#api-key", "Enter")
    page.wait_for_selector("#jobs-error:not(:empty)")
    assert page.inner_text("#key-status") == "API key refused"
    assert len(console_allowance.matched) == 1  # one refused call: the list stops asking
    page.fill("#api-key", up.key)
    page.press("#api-key", "Enter")
    page.wait_for_selector("#jobs-summary:not(:empty)")
    assert page.inner_text("#key-status") == ""
    assert page.evaluate("sessionStorage.getItem('circuitd.apiKey')") == up.key
    assert len(console_allowance.matched) == 1


def test_submit_page_runs_an_eap_job_listed_drawn_and_explored(page: Page, up: Up, api: Api) -> None:
    sign_in(page, up, "/submit")
    page.wait_for_selector("#submit-form")
    page.fill("#f-model", "zoo:synth")
    page.select_option("#f-task", "ioi")
    page.select_option("#f-method", "eap")
    page.fill("#f-n_prompts", str(EAP_SPEC["n_prompts"]))
    page.fill("#f-params-top_n", str(TOP_N_A))
    page.click("#submit-job")
    page.wait_for_url(f"{up.url}/ui/#/jobs/*")
    job_id = page.url.rsplit("/", 1)[1]
    spec = api.job(job_id)["spec"]
    assert (spec["model"], spec["task"], spec["method"], spec["n_prompts"], spec["params"]["top_n"]) == (
        "zoo:synth", "ioi", "eap", EAP_SPEC["n_prompts"], TOP_N_A)

    page.goto(f"{up.url}/ui/#/jobs")  # listed, then seen to succeed through the list's polling
    row = f"#jobs-table tr[data-job-id='{job_id}']"
    page.wait_for_selector(row)
    cells = [page.inner_text(f"{row} td:nth-child({k})") for k in (1, 3, 4, 5)]
    assert cells == [job_id, "eap", "zoo:synth", "ioi"]
    page.wait_for_selector(f"{row} .status-succeeded", timeout=JOB_S * 1000)
    job = api.job(job_id)
    faithfulness = float(page.inner_text(f"{row} td:nth-child(6)"))
    assert faithfulness == pytest.approx(job["metrics"]["faithfulness"], rel=1e-3)

    page.click(f"{row} a.job-id")
    page.wait_for_selector("#viewer[data-draws='1']", timeout=DRAW_MS)
    assert page.url == f"{up.url}/ui/#/jobs/{job_id}"
    n_edges = job["metrics"]["n_edges"]
    assert viewer(page, "kind") == "edge-circuit"
    assert viewer(page, "drawnEdges()") == n_edges

    doc = graph(api, job_id, all_edges="true")
    top_n = n_edges - 5  # fewer than the circuit's, so the count moves
    names = top_names(doc, top_n)
    drawn = [link for link in doc["links"] if link["name"] in names]
    page.fill("#viewer input.cv-topn", str(top_n))  # the slider, as a user drags it
    assert eventually(page, "window.circuitdViewer.drawnEdges()", len(drawn)) == len(drawn)

    degree: dict[str, int] = {}
    for link in drawn:
        for end in (link["source"], link["target"]):
            degree[end] = degree.get(end, 0) + 1
    node = max(sorted(degree), key=lambda n: degree[n])
    incident = {link["name"] for link in drawn if node in (link["source"], link["target"])}
    assert len(incident) == degree[node] >= 2
    click_node(page, node)
    page.wait_for_selector("#viewer .cv-panel h2")
    words = set(page.inner_text("#viewer .cv-panel").split())
    listed = {link["name"] for link in doc["links"] if link["name"] in words}
    assert node in words and listed == incident, f"panel for {node}: {sorted(listed)} != {sorted(incident)}"

    with page.expect_download() as download:  # fetched with the key, saved from a Blob
        page.click("#downloads button[data-download='node-link JSON']")
    saved = json.loads(Path(download.value.path()).read_text(encoding="utf-8"))
    assert len(saved["links"]) == n_edges and download.value.suggested_filename == f"{job_id}.json"


def test_submit_page_shows_the_api_message_next_to_the_invalid_field(
    page: Page, up: Up, api: Api, console_allowance: ConsoleAllowance
) -> None:
    console_allowance.allow(r"Failed to load resource: the server responded with a status of 422")
    jobs_before = api.http.get("/v1/jobs").json()["total"]
    sign_in(page, up, "/submit")
    page.wait_for_selector("#submit-form")
    page.select_option("#f-task", "ioi")
    page.select_option("#f-method", "eap")
    cases = [("n_prompts", {"n_prompts": 0}, "#f-n_prompts", "0"),
             ("params.top_n", {"n_prompts": 8, "params": {"top_n": -1}}, "#f-params-top_n", "-1")]
    for field, wrong, selector, typed in cases:
        answer = api.submit({"model": "zoo:synth", "task": "ioi", "method": "eap", **wrong})
        assert answer.status_code == 422
        message = next(e["message"] for e in answer.json()["errors"] if e["field"] == field)
        if field == "params.top_n":
            page.fill("#f-n_prompts", "8")
        page.fill(selector, typed)
        page.click("#submit-job")
        slot = f"#submit-form [data-error-for='{field}']"
        assert eventually(page, f"document.querySelector({json.dumps(slot)}).textContent", message) == message
        slots = page.locator("#submit-form [data-error-for]").all_text_contents()
        assert [text for text in slots if text] == [message]  # only next to that field
        assert page.inner_text("#form-error") == ""
    assert len(console_allowance.matched) == 2
    assert page.url == f"{up.url}/ui/#/submit"
    assert api.http.get("/v1/jobs").json()["total"] == jobs_before  # nothing was submitted


def test_job_page_draws_an_attribution_graph_and_reprunes_it(page: Page, up: Up, api: Api) -> None:
    spec = {"model": "zoo:synth", "method": "attribution-graph", "params": {"prompt": IOI_PROMPT}}
    job_id = submit(api, spec)
    finished(api, job_id)
    pruned = graph(api, job_id)
    sign_in(page, up)
    open_job(page, up, job_id)
    assert viewer(page, "kind") == "attribution"
    assert viewer(page, "drawnNodes()") == len(pruned["nodes"])

    edge = pruned["graph"]["edge_threshold"]
    tighter = graph(api, job_id, node_threshold=0.5, edge_threshold=edge)
    assert len(tighter["nodes"]) < len(pruned["nodes"])  # so the redrawn count is informative
    page.fill("#viewer input.cv-node-threshold", "0.5")
    page.wait_for_selector("#viewer[data-draws='2']:not([data-busy])", timeout=DRAW_MS)
    assert viewer(page, "drawnNodes()") == len(tighter["nodes"])
    assert page.inner_text("#viewer .cv-node-threshold-label") == "0.5"


def test_compare_page_counts_and_overlays_two_circuits(page: Page, up: Up, api: Api) -> None:
    job_a = submit(api, EAP_SPEC | {"params": {"top_n": TOP_N_A}})
    job_b = submit(api, EAP_SPEC | {"params": {"top_n": TOP_N_B}})
    finished(api, job_a)
    finished(api, job_b)
    expected = api.http.get(f"/v1/jobs/{job_a}/graph/compare/{job_b}").json()
    assert 0 < expected["edges"]["jaccard"] < 1

    sign_in(page, up)
    open_job(page, up, job_a)
    page.select_option("#compare-with", job_b)  # the job page's chooser opens the compare page
    page.wait_for_selector("#viewer[data-draws='1']", timeout=DRAW_MS)
    assert page.url == f"{up.url}/ui/#/compare/{job_a}/{job_b}"
    for part in ("edges", "nodes"):
        row = f"#compare-counts tr[data-part='{part}']"
        want = expected[part]
        shown = {key: int(page.inner_text(f"{row} td[data-count='{key}']")) for key in COUNTS}
        assert shown == {k: len(v) if isinstance(v, list) else v for k, v in want.items() if k in COUNTS}
        jaccard = page.inner_text(f"{row} td[data-count='jaccard']")  # three decimals
        assert len(jaccard) == 5 and float(jaccard) == pytest.approx(want["jaccard"], abs=5e-4), part

    # the overlay draws every edge of either circuit once, each marked with the side it is on
    edges = expected["edges"]
    sides = [len(edges["shared"]), len(edges["only_a"]), len(edges["only_b"])]
    legend = [page.inner_text(f"#compare-legend [data-side='{side}']") for side in ("shared", "a", "b")]
    assert [int(text.rsplit("(", 1)[1].rstrip(")")) for text in legend] == sides
    assert viewer(page, "drawnEdges()") == sum(sides)


def test_submit_page_sends_an_inline_task_and_the_job_page_shows_why_it_failed(
    page: Page, up: Up, api: Api
) -> None:
    inline = {"clean": [IOI_PROMPT, "When Tom and Ann went to the park, Ann gave a ball to"],
              "corrupted": ["a b", "a b"], "correct": [" Mary", " Tom"], "incorrect": [" John", " Ann"]}
    sign_in(page, up, "/submit")
    page.wait_for_selector("#submit-form")
    page.fill("#f-model", "zoo:synth")
    page.select_option("#f-task", "inline")
    for name, lines in inline.items():
        page.fill(f"#f-task-{name}", "\n".join(lines) + "\n\n")  # blank lines are no prompts
    page.select_option("#f-method", "eap")
    page.click("#submit-job")
    page.wait_for_url(f"{up.url}/ui/#/jobs/*")
    job_id = page.url.rsplit("/", 1)[1]
    sent = api.job(job_id)["spec"]["task"]  # the server adds the optional fields' defaults
    assert {name: sent[name] for name in inline} == inline
    page.wait_for_selector("#job-error:not([hidden])", timeout=JOB_S * 1000)
    job = api.job(job_id)
    assert job["status"] == "failed" and job["error"]  # "b" of the corrupted prompts: not in the vocabulary
    assert page.inner_text("#job-status") == "failed"
    assert page.inner_text("#job-error") == f"{job['error_code']}: {job['error']}"
    assert page.locator("#viewer").count() == 0


def test_jobs_page_polls_cancels_and_deletes(page: Page, up: Up, api: Api) -> None:
    long_id = submit(api, long_spec())
    api.wait(long_id, check=lambda job: job["status"] == "running" and job["progress"] > 0, timeout=JOB_S)
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))

    def list_calls() -> int:
        return sum(url.startswith(f"{up.url}/v1/jobs?") for url in requests)

    sign_in(page, up)
    row = f"#jobs-table tr[data-job-id='{long_id}']"
    page.wait_for_selector(f"{row} progress")
    assert 0 < float(page.get_attribute(f"{row} progress", "value") or "nan") < 1
    assert page.inner_text(f"{row} .stage").strip()
    before = list_calls()
    page.wait_for_timeout(4000)
    assert 2 <= list_calls() - before <= 5  # about once a second while a job runs

    page.goto(f"{up.url}/ui/#/submit")  # leaving the list stops its polling, the job still running
    page.wait_for_selector("#submit-form")
    before = list_calls()
    page.wait_for_timeout(2000)
    assert list_calls() == before

    page.goto(f"{up.url}/ui/#/jobs")
    page.click(f"{row} button[data-action='cancel']")
    page.wait_for_selector(f"{row} .status-cancelled", timeout=JOB_S * 1000)
    assert api.job(long_id)["status"] == "cancelled"
    page.wait_for_selector(f"{row} button[data-action='delete']")
    before = list_calls()  # every job terminal: the list stops polling
    page.wait_for_timeout(2000)
    assert list_calls() == before

    page.once("dialog", lambda dialog: dialog.dismiss())  # asked first: dismissing keeps the job
    page.click(f"{row} button[data-action='delete']")
    page.wait_for_timeout(500)
    assert page.locator(row).count() == 1 and api.http.get(f"/v1/jobs/{long_id}").status_code == 200
    page.once("dialog", lambda dialog: dialog.accept())
    page.click(f"{row} button[data-action='delete']")
    page.wait_for_selector(row, state="detached")
    assert api.http.get(f"/v1/jobs/{long_id}").status_code == 404

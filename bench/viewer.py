"""Time the offline viewer (``circuitd view``) on large graphs in headless Chromium.

Two files written by ``circuitd discover``: the full edge graph of a GPT-2-small-shaped model
(``random:gpt2-small``, EAP with ``--all-edges``: 32,491 scored edges) and the stored attribution
graph of ``random:small`` with random TopK-32 transcoders (2,048 features) on a 17-token prompt
(about 2,100 nodes). Each is written as one page, opened from ``file://`` with every network
request refused, and timed from navigation to the viewer's first full render
(``document.body.dataset.ready``). The edge view's top-n slider is then moved to every edge
and back (``circuitdViewer.setTopN`` plus the next animation frame), timed per move. Ends with
one line ``render_s=X update_ms=Y``: the slower of the two first renders, and the median
slider move on the edge graph. Goal: ``render_s<2``, ``update_ms<100``.

    python bench/viewer.py [--work DIR] [--moves 1]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from playwright.sync_api import Page, sync_playwright

from circuitd.transcoders import random_transcoders, save
from circuitd.viewer.chromium import chromium_path, launch_args

CLI = [sys.executable, "-m", "circuitd.cli"]
N_TOKENS = 17


def _cli(*args: str) -> None:
    run = subprocess.run([*CLI, *args], capture_output=True, text=True)
    if run.returncode != 0:
        sys.exit(f"bench/viewer: circuitd {args[0]} failed: {run.stderr.strip().splitlines()[-1]}")


def edge_graph(work: Path) -> Path:
    out = work / "gpt2-small-eap.json"
    _cli("discover", "--model", "random:gpt2-small", "--task", "random", "--n-prompts", "2",
         "--method", "eap", "--all-edges", "--out", str(out))
    return out


def attribution_graph(work: Path) -> Path:
    tset = random_transcoders(4, 256, 2048, activation="topk", k=32, skip=True, seed=1)
    save(tset, work / "transcoders")
    out = work / "small-attribution.json"
    prompt = json.dumps(list(range(1, N_TOKENS + 1)))
    _cli("discover", "--model", "random:small@0", "--method", "attribution-graph", "--prompt", prompt,
         "--transcoders", str(work / "transcoders"), "--all-edges", "--out", str(out))
    return out


def first_render(page: Page, html: Path) -> float:
    """Seconds from navigation to the viewer's first full render."""
    started = time.perf_counter()
    page.goto(html.as_uri())
    page.wait_for_function("document.body.dataset.ready === '1'", timeout=600_000)
    return time.perf_counter() - started


SLIDER_MOVE = """async (n) => {
    const t = performance.now();
    const drawn = window.circuitdViewer.setTopN(n);
    await new Promise((done) => requestAnimationFrame(() => done()));
    return [performance.now() - t, drawn];
}"""


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--work", type=Path, default=None, help="where the graph files go (default: a temp dir)")
    ap.add_argument("--moves", type=int, default=1, help="slider moves each way")
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="circuitd-bench-viewer-"))
    work.mkdir(parents=True, exist_ok=True)
    files = {"edge": edge_graph(work), "attribution": attribution_graph(work)}
    pages = {}
    for kind, graph_file in files.items():
        pages[kind] = work / f"{kind}.html"
        _cli("view", str(graph_file), "-o", str(pages[kind]))
    renders: dict[str, float] = {}
    moves: list[float] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_path(), headless=True, args=launch_args())
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        local = ("file:", "data:")  # offline: every other request is refused
        page.route("**/*", lambda r: r.continue_() if r.request.url.startswith(local) else r.abort())
        for kind, html in pages.items():
            renders[kind] = first_render(page, html)
            counts = page.evaluate("[window.circuitdViewer.drawnNodes(), window.circuitdViewer.drawnEdges()]")
            print(f"{kind}: {files[kind].name}: first render {renders[kind]:.2f} s, "
                  f"{counts[0]} nodes and {counts[1]} edges drawn")
            if kind == "edge":
                doc = json.loads(files[kind].read_text())
                total = len({link["name"] for link in doc["links"]})
                small = int(doc["graph"]["metrics"]["n_edges"])
                for _ in range(args.moves):
                    for n in (total, small):
                        ms, drawn = page.evaluate(SLIDER_MOVE, n)
                        moves.append(ms)
                        print(f"  slider to top {n}: {drawn} edges drawn in {ms:.0f} ms")
        browser.close()
    print(f"render_s={max(renders.values()):.2f} update_ms={statistics.median(moves):.0f}")


if __name__ == "__main__":
    main()

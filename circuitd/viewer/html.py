"""A graph file as one self-contained HTML page: vendored JS/CSS inlined, the graph embedded as
JSON, and a Content-Security-Policy that forbids any network fetch, so the page works offline and
a node name from a file can neither break out of its script tag nor make the page call home."""

from __future__ import annotations

import html
import json
import math
from importlib.resources import files
from pathlib import Path
from typing import Any, Literal

from circuitd.errors import CircuitdError
from graphs.edge_circuit import node_attributes
from graphs.formats import check_format

GraphKind = Literal["edge-circuit", "attribution"]

CSP = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:"
# the page's scripts in load order: the vendored libraries, the viewer, and the offline start
SCRIPTS = ("vendor/cytoscape.min.js", "vendor/cytoscape-dagre.min.js", "vendor/uPlot.iife.min.js",
           "viewer.js", "offline.js")
STYLES = ("vendor/uPlot.min.css", "viewer.css")
GRAPH_SCRIPT_ID = "circuitd-graph"
_STATIC = files("circuitd.viewer") / "static"
_EMBED_DROPPED = ("adjacency",)  # the full matrix of a stored attribution graph: not drawn, often large


def _static(name: str) -> str:
    return (_STATIC / name).read_text(encoding="utf-8")


def graph_kind(doc: object) -> GraphKind:
    """Which kind of circuitd graph a parsed node-link document is; ValueError (one line) if none."""
    if not isinstance(doc, dict):
        raise ValueError("not a circuitd graph: the JSON is not an object")
    fields: dict[str, Any] = doc  # pyright: ignore[reportUnknownVariableType]
    missing = [f for f in ("graph", "nodes", "links") if f not in fields]
    if missing:
        raise ValueError(f"not a circuitd graph: node-link JSON lacks {', '.join(repr(m) for m in missing)}")
    meta, nodes, links = fields["graph"], fields["nodes"], fields["links"]
    if not isinstance(meta, dict) or not isinstance(nodes, list) or not isinstance(links, list):
        raise ValueError("not a circuitd graph: 'graph' must be an object, 'nodes' and 'links' lists")
    check_format(meta.get("format"))
    if any(not isinstance(n, dict) or "id" not in n for n in nodes):
        raise ValueError("not a circuitd graph: every node needs an 'id'")
    if any(not isinstance(link, dict) or "source" not in link or "target" not in link for link in links):
        raise ValueError("not a circuitd graph: every link needs a 'source' and a 'target'")
    if meta.get("kind") == "attribution":
        return "attribution"
    for node in nodes:
        node_attributes(str(node["id"]))  # ValueError naming the node when it is not an edge-circuit node
    if any("score" not in link for link in links):
        raise ValueError("not a circuitd graph: an edge-circuit link lacks its 'score'")
    return "edge-circuit"


def load_graph_doc(path: str | Path) -> dict[str, Any]:
    """The parsed graph file; CircuitdError naming the file and the reason when it is not one."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CircuitdError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise CircuitdError(f"{path}: is a directory, not a graph file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CircuitdError(f"{path}: cannot be read ({exc})") from None
    except json.JSONDecodeError as exc:
        raise CircuitdError(f"{path}: not JSON ({exc.msg} at line {exc.lineno})") from None
    try:
        graph_kind(doc)
    except ValueError as exc:
        raise CircuitdError(f"{path}: {exc}") from None
    return doc


def _finite(value: Any) -> Any:
    """NaN and infinities as null: Python writes them into JSON, the browser's JSON.parse refuses them."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}  # pyright: ignore[reportUnknownVariableType]
    if isinstance(value, list):
        return [_finite(v) for v in value]  # pyright: ignore[reportUnknownVariableType]
    return value


def embed_json(value: object) -> str:
    """JSON safe inside ``<script type="application/json">``: every ``<`` is written ``\\u003c`` (only
    strings hold one), so no ``</script>`` or ``<!--`` in a name can end or confuse the tag."""
    return json.dumps(_finite(value), separators=(",", ":"), allow_nan=False).replace("<", "\\u003c")


def render_html(graph_doc: dict[str, Any], title: str) -> str:
    """One self-contained page drawing ``graph_doc`` (an edge circuit or an attribution graph)."""
    kind = graph_kind(graph_doc)
    meta = {k: v for k, v in graph_doc["graph"].items() if k not in _EMBED_DROPPED}
    embedded = {**graph_doc, "graph": meta, "viewer": {"kind": kind, "title": title}}
    scripts = "\n".join(f"<script>\n{_static(name)}\n</script>" for name in SCRIPTS)
    styles = "\n".join(_static(name) for name in STYLES)
    safe_title = html.escape(title)
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{CSP}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{safe_title}</title>
<style>
{styles}
html, body {{ margin: 0; height: 100%; }}
body {{ display: flex; flex-direction: column; padding: 8px 16px; box-sizing: border-box;
  font: 14px/1.4 system-ui, sans-serif; color: #1d2330; }}
h1 {{ margin: 0; font-size: 17px; }}
#viewer {{ flex: 1; min-height: 0; }}
</style>
</head>
<body>
<h1>{safe_title}</h1>
<div id="viewer"></div>
<script type="application/json" id="{GRAPH_SCRIPT_ID}">{embed_json(embedded)}</script>
{scripts}
</body>
</html>
"""

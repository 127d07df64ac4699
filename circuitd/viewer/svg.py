"""A graph file as one static SVG 1.1 picture (``circuitd view --svg``), for papers and slides.

Unlike the HTML page it has no script and no interaction: the layout is fixed here, once. Edge
circuits are drawn by residual-stream order (input at the bottom, logits on top, one row per
attention layer and per MLP), attribution graphs as a layer-by-token-position grid with the prompt
along the bottom. Every name and token comes from a file and is treated as hostile text: the tree
is built with ``xml.etree`` (which escapes it) after characters XML cannot hold are replaced, and
nothing in the picture refers outside it. The output depends only on the input (no timestamps,
stable ordering) and takes time linear in the number of edges, so a 32k-edge graph still draws."""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, cast

import networkx as nx

from circuitd.viewer.html import graph_kind
from graphs.edge_circuit import node_attributes

SVG_NS = "http://www.w3.org/2000/svg"
POSITIVE, NEGATIVE, NEUTRAL = "#1f5fbf", "#c23b22", "#8a8a8a"
FONT = "Helvetica, Arial, sans-serif"
CHAR_WIDTH = 0.6  # of the font size: an estimate of a sans-serif character's width, for sizing
NODE_FONT, TITLE_FONT, SUMMARY_FONT = 11, 16, 12
MARGIN, HEADER = 20.0, 64.0
NODE_HEIGHT = 22.0
MAX_STROKE_EXTRA = 5.0  # the strongest edge is 1 + this wide
PARALLEL_SPREAD = 12.0  # px between edges joining the same two nodes (q/k/v)
BEND = 0.1  # an edge bows sideways by this fraction of its length, so long edges skirt rows between
FILLS = {
    "input": "#e6e6e6",
    "logits": "#e6e6e6",
    "attn_head": "#fce8c8",
    "mlp": "#dcefd5",
    "token": "#e6e6e6",
    "feature": "#ece1f5",
    "error": "#f4f4f4",
    "logit": "#fff1b3",
}
_ARROWS = {POSITIVE: "circuitd-arrow-pos", NEGATIVE: "circuitd-arrow-neg", NEUTRAL: "circuitd-arrow-zero"}
# XML 1.0 cannot hold these (control characters, lone surrogates, U+FFFE/FFFF) even escaped
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_VISIBLE_WHITESPACE = str.maketrans({"\n": "\u21b5", "\r": "\u21b5", "\t": "\u2192"})
_ATTRIBUTION_KIND_ORDER = {"token": 0, "feature": 1, "error": 2, "logit": 3}


@dataclass(frozen=True)
class Box:
    """A node as drawn: its centre, size and text (``x``/``y`` in px inside the plot area)."""

    node_id: str
    kind: str
    label: str
    tooltip: str
    x: float
    y: float
    width: float


@dataclass(frozen=True)
class Edge:
    """One drawn edge: ``value`` is its score (edge circuit) or weight (attribution graph)."""

    name: str
    source: str
    target: str
    value: float


@dataclass(frozen=True)
class AxisLabel:
    """Text beside the plot: a row's name at the left, a prompt token under its column."""

    x: float
    y: float
    text: str
    tooltip: str
    anchor: str


@dataclass(frozen=True)
class Drawing:
    """Everything placed, in plot coordinates; ``left``/``bottom`` are the room the axis labels need."""

    boxes: dict[str, Box]
    edges: list[Edge]
    axis: list[AxisLabel]
    width: float
    height: float
    left: float
    bottom: float
    summary: str


def xml_text(value: object) -> str:
    """``value`` as text XML can hold: characters it cannot are replaced by U+FFFD (escaping of
    ``<``, ``&`` and quotes is ElementTree's, on output)."""
    return _NOT_XML.sub("\ufffd", str(value))


def _clip(text: str, max_chars: int) -> str:
    """A label cut to ``max_chars`` (ending in an ellipsis when cut), line breaks made visible."""
    text = text.translate(_VISIBLE_WHITESPACE)
    return text if len(text) <= max_chars else text[: max(max_chars - 1, 0)] + "\u2026"


def _text_width(text: str, font_size: float) -> float:
    return len(text) * font_size * CHAR_WIDTH


def _number(value: object, what: str) -> float:
    """A score or weight as a float; null (a NaN written by a strict JSON writer) is NaN."""
    if value is None:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{what} is not a number: {str(value)[:40]!r}")
    return float(value)


def _integer(node: Mapping[str, Any], field: str) -> int:
    value = node.get(field)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"attribution node '{str(node['id'])[:60]}': '{field}' is not an integer")
    return value


def _fmt(value: float) -> str:
    """A coordinate or width, short and the same on every run."""
    text = f"{value:.1f}"
    return "0.0" if text == "-0.0" else text


def _colour(value: float) -> str:
    if value > 0:
        return POSITIVE
    if value < 0:
        return NEGATIVE
    return NEUTRAL  # zero or NaN: no sign to show


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _metric(meta: Mapping[str, Any], key: str) -> float | None:
    """A finite number recorded under ``graph.metrics`` (or, for attribution scores, ``graph``)."""
    metrics = meta.get("metrics")
    for source in (metrics if isinstance(metrics, Mapping) else {}, meta):
        value = cast("Mapping[str, Any]", source).get(key)
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
    return None


def _summary(meta: Mapping[str, Any], counts: str, metric_names: Iterable[tuple[str, str]]) -> str:
    parts = [str(meta[k]) for k in ("model", "task", "method") if meta.get(k) not in (None, "")]
    parts.append(counts)
    for key, label in metric_names:
        value = _metric(meta, key)
        if value is not None:
            parts.append(f"{label} {value:.3f}")
    return " \u00b7 ".join(parts)


def _links_between(doc: Mapping[str, Any], links: Iterable[Mapping[str, Any]], field: str) -> list[Edge]:
    """The links as edges; ValueError when one names a node the file does not hold."""
    known = {str(node["id"]) for node in doc["nodes"]}
    edges: list[Edge] = []
    for link in links:
        source, target = str(link["source"]), str(link["target"])
        name = str(link.get("name") or f"{source}->{target}")
        for end in (source, target):
            if end not in known:
                raise ValueError(f"edge '{name[:80]}': '{end[:60]}' is not a node of the file")
        edges.append(Edge(name, source, target, _number(link.get(field), f"edge '{name[:80]}': {field}")))
    return edges


def _grid_to_pixels(
    grid: Mapping[str, tuple[float, float]], col_pitch: float, row_pitch: float
) -> tuple[dict[str, tuple[float, float]], float, float]:
    """Grid units (x right, y up, one unit per column/row) as px (y down) from the top-left
    node's top-left corner; with the plot's width and height."""
    if not grid:
        return {}, 0.0, 0.0
    min_x = min(x for x, _ in grid.values())
    max_x = max(x for x, _ in grid.values())
    min_y = min(y for _, y in grid.values())
    max_y = max(y for _, y in grid.values())
    pixels = {
        node: ((x - min_x) * col_pitch + col_pitch / 2, (max_y - y) * row_pitch + NODE_HEIGHT / 2)
        for node, (x, y) in grid.items()
    }
    return pixels, (max_x - min_x + 1) * col_pitch, (max_y - min_y) * row_pitch + NODE_HEIGHT


def _edge_circuit_rank(node: str, logits_rank: int) -> int:
    """The row of a node: input 0, layer L's heads 2L+1, its MLP 2L+2, logits above all."""
    attrs = node_attributes(node)
    if attrs["kind"] == "input":
        return 0
    if attrs["kind"] == "logits":
        return logits_rank
    return 2 * attrs["layer"] + (1 if attrs["kind"] == "attn_head" else 2)


def _edge_circuit_drawing(doc: Mapping[str, Any]) -> Drawing:
    """The circuit's edges (links not marked ``in_circuit: false``) and the nodes they touch, one
    row per rank, placed by ``networkx.multipartite_layout``."""
    meta: Mapping[str, Any] = doc["graph"]
    links = [link for link in doc["links"] if link.get("in_circuit") is not False]
    edges = _links_between(doc, links, "score")
    layers = [node_attributes(str(n["id"])).get("layer") for n in doc["nodes"]]
    logits_rank = 2 * max((layer for layer in layers if isinstance(layer, int)), default=-1) + 3
    touched = {e.source for e in edges} | {e.target for e in edges}

    def row_order(node: str) -> tuple[int, int, str]:
        return _edge_circuit_rank(node, logits_rank), node_attributes(node).get("head", 0), node

    rows: dict[int, list[str]] = defaultdict(list)
    for node in sorted(touched, key=row_order):
        rows[_edge_circuit_rank(node, logits_rank)].append(node)
    graph: nx.Graph[str] = nx.Graph()
    graph.add_nodes_from(sorted(touched, key=row_order))
    placed = nx.multipartite_layout(graph, subset_key=dict(rows), align="horizontal") if touched else {}
    # the layout is one uniform scale of (index in row, row number): recover that unit
    xs = [float(p[0]) for p in placed.values()]
    ys = [float(p[1]) for p in placed.values()]
    widest = max((len(r) for r in rows.values()), default=1)
    if len(rows) > 1:
        unit = (max(ys) - min(ys)) / (len(rows) - 1)
    elif widest > 1:
        unit = (max(xs) - min(xs)) / (widest - 1)
    else:
        unit = 1.0
    grid = {node: (float(p[0]) / unit, float(p[1]) / unit) for node, p in placed.items()}
    node_width = max([48.0, *(_text_width(n, NODE_FONT) + 14 for n in touched)])
    pixels, width, height = _grid_to_pixels(grid, node_width + 16, 78.0)
    boxes = {
        node: Box(node, node_attributes(node)["kind"], node, node, x, y, node_width)
        for node, (x, y) in pixels.items()
    }
    n_names = len({e.name for e in edges})  # a grouped key/value edge is drawn once per reading head
    counts = f"{_count(n_names, 'edge')}, {_count(len(boxes), 'node')}"
    total = _metric(meta, "n_edges_total")
    if total is not None and total != n_names:
        counts += f" (of {total:.0f} scored)"
    summary = _summary(meta, counts, [("faithfulness", "faithfulness")])
    return Drawing(boxes, edges, [], width, height, 0.0, 0.0, summary)


def _attribution_label(node: Mapping[str, Any]) -> tuple[str, str]:
    """A node's short label and its full description (the tooltip)."""
    kind = str(node.get("kind"))
    token = "" if node.get("token") is None else xml_text(node["token"])
    if kind == "feature":
        label = f"#{node.get('feature')}"
    elif kind == "error":
        label = "error"
    elif kind == "token":  # its token is written under its column
        label = "emb"
    else:
        label = token
    fields = ("kind", "layer", "pos", "feature", "activation", "influence", "prob")
    details = [f"{k} {xml_text(node[k])}" for k in fields if node.get(k) is not None]
    if token:
        details.append(f"token {token!r}")
    return label, f"{xml_text(node['id'])}: " + ", ".join(details)


def _attribution_drawing(doc: Mapping[str, Any]) -> Drawing:
    """Every node and link: a row per layer band (tokens at the bottom, logits on top), a column per
    token position, the nodes of one (layer, position) cell side by side."""
    meta: Mapping[str, Any] = doc["graph"]
    nodes: list[Mapping[str, Any]] = doc["nodes"]
    cells: dict[tuple[int, int], list[Mapping[str, Any]]] = defaultdict(list)
    for node in nodes:
        cells[(_integer(node, "layer"), _integer(node, "pos"))].append(node)
    for cell in cells.values():
        cell.sort(
            key=lambda n: (
                _ATTRIBUTION_KIND_ORDER.get(str(n.get("kind")), 4),
                n["feature"] if isinstance(n.get("feature"), int) else -1,
                str(n["id"]),
            )
        )
    tokens_field = meta.get("prompt_tokens")
    tokens: dict[int, str] = (
        {i: xml_text(t) for i, t in enumerate(cast("list[object]", tokens_field))}
        if isinstance(tokens_field, list)
        else {}
    )
    for node in nodes:  # a file without the prompt's tokens still has its token nodes
        if node.get("kind") == "token" and node.get("token") is not None:
            tokens.setdefault(_integer(node, "pos"), xml_text(node["token"]))
    bands = {layer: row for row, layer in enumerate(sorted({layer for layer, _ in cells}))}
    positions = sorted({pos for _, pos in cells} | set(tokens))
    slots = Counter[int]()
    for (_, pos), cell in cells.items():
        slots[pos] = max(slots[pos], len(cell))
    column_start: dict[int, int] = {}
    start = 0
    for pos in positions:
        column_start[pos] = start
        start += max(slots[pos], 1)
    grid: dict[str, tuple[float, float]] = {}
    for (layer, pos), cell in cells.items():
        first = column_start[pos] + (max(slots[pos], 1) - len(cell)) / 2
        for i, node in enumerate(cell):
            grid[str(node["id"])] = (first + i, float(bands[layer]))
    node_width, col_pitch, row_pitch = 56.0, 64.0, 66.0
    max_band = max(bands.values(), default=0)
    width, height = start * col_pitch, max_band * row_pitch + NODE_HEIGHT if cells else 0.0
    pixels = {  # grid units to px: x right from the first column, y down from the top band
        node: ((x + 0.5) * col_pitch, (max_band - y) * row_pitch + NODE_HEIGHT / 2)
        for node, (x, y) in grid.items()
    }
    boxes: dict[str, Box] = {}
    for node in nodes:
        label, tooltip = _attribution_label(node)
        x, y = pixels[str(node["id"])]
        boxes[str(node["id"])] = Box(
            str(node["id"]), str(node.get("kind")), _clip(label, 8), tooltip, x, y, node_width
        )
    axis: list[AxisLabel] = []
    for pos in positions:
        columns = max(slots[pos], 1)
        x = (column_start[pos] + columns / 2) * col_pitch
        text = tokens.get(pos, "")
        max_chars = int(columns * col_pitch / (NODE_FONT * CHAR_WIDTH)) - 1
        axis.append(AxisLabel(x, height + 18, _clip(text, max_chars), f"position {pos}: {text!r}", "middle"))
    band_names = {-1: "tokens", meta.get("n_layers"): "logits"}
    for layer, row in bands.items():
        name = band_names.get(layer, f"layer {layer}")
        axis.append(AxisLabel(-8, (max_band - row) * row_pitch + NODE_HEIGHT / 2 + 4, name, name, "end"))
    edges = _links_between(doc, doc["links"], "weight")
    summary = _summary(
        meta,
        f"{_count(len(boxes), 'node')}, {_count(len(edges), 'edge')}",
        [
            ("faithfulness", "faithfulness"),
            ("replacement_score", "replacement"),
            ("completeness_score", "completeness"),
        ],
    )
    left = max((_text_width(a.text, NODE_FONT) for a in axis if a.anchor == "end"), default=0.0) + 12
    return Drawing(boxes, edges, axis, width, height, left, 30.0, summary)


def _border(box: Box, toward_x: float, toward_y: float) -> tuple[float, float]:
    """Where the line from ``box``'s centre toward a point leaves its rectangle."""
    dx, dy = toward_x - box.x, toward_y - box.y
    reach = min(
        (box.width / 2) / abs(dx) if dx else math.inf,
        (NODE_HEIGHT / 2) / abs(dy) if dy else math.inf,
        1.0,
    )
    return box.x + dx * reach, box.y + dy * reach


def _edge_path(source: Box, target: Box, offset: float) -> str:
    """A quadratic curve between two boxes' borders, bowed sideways (upward when it runs across) by
    a share of its length plus ``offset``; a small loop over the box for an edge from a node to itself."""
    if source.node_id == target.node_id:
        top = source.y - NODE_HEIGHT / 2
        return (
            f"M{_fmt(source.x - 8)},{_fmt(top)} C{_fmt(source.x - 22)},{_fmt(top - 28)} "
            f"{_fmt(source.x + 22)},{_fmt(top - 28)} {_fmt(source.x + 8)},{_fmt(top)}"
        )
    dx, dy = target.x - source.x, target.y - source.y
    length = math.hypot(dx, dy)
    normal_x, normal_y = -dy / length, dx / length
    if normal_y > 0:  # bow upward, away from the token labels along the bottom
        normal_x, normal_y = -normal_x, -normal_y
    bow = BEND * length + offset
    control_x = (source.x + target.x) / 2 + normal_x * bow
    control_y = (source.y + target.y) / 2 + normal_y * bow
    x0, y0 = _border(source, control_x, control_y)
    x1, y1 = _border(target, control_x, control_y)
    return f"M{_fmt(x0)},{_fmt(y0)} Q{_fmt(control_x)},{_fmt(control_y)} {_fmt(x1)},{_fmt(y1)}"


def _marker(defs: ET.Element, colour: str) -> None:
    marker = ET.SubElement(
        defs,
        "marker",
        {
            "id": _ARROWS[colour],
            "viewBox": "0 0 10 10",
            "refX": "10",
            "refY": "5",
            "markerUnits": "userSpaceOnUse",
            "markerWidth": "8",
            "markerHeight": "8",
            "orient": "auto",
        },
    )
    ET.SubElement(marker, "path", {"d": "M0,0 L10,5 L0,10 z", "fill": colour})


def _shifted_group(parent: ET.Element, cls: str, dx: float, dy: float, **attrs: str) -> ET.Element:
    """A ``<g class=cls>`` moved by (dx, dy): the layout's coordinates placed on the canvas."""
    shift = f"translate({_fmt(dx)},{_fmt(dy)})"
    return ET.SubElement(parent, "g", {"class": cls, **attrs, "transform": shift})


def _draw_edges(parent: ET.Element, drawing: Drawing, dx: float, dy: float) -> None:
    """One ``<path class="edge">`` per edge, weakest first so the strong ones lie on top."""
    finite = [abs(e.value) for e in drawing.edges if math.isfinite(e.value)]
    strongest = max(finite, default=0.0)
    between = Counter((e.source, e.target) for e in drawing.edges)
    seen = Counter[tuple[str, str]]()
    offsets: list[float] = []
    for edge in drawing.edges:  # parallel edges (q/k/v into one head) fan out around the bow
        pair = (edge.source, edge.target)
        offsets.append((seen[pair] - (between[pair] - 1) / 2) * PARALLEL_SPREAD)
        seen[pair] += 1
    order = sorted(
        range(len(drawing.edges)),
        key=lambda i: (0.0 if math.isnan(drawing.edges[i].value) else abs(drawing.edges[i].value), i),
    )
    group = _shifted_group(parent, "edges", dx, dy, fill="none")
    for i in order:
        edge = drawing.edges[i]
        magnitude = abs(edge.value) if not math.isnan(edge.value) else 0.0
        share = min(magnitude / strongest, 1.0) if strongest > 0 else 0.0
        colour = _colour(edge.value)
        ET.SubElement(
            group,
            "path",
            {
                "class": "edge",
                "data-name": xml_text(edge.name),
                "d": _edge_path(drawing.boxes[edge.source], drawing.boxes[edge.target], offsets[i]),
                "stroke": colour,
                "stroke-width": f"{1 + MAX_STROKE_EXTRA * share:.2f}",
                "stroke-opacity": f"{0.35 + 0.6 * share:.2f}",  # weak edges fade behind strong ones
                "marker-end": f"url(#{_ARROWS[colour]})",
            },
        )


def _draw_nodes(parent: ET.Element, drawing: Drawing, dx: float, dy: float) -> None:
    group = _shifted_group(parent, "nodes", dx, dy, **{"font-size": str(NODE_FONT), "text-anchor": "middle"})
    for box in sorted(drawing.boxes.values(), key=lambda b: (b.y, b.x, b.node_id)):
        node = ET.SubElement(
            group, "g", {"class": "node", "data-id": xml_text(box.node_id), "data-kind": box.kind}
        )
        ET.SubElement(node, "title").text = xml_text(box.tooltip)
        ET.SubElement(
            node,
            "rect",
            {
                "x": _fmt(box.x - box.width / 2),
                "y": _fmt(box.y - NODE_HEIGHT / 2),
                "width": _fmt(box.width),
                "height": _fmt(NODE_HEIGHT),
                "rx": "5",
                "ry": "5",
                "fill": FILLS.get(box.kind, "#ffffff"),
                "stroke": "#555555",
                "stroke-width": "1",
                **({"stroke-dasharray": "3,2"} if box.kind == "error" else {}),
            },
        )
        label = ET.SubElement(node, "text", {"x": _fmt(box.x), "y": _fmt(box.y + NODE_FONT * 0.35)})
        label.text = xml_text(box.label)


def _draw_axis(parent: ET.Element, drawing: Drawing, dx: float, dy: float) -> None:
    group = _shifted_group(parent, "axis", dx, dy, **{"font-size": str(NODE_FONT), "fill": "#444444"})
    for item in drawing.axis:
        text = ET.SubElement(
            group,
            "text",
            {
                "class": "token-label" if item.anchor == "middle" else "row-label",
                "x": _fmt(item.x),
                "y": _fmt(item.y),
                "text-anchor": item.anchor,
            },
        )
        ET.SubElement(text, "title").text = xml_text(item.tooltip)
        ET.SubElement(text, "tspan").text = xml_text(item.text)


def render_svg(doc: dict[str, Any], title: str) -> str:
    """``doc`` (an edge circuit or an attribution graph, as :func:`load_graph_doc` returns it) as
    a standalone SVG document; ValueError (one line) when the file's links do not fit its nodes."""
    drawing = _attribution_drawing(doc) if graph_kind(doc) == "attribution" else _edge_circuit_drawing(doc)
    title, summary = xml_text(title), xml_text(drawing.summary)
    left, top = MARGIN + drawing.left, HEADER
    width = max(
        left + drawing.width + MARGIN,
        2 * MARGIN + _text_width(title, TITLE_FONT),
        2 * MARGIN + _text_width(summary, SUMMARY_FONT),
        240.0,
    )
    height = top + drawing.height + drawing.bottom + MARGIN
    width, height = math.ceil(width), math.ceil(height)
    root = ET.Element(
        "svg",
        {
            "xmlns": SVG_NS,
            "version": "1.1",
            "width": str(width),
            "height": str(height),
            "viewBox": f"0 0 {width} {height}",
            "font-family": FONT,
        },
    )
    ET.SubElement(root, "title").text = title
    ET.SubElement(root, "desc").text = summary
    defs = ET.SubElement(root, "defs")
    for colour in (POSITIVE, NEGATIVE, NEUTRAL):
        _marker(defs, colour)
    ET.SubElement(root, "rect", {"width": str(width), "height": str(height), "fill": "#ffffff"})
    ET.SubElement(
        root,
        "text",
        {"class": "title", "x": _fmt(MARGIN), "y": "28", "font-size": str(TITLE_FONT), "font-weight": "bold"},
    ).text = title
    ET.SubElement(
        root,
        "text",
        {"class": "summary", "x": _fmt(MARGIN), "y": "48", "font-size": str(SUMMARY_FONT), "fill": "#444444"},
    ).text = summary
    _draw_axis(root, drawing, left, top)
    _draw_edges(root, drawing, left, top)
    _draw_nodes(root, drawing, left, top)
    body = ET.tostring(root, encoding="unicode")
    return f'<?xml version="1.0" encoding="UTF-8" standalone="no"?>\n{body}\n'

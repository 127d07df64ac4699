"""``view``: a graph file (an edge circuit or an attribution graph) as one offline HTML page, or
with ``--svg`` as one static SVG picture (for papers)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from circuitd.errors import CircuitdError


def cmd_view(args: argparse.Namespace) -> int:
    from circuitd.viewer import load_graph_doc, render_html
    from circuitd.viewer.svg import render_svg

    source = Path(args.file)
    doc = load_graph_doc(source)
    title = args.title or f"circuitd: {source.name}"
    try:
        text = (render_svg if args.svg else render_html)(doc, title)
    except ValueError as exc:  # links that do not fit the file's nodes: name the file
        raise CircuitdError(f"{source}: {exc}") from None
    out = Path(args.out)
    tmp = out.with_name(out.name + ".tmp")
    try:  # written whole then renamed: a failed run never leaves half a file
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(out)
    except OSError as exc:
        raise CircuitdError(f"{out}: cannot be written ({exc.strerror or exc})") from None
    print(f"{source} -> {out}")
    return 0


def add_view_commands(sub: Any) -> None:
    """Register ``view`` on ``circuitd``'s subparsers."""
    p = sub.add_parser(
        "view", help="write a graph file as one self-contained HTML page (works offline) or an SVG picture"
    )
    p.add_argument("file", help="a graph JSON written by `circuitd discover` (edge circuit or attribution)")
    p.add_argument("-o", "--out", required=True, help="the HTML file (with --svg: the SVG file) to write")
    p.add_argument("--title", help="page title (default: circuitd: <file name>)")
    p.add_argument(
        "--svg",
        action="store_true",
        help="write a static SVG picture of the circuit (no script, fixed layout) instead of the HTML page",
    )
    p.set_defaults(func=cmd_view)

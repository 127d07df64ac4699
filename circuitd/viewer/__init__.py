"""The circuit viewer: one self-contained, offline HTML page per graph file (``circuitd view``).

The drawing libraries are vendored under ``static/vendor`` (``scripts/vendor-viewer.sh``), so a
page needs no network and runs under a Content-Security-Policy that forbids every fetch."""

from circuitd.viewer.html import graph_kind, load_graph_doc, render_html

__all__ = ["graph_kind", "load_graph_doc", "render_html"]

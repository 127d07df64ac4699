"""Circuit graphs as networkx graphs: building, node-link JSON, summaries. No torch here."""

from graphs.edge_circuit import build_edge_circuit, node_attributes
from graphs.formats import from_node_link, read_json, to_node_link, write_json
from graphs.summary import summarize

__all__ = [
    "build_edge_circuit",
    "from_node_link",
    "node_attributes",
    "read_json",
    "summarize",
    "to_node_link",
    "write_json",
]

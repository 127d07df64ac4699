"""Circuit graphs as networkx graphs: building, node-link JSON, summaries. No torch here."""

from graphs.eap_ig_format import from_eap_ig, is_eap_ig, read_eap_ig, to_eap_ig, write_eap_ig
from graphs.edge_circuit import build_edge_circuit, node_attributes
from graphs.formats import from_node_link, read_json, to_node_link, write_json
from graphs.summary import summarize

__all__ = [
    "build_edge_circuit",
    "from_eap_ig",
    "from_node_link",
    "is_eap_ig",
    "node_attributes",
    "read_eap_ig",
    "read_json",
    "summarize",
    "to_eap_ig",
    "to_node_link",
    "write_eap_ig",
    "write_json",
]

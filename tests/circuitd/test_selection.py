import torch

from circuitd.edges import EdgeGraph
from circuitd.models.registry import model_shape
from circuitd.selection import above_threshold, prune_dangling, select, top_n


def _graph() -> EdgeGraph:
    return EdgeGraph(model_shape("random:tiny"))


def _mask(graph: EdgeGraph, names: list[str]) -> torch.Tensor:
    keep = torch.zeros(graph.n_edges, dtype=torch.bool)
    keep[graph.index_of(names)] = True
    return keep


def _names(graph: EdgeGraph, keep: torch.Tensor) -> set[str]:
    return {graph.edge_names[i] for i in keep.nonzero().flatten().tolist()}


def test_top_n_and_threshold() -> None:
    scores = torch.tensor([0.1, -0.5, 0.3, 0.5, -0.05])
    assert top_n(scores, 2).tolist() == [False, True, False, True, False]  # tie: edge order
    assert top_n(scores, 0).sum() == 0 and top_n(scores, 99).all()
    assert above_threshold(scores, 0.3).tolist() == [False, True, True, True, False]


def test_prune_dangling_to_fixpoint() -> None:
    g = _graph()
    kept = [
        "input->a0.h0<q>", "a0.h0->a1.h1<v>", "a1.h1->logits",  # a path: stays
        "a0.h1->logits",  # a0.h1 has no input: goes
        "input->a0.h2<k>", "a0.h2->a1.h3<q>",  # a1.h3 reaches nothing, then a0.h2 neither
        "input->m0", "m0->m1",  # m1 reaches nothing: both go in two rounds
    ]
    out = prune_dangling(g, _mask(g, kept))
    assert _names(g, out) == {"input->a0.h0<q>", "a0.h0->a1.h1<v>", "a1.h1->logits"}


def test_select_prunes() -> None:
    g = _graph()
    scores = torch.zeros(g.n_edges)
    scores[g.index_of(["input->m0", "m0->logits", "a0.h3->a1.h0<k>"])] = torch.tensor([3.0, 2.0, 1.0])
    assert _names(g, select(g, scores, n=3)) == {"input->m0", "m0->logits"}
    assert _names(g, select(g, scores, threshold=1.5)) == {"input->m0", "m0->logits"}

import math

import torch

from circuitd import metrics
from circuitd.edge_context import MethodContext
from circuitd.evaluate import Evaluator, trapezoid
from tests.support.models import random_setup


def test_full_and_empty_circuits() -> None:
    model, graph, engine, task, b = random_setup("random:tiny@2", n=5)
    ev = Evaluator(MethodContext(model, graph, task, "logit_diff", batch_size=2), max_elements=10_000)
    full = float(metrics.metric("logit_diff", model.run(b.clean), b))
    empty = float(metrics.metric("logit_diff", model.run(b.corrupted), b))
    assert math.isclose(ev.metric_full, full, abs_tol=1e-5)
    assert math.isclose(ev.metric_empty, empty, abs_tol=1e-4)
    keep = torch.rand(graph.n_edges, generator=torch.Generator().manual_seed(1)) > 0.5
    s = ev.summary(keep)
    direct = float(metrics.metric("logit_diff", engine.run(b.clean, engine.ablated_sources(
        "resample", b.corrupted), (~keep).float()), b))
    assert math.isclose(s["metric_circuit"], direct, abs_tol=1e-5)
    assert math.isclose(s["faithfulness"], (direct - empty) / (full - empty), rel_tol=1e-5)
    assert s["n_edges"] == int(keep.sum()) and s["n_edges_total"] == graph.n_edges


def test_curve_ends_at_one_and_areas() -> None:
    model, graph, _, task, _ = random_setup("random:tiny@2", n=5)
    ev = Evaluator(MethodContext(model, graph, task, "kl", batch_size=5))
    curve = ev.curve(torch.randn(graph.n_edges, generator=torch.Generator().manual_seed(0)))
    assert math.isclose(curve["faithfulness"][-1], 1.0, abs_tol=1e-5)
    assert curve["n_edges"][-1] == graph.n_edges and curve["n_edges"][0] == 1
    x = [p / 100 for p in curve["percents"]]
    assert math.isclose(curve["cpr"], trapezoid(x, curve["faithfulness"]))
    assert trapezoid([0, 0.5, 1], [0, 1, 1]) == 0.75

"""Grouped-query attention in the edge graph: k/v edges per key/value head (the default) or per
query head (TransformerLens's ungrouped attention, as EAP-IG has them).

The references here are written against TransformerLens directly: source outputs from its cache,
patches and gradient probes on its own k/v input hook points with ``ungroup_grouped_query_attention``
off (``[batch, pos, n_key_value_heads, d_model]``), so a kv edge is patched or differentiated
where the model really shares the input. Float64 throughout.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch

from circuitd.access import full_access
from circuitd.edge_context import MethodContext
from circuitd.edges import EdgeGraph, count_edges
from circuitd.methods.acdc.evaluation import prepare_batches, task_metric
from circuitd.methods.acdc.fast import acdc_fast
from circuitd.methods.acdc.order import visit_order
from circuitd.methods.acdc.reference import acdc_reference
from circuitd.models import registry
from circuitd.models.adapter import ModelAdapter
from circuitd.models.loading import build_from_config
from circuitd.patching import PatchingEngine
from circuitd.selection import prune_dangling
from circuitd.tasks import load_task_data, resolve_task
from graphs import build_edge_circuit
from graphs.eap_ig_format import to_eap_ig
from graphs.queries import neighbourhood, paths_through, top_edges

L, H, KV, R, D, VOCAB = 2, 4, 2, 2, 32, 37  # R: query heads per key/value head
LLAMA = dict(
    n_layers=L, d_model=D, n_heads=H, d_head=8, n_key_value_heads=KV, d_mlp=48, n_ctx=16, d_vocab=VOCAB,
    act_fn="silu", normalization_type="RMS", positional_embedding_type="rotary", rotary_dim=8,
    gated_mlp=True, final_rms=True,
)


def llama(seed: int = 0) -> ModelAdapter:
    """A tiny Llama-shaped model (RMSNorm, rotary, gated MLP, 4 heads sharing 2 key/value
    heads), its norm gains and biases moved off their defaults."""
    model = build_from_config(dict(LLAMA, seed=seed), None, None, "test:llama-gqa", dtype=torch.float64)
    gen = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for name, p in model.named_parameters():
            last = name.rsplit(".", 1)[-1]
            if last == "w" or last.lstrip("_").startswith("b_"):
                p.add_(0.2 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return model


def prompts(seed: int) -> torch.Tensor:
    return torch.randint(0, VOCAB, (3, 7), generator=torch.Generator().manual_seed(seed))


CLEAN, CORRUPTED = prompts(1), prompts(2)


def metric(logits: torch.Tensor) -> torch.Tensor:
    return (logits[:, -1, 3] - logits[:, -1, 5]).sum()


# --- TransformerLens references ------------------------------------------------------------------


@contextmanager
def grouped_tl(model: ModelAdapter) -> Iterator[Any]:
    """The TransformerLens model with k/v inputs per key/value head (ungrouping off)."""
    tl = model.hooked_transformer
    before = tl.cfg.ungroup_grouped_query_attention
    tl.set_ungroup_grouped_query_attention(False)
    try:
        yield tl
    finally:
        tl.set_ungroup_grouped_query_attention(before)


def tl_sources(model: ModelAdapter, tokens: torch.Tensor) -> torch.Tensor:
    """Every source's output ``[S, B, P, D]`` from TransformerLens's cache: the embedding, then
    per layer each head's ``z @ W_O`` and the MLP output."""
    tl = model.hooked_transformer
    with torch.no_grad():
        _, cache = tl.run_with_cache(tokens)
    out = [cache["blocks.0.hook_resid_pre"]]
    for layer in range(L):
        z = cache[f"blocks.{layer}.attn.hook_z"]
        out += [z[:, :, h] @ tl.blocks[layer].attn.W_O[h] for h in range(H)]
        out.append(cache[f"blocks.{layer}.hook_mlp_out"])
    return torch.stack(out)


def tl_patch_kv(model: ModelAdapter, layer: int, which: str, kv: int, delta: torch.Tensor) -> torch.Tensor:
    """Logits with ``delta`` added to key/value head ``kv``'s shared k or v input."""

    def hook(act: torch.Tensor, hook: Any) -> torch.Tensor:
        assert act.shape[2] == KV  # one input per key/value head
        act = act.clone()
        act[:, :, kv] += delta
        return act

    with grouped_tl(model) as tl, torch.no_grad():
        return tl.run_with_hooks(CLEAN, fwd_hooks=[(f"blocks.{layer}.hook_{which}_input", hook)])


_DEST = {"q": "hook_q_input", "k": "hook_k_input", "v": "hook_v_input"}


def tl_edge_scores(model: ModelAdapter, graph: EdgeGraph, ablated: torch.Tensor, clean: torch.Tensor,
                   steps: int) -> torch.Tensor:
    """EAP (``steps`` 1) or EAP-IG of every edge of a grouped graph, by autograd at zero probes
    on TransformerLens's destination hook points (inputs interpolated from the corrupted
    embedding, the gradients averaged, times ``ablated - clean``)."""
    names = [f"blocks.{lay}.{_DEST[x]}" for lay in range(L) for x in "qkv"]
    names += [f"blocks.{lay}.hook_mlp_in" for lay in range(L)] + [f"blocks.{L - 1}.hook_resid_post"]
    grads = {n: torch.zeros(()) for n in names}
    baseline = ablated[0]
    for k in range(1, steps + 1):
        t = k / steps
        probes: dict[str, torch.Tensor] = {}

        def probe(act: torch.Tensor, hook: Any, probes: dict[str, torch.Tensor] = probes) -> torch.Tensor:
            probes[hook.name] = torch.zeros_like(act, requires_grad=True)
            return act + probes[hook.name]

        def interpolate(act: torch.Tensor, hook: Any, t: float = t) -> torch.Tensor:
            return baseline + t * (act - baseline)

        with grouped_tl(model) as tl:
            hooks = [("blocks.0.hook_resid_pre", interpolate)] + [(n, probe) for n in names]
            metric(tl.run_with_hooks(CLEAN, fwd_hooks=hooks)).backward()
        for n in names:
            grad = probes[n].grad
            assert grad is not None
            grads[n] = grads[n] + grad / steps
    diff = ablated - clean
    out = torch.zeros(graph.n_edges, dtype=torch.float64)
    for i, name in enumerate(graph.edge_names):
        src, dst = name.split("->")
        u = graph.sources.index(src)
        if dst == "logits":
            g = grads[f"blocks.{L - 1}.hook_resid_post"]
        elif dst.startswith("m"):
            g = grads[f"blocks.{dst[1:]}.hook_mlp_in"]
        else:  # a{l}.h{h}<q>, a{l}.kv{g}<k|v>
            node, which = dst[:-3], dst[-2]
            layer, slot = node[1:].split(".")
            g = grads[f"blocks.{layer}.{_DEST[which]}"][:, :, int(slot.lstrip("hkv"))]
        out[i] = (diff[u] * g).sum()
    return out


# --- the graph -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "split,kv_heads,expected",
    # sources 11; attention reads 1 + 6 sources, MLPs 5 + 10, the logits 11 (26 edges besides attention);
    # attention destinations per source: 4 q + 2 k + 2 v grouped, 12 per query head, 4 unsplit
    [(True, "grouped", 8 * 7 + 26), (True, "per-query", 12 * 7 + 26), (False, "grouped", 4 * 7 + 26),
     (False, "per-query", 4 * 7 + 26)],
)
def test_edge_counts(split: bool, kv_heads: Any, expected: int) -> None:
    shape = llama().shape
    graph = EdgeGraph(shape, split, kv_heads)
    assert graph.n_edges == count_edges(shape, split, kv_heads) == len(set(graph.edge_names)) == expected
    assert graph.kv_grouped == (split and kv_heads == "grouped")
    assert graph.layout() == {"split_qkv": split, "kv_heads": "grouped" if graph.kv_grouped else "per-query",
                              "n_heads": H, "n_key_value_heads": KV}


def test_grouped_names_and_readers() -> None:
    graph = EdgeGraph(llama().shape)
    names = set(graph.edge_names)
    assert {"input->a0.h3<q>", "input->a0.kv1<k>", "m0->a1.kv0<v>", "a0.h2->a1.kv1<k>"} <= names
    assert not any("->a1.h0<k>" in n or "<v>" in n and ".h" in n.split("->")[1] for n in names)
    # key/value head g feeds query heads g*R .. g*R+R-1 (TransformerLens's repeat_interleave)
    pairs = list(zip(*graph.dest_incidence, strict=True))

    def reached(edge: str) -> list[str]:
        return sorted(graph.nodes[n] for e, n in pairs if e == graph.edge_index[edge])

    assert reached("a0.h2->a1.kv1<k>") == ["a1.h2", "a1.h3"]
    assert reached("a0.h2->a1.kv0<v>") == ["a1.h0", "a1.h1"]
    assert reached("a0.h2->a1.h1<q>") == ["a1.h1"]


def test_visit_order_puts_each_key_value_head_after_its_query_heads() -> None:
    graph = EdgeGraph(llama().shape)
    blocks = visit_order(graph)
    assert [n.name for n in blocks[2]] == ["a1.h3", "a1.h2", "a1.kv1", "a1.h1", "a1.h0", "a1.kv0"]
    kv1 = blocks[2][2]
    assert kv1.node == (graph.head_source(1, 2), graph.head_source(1, 3))
    en = graph.edge_names
    assert en[kv1.edges[0]] == "m0->a1.kv1<k>" and en[kv1.edges[-1]] == "input->a1.kv1<v>"
    edges = [e for b in blocks for n in b for e in n.edges]
    assert sorted(edges) == list(range(graph.n_edges))


def test_a_key_value_edge_lives_while_any_reader_lives() -> None:
    graph = EdgeGraph(llama().shape)
    keep = torch.zeros(graph.n_edges, dtype=torch.bool)
    keep[graph.index_of(["input->a1.kv0<v>", "input->a1.kv1<v>", "a1.h1->logits"])] = True
    kept = {graph.edge_names[i] for i in prune_dangling(graph, keep).nonzero().squeeze(1).tolist()}
    assert kept == {"input->a1.kv0<v>", "a1.h1->logits"}  # kv1 feeds a1.h2, a1.h3: both dead


# --- the engine ----------------------------------------------------------------------------------


def test_sources_match_transformer_lens() -> None:
    model = llama()
    engine = PatchingEngine(model, EdgeGraph(model.shape))
    torch.testing.assert_close(engine.ablated_sources("resample", CORRUPTED), tl_sources(model, CORRUPTED),
                               atol=1e-12, rtol=0)


def test_one_key_value_edge_patched_alone() -> None:
    """Every kv edge ablated alone equals adding its source's ``corrupted - clean`` to that
    key/value head's shared input in TransformerLens, and ablating the edge into each of the
    group's query heads under the per-query graph."""
    model = llama()
    grouped, per_query = EdgeGraph(model.shape), EdgeGraph(model.shape, kv_heads="per-query")
    eng_g, eng_q = PatchingEngine(model, grouped), PatchingEngine(model, per_query)
    clean, ablated = tl_sources(model, CLEAN), tl_sources(model, CORRUPTED)
    n_tested = 0
    for g in (grp for grp in grouped.groups if grp.kind == "attn"):
        for which in "kv":
            for kv in range(KV):
                for u in range(g.n_src):
                    src = grouped.sources[u]
                    alpha = torch.zeros(grouped.n_edges, dtype=torch.float64)
                    alpha[grouped.index_of([f"{src}->a{g.layer}.kv{kv}<{which}>"])] = 1
                    got = eng_g.run(CLEAN, ablated, alpha)
                    want = tl_patch_kv(model, g.layer, which, kv, ablated[u] - clean[u])
                    torch.testing.assert_close(got, want, atol=1e-12, rtol=0)
                    heads = [f"{src}->a{g.layer}.h{h}<{which}>" for h in range(kv * R, (kv + 1) * R)]
                    alpha_q = torch.zeros(per_query.n_edges, dtype=torch.float64)
                    alpha_q[per_query.index_of(heads)] = 1
                    torch.testing.assert_close(eng_q.run(CLEAN, ablated, alpha_q), got, atol=1e-12, rtol=0)
                    assert (got - eng_g.run(CLEAN, ablated, 0 * alpha)).abs().max() > 1e-6  # the edge matters
                    n_tested += 1
    assert n_tested == 2 * KV * (1 + 6)


def test_run_from_equals_run_on_a_grouped_graph() -> None:
    model = llama()
    graph = EdgeGraph(model.shape)
    engine = PatchingEngine(model, graph)
    ablated = tl_sources(model, CORRUPTED)
    gen = torch.Generator().manual_seed(3)
    start = (torch.rand(graph.n_edges, generator=gen) > 0.6).double()
    cached = engine.cached_pass(CLEAN, ablated, start)
    for layer in range(L + 1):
        first = next(g for g in graph.groups if g.kind == "logits" or g.layer >= layer)
        alpha = (torch.rand(4, graph.n_edges, generator=gen) > 0.5).double()
        alpha[:, : first.offset] = start[: first.offset]
        torch.testing.assert_close(engine.run_from(cached, layer, alpha), engine.run(CLEAN, ablated, alpha),
                                   atol=1e-12, rtol=0)


@pytest.mark.parametrize("steps", [1, 3])
def test_edge_scores_match_autograd_on_transformer_lens(steps: int) -> None:
    """EAP (steps 1) and EAP-IG scores of every edge, kv edges included."""
    model = llama()
    graph = EdgeGraph(model.shape)
    engine = PatchingEngine(model, graph)
    clean, ablated = tl_sources(model, CLEAN), tl_sources(model, CORRUPTED)
    got = engine.edge_gradients(CLEAN, ablated, metric, baseline=ablated[0], steps=steps)
    want = tl_edge_scores(model, graph, ablated, clean, steps)
    kv = torch.tensor([".kv" in n for n in graph.edge_names])
    assert int(kv.sum()) == 2 * KV * 7 and want[kv].abs().min() > 1e-8
    torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-9)


@pytest.mark.parametrize("steps", [1, 3])
def test_per_query_scores_of_a_group_sum_to_the_grouped_score(steps: int) -> None:
    """EAP is linear in the gradient, and a shared input's gradient is the sum of its copies':
    the per-query k (v) scores of a key/value head's R query heads add up to its grouped score;
    every other edge scores the same in both graphs."""
    model = llama()
    grouped, per_query = EdgeGraph(model.shape), EdgeGraph(model.shape, kv_heads="per-query")
    ablated = tl_sources(model, CORRUPTED)
    s_g = PatchingEngine(model, grouped).edge_gradients(CLEAN, ablated, metric, ablated[0], steps)
    s_q = PatchingEngine(model, per_query).edge_gradients(CLEAN, ablated, metric, ablated[0], steps)
    index_q = per_query.edge_index
    for i, name in enumerate(grouped.edge_names):
        src, dst = name.split("->")
        if ".kv" in dst:
            layer, kv = (int(x) for x in dst[1:-3].split(".kv"))
            parts = [index_q[f"{src}->a{layer}.h{h}<{dst[-2]}>"] for h in range(kv * R, (kv + 1) * R)]
            want = s_q[parts].sum()
            assert s_q[parts].abs().min() > 1e-9  # each query head's share is a real term
        else:
            want = s_q[index_q[name]]
        torch.testing.assert_close(s_g[i], want, atol=1e-12, rtol=1e-10)


def test_unsplit_inputs_stay_per_query_head() -> None:
    """Without the q/k/v split a head's one input feeds its own queries: never grouped."""
    model = llama()
    graph = EdgeGraph(model.shape, split_qkv=False)
    assert not graph.kv_grouped and not any(".kv" in n for n in graph.edge_names)
    engine = PatchingEngine(model, graph)
    ablated = tl_sources(model, CORRUPTED)
    tl = model.hooked_transformer
    with torch.no_grad():
        torch.testing.assert_close(engine.run(CLEAN, ablated, torch.ones(graph.n_edges, dtype=torch.float64)),
                                   tl(CORRUPTED), atol=1e-12, rtol=0)


# --- ACDC ----------------------------------------------------------------------------------------


def test_acdc_on_a_grouped_graph() -> None:
    """The fast path (passes from a cached prefix: node math does not cover grouped-query models)
    decides as the one-pass-per-test reference; its kept circuit's metric is the full circuit's
    plus the effects of the edges it removed."""
    model = llama()
    graph = EdgeGraph(model.shape)
    data = load_task_data("random", None, VOCAB, n=6, seed=0, metric="kl")
    task = resolve_task(data, None, VOCAB, model.shape.n_ctx)
    ctx = MethodContext(model, graph, task, "kl", "resample", batch_size=4)
    tau = 0.003
    ref = acdc_reference(ctx, tau)
    fast = acdc_fast(ctx, [tau])
    assert torch.equal(ref.keep[0], fast.keep[0]) and torch.equal(ref.tested[0], fast.tested[0])
    torch.testing.assert_close(fast.effects[0], ref.effects[0], atol=1e-10, rtol=0)
    keep, tested = fast.keep[0], fast.tested[0]
    kv = torch.tensor([".kv" in n for n in graph.edge_names])
    assert bool((kv & tested & keep).any()) and bool((kv & tested & ~keep).any())  # kv edges: both ways
    engine = PatchingEngine(model, graph)
    batches = prepare_batches(ctx, engine, None, cached=False)

    def value(k: torch.Tensor) -> float:
        alpha = (~k).double()[None]
        with torch.no_grad():
            val = task_metric(ctx, batches, lambda _, b: engine.run(b.batch.clean, b.ablated, alpha))
        return float(val[0])

    full = value(torch.ones(graph.n_edges, dtype=torch.bool))
    reported = full + float(fast.effects[0][tested & ~keep].sum())
    assert abs(value(keep) - reported) < 1e-9


# --- graphs and files ----------------------------------------------------------------------------


def _circuit(names: list[str], graph: EdgeGraph, scores: dict[str, float] | None = None) -> Any:
    s = scores or {}
    return build_edge_circuit(names, [s.get(n, 1.0) for n in names], [True] * len(names),
                              {"edge_layout": graph.layout()})


def test_node_views_reach_every_query_head_of_a_group() -> None:
    graph = EdgeGraph(llama().shape)
    names = ["input->a0.h0<q>", "a0.h0->a1.kv1<k>", "a1.h3->logits", "a1.h2->logits"]
    circuit = _circuit(names, graph, {"a0.h0->a1.kv1<k>": 5.0})
    edges = circuit.edges(keys=True, data=True)
    kv_copies = [(u, v, k) for u, v, k, d in edges if d.get("kv_head") == "a1.kv1"]
    assert kv_copies == [("a0.h0", "a1.h2", "k"), ("a0.h0", "a1.h3", "k")]
    assert [e["name"] for e in neighbourhood(circuit, "a1.h3")["in"]] == ["a0.h0->a1.kv1<k>"]
    assert [e["name"] for e in top_edges(circuit, 2)] == ["a0.h0->a1.kv1<k>", "a1.h2->logits"]  # listed once
    paths = paths_through(circuit, "a1.h2")["paths"]
    assert [p["nodes"] for p in paths] == [["input", "a0.h0", "a1.h2", "logits"]]
    with pytest.raises(ValueError, match=r"^edge 'a0.h0->a1.kv1<k>': a key/value head needs edge_layout"):
        build_edge_circuit(names, [1.0] * 4, [True] * 4, {})


def test_eap_ig_files_refuse_key_value_heads_and_take_per_query_graphs() -> None:
    shape = llama().shape
    grouped, per_query = EdgeGraph(shape), EdgeGraph(shape, kv_heads="per-query")
    full = [True] * grouped.n_edges
    with pytest.raises(ValueError) as info:
        to_eap_ig(build_edge_circuit(grouped.edge_names, [0.0] * len(full), full,
                                     {"edge_layout": grouped.layout()}, all_edges=True))
    assert str(info.value) == (
        "graph: edge 'input->a0.kv0<k>' is into a key/value head (kv_heads=grouped); EAP-IG/MIB graphs "
        "have per-query-head k/v edges: find the circuit with kv_heads=per-query"
    )
    names = per_query.edge_names
    doc = to_eap_ig(build_edge_circuit(names, [0.5] * len(names), [True] * len(names),
                                       {"edge_layout": per_query.layout()}, all_edges=True))
    assert set(doc["edges"]) == set(names)


def _save_llama(path: Path) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=128, vocab_size=101, max_position_embeddings=64,
    )).save_pretrained(path)


@pytest.mark.parametrize("kv_heads", ["grouped", "per-query"])
def test_discover_records_the_layout(
    kv_heads: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from circuitd.cli import main
    from circuitd.discover import discover
    from circuitd.spec import JobSpec

    _save_llama(tmp_path)
    with full_access():
        try:
            spec = JobSpec.model_validate({"model": f"local:{tmp_path}", "task": "random", "n_prompts": 3,
                                           "method": "eap", "top_n": 6, "kv_heads": kv_heads})
            result = discover(spec)
            assert main(["edges", "--model", f"local:{tmp_path}", "--kv-heads", kv_heads]) == 0
        finally:
            registry.clear_cache()
    layout = result.full_graph.graph["edge_layout"]
    grouped = kv_heads == "grouped"
    assert layout == {"split_qkv": True, "kv_heads": kv_heads, "n_heads": 4, "n_key_value_heads": 2}
    n = result.metrics["n_edges_total"]
    assert n == (8 if grouped else 12) * (1 + 6) + 26
    names = {d["name"] for *_, d in result.full_graph.edges(data=True)}
    assert len(names) == n and any(".kv" in x for x in names) == grouped
    out = capsys.readouterr().out
    assert f"edges: {n}\n" in out
    assert ("k/v inputs: per key/value head" if grouped else "k/v inputs: per query head") in out
    json.dumps(layout)  # graph files carry it as JSON


def test_eap_ig_output_refuses_grouped_edges_before_running(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from circuitd.cli import main

    out = tmp_path / "c.json"
    args = ["discover", "--model", "random:tiny", "--task", "random", "--method", "eap", "--format", "eap-ig",
            "--kv-heads", "grouped", "--out", str(out)]
    assert main(args) == 2 and not out.exists()
    assert capsys.readouterr().err == (
        "circuitd: error: --kv-heads: EAP-IG graphs have per-query-head k/v edges; --format eap-ig takes "
        "--kv-heads per-query (its default)\n"
    )


def test_the_api_refuses_eap_ig_for_grouped_edges_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    from fastapi.testclient import TestClient

    from api.app import create_app
    from circuitd.settings import get_settings
    from circuitd.store import get_store
    from graphs import to_node_link

    for name in [k for k in os.environ if k.startswith("CIRCUITD_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("CIRCUITD_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("CIRCUITD_DATABASE_URL", f"sqlite:///{tmp_path / 'circuitd.db'}")
    get_settings.cache_clear()
    try:
        store = get_store()
        key = store.create_key("alice")
        graph = EdgeGraph(llama().shape)
        names = graph.edge_names
        full = build_edge_circuit(names, [0.0] * len(names), [True] * len(names),
                                  {"edge_layout": graph.layout()}, all_edges=True)
        job, _ = store.create_job("alice", {"model": "random:tiny", "task": "random", "method": "eap"}, "cpu")
        store.claim(job.id, "w")
        assert store.finish(job.id, "w", {"n_edges": len(names)}, to_node_link(full))
        with TestClient(create_app(), headers={"Authorization": f"Bearer {key}"}) as c:
            r = c.get(f"/v1/jobs/{job.id}/graph", params={"format": "eap-ig"})
            assert r.status_code == 422
            assert "'input->a0.kv0<k>' is into a key/value head" in r.json()["detail"]
            assert c.get(f"/v1/jobs/{job.id}/graph").status_code == 200
    finally:
        get_settings.cache_clear()

/* circuitd viewer: draws the graph embedded in #circuitd-graph with cytoscape.
 *
 * Edge circuits (eap / eap-ig / acdc): dagre orders nodes within each layer, and each node's
 * height is pinned to its layer (input at the bottom, logits on top). Edges are blue when
 * positive, red when negative, wider with |score|. The top-n slider re-selects edges from the
 * scores stored in the page, so a file written with --all-edges can be explored without a server.
 * Attribution graphs: every node placed by layer (y) and token position (x), the prompt's
 * tokens along the bottom and the logits on top; hovering shows activation and influence.
 *
 * Test hooks: window.circuitdViewer = {kind, drawnNodes(), drawnEdges(), setTopN(n), select(id)};
 * document.body.dataset.ready = "1" after the first full render.
 */
(function () {
  "use strict";

  var doc = JSON.parse(document.getElementById("circuitd-graph").textContent);
  var kind = doc.viewer.kind;
  var meta = doc.graph || {};
  var nodes = doc.nodes;
  var links = doc.links.map(function (link, i) {
    var value = kind === "attribution" ? link.weight : link.score;
    return { link: link, i: i, value: typeof value === "number" ? value : 0,
             name: link.name || (link.source + "->" + link.target) };
  });
  var byId = {};
  nodes.forEach(function (n) { byId[n.id] = n; });
  var maxAbs = links.reduce(function (m, e) { return Math.max(m, Math.abs(e.value)); }, 0) || 1;

  function fmt(x) {
    if (typeof x !== "number") { return x === null || x === undefined ? "–" : String(x); }
    if (Number.isInteger(x)) { return String(x); }
    return Math.abs(x) >= 1e-3 || x === 0 ? x.toPrecision(4) : x.toExponential(3);
  }

  function text(tag, content, cls) {
    var el = document.createElement(tag);
    el.textContent = content;
    if (cls) { el.className = cls; }
    return el;
  }

  /* ---- which edges are drawn ------------------------------------------------------------ */

  // Edge names ranked by |score| (file order breaks ties); a grouped-query key/value edge is one
  // name drawn into each query head of its group, so top-n counts names, not drawn copies.
  var rankedNames = [];
  (function () {
    var best = {};
    links.forEach(function (e) {
      if (!(e.name in best)) { best[e.name] = e; rankedNames.push(e.name); }
    });
    rankedNames.sort(function (a, b) {
      return Math.abs(best[b].value) - Math.abs(best[a].value) || best[a].i - best[b].i;
    });
  })();
  var inCircuit = links.filter(function (e) { return e.link.in_circuit !== false; });
  var inCircuitNames = {};
  inCircuit.forEach(function (e) { inCircuitNames[e.name] = true; });
  var hasAllEdges = inCircuit.length < links.length;

  function topLinks(n) {
    var keep = {};
    rankedNames.slice(0, Math.max(0, n)).forEach(function (name) { keep[name] = true; });
    return links.filter(function (e) { return keep[e.name]; });
  }

  /* ---- positions ------------------------------------------------------------------------ */

  var ROW = 110;

  function edgeRank(id) {  // input 0, a{L} 2L+1, m{L} 2L+2, logits above the highest
    var n = byId[id];
    if (n.kind === "input" || id === "input") { return 0; }
    if (n.kind === "logits" || id === "logits") { return logitsRank; }
    return 2 * n.layer + (n.kind === "mlp" ? 2 : 1);
  }
  var logitsRank = 1 + nodes.reduce(function (m, n) {
    return n.kind === "attn_head" ? Math.max(m, 2 * n.layer + 1)
      : n.kind === "mlp" ? Math.max(m, 2 * n.layer + 2) : m;
  }, 0);

  function attributionPositions() {
    // Cells (layer, position) in a grid: columns by token position, bands by layer, upwards.
    // A cell's nodes (most influential first) wrap into rows of at most WRAP, so a busy cell
    // makes its layer's band taller rather than the page wider.
    var WRAP = 8, STEP = 34, cells = {}, wrap = {}, bandRows = {}, positions = {};
    nodes.forEach(function (n) {
      var key = n.layer + ":" + n.pos;
      (cells[key] = cells[key] || []).push(n);
    });
    Object.keys(cells).forEach(function (key) {
      var n = cells[key][0];
      wrap[n.pos] = Math.max(wrap[n.pos] || 1, Math.min(WRAP, cells[key].length));
    });
    Object.keys(cells).forEach(function (key) {
      var n = cells[key][0];
      bandRows[n.layer] = Math.max(bandRows[n.layer] || 1, Math.ceil(cells[key].length / wrap[n.pos]));
    });
    var x0 = {}, x = 0, base = {}, y = 0;
    Object.keys(wrap).map(Number).sort(function (a, b) { return a - b; }).forEach(function (p) {
      x0[p] = x;
      x += wrap[p] * STEP + 60;
    });
    Object.keys(bandRows).map(Number).sort(function (a, b) { return a - b; }).forEach(function (layer) {
      base[layer] = y;
      y += (bandRows[layer] - 1) * 30 + ROW;
    });
    Object.keys(cells).forEach(function (key) {
      var cell = cells[key].slice().sort(function (a, b) {
        return (b.influence || 0) - (a.influence || 0);
      });
      cell.forEach(function (n, k) {
        var w = wrap[n.pos];
        positions[n.id] = { x: x0[n.pos] + (k % w) * STEP, y: -(base[n.layer] + Math.floor(k / w) * 30) };
      });
    });
    return positions;
  }

  /* ---- cytoscape ------------------------------------------------------------------------ */

  function nodeLabel(n) {
    if (kind !== "attribution") { return n.id; }
    if (n.kind === "token" || n.kind === "logit") {  // long tokens shortened; the tooltip has them whole
      var token = JSON.stringify(n.token || "");
      return token.length > 12 ? token.slice(0, 11) + "…" : token;
    }
    return n.kind === "error" ? "err" : String(n.feature);
  }

  function nodeElement(n) {
    return { group: "nodes", data: { id: n.id, label: nodeLabel(n), kind: n.kind,
                                     outside: n.in_circuit === false ? 1 : 0 } };
  }

  function edgeElement(e) {
    var w = 1 + 7 * Math.abs(e.value) / maxAbs;
    return { group: "edges", data: {
      id: "e" + e.i, source: e.link.source, target: e.link.target, width: w,
      color: e.value >= 0 ? "#1f5fbf" : "#c23b22", name: e.name } };
  }

  var cy = cytoscape({
    container: document.getElementById("graph"),
    style: [
      { selector: "node", style: {
        "label": "data(label)", "font-size": 10, "text-valign": "center", "text-halign": "center",
        "width": 44, "height": 22, "shape": "round-rectangle", "background-color": "#e6e9f0",
        "border-width": 1, "border-color": "#8a93a6" } },
      { selector: "node[kind = 'attn_head']", style: { "background-color": "#f6e7c8" } },
      { selector: "node[kind = 'mlp']", style: { "background-color": "#d6ecd9" } },
      { selector: "node[kind = 'feature']", style: { "width": 28, "background-color": "#f6e7c8" } },
      { selector: "node[kind = 'error']", style: { "width": 28, "shape": "diamond" } },
      { selector: "node[outside = 1]", style: { "opacity": 0.35 } },  // stored, not in the circuit
      { selector: "node:selected", style: { "border-width": 3, "border-color": "#1d2330" } },
      { selector: "edge", style: {
        "width": "data(width)", "line-color": "data(color)", "target-arrow-color": "data(color)",
        "target-arrow-shape": "triangle", "curve-style": "bezier", "opacity": 0.7,
        "arrow-scale": 0.6 } }
    ]
  });

  var onFirstRender = function () {
    onFirstRender = null;
    document.body.dataset.ready = "1";
  };

  function layoutDone() { if (onFirstRender) { onFirstRender(); } }

  function drawEdgeCircuit(chosen) {
    var ids = {};
    chosen.forEach(function (e) { ids[e.link.source] = true; ids[e.link.target] = true; });
    cy.batch(function () {
      cy.elements().remove();
      cy.add(nodes.filter(function (n) { return ids[n.id]; }).map(nodeElement));
      cy.add(chosen.map(edgeElement));
    });
    var layout = cy.layout({
      name: "dagre", rankDir: "BT", nodeSep: 12, rankSep: 50,
      minLen: function (edge) {  // keep every edge as long as the layers it spans
        return Math.max(1, edgeRank(edge.data("target")) - edgeRank(edge.data("source")));
      },
      transform: function (node, pos) { return { x: pos.x, y: -edgeRank(node.id()) * ROW / 2 }; }
    });
    layout.one("layoutstop", layoutDone);
    layout.run();
  }

  function drawAttribution(chosen) {
    var positions = attributionPositions();
    cy.batch(function () {
      cy.elements().remove();
      cy.add(nodes.map(function (n) {
        var el = nodeElement(n);
        el.position = positions[n.id];
        return el;
      }));
      cy.add(chosen.map(edgeElement));
    });
    var layout = cy.layout({ name: "preset", fit: true, padding: 30 });
    layout.one("layoutstop", layoutDone);
    layout.run();
  }

  function draw(chosen) {
    (kind === "attribution" ? drawAttribution : drawEdgeCircuit)(chosen);
  }

  /* ---- side panel, tooltip, controls ---------------------------------------------------- */

  function edgeTable(title, list, other) {
    var frag = document.createDocumentFragment();
    frag.appendChild(text("h3", title + " (" + list.length + ")"));
    var table = document.createElement("table");
    list.sort(function (a, b) { return Math.abs(b.value) - Math.abs(a.value); }).forEach(function (e) {
      var row = table.insertRow();
      row.appendChild(text("td", kind === "attribution" ? e.link[other] : e.name));
      row.appendChild(text("td", fmt(e.value), "num " + (e.value >= 0 ? "pos" : "neg")));
    });
    frag.appendChild(table);
    return frag;
  }

  function select(nodeId) {
    var panel = document.getElementById("panel");
    panel.textContent = "";
    if (!(nodeId in byId)) {
      panel.appendChild(text("p", "no node " + nodeId, "hint"));
      return null;
    }
    var drawn = {};
    cy.edges().forEach(function (edge) { drawn[edge.id()] = true; });
    var shown = links.filter(function (e) { return drawn["e" + e.i]; });
    var into = shown.filter(function (e) { return e.link.target === nodeId; });
    var out = shown.filter(function (e) { return e.link.source === nodeId; });
    panel.appendChild(text("h2", nodeId));
    var n = byId[nodeId];
    ["kind", "layer", "token", "activation", "influence"].forEach(function (field) {
      if (n[field] !== undefined && n[field] !== null) {
        panel.appendChild(text("div", field + ": " + fmt(n[field])));
      }
    });
    panel.appendChild(edgeTable("in", into.slice(), "source"));
    panel.appendChild(edgeTable("out", out.slice(), "target"));
    cy.nodes().unselect();
    cy.getElementById(nodeId).select();
    return {
      in: into.map(function (e) { return { name: e.name, source: e.link.source, score: e.value }; }),
      out: out.map(function (e) { return { name: e.name, target: e.link.target, score: e.value }; })
    };
  }

  cy.on("tap", "node", function (evt) { select(evt.target.id()); });

  var tooltip = document.getElementById("tooltip");
  cy.on("mouseover", "node", function (evt) {
    var n = byId[evt.target.id()];
    var lines = [n.id];
    if (kind === "attribution") {
      if (n.token) { lines.push("token: " + JSON.stringify(n.token)); }
      lines.push("activation: " + fmt(n.activation), "influence: " + fmt(n.influence));
      if (n.prob !== null && n.prob !== undefined) { lines.push("prob: " + fmt(n.prob)); }
    }
    tooltip.textContent = lines.join("\n");
    tooltip.hidden = false;
  });
  cy.on("mousemove", function (evt) {
    var e = evt.originalEvent;
    if (e) { tooltip.style.left = (e.clientX + 12) + "px"; tooltip.style.top = (e.clientY + 12) + "px"; }
  });
  cy.on("mouseout", "node", function () { tooltip.hidden = true; });

  var summary = document.getElementById("summary");
  function setTopN(n) {
    var topN = Math.max(0, Math.min(Math.floor(n), rankedNames.length));
    var slider = document.getElementById("topn");
    if (slider) { slider.value = String(topN); document.getElementById("topn-label").textContent = topN; }
    draw(topLinks(topN));
    return cy.edges().length;
  }

  (function controls() {
    var parts = [];
    if (meta.model) { parts.push(meta.model); }
    if (meta.task) { parts.push(meta.task); }
    if (meta.method) { parts.push(meta.method); }
    if (kind === "attribution" && meta.prompt) { parts.push("prompt " + JSON.stringify(meta.prompt)); }
    parts.push(nodes.length + " nodes, " + links.length + " edges in the file");
    if (meta.metrics && typeof meta.metrics.faithfulness === "number") {
      parts.push("faithfulness " + fmt(meta.metrics.faithfulness));
    }
    summary.textContent = parts.join(" · ");
    if (kind === "attribution" || !hasAllEdges) { return; }
    var box = document.getElementById("controls");
    var label = text("label", "top edges by |score|: ");
    label.htmlFor = "topn";
    var slider = document.createElement("input");
    slider.type = "range"; slider.id = "topn"; slider.min = "0";
    slider.max = String(rankedNames.length);
    slider.value = String(Object.keys(inCircuitNames).length);
    slider.addEventListener("input", function () { setTopN(Number(slider.value)); });
    box.appendChild(label);
    box.appendChild(slider);
    box.appendChild(text("span", slider.value, "")).id = "topn-label";
  })();

  window.circuitdViewer = {
    kind: kind,
    drawnNodes: function () { return cy.nodes().length; },
    drawnEdges: function () { return cy.edges().length; },
    setTopN: setTopN,
    select: select
  };

  draw(kind === "attribution" ? links : inCircuit);
})();

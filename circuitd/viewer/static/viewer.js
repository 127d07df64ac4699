/* circuitd viewer: draws one circuitd graph (node-link JSON) with cytoscape, inside an element.
 *
 * Used twice: by the offline page `circuitd view` writes (the graph embedded in the page) and by
 * the API's web pages (the graph fetched from /v1). Both call
 *   CircuitdViewer.mount(root, doc, options) -> viewer
 * which builds the summary, the controls, the drawing, the side panel, the tooltip and (when the
 * graph carries one) the faithfulness curve inside `root`.
 *
 * Edge circuits (eap / eap-ig / acdc): nodes are laid out once, by dagre on the strongest edges, each
 * node's height pinned to its layer (input at the bottom, logits on top); the top-n slider then
 * re-selects edges from the scores stored in the page and repaints them (see EdgeLayer), so a file or
 * job with every scored edge can be explored without a round trip and without moving the nodes.
 * Edges are blue when positive, red when negative, wider with |score|.
 * Attribution graphs: nodes placed by layer (y) and token position (x), the prompt's tokens along
 * the bottom and the logits on top; hovering shows activation and influence; with
 * options.thresholds the node and edge threshold sliders ask the server to re-prune.
 * Clicking a node lists its edges and highlights the input-to-logits paths through it.
 *
 * options: { thresholds?: {node, edge, fetch(node, edge) -> Promise<doc>},
 *            colorOf?(link) -> css colour, onDraw?() }
 * viewer:  { kind, drawnNodes(), drawnEdges(), setTopN(n), select(id), highlightPaths(id),
 *            setThresholds(node, edge) -> Promise, destroy() }; root.dataset.draws counts draws.
 */
(function (global) {
  "use strict";

  var ROW = 55;              // vertical distance between two ranks of an edge circuit
  var COLUMN = 58;           // horizontal distance between neighbours in one rank
  var LAYOUT_EDGES = 400;    // the strongest edges dagre orders the nodes by (its cost grows with them)
  var MAX_NEURONS_DRAWN = 4000;  // neurons are cytoscape nodes: a neuron slider stops here
  var MANY_EDGES = 3000;     // above this many painted edges, no arrow heads and lighter lines
  var BLUE = "#1f5fbf", RED = "#c23b22";

  function fmt(x) {
    if (typeof x !== "number") { return x === null || x === undefined ? "–" : String(x); }
    if (Number.isInteger(x)) { return String(x); }
    return Math.abs(x) >= 1e-3 || x === 0 ? x.toPrecision(4) : x.toExponential(3);
  }

  function el(tag, cls, content) {
    var node = document.createElement(tag);
    if (cls) { node.className = cls; }
    if (content !== undefined) { node.textContent = content; }
    return node;
  }

  /* ---- a graph document, prepared for drawing --------------------------------------------- */

  function prepare(doc) {
    var kind = doc.graph && doc.graph.kind === "attribution" ? "attribution" : "edge-circuit";
    var byId = {};
    doc.nodes.forEach(function (n) { byId[n.id] = n; });
    var links = doc.links.map(function (link, i) {
      var value = kind === "attribution" ? link.weight : link.score;
      return { link: link, i: i, value: typeof value === "number" ? value : 0,
               name: link.name || (link.source + "->" + link.target) };
    });
    // Edge names ranked by |score| (file order breaks ties); a grouped-query key/value edge is one
    // name drawn into each query head of its group, so top-n counts names, not drawn copies.
    var copies = {}, rankedNames = [];
    links.forEach(function (e) {
      if (!(e.name in copies)) { copies[e.name] = []; rankedNames.push(e.name); }
      copies[e.name].push(e);
    });
    rankedNames.sort(function (a, b) {
      return Math.abs(copies[b][0].value) - Math.abs(copies[a][0].value) || copies[a][0].i - copies[b][0].i;
    });
    var inCircuit = 0;
    rankedNames.forEach(function (name) { if (copies[name][0].link.in_circuit !== false) { inCircuit += 1; } });
    var maxAbs = links.reduce(function (m, e) { return Math.max(m, Math.abs(e.value)); }, 0) || 1;
    // the level the circuit was chosen at: edges, nodes (heads and MLPs, each ablated whole) or
    // MLP neurons; the slider ranks what was chosen (nodes by their own score, input and logits
    // always in), and the curve's x axis counts it
    var level = kind === "attribution" ? "attribution" : ((doc.graph || {}).level || "edge");
    var rankedNodes = doc.nodes.filter(function (n) { return n.kind !== "input" && n.kind !== "logits"; })
      .map(function (n, i) { return { n: n, i: i }; })
      .sort(function (a, b) { return Math.abs(b.n.score || 0) - Math.abs(a.n.score || 0) || a.i - b.i; })
      .map(function (x) { return x.n.id; });
    var units = level === "node" || level === "neuron" ? rankedNodes : rankedNames;
    var inUnits = level === "node" || level === "neuron"
      ? rankedNodes.filter(function (id) { return byId[id].in_circuit !== false; }).length : inCircuit;
    var maxNode = doc.nodes.reduce(function (m, n) { return Math.max(m, Math.abs(n.score || 0)); }, 0) || 1;
    return { kind: kind, level: level, meta: doc.graph || {}, nodes: doc.nodes, byId: byId,
             links: links, copies: copies, rankedNames: rankedNames, rankedNodes: rankedNodes,
             units: units, unitName: level === "node" ? "nodes" : level === "neuron" ? "neurons" : "edges",
             circuitUnits: inUnits, hasAllEdges: inUnits < units.length, maxAbs: maxAbs, maxNode: maxNode };
  }

  /* ---- positions -------------------------------------------------------------------------- */

  function edgeRanks(g) {  // input 0, a{L} 2L+1, m{L} 2L+2, logits above the highest
    var top = 1 + g.nodes.reduce(function (m, n) {
      return n.kind === "attn_head" ? Math.max(m, 2 * n.layer + 1)
        : n.kind === "mlp" ? Math.max(m, 2 * n.layer + 2) : m;
    }, 0);
    return function (id) {
      var n = g.byId[id] || {};
      if (n.kind === "input" || id === "input") { return 0; }
      if (n.kind === "logits" || id === "logits") { return top; }
      return 2 * n.layer + (n.kind === "mlp" ? 2 : 1);
    };
  }

  function attributionPositions(g) {
    // Cells (layer, position) in a grid: columns by token position, bands by layer, upwards.
    // A cell's nodes (most influential first) wrap into rows of at most WRAP, so a busy cell
    // makes its layer's band taller rather than the page wider.
    var WRAP = 8, STEP = 34, BAND = 110, cells = {}, wrap = {}, bandRows = {}, positions = {};
    g.nodes.forEach(function (n) {
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
      y += (bandRows[layer] - 1) * 30 + BAND;
    });
    Object.keys(cells).forEach(function (key) {
      var cell = cells[key].slice().sort(function (a, b) { return (b.influence || 0) - (a.influence || 0); });
      cell.forEach(function (n, k) {
        var w = wrap[n.pos];
        positions[n.id] = { x: x0[n.pos] + (k % w) * STEP, y: -(base[n.layer] + Math.floor(k / w) * 30) };
      });
    });
    return positions;
  }

  /* ---- cytoscape -------------------------------------------------------------------------- */

  function nodeLabel(kind, n) {
    if (kind !== "attribution") { return n.id; }
    if (n.kind === "token" || n.kind === "logit") {  // long tokens shortened; the tooltip has them whole
      var token = JSON.stringify(n.token || "");
      return token.length > 12 ? token.slice(0, 11) + "…" : token;
    }
    return n.kind === "error" ? "err" : String(n.feature);
  }

  var STYLE = [
    { selector: "node", style: {
      "label": "data(label)", "font-size": 10, "text-valign": "center", "text-halign": "center",
      "width": 44, "height": 22, "shape": "round-rectangle", "background-color": "#e6e9f0",
      "border-width": 1, "border-color": "#8a93a6", "min-zoomed-font-size": 6 } },
    { selector: "node[kind = 'attn_head'], node[kind = 'feature']", style: { "background-color": "#f6e7c8" } },
    { selector: "node[kind = 'mlp']", style: { "background-color": "#d6ecd9" } },
    { selector: "node[kind = 'feature']", style: { "width": 28 } },
    { selector: "node[kind = 'error']", style: { "width": 28, "shape": "diamond" } },
    { selector: "node[outside = 1]", style: { "opacity": 0.35 } },  // stored, not in the circuit
    { selector: "node[sign > 0]", style: { "border-color": "#1f5fbf", "border-width": "data(ring)" } },  // node-level scores
    { selector: "node[sign < 0]", style: { "border-color": "#c23b22", "border-width": "data(ring)" } },
    { selector: "node[kind = 'neuron']", style: { "width": 30, "font-size": 8 } },
    { selector: "node.idle", style: { "display": "none" } },          // no drawn edge at this top-n
    { selector: "node:selected", style: { "border-width": 3, "border-color": "#1d2330" } },
    { selector: "node.faded", style: { "opacity": 0.15 } },
    { selector: "edge", style: { "curve-style": "straight" } }  // only while dagre orders the nodes
  ];

  /* ---- the edge layer ---------------------------------------------------------------------- */

  // Edges are painted on a canvas under cytoscape's nodes, not made cytoscape elements: a graph of
  // tens of thousands of edges then costs one pass of canvas strokes per frame instead of an
  // element (style, bounds, events) per edge, so the top-n slider stays fast at any size.
  // cytoscape keeps what it is good at: the layout, the nodes, panning, zooming and picking.
  function EdgeLayer(box) {
    this.canvas = box.appendChild(el("canvas", "cv-edges"));
    this.cy = null;         // set once cytoscape runs in the box above the canvas
    this.drawn = [];        // prepared links to paint, weakest first (the strongest end on top)
    this.lit = null;        // link index -> true for a highlighted subgraph, null when none
    this.colorOf = null;
    this.maxAbs = 1;
    this.queued = false;
  }

  EdgeLayer.prototype.set = function (drawn, maxAbs, colorOf) {
    this.drawn = drawn; this.maxAbs = maxAbs || 1; this.colorOf = colorOf || null;
    this.paint();
  };

  EdgeLayer.prototype.light = function (lit) { this.lit = lit; this.paint(); };

  EdgeLayer.prototype.schedule = function () {  // at most one paint per animation frame
    var self = this;
    if (self.queued) { return; }
    self.queued = true;
    requestAnimationFrame(function () { self.queued = false; self.paint(); });
  };

  EdgeLayer.prototype.paint = function () {
    var canvas = this.canvas, cy = this.cy, dpr = global.devicePixelRatio || 1;
    var w = canvas.parentNode.clientWidth, h = canvas.parentNode.clientHeight;
    if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(h * dpr)) {
      canvas.width = Math.round(w * dpr); canvas.height = Math.round(h * dpr);
      canvas.style.width = w + "px"; canvas.style.height = h + "px";
    }
    var ctx = canvas.getContext("2d");
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    var zoom = cy.zoom(), pan = cy.pan();
    ctx.setTransform(zoom * dpr, 0, 0, zoom * dpr, pan.x * dpr, pan.y * dpr);
    var at = {};
    cy.nodes().forEach(function (node) {
      var p = node.position();
      at[node.id()] = { x: p.x, y: p.y, hw: node.width() / 2 + 2, hh: node.height() / 2 + 2 };
    });
    var many = this.drawn.length > MANY_EDGES, lit = this.lit, self = this;
    // one stroke per (colour, width, lit) group: a few canvas calls however many edges there are
    var groups = {}, order = [];
    this.drawn.forEach(function (e) {
      var a = at[e.link.source], b = at[e.link.target];
      if (!a || !b) { return; }
      var on = lit ? (lit[e.i] ? 1 : 0) : 2;
      var color = self.colorOf ? self.colorOf(e.link) : (e.value >= 0 ? BLUE : RED);
      var width = Math.round(2 * (1 + 7 * Math.abs(e.value) / self.maxAbs)) / 2;
      var key = on + "|" + color + "|" + width;
      if (!groups[key]) { groups[key] = { on: on, color: color, width: width, segs: [] }; order.push(key); }
      groups[key].segs.push(e, a, b);
    });
    order.sort(function (p, q) { return groups[p].on - groups[q].on; });  // faded first, lit last
    order.forEach(function (key) {
      var grp = groups[key], segs = grp.segs;
      ctx.globalAlpha = grp.on === 0 ? 0.06 : grp.on === 1 ? 0.95 : (many ? 0.45 : 0.7);
      ctx.strokeStyle = grp.color; ctx.fillStyle = grp.color; ctx.lineWidth = grp.width;
      ctx.beginPath();
      var heads = [];
      for (var k = 0; k < segs.length; k += 3) {
        var e = segs[k], a = segs[k + 1], b = segs[k + 2];
        var bend = edgeBend(e.name) * 9;  // q, k and v inputs of one head side by side
        var dx = b.x - a.x, dy = b.y - a.y, len = Math.sqrt(dx * dx + dy * dy) || 1;
        var cx = (a.x + b.x) / 2 - dy / len * bend, cyy = (a.y + b.y) / 2 + dx / len * bend;
        var end = boxEdge(b, cx - b.x, cyy - b.y);
        ctx.moveTo(a.x, a.y);
        if (bend) { ctx.quadraticCurveTo(cx, cyy, end.x, end.y); } else { ctx.lineTo(end.x, end.y); }
        if (!many || grp.on === 1) { heads.push(end.x, end.y, end.x - cx, end.y - cyy); }
      }
      ctx.stroke();
      if (heads.length) {
        ctx.beginPath();
        var size = 3 + grp.width;
        for (var j = 0; j < heads.length; j += 4) { arrowHead(ctx, heads[j], heads[j + 1], heads[j + 2], heads[j + 3], size); }
        ctx.fill();
      }
    });
    ctx.globalAlpha = 1;
  };

  function edgeBend(name) {
    var m = /<([qkv])>(?:@\d+)?$/.exec(name);
    return m ? { q: -1, k: 0, v: 1 }[m[1]] : 0;
  }

  function boxEdge(b, dx, dy) {  // where the line from b's centre towards (dx, dy) leaves b's box
    var t = Math.min(dx ? b.hw / Math.abs(dx) : Infinity, dy ? b.hh / Math.abs(dy) : Infinity, 1);
    return { x: b.x + dx * t, y: b.y + dy * t };
  }

  function arrowHead(ctx, x, y, dx, dy, size) {
    var len = Math.sqrt(dx * dx + dy * dy) || 1, ux = dx / len, uy = dy / len;
    ctx.moveTo(x, y);
    ctx.lineTo(x - ux * size * 1.6 - uy * size * 0.7, y - uy * size * 1.6 + ux * size * 0.7);
    ctx.lineTo(x - ux * size * 1.6 + uy * size * 0.7, y - uy * size * 1.6 - ux * size * 0.7);
    ctx.closePath();
  }

  /* ---- paths through a node ---------------------------------------------------------------- */

  // The drawn links on some source-to-sink path through ``nodeId`` (sources: the input or the
  // prompt's tokens, sinks: the logits): a link a->b is on one when a is reached from a source and
  // b leads to nodeId, or a is reached from nodeId and b leads to a sink.
  function pathLinks(drawn, nodeId, isSource, isSink) {
    var out = {}, into = {};
    drawn.forEach(function (e) {
      (out[e.link.source] = out[e.link.source] || []).push(e);
      (into[e.link.target] = into[e.link.target] || []).push(e);
    });
    function reach(starts, next, end) {
      var seen = {}, stack = starts.slice();
      starts.forEach(function (s) { seen[s] = true; });
      while (stack.length) {
        var n = stack.pop();
        (next[n] || []).forEach(function (e) {
          var m = e.link[end];
          if (!seen[m]) { seen[m] = true; stack.push(m); }
        });
      }
      return seen;
    }
    var ends = Object.keys(out).concat(Object.keys(into));
    var fromSources = reach(ends.filter(isSource), out, "target");
    var toSinks = reach(ends.filter(isSink), into, "source");
    var before = reach([nodeId], into, "source"), after = reach([nodeId], out, "target");
    var lit = {}, nodes = {}, count = 0;
    drawn.forEach(function (e) {
      var a = e.link.source, b = e.link.target;
      var up = fromSources[a] && before[b] && fromSources[nodeId];
      var down = after[a] && toSinks[b] && toSinks[nodeId];
      if (up || down) { lit[e.i] = true; nodes[a] = nodes[b] = true; count += 1; }
    });
    nodes[nodeId] = true;
    return { links: lit, nodes: nodes, count: count };
  }

  /* ---- mount --------------------------------------------------------------------------------- */

  function mount(root, doc, options) {
    options = options || {};
    root.textContent = "";
    root.classList.add("cv-root");
    var head = root.appendChild(el("div", "cv-head"));
    var summary = head.appendChild(el("p", "cv-summary"));
    var controls = head.appendChild(el("div", "cv-controls"));
    var main = root.appendChild(el("div", "cv-main"));
    var graphBox = main.appendChild(el("div", "cv-graph"));
    graphBox.setAttribute("aria-label", "graph drawing");
    var side = main.appendChild(el("aside", "cv-side"));
    var curveBox = side.appendChild(el("div", "cv-curve"));
    var panel = side.appendChild(el("div", "cv-panel"));
    panel.appendChild(el("p", "hint", "Click a node to list its edges and light up the paths through it."));
    var tooltip = root.appendChild(el("div", "cv-tooltip"));
    tooltip.hidden = true;
    root.dataset.draws = "0";

    var g = prepare(doc);
    var kind = g.kind;
    var ranks = kind === "attribution" ? null : edgeRanks(g);
    var drawnNames = {};   // name -> true for the names whose links are painted
    var drawn = [];        // those links, weakest first
    var degree = {};       // node -> [in, out] over the painted links
    var topN = 0;          // edge circuits: how many ranked names the slider selects
    var plot = null;

    var edges = new EdgeLayer(graphBox);
    var nodesBox = graphBox.appendChild(el("div", "cv-nodes"));  // above the edge canvas
    var cy = cytoscape({ container: nodesBox, style: STYLE, pixelRatio: 1 });
    edges.cy = cy;
    cy.on("viewport resize position", function () { edges.schedule(); });

    function drew() {
      root.dataset.draws = String(Number(root.dataset.draws) + 1);
      if (options.onDraw) { options.onDraw(); }
    }

    function nodeElement(n) {
      var data = { id: n.id, label: nodeLabel(kind, n), kind: n.kind, outside: n.in_circuit === false ? 1 : 0 };
      if (g.level === "node" || g.level === "neuron") {  // the node's own score: a ring by sign and size
        data.sign = (n.score || 0) > 0 ? 1 : (n.score || 0) < 0 ? -1 : 0;
        data.ring = 1 + 4 * Math.abs(n.score || 0) / g.maxNode;
        if (g.level === "neuron") { data.label = "n" + n.neuron; }
      }
      return { group: "nodes", data: data };
    }

    function isSource(id) {
      var n = g.byId[id] || {};
      return kind === "attribution" ? n.kind === "token" : id === "input";
    }

    function isSink(id) {
      var n = g.byId[id] || {};
      return kind === "attribution" ? n.kind === "logit" : id === "logits";
    }

    /* -- which links are painted ------------------------------------------------------------- */

    function setNames(names) {
      drawnNames = {};
      drawn = [];
      degree = {};
      for (var k = names.length - 1; k >= 0; k -= 1) {  // ranked strongest first: painted last
        drawnNames[names[k]] = true;
        Array.prototype.push.apply(drawn, g.copies[names[k]]);
      }
      drawn.forEach(function (e) {
        (degree[e.link.source] = degree[e.link.source] || [0, 0])[1] += 1;
        (degree[e.link.target] = degree[e.link.target] || [0, 0])[0] += 1;
      });
      if (g.level === "edge" || g.level === "node") {  // a node without a painted edge is hidden (it keeps its place)
        cy.batch(function () {
          cy.nodes().forEach(function (node) {
            var idle = !degree[node.id()];
            if (node.hasClass("idle") !== idle) { node.toggleClass("idle", idle); }
          });
        });
      }
      clearHighlight(false);
      edges.set(drawn, g.maxAbs, options.colorOf);
      if (plot) { plot.redraw(false, false); }
    }

    /* -- edge circuits: nodes laid out once ---------------------------------------------------- */

    function layoutEdgeCircuit(names) {
      // dagre orders each rank's nodes by the strongest drawn edges (added for the layout only);
      // the ranks' heights are fixed and each rank's nodes evenly spaced in dagre's order
      var guide = [];
      names.slice(0, LAYOUT_EDGES).forEach(function (name) {
        g.copies[name].forEach(function (e) {
          guide.push({ group: "edges", data: { id: "layout" + e.i, source: e.link.source, target: e.link.target } });
        });
      });
      var added = cy.add(guide);
      var order = {};
      cy.elements().layout({
        name: "dagre", rankDir: "BT", nodeSep: 12, rankSep: 30, fit: false, animate: false,
        minLen: function (edge) { return Math.max(1, ranks(edge.data("target")) - ranks(edge.data("source"))); },
        transform: function (node, pos) { order[node.id()] = pos.x; return pos; }
      }).run();
      cy.remove(added);
      var byRank = {};
      cy.nodes().forEach(function (node) { (byRank[ranks(node.id())] = byRank[ranks(node.id())] || []).push(node); });
      cy.batch(function () {
        Object.keys(byRank).forEach(function (rank) {
          var row = byRank[rank].sort(function (a, b) {
            return (order[a.id()] || 0) - (order[b.id()] || 0) || (a.id() < b.id() ? -1 : 1);
          });
          row.forEach(function (node, k) { node.position({ x: (k - (row.length - 1) / 2) * COLUMN, y: -Number(rank) * ROW }); });
        });
      });
    }

    function drawEdgeCircuit() {
      cy.batch(function () {
        cy.elements().remove();
        var ids = {};
        g.links.forEach(function (e) { ids[e.link.source] = true; ids[e.link.target] = true; });
        cy.add(g.nodes.filter(function (n) { return ids[n.id]; }).map(nodeElement));
      });
      var initial = g.rankedNames.filter(function (name) { return g.copies[name][0].link.in_circuit !== false; });
      topN = g.level === "node" ? g.circuitUnits : initial.length;
      layoutEdgeCircuit(initial);
      setNames(initial);
    }

    function setTopN(n) {
      if (kind === "attribution") { return drawn.length; }
      topN = Math.max(0, Math.min(Math.floor(n), g.units.length));
      var input = controls.querySelector(".cv-topn");
      if (input) {
        input.value = String(topN);
        controls.querySelector(".cv-topn-label").textContent = String(topN);
      }
      if (g.level === "neuron") {
        placeNeurons(g.rankedNodes.slice(0, topN));
      } else if (g.level === "node") {
        setNames(namesAmong(g.rankedNodes.slice(0, topN)));
      } else {
        setNames(g.rankedNames.slice(0, topN));
      }
      drew();
      return drawn.length;
    }

    function namesAmong(kept) {
      // a node circuit's edges: out of a kept node (or the input) into a kept node (or the logits)
      var keep = { input: true, logits: true };
      kept.forEach(function (id) { keep[id] = true; });
      return g.rankedNames.filter(function (name) {
        var link = g.copies[name][0].link;
        return keep[link.source] && link.source !== "logits" && keep[link.target] && link.target !== "input";
      });
    }

    /* -- neuron-level circuits: the chosen MLP neurons, a row per layer ------------------------ */

    function placeNeurons(ids) {
      // row = layer (layer 0 at the bottom), neurons of a row by |score| from the centre outwards
      var rows = {};
      ids.forEach(function (id) { (rows[g.byId[id].layer] = rows[g.byId[id].layer] || []).push(id); });
      cy.batch(function () {
        cy.elements().remove();
        Object.keys(rows).forEach(function (layer) {
          var row = rows[layer];
          cy.add(row.map(function (id, k) {
            var element = nodeElement(g.byId[id]);
            element.position = { x: (k % 2 ? -1 : 1) * Math.ceil(k / 2) * 36, y: -Number(layer) * ROW };
            return element;
          }));
        });
      });
      setNames([]);
      cy.fit(cy.nodes(), 30);
    }

    function drawNeurons() {
      var initial = g.rankedNodes.filter(function (id) { return g.byId[id].in_circuit !== false; });
      topN = initial.length;
      placeNeurons(initial);
    }

    /* -- attribution graphs: every node at its (layer, position) cell -------------------------- */

    function drawAttribution() {
      var positions = stretchToBox(attributionPositions(g));
      cy.batch(function () {
        cy.elements().remove();
        cy.add(g.nodes.map(function (n) {
          var element = nodeElement(n);
          element.position = positions[n.id];
          return element;
        }));
      });
      setNames(g.rankedNames);
    }

    function stretchToBox(positions) {
      // a prompt is wide and a model shallow: bands spread upwards (at most 4x) towards the
      // drawing's own shape, so the fitted graph is not a thin strip of unreadable nodes
      var ids = Object.keys(positions);
      if (!ids.length) { return positions; }
      var xs = ids.map(function (id) { return positions[id].x; }), ys = ids.map(function (id) { return positions[id].y; });
      var w = Math.max.apply(null, xs) - Math.min.apply(null, xs) + 60;
      var h = Math.max.apply(null, ys) - Math.min.apply(null, ys) + 60;
      var want = (graphBox.clientHeight || 600) / (graphBox.clientWidth || 900);
      var factor = Math.min(4, Math.max(1, want * w / h));
      ids.forEach(function (id) { positions[id].y *= factor; });
      return positions;
    }

    function draw() {
      (kind === "attribution" ? drawAttribution : g.level === "neuron" ? drawNeurons : drawEdgeCircuit)();
      describe();
      drawCurve();
      fit();
      drew();
    }

    function fit() {
      cy.resize();
      cy.fit(cy.nodes(":visible"), 30);
      edges.paint();
    }

    /* -- selection, paths, tooltip ------------------------------------------------------------- */

    function clearHighlight(repaint) {
      cy.nodes(".faded").removeClass("faded");
      edges.lit = null;
      if (repaint !== false) { edges.paint(); }
    }

    function highlightPaths(nodeId) {
      if (!(nodeId in g.byId)) { return 0; }
      var found = pathLinks(drawn, nodeId, isSource, isSink);
      cy.batch(function () {
        cy.nodes().forEach(function (node) { node.toggleClass("faded", !found.nodes[node.id()]); });
      });
      edges.light(found.links);
      return found.count;
    }

    function edgeTable(title, list, other) {
      var frag = document.createDocumentFragment();
      frag.appendChild(el("h3", "", title + " (" + list.length + ")"));
      var table = el("table");
      list.sort(function (a, b) { return Math.abs(b.value) - Math.abs(a.value); }).forEach(function (e) {
        var row = table.insertRow();
        var at = e.link.position_name === undefined ? "" : " (" + e.link.position_name + ")";  // position-aware
        row.appendChild(el("td", "", kind === "attribution" ? e.link[other] : e.name + at));
        row.appendChild(el("td", "num " + (e.value >= 0 ? "pos" : "neg"), fmt(e.value)));
      });
      frag.appendChild(table);
      return frag;
    }

    function select(nodeId) {
      panel.textContent = "";
      if (!(nodeId in g.byId)) {
        panel.appendChild(el("p", "hint", "no node " + nodeId));
        return null;
      }
      var into = drawn.filter(function (e) { return e.link.target === nodeId; });
      var out = drawn.filter(function (e) { return e.link.source === nodeId; });
      panel.appendChild(el("h2", "", nodeId));
      var n = g.byId[nodeId];
      ["kind", "layer", "pos", "token", "activation", "influence", "score"].forEach(function (field) {
        if (n[field] !== undefined && n[field] !== null) { panel.appendChild(el("div", "", field + ": " + fmt(n[field]))); }
      });
      var onPaths = highlightPaths(nodeId);
      panel.appendChild(el("div", "hint", onPaths + " drawn edges on input→logits paths through it"));
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
    cy.on("tap", function (evt) { if (evt.target === cy) { clearHighlight(); cy.nodes().unselect(); } });
    cy.on("mouseover", "node", function (evt) {
      var id = evt.target.id(), n = g.byId[id], deg = degree[id] || [0, 0];
      var lines = [n.id];
      if (kind === "attribution") {
        if (n.token) { lines.push("token: " + JSON.stringify(n.token)); }
        lines.push("activation: " + fmt(n.activation), "influence: " + fmt(n.influence));
        if (n.prob !== null && n.prob !== undefined) { lines.push("prob: " + fmt(n.prob)); }
      }
      lines.push("edges drawn: in " + deg[0] + ", out " + deg[1]);
      tooltip.textContent = lines.join("\n");
      tooltip.hidden = false;
    });
    cy.on("mousemove", function (evt) {
      var e = evt.originalEvent;
      if (e) { tooltip.style.left = (e.clientX + 12) + "px"; tooltip.style.top = (e.clientY + 12) + "px"; }
    });
    cy.on("mouseout", "node", function () { tooltip.hidden = true; });

    /* -- summary, controls, faithfulness curve -------------------------------------------------- */

    function describe() {
      var meta = g.meta, parts = [];
      ["model", "task", "method"].forEach(function (k) { if (meta[k]) { parts.push(String(meta[k])); } });
      if (kind === "attribution" && meta.prompt) { parts.push("prompt " + JSON.stringify(meta.prompt)); }
      parts.push(g.nodes.length + " nodes, " + g.links.length + " edges");
      var m = meta.metrics || {};
      if (typeof m.faithfulness === "number") { parts.push("faithfulness " + fmt(m.faithfulness)); }
      if (typeof meta.replacement_score === "number") { parts.push("replacement " + fmt(meta.replacement_score)); }
      if (typeof meta.completeness_score === "number") { parts.push("completeness " + fmt(meta.completeness_score)); }
      summary.textContent = parts.join(" · ");
    }

    function slider(cls, label, min, max, step, value, onChange, event) {
      var box = el("label", "cv-slider", label + " ");
      var input = el("input", cls);
      input.type = "range"; input.min = String(min); input.max = String(max); input.step = String(step);
      input.value = String(value);
      var shown = el("span", cls + "-label", String(value));
      input.addEventListener(event, function () { shown.textContent = input.value; onChange(Number(input.value)); });
      box.appendChild(input);
      box.appendChild(shown);
      controls.appendChild(box);
      return input;
    }

    var thresholds = options.thresholds || null;
    var pending = Promise.resolve();

    function setThresholds(node, edge) {
      if (!thresholds) { return Promise.reject(new Error("this view has no re-pruning")); }
      thresholds.node = node; thresholds.edge = edge;
      root.dataset.busy = "1";
      pending = pending.then(function () { return thresholds.fetch(node, edge); }).then(function (fresh) {
        g = prepare(fresh);
        draw();
        syncThresholdSliders();
      }).finally(function () { delete root.dataset.busy; });
      return pending;
    }

    function syncThresholdSliders() {
      [["cv-node-threshold", thresholds.node], ["cv-edge-threshold", thresholds.edge]].forEach(function (pair) {
        var input = controls.querySelector("." + pair[0]);
        if (input) {
          input.value = String(pair[1]);
          controls.querySelector("." + pair[0] + "-label").textContent = String(pair[1]);
        }
      });
    }

    function buildControls() {
      controls.textContent = "";
      if (kind === "attribution") {
        if (!thresholds) { return; }
        if (thresholds.node === undefined) { thresholds.node = typeof g.meta.node_threshold === "number" ? g.meta.node_threshold : 0.8; }
        if (thresholds.edge === undefined) { thresholds.edge = typeof g.meta.edge_threshold === "number" ? g.meta.edge_threshold : 0.98; }
        slider("cv-node-threshold", "node threshold", 0, 1, 0.01, thresholds.node, function (v) {
          setThresholds(v, thresholds.edge);
        }, "change");
        slider("cv-edge-threshold", "edge threshold", 0, 1, 0.01, thresholds.edge, function (v) {
          setThresholds(thresholds.node, v);
        }, "change");
        return;
      }
      if (g.hasAllEdges) {  // neurons are drawn as nodes: the slider stops at a few thousand
        var most = g.level === "neuron" ? Math.min(g.units.length, MAX_NEURONS_DRAWN) : g.units.length;
        slider("cv-topn", "top " + g.unitName + " by |score|", 0, most, 1, topN, setTopN, "input");
      }
    }

    function drawCurve() {
      var curve = (g.meta.metrics || {}).curve;
      curveBox.textContent = "";
      if (plot) { plot.destroy(); plot = null; }
      if (kind === "attribution" || !curve || !curve.percents || typeof uPlot === "undefined") { return; }
      curveBox.appendChild(el("h3", "", "Faithfulness curve"));
      curveBox.appendChild(el("p", "cv-curve-scores",
        "CPR " + fmt(curve.cpr) + " (area under f) · CMD " + fmt(curve.cmd) + " (area under |1 − f|)"));
      var total = g.units.length;
      var marker = {  // the slider's top-n as a share of all scored edges: a dashed line
        hooks: { draw: function (u) {
          if (!total || !topN) { return; }
          var x = u.valToPos(Math.max(curve.percents[0], 100 * topN / total), "x", true);
          var ctx = u.ctx;
          ctx.save(); ctx.strokeStyle = "#1d2330"; ctx.setLineDash([4, 3]); ctx.beginPath();
          ctx.moveTo(x, u.bbox.top); ctx.lineTo(x, u.bbox.top + u.bbox.height); ctx.stroke(); ctx.restore();
        } }
      };
      plot = new uPlot({
        width: 296, height: 170, plugins: [marker], legend: { show: false }, cursor: { show: false },
        scales: { x: { time: false, distr: 3 },
                  y: { range: function (u, lo, hi) { return [Math.min(0, lo), Math.max(1, hi)]; } } },
        axes: [{ label: "% of " + ((g.meta.metrics || {}).curve_level === "node" ? "nodes"
                                   : (g.meta.metrics || {}).curve_level === "neuron" ? "neurons" : "edges"),
                 size: 34, font: "10px system-ui" },
               { label: "faithfulness", size: 44, font: "10px system-ui" }],
        series: [{}, { label: "faithfulness", stroke: BLUE, fill: "rgba(31,95,191,0.12)", width: 1.5,
                       points: { show: true, size: 5 } }]
      }, [curve.percents, curve.faithfulness], curveBox);
    }

    draw();
    buildControls();
    fit();  // the controls took their height from the drawing's box

    return {
      get kind() { return kind; },
      drawnNodes: function () { return cy.nodes(":visible").length; },
      drawnEdges: function () { return drawn.length; },
      setTopN: setTopN,
      select: select,
      highlightPaths: highlightPaths,
      setThresholds: setThresholds,
      cy: cy,  // for tests and the browser console
      destroy: function () { if (plot) { plot.destroy(); } cy.destroy(); root.textContent = ""; }
    };
  }

  global.CircuitdViewer = { mount: mount, fmt: fmt };
})(window);

/* circuitd web UI: a single-page app over the /v1 API, served at /ui/ under a strict CSP.
 *
 * Hash routes: #/jobs (the owner's jobs, live), #/submit (a JobSpec form built from the catalog),
 * #/jobs/{id} (status until terminal, then the circuit viewer and downloads), #/compare/{a}/{b}
 * (the compare endpoint's counts and an overlay of both circuits).
 *
 * The API key lives only in sessionStorage ("circuitd.apiKey") and travels only as an
 * Authorization header, never in a URL. Text from the API is inserted with textContent (or as
 * Text nodes through el()), never as markup. Test hook: window.circuitdViewer, the mounted viewer.
 */
(function () {
  "use strict";

  const KEY_STORAGE = "circuitd.apiKey";
  const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
  const POLL_MS = 1000;
  const ATTRIBUTION = "attribution-graph";
  const DTYPES = ["float32", "float64", "bfloat16", "float16"];  // JobSpec.dtype's enum
  const COMPARE_SIDES = ["shared", "a", "b"];  // colours: app.css's --compare-<side>
  const COMPARE_LABELS = { shared: "in both", a: "only in A", b: "only in B" };
  const DEFAULT_THRESHOLDS = { node: 0.8, edge: 0.98 };  // the attribution-graph method's defaults

  /* ---- small helpers ------------------------------------------------------------------- */

  /** An element; props: text, className, dataset, on<event> handlers, other attributes.
   * Children are nodes or strings (appended as Text nodes, so never parsed as markup). */
  function el(tag, props, children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props || {})) {
      if (value === undefined || value === null || value === false) { continue; }
      if (key === "text") { node.textContent = String(value); }
      else if (key === "className") { node.className = value; }
      else if (key === "dataset") { Object.assign(node.dataset, value); }
      else if (key.startsWith("on")) { node.addEventListener(key.slice(2), value); }
      else { node.setAttribute(key, value === true ? "" : String(value)); }
    }
    for (const child of [].concat(children === undefined ? [] : children)) {
      if (child !== null && child !== undefined) { node.append(child); }
    }
    return node;
  }

  const fmt = CircuitdViewer.fmt;  // numbers written as the viewer writes them

  function taskLabel(spec) {
    const task = spec.task;
    if (typeof task === "string") { return task; }
    if (task && typeof task === "object") {
      return `${task.name || "inline"} (${task.n_prompts ?? (task.clean || []).length} prompts)`;
    }
    return spec.params && spec.params.prompt ? "prompt" : "–";
  }

  function errorText(err) {
    if (err instanceof ApiError) { return `${err.status}: ${err.message}`; }
    return String(err && err.message ? err.message : err);
  }

  /* ---- the API ------------------------------------------------------------------------- */

  class ApiError extends Error {
    constructor(status, body) {
      super(body && typeof body.detail === "string" ? body.detail : `HTTP ${status}`);
      this.status = status;
      this.body = body;
    }
  }

  function apiKey() { return sessionStorage.getItem(KEY_STORAGE) || ""; }

  function showKeyStatus(message) {
    const status = document.getElementById("key-status");
    status.textContent = message;
    status.classList.toggle("bad", message !== "");
  }

  /** fetch with the key as a Bearer header; JSON back (raw: the Response). A 401 says so next to
   * the key field; any other failure throws ApiError holding the problem body. */
  async function api(path, options) {
    const opts = options || {};
    const key = apiKey();
    const headers = { Accept: "application/json" };
    if (key) { headers.Authorization = `Bearer ${key}`; }
    const init = { method: opts.method || "GET", headers, cache: "no-store", credentials: "omit" };
    if (opts.json !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(opts.json);
    }
    const response = await fetch(path, init);
    if (response.status === 401) {
      showKeyStatus(key ? "API key refused" : "API key needed");
    } else if (response.ok) {
      showKeyStatus("");
    }
    if (!response.ok) {
      let body = null;
      try { body = await response.json(); } catch (e) { body = null; }
      throw new ApiError(response.status, body);
    }
    if (opts.raw) { return response; }
    return response.status === 204 ? null : response.json();
  }

  function jobPath(id, rest) { return `/v1/jobs/${encodeURIComponent(id)}${rest || ""}`; }

  let catalogPromise = null;

  /** Models, task generators and methods (with their parameter schemas), asked once a session. */
  function catalog() {
    if (catalogPromise === null) {
      catalogPromise = Promise.all([api("/v1/models"), api("/v1/tasks"), api("/v1/methods")]).then(
        ([models, tasks, methods]) => ({
          models: models.models.map((m) => m.id),
          generators: tasks.generators,
          generatorParams: tasks.generator_params || {},
          methods: methods.methods,
        }));
      catalogPromise.catch(() => { catalogPromise = null; });  // ask again next time
    }
    return catalogPromise;
  }

  /* ---- views and routing --------------------------------------------------------------- */

  // The page on screen: `alive` turns false when the route changes, which stops its polling,
  // and its cleanups (timers, the viewer) run.
  let currentView = null;

  function newView() {
    if (currentView !== null) {
      currentView.alive = false;
      for (const cleanup of currentView.cleanups) { cleanup(); }
    }
    currentView = { alive: true, cleanups: [] };
    return currentView;
  }

  /** Run `step` now and again every POLL_MS while it returns true and the view is on screen;
   * calling the returned function runs it at once (after a click). Errors go to `messageEl`. */
  function poller(view, step, messageEl) {
    let timer = null;
    let running = false;
    let rerun = false;
    view.cleanups.push(() => clearTimeout(timer));
    async function run() {
      clearTimeout(timer);
      timer = null;
      if (running) { rerun = true; return; }
      running = true;
      let again = false;
      try {
        again = await step();
        messageEl.textContent = "";
      } catch (err) {
        if (view.alive) { messageEl.textContent = errorText(err); }
      } finally {
        running = false;
      }
      if (!view.alive) { return; }
      if (rerun) { rerun = false; run(); return; }
      if (again) { timer = setTimeout(run, POLL_MS); }
    }
    return run;
  }

  function mountViewer(view, root, doc, options) {
    const viewer = window.CircuitdViewer.mount(root, doc, options || {});
    window.circuitdViewer = viewer;
    view.cleanups.push(() => {
      if (window.circuitdViewer === viewer) { window.circuitdViewer = null; }
      viewer.destroy();
    });
    return viewer;
  }

  function routeParts() {
    try {
      return location.hash.replace(/^#\/?/, "").split("/").filter((p) => p !== "").map(decodeURIComponent);
    } catch (e) {
      return [];
    }
  }

  function route() {
    const view = newView();
    const root = document.getElementById("app");
    root.replaceChildren();
    const parts = routeParts();
    for (const link of document.querySelectorAll("[data-nav]")) {
      link.classList.toggle("active", link.dataset.nav === (parts[0] === "submit" ? "submit" : "jobs"));
    }
    if (!apiKey()) {
      showKeyStatus("API key needed");
      root.append(el("p", { className: "notice", id: "key-needed" }, [
        "Enter the service's API key above (circuitd up writes it to ",
        el("code", { text: "<data-dir>/api-key" }), "). It is kept in this tab's session storage only.",
      ]));
      return;
    }
    let page;
    if (parts[0] === "submit") {
      page = submitPage(view, root);
    } else if (parts[0] === "jobs" && parts.length === 2) {
      page = jobPage(view, root, parts[1]);
    } else if (parts[0] === "compare" && parts.length === 3) {
      page = comparePage(view, root, parts[1], parts[2]);
    } else {
      page = jobsPage(view, root);
    }
    page.catch((err) => {
      if (view.alive) { root.append(el("p", { className: "error", id: "page-error", text: errorText(err) })); }
    });
  }

  function useKey() {
    const given = document.getElementById("api-key").value.trim();
    if (given === apiKey()) { return; }
    if (given) { sessionStorage.setItem(KEY_STORAGE, given); } else { sessionStorage.removeItem(KEY_STORAGE); }
    catalogPromise = null;
    showKeyStatus("");
    route();
  }

  /* ---- #/jobs -------------------------------------------------------------------------- */

  const JOB_COLUMNS = ["Job", "Status", "Method", "Model", "Task", "Faithfulness", "Progress", ""];

  async function jobsPage(view, root) {
    const message = el("p", { className: "error", id: "jobs-error" });  // the list's refresh
    const actionError = el("p", { className: "error", id: "jobs-action-error" });  // a cancel or delete
    const summary = el("p", { className: "hint", id: "jobs-summary" });
    const body = el("tbody");
    const table = el("table", { className: "jobs", id: "jobs-table" }, [
      el("thead", null, el("tr", null, JOB_COLUMNS.map((h) => el("th", { text: h })))), body,
    ]);
    root.append(el("h1", { text: "Jobs" }), summary, message, actionError, table);
    const rows = new Map();  // job id -> its row, updated in place so a click never hits a stale one

    async function act(job, action) {
      if (action === "delete" && !window.confirm(`Delete job ${job.id} and its graph?`)) { return; }
      actionError.textContent = "";
      try {
        if (action === "cancel") {
          await api(jobPath(job.id, "/cancel"), { method: "POST" });
        } else {
          await api(jobPath(job.id), { method: "DELETE" });
        }
      } catch (err) {
        actionError.textContent = errorText(err);
      }
      refresh();
    }

    function fillRow(row, job) {
      const cells = row.cells;
      const spec = job.spec || {};
      const active = !TERMINAL.has(job.status);
      const status = job.cancel_requested && active ? `${job.status} (cancelling)` : job.status;
      cells[1].replaceChildren(el("span", { className: `status status-${job.status}`, text: status }));
      cells[2].textContent = spec.method || "–";
      cells[3].textContent = spec.model || "–";
      cells[4].textContent = taskLabel(spec);
      cells[5].textContent = fmt(job.metrics ? job.metrics.faithfulness : null);
      if (active) {
        const bar = el("progress", { max: "1", value: String(job.progress) });
        cells[6].replaceChildren(bar, el("span", { className: "stage", text: ` ${job.stage}` }));
      } else {
        cells[6].textContent = "";
      }
      if (row.dataset.status !== job.status) {  // the buttons change only with the status
        row.dataset.status = job.status;
        const action = active ? "cancel" : "delete";
        cells[7].replaceChildren(el("button", {
          type: "button", dataset: { action }, text: active ? "Cancel" : "Delete",
          onclick: () => act(job, action),
        }));
      }
    }

    const refresh = poller(view, async () => {
      const page = await api("/v1/jobs?limit=100");
      if (!view.alive) { return false; }
      summary.textContent = page.total > page.items.length
        ? `${page.total} jobs, the newest ${page.items.length} shown` : `${page.total} jobs`;
      const seen = new Set();
      page.items.forEach((job, index) => {
        seen.add(job.id);
        let row = rows.get(job.id);
        if (row === undefined) {
          row = el("tr", { dataset: { jobId: job.id } }, JOB_COLUMNS.map(() => el("td")));
          const link = el("a", { href: `#/jobs/${encodeURIComponent(job.id)}`, className: "job-id", text: job.id });
          row.cells[0].append(link);
          rows.set(job.id, row);
        }
        fillRow(row, job);
        if (body.children[index] !== row) { body.insertBefore(row, body.children[index] || null); }
      });
      for (const [id, row] of rows) {
        if (!seen.has(id)) { row.remove(); rows.delete(id); }
      }
      return page.items.some((job) => !TERMINAL.has(job.status));
    }, message);
    await refresh();
  }

  /* ---- #/submit ------------------------------------------------------------------------ */

  /** The non-null variant of a (possibly nullable) JSON-schema property: its kind and items. */
  function shapeOf(prop) {
    const variants = prop.anyOf ? prop.anyOf.filter((v) => v.type !== "null") : [prop];
    const v = variants[0] || {};
    if (v.enum) { return { kind: "enum", options: v.enum }; }
    if (v.type === "array") { return { kind: "array", itemType: (v.items && v.items.type) || "string" }; }
    return { kind: ["integer", "number", "boolean", "string"].includes(v.type) ? v.type : "json" };
  }

  function errorSlot(name) {
    return el("span", { className: "field-error", dataset: { errorFor: name } });
  }

  function fieldRow(name, label, control, hint) {
    control.id = control.id || `f-${name.replace(/[^A-Za-z0-9_-]/g, "-")}`;
    control.name = name;
    return el("div", { className: "field" }, [
      el("label", { for: control.id, text: label }), control,
      hint ? el("small", { className: "hint", text: hint }) : null, errorSlot(name),
    ]);
  }

  function selectOf(options, blankLabel) {
    const select = el("select");
    if (blankLabel !== null) { select.append(el("option", { value: "", text: blankLabel })); }
    for (const option of options) { select.append(el("option", { value: String(option), text: String(option) })); }
    return select;
  }

  /** Parse one control by its shape; undefined (left out of the spec) when empty. A number that
   * does not parse is sent as typed, so the API's message names the field. */
  function readControl(control, shape) {
    const raw = control.value.trim();
    if (raw === "") { return undefined; }
    const number = (s) => (Number.isFinite(Number(s)) ? Number(s) : s);
    switch (shape.kind) {
      case "integer": case "number": return number(raw);
      case "boolean": return raw === "true";
      case "array": {
        const items = raw.split(",").map((s) => s.trim()).filter((s) => s !== "");
        return shape.itemType === "number" || shape.itemType === "integer" ? items.map(number) : items;
      }
      case "json": try { return JSON.parse(raw); } catch (e) { return raw; }
      default: return raw;
    }
  }

  /** Inputs for an object schema's properties, named `${prefix}.${name}`; read() -> the object. */
  function schemaFields(schema, prefix) {
    const fields = [];
    const box = el("div", { className: "schema-fields", dataset: { prefix } });
    for (const [name, prop] of Object.entries((schema && schema.properties) || {})) {
      const shape = shapeOf(prop);
      const shown = prop.default === undefined || prop.default === null ? "" : JSON.stringify(prop.default);
      let control;
      if (shape.kind === "enum" || shape.kind === "boolean") {
        const options = shape.kind === "enum" ? shape.options : ["true", "false"];
        control = selectOf(options, shown ? `default (${shown})` : "(not set)");
      } else {
        const numeric = shape.kind === "integer" || shape.kind === "number";
        control = el("input", {
          type: numeric ? "number" : "text", step: shape.kind === "number" ? "any" : numeric ? "1" : null,
          placeholder: shown ? `default ${shown}` : shape.kind === "array" ? "comma-separated" : "",
        });
      }
      const label = prop.title || name;
      box.append(fieldRow(`${prefix}.${name}`, label, control, prop.description));
      fields.push({ name, shape, control });
    }
    return {
      element: box,
      read() {
        const out = {};
        for (const field of fields) {
          const value = readControl(field.control, field.shape);
          if (value !== undefined) { out[field.name] = value; }
        }
        return out;
      },
    };
  }

  const INLINE_FIELDS = ["clean", "corrupted", "correct", "incorrect"];

  async function submitPage(view, root) {
    root.append(el("h1", { text: "Submit a job" }));
    const cat = await catalog();
    if (!view.alive) { return; }
    const form = el("form", { id: "submit-form", className: "spec-form", novalidate: true });
    const formError = el("p", { className: "error", id: "form-error", role: "alert" });

    const modelInput = el("input", { type: "text", list: "model-ids", spellcheck: "false" });
    modelInput.value = cat.models[0] || "";
    const modelList = el("datalist", { id: "model-ids" }, cat.models.map((id) => el("option", { value: id })));

    const taskSelect = selectOf([...cat.generators, "inline"], "(none: attribution-graph's params.prompt)");
    taskSelect.value = cat.generators[0] || "inline";
    const taskParamsBox = el("fieldset", { id: "task-params" });
    let taskParams = null;
    const inlineBox = el("fieldset", { id: "inline-task", hidden: true },
      el("legend", { text: "Inline task, one prompt per line" }));
    const inlineAreas = {};
    for (const name of INLINE_FIELDS) {
      inlineAreas[name] = el("textarea", { rows: "3", spellcheck: "false" });
      inlineBox.append(fieldRow(`task.${name}`, name, inlineAreas[name]));
    }
    function showTask() {
      const generator = cat.generators.includes(taskSelect.value) ? taskSelect.value : null;
      inlineBox.hidden = taskSelect.value !== "inline";
      taskParams = generator ? schemaFields(cat.generatorParams[generator], "task_params") : null;
      const legend = generator ? `${generator}'s parameters` : "task parameters";
      taskParamsBox.replaceChildren(el("legend", { text: legend }));
      taskParamsBox.hidden = taskParams === null;
      if (taskParams) { taskParamsBox.append(taskParams.element); }
    }
    taskSelect.addEventListener("change", showTask);

    const methodNames = cat.methods.map((m) => m.name);
    const methodSelect = selectOf(methodNames, null);
    const paramsBox = el("fieldset", { id: "method-params" });
    let params = null;
    function showMethod() {
      const method = cat.methods.find((m) => m.name === methodSelect.value);
      params = schemaFields(method ? method.params : {}, "params");
      paramsBox.replaceChildren(el("legend", { text: `${methodSelect.value}'s parameters (empty: the default)` }),
        el("p", { className: "hint", text: method ? method.summary : "" }), params.element);
    }
    methodSelect.addEventListener("change", showMethod);

    const numbers = {};
    for (const name of ["n_prompts", "seed", "batch_size"]) {
      numbers[name] = el("input", { type: "number", step: "1", placeholder: "default" });
    }
    const dtypeSelect = selectOf(DTYPES, "default (float32)");
    const deviceInput = el("input", { type: "text", placeholder: "default (cpu)", spellcheck: "false" });
    const submitButton = el("button", { type: "submit", id: "submit-job", text: "Submit" });

    form.append(
      fieldRow("model", "Model", modelInput, "a catalog id or any id form the API takes"), modelList,
      fieldRow("task", "Task", taskSelect), inlineBox, taskParamsBox,
      fieldRow("n_prompts", "Prompts", numbers.n_prompts),
      fieldRow("seed", "Seed", numbers.seed),
      fieldRow("method", "Method", methodSelect), paramsBox,
      fieldRow("batch_size", "Batch size", numbers.batch_size),
      fieldRow("dtype", "dtype", dtypeSelect),
      fieldRow("device", "Device", deviceInput),
      formError, submitButton,
    );
    root.append(form);
    showTask();
    showMethod();

    function readSpec() {
      const spec = { model: modelInput.value.trim(), method: methodSelect.value, params: params.read() };
      if (taskSelect.value === "inline") {
        spec.task = {};
        for (const name of INLINE_FIELDS) {
          spec.task[name] = inlineAreas[name].value.split("\n").filter((line) => line.trim() !== "");
        }
      } else if (taskSelect.value !== "") {
        spec.task = taskSelect.value;
        const given = taskParams ? taskParams.read() : {};
        if (Object.keys(given).length) { spec.task_params = given; }
      }
      for (const [name, input] of Object.entries(numbers)) {
        const value = readControl(input, { kind: "integer" });
        if (value !== undefined) { spec[name] = value; }
      }
      if (dtypeSelect.value) { spec.dtype = dtypeSelect.value; }
      if (deviceInput.value.trim()) { spec.device = deviceInput.value.trim(); }
      return spec;
    }

    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      showErrors(form, formError, []);
      submitButton.disabled = true;
      try {
        const job = await api("/v1/jobs", { method: "POST", json: readSpec() });
        if (view.alive) { location.hash = `#/jobs/${encodeURIComponent(job.id)}`; }
      } catch (err) {
        const listed = err instanceof ApiError && err.status === 422 && err.body && Array.isArray(err.body.errors);
        if (listed) { showErrors(form, formError, err.body.errors); } else { formError.textContent = errorText(err); }
      } finally {
        submitButton.disabled = false;
      }
    });
  }

  /** The visible error slot for a dotted field, or for its nearest parent (task.clean[0] ->
   * task.clean -> task); null when the form has none. */
  function slotFor(form, field) {
    let name = field;
    while (name) {
      const slot = form.querySelector(`[data-error-for="${CSS.escape(name)}"]`);
      if (slot && !slot.closest("[hidden]")) { return { slot, rest: field.slice(name.length).replace(/^\./, "") }; }
      const parent = name.replace(/(\[[^\]]*\]|\.[^.[\]]*)$/, "");
      name = parent === name ? "" : parent;
    }
    return null;
  }

  /** Each error's message next to the field it names; the rest in the form-level message. */
  function showErrors(form, formError, errors) {
    for (const slot of form.querySelectorAll("[data-error-for]")) { slot.textContent = ""; }
    const unplaced = [];
    for (const error of errors) {
      const found = slotFor(form, String(error.field || ""));
      if (found === null) { unplaced.push(error.field ? `${error.field}: ${error.message}` : error.message); continue; }
      const text = found.rest ? `${found.rest}: ${error.message}` : error.message;
      found.slot.textContent = found.slot.textContent ? `${found.slot.textContent}; ${text}` : text;
    }
    formError.textContent = unplaced.join("; ");
  }

  /* ---- #/jobs/{id} --------------------------------------------------------------------- */

  async function jobPage(view, root, jobId) {
    const message = el("p", { className: "error", id: "job-poll-error" });
    const cancelError = el("p", { className: "error", id: "job-cancel-error" });
    const statusEl = el("span", { id: "job-status", className: "status" });
    const progress = el("progress", { id: "job-progress", max: "1" });
    const stage = el("span", { id: "job-stage", className: "stage" });
    const cancel = el("button", {
      type: "button", id: "job-cancel", dataset: { action: "cancel" }, text: "Cancel", hidden: true,
    });
    const facts = el("dl", { id: "job-facts", className: "facts" });
    const metrics = el("table", { id: "job-metrics", className: "metrics" });
    const failure = el("pre", { id: "job-error", className: "error", hidden: true });
    const results = el("section", { id: "job-results" });
    root.append(
      el("h1", null, ["Job ", el("code", { text: jobId })]),
      el("p", { className: "job-line" }, [statusEl, " ", progress, " ", stage, " ", cancel]),
      message, cancelError, failure, el("div", { className: "job-summary" }, [facts, metrics]), results,
    );
    cancel.addEventListener("click", async () => {
      cancelError.textContent = "";
      try {
        await api(jobPath(jobId, "/cancel"), { method: "POST" });
      } catch (err) {
        cancelError.textContent = errorText(err);
      }
      refresh();
    });

    let shown = false;
    const refresh = poller(view, async () => {
      const job = await api(jobPath(jobId));
      if (!view.alive) { return false; }
      const active = !TERMINAL.has(job.status);
      statusEl.textContent = job.status;
      statusEl.className = `status status-${job.status}`;
      progress.value = job.progress;
      progress.hidden = !active;
      stage.textContent = active ? job.stage : "";
      cancel.hidden = !active;
      const spec = job.spec || {};
      facts.replaceChildren(...[
        ["method", spec.method], ["model", spec.model], ["task", taskLabel(spec)],
        ["prompts", spec.n_prompts], ["created", job.created_at], ["finished", job.finished_at],
      ].flatMap(([k, v]) => [el("dt", { text: k }), el("dd", { text: fmt(v) })]));
      const scalars = Object.entries(job.metrics || {}).filter(([, v]) => v === null || typeof v !== "object");
      metrics.replaceChildren(...scalars.map(([k, v]) => el("tr", { dataset: { metric: k } }, [
        el("th", { text: k }), el("td", { className: "num", text: fmt(v) })])));
      failure.hidden = job.status !== "failed";
      failure.textContent = job.status === "failed" ? `${job.error_code || "error"}: ${job.error || ""}` : "";
      if (job.status === "succeeded" && !shown) {
        shown = true;
        await showResults(view, results, job);
      }
      return active;
    }, message);
    await refresh();
  }

  /** Downloads: the key is a header, so a link cannot carry it: fetch, then a Blob's object URL. */
  async function download(path, filename, messageEl) {
    try {
      const response = await api(path, { raw: true });
      const url = URL.createObjectURL(await response.blob());
      const link = el("a", { href: url, download: filename, hidden: true });
      document.body.append(link);
      link.click();
      link.remove();
      setTimeout(() => URL.revokeObjectURL(url), 10000);
    } catch (err) {
      messageEl.textContent = errorText(err);
    }
  }

  async function showResults(view, results, job) {
    const attribution = (job.spec || {}).method === ATTRIBUTION;
    const graph = jobPath(job.id, "/graph");
    const message = el("p", { className: "error", id: "results-error" });
    const files = [
      ["node-link JSON", graph, `${job.id}.json`],
      ["GraphML", `${graph}?format=graphml`, `${job.id}.graphml`],
      attribution ? ["Neuronpedia", `${graph}?format=neuronpedia`, `${job.id}.neuronpedia.json`]
        : ["EAP-IG", `${graph}?format=eap-ig`, `${job.id}.eap-ig.json`],
    ];
    const toolbar = el("div", { className: "toolbar", id: "downloads" }, [el("span", { text: "Download: " }),
      ...files.map(([label, path, filename]) => el("button", {
        type: "button", dataset: { download: label }, text: label, onclick: () => download(path, filename, message),
      }))]);
    const viewerRoot = el("div", { id: "viewer", className: "viewer-root" });
    results.append(toolbar, message, viewerRoot);
    if (!attribution) {  // a failed listing costs the chooser, not the drawing
      const failed = (err) => el("span", { className: "error", text: errorText(err) });
      toolbar.append(await compareChooser(job).catch(failed));
    }
    if (!view.alive) { return; }
    if (attribution) {
      const doc = await api(graph);
      if (!view.alive) { return; }
      const meta = doc.graph || {};
      mountViewer(view, viewerRoot, doc, {
        thresholds: {
          node: meta.node_threshold ?? DEFAULT_THRESHOLDS.node,
          edge: meta.edge_threshold ?? DEFAULT_THRESHOLDS.edge,
          fetch: (node, edge) => api(`${graph}?${new URLSearchParams({ node_threshold: node, edge_threshold: edge })}`),
        },
      });
    } else {
      const doc = await api(`${graph}?all_edges=true`);
      if (view.alive) { mountViewer(view, viewerRoot, doc); }
    }
  }

  /** A select of the owner's other succeeded edge-circuit jobs, opening #/compare/{this}/{other}. */
  async function compareChooser(job) {
    const page = await api("/v1/jobs?status=succeeded&limit=100");
    const others = page.items.filter((j) => j.id !== job.id && (j.spec || {}).method !== ATTRIBUTION);
    const select = el("select", { id: "compare-with", disabled: others.length === 0 },
      el("option", { value: "", text: others.length ? "compare with…" : "no other succeeded edge circuit" }));
    for (const other of others) {
      const spec = other.spec || {};
      const text = `${other.id.slice(0, 8)} ${spec.method} ${spec.model} ${taskLabel(spec)}`;
      select.append(el("option", { value: other.id, text }));
    }
    select.addEventListener("change", () => {
      if (select.value) {
        location.hash = `#/compare/${encodeURIComponent(job.id)}/${encodeURIComponent(select.value)}`;
      }
    });
    return select;
  }

  /* ---- #/compare/{a}/{b} --------------------------------------------------------------- */

  function linkName(link) { return link.name || `${link.source}->${link.target}`; }

  /** One node-link doc holding both circuits: every node, every edge once, each edge marked
   * compare = "shared" | "a" | "b" by its name (the compare endpoint's key). */
  function overlay(docA, docB, idA, idB) {
    const inA = new Set(docA.links.map(linkName));
    const inB = new Set(docB.links.map(linkName));
    const nodes = new Map();
    for (const node of [...docA.nodes, ...docB.nodes]) { if (!nodes.has(node.id)) { nodes.set(node.id, node); } }
    const seen = new Set();
    const links = [];
    for (const link of [...docA.links, ...docB.links]) {
      const name = linkName(link);
      const key = JSON.stringify([name, link.source, link.target]);  // grouped k/v names repeat per head
      if (seen.has(key)) { continue; }
      seen.add(key);
      const side = inA.has(name) && inB.has(name) ? "shared" : inA.has(name) ? "a" : "b";
      links.push({ ...link, in_circuit: true, compare: side });
    }
    const meta = { ...docA.graph, compare: { a: idA, b: idB } };
    delete meta.metrics;  // A's numbers would mislabel the union
    return { ...docA, graph: meta, nodes: [...nodes.values()], links };
  }

  async function comparePage(view, root, idA, idB) {
    root.append(el("h1", null, ["Compare ",
      el("a", { href: `#/jobs/${encodeURIComponent(idA)}`, text: idA.slice(0, 8) }), " (A) with ",
      el("a", { href: `#/jobs/${encodeURIComponent(idB)}`, text: idB.slice(0, 8) }), " (B)"]));
    const [result, docA, docB] = await Promise.all([
      api(jobPath(idA, `/graph/compare/${encodeURIComponent(idB)}`)),
      api(jobPath(idA, "/graph")), api(jobPath(idB, "/graph")),
    ]);
    if (!view.alive) { return; }
    const columns = [["shared", "shared"], ["only A", "only_a"], ["only B", "only_b"], ["A", "n_a"], ["B", "n_b"]];
    const table = el("table", { id: "compare-counts", className: "metrics" }, [
      el("tr", null, [el("th"), ...columns.map(([label]) => el("th", { text: label })), el("th", { text: "Jaccard" })]),
    ]);
    for (const part of ["edges", "nodes"]) {
      const counts = result[part];
      table.append(el("tr", { dataset: { part } }, [
        el("th", { text: part }),
        ...columns.map(([, key]) => el("td", {
          className: "num", dataset: { count: key },
          text: String(Array.isArray(counts[key]) ? counts[key].length : counts[key]),
        })),
        el("td", { className: "num", dataset: { count: "jaccard" }, text: counts.jaccard.toFixed(3) }),
      ]));
    }
    const doc = overlay(docA, docB, idA, idB);
    const legend = el("p", { className: "legend", id: "compare-legend" }, COMPARE_SIDES.map((side) => el("span", {
      className: `swatch swatch-${side}`, dataset: { side },
      text: `${COMPARE_LABELS[side]} (${doc.links.filter((link) => link.compare === side).length})`,
    })));
    const style = getComputedStyle(document.documentElement);
    const colors = Object.fromEntries(
      COMPARE_SIDES.map((side) => [side, style.getPropertyValue(`--compare-${side}`).trim()]));
    const viewerRoot = el("div", { id: "viewer", className: "viewer-root" });
    root.append(table, legend, viewerRoot);
    mountViewer(view, viewerRoot, doc, { colorOf: (link) => colors[link.compare] });
  }

  /* ---- start --------------------------------------------------------------------------- */

  const keyInput = document.getElementById("api-key");
  keyInput.value = apiKey();
  keyInput.addEventListener("change", useKey);
  document.getElementById("key-form").addEventListener("submit", (event) => { event.preventDefault(); useKey(); });
  window.addEventListener("hashchange", route);
  if (!location.hash) { history.replaceState(null, "", "#/jobs"); }
  route();
})();

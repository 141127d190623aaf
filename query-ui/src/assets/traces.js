// @ts-check
// Traces: the search form with results as duration bars, and the trace view
// as a waterfall (bars coloured by latency, collapsible subtrees, the
// critical path marked, span details, links to the span's logs).
// State: `#/traces?service=&operation=&tags=&min=&max=&errors=1&from=&to=`
// and `#/trace/<id>?span=<span id>&collapsed=<id,id>`.

import { el, fetchJson, go, hashFor, remember, timeRange, msToNanos, rangePicker, formatTime, formatDuration, latencyClass, fieldsTable, errorBox, serviceChip, serviceSlot } from "./util.js";

/** @typedef {import("./util.js").Span} Span */
/** @typedef {import("./util.js").JaegerEnvelope<string[]>} NameList `/api/services`, `/api/services/{s}/operations` */

/**
 * One trace of `GET /api/trace-search`: what the store knows of the whole trace.
 * @typedef {object} TraceSummary
 * @property {string} trace_id
 * @property {string} root_service of the root span, or of the earliest span while the root is missing
 * @property {string} root_operation
 * @property {number} start_time earliest span start, nanoseconds
 * @property {number} duration latest end minus earliest start, nanoseconds
 * @property {number} span_count
 * @property {string[]} services
 * @property {number} error_count
 * @property {number} orphan_count spans whose parent is not (yet) in the trace
 * @property {boolean} has_root
 * @property {string[]} critical_path span ids, root first
 * @property {string[]} request_ids
 * @property {string[]} linked_traces
 * @property {number} updated_at nanoseconds
 * @property {string[]} [operations] `service/operation` pairs
 * @property {string[]} [tags] `key=value` pairs
 * @property {boolean} complete no span for the idle timeout, a root and no orphans
 */

/** `GET /api/trace-search`. @typedef {{traces: TraceSummary[]}} TraceSearch */

/**
 * `#/traces`: the search form and the matching traces.
 * @param {HTMLElement} root
 * @param {import("./util.js").View} view
 */
export async function renderSearch(root, view) {
  const params = view.params;
  const range = timeRange(params);
  /** @type {(name: string, attributes?: import("./util.js").Attributes) => HTMLInputElement} */
  const field = (name, attributes = {}) => /** @type {HTMLInputElement} */ (el("input", { name, value: params.get(name) || "", ...attributes }));
  const service = /** @type {HTMLSelectElement} */ (el("select", { name: "service", id: "trace-service" }, el("option", { value: "" }, "all services")));
  const operation = /** @type {HTMLSelectElement} */ (el("select", { name: "operation", id: "trace-operation" }, el("option", { value: "" }, "all operations")));
  const tags = field("tags", { id: "trace-tags", placeholder: "http.status_code=500 user_id=42" });
  const min = field("min", { id: "trace-min", placeholder: "e.g. 100ms", size: 8 });
  const max = field("max", { id: "trace-max", placeholder: "e.g. 2s", size: 8 });
  const errors = /** @type {HTMLInputElement} */ (el("input", { type: "checkbox", name: "errors", id: "trace-errors", checked: params.get("errors") === "1" }));
  let from = params.get("from") || "now-1h";
  let to = params.get("to") || "now";
  const submit = () => {
    const next = new URLSearchParams({ service: service.value, operation: operation.value, tags: tags.value, min: min.value, max: max.value, errors: errors.checked ? "1" : "", from, to });
    go("traces", "", next);
  };
  const picker = rangePicker(params, (f, t) => {
    from = f;
    to = t;
    submit();
  });
  const form = el(
    "form",
    { id: "trace-search-form", class: "trace-form", autocomplete: "off" },
    el("label", {}, "Service ", service),
    el("label", {}, "Operation ", operation),
    el("label", {}, "Tags ", tags),
    el("label", {}, "Min ", min),
    el("label", {}, "Max ", max),
    el("label", {}, errors, " errors only"),
    picker,
    el("button", { type: "submit", id: "trace-search-button" }, "Find traces"),
  );
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    submit();
  });
  const status = el("div", { id: "trace-status", role: "status" }, "searching…");
  const results = el("div", { id: "trace-results" });
  root.append(el("section", { id: "traces-view" }, form, status, results));

  /** @type {(selected: string) => Promise<void>} */
  const loadOperations = async (selected) => {
    operation.replaceChildren(el("option", { value: "" }, "all operations"));
    if (!service.value) return;
    /** @type {{data: string[]}} */
    const ops = await fetchJson(`/api/services/${encodeURIComponent(service.value)}/operations`).catch(() => ({ data: /** @type {string[]} */ ([]) }));
    for (const name of ops.data || []) operation.append(el("option", { value: name, selected: name === selected }, name));
  };
  service.addEventListener("change", () => loadOperations(""));
  fetchJson("/api/services")
    .then(async (/** @type {NameList} */ services) => {
      for (const name of services.data || []) service.append(el("option", { value: name, selected: name === params.get("service") }, name));
      await loadOperations(params.get("operation") || "");
    })
    .catch(() => {});

  const api = new URLSearchParams({ start: msToNanos(range.start), end: msToNanos(range.end), limit: "50" });
  for (const [key, name] of [["service", "service"], ["operation", "operation"], ["tags", "tags"], ["min", "min_duration"], ["max", "max_duration"]]) {
    if (params.get(key)) api.set(name, params.get(key));
  }
  if (params.get("errors") === "1") api.set("errors", "true");
  try {
    /** @type {TraceSearch} */
    const result = await fetchJson(`/api/trace-search?${api}`);
    const traces = result.traces || [];
    status.textContent = `${traces.length} traces`;
    const longest = Math.max(1, ...traces.map((t) => t.duration));
    for (const trace of traces) {
      const bar = el("div", { class: `duration-bar ${latencyClass(trace.duration)}${trace.error_count ? " error" : ""}` });
      bar.style.width = `${Math.max(0.5, (trace.duration / longest) * 100)}%`;
      const services = el("span", { class: "services" });
      for (const name of trace.services || []) services.append(serviceChip(name));
      const row = el(
        "a",
        { class: "trace-result", href: hashFor("trace", trace.trace_id), "data-trace-id": trace.trace_id },
        el("div", { class: "trace-result-head" }, el("strong", {}, `${trace.root_service}: ${trace.root_operation}`), el("span", { class: "muted" }, ` ${trace.span_count} spans · ${formatTime(trace.start_time)}`), trace.error_count ? el("span", { class: "badge error" }, `${trace.error_count} errors`) : null, el("span", { class: "trace-duration" }, formatDuration(trace.duration))),
        el("div", { class: "duration-track" }, bar),
        services,
      );
      results.append(row);
    }
    root.dataset.loaded = "1";
  } catch (error) {
    status.textContent = "";
    results.replaceChildren(errorBox(error));
    root.dataset.loaded = "error";
  }
}

/**
 * Spans in depth-first order with their depth and child count.
 * @param {Span[]} spans
 * @returns {Array<{span: Span, depth: number, childCount: number}>}
 */
export function spanTree(spans) {
  const byId = new Map(spans.map((span) => [span.span_id, span]));
  /** @type {Map<string, Span[]>} */
  const children = new Map();
  /** @type {Span[]} */
  const roots = [];
  for (const span of spans) {
    const parent = span.parent_span_id && byId.get(span.parent_span_id);
    if (parent && parent !== span) {
      if (!children.has(parent.span_id)) children.set(parent.span_id, []);
      children.get(parent.span_id).push(span);
    } else {
      roots.push(span);
    }
  }
  /** @type {(a: Span, b: Span) => number} */
  const byStart = (a, b) => a.start_time - b.start_time;
  roots.sort(byStart);
  /** @type {Array<{span: Span, depth: number, childCount: number}>} */
  const ordered = [];
  const seen = new Set();
  /** @type {Array<[Span, number]>} */
  const stack = roots.slice().reverse().map((span) => [span, 0]);
  while (stack.length) {
    const [span, depth] = stack.pop();
    if (seen.has(span.span_id)) continue;
    seen.add(span.span_id);
    const kids = (children.get(span.span_id) || []).sort(byStart);
    ordered.push({ span, depth, childCount: kids.length });
    for (let i = kids.length - 1; i >= 0; i--) stack.push([kids[i], depth + 1]);
  }
  return ordered;
}

/**
 * Draws the waterfall of `spans` (the store's span shape with
 * `on_critical_path`) into `container`; rows under a collapsed span are
 * left out. Exported for the perf hook.
 * @param {HTMLElement} container
 * @param {Span[]} spans
 * @param {object} [options]
 * @param {Set<string>} [options.collapsed] span ids whose subtrees are hidden
 * @param {string} [options.selected] the span id shown selected
 * @param {(spanId: string) => void} [options.onToggle] a collapse button was clicked
 * @param {(spanId: string) => void} [options.onSelect] a row was clicked
 */
export function renderWaterfall(container, spans, { collapsed = new Set(), selected, onToggle, onSelect } = {}) {
  const start = Math.min(...spans.map((s) => s.start_time));
  const end = Math.max(...spans.map((s) => s.end_time));
  const total = Math.max(end - start, 1);
  const fragment = document.createDocumentFragment();
  const ticks = el("div", { class: "span-ruler" }, el("div", { class: "span-name" }, "Service · operation"));
  const tickTrack = el("div", { class: "span-track ruler" });
  for (let i = 0; i <= 4; i++) {
    const tick = el("span", { class: "tick" }, formatDuration((total * i) / 4));
    tick.style.left = `${i * 25}%`;
    tickTrack.append(tick);
  }
  ticks.append(tickTrack, el("div", { class: "span-duration" }, "Duration"));
  fragment.append(ticks);
  let hiddenBelow = null;
  for (const { span, depth, childCount } of spanTree(spans)) {
    if (hiddenBelow !== null) {
      if (depth > hiddenBelow) continue;
      hiddenBelow = null;
    }
    const isCollapsed = collapsed.has(span.span_id);
    if (isCollapsed) hiddenBelow = depth;
    const duration = span.end_time - span.start_time;
    const error = span.status === "error" || span.error === true;
    const classes = ["span-row"];
    if (span.on_critical_path) classes.push("critical");
    if (error) classes.push("has-error");
    if (span.span_id === selected) classes.push("selected");
    const row = el("div", { class: classes.join(" "), "data-span-id": span.span_id });
    const toggle = el("button", { type: "button", class: "toggle", title: isCollapsed ? "expand" : "collapse", disabled: childCount === 0 }, childCount === 0 ? "·" : isCollapsed ? "▸" : "▾");
    if (onToggle && childCount) toggle.addEventListener("click", (event) => {
      event.stopPropagation();
      onToggle(span.span_id);
    });
    const name = el("div", { class: "span-name" }, toggle, el("span", { class: `span-service svc-text-${serviceSlot(span.service)}` }, span.service), ` ${span.name}`);
    name.style.paddingLeft = `${depth * 14}px`;
    const bar = el("div", { class: `span-bar ${latencyClass(duration)}${error ? " error" : ""}${span.on_critical_path ? " critical" : ""}`, title: `${span.service} ${span.name} ${formatDuration(duration)}` });
    bar.style.left = `${((span.start_time - start) / total) * 100}%`;
    bar.style.width = `${(duration / total) * 100}%`;
    const track = el("div", { class: "span-track" }, bar);
    row.append(name, track, el("div", { class: "span-duration" }, formatDuration(duration), childCount && isCollapsed ? el("span", { class: "muted" }, ` +${childCount}`) : null));
    if (onSelect) row.addEventListener("click", () => onSelect(span.span_id));
    fragment.append(row);
  }
  container.replaceChildren(fragment);
}

/**
 * The selected span's timing, attributes, resource, events and links.
 * @param {Span} span
 * @param {number} traceStart nanoseconds
 * @returns {HTMLElement}
 */
function spanDetails(span, traceStart) {
  const box = el("div", { id: "span-details", class: "span-details" });
  const duration = span.end_time - span.start_time;
  const logsQuery = new URLSearchParams({ q: `trace_id:${span.trace_id} AND span_id:${span.span_id}`, from: String(Math.floor(span.start_time / 1e6) - 60e3), to: String(Math.ceil(span.end_time / 1e6) + 60e3) });
  box.append(
    el("h3", {}, serviceChip(span.service), ` ${span.name}`),
    el("p", { class: "muted" }, `${formatDuration(duration)} · starts at +${formatDuration(span.start_time - traceStart)} · ${span.kind || ""} · status ${span.status}${span.status_message ? `: ${span.status_message}` : ""}${span.on_critical_path ? " · on the critical path" : ""}`),
    el("p", {}, el("a", { href: hashFor("logs", "", logsQuery), class: "span-logs-link" }, "Logs of this span"), " · ", el("a", { href: hashFor("request", span.request_id || span.trace_id) }, "Request view")),
    el("h4", {}, "Attributes"),
    fieldsTable(span.attributes || {}),
    el("h4", {}, "Resource"),
    fieldsTable(span.resource || {}),
  );
  if ((span.events || []).length) {
    box.append(el("h4", {}, "Events"));
    const list = el("ul", { class: "events" });
    for (const event of span.events) list.append(el("li", {}, el("strong", {}, `+${formatDuration(event.time - span.start_time)} ${event.name}`), fieldsTable(event.attributes || {})));
    box.append(list);
  }
  if ((span.links || []).length) {
    box.append(el("h4", {}, "Links"));
    const list = el("ul", { class: "links" });
    for (const linked of span.links) list.append(el("li", {}, el("a", { href: hashFor("trace", linked.trace_id, new URLSearchParams({ span: linked.span_id })) }, `${linked.trace_id} / ${linked.span_id}`)));
    box.append(list);
  }
  return box;
}

/**
 * `#/trace/<id>`: the waterfall of one trace.
 * @param {HTMLElement} root
 * @param {import("./util.js").View} view
 * @param {import("./util.js").ViewContext} ctx
 */
export async function renderTrace(root, view, ctx) {
  const traceId = view.id;
  const params = view.params;
  const collapsed = new Set((params.get("collapsed") || "").split(",").filter(Boolean));
  const summary = el("div", { id: "trace-summary" }, "loading…");
  const waterfall = el("div", { id: "waterfall" });
  const details = el("div", { id: "span-details-slot" });
  root.append(el("section", { id: "trace-view" }, el("p", {}, el("a", { href: hashFor("traces") }, "← trace search")), el("h2", { id: "trace-title" }, `Trace ${traceId}`), summary, el("div", { class: "trace-body" }, waterfall, details)));
  /** @type {import("./request.js").RequestStory} */
  let story;
  try {
    story = await fetchJson(`/api/requests/${encodeURIComponent(traceId)}`);
  } catch (error) {
    summary.replaceChildren(errorBox(error));
    root.dataset.loaded = "error";
    return;
  }
  const id = traceId.toLowerCase();
  // A span's timeline entry carries every field of the span.
  const spans = /** @type {Span[]} */ (/** @type {unknown} */ (story.timeline.filter((entry) => entry.type === "span" && entry.trace_id === id)));
  if (!spans.length) {
    summary.replaceChildren(errorBox(`no spans stored for trace ${traceId}`));
    root.dataset.loaded = "error";
    return;
  }
  const start = Math.min(...spans.map((s) => s.start_time));
  const end = Math.max(...spans.map((s) => s.end_time));
  const services = [...new Set(spans.map((s) => s.service))];
  const errors = spans.filter((s) => s.status === "error").length;
  const chips = el("span", {});
  for (const name of services) chips.append(serviceChip(name));
  summary.replaceChildren(
    `${spans.length} spans · ${services.length} services `,
    chips,
    ` · ${formatDuration(end - start)} · ${formatTime(start)}`,
    errors ? el("span", { class: "badge error" }, `${errors} errors`) : "",
    " · ",
    el("a", { href: hashFor("logs", "", new URLSearchParams({ q: `trace_id:${id}`, from: String(Math.floor(start / 1e6) - 60e3), to: String(Math.ceil(end / 1e6) + 60e3) })) }, "Logs of this trace"),
    " · ",
    el("a", { href: hashFor("request", id) }, "Request view"),
    " · ",
    el("a", { href: hashFor("compare", "", new URLSearchParams({ a: id, b: "typical" })), id: "compare-typical-link" }, "Compare with typical"),
    el("span", { class: "legend" }, el("span", { class: "key fast" }, "< 100 ms"), el("span", { class: "key medium" }, "100–500 ms"), el("span", { class: "key slow" }, "> 500 ms"), el("span", { class: "key critical" }, "critical path")),
  );
  let selected = params.get("span") || "";
  const state = () => {
    const next = new URLSearchParams();
    if (selected) next.set("span", selected);
    if (collapsed.size) next.set("collapsed", [...collapsed].join(","));
    return next;
  };
  const draw = () => {
    const t0 = performance.now();
    renderWaterfall(waterfall, spans, {
      collapsed,
      selected,
      onToggle: (spanId) => {
        if (collapsed.has(spanId)) collapsed.delete(spanId);
        else collapsed.add(spanId);
        remember("trace", traceId, state());
        draw();
      },
      onSelect: (spanId) => {
        selected = spanId;
        remember("trace", traceId, state());
        draw();
      },
    });
    ctx.perf.lastWaterfall = { spans: spans.length, renderMs: performance.now() - t0 };
    const span = spans.find((s) => s.span_id === selected);
    details.replaceChildren(span ? spanDetails(span, start) : el("p", { class: "muted" }, "Click a span for its attributes, events and links."));
  };
  draw();
  root.dataset.loaded = "1";
}

// @ts-check
// Services: a service map from the service graph metrics
// (`traces_service_graph_request_total`, `..._failed_total`) and the RED span
// metrics, through the Prometheus API; rate, error ratio and latency per
// service and per edge, with sparklines. When the Prometheus API is missing
// (404) or has no service graph yet, the map is built from recent traces.
// State: `#/services?from=&to=`.

import { el, svg, fetchJson, go, hashFor, timeRange, msToNanos, rangePicker, errorBox, serviceChip, serviceColor } from "./util.js";
import { sparkline, formatValue } from "./chart.js";

/** @typedef {import("./util.js").TimeRange} TimeRange */
/** @typedef {import("./util.js").PromSample} PromSample */

/**
 * A service of the map, with its request rate (per second), share of
 * errors and 95th percentile latency (seconds, `null` when unknown).
 * @typedef {{name: string, rate: number, errorRatio: number, p95: number | null}} ServiceStats
 */

/** Calls from `client` to `server`. @typedef {{client: string, server: string, rate: number, errorRatio: number, p95: number | null}} EdgeStats */

/** @typedef {{source: "metrics" | "traces", services: ServiceStats[], edges: EdgeStats[]}} Graph */

/** What recent traces tell of a service or an edge before it is summarized. @typedef {{calls: number, errors: number, durations: number[]}} Counts */

const SERVER = 'span_kind=~"SPAN_KIND_SERVER|SPAN_KIND_CONSUMER"';

/**
 * An instant query whose result is a vector.
 * @param {string} query
 * @param {number} time epoch milliseconds
 * @returns {Promise<PromSample[]>}
 */
async function instant(query, time) {
  /** @type {import("./util.js").PromResponse<{resultType: "vector", result: PromSample[]}>} */
  const result = await fetchJson(`/api/v1/query?${new URLSearchParams({ query, time: String(time / 1000) })}`);
  return result.data.result;
}

/**
 * The graph from the metrics: `null` when the Prometheus API is not there or has no service graph.
 * @param {TimeRange} range
 * @returns {Promise<Graph | null>}
 */
async function fromMetrics(range) {
  const window = "5m";
  let edges;
  try {
    edges = await instant(`sum by (client, server) (rate(traces_service_graph_request_total[${window}]))`, range.end);
  } catch (error) {
    if (error.status === 404) return null;
    throw error;
  }
  const [failed, calls, errors, p95] = await Promise.all([
    instant(`sum by (client, server) (rate(traces_service_graph_request_failed_total[${window}]))`, range.end),
    instant(`sum by (service) (rate(traces_spanmetrics_calls_total{${SERVER}}[${window}]))`, range.end),
    instant(`sum by (service) (rate(traces_spanmetrics_calls_total{${SERVER},status_code="STATUS_CODE_ERROR"}[${window}]))`, range.end),
    instant(`histogram_quantile(0.95, sum by (service, le) (rate(traces_spanmetrics_duration_seconds_bucket{${SERVER}}[${window}])))`, range.end),
  ]);
  if (!edges.length && !calls.length) return null;
  /** @type {(sample: PromSample) => number} */
  const value = (sample) => Number(sample.value[1]);
  /** @type {Map<string, ServiceStats>} */
  const services = new Map();
  /** @type {(name: string) => ServiceStats} */
  const service = (name) => {
    if (!services.has(name)) services.set(name, { name, rate: 0, errorRatio: 0, p95: null });
    return services.get(name);
  };
  for (const s of calls) service(s.metric.service).rate = value(s);
  for (const s of errors) {
    const entry = service(s.metric.service);
    entry.errorRatio = entry.rate > 0 ? value(s) / entry.rate : 0;
  }
  for (const s of p95) if (Number.isFinite(value(s))) service(s.metric.service).p95 = value(s);
  const failedBy = new Map(failed.map((s) => [`${s.metric.client}>${s.metric.server}`, value(s)]));
  /** @type {EdgeStats[]} */
  const edgeList = edges.map((s) => {
    const rate = value(s);
    const fail = failedBy.get(`${s.metric.client}>${s.metric.server}`) || 0;
    service(s.metric.client);
    const server = service(s.metric.server);
    return { client: s.metric.client, server: s.metric.server, rate, errorRatio: rate > 0 ? fail / rate : 0, p95: server.p95 };
  });
  return { source: "metrics", services: [...services.values()], edges: edgeList };
}

/**
 * The graph from recent traces' parent/child spans of different services.
 * @param {TimeRange} range
 * @returns {Promise<Graph>}
 */
async function fromTraces(range) {
  /** @type {import("./traces.js").TraceSearch} */
  const search = await fetchJson(`/api/trace-search?${new URLSearchParams({ start: msToNanos(range.start), end: msToNanos(range.end), limit: "20" })}`);
  /** @type {string[]} */
  const names = await fetchJson("/api/services").then((/** @type {import("./util.js").JaegerEnvelope<string[]>} */ r) => r.data || []).catch(() => /** @type {string[]} */ ([]));
  const seconds = Math.max((range.end - range.start) / 1000, 1);
  /** @type {Map<string, Counts & {name: string}>} */
  const services = new Map(names.map((name) => [name, { name, calls: 0, errors: 0, durations: /** @type {number[]} */ ([]) }]));
  /** @type {Map<string, Counts & {client: string, server: string}>} */
  const edges = new Map();
  /** @type {Array<import("./request.js").RequestStory | null>} */
  const stories = await Promise.all(search.traces.slice(0, 20).map((t) => fetchJson(`/api/requests/${t.trace_id}`).catch(() => /** @type {null} */ (null))));
  const seen = new Set();
  for (const story of stories.filter(Boolean)) {
    const spans = story.timeline.filter((e) => e.type === "span" && !seen.has(e.span_id));
    spans.forEach((s) => seen.add(s.span_id));
    const byId = new Map(spans.map((s) => [s.span_id, s]));
    for (const span of spans) {
      const parent = span.parent_span_id && byId.get(span.parent_span_id);
      if (parent && parent.service === span.service) continue;
      if (!services.has(span.service)) services.set(span.service, { name: span.service, calls: 0, errors: 0, durations: [] });
      const entry = services.get(span.service);
      entry.calls += 1;
      entry.errors += span.error ? 1 : 0;
      entry.durations.push(span.duration);
      if (parent) {
        const key = `${parent.service}>${span.service}`;
        if (!edges.has(key)) edges.set(key, { client: parent.service, server: span.service, calls: 0, errors: 0, durations: [] });
        const edge = edges.get(key);
        edge.calls += 1;
        edge.errors += span.error ? 1 : 0;
        edge.durations.push(span.duration);
      }
    }
  }
  /** @type {(list: number[]) => number | null} */
  const p95 = (list) => {
    if (!list.length) return null;
    const sorted = list.slice().sort((a, b) => a - b);
    return sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * 0.95))] / 1e9;
  };
  /** @type {<T extends Counts>(x: T) => T & {rate: number, errorRatio: number, p95: number | null}} */
  const summarize = (x) => ({ ...x, rate: x.calls / seconds, errorRatio: x.calls ? x.errors / x.calls : 0, p95: p95(x.durations) });
  return { source: "traces", services: [...services.values()].map(summarize), edges: [...edges.values()].map(summarize) };
}

/**
 * The metrics' numbers, with services and edges only the traces know (series not scraped yet) added.
 * @param {Graph} metrics
 * @param {Graph} traces
 * @returns {Graph}
 */
function merge(metrics, traces) {
  const services = new Map(metrics.services.map((s) => [s.name, s]));
  for (const s of traces.services) if (!services.has(s.name)) services.set(s.name, s);
  const edges = new Map(metrics.edges.map((e) => [`${e.client}>${e.server}`, e]));
  for (const e of traces.edges) if (!edges.has(`${e.client}>${e.server}`)) edges.set(`${e.client}>${e.server}`, e);
  return { source: "metrics", services: [...services.values()], edges: [...edges.values()] };
}

/**
 * Columns by longest path from the entry services.
 * @param {Graph} graph
 * @returns {{positions: Map<string, {x: number, y: number}>, width: number, height: number}}
 */
function layout(graph) {
  const depth = new Map(graph.services.map((s) => [s.name, 0]));
  for (let pass = 0; pass < graph.services.length; pass++) {
    for (const edge of graph.edges) {
      if (edge.client === edge.server) continue;
      const next = Math.min((depth.get(edge.client) || 0) + 1, graph.services.length);
      if (next > (depth.get(edge.server) || 0)) depth.set(edge.server, next);
    }
  }
  /** @type {Map<number, string[]>} */
  const columns = new Map();
  for (const service of graph.services) {
    const d = depth.get(service.name) || 0;
    if (!columns.has(d)) columns.set(d, []);
    columns.get(d).push(service.name);
  }
  const positions = new Map();
  const colWidth = 320;
  const rowHeight = 100;
  let maxRows = 1;
  for (const [d, names] of columns) {
    names.sort();
    maxRows = Math.max(maxRows, names.length);
    names.forEach((name, i) => positions.set(name, { x: 40 + d * colWidth, y: 30 + i * rowHeight }));
  }
  return { positions, width: 40 + (Math.max(...columns.keys(), 0) + 1) * colWidth, height: 30 + maxRows * rowHeight };
}

/**
 * The service map as SVG: a box per service, an arrow per edge.
 * @param {Graph} graph
 * @returns {SVGElement}
 */
function drawMap(graph) {
  const { positions, width, height } = layout(graph);
  const map = svg("svg", { id: "service-map", viewBox: `0 0 ${width} ${height}`, width, height, role: "img" });
  const marker = svg("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 10, refY: 5, markerWidth: 8, markerHeight: 8, orient: "auto" });
  marker.append(svg("path", { d: "M0,0 L10,5 L0,10 z", class: "arrow" }));
  const defs = svg("defs");
  defs.append(marker);
  map.append(defs);
  const nodeW = 170;
  const nodeH = 50;
  for (const edge of graph.edges) {
    const a = positions.get(edge.client);
    const b = positions.get(edge.server);
    if (!a || !b) continue;
    const x1 = a.x + nodeW;
    const y1 = a.y + nodeH / 2;
    const x2 = b.x;
    const y2 = b.y + nodeH / 2;
    const cls = edge.errorRatio > 0.05 ? "edge bad" : edge.errorRatio > 0 ? "edge warn" : "edge";
    const group = svg("g", { class: "edge-group", "data-edge": `${edge.client}>${edge.server}` });
    group.append(svg("path", { d: `M${x1},${y1} C${x1 + 40},${y1} ${x2 - 40},${y2} ${x2},${y2}`, class: cls, "marker-end": "url(#arrow)" }));
    group.append(svg("text", { x: (x1 + x2) / 2, y: (y1 + y2) / 2 - 4, class: "edge-label" }, `${formatValue(edge.rate, "reqps")} · ${(edge.errorRatio * 100).toFixed(1)}% err${edge.p95 ? ` · p95 ${formatValue(edge.p95, "s")}` : ""}`));
    map.append(group);
  }
  for (const service of graph.services) {
    const p = positions.get(service.name);
    const group = svg("g", { class: "node", "data-service": service.name });
    group.append(svg("rect", { x: p.x, y: p.y, width: nodeW, height: nodeH, rx: 6, class: service.errorRatio > 0.05 ? "node-box bad" : "node-box", stroke: serviceColor(service.name) }));
    group.append(svg("text", { x: p.x + 8, y: p.y + 18, class: "node-name" }, service.name));
    group.append(svg("text", { x: p.x + 8, y: p.y + 38, class: "node-stats" }, `${formatValue(service.rate, "reqps")} · ${(service.errorRatio * 100).toFixed(1)}%${service.p95 ? ` · ${formatValue(service.p95, "s")}` : ""}`));
    map.append(group);
  }
  return map;
}

/**
 * Rate and error sparklines in the service table, from the span metrics.
 * @param {HTMLElement} table
 * @param {Graph} graph
 * @param {TimeRange} range
 */
async function sparklines(table, graph, range) {
  const step = Math.max(15, Math.floor((range.end - range.start) / 1000 / 60));
  /** @typedef {import("./util.js").PromResponse<{resultType: "matrix", result: import("./util.js").PromSeries[]}>} Matrix */
  /** @type {(query: string) => Promise<Matrix>} */
  const api = (query) => fetchJson(`/api/v1/query_range?${new URLSearchParams({ query, start: String(range.start / 1000), end: String(range.end / 1000), step: String(step) })}`);
  const [rates, errors] = await Promise.all([api(`sum by (service) (rate(traces_spanmetrics_calls_total{${SERVER}}[5m]))`), api(`sum by (service) (rate(traces_spanmetrics_calls_total{${SERVER},status_code="STATUS_CODE_ERROR"}[5m]))`)]).catch(() => /** @type {[null, null]} */ ([null, null]));
  if (!rates) return;
  /** @type {(result: Matrix, column: string, color?: string) => void} */
  const put = (result, column, color) => {
    for (const series of result.data.result) {
      const cell = /** @type {HTMLElement | null} */ (table.querySelector(`tr[data-service="${CSS.escape(series.metric.service || "")}"] td.${column}`));
      if (!cell || !series.values.length) continue;
      cell.replaceChildren();
      sparkline(cell, series.values.map((v) => v[0]), series.values.map((v) => Number(v[1])), color || serviceColor(series.metric.service));
    }
  };
  put(rates, "spark-rate");
  put(errors, "spark-errors", "#cf222e");
}

/**
 * `#/services`.
 * @param {HTMLElement} root
 * @param {import("./util.js").View} view
 */
export async function render(root, view) {
  const params = view.params;
  const range = timeRange(params);
  const status = el("div", { id: "services-status", role: "status" }, "loading…");
  const mapBox = el("div", { id: "service-map-box" });
  const table = el("table", { id: "service-table" }, el("thead", {}, el("tr", {}, el("th", {}, "Service"), el("th", {}, "Rate"), el("th", {}, "Error ratio"), el("th", {}, "p95 latency"), el("th", {}, "Rate over time"), el("th", {}, "Errors over time"), el("th", {}, ""))));
  const edgeTable = el("table", { id: "edge-table" }, el("thead", {}, el("tr", {}, el("th", {}, "Client → server"), el("th", {}, "Rate"), el("th", {}, "Error ratio"), el("th", {}, "Server p95"))));
  root.append(el("section", { id: "services-view" }, el("div", { class: "toolbar" }, rangePicker(params, (from, to) => go("services", "", new URLSearchParams({ from, to })))), status, mapBox, el("h3", {}, "Services"), table, el("h3", {}, "Calls between services"), edgeTable));
  /** @type {Graph} */
  let graph;
  try {
    const [metrics, traces] = await Promise.all([fromMetrics(range).catch(() => /** @type {null} */ (null)), fromTraces(range)]);
    graph = metrics ? merge(metrics, traces) : traces;
  } catch (error) {
    status.replaceChildren(errorBox(error));
    root.dataset.loaded = "error";
    return;
  }
  status.textContent = graph.source === "metrics" ? "From the service graph and span metrics (last 5 minutes at the range's end), completed from recent traces where the metrics have no series yet." : "From recent traces (the Prometheus API has no service graph for this range).";
  status.dataset.source = graph.source;
  mapBox.append(drawMap(graph));
  const tbody = el("tbody");
  for (const s of graph.services.sort((a, b) => a.name.localeCompare(b.name))) {
    tbody.append(
      el(
        "tr",
        { "data-service": s.name, class: "service-row" },
        el("td", {}, serviceChip(s.name)),
        el("td", {}, formatValue(s.rate, "reqps")),
        el("td", { class: s.errorRatio > 0.05 ? "bad" : "" }, `${(s.errorRatio * 100).toFixed(2)}%`),
        el("td", {}, s.p95 === null ? "–" : formatValue(s.p95, "s")),
        el("td", { class: "spark-rate" }, "–"),
        el("td", { class: "spark-errors" }, "–"),
        el("td", {}, el("a", { href: hashFor("traces", "", new URLSearchParams({ service: s.name })) }, "traces"), " ", el("a", { href: hashFor("logs", "", new URLSearchParams({ q: `service:${s.name}` })) }, "logs")),
      ),
    );
  }
  table.append(tbody);
  const ebody = el("tbody");
  for (const e of graph.edges) ebody.append(el("tr", { class: "edge-row" }, el("td", {}, serviceChip(e.client), " → ", serviceChip(e.server)), el("td", {}, formatValue(e.rate, "reqps")), el("td", {}, `${(e.errorRatio * 100).toFixed(2)}%`), el("td", {}, e.p95 === null || e.p95 === undefined ? "–" : formatValue(e.p95, "s"))));
  edgeTable.append(ebody);
  root.dataset.loaded = "1";
  // Sparklines from the span metrics whenever the Prometheus API has them.
  await sparklines(table, graph, range);
}

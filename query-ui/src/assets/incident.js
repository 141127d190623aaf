// @ts-check
// The incident view: from an alert to its cause on one page. The alert's
// expression around its start with the exemplars behind it, the failing
// requests and the worst set against a healthy one of the same operation,
// the log patterns new or grown since it began, and the worst request's
// story. State: `#/incident?alert=<name>&label=<name>=<value>…&start=<ms>`
// (the link the alert's notifications carry).

import { el, fetchJson, hashFor, formatTime, formatDuration, errorBox, serviceChip, PALETTE } from "./util.js";
import { timeChart, emptyChart, formatValue } from "./chart.js";
import { renderComparison } from "./compare.js";
import { storyParts } from "./request.js";

/** @typedef {import("./compare.js").TraceComparison} TraceComparison */
/** @typedef {import("./logs.js").LogPattern} LogPattern */

/**
 * A request of the incident (nanoseconds).
 * @typedef {{trace_id: string, root_service: string, root_operation: string, start: number, duration: number, span_count: number, errors: number, exemplar: boolean}} IncidentTrace
 */

/**
 * `GET /api/incident`.
 * @typedef {object} Incident
 * @property {{name: string, query: string, labels: Record<string, string>, annotations: Record<string, string>, state: "firing" | "pending" | "inactive", active_at: number, lookback: number, value?: string}} alert the alert; `lookback` (ms) is how far back its expression looks
 * @property {number} start the graph's range, ms
 * @property {number} end
 * @property {number} step seconds
 * @property {Array<{metric: Record<string, string>, values: Array<[number, string]>}>} graph
 * @property {Array<{series: Record<string, string>, trace_id: string, span_id?: string, value: number, timestamp: number}>} exemplars
 * @property {string[]} exemplar_selectors
 * @property {string[]} services
 * @property {IncidentTrace[]} failing
 * @property {IncidentTrace} [worst]
 * @property {IncidentTrace} [healthy]
 * @property {TraceComparison} [comparison]
 * @property {LogPattern[]} patterns new or grown since the start
 * @property {[number, number]} patterns_sampled records mined after and before the start
 * @property {string[]} warnings
 * @property {Record<string, number> | string} timings ms per part
 * @property {number | string} took_ms
 */

/**
 * @param {string} title
 * @param {string} id
 * @param {...(Node | string | null)} children
 * @returns {HTMLElement}
 */
function part(title, id, ...children) {
  return el("section", { class: "incident-part", id }, el("h3", {}, title), ...children);
}

/**
 * @param {Incident} incident
 * @returns {HTMLElement}
 */
function graphPart(incident) {
  const body = el("div", { class: "incident-graph" });
  const section = part("The expression around the start", "incident-graph", el("code", { class: "incident-query" }, incident.alert.query), body);
  queueMicrotask(() => {
    if (!incident.graph.length) {
      body.append(emptyChart("no data for this alert's series in the range"));
      return;
    }
    // From the first point (the series may start after the range does) to the end.
    const first = Math.min(...incident.exemplars.map((e) => e.timestamp));
    const times = [...new Set([incident.end / 1000, ...(Number.isFinite(first) ? [first] : []), ...incident.graph.flatMap((s) => s.values.map((v) => v[0]))])].sort((a, b) => a - b);
    const index = new Map(times.map((t, i) => [t, i]));
    const series = incident.graph.map((s, i) => {
      const values = times.map(() => /** @type {number | null} */ (null));
      for (const [t, v] of s.values) values[index.get(t) ?? 0] = Number(v);
      const label = Object.entries(s.metric).map(([k, v]) => `${k}=${v}`).join(", ") || incident.alert.query;
      return { label, color: PALETTE[i % PALETTE.length], values };
    });
    const markers = incident.exemplars.map((e) => ({
      x: e.timestamp,
      y: e.value,
      title: `${e.series.service || ""} ${e.value} at ${new Date(e.timestamp * 1000).toLocaleTimeString()}: trace ${e.trace_id}`.trim(),
      href: hashFor("request", e.trace_id),
    }));
    timeChart(body, { xs: times, series, height: 240, markers });
  });
  const note = incident.exemplars.length ? `${incident.exemplars.length} exemplars (diamonds) from ${incident.exemplar_selectors.join(", ")}: each opens its request.` : `No exemplars for ${incident.exemplar_selectors.join(", ") || "this expression"} in the range.`;
  section.append(el("p", { class: "muted" }, `The alert became active at ${formatTime(incident.alert.active_at * 1e6)}. ${note}`));
  return section;
}

/**
 * @param {Incident} incident
 * @returns {HTMLElement}
 */
function failingPart(incident) {
  if (!incident.failing.length) return part("Failing requests", "incident-failing", el("p", { class: "muted" }, `No traces of ${incident.services.join(", ") || "its service"} since the alert began.`));
  const rows = el("tbody");
  for (const trace of incident.failing) {
    const worst = incident.worst && incident.worst.trace_id === trace.trace_id;
    rows.append(
      el(
        "tr",
        { class: `failing-row${worst ? " worst" : ""}`, "data-trace": trace.trace_id },
        el("td", {}, el("a", { href: hashFor("request", trace.trace_id), class: "trace-link" }, trace.trace_id.slice(0, 16)), trace.exemplar ? el("span", { class: "badge exemplar-badge", title: "an exemplar of the graph" }, "exemplar") : null, worst ? el("span", { class: "badge error" }, "worst") : null),
        el("td", {}, serviceChip(trace.root_service), ` ${trace.root_operation}`),
        el("td", { class: "num" }, formatDuration(trace.duration)),
        el("td", { class: "num" }, String(trace.span_count)),
        el("td", { class: "num" }, trace.errors ? el("span", { class: "badge error" }, String(trace.errors)) : "0"),
        el("td", {}, formatTime(trace.start)),
      ),
    );
  }
  const table = el("table", { class: "compare-table", id: "failing-table" }, el("thead", {}, el("tr", {}, el("th", {}, "Trace"), el("th", {}, "Root"), el("th", { class: "num" }, "Duration"), el("th", { class: "num" }, "Spans"), el("th", { class: "num" }, "Errors"), el("th", {}, "Start"))), rows);
  return part("Failing requests", "incident-failing", table);
}

/**
 * @param {Incident} incident
 * @returns {HTMLElement}
 */
function comparisonPart(incident) {
  if (!incident.comparison || !incident.healthy || !incident.worst) return part("The worst request against a healthy one", "incident-comparison", el("p", { class: "muted" }, "No healthy request of the same operation to compare with."));
  const link = el("a", { href: hashFor("compare", "", new URLSearchParams({ a: incident.healthy.trace_id, b: incident.worst.trace_id })) }, "open in Compare");
  return part("The worst request (B) against a healthy one (A)", "incident-comparison", el("p", { class: "muted" }, `A healthy ${incident.healthy.root_operation} from before the alert, ${formatDuration(incident.healthy.duration)}; the worst, ${formatDuration(incident.worst.duration)}. `, link), renderComparison(incident.comparison));
}

/**
 * @param {Incident} incident
 * @returns {HTMLElement}
 */
function patternsPart(incident) {
  const [after, before] = incident.patterns_sampled;
  const since = incident.alert.active_at - incident.alert.lookback;
  const note = el("p", { class: "muted" }, `Log lines of ${incident.services.join(", ")}: ${after} since ${formatTime(since * 1e6)} (the alert's start less its expression's ${formatDuration(incident.alert.lookback * 1e6)} lookback) set against ${before} before.`);
  if (!incident.patterns.length) return part("Log patterns new since the start", "incident-patterns", note, el("p", { class: "muted" }, "No new or grown patterns."));
  const rows = el("tbody");
  for (const pattern of incident.patterns) {
    rows.append(
      el(
        "tr",
        { class: "incident-pattern", "data-change": pattern.change || "", "data-service": pattern.service },
        el("td", {}, el("span", { class: `badge change-${pattern.change}` }, pattern.change || "")),
        el("td", {}, serviceChip(pattern.service)),
        el("td", {}, el("code", {}, pattern.pattern), el("div", { class: "muted pattern-example" }, pattern.example)),
        el("td", { class: "num" }, String(pattern.count)),
        el("td", { class: "num" }, String(pattern.count_before)),
      ),
    );
  }
  const table = el("table", { class: "compare-table", id: "incident-patterns-table" }, el("thead", {}, el("tr", {}, el("th", {}, "Change"), el("th", {}, "Service"), el("th", {}, "Pattern"), el("th", { class: "num" }, "Since"), el("th", { class: "num" }, "Before"))), rows);
  return part("Log patterns new since the start", "incident-patterns", note, table);
}

/**
 * `#/incident?alert=&label=&start=`.
 * @param {HTMLElement} root
 * @param {import("./util.js").View} view
 */
export async function render(root, view) {
  const name = view.params.get("alert") || "";
  const body = el("div", { id: "incident-body" }, el("p", { class: "muted" }, "gathering the alert's graph, requests, comparison and log patterns…"));
  root.append(el("section", { id: "incident-view" }, el("p", {}, el("a", { href: hashFor("alerts") }, "← alerts")), el("h2", { id: "incident-title" }, `Incident: ${name}`), body));
  /** @type {Incident} */
  let incident;
  try {
    incident = await fetchJson(`/api/incident?${view.params}`);
  } catch (error) {
    body.replaceChildren(errorBox(error));
    root.dataset.loaded = "error";
    return;
  }
  const alert = incident.alert;
  const labels = el("span", { class: "incident-labels" });
  for (const [key, value] of Object.entries(alert.labels)) if (key !== "alertname") labels.append(el("span", { class: "tag" }, `${key}=${value}`));
  const header = el(
    "div",
    { class: "incident-header" },
    el("p", {}, el("span", { class: `badge state-${alert.state}` }, alert.state), ` since ${formatTime(alert.active_at * 1e6)}`, alert.value ? ` · value ${formatValue(Number(alert.value))}` : "", " ", labels),
    alert.annotations.summary ? el("p", { class: "incident-summary" }, alert.annotations.summary) : null,
    alert.annotations.description ? el("p", { class: "muted" }, alert.annotations.description) : null,
    el("p", { class: "muted" }, `Built in ${incident.took_ms} ms.`),
  );
  const warnings = incident.warnings.map((w) => el("p", { class: "muted compare-warning" }, w));
  const story = part("The worst request's story", "incident-story", el("p", { class: "muted" }, incident.worst ? "loading…" : "No request to show."));
  body.replaceChildren(header, ...warnings, graphPart(incident), failingPart(incident), comparisonPart(incident), patternsPart(incident), story);
  if (incident.worst) {
    try {
      /** @type {import("./request.js").RequestStory} */
      const worst = await fetchJson(`/api/requests/${encodeURIComponent(incident.worst.trace_id)}`);
      story.replaceChildren(el("h3", {}, "The worst request's story"), el("p", {}, el("a", { href: hashFor("request", incident.worst.trace_id) }, "open the request view")), ...storyParts(worst));
    } catch (error) {
      story.replaceChildren(el("h3", {}, "The worst request's story"), errorBox(error));
    }
  }
  root.dataset.loaded = "1";
}

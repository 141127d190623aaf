// @ts-check
// Trace comparison: how trace A differs from trace B (structure: paths one
// has more often; time: self time per service and operation side by side,
// and each critical path), or from what its operations usually take.
// State: `#/compare?a=<trace id>&b=<trace id | typical>`.

import { el, fetchJson, go, hashFor, formatDuration, errorBox, serviceChip } from "./util.js";

/** What one trace did in an operation or service (nanoseconds). @typedef {{count: number, duration: number, self_time: number, longest: number, errors: number}} Usage */
/** An operation's usual duration (nanoseconds), when span metrics know it. @typedef {{p50: number | null, p95: number | null}} Typical */

/**
 * One trace's headline.
 * @typedef {object} TraceSide
 * @property {string} trace_id
 * @property {string} root_service
 * @property {string} root_name
 * @property {number} start nanoseconds
 * @property {number} duration nanoseconds
 * @property {number} span_count
 * @property {number} errors
 * @property {Array<{span_id: string, service: string, name: string, duration: number, self_time: number}>} critical_path
 */

/**
 * `GET /api/traces/compare`.
 * @typedef {object} TraceComparison
 * @property {"trace" | "typical"} mode
 * @property {TraceSide} a
 * @property {TraceSide} [b]
 * @property {string} difference
 * @property {[string, string]} [difference_operation] service and operation
 * @property {Array<{path: string[], service: string, name: string, a: number, b: number}>} structure
 * @property {Array<{service: string, a: Usage, b?: Usage}>} services
 * @property {Array<{service: string, name: string, a: Usage, b?: Usage, typical?: Typical, delta: number}>} operations
 * @property {string[]} warnings
 */

/**
 * A bar as long as `value` is of `max`.
 * @param {number} value
 * @param {number} max
 * @param {string} kind `a` or `b`
 * @returns {HTMLElement}
 */
function bar(value, max, kind) {
  const width = max > 0 ? Math.max(1, Math.round((100 * value) / max)) : 0;
  return el("span", { class: `compare-bar ${kind}`, style: `width: ${width}%` });
}

/**
 * @param {number} nanos
 * @returns {string}
 */
function signed(nanos) {
  return nanos === 0 ? "±0" : `${nanos > 0 ? "+" : "−"}${formatDuration(Math.abs(nanos))}`;
}

/**
 * A side's header: the trace, its root, duration, spans and critical path.
 * @param {string} label
 * @param {TraceSide} side
 * @returns {HTMLElement}
 */
function sideCard(label, side) {
  const path = el("ol", { class: "compare-path" });
  for (const step of side.critical_path.slice(0, 30)) path.append(el("li", {}, serviceChip(step.service), ` ${step.name} `, el("span", { class: "muted" }, `${formatDuration(step.duration)} (self ${formatDuration(step.self_time)})`)));
  return el(
    "div",
    { class: "compare-side", "data-side": label },
    el("h3", {}, `${label}: `, el("a", { href: hashFor("trace", side.trace_id), class: "trace-link" }, side.trace_id)),
    el("p", {}, serviceChip(side.root_service), ` ${side.root_name} · ${formatDuration(side.duration)} · ${side.span_count} spans`, side.errors ? el("span", { class: "badge error" }, `${side.errors} errors`) : null),
    el("details", {}, el("summary", {}, `Critical path (${side.critical_path.length} spans)`), path),
  );
}

/**
 * `#/compare?a=&b=`.
 * @param {HTMLElement} root
 * @param {import("./util.js").View} view
 */
export async function render(root, view) {
  const a = view.params.get("a") || "";
  const b = view.params.get("b") || "typical";
  const inputA = /** @type {HTMLInputElement} */ (el("input", { id: "compare-a", type: "search", value: a, placeholder: "trace id", spellcheck: "false", size: 34 }));
  const inputB = /** @type {HTMLInputElement} */ (el("input", { id: "compare-b", type: "search", value: b, placeholder: "trace id, or typical", spellcheck: "false", size: 34 }));
  const form = el("form", { id: "compare-form", autocomplete: "off" }, "Compare ", inputA, " with ", inputB, el("button", { type: "submit", id: "compare-button" }, "Compare"));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    go("compare", "", new URLSearchParams({ a: inputA.value.trim(), b: inputB.value.trim() || "typical" }));
  });
  const body = el("div", { id: "compare-body" });
  root.append(el("section", { id: "compare-view" }, el("h2", {}, "Compare traces"), form, body));
  if (!a) {
    body.append(el("p", { class: "muted" }, "Two trace ids, or one and “typical” (its operations' p50 and p95 over the hour before it, from the span metrics)."));
    root.dataset.loaded = "1";
    return;
  }
  /** @type {TraceComparison} */
  let comparison;
  try {
    comparison = await fetchJson(`/api/traces/compare?${new URLSearchParams({ a, b })}`);
  } catch (error) {
    body.append(errorBox(error));
    root.dataset.loaded = "error";
    return;
  }
  body.append(renderComparison(comparison));
  root.dataset.loaded = "1";
}

/**
 * The comparison's tables (also drawn inside the incident view).
 * @param {TraceComparison} comparison
 * @returns {HTMLElement}
 */
export function renderComparison(comparison) {
  const typical = comparison.mode === "typical";
  const out = el("div", { class: "comparison", "data-mode": comparison.mode });
  out.append(el("p", { id: "compare-difference", class: "compare-difference" }, el("strong", {}, "Biggest difference: "), comparison.difference));
  for (const warning of comparison.warnings) out.append(el("p", { class: "muted compare-warning" }, warning));
  const sides = el("div", { class: "compare-sides" }, sideCard("A", comparison.a));
  if (comparison.b) sides.append(sideCard("B", comparison.b));
  out.append(sides);

  if (comparison.structure.length) {
    const table = el("table", { id: "compare-structure", class: "compare-table" }, el("thead", {}, el("tr", {}, el("th", {}, "Path from the root"), el("th", { class: "num" }, "A"), el("th", { class: "num" }, "B"))));
    const tbody = el("tbody");
    for (const row of comparison.structure) {
      const path = el("span", { class: "compare-path-text" }, row.path.slice(0, -1).join(" › "), row.path.length > 1 ? " › " : "", el("strong", {}, row.path[row.path.length - 1]));
      tbody.append(el("tr", { class: "structure-row" }, el("td", {}, path), el("td", { class: "num" }, String(row.a)), el("td", { class: "num" }, String(row.b))));
    }
    table.append(tbody);
    out.append(el("h3", {}, "Structure: spans one trace has and the other lacks"), table);
  } else if (!typical) {
    out.append(el("p", { class: "muted" }, "Same structure: every path from the root appears as often in both."));
  }

  const maxService = Math.max(1, ...comparison.services.flatMap((row) => [row.a.self_time, row.b?.self_time || 0]));
  const services = el("table", { id: "compare-services", class: "compare-table" }, el("thead", {}, el("tr", {}, el("th", {}, "Service"), el("th", {}, "Self time A"), typical ? null : el("th", {}, "Self time B"), typical ? null : el("th", { class: "num" }, "B − A"))));
  const serviceRows = el("tbody");
  for (const row of comparison.services) {
    serviceRows.append(
      el(
        "tr",
        { class: "service-row", "data-service": row.service },
        el("td", {}, serviceChip(row.service)),
        el("td", {}, bar(row.a.self_time, maxService, "a"), ` ${formatDuration(row.a.self_time)}`),
        row.b ? el("td", {}, bar(row.b.self_time, maxService, "b"), ` ${formatDuration(row.b.self_time)}`) : null,
        row.b ? el("td", { class: "num" }, signed(row.b.self_time - row.a.self_time)) : null,
      ),
    );
  }
  services.append(serviceRows);
  out.append(el("h3", {}, "Self time per service"), services);

  const operations = el(
    "table",
    { id: "compare-operations", class: "compare-table" },
    el("thead", {}, el("tr", {}, el("th", {}, "Operation"), el("th", { class: "num" }, "Spans A"), el("th", { class: "num" }, "Self time A"), typical ? el("th", { class: "num" }, "Longest A") : el("th", { class: "num" }, "Spans B"), typical ? el("th", { class: "num" }, "Typical p50") : el("th", { class: "num" }, "Self time B"), typical ? el("th", { class: "num" }, "Typical p95") : null, el("th", { class: "num" }, typical ? "Over p95" : "B − A"))),
  );
  const operationRows = el("tbody");
  const named = comparison.difference_operation;
  for (const row of comparison.operations) {
    const isDifference = Boolean(named && named[0] === row.service && named[1] === row.name);
    const cells = typical
      ? [el("td", { class: "num" }, formatDuration(row.a.longest)), el("td", { class: "num" }, row.typical?.p50 != null ? formatDuration(row.typical.p50) : "–"), el("td", { class: "num" }, row.typical?.p95 != null ? formatDuration(row.typical.p95) : "–")]
      : [el("td", { class: "num" }, String(row.b?.count ?? 0)), el("td", { class: "num" }, formatDuration(row.b?.self_time ?? 0))];
    operationRows.append(
      el(
        "tr",
        { class: `operation-row${isDifference ? " difference" : ""}`, "data-service": row.service, "data-operation": row.name },
        el("td", {}, serviceChip(row.service), ` ${row.name}`),
        el("td", { class: "num" }, String(row.a.count)),
        el("td", { class: "num" }, formatDuration(row.a.self_time)),
        ...cells,
        el("td", { class: "num" }, typical ? (row.delta ? formatDuration(row.delta) : "–") : signed(row.delta)),
      ),
    );
  }
  operations.append(operationRows);
  out.append(el("h3", {}, typical ? "Operations against their typical durations" : "Operations, largest difference first"), operations);
  return out;
}

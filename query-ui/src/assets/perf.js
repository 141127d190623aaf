// @ts-check
// Test hook for the browser performance measurements: times the real render
// functions on generated data with performance.now(), layout included.
// `window.__sightlinePerf` is read by the browser bench (tests/tests/e2e/browser.rs).

import { el } from "./util.js";
import { renderRows } from "./logs.js";
import { renderWaterfall } from "./traces.js";

/**
 * The numbers the browser bench reads from `window.__sightlinePerf`, and
 * the functions it calls to time the render functions.
 * @typedef {object} Perf
 * @property {number} [firstDataRender] when the logs view first showed data, ms since navigation start
 * @property {{rows: number, fetchMs: number, renderMs: number}} [lastLogRender]
 * @property {{spans: number, renderMs: number}} [lastWaterfall]
 * @property {() => {domContentLoaded: number, load: number, responseEnd: number, firstDataRender: number | null} | null} [navigation]
 * @property {(count?: number) => number} [renderLogRows] ms to render `count` log rows
 * @property {(count?: number) => number} [renderWaterfall] ms to draw a waterfall of `count` spans
 */

/**
 * @param {number} count
 * @returns {import("./util.js").LogRecord[]}
 */
function syntheticRecords(count) {
  const now = Date.now();
  const severities = ["INFO", "INFO", "INFO", "WARN", "ERROR", "DEBUG"];
  return Array.from({ length: count }, (_, i) => ({
    id: `perf-${i}`,
    timestamp: (now - i * 137) * 1e6,
    observed_timestamp: (now - i * 137) * 1e6,
    severity_text: severities[i % severities.length],
    severity_number: 0,
    service: ["gateway", "order", "payment", "inventory"][i % 4],
    body: `order ${i} <script>alert(${i})</script> processed for user u-${i % 97} in ${i % 250} ms`,
    attributes: { user_id: `u-${i % 97}` },
    resource: {},
    request_id: `req-${i}`,
    trace_id: (i * 7919).toString(16).padStart(32, "0"),
  }));
}

/**
 * @param {number} count
 * @returns {import("./util.js").Span[]}
 */
function syntheticSpans(count) {
  const start = Date.now() * 1e6;
  /** @type {import("./util.js").Span[]} */
  const spans = [];
  for (let i = 0; i < count; i++) {
    const parent = i === 0 ? undefined : spans[Math.floor((i - 1) / 4)];
    const offset = parent ? parent.start_time - start + (i % 4) * 1e6 : 0;
    const duration = i === 0 ? 900e6 : ((i * 37) % 700) * 1e6;
    spans.push({
      trace_id: "f".repeat(32),
      span_id: i.toString(16).padStart(16, "0"),
      parent_span_id: parent && parent.span_id,
      name: `operation-${i % 13}`,
      service: ["gateway", "order", "payment", "inventory", "auth"][i % 5],
      start_time: start + offset,
      end_time: start + offset + duration,
      status: i % 50 === 0 ? "error" : "unset",
      on_critical_path: i % 4 === 0,
      attributes: {},
    });
  }
  return spans;
}

/**
 * @param {(host: HTMLElement) => void} render
 * @returns {number} milliseconds, style and layout included
 */
function timed(render) {
  const host = el("div", { class: "perf-host" });
  document.body.append(host);
  const t0 = performance.now();
  render(host);
  // Force style and layout so the number covers what the user waits for.
  void host.offsetHeight;
  const ms = performance.now() - t0;
  host.remove();
  return ms;
}

/**
 * Fills `perf` with the measuring functions and publishes it as `window.__sightlinePerf`.
 * @param {Perf} perf
 */
export function install(perf) {
  perf.navigation = () => {
    const [nav] = /** @type {PerformanceNavigationTiming[]} */ (performance.getEntriesByType("navigation"));
    if (!nav) return null;
    return { domContentLoaded: nav.domContentLoadedEventEnd, load: nav.loadEventEnd, responseEnd: nav.responseEnd, firstDataRender: perf.firstDataRender ?? null };
  };
  perf.renderLogRows = (count = 1000) => {
    const records = syntheticRecords(count);
    return timed((host) => {
      const table = el("table", { id: "perf-results" });
      const tbody = el("tbody");
      table.append(tbody);
      host.append(table);
      renderRows(tbody, records);
    });
  };
  perf.renderWaterfall = (count = 1000) => {
    const spans = syntheticSpans(count);
    return timed((host) => {
      const box = el("div", { class: "waterfall" });
      host.append(box);
      renderWaterfall(box, spans, {});
      if (box.querySelectorAll(".span-bar").length !== count) throw new Error("waterfall did not draw every span");
    });
  };
  /** @type {Window & {__sightlinePerf?: Perf}} */ (window).__sightlinePerf = perf;
}

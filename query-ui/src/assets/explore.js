// @ts-check
// The metrics explorer (`#/explore?q=<PromQL>&from=&to=`): an ad-hoc PromQL
// query drawn as a graph (a range query over the time range) and a table
// (an instant query at its end). The query lives in the URL, so a link
// shows the same graph. While typing, metric names complete from
// `/api/v1/label/__name__/values`, and inside `{...}` label names from
// `/api/v1/labels` (for the metric before the brace) and label values from
// `/api/v1/label/<name>/values`.

import { el, fetchJson, go, timeRange, rangePicker, errorBox, PALETTE } from "./util.js";
import { timeChart, formatValue, emptyChart } from "./chart.js";

/** Most series drawn in the graph (the table lists them all). */
const MAX_SERIES = 40;
/** Most suggestions shown under the input. */
const MAX_SUGGESTIONS = 20;

/**
 * A series as PromQL writes it: `name{label="value", ...}`.
 * @param {import("./util.js").PromLabels} metric
 * @returns {string}
 */
export function seriesName(metric) {
  const { __name__: name = "", ...labels } = metric;
  const pairs = Object.entries(labels).map(([k, v]) => `${k}=${JSON.stringify(v)}`);
  return pairs.length ? `${name}{${pairs.join(", ")}}` : name || "{}";
}

/**
 * What the word before the cursor is, to complete it: a metric name, a label
 * name inside braces, or a label value after `label=`.
 * @param {string} text the input up to the cursor
 * @returns {{kind: "metric" | "label" | "value" | "none", prefix: string, metric: string, label: string}}
 */
export function completionContext(text) {
  const open = text.lastIndexOf("{");
  const inBraces = open > text.lastIndexOf("}");
  const metric = inBraces ? (/([a-zA-Z_:][a-zA-Z0-9_:]*)\s*$/.exec(text.slice(0, open))?.[1] ?? "") : "";
  if (inBraces) {
    const value = /([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"([^"]*)$/.exec(text);
    if (value) return { kind: "value", prefix: value[3], metric, label: value[1] };
    // A label name starts right after `{` or `,`; after an operator comes a quote.
    const label = /[{,]\s*([a-zA-Z_][a-zA-Z0-9_]*)?$/.exec(text);
    if (!label) return { kind: "none", prefix: "", metric, label: "" };
    return { kind: "label", prefix: label[1] ?? "", metric, label: "" };
  }
  const word = /([a-zA-Z_:][a-zA-Z0-9_:]*)$/.exec(text)?.[1] ?? "";
  return { kind: "metric", prefix: word, metric: "", label: "" };
}

/**
 * `#/explore`.
 * @param {HTMLElement} root
 * @param {import("./util.js").View} view
 * @param {import("./util.js").ViewContext} ctx
 */
export async function render(root, view, ctx) {
  const params = view.params;
  const expr = params.get("q") || "";
  const range = timeRange(params);
  const input = /** @type {HTMLTextAreaElement} */ (el("textarea", { id: "explore-query", class: "explore-query", rows: 2, spellcheck: false, placeholder: "a PromQL expression, e.g. sum by (service) (rate(http_requests_total[5m]))", "aria-label": "PromQL query" }));
  input.value = expr;
  const suggestions = el("ul", { id: "explore-suggestions", class: "suggestions", role: "listbox" });
  suggestions.hidden = true;
  const run = el("button", { id: "explore-run", type: "submit" }, "Run");
  /** @type {(changes: Record<string, string>) => void} */
  const nav = (changes) => {
    const next = new URLSearchParams(params);
    for (const [k, v] of Object.entries(changes)) next.set(k, v);
    go("explore", "", next);
  };
  const form = /** @type {HTMLFormElement} */ (el("form", { id: "explore-form", class: "explore-form" }, el("div", { class: "explore-input" }, input, suggestions), run, rangePicker(params, (from, to) => nav({ from, to }))));
  const graph = el("div", { id: "explore-graph", class: "explore-graph" });
  const table = el("div", { id: "explore-table" });
  root.append(el("section", { id: "explore-view" }, el("h2", {}, "Explore metrics"), form, graph, table));

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    suggestions.hidden = true;
    const q = input.value.trim();
    // The same query again (a new `now`): draw it again in place.
    if (q === expr) window.dispatchEvent(new HashChangeEvent("hashchange"));
    else nav({ q });
  });
  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey) {
      const first = /** @type {HTMLElement | null} */ (suggestions.hidden ? null : suggestions.querySelector("li.selected"));
      event.preventDefault();
      if (first) first.click();
      else form.requestSubmit();
    } else if (event.key === "Tab" && !suggestions.hidden) {
      const first = /** @type {HTMLElement | null} */ (suggestions.querySelector("li"));
      if (first) {
        event.preventDefault();
        first.click();
      }
    } else if (event.key === "Escape") {
      suggestions.hidden = true;
    } else if (event.key === "ArrowDown" || event.key === "ArrowUp") {
      const items = [...suggestions.querySelectorAll("li")];
      if (suggestions.hidden || !items.length) return;
      event.preventDefault();
      const at = items.findIndex((item) => item.classList.contains("selected"));
      const next = (at + (event.key === "ArrowDown" ? 1 : items.length - 1)) % items.length;
      items.forEach((item, index) => item.classList.toggle("selected", index === next));
    }
  });
  let typed = 0;
  input.addEventListener("input", async () => {
    const mine = ++typed;
    const before = input.value.slice(0, input.selectionStart ?? input.value.length);
    const context = completionContext(before);
    /** @type {string[]} */
    let options = [];
    try {
      options = await complete(context, range);
    } catch {
      options = [];
    }
    if (mine !== typed || !ctx.current()) return;
    const shown = options.filter((o) => o.startsWith(context.prefix) && o !== context.prefix).slice(0, MAX_SUGGESTIONS);
    suggestions.replaceChildren(
      ...shown.map((option) => {
        const item = el("li", { role: "option", "data-value": option }, option);
        item.addEventListener("mousedown", (event) => event.preventDefault());
        item.addEventListener("click", () => {
          const at = input.selectionStart ?? input.value.length;
          const head = input.value.slice(0, at - context.prefix.length);
          input.value = head + option + input.value.slice(at);
          const cursor = head.length + option.length;
          input.setSelectionRange(cursor, cursor);
          suggestions.hidden = true;
          input.focus();
        });
        return item;
      }),
    );
    suggestions.hidden = !shown.length || (context.kind === "metric" && !context.prefix);
  });
  input.addEventListener("blur", () => {
    suggestions.hidden = true;
  });

  if (!expr) {
    graph.append(emptyChart("Type a PromQL expression and press Enter."));
    root.dataset.loaded = "1";
    return;
  }
  const seconds = (range.end - range.start) / 1000;
  const step = Math.max(1, Math.ceil(seconds / 300));
  try {
    await Promise.all([drawGraph(graph, expr, range, step, nav), drawTable(table, expr, range)]);
    root.dataset.loaded = "1";
  } catch (error) {
    graph.replaceChildren(errorBox(error));
    table.replaceChildren();
    root.dataset.loaded = "1";
    root.dataset.error = "1";
  }
}

/** @type {Map<string, Promise<string[]>>} */
const cache = new Map();

/**
 * The names that may complete `context`, fetched once per view.
 * @param {ReturnType<typeof completionContext>} context
 * @param {import("./util.js").TimeRange} range
 * @returns {Promise<string[]>}
 */
function complete(context, range) {
  if (context.kind === "none") return Promise.resolve([]);
  const window = { start: String(Math.floor(range.start / 1000)), end: String(Math.ceil(range.end / 1000)) };
  let url;
  if (context.kind === "metric") url = `/api/v1/label/__name__/values?${new URLSearchParams(window)}`;
  else if (context.kind === "label") {
    const query = new URLSearchParams(window);
    if (context.metric) query.set("match[]", context.metric);
    url = `/api/v1/labels?${query}`;
  } else {
    const query = new URLSearchParams(window);
    if (context.metric) query.set("match[]", context.metric);
    url = `/api/v1/label/${encodeURIComponent(context.label)}/values?${query}`;
  }
  const key = `${context.kind}|${context.metric}|${context.label}`;
  let names = cache.get(key);
  if (!names) {
    names = fetchJson(url).then((/** @type {import("./util.js").PromResponse<string[]>} */ response) => response.data.filter((name) => name !== "__name__"));
    names.catch(() => cache.delete(key));
    cache.set(key, names);
    // Completions are for this view: the store changes while it is open.
    setTimeout(() => cache.delete(key), 30_000);
  }
  return names;
}

/**
 * @param {HTMLElement} graph
 * @param {string} expr
 * @param {import("./util.js").TimeRange} range
 * @param {number} step seconds
 * @param {(changes: Record<string, string>) => void} nav
 */
async function drawGraph(graph, expr, range, step, nav) {
  /** @type {import("./util.js").PromResponse<{resultType: "matrix", result: import("./util.js").PromSeries[]}>} */
  const response = await fetchJson(`/api/v1/query_range?${new URLSearchParams({ query: expr, start: String(range.start / 1000), end: String(range.end / 1000), step: String(step) })}`);
  const all = response.data.result;
  if (!all.length) {
    graph.append(emptyChart("no data in this time range"));
    return;
  }
  // The range's ends too: the axis spans the range asked for, also when
  // the series have a single point so far.
  const ends = [range.start / 1000, range.end / 1000];
  const times = [...new Set([...ends, ...all.flatMap((s) => s.values.map((v) => v[0]))])].sort((a, b) => a - b);
  const index = new Map(times.map((t, i) => [t, i]));
  const series = all.slice(0, MAX_SERIES).map((s, i) => {
    const values = times.map(() => /** @type {number | null} */ (null));
    for (const [t, v] of s.values) values[index.get(t) ?? 0] = Number(v);
    return { label: seriesName(s.metric), color: PALETTE[i % PALETTE.length], values };
  });
  if (all.length > MAX_SERIES) graph.append(el("p", { class: "muted" }, `${all.length} series; the graph shows the first ${MAX_SERIES}, the table all of them.`));
  timeChart(graph, { xs: times, series, height: 320, onSelect: (a, b) => nav({ from: String(a), to: String(b) }) });
}

/**
 * @param {HTMLElement} table
 * @param {string} expr
 * @param {import("./util.js").TimeRange} range evaluated at its end
 */
async function drawTable(table, expr, range) {
  /** @type {import("./util.js").PromResponse<import("./util.js").PromQueryData>} */
  const response = await fetchJson(`/api/v1/query?${new URLSearchParams({ query: expr, time: String(range.end / 1000) })}`);
  const data = response.data;
  /** @type {Array<[string, string]>} */
  let rows;
  if (data.resultType === "vector") rows = data.result.map((s) => [seriesName(s.metric), formatValue(Number(s.value[1]))]);
  else if (data.resultType === "matrix") rows = data.result.map((s) => [seriesName(s.metric), s.values.map((v) => `${formatValue(Number(v[1]))} @${v[0]}`).join("\n")]);
  else rows = [[data.resultType, String(data.result[1])]];
  const body = el("tbody", {}, ...rows.map(([name, value]) => el("tr", {}, el("td", { class: "series" }, name), el("td", { class: "num" }, value))));
  table.append(el("table", { class: "panel-table explore-result" }, el("thead", {}, el("tr", {}, el("th", {}, "Series"), el("th", {}, `Value at ${new Date(range.end).toISOString()}`))), body));
  if (!rows.length) table.append(emptyChart("no series at the end of the range"));
}

// @ts-check
// Logs (Discover): query bar, time range, volume histogram by severity,
// field sidebar, results newest first, expandable records, load more, live
// tail and context. State: `#/logs?q=&from=&to=&open=<record id>&tail=1`.

import { $, el, fetchJson, go, hashFor, remember, timeRange, msToNanos, formatTime, rangePicker, fieldsTable, errorBox, serviceChip, streamEvents, PALETTE } from "./util.js";
import { timeChart, emptyChart } from "./chart.js";
import { savedSearches } from "./saved.js";

/** @typedef {import("./util.js").LogRecord} LogRecord */

/**
 * `GET /api/logs`: a page of matching records, newest first.
 * @typedef {object} LogPage
 * @property {LogRecord[]} records
 * @property {number} total_hits matching records in all
 * @property {string | null} next_cursor pass as `cursor` for the next page; null on the last
 */

/**
 * `GET /api/logs/histogram`: matching records per bucket and severity.
 * @typedef {object} LogHistogram
 * @property {number} interval bucket width, nanoseconds
 * @property {Array<{start: number, count: number, by_severity: Record<string, number>}>} buckets
 */

/**
 * `GET /api/logs/terms`: top values of a field among the newest matching records.
 * @typedef {object} LogTerms
 * @property {string} field
 * @property {number} sampled records looked at
 * @property {number} present records that have the field
 * @property {Array<{value: string, count: number}>} values
 */

/**
 * `GET /api/logs/stats`: a query's pipes (`| stats`, `| timechart`) over every matching record.
 * @typedef {object} StatsTable
 * @property {string[]} columns the groups (a timechart's `_time` first, epoch ms), then the metrics
 * @property {number} groups how many columns are groups
 * @property {Array<Array<string | number | boolean | null>>} rows
 * @property {number} matched records the query matched in the range
 * @property {number} [span] a timechart's bucket width, nanoseconds
 * @property {string[]} warnings what makes the table incomplete
 * @property {number} took_ms
 */

/**
 * One template of a service's messages (`GET /api/logs/patterns`).
 * @typedef {object} LogPattern
 * @property {string} service
 * @property {string} pattern variable tokens as `<*>`, masked ids as `<uuid>`, `<ipv4>`, …
 * @property {number} count records of the sample (after `since`) in the pattern
 * @property {number} count_before records of the sample before `since`
 * @property {number} rate per minute of the time the sample covers
 * @property {number} rate_before
 * @property {number} first_seen nanoseconds
 * @property {number} last_seen nanoseconds
 * @property {string} example the newest message
 * @property {number[]} series counts per bucket of the range
 * @property {"new" | "grown" | "steady" | "shrunk" | "gone"} [change] with `since` only
 */

/**
 * `GET /api/logs/patterns`: a bounded sample of the matching records' messages, clustered.
 * @typedef {object} PatternList
 * @property {number} start
 * @property {number} end
 * @property {number | null} since
 * @property {number} bucket_ns
 * @property {number} sampled records mined (after `since`)
 * @property {number} matched records that matched (after `since`)
 * @property {number} covered_from the sample covers from here to `end`
 * @property {number | null} sampled_before
 * @property {number | null} matched_before
 * @property {number | null} covered_before_from
 * @property {number} skipped records of services past the limit
 * @property {LogPattern[]} patterns
 * @property {number} took_ms
 */

/** `GET /api/logs/context/{id}`: the record and its neighbours in its stream. @typedef {{records: LogRecord[]}} LogContext */

/** A result row, holding the record it shows. @typedef {HTMLElement & {record: LogRecord}} LogRow */

/** Filters the query by a field's value, or excludes it. @typedef {{filter: (field: string, value: string, exclude: boolean) => void}} FilterState */

const PAGE = 100;
const SEVERITIES = ["FATAL", "ERROR", "WARN", "INFO", "DEBUG", "TRACE", ""];
/** @type {Record<string, string>} */
const SEVERITY_COLORS = { FATAL: "#6e0b0b", ERROR: "#cf222e", WARN: "#d4a72c", INFO: "#2da44e", DEBUG: "#8c959f", TRACE: "#c4c9d0", "": "#57606a" };
const SIDEBAR_FIELDS = ["service", "severity_text", "resource.k8s.namespace.name", "resource.k8s.pod.name"];
const HELP = [
  ["payment declined", "words in the message (any case)"],
  ["gateway  shop-prod", "a whole service, namespace, pod, container, node or host name"],
  ['"payment declined"', "a phrase"],
  ["service:order AND severity:error", "fields (severity in any case), AND / OR / NOT, parentheses"],
  ["request_id:abc123  trace_id:…", "one request or trace"],
  ["request_id:*", "records that have the field"],
  ["user_id:42  http.status:[500 TO 599]", "parsed attributes, ranges"],
  ["ship*  NOT debug", "wildcards, exclusions"],
  ["severity:error | stats count() by service, error_type | sort -count", "a table over every match: count, avg, sum, min, max, p50…p99, distinct (field) … by fields"],
  ["* | stats p95(duration_ms), distinct(user_id) by resource.k8s.namespace.name | head 10", "resource keys, percentiles, distinct values, top N"],
  ["service:checkout | timechart span=1m count() by severity", "a chart over time, one series per value (10 largest)"],
];

/**
 * Whether a query has pipes: a `|` outside quotes and `/regex/` (the
 * store's `pipes::has_pipes`).
 * @param {string} query
 * @returns {boolean}
 */
export function hasPipes(query) {
  let quoted = false;
  let regex = false;
  let escaped = false;
  let previous = " ";
  for (const c of query) {
    if (escaped) escaped = false;
    else if (c === "\\") escaped = true;
    else if (quoted) quoted = c !== '"';
    else if (regex) regex = c !== "/";
    else if (c === '"') quoted = true;
    else if (c === "/" && previous === ":") regex = true;
    else if (c === "|") return true;
    previous = c;
  }
  return false;
}

/**
 * The query language's name of a record field (the sidebar's filters).
 * @param {string} field
 * @returns {string}
 */
function queryField(field) {
  if (field === "severity_text") return "severity";
  if (field.startsWith("attributes.")) return field.slice("attributes.".length);
  return field;
}

/**
 * @param {string} value
 * @returns {string} the value as a quoted phrase of the query language
 */
function quote(value) {
  return `"${String(value).replace(/\\/g, "\\\\").replace(/"/g, '\\"')}"`;
}

/**
 * Adds `field:value` (or `NOT field:value`) to the query.
 * @param {string} query
 * @param {string} field
 * @param {string} value
 * @param {boolean} exclude
 * @returns {string}
 */
export function withFilter(query, field, value, exclude) {
  const clause = `${exclude ? "NOT " : ""}${queryField(field)}:${quote(value)}`;
  const trimmed = query.trim();
  return trimmed ? `${trimmed} AND ${clause}` : exclude ? `* AND ${clause}` : clause;
}

/**
 * A table cell linking a request or trace id to its view.
 * @param {"request" | "trace"} kind
 * @param {string | undefined} id
 * @returns {HTMLElement}
 */
function idLink(kind, id) {
  if (!id) return el("td", { class: kind });
  const href = kind === "trace" ? hashFor("trace", id) : hashFor("request", id);
  const anchor = el("a", { class: `id ${kind}-link`, href, title: id }, kind === "trace" ? `${id.slice(0, 12)}…` : id);
  anchor.dataset.id = id;
  return el("td", { class: kind }, anchor);
}

/**
 * One result row; log content goes in as text only.
 * @param {LogRecord} record
 * @returns {LogRow}
 */
function logRow(record) {
  const severity = record.severity_text || "UNSET";
  const row = /** @type {LogRow} */ (el(
    "tr",
    { class: `log-row sev-${severity.replace(/[^A-Za-z]/g, "")}`, "data-id": record.id },
    el("td", { class: "time" }, formatTime(record.timestamp)),
    el("td", { class: "service" }, record.service),
    el("td", { class: "level" }, record.severity_text),
    el("td", { class: "body" }, record.body),
    idLink("request", record.request_id),
    idLink("trace", record.trace_id),
  ));
  row.record = record;
  return row;
}

/**
 * Renders records into `tbody` (appending); exported for the perf hook.
 * @param {HTMLElement} tbody
 * @param {LogRecord[]} records
 */
export function renderRows(tbody, records) {
  const fragment = document.createDocumentFragment();
  for (const record of records) fragment.append(logRow(record));
  tbody.append(fragment);
}

/**
 * The expanded record: its fields with filter buttons, its JSON, links and context.
 * @param {LogRecord} record
 * @param {FilterState} state
 * @returns {HTMLElement}
 */
function detailRow(record, state) {
  const { id, ...rest } = record;
  const copy = el("button", { type: "button", class: "copy" }, "Copy JSON");
  const json = JSON.stringify(rest, null, 2);
  copy.addEventListener("click", async () => {
    try {
      await navigator.clipboard.writeText(json);
      copy.textContent = "Copied";
    } catch {
      const range = document.createRange();
      range.selectNodeContents(pre);
      getSelection().removeAllRanges();
      getSelection().addRange(range);
      copy.textContent = "Selected: press Ctrl+C";
    }
  });
  const contextButton = el("button", { type: "button", class: "show-context" }, "Show context");
  const contextBox = el("div", { class: "context" });
  contextButton.addEventListener("click", () => showContext(record, contextBox));
  const pre = el("pre", { class: "raw-json" }, json);
  const links = el("div", { class: "detail-links" });
  if (record.trace_id) links.append(el("a", { href: hashFor("trace", record.trace_id, record.span_id ? new URLSearchParams({ span: record.span_id }) : null) }, "Open trace"));
  if (record.request_id || record.trace_id) links.append(el("a", { href: hashFor("request", record.request_id || record.trace_id) }, "Request view"));
  const table = fieldsTable(rest, (row, key, value) => {
    const plus = el("button", { type: "button", class: "mini filter-in", title: "filter for value" }, "+");
    const minus = el("button", { type: "button", class: "mini filter-out", title: "filter out value" }, "−");
    plus.addEventListener("click", () => state.filter(key, value, false));
    minus.addEventListener("click", () => state.filter(key, value, true));
    row.append(el("td", { class: "actions" }, plus, minus));
  });
  return el("tr", { class: "log-detail" }, el("td", { colspan: 6 }, el("div", { class: "detail-bar" }, copy, contextButton, links), table, pre, contextBox));
}

/**
 * @param {LogRecord} record
 * @param {HTMLElement} box
 */
async function showContext(record, box) {
  box.replaceChildren(el("p", { class: "muted" }, "loading context…"));
  try {
    /** @type {LogContext} */
    const result = await fetchJson(`/api/logs/context/${encodeURIComponent(record.id)}?before=10&after=10`);
    const table = el("table", { class: "context-table" });
    for (const hit of result.records) {
      const row = el("tr", { class: hit.id === record.id ? "context-row anchor" : "context-row" }, el("td", { class: "time" }, formatTime(hit.timestamp)), el("td", { class: "level" }, hit.severity_text), el("td", { class: "body" }, hit.body));
      table.append(row);
    }
    box.replaceChildren(el("h4", {}, `Context in the record's stream (${result.records.length} records)`), table);
  } catch (error) {
    box.replaceChildren(errorBox(error));
  }
}

/**
 * The query with a caret under the position a 400 names.
 * @param {string} query
 * @param {Error} error
 * @returns {HTMLElement}
 */
function queryError(query, error) {
  const box = el("div", { class: "query-error", role: "alert" }, el("strong", {}, "Query error: "), error.message);
  // tantivy's `position N` counts from 0, the pipes' `at character N` from 1.
  const match = /position (\d+)/.exec(error.message);
  const character = /at character (\d+)/.exec(error.message);
  if (match || character) {
    const position = Math.min(match ? Number(match[1]) : Number(character?.[1]) - 1, query.length);
    box.append(el("pre", { class: "caret" }, `${query}\n${" ".repeat(position)}^`));
  }
  return box;
}

/**
 * `#/logs`.
 * @param {HTMLElement} root
 * @param {import("./util.js").View} view
 * @param {import("./util.js").ViewContext} ctx
 */
export function render(root, view, ctx) {
  const params = view.params;
  const query = params.get("q") || "";
  const range = timeRange(params);
  const apiRange = { start: msToNanos(range.start), end: msToNanos(range.end) };
  /** @type {(changes: Record<string, string | null>) => void} */
  const nav = (changes) => {
    const next = new URLSearchParams(params);
    for (const [key, value] of Object.entries(changes)) {
      if (value === null) next.delete(key);
      else next.set(key, value);
    }
    next.delete("open");
    go("logs", "", next);
  };
  /** @type {FilterState} */
  const state = { filter: (field, value, exclude) => nav({ q: withFilter(/** @type {HTMLInputElement} */ ($("#query")).value, field, value, exclude) }) };

  const input = /** @type {HTMLInputElement} */ (el("input", { id: "query", name: "q", type: "search", spellcheck: "false", value: query, placeholder: 'request_id:abc123   service:order AND severity:ERROR   "payment declined"' }));
  const helpButton = el("button", { type: "button", id: "help-button", class: "secondary", title: "query syntax" }, "?");
  const help = el("div", { id: "syntax-help", class: "syntax-help" }, el("h4", {}, "Query syntax"));
  for (const [example, meaning] of HELP) {
    const code = el("code", { class: "example" }, example);
    code.addEventListener("click", () => {
      input.value = example;
      input.focus();
    });
    help.append(el("div", {}, code, el("span", { class: "muted" }, ` ${meaning}`)));
  }
  help.hidden = true;
  helpButton.addEventListener("click", () => (help.hidden = !help.hidden));
  const tailing = params.get("tail") === "1";
  const tailButton = el("button", { type: "button", id: "tail-button", class: tailing ? "active secondary" : "secondary" }, tailing ? "Stop tail" : "Live tail");
  tailButton.addEventListener("click", () => nav({ tail: tailing ? null : "1" }));
  const patternsView = params.get("view") === "patterns";
  const patternsButton = el("button", { type: "button", id: "patterns-button", class: patternsView ? "active secondary" : "secondary", title: "the messages clustered into templates, new and grown ones first" }, "Patterns");
  patternsButton.addEventListener("click", () => nav({ view: patternsView ? null : "patterns", tail: null }));
  const saved = savedSearches(input, (q) => nav({ q }));
  const form = el("form", { id: "search-form", autocomplete: "off" }, input, helpButton, rangePicker(params, (from, to) => nav({ from, to })), el("button", { id: "search-button", type: "submit" }, "Search"), tailButton, patternsButton, ...saved.buttons);
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    nav({ q: input.value });
  });
  const errorSlot = el("div", { id: "query-error-slot" });
  const status = el("div", { id: "status", role: "status" }, "searching…");
  const histogram = el("div", { id: "histogram", class: "chart" });
  const sidebar = el("aside", { id: "fields" }, el("h3", {}, "Fields"));
  const tbody = el("tbody");
  const table = el("table", { id: "results" }, el("thead", {}, el("tr", {}, el("th", { class: "time" }, "Time"), el("th", {}, "Service"), el("th", {}, "Level"), el("th", {}, "Message"), el("th", {}, "Request"), el("th", {}, "Trace"))), tbody);
  const more = el("button", { type: "button", id: "load-more", class: "secondary" }, "Load more");
  more.hidden = true;
  if (hasPipes(query)) {
    root.append(el("section", { id: "logs-view" }, form, help, saved.panel, errorSlot, histogram, status));
    showStats(root, query, apiRange, { chart: histogram, status, errorSlot, zoom: (from, to) => nav({ from, to }) });
    return;
  }
  if (patternsView) {
    root.append(el("section", { id: "logs-view" }, form, help, saved.panel, errorSlot, status));
    showPatterns(root, query, range, { status, errorSlot, filter: state.filter });
    return;
  }
  root.append(el("section", { id: "logs-view" }, form, help, saved.panel, errorSlot, histogram, el("div", { class: "discover" }, sidebar, el("div", { class: "results-pane" }, status, table, more))));

  tbody.addEventListener("click", (event) => {
    const target = /** @type {Element} */ (event.target);
    if (target.closest("a, button")) return;
    const row = /** @type {LogRow | null} */ (target.closest("tr.log-row"));
    if (!row) return;
    toggle(row);
  });
  /** @type {(row: LogRow, open?: boolean) => void} */
  const toggle = (row, open) => {
    const next = row.nextElementSibling;
    const isOpen = next && next.classList.contains("log-detail");
    if (isOpen && open !== true) {
      next.remove();
      row.classList.remove("open");
      const p = new URLSearchParams(params);
      p.delete("open");
      remember("logs", "", p);
    } else if (!isOpen) {
      row.after(detailRow(row.record, state));
      row.classList.add("open");
      const p = new URLSearchParams(params);
      p.set("open", row.record.id);
      remember("logs", "", p);
    }
  };

  let total = 0;
  let shown = 0;
  /** @type {string | null} */
  let cursor = null;
  const updateStatus = () => {
    status.textContent = `${total} matching records, showing ${shown}${tailing ? " · live tail on" : ""}`;
    more.hidden = !cursor;
  };
  const load = async () => {
    const api = new URLSearchParams({ q: query, limit: String(PAGE), ...apiRange });
    if (cursor) api.set("cursor", cursor);
    const started = performance.now();
    /** @type {LogPage} */
    const result = await fetchJson(`/api/logs?${api}`);
    const fetched = performance.now();
    renderRows(tbody, result.records);
    ctx.perf.lastLogRender = { rows: result.records.length, fetchMs: fetched - started, renderMs: performance.now() - fetched };
    total = result.total_hits;
    shown += result.records.length;
    cursor = result.next_cursor || null;
    updateStatus();
    return result.records;
  };
  more.addEventListener("click", () => load().catch((error) => errorSlot.replaceChildren(errorBox(error))));

  const search = async () => {
    try {
      await load();
      const open = params.get("open");
      if (open) {
        const row = [.../** @type {NodeListOf<LogRow>} */ (tbody.querySelectorAll("tr.log-row"))].find((r) => r.record.id === open);
        if (row) toggle(row, true);
      }
      root.dataset.loaded = "1";
      if (ctx.perf.firstDataRender === undefined) ctx.perf.firstDataRender = performance.now();
    } catch (error) {
      status.textContent = "";
      errorSlot.replaceChildren(error.status === 400 ? queryError(query, error) : errorBox(error));
      root.dataset.loaded = "error";
      return;
    }
    drawHistogram(histogram, query, range, apiRange, (from, to) => nav({ from, to }));
    fillSidebar(sidebar, query, apiRange, state);
  };
  search();

  if (tailing) {
    const stop = new AbortController();
    /** @type {(data: string) => void} */
    const onRecord = (data) => {
      /** @type {LogRecord} */
      let record;
      try {
        record = JSON.parse(data);
      } catch {
        return;
      }
      const row = logRow(record);
      row.classList.add("tailed");
      tbody.prepend(row);
      total += 1;
      shown += 1;
      updateStatus();
      while (tbody.children.length > 2000) tbody.lastElementChild.remove();
    };
    streamEvents(`/api/logs/tail?${new URLSearchParams({ q: query })}`, {
      onEvent: (name, data) => name === "record" && onRecord(data),
      onError: () => (status.textContent = `${status.textContent.replace(/ · tail.*$/, "")} · tail reconnecting…`),
      signal: stop.signal,
    });
    ctx.onLeave(() => stop.abort());
  }
}

/**
 * The Patterns tab: the matching messages clustered into templates per
 * service, comparing the second half of the range with the first (new and
 * grown patterns first), each with its counts over the range.
 * @param {HTMLElement} root
 * @param {string} query
 * @param {{start: number, end: number}} range milliseconds
 * @param {{status: HTMLElement, errorSlot: HTMLElement, filter: FilterState["filter"]}} slots
 */
async function showPatterns(root, query, range, { status, errorSlot, filter }) {
  status.textContent = "mining patterns…";
  const since = msToNanos(Math.round((range.start + range.end) / 2));
  /** @type {PatternList} */
  let result;
  try {
    result = await fetchJson(`/api/logs/patterns?${new URLSearchParams({ q: query, start: msToNanos(range.start), end: msToNanos(range.end), since })}`);
  } catch (error) {
    status.textContent = "";
    errorSlot.replaceChildren(error.status === 400 ? queryError(query, error) : errorBox(error));
    root.dataset.loaded = "error";
    return;
  }
  const sinceText = formatTime(Number(since));
  const count = result.patterns.length;
  status.textContent = `${count} pattern${count === 1 ? "" : "s"} in ${result.sampled} of ${result.matched} records since ${sinceText} and ${result.sampled_before} of ${result.matched_before} before · ${result.took_ms} ms`;
  if (result.skipped) errorSlot.append(el("div", { class: "query-warning", role: "note" }, `${result.skipped} records of further services were not mined`));
  const body = el("tbody");
  for (const pattern of result.patterns) {
    const max = Math.max(1, ...pattern.series);
    const trend = el("span", { class: "sparkline", title: `counts over the range, ${pattern.series.length} buckets` });
    for (const count of pattern.series) {
      // Through the CSSOM: the page's CSP refuses style attributes.
      const bar = el("span", { class: "spark" });
      bar.style.height = `${Math.round((count / max) * 100)}%`;
      trend.append(bar);
    }
    const change = pattern.change || "";
    const service = el("a", { href: "#", class: "pattern-service", title: `only ${pattern.service}` }, pattern.service);
    service.addEventListener("click", (event) => {
      event.preventDefault();
      filter("service", pattern.service, false);
    });
    body.append(
      el(
        "tr",
        { class: "pattern-row", "data-change": change },
        el("td", {}, change ? el("span", { class: `change change-${change}` }, change) : ""),
        el("td", {}, service),
        el("td", { class: "pattern", title: pattern.example }, el("code", {}, pattern.pattern)),
        el("td", { class: "num", title: `${pattern.count_before} before ${sinceText}` }, String(pattern.count)),
        el("td", {}, trend),
      ),
    );
  }
  const head = el("tr", {}, el("th", {}, "change"), el("th", {}, "service"), el("th", {}, "pattern"), el("th", {}, "count"), el("th", {}, "over time"));
  root.querySelector("#logs-view").append(el("table", { id: "patterns-table", class: "stats" }, el("thead", {}, head), body));
  root.dataset.loaded = "1";
}

/**
 * A query with pipes: its table, with a bar per row's first metric, and a
 * timechart's series over time.
 * @param {HTMLElement} root
 * @param {string} query
 * @param {{start: string, end: string}} apiRange
 * @param {{chart: HTMLElement, status: HTMLElement, errorSlot: HTMLElement, zoom: (from: string, to: string) => void}} slots
 */
async function showStats(root, query, apiRange, { chart, status, errorSlot, zoom }) {
  status.textContent = "computing…";
  /** @type {StatsTable} */
  let result;
  try {
    result = await fetchJson(`/api/logs/stats?${new URLSearchParams({ q: query, ...apiRange })}`);
  } catch (error) {
    status.textContent = "";
    errorSlot.replaceChildren(error.status === 400 ? queryError(query, error) : errorBox(error));
    root.dataset.loaded = "error";
    return;
  }
  const { columns, rows } = result;
  const timechart = columns[0] === "_time";
  const firstMetric = result.groups;
  status.textContent = `${result.matched} matching records · ${rows.length} rows · ${result.took_ms} ms`;
  for (const warning of result.warnings) errorSlot.append(el("div", { class: "query-warning", role: "note" }, warning));
  const max = Math.max(1, ...rows.map((row) => Number(row[firstMetric]) || 0));
  const head = el("tr", {}, ...columns.map((column) => el("th", {}, column === "_time" ? "time" : column)));
  const body = el("tbody");
  // A timechart's table lists the buckets that have records (the chart shows the empty ones).
  const shown = timechart ? rows.filter((row) => row.slice(firstMetric).some((v) => v !== null && v !== 0)) : rows;
  for (const row of shown) {
    const tr = el("tr", { class: "stats-row" });
    row.forEach((value, i) => {
      const time = i === 0 && timechart;
      const text = value === null ? "–" : time ? formatTime(Number(value) * 1e6) : String(value);
      const cell = el("td", { class: typeof value === "number" && !time ? "num" : "" }, text);
      if (i === firstMetric && typeof value === "number") {
        // Through the CSSOM: the page's CSP refuses style attributes.
        const bar = el("span", { class: "stats-bar" });
        bar.style.width = `${Math.round((value / max) * 100)}%`;
        cell.append(bar);
      }
      tr.append(cell);
    });
    body.append(tr);
  }
  root.querySelector("#logs-view").append(el("table", { id: "stats-table", class: "stats" }, el("thead", {}, head), body));
  if (timechart) drawTimechart(chart, result, zoom);
  else chart.hidden = true;
  root.dataset.loaded = "1";
}

/**
 * A timechart's rows as lines: one per series (`by` value) of the first
 * metric, or one per metric without `by`.
 * @param {HTMLElement} container
 * @param {StatsTable} result
 * @param {(from: string, to: string) => void} zoom
 */
function drawTimechart(container, result, zoom) {
  const { columns, rows } = result;
  const split = result.groups === 2;
  const times = [...new Set(rows.map((row) => Number(row[0])))].sort((a, b) => a - b);
  if (!times.length) {
    container.replaceChildren(emptyChart("no records in this range"));
    return;
  }
  const at = new Map(times.map((t, i) => [t, i]));
  /** @type {Map<string, Array<number | null>>} */
  const lines = new Map();
  const line = (/** @type {string} */ label) => {
    if (!lines.has(label)) lines.set(label, times.map(() => /** @type {number | null} */ (null)));
    return /** @type {Array<number | null>} */ (lines.get(label));
  };
  for (const row of rows) {
    const index = /** @type {number} */ (at.get(Number(row[0])));
    if (split) line(String(row[1]))[index] = /** @type {number | null} */ (row[2]);
    else columns.slice(1).forEach((name, i) => (line(name)[index] = /** @type {number | null} */ (row[i + 1])));
  }
  const series = [...lines.entries()].map(([label, values], i) => ({ label, color: PALETTE[i % PALETTE.length], values: values.map((v) => (v === null ? 0 : v)) }));
  container.replaceChildren();
  timeChart(container, { xs: times.map((t) => t / 1000), series, height: 220, onSelect: (a, b) => zoom(String(a), String(b)) });
}

/**
 * The volume histogram by severity; a drag or a click on a bar zooms in.
 * @param {HTMLElement} container
 * @param {string} query
 * @param {import("./util.js").TimeRange} range
 * @param {{start: string, end: string}} apiRange
 * @param {(from: string, to: string) => void} zoom
 */
async function drawHistogram(container, query, range, apiRange, zoom) {
  const span = range.end - range.start;
  const interval = Math.max(1000, Math.round(span / 60 / 1000) * 1000);
  try {
    /** @type {LogHistogram} */
    const result = await fetchJson(`/api/logs/histogram?${new URLSearchParams({ q: query, ...apiRange, interval: `${interval}ms` })}`);
    const buckets = result.buckets || [];
    if (!buckets.length) {
      container.replaceChildren(emptyChart("no records in this range"));
      return;
    }
    const xs = buckets.map((b) => b.start / 1e9);
    const present = SEVERITIES.filter((sev) => buckets.some((b) => (b.by_severity || {})[sev]));
    /** @type {(b: LogHistogram["buckets"][number]) => number} */
    const others = (b) => Object.entries(b.by_severity || {}).filter(([sev]) => !SEVERITIES.includes(sev)).reduce((sum, [, n]) => sum + n, 0);
    const series = present.map((sev) => ({ label: sev || "none", color: SEVERITY_COLORS[sev], values: buckets.map((b) => (b.by_severity || {})[sev] || 0) }));
    if (buckets.some(others)) series.push({ label: "other", color: "#0e8a8a", values: buckets.map(others) });
    const width = (result.interval || interval * 1e6) / 1e6;
    container.replaceChildren();
    timeChart(container, {
      xs,
      series,
      height: 140,
      bars: true,
      onSelect: (a, b) => zoom(String(a), String(b)),
      onClick: (index) => zoom(String(Math.floor(xs[index] * 1000)), String(Math.floor(xs[index] * 1000 + width))),
    });
  } catch (error) {
    container.replaceChildren(errorBox(error));
  }
}

/**
 * The field sidebar: top values of the common fields and of the attributes
 * of a sample of matching records.
 * @param {HTMLElement} sidebar
 * @param {string} query
 * @param {{start: string, end: string}} apiRange
 * @param {FilterState} state
 */
async function fillSidebar(sidebar, query, apiRange, state) {
  /** @type {{records: LogRecord[]}} */
  const sample = await fetchJson(`/api/logs?${new URLSearchParams({ q: query, limit: "50", ...apiRange })}`).catch(() => ({ records: /** @type {LogRecord[]} */ ([]) }));
  /** @type {Map<string, number>} */
  const keys = new Map();
  for (const record of sample.records) {
    for (const key of Object.keys(record.attributes || {})) keys.set(`attributes.${key}`, (keys.get(`attributes.${key}`) || 0) + 1);
  }
  const attributeFields = [...keys.entries()].sort((a, b) => b[1] - a[1]).slice(0, 8).map(([key]) => key);
  for (const field of [...SIDEBAR_FIELDS, ...attributeFields]) {
    const box = el("div", { class: "field", "data-field": field }, el("div", { class: "field-name" }, field));
    sidebar.append(box);
    fetchJson(`/api/logs/terms?${new URLSearchParams({ field, q: query, size: "5", ...apiRange })}`)
      .then((/** @type {LogTerms} */ terms) => {
        if (!terms.values.length) {
          box.remove();
          return;
        }
        const list = el("ul", { class: "top-values" });
        for (const { value, count } of terms.values) {
          const plus = el("button", { type: "button", class: "mini filter-in", title: `${field}: ${value}` }, "+");
          const minus = el("button", { type: "button", class: "mini filter-out", title: `not ${field}: ${value}` }, "−");
          plus.addEventListener("click", () => state.filter(field, value, false));
          minus.addEventListener("click", () => state.filter(field, value, true));
          const pct = terms.present ? Math.round((count / terms.sampled) * 100) : 0;
          const label = field === "service" ? serviceChip(value) : el("span", { class: "term" }, value);
          list.append(el("li", {}, label, el("span", { class: "count" }, `${pct}%`), plus, minus));
        }
        box.append(list);
      })
      .catch(() => box.remove());
  }
}

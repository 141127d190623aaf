// @ts-check
// Shared helpers of the Sightline UI. Data from the server only ever reaches
// the page as text nodes or attribute values (never parsed as HTML): log
// lines and span attributes are attacker-controlled.
//
// The shapes the query API answers with are typed here and in the modules
// that read them (JSDoc, checked with `tsc` by scripts/typecheck); they
// mirror what the handlers in query-ui/src/*.rs answer.

// ---- shapes of the query API ---------------------------------------------

/** @typedef {Record<string, any>} JsonObject A JSON object of any fields (attributes, resources). */

/**
 * One stored log record (`/api/logs`, `/api/logs/context/{id}`, live tail).
 * @typedef {object} LogRecord
 * @property {string} id identifies the record (context lookups) and is its cursor
 * @property {number} timestamp event time, nanoseconds since the epoch
 * @property {number} observed_timestamp
 * @property {string} severity_text
 * @property {number} severity_number OTLP severity number, 0 when unknown
 * @property {string} body
 * @property {string} service
 * @property {JsonObject} resource
 * @property {JsonObject} attributes
 * @property {string} [trace_id]
 * @property {string} [span_id]
 * @property {string} [request_id]
 */

/**
 * One span as the store keeps it.
 * @typedef {object} Span
 * @property {string} trace_id
 * @property {string} span_id
 * @property {string} [parent_span_id]
 * @property {string} name
 * @property {string} service
 * @property {string} [kind] `internal`, `server`, `client`, `producer`, `consumer`
 * @property {number} start_time nanoseconds since the epoch
 * @property {number} end_time
 * @property {"unset" | "ok" | "error"} status
 * @property {string} [status_message]
 * @property {JsonObject} attributes
 * @property {JsonObject} [resource]
 * @property {Array<{time: number, name: string, attributes: JsonObject}>} [events]
 * @property {Array<{trace_id: string, span_id: string, attributes: JsonObject}>} [links]
 * @property {string} [request_id]
 * @property {boolean} [on_critical_path] set by the request story
 * @property {boolean} [error] set by the request story
 */

/**
 * The Jaeger query API's envelope (`/api/services`, `/api/services/{s}/operations`).
 * @template T
 * @typedef {object} JaegerEnvelope
 * @property {T} data
 * @property {number} total
 * @property {number} limit
 * @property {number} offset
 * @property {null | Array<{code: number, msg: string}>} errors
 */

/**
 * The Prometheus HTTP API's success envelope (`/api/v1/...`).
 * @template T
 * @typedef {object} PromResponse
 * @property {"success"} status
 * @property {T} data
 * @property {string[]} [warnings]
 */

/** @typedef {Record<string, string>} PromLabels A series' labels, `__name__` included. */
/** @typedef {[number, string]} PromPoint Unix seconds and the value as Prometheus formats it. */
/** @typedef {{metric: PromLabels, value: PromPoint}} PromSample One sample of an instant vector. */
/** @typedef {{metric: PromLabels, values: PromPoint[]}} PromSeries One series of a range query's matrix. */
/**
 * One series of `/api/v1/query_exemplars`: its labels and its exemplars
 * (`labels` with `trace_id`, `span_id`; `value` as Prometheus formats it;
 * `timestamp` in Unix seconds).
 * @typedef {{seriesLabels: PromLabels, exemplars: Array<{labels: PromLabels, value: string, timestamp: number}>}} PromSeriesExemplars
 */

/**
 * `data` of `/api/v1/query` (`/api/v1/query_range` answers the matrix form only).
 * @typedef {{resultType: "vector", result: PromSample[]}
 *   | {resultType: "matrix", result: PromSeries[]}
 *   | {resultType: "scalar", result: PromPoint}
 *   | {resultType: "string", result: PromPoint}} PromQueryData
 */

/**
 * An error answer: ours (`{"error"}`), Jaeger's (`{"errors": [{msg}]}`) or
 * Prometheus' (`{"status": "error", "errorType", "error"}`).
 * @typedef {object} ErrorBody
 * @property {string} [error]
 * @property {"error"} [status] Prometheus'
 * @property {string} [errorType] Prometheus
 * @property {Array<{code: number, msg: string}>} [errors]
 */

// ---- DOM ----------------------------------------------------------------

/**
 * An element's attributes: `undefined`, `null` and `false` leave one out,
 * `true` sets it empty.
 * @typedef {Record<string, string | number | boolean | null | undefined>} Attributes
 */

/** @typedef {Node | string | number | null | undefined | false} Child */

/**
 * The first element matching `selector`.
 * @type {(selector: string, root?: ParentNode) => HTMLElement | null}
 */
export const $ = (selector, root = document) => root.querySelector(selector);

/**
 * An element with attributes; string children become text nodes.
 * @param {string} tag
 * @param {Attributes} [attributes]
 * @param {...Child} children
 * @returns {HTMLElement}
 */
export function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === undefined || value === null || value === false) continue;
    node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

/**
 * An SVG element (the service map).
 * @param {string} tag
 * @param {Record<string, string | number>} [attributes]
 * @param {string | number} [text]
 * @returns {SVGElement}
 */
export function svg(tag, attributes = {}, text) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, String(value));
  if (text !== undefined) node.textContent = String(text);
  return node;
}

/**
 * An in-app link: `href` is a hash route built by [`hashFor`].
 * @param {string} href
 * @param {Child} text
 * @param {string} [className]
 */
export function link(href, text, className) {
  return el("a", { href, class: className }, text);
}

/**
 * Only same-page and http(s) links are followed; `javascript:` and friends are shown as text.
 * @param {unknown} value
 * @returns {string | null}
 */
export function safeUrl(value) {
  if (typeof value !== "string") return null;
  if (value.startsWith("#") || (value.startsWith("/") && !value.startsWith("//"))) return value;
  try {
    const url = new URL(value);
    return url.protocol === "http:" || url.protocol === "https:" ? url.href : null;
  } catch {
    return null;
  }
}

/** A non-2xx answer of the query API, with its status and body. */
export class ApiError extends Error {
  /**
   * @param {string} message the server's message
   * @param {number} status
   * @param {ErrorBody} body
   */
  constructor(message, status, body) {
    super(message);
    this.status = status;
    this.body = body;
  }
}

// ---- the query token ------------------------------------------------------
// When the collector asks for a query token, the UI asks the user once per
// browser tab and keeps it in sessionStorage; it goes out only as an
// `Authorization` header, never in a URL.

const TOKEN_KEY = "sightline.queryToken";

/** @returns {string} the query token of this tab, `""` when none */
export function queryToken() {
  try {
    return sessionStorage.getItem(TOKEN_KEY) || "";
  } catch {
    return "";
  }
}

/** @param {string} token kept for this tab; `""` forgets it */
export function setQueryToken(token) {
  try {
    if (token) sessionStorage.setItem(TOKEN_KEY, token);
    else sessionStorage.removeItem(TOKEN_KEY);
  } catch {
    // storage disabled: the token lasts until the page reloads
  }
}

/** @returns {Record<string, string>} */
function authHeaders() {
  const token = queryToken();
  return token ? { Authorization: `Bearer ${token}` } : {};
}

/**
 * Tells the app the collector refused our token (or that we have none).
 * @param {string} message
 */
function unauthorized(message) {
  window.dispatchEvent(new CustomEvent("sightline:unauthorized", { detail: message }));
}

/**
 * GET a JSON API; non-2xx answers throw an [`ApiError`] with the server's
 * message. The caller names the shape it expects (`@type` on the result);
 * the default is `any`.
 * @param {string} url
 * @param {RequestInit & {headers?: Record<string, string>}} [options]
 * @returns {Promise<any>}
 */
export async function fetchJson(url, options = {}) {
  const headers = { Accept: "application/json", ...authHeaders(), ...(options.headers || {}) };
  const response = await fetch(url, { ...options, headers });
  /** @type {ErrorBody} */
  const body = await response.json().catch(() => ({}));
  if (response.status === 401) unauthorized(body.error || "this collector asks for a query token");
  if (!response.ok) {
    const message =
      body.error ||
      (Array.isArray(body.errors) && body.errors[0] && body.errors[0].msg) ||
      `${response.status} ${response.statusText}`;
    throw new ApiError(message, response.status, body);
  }
  return body;
}

/**
 * Server-Sent Events over fetch (EventSource cannot send the token): calls
 * `onEvent(name, data)` per event, reconnects after a pause while `signal`
 * is not aborted, and `onError(message)` when a connection fails or ends.
 * @param {string} url
 * @param {{onEvent: (name: string, data: string) => void, onError: (message: string) => void, signal: AbortSignal}} handlers
 * @returns {Promise<void>}
 */
export async function streamEvents(url, { onEvent, onError, signal }) {
  while (!signal.aborted) {
    try {
      const response = await fetch(url, { headers: { Accept: "text/event-stream", ...authHeaders() }, signal });
      if (response.status === 401) {
        unauthorized("this collector asks for a query token");
        return;
      }
      if (!response.ok || !response.body) throw new Error(`${response.status} ${response.statusText}`);
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value.replace(/\r\n?/g, "\n");
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          let name = "message";
          const data = [];
          for (const line of block.split("\n")) {
            if (line.startsWith("event:")) name = line.slice(6).trim();
            else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
          }
          if (data.length) onEvent(name, data.join("\n"));
        }
      }
      onError("stream ended");
    } catch (error) {
      if (signal.aborted) return;
      onError(error.message || String(error));
    }
    await new Promise((resolve) => setTimeout(resolve, 2000));
  }
}

// ---- URL state: `#/<view>[/<id>]?<params>` --------------------------------

/**
 * A view's state: `#/<view>[/<id>]?<params>`.
 * @typedef {{view: string, id: string, params: URLSearchParams}} View
 */

/**
 * What the router hands a view besides its state: the perf hook's numbers,
 * cleanups to run when the view is left, and whether it is still shown.
 * @typedef {object} ViewContext
 * @property {import("./perf.js").Perf} perf
 * @property {(cleanup: () => void) => void} onLeave
 * @property {() => boolean} current
 */

/**
 * @param {string} [hash]
 * @returns {View}
 */

export function parseHash(hash = location.hash) {
  const text = hash.replace(/^#/, "");
  const [path, query = ""] = text.split("?", 2);
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  return { view: parts[0] || "logs", id: parts.slice(1).join("/"), params: new URLSearchParams(query) };
}

/**
 * @param {string} view
 * @param {string} [id]
 * @param {URLSearchParams | null} [params]
 * @returns {string}
 */
export function hashFor(view, id, params) {
  let hash = `#/${view}`;
  if (id) hash += `/${encodeURIComponent(id)}`;
  const query = params ? new URLSearchParams([...params].filter(([, v]) => v !== "")).toString() : "";
  return query ? `${hash}?${query}` : hash;
}

/**
 * Moves to another view state; the `hashchange` listener renders it.
 * @param {string} view
 * @param {string} [id]
 * @param {URLSearchParams} [params]
 * @param {{replace?: boolean}} [options]
 */
export function go(view, id, params, { replace = false } = {}) {
  const hash = hashFor(view, id, params);
  if (replace) history.replaceState(null, "", hash);
  else if (location.hash !== hash) location.hash = hash;
}

/**
 * Records a state change that needs no re-render (e.g. an expanded row).
 * @param {string} view
 * @param {string} id
 * @param {URLSearchParams} params
 */
export function remember(view, id, params) {
  history.replaceState(null, "", hashFor(view, id, params));
}

// ---- time ---------------------------------------------------------------

/** @type {Array<[string, string]>} */
export const PRESETS = [
  ["15m", "Last 15 minutes"],
  ["1h", "Last hour"],
  ["6h", "Last 6 hours"],
  ["24h", "Last 24 hours"],
  ["7d", "Last 7 days"],
];

/** @type {Record<string, number>} */
const UNIT_MS = { s: 1e3, m: 60e3, h: 3600e3, d: 86400e3, w: 7 * 86400e3 };

/**
 * `5m` -> 300000; null when not a duration.
 * @param {string} text
 * @returns {number | null}
 */
export function durationMs(text) {
  const match = /^(\d+(?:\.\d+)?)(ms|s|m|h|d|w)$/.exec(String(text).trim());
  if (!match) return null;
  return match[2] === "ms" ? Number(match[1]) : Number(match[1]) * UNIT_MS[match[2]];
}

/**
 * `now`, `now-1h`, epoch milliseconds, or an ISO date -> epoch milliseconds.
 * @param {string | null | undefined} text
 * @param {number} [now]
 * @returns {number | null}
 */
export function timeMs(text, now = Date.now()) {
  if (text === undefined || text === null || text === "" || text === "now") return now;
  const relative = /^now-(.+)$/.exec(text);
  if (relative) {
    const ms = durationMs(relative[1]);
    if (ms !== null) return now - ms;
  }
  if (/^\d+$/.test(text)) return Number(text);
  const parsed = Date.parse(text);
  return Number.isNaN(parsed) ? null : parsed;
}

/**
 * A view's time range: `from` and `to` as written, `start` and `end` in epoch milliseconds.
 * @typedef {{from: string, to: string, start: number, end: number}} TimeRange
 */

/**
 * The view's time range from `from`/`to` (defaults: the last hour).
 * @param {URLSearchParams} params
 * @param {string} [fallback]
 * @returns {TimeRange}
 */
export function timeRange(params, fallback = "now-1h") {
  const now = Date.now();
  const from = params.get("from") || fallback;
  const to = params.get("to") || "now";
  let start = timeMs(from, now);
  let end = timeMs(to, now);
  if (start === null) start = now - 3600e3;
  if (end === null) end = now;
  if (end <= start) end = start + 1000;
  return { from, to, start, end };
}

/**
 * Epoch milliseconds as the decimal nanoseconds the log and trace APIs take.
 * @type {(ms: number) => string}
 */
export const msToNanos = (ms) => (BigInt(Math.floor(ms)) * 1000000n).toString();

/**
 * Nanoseconds since the epoch as local `YYYY-MM-DD hh:mm:ss.mmm`.
 * @param {number | string} nanos
 * @returns {string}
 */
export function formatTime(nanos) {
  const date = new Date(Math.floor(Number(nanos) / 1e6));
  if (Number.isNaN(date.getTime())) return "";
  /** @type {(n: number, w?: number) => string} */
  const pad = (n, w = 2) => String(n).padStart(w, "0");
  return `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())} ${pad(date.getHours())}:${pad(date.getMinutes())}:${pad(date.getSeconds())}.${pad(date.getMilliseconds(), 3)}`;
}

/**
 * Nanoseconds as a short human duration.
 * @param {number} nanos
 * @returns {string}
 */
export function formatDuration(nanos) {
  const ms = nanos / 1e6;
  if (ms < 1) return `${(nanos / 1e3).toFixed(0)} µs`;
  if (ms < 1000) return `${ms.toFixed(ms < 10 ? 2 : 1)} ms`;
  return `${(ms / 1000).toFixed(2)} s`;
}

/**
 * Latency class of a span: green under 100 ms, yellow to 500 ms, red above.
 * @param {number} nanos
 * @returns {"fast" | "medium" | "slow"}
 */
export function latencyClass(nanos) {
  if (nanos < 100e6) return "fast";
  if (nanos <= 500e6) return "medium";
  return "slow";
}

/**
 * The time range picker: presets and absolute from/to; calls `apply(from, to)`.
 * @param {URLSearchParams} params
 * @param {(from: string, to: string) => void} apply
 * @returns {HTMLElement}
 */
export function rangePicker(params, apply) {
  const { from, to, start, end } = timeRange(params);
  const preset = from.startsWith("now-") && to === "now" ? from.slice(4) : "";
  const select = /** @type {HTMLSelectElement} */ (el("select", { class: "range-preset", title: "time range" }));
  for (const [value, label] of PRESETS) select.append(el("option", { value, selected: value === preset }, label));
  select.append(el("option", { value: "custom", selected: preset === "" || !PRESETS.some(([v]) => v === preset) }, "Absolute…"));
  /** @type {(ms: number) => string} */
  const local = (ms) => {
    const date = new Date(ms - new Date(ms).getTimezoneOffset() * 60e3);
    return date.toISOString().slice(0, 19);
  };
  const fromInput = /** @type {HTMLInputElement} */ (el("input", { type: "datetime-local", step: "1", class: "range-from", value: local(start), title: "from" }));
  const toInput = /** @type {HTMLInputElement} */ (el("input", { type: "datetime-local", step: "1", class: "range-to", value: local(end), title: "to" }));
  const absolute = el("span", { class: "range-absolute" }, fromInput, " → ", toInput);
  absolute.hidden = select.value !== "custom";
  select.addEventListener("change", () => {
    if (select.value === "custom") {
      absolute.hidden = false;
      return;
    }
    apply(`now-${select.value}`, "now");
  });
  const onAbsolute = () => {
    const a = Date.parse(fromInput.value);
    const b = Date.parse(toInput.value);
    if (!Number.isNaN(a) && !Number.isNaN(b) && b > a) apply(String(a), String(b));
  };
  fromInput.addEventListener("change", onAbsolute);
  toInput.addEventListener("change", onAbsolute);
  return el("span", { class: "range-picker" }, select, absolute);
}

// ---- colours ------------------------------------------------------------

export const PALETTE = ["#2f6fde", "#e07a10", "#2da44e", "#a371f7", "#cf222e", "#0e8a8a", "#bf3989", "#7d5f00", "#57606a", "#1f883d"];
/** @type {Map<string, number>} */
const serviceIndex = new Map();

/**
 * A stable colour index per service name (CSS classes `svc-0` .. `svc-9`).
 * @param {string} service
 * @returns {number}
 */
export function serviceSlot(service) {
  if (!serviceIndex.has(service)) {
    let hash = 0;
    for (const ch of String(service)) hash = (hash * 31 + ch.codePointAt(0)) >>> 0;
    serviceIndex.set(service, hash % PALETTE.length);
  }
  return serviceIndex.get(service);
}

/** @type {(service: string) => string} */
export const serviceColor = (service) => PALETTE[serviceSlot(service)];

/**
 * A service name in its colour.
 * @param {string} service
 * @returns {HTMLElement}
 */
export function serviceChip(service) {
  return el("span", { class: `svc-chip svc-${serviceSlot(service)}` }, service);
}

/**
 * An alert box with an error's message.
 * @param {any} error an `Error` (its message is shown) or a message
 * @returns {HTMLElement}
 */
export function errorBox(error) {
  return el("div", { class: "error-box", role: "alert" }, error && error.message ? error.message : String(error));
}

/**
 * Key/value table of a JSON object (nested objects flattened with dots).
 * @param {JsonObject} object
 * @param {(row: HTMLElement, key: string, value: string) => void} [onField] adds to each row
 * @returns {HTMLElement}
 */
export function fieldsTable(object, onField) {
  const table = el("table", { class: "fields" });
  /** @type {Array<[string, string]>} */
  const rows = [];
  /** @type {(value: unknown, prefix: string) => void} */
  const walk = (value, prefix) => {
    if (value && typeof value === "object" && !Array.isArray(value)) {
      for (const [key, inner] of Object.entries(value)) walk(inner, prefix ? `${prefix}.${key}` : key);
    } else {
      rows.push([prefix, typeof value === "string" ? value : JSON.stringify(value)]);
    }
  };
  walk(object, "");
  for (const [key, value] of rows) {
    const row = el("tr", {}, el("th", {}, key), el("td", {}, value));
    if (onField) onField(row, key, value);
    table.append(row);
  }
  return table;
}

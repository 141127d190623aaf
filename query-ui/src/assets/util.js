// Shared helpers of the Sightline UI. Data from the server only ever reaches
// the page as text nodes or attribute values (never parsed as HTML): log
// lines and span attributes are attacker-controlled.

export const $ = (selector, root = document) => root.querySelector(selector);

/** An element with attributes; string children become text nodes. */
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

/** An SVG element (the service map). */
export function svg(tag, attributes = {}, text) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, String(value));
  if (text !== undefined) node.textContent = String(text);
  return node;
}

/** An in-app link: `href` is a hash route built by [`hashFor`]. */
export function link(href, text, className) {
  return el("a", { href, class: className }, text);
}

/** Only same-page and http(s) links are followed; `javascript:` and friends are shown as text. */
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

export class ApiError extends Error {
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

export function queryToken() {
  try {
    return sessionStorage.getItem(TOKEN_KEY) || "";
  } catch {
    return "";
  }
}

export function setQueryToken(token) {
  try {
    if (token) sessionStorage.setItem(TOKEN_KEY, token);
    else sessionStorage.removeItem(TOKEN_KEY);
  } catch {
    // storage disabled: the token lasts until the page reloads
  }
}

function authHeaders() {
  const token = queryToken();
  return token ? { Authorization: `Bearer ${token}` } : {};
}

/** Tells the app the collector refused our token (or that we have none). */
function unauthorized(message) {
  window.dispatchEvent(new CustomEvent("sightline:unauthorized", { detail: message }));
}

/** GET a JSON API; non-2xx answers throw an [`ApiError`] with the server's message. */
export async function fetchJson(url, options = {}) {
  const headers = { Accept: "application/json", ...authHeaders(), ...(options.headers || {}) };
  const response = await fetch(url, { ...options, headers });
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

export function parseHash(hash = location.hash) {
  const text = hash.replace(/^#/, "");
  const [path, query = ""] = text.split("?", 2);
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  return { view: parts[0] || "logs", id: parts.slice(1).join("/"), params: new URLSearchParams(query) };
}

export function hashFor(view, id, params) {
  let hash = `#/${view}`;
  if (id) hash += `/${encodeURIComponent(id)}`;
  const query = params ? new URLSearchParams([...params].filter(([, v]) => v !== "")).toString() : "";
  return query ? `${hash}?${query}` : hash;
}

/** Moves to another view state; the `hashchange` listener renders it. */
export function go(view, id, params, { replace = false } = {}) {
  const hash = hashFor(view, id, params);
  if (replace) history.replaceState(null, "", hash);
  else if (location.hash !== hash) location.hash = hash;
}

/** Records a state change that needs no re-render (e.g. an expanded row). */
export function remember(view, id, params) {
  history.replaceState(null, "", hashFor(view, id, params));
}

// ---- time ---------------------------------------------------------------

export const PRESETS = [
  ["15m", "Last 15 minutes"],
  ["1h", "Last hour"],
  ["6h", "Last 6 hours"],
  ["24h", "Last 24 hours"],
  ["7d", "Last 7 days"],
];

const UNIT_MS = { s: 1e3, m: 60e3, h: 3600e3, d: 86400e3, w: 7 * 86400e3 };

/** `5m` -> 300000; null when not a duration. */
export function durationMs(text) {
  const match = /^(\d+(?:\.\d+)?)(ms|s|m|h|d|w)$/.exec(String(text).trim());
  if (!match) return null;
  return match[2] === "ms" ? Number(match[1]) : Number(match[1]) * UNIT_MS[match[2]];
}

/** `now`, `now-1h`, epoch milliseconds, or an ISO date -> epoch milliseconds. */
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

/** The view's time range from `from`/`to` (defaults: the last hour). */
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

export const msToNanos = (ms) => (BigInt(Math.floor(ms)) * 1000000n).toString();

export function formatTime(nanos) {
  const date = new Date(Math.floor(Number(nanos) / 1e6));
  if (Number.isNaN(date.getTime())) return "";
  const pad = (n, w = 2) => String(n).padStart(w, "0");
  return `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())} ${pad(date.getHours())}:${pad(date.getMinutes())}:${pad(date.getSeconds())}.${pad(date.getMilliseconds(), 3)}`;
}

/** Nanoseconds as a short human duration. */
export function formatDuration(nanos) {
  const ms = nanos / 1e6;
  if (ms < 1) return `${(nanos / 1e3).toFixed(0)} µs`;
  if (ms < 1000) return `${ms.toFixed(ms < 10 ? 2 : 1)} ms`;
  return `${(ms / 1000).toFixed(2)} s`;
}

/** Latency class of a span: green under 100 ms, yellow to 500 ms, red above. */
export function latencyClass(nanos) {
  if (nanos < 100e6) return "fast";
  if (nanos <= 500e6) return "medium";
  return "slow";
}

/** The time range picker: presets and absolute from/to; calls `apply(from, to)`. */
export function rangePicker(params, apply) {
  const { from, to, start, end } = timeRange(params);
  const preset = from.startsWith("now-") && to === "now" ? from.slice(4) : "";
  const select = el("select", { class: "range-preset", title: "time range" });
  for (const [value, label] of PRESETS) select.append(el("option", { value, selected: value === preset }, label));
  select.append(el("option", { value: "custom", selected: preset === "" || !PRESETS.some(([v]) => v === preset) }, "Absolute…"));
  const local = (ms) => {
    const date = new Date(ms - new Date(ms).getTimezoneOffset() * 60e3);
    return date.toISOString().slice(0, 19);
  };
  const fromInput = el("input", { type: "datetime-local", step: "1", class: "range-from", value: local(start), title: "from" });
  const toInput = el("input", { type: "datetime-local", step: "1", class: "range-to", value: local(end), title: "to" });
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
const serviceIndex = new Map();

/** A stable colour index per service name (CSS classes `svc-0` .. `svc-9`). */
export function serviceSlot(service) {
  if (!serviceIndex.has(service)) {
    let hash = 0;
    for (const ch of String(service)) hash = (hash * 31 + ch.codePointAt(0)) >>> 0;
    serviceIndex.set(service, hash % PALETTE.length);
  }
  return serviceIndex.get(service);
}

export const serviceColor = (service) => PALETTE[serviceSlot(service)];

export function serviceChip(service) {
  return el("span", { class: `svc-chip svc-${serviceSlot(service)}` }, service);
}

export function errorBox(error) {
  return el("div", { class: "error-box", role: "alert" }, error && error.message ? error.message : String(error));
}

/** Key/value table of a JSON object (nested objects flattened with dots). */
export function fieldsTable(object, onField) {
  const table = el("table", { class: "fields" });
  const rows = [];
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

// Sightline UI. Every piece of data from the server is inserted with
// textContent or as an attribute value, never as HTML: log lines are
// attacker-controlled. The view state lives in the URL.

const $ = (selector) => document.querySelector(selector);

const RANGES = { "15m": 15 * 60, "1h": 3600, "24h": 86400, "7d": 7 * 86400 };

function element(tag, attributes = {}, text) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  if (text !== undefined) node.textContent = text;
  return node;
}

function formatTime(nanos) {
  const millis = Math.floor(nanos / 1e6);
  const date = new Date(millis);
  return date.toISOString().replace("T", " ").replace("Z", "");
}

function setStatus(text, isError = false) {
  const status = $("#status");
  status.textContent = text;
  status.classList.toggle("error", isError);
}

async function fetchJson(url) {
  const response = await fetch(url, { headers: { Accept: "application/json" } });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    const message = body.error || (body.errors && body.errors[0] && body.errors[0].msg) || response.statusText;
    throw new Error(message);
  }
  return body;
}

function idLink(kind, id) {
  const cell = element("td");
  if (!id) return cell;
  const params = kind === "trace" ? new URLSearchParams({ trace: id }) : new URLSearchParams({ q: `request_id:${id}`, range: "all" });
  const link = element("a", { class: `id ${kind}-link`, href: `/?${params}` }, kind === "trace" ? id.slice(0, 12) + "…" : id);
  link.dataset.id = id;
  link.addEventListener("click", (event) => {
    event.preventDefault();
    navigate(params);
  });
  cell.append(link);
  return cell;
}

function renderLogs(records, total) {
  const body = $("#results tbody");
  body.replaceChildren();
  for (const record of records) {
    const row = element("tr", { class: `log-row sev-${record.severity_text || "UNSET"}` });
    row.append(
      element("td", { class: "time" }, formatTime(record.timestamp)),
      element("td", { class: "service" }, record.service),
      element("td", { class: "level" }, record.severity_text),
      element("td", { class: "body" }, record.body),
      idLink("request", record.request_id),
      idLink("trace", record.trace_id),
    );
    body.append(row);
  }
  setStatus(`${total} matching records${total > records.length ? `, showing the newest ${records.length}` : ""}`);
}

async function searchLogs(params) {
  $("#logs-view").hidden = false;
  $("#trace-view").hidden = true;
  const query = params.get("q") || "";
  const range = params.get("range") || "1h";
  $("#query").value = query;
  $("#range").value = range;
  const api = new URLSearchParams({ q: query, limit: "200" });
  if (RANGES[range]) {
    const nowNanos = BigInt(Date.now()) * 1000000n;
    api.set("start", String(nowNanos - BigInt(RANGES[range]) * 1000000000n));
  }
  setStatus("searching…");
  try {
    const result = await fetchJson(`/api/logs?${api}`);
    renderLogs(result.records, result.total_hits);
  } catch (error) {
    $("#results tbody").replaceChildren();
    setStatus(error.message, true);
  }
}

function latencyClass(micros) {
  if (micros < 100000) return "fast";
  if (micros <= 500000) return "medium";
  return "slow";
}

function spanDepths(spans) {
  const byId = new Map(spans.map((span) => [span.spanID, span]));
  const depth = new Map();
  const depthOf = (span, seen = new Set()) => {
    if (depth.has(span.spanID)) return depth.get(span.spanID);
    const parentRef = span.references.find((ref) => ref.refType === "CHILD_OF");
    const parent = parentRef && byId.get(parentRef.spanID);
    const value = parent && !seen.has(parent.spanID) ? depthOf(parent, seen.add(span.spanID)) + 1 : 0;
    depth.set(span.spanID, value);
    return value;
  };
  spans.forEach((span) => depthOf(span));
  return depth;
}

async function showTrace(traceId) {
  $("#logs-view").hidden = true;
  $("#trace-view").hidden = false;
  $("#trace-title").textContent = `Trace ${traceId}`;
  const waterfall = $("#waterfall");
  waterfall.replaceChildren();
  try {
    const result = await fetchJson(`/api/traces/${encodeURIComponent(traceId)}`);
    const trace = result.data[0];
    const spans = [...trace.spans].sort((a, b) => a.startTime - b.startTime);
    const start = Math.min(...spans.map((s) => s.startTime));
    const end = Math.max(...spans.map((s) => s.startTime + s.duration));
    const total = Math.max(end - start, 1);
    const services = new Set(spans.map((s) => trace.processes[s.processID].serviceName));
    $("#trace-summary").textContent = `${spans.length} spans · ${services.size} services (${[...services].join(", ")}) · ${(total / 1000).toFixed(1)} ms`;
    const depths = spanDepths(spans);
    for (const span of spans) {
      const row = element("div", { class: "span-row" });
      row.dataset.spanId = span.spanID;
      const name = element("div", { class: "span-name" });
      name.style.paddingLeft = `${depths.get(span.spanID) * 14}px`;
      name.append(element("span", { class: "span-service" }, trace.processes[span.processID].serviceName), document.createTextNode(" " + span.operationName));
      const track = element("div", { class: "span-track" });
      const isError = span.tags.some((tag) => tag.key === "error" && tag.value === true);
      const bar = element("div", { class: `span-bar ${latencyClass(span.duration)}${isError ? " error" : ""}` });
      bar.style.left = `${((span.startTime - start) / total) * 100}%`;
      bar.style.width = `${(span.duration / total) * 100}%`;
      track.append(bar);
      row.append(name, track, element("div", { class: "span-duration" }, `${(span.duration / 1000).toFixed(2)} ms`));
      waterfall.append(row);
    }
  } catch (error) {
    $("#trace-summary").textContent = error.message;
  }
}

function route() {
  const params = new URLSearchParams(location.search);
  if (params.get("trace")) return showTrace(params.get("trace"));
  return searchLogs(params);
}

function navigate(params) {
  history.pushState(null, "", `/?${params}`);
  route();
}

document.addEventListener("DOMContentLoaded", () => {
  $("#search-form").addEventListener("submit", (event) => {
    event.preventDefault();
    navigate(new URLSearchParams({ q: $("#query").value, range: $("#range").value }));
  });
  $("#back-to-logs").addEventListener("click", (event) => {
    event.preventDefault();
    history.back();
  });
  window.addEventListener("popstate", route);
  route();
});

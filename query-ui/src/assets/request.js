// @ts-check
// Request view: everything one request did, logs and spans of every
// service on one timeline. Errors first, the bottleneck highlighted, each
// service its own colour. State: `#/request/<request id or trace id>`.

import { el, fetchJson, go, hashFor, formatTime, formatDuration, errorBox, serviceChip, serviceSlot, latencyClass } from "./util.js";

/** @typedef {import("./util.js").JsonObject} JsonObject */

/**
 * One entry of a request's timeline: a span (the store's span with its
 * timing) or a log record, told apart by `type`.
 * @typedef {object} TimelineEntry
 * @property {"span" | "log"} type
 * @property {number} time span start or record time, nanoseconds
 * @property {string} service
 * @property {boolean} error an error span or an ERROR/FATAL record
 * @property {JsonObject} attributes
 * @property {JsonObject} resource
 * @property {string} [trace_id]
 * @property {string} [span_id]
 * @property {string} [request_id]
 * @property {string} [parent_span_id] spans only
 * @property {string} [name] spans only
 * @property {string} [kind] spans only
 * @property {number} [start_time] spans only
 * @property {number} [end_time] spans only
 * @property {"unset" | "ok" | "error"} [status] spans only
 * @property {string} [status_message] spans only
 * @property {Array<{time: number, name: string, attributes: JsonObject}>} [events] spans only
 * @property {Array<{trace_id: string, span_id: string, attributes: JsonObject}>} [links] spans only
 * @property {number} [duration] spans only, nanoseconds
 * @property {number} [self_time] spans only, nanoseconds
 * @property {boolean} [on_critical_path] spans only
 * @property {string} [id] logs only: the record's id
 * @property {number} [timestamp] logs only
 * @property {number} [observed_timestamp] logs only
 * @property {string} [body] logs only
 * @property {string} [severity_text] logs only
 * @property {number} [severity_number] logs only
 */

/**
 * `GET /api/requests/{id}`: everything one request did.
 * @typedef {object} RequestStory
 * @property {string} id
 * @property {"request_id" | "trace_id"} kind
 * @property {string[]} request_ids
 * @property {string[]} trace_ids
 * @property {Record<string, number>} services timeline entries per service
 * @property {number} start nanoseconds
 * @property {number} end
 * @property {number} duration
 * @property {number} span_count
 * @property {number} log_count
 * @property {number} errors
 * @property {string[]} critical_path span ids
 * @property {{span_id: string, trace_id: string, service: string, name: string, self_time: number} | null} bottleneck
 * @property {TimelineEntry[]} timeline in time order
 */

/**
 * @param {TimelineEntry} entry
 * @param {RequestStory} story
 * @param {string | null | undefined} bottleneckId
 * @returns {HTMLElement}
 */
function entryRow(entry, story, bottleneckId) {
  const total = Math.max(story.duration, 1);
  const slot = serviceSlot(entry.service);
  const offset = entry.time - story.start;
  const isBottleneck = entry.type === "span" && entry.span_id === bottleneckId;
  const classes = ["story-row", `story-${entry.type}`, `svc-border-${slot}`];
  if (entry.error) classes.push("error");
  if (isBottleneck) classes.push("bottleneck");
  if (entry.on_critical_path) classes.push("critical");
  const marker = el("div", { class: entry.type === "span" ? `story-bar svc-bg-${slot} ${latencyClass(entry.duration)}` : `story-dot svc-bg-${slot}` });
  marker.style.left = `${(offset / total) * 100}%`;
  if (entry.type === "span") marker.style.width = `${Math.max((entry.duration / total) * 100, 0.3)}%`;
  const track = el("div", { class: "story-track" }, marker);
  let text;
  if (entry.type === "span") {
    text = el("div", { class: "story-text" }, el("a", { href: hashFor("trace", entry.trace_id, new URLSearchParams({ span: entry.span_id })) }, entry.name), ` ${formatDuration(entry.duration)}`, isBottleneck ? el("span", { class: "badge bottleneck" }, `bottleneck: ${formatDuration(entry.self_time)} self time`) : null);
  } else {
    text = el("div", { class: "story-text" }, el("span", { class: `level sev-${(entry.severity_text || "").replace(/[^A-Za-z]/g, "")}` }, entry.severity_text || ""), " ", el("span", { class: "body" }, entry.body));
  }
  return el("div", { class: classes.join(" "), "data-type": entry.type, "data-service": entry.service }, el("div", { class: "story-time" }, `+${formatDuration(offset)}`), el("div", { class: "story-service" }, serviceChip(entry.service)), text, track);
}

/**
 * `#/request/<id>`.
 * @param {HTMLElement} root
 * @param {import("./util.js").View} view
 * @returns {Promise<void>}
 */
export async function render(root, view) {
  const id = view.id;
  const input = /** @type {HTMLInputElement} */ (el("input", { id: "request-id", type: "search", value: id, placeholder: "request id or trace id", spellcheck: "false" }));
  const form = el("form", { id: "request-form", autocomplete: "off" }, input, el("button", { type: "submit", id: "request-button" }, "Show request"));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    if (input.value.trim()) go("request", input.value.trim());
  });
  const body = el("div", { id: "request-body" });
  root.append(el("section", { id: "request-view" }, form, body));
  if (!id) {
    body.append(el("p", { class: "muted" }, "Paste a request id (x-request-id) or a trace id to see every log line and span of that request, from every service, on one timeline."));
    root.dataset.loaded = "1";
    return;
  }
  body.append(el("p", { class: "muted" }, "loading…"));
  /** @type {RequestStory} */
  let story;
  try {
    story = await fetchJson(`/api/requests/${encodeURIComponent(id)}`);
  } catch (error) {
    body.replaceChildren(errorBox(error));
    root.dataset.loaded = "error";
    return;
  }
  body.replaceChildren(...storyParts(story));
  root.dataset.loaded = "1";
}

/**
 * A request's story as drawn: its summary, its errors and its timeline
 * (also inside the incident view).
 * @param {RequestStory} story
 * @returns {HTMLElement[]}
 */
export function storyParts(story) {
  const services = el("div", { class: "story-services" });
  for (const [name, count] of Object.entries(story.services)) services.append(el("span", { class: "story-service-count" }, serviceChip(name), ` ${count}`));
  const traces = el("div", { class: "story-traces" }, "Traces: ");
  for (const traceId of story.trace_ids) traces.append(el("a", { href: hashFor("trace", traceId), class: "trace-link" }, traceId), " ");
  const bottleneck = story.bottleneck;
  const header = el(
    "div",
    { id: "request-summary", class: "story-summary" },
    el("h2", {}, `${story.kind === "trace_id" ? "Trace" : "Request"} ${story.id}`),
    el("p", {}, `${story.span_count} spans · ${story.log_count} log records · ${Object.keys(story.services).length} services · ${formatDuration(story.duration)} · from ${formatTime(story.start)}`, story.errors ? el("span", { class: "badge error" }, `${story.errors} errors`) : null),
    services,
    traces,
    bottleneck ? el("p", { class: "bottleneck-note" }, "Bottleneck: ", serviceChip(bottleneck.service), ` ${bottleneck.name}, ${formatDuration(bottleneck.self_time)} of its own time on the critical path`) : null,
  );
  const errors = story.timeline.filter((entry) => entry.error);
  const errorList = el("div", { id: "request-errors" });
  if (errors.length) {
    errorList.append(el("h3", {}, `Errors (${errors.length})`));
    for (const entry of errors) errorList.append(entryRow(entry, story, bottleneck && bottleneck.span_id));
  }
  const timeline = el("div", { id: "request-timeline" }, el("h3", {}, "Timeline"));
  const filter = el("div", { class: "story-filter" });
  for (const kind of ["all", "span", "log"]) {
    const button = el("button", { type: "button", class: kind === "all" ? "secondary active" : "secondary", "data-kind": kind }, kind === "all" ? "Logs and spans" : kind === "span" ? "Spans" : "Logs");
    button.addEventListener("click", () => {
      for (const other of filter.children) other.classList.toggle("active", other === button);
      timeline.dataset.kind = kind;
    });
    filter.append(button);
  }
  timeline.append(filter);
  const fragment = document.createDocumentFragment();
  for (const entry of story.timeline) fragment.append(entryRow(entry, story, bottleneck && bottleneck.span_id));
  timeline.append(fragment);
  return [header, errorList, timeline];
}

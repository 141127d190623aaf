// @ts-check
// Alerts: rule groups with each rule's state and health (`/api/v1/rules`),
// active alerts with labels and annotations (`/api/v1/alerts`), and links to
// the logs and traces behind each (the notifier's `sightline_logs_url`,
// `sightline_traces_url` and `sightline_trace_ids` annotations).
// State: `#/alerts?state=firing|pending|inactive&type=alerting|recording`.

import { el, fetchJson, go, hashFor, safeUrl, errorBox } from "./util.js";

/**
 * A pending or firing alert (`/api/v1/alerts`, and each alerting rule's `alerts`).
 * @typedef {object} Alert
 * @property {Record<string, string>} labels
 * @property {Record<string, string>} annotations
 * @property {"inactive" | "pending" | "firing"} state
 * @property {string} activeAt RFC 3339
 * @property {string} value as Prometheus formats it, `3e+00`
 * @property {string} [keepFiringSince] RFC 3339
 */

/**
 * A rule of `/api/v1/rules`; alerting rules have a state, annotations and alerts.
 * @typedef {object} Rule
 * @property {string} name
 * @property {string} query
 * @property {Record<string, string>} labels
 * @property {"alerting" | "recording"} type
 * @property {"ok" | "err" | "unknown"} health
 * @property {string} [lastError]
 * @property {number} evaluationTime seconds
 * @property {string} lastEvaluation RFC 3339
 * @property {"inactive" | "pending" | "firing"} [state] alerting rules only
 * @property {number} [duration] alerting rules only: `for`, seconds
 * @property {number} [keepFiringFor] alerting rules only, seconds
 * @property {Record<string, string>} [annotations] alerting rules only
 * @property {Alert[]} [alerts] alerting rules only
 */

/**
 * A rule group of `/api/v1/rules`.
 * @typedef {object} RuleGroup
 * @property {string} name
 * @property {string} file
 * @property {Rule[]} rules
 * @property {number} interval seconds
 * @property {number} limit
 * @property {number} evaluationTime seconds
 * @property {string} lastEvaluation RFC 3339
 */

/** `GET /api/v1/alerts`. @typedef {import("./util.js").PromResponse<{alerts: Alert[]}>} AlertsResponse */
/** `GET /api/v1/rules`. @typedef {import("./util.js").PromResponse<{groups: RuleGroup[]}>} RulesResponse */

/** @type {Record<string, string>} */
const LINK_ANNOTATIONS = { sightline_logs_url: "Logs", sightline_traces_url: "Traces" };

/**
 * A link the annotation names, or its text when the URL is not one we follow.
 * @param {string} url
 * @param {string} text
 * @returns {HTMLElement}
 */
function annotationLink(url, text) {
  const safe = safeUrl(url);
  return safe ? el("a", { href: safe, class: "alert-link" }, text) : el("span", { class: "muted" }, url);
}

/**
 * @param {Record<string, string> | undefined} labels
 * @returns {HTMLElement}
 */
function labelChips(labels) {
  const box = el("span", { class: "labels" });
  for (const [key, value] of Object.entries(labels || {})) box.append(el("span", { class: "label-chip" }, `${key}=${value}`));
  return box;
}

/**
 * The API's value (`"3e+00"`, as Prometheus formats it) as people write numbers.
 * @param {string} text
 * @returns {string}
 */
function alertValue(text) {
  const value = Number(text);
  return Number.isFinite(value) ? String(Number(value.toPrecision(6))) : text;
}

/**
 * An alert with its labels, annotations and links to its logs and traces.
 * @param {Alert} alert
 * @returns {HTMLElement}
 */
function alertCard(alert) {
  const annotations = { ...(alert.annotations || {}) };
  const links = el("div", { class: "alert-links" });
  for (const [key, text] of Object.entries(LINK_ANNOTATIONS)) {
    if (annotations[key]) {
      links.append(annotationLink(annotations[key], text), " ");
      delete annotations[key];
    }
  }
  // Rule status may carry no notifier links: the same ones, built here from the service label.
  const service = ["service", "service_name", "job"].map((k) => alert.labels?.[k]).find(Boolean);
  if (service && !links.children.length) {
    const activeAt = Date.parse(alert.activeAt);
    const from = String((Number.isNaN(activeAt) ? Date.now() : activeAt) - 15 * 60e3);
    links.append(
      el("a", { href: hashFor("logs", "", new URLSearchParams({ q: `service:"${service}"`, from, to: "now" })), class: "alert-link" }, "Logs"),
      " ",
      el("a", { href: hashFor("traces", "", new URLSearchParams({ service, errors: "1", from, to: "now" })), class: "alert-link" }, "Traces"),
      " ",
    );
  }
  if (annotations.sightline_trace_ids) {
    for (const id of annotations.sightline_trace_ids.split(/[\s,]+/).filter((t) => /^[0-9a-fA-F]{16,32}$/.test(t))) links.append(el("a", { href: hashFor("trace", id), class: "alert-trace" }, `trace ${id.slice(0, 12)}…`), " ");
    delete annotations.sightline_trace_ids;
  }
  const list = el("dl", { class: "annotations" });
  for (const [key, value] of Object.entries(annotations)) list.append(el("dt", {}, key), el("dd", {}, value));
  return el(
    "div",
    { class: `alert-card state-${alert.state}`, "data-alertname": alert.labels?.alertname || "" },
    el("div", { class: "alert-head" }, el("span", { class: `badge state-${alert.state}` }, alert.state), el("strong", {}, alert.labels?.alertname || ""), el("span", { class: "muted" }, alert.activeAt ? ` active since ${new Date(alert.activeAt).toLocaleString()}` : ""), alert.value !== undefined ? el("span", { class: "muted alert-value" }, ` · value ${alertValue(alert.value)}`) : null),
    labelChips(alert.labels),
    list,
    links,
  );
}

/**
 * `#/alerts`.
 * @param {HTMLElement} root
 * @param {import("./util.js").View} view
 */
export async function render(root, view) {
  const params = view.params;
  const stateFilter = params.get("state") || "";
  const typeFilter = params.get("type") || "";
  const filters = el("div", { class: "toolbar" });
  for (const [key, options] of /** @type {Array<[string, string[]]>} */ ([["state", ["", "firing", "pending", "inactive"]], ["type", ["", "alerting", "recording"]]])) {
    const select = /** @type {HTMLSelectElement} */ (el("select", { "data-filter": key }));
    for (const option of options) select.append(el("option", { value: option, selected: params.get(key) === option || (!params.get(key) && option === "") }, option || `any ${key}`));
    select.addEventListener("change", () => {
      const next = new URLSearchParams(params);
      next.set(key, select.value);
      go("alerts", "", next);
    });
    filters.append(select);
  }
  const active = el("div", { id: "active-alerts" });
  const groups = el("div", { id: "rule-groups" });
  root.append(el("section", { id: "alerts-view" }, filters, el("h2", {}, "Active alerts"), active, el("h2", {}, "Rules"), groups));
  try {
    /** @type {[AlertsResponse, RulesResponse]} */
    const [alerts, rules] = await Promise.all([fetchJson("/api/v1/alerts"), fetchJson("/api/v1/rules")]);
    const list = alerts.data.alerts.filter((a) => !stateFilter || a.state === stateFilter);
    if (!list.length) active.append(el("p", { class: "muted" }, "No active alerts."));
    for (const alert of list) active.append(alertCard(alert));
    if (!rules.data.groups.length) groups.append(el("p", { class: "muted" }, "No rule groups loaded."));
    for (const group of rules.data.groups) {
      const table = el("table", { class: "rules" }, el("thead", {}, el("tr", {}, el("th", {}, "Rule"), el("th", {}, "Type"), el("th", {}, "State"), el("th", {}, "Health"), el("th", {}, "Query"), el("th", {}, "Active"))));
      const tbody = el("tbody");
      for (const rule of group.rules) {
        if (typeFilter && rule.type !== typeFilter) continue;
        const state = rule.type === "alerting" ? rule.state : "—";
        if (stateFilter && state !== stateFilter) continue;
        tbody.append(
          el(
            "tr",
            { class: `rule-row rule-${rule.type} state-${state}`, "data-rule": rule.name },
            el("td", {}, rule.name, labelChips(rule.labels)),
            el("td", {}, rule.type),
            el("td", {}, el("span", { class: `badge state-${state}` }, state)),
            el("td", { class: `health-${rule.health}` }, rule.health, rule.lastError ? el("div", { class: "error-text" }, rule.lastError) : null),
            el("td", {}, el("code", {}, rule.query)),
            el("td", {}, String((rule.alerts || []).length)),
          ),
        );
      }
      table.append(tbody);
      groups.append(el("div", { class: "rule-group" }, el("h3", {}, group.name, el("span", { class: "muted" }, ` ${group.file} · every ${group.interval}s`)), table));
    }
    root.dataset.loaded = "1";
  } catch (error) {
    active.replaceChildren(errorBox(error.status === 404 ? "The Prometheus API (/api/v1/rules) is not available on this collector." : error));
    root.dataset.loaded = "error";
  }
}

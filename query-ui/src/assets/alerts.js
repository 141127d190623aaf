// @ts-check
// Alerts: rule groups with each rule's state and health (`/api/v1/rules`),
// active alerts with labels and annotations (`/api/v1/alerts`), and links to
// the logs and traces behind each (the notifier's `sightline_logs_url`,
// `sightline_traces_url` and `sightline_trace_ids` annotations).
// Silences: listed, created (from an alert's labels, or blank) and expired
// in the Alertmanagers of the collector's config, through its pass-through
// of Alertmanager's API v2 (`/api/alertmanager/api/v2/silences`).
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

/**
 * One matcher of a silence, as Alertmanager's API v2 has it.
 * @typedef {object} Matcher
 * @property {string} name
 * @property {string} value
 * @property {boolean} isRegex
 * @property {boolean} [isEqual] false for `!=` and `!~`
 */

/**
 * A silence of `GET /api/v2/silences` (Alertmanager's `GettableSilence`).
 * @typedef {object} Silence
 * @property {string} id
 * @property {Matcher[]} matchers
 * @property {string} startsAt RFC 3339
 * @property {string} endsAt RFC 3339
 * @property {string} createdBy
 * @property {string} comment
 * @property {{state: "active" | "pending" | "expired"}} status
 */

/** `GET /api/alertmanager/status`: the configured Alertmanagers. @typedef {{alertmanagers: string[]}} AlertmanagerStatus */

/** `GET /api/v1/alerts`. @typedef {import("./util.js").PromResponse<{alerts: Alert[]}>} AlertsResponse */
/** `GET /api/v1/rules`. @typedef {import("./util.js").PromResponse<{groups: RuleGroup[]}>} RulesResponse */

/** @type {Record<string, string>} */
const LINK_ANNOTATIONS = { sightline_incident_url: "Incident", sightline_logs_url: "Logs", sightline_traces_url: "Traces" };

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
  // The incident view of this alert: its graph with exemplars, failing
  // requests against a healthy one, new log patterns, the worst story.
  if (alert.labels?.alertname && !links.querySelector("a.incident-link")) {
    const params = new URLSearchParams({ alert: alert.labels.alertname });
    const activeAt = Date.parse(alert.activeAt);
    if (!Number.isNaN(activeAt)) params.set("start", String(activeAt));
    for (const [key, value] of Object.entries(alert.labels)) if (key !== "alertname") params.append("label", `${key}=${value}`);
    links.prepend(el("a", { href: hashFor("incident", "", params), class: "alert-link incident-link" }, "Incident view"), " ");
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

/** Durations a silence can last, as offered in the form. */
const SILENCE_DURATIONS = [
  ["1h", 3600e3],
  ["2h", 7200e3],
  ["4h", 4 * 3600e3],
  ["1d", 24 * 3600e3],
  ["1w", 7 * 24 * 3600e3],
];

/**
 * A silence's matchers as people write them: `name="value", name=~"re.*"`.
 * @param {Matcher[]} matchers
 * @returns {string}
 */
export function formatMatchers(matchers) {
  return matchers.map((m) => `${m.name}${m.isEqual === false ? (m.isRegex ? "!~" : "!=") : m.isRegex ? "=~" : "="}${JSON.stringify(m.value)}`).join(", ");
}

/**
 * The matchers of `text` (`name="value", other=~"a|b"`), or the error that
 * says where it went wrong.
 * @param {string} text
 * @returns {Matcher[]}
 */
export function parseMatchers(text) {
  /** @type {Matcher[]} */
  const matchers = [];
  const pattern = /\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"\s*(?:,|$)/y;
  let at = 0;
  while (at < text.length && text.slice(at).trim()) {
    pattern.lastIndex = at;
    const match = pattern.exec(text);
    if (!match) throw new Error(`matchers: expected name="value" at character ${at + 1}: ${text.slice(at, at + 30)}`);
    const [, name, op, quoted] = match;
    matchers.push({ name, value: JSON.parse(`"${quoted}"`), isRegex: op === "=~" || op === "!~", isEqual: op === "=" || op === "=~" });
    at = pattern.lastIndex;
  }
  if (!matchers.length) throw new Error("a silence needs at least one matcher");
  return matchers;
}

/**
 * The form that creates a silence: matchers, how long, who, why.
 * @param {Matcher[]} matchers prefilled
 * @param {() => void} done called once Alertmanager took it
 * @returns {HTMLElement}
 */
function silenceForm(matchers, done) {
  const matcherInput = /** @type {HTMLInputElement} */ (el("input", { class: "silence-matchers", value: formatMatchers(matchers), placeholder: 'alertname="HighErrorRate", service="payment"', "aria-label": "matchers" }));
  const duration = /** @type {HTMLSelectElement} */ (el("select", { class: "silence-duration", "aria-label": "duration" }));
  for (const [label, ms] of SILENCE_DURATIONS) duration.append(el("option", { value: String(ms) }, label));
  const author = /** @type {HTMLInputElement} */ (el("input", { class: "silence-author", value: localStorage.getItem("sightline.silence.author") || "", placeholder: "your name", required: true, "aria-label": "created by" }));
  const comment = /** @type {HTMLInputElement} */ (el("input", { class: "silence-comment", placeholder: "why (a ticket, a deploy)", required: true, "aria-label": "comment" }));
  const message = el("div", { class: "silence-message" });
  const form = /** @type {HTMLFormElement} */ (el("form", { class: "silence-form" }, el("label", {}, "Matchers ", matcherInput), el("label", {}, "For ", duration), el("label", {}, "By ", author), el("label", {}, "Comment ", comment), el("button", { type: "submit", class: "silence-submit" }, "Create silence"), message));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    message.replaceChildren();
    try {
      const now = Date.now();
      const silence = {
        matchers: parseMatchers(matcherInput.value),
        startsAt: new Date(now).toISOString(),
        endsAt: new Date(now + Number(duration.value)).toISOString(),
        createdBy: author.value.trim(),
        comment: comment.value.trim(),
      };
      localStorage.setItem("sightline.silence.author", silence.createdBy);
      await fetchJson("/api/alertmanager/api/v2/silences", { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(silence) });
      done();
    } catch (error) {
      message.replaceChildren(errorBox(error));
    }
  });
  return form;
}

/**
 * The silences of the Alertmanagers, newest first, with an Expire button
 * on those not expired yet.
 * @param {HTMLElement} box
 * @param {() => void} reload
 * @returns {Promise<Silence[]>}
 */
async function renderSilences(box, reload) {
  /** @type {Silence[]} */
  const silences = await fetchJson("/api/alertmanager/api/v2/silences");
  const order = { active: 0, pending: 1, expired: 2 };
  silences.sort((a, b) => order[a.status.state] - order[b.status.state] || b.startsAt.localeCompare(a.startsAt));
  if (!silences.length) {
    box.append(el("p", { class: "muted" }, "No silences."));
    return silences;
  }
  const tbody = el("tbody");
  for (const silence of silences) {
    const expire = silence.status.state === "expired" ? null : el("button", { class: "silence-expire", type: "button" }, "Expire");
    expire?.addEventListener("click", async () => {
      try {
        await fetchJson(`/api/alertmanager/api/v2/silence/${encodeURIComponent(silence.id)}`, { method: "DELETE" });
        reload();
      } catch (error) {
        box.prepend(errorBox(error));
      }
    });
    tbody.append(
      el(
        "tr",
        { class: `silence-row silence-${silence.status.state}`, "data-silence-id": silence.id },
        el("td", {}, el("span", { class: `badge silence-state-${silence.status.state}` }, silence.status.state)),
        el("td", {}, el("code", {}, formatMatchers(silence.matchers))),
        el("td", {}, `${new Date(silence.startsAt).toLocaleString()} → ${new Date(silence.endsAt).toLocaleString()}`),
        el("td", {}, silence.createdBy),
        el("td", { class: "silence-comment-text" }, silence.comment),
        el("td", {}, expire),
      ),
    );
  }
  box.append(el("table", { class: "rules silences" }, el("thead", {}, el("tr", {}, el("th", {}, "State"), el("th", {}, "Matchers"), el("th", {}, "When"), el("th", {}, "By"), el("th", {}, "Comment"), el("th", {}, ""))), tbody));
  return silences;
}

/**
 * Whether `silence` mutes an alert with `labels`, as Alertmanager matches
 * (regexes anchored; a missing label is the empty string).
 * @param {Silence} silence
 * @param {Record<string, string>} labels
 * @returns {boolean}
 */
export function silencesAlert(silence, labels) {
  return silence.matchers.every((m) => {
    const value = labels[m.name] ?? "";
    let matched;
    try {
      matched = m.isRegex ? new RegExp(`^(?:${m.value})$`).test(value) : value === m.value;
    } catch {
      return false;
    }
    return m.isEqual === false ? !matched : matched;
  });
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
  const silences = el("div", { id: "silences" });
  const groups = el("div", { id: "rule-groups" });
  root.append(el("section", { id: "alerts-view" }, filters, el("h2", {}, "Active alerts"), active, el("h2", {}, "Silences"), silences, el("h2", {}, "Rules"), groups));
  const reload = () => window.dispatchEvent(new HashChangeEvent("hashchange"));
  try {
    /** @type {[AlertsResponse, RulesResponse, AlertmanagerStatus]} */
    const [alerts, rules, alertmanager] = await Promise.all([fetchJson("/api/v1/alerts"), fetchJson("/api/v1/rules"), fetchJson("/api/alertmanager/status").catch(() => /** @type {AlertmanagerStatus} */ ({ alertmanagers: [] }))]);
    const canSilence = alertmanager.alertmanagers.length > 0;
    const list = alerts.data.alerts.filter((a) => !stateFilter || a.state === stateFilter);
    if (!list.length) active.append(el("p", { class: "muted" }, "No active alerts."));
    /** @type {Array<[HTMLElement, Alert]>} */
    const cards = [];
    for (const alert of list) {
      const card = alertCard(alert);
      cards.push([card, alert]);
      if (canSilence) {
        const button = el("button", { type: "button", class: "silence-alert" }, "Silence…");
        button.addEventListener("click", () => {
          button.remove();
          const matchers = Object.entries(alert.labels || {}).map(([name, value]) => ({ name, value, isRegex: false, isEqual: true }));
          card.append(silenceForm(matchers, reload));
        });
        card.querySelector(".alert-head")?.append(button);
      }
      active.append(card);
    }
    if (canSilence) {
      const create = el("button", { type: "button", id: "new-silence" }, "New silence…");
      create.addEventListener("click", () => {
        create.replaceWith(silenceForm([], reload));
      });
      silences.append(el("p", { class: "muted" }, `In ${alertmanager.alertmanagers.join(", ")} `, create));
      const known = await renderSilences(silences, reload).catch((error) => {
        silences.append(errorBox(error));
        return /** @type {Silence[]} */ ([]);
      });
      // Alertmanager holds back notifications of an alert an active silence matches.
      for (const [card, alert] of cards) {
        const by = known.find((silence) => silence.status.state === "active" && silencesAlert(silence, alert.labels || {}));
        if (by) card.querySelector(".alert-head strong")?.after(el("span", { class: "badge silence-state-active", title: `${by.comment} (${by.createdBy})` }, "silenced"));
      }
    } else {
      silences.append(el("p", { class: "muted" }, "No Alertmanager is configured: add one under alerting.alertmanagers in the collector's config file to create and list silences here."));
    }
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

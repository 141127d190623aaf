// @ts-check
// Sightline UI: a router over the URL hash. Every view's state is in the
// hash (`#/logs?q=…`, `#/trace/<id>`, `#/request/<id>`, `#/dashboard/<uid>?var-…`,
// `#/explore?q=<PromQL>`, `#/compare?a=<trace>&b=<trace | typical>`,
// `#/incident?alert=<name>&label=<name>=<value>&start=<ms>`),
// so a shared link shows the same view. Every piece of data from the server
// is inserted with textContent or as an attribute value, never as HTML: log
// lines are attacker-controlled. Plain ES modules, no build step.

import { $, el, parseHash, hashFor, queryToken, setQueryToken } from "./util.js";
import { sweepCharts } from "./chart.js";
import * as logs from "./logs.js";
import * as traces from "./traces.js";
import * as request from "./request.js";
import * as services from "./services.js";
import * as dashboards from "./dashboards.js";
import * as alerts from "./alerts.js";
import * as explore from "./explore.js";
import * as compare from "./compare.js";
import * as incident from "./incident.js";
import { install } from "./perf.js";

/** @type {import("./perf.js").Perf} */
const perf = {};
install(perf);

/**
 * A view: the nav link it lights up and the function that renders it.
 * @typedef {{nav: string, render: (root: HTMLElement, view: import("./util.js").View, ctx: import("./util.js").ViewContext) => void | Promise<void>}} ViewEntry
 */

/** @type {Record<string, ViewEntry>} */
const VIEWS = {
  logs: { nav: "logs", render: logs.render },
  traces: { nav: "traces", render: traces.renderSearch },
  trace: { nav: "traces", render: traces.renderTrace },
  request: { nav: "request", render: request.render },
  services: { nav: "services", render: services.render },
  dashboards: { nav: "dashboards", render: dashboards.renderList },
  dashboard: { nav: "dashboards", render: dashboards.renderDashboard },
  alerts: { nav: "alerts", render: alerts.render },
  explore: { nav: "explore", render: explore.render },
  compare: { nav: "traces", render: compare.render },
  incident: { nav: "alerts", render: incident.render },
};

/** @type {Array<() => void>} */
let cleanups = [];
let generation = 0;

function route() {
  for (const cleanup of cleanups) cleanup();
  cleanups = [];
  generation += 1;
  // Links of the first UI (`/?q=…`, `/?trace=…`) still open their view.
  const legacy = new URLSearchParams(location.search);
  if (!location.hash && (legacy.get("q") !== null || legacy.get("trace"))) {
    const hash = legacy.get("trace") ? hashFor("trace", legacy.get("trace")) : hashFor("logs", "", new URLSearchParams({ q: legacy.get("q") || "" }));
    history.replaceState(null, "", `/${hash}`);
  }
  const view = parseHash();
  const entry = VIEWS[view.view] || VIEWS.logs;
  for (const link of document.querySelectorAll("header nav a")) link.classList.toggle("active", /** @type {HTMLElement} */ (link).dataset.view === entry.nav);
  const root = $("#view");
  const fresh = el("div", { id: "view", "data-view": view.view });
  root.replaceWith(fresh);
  sweepCharts();
  const mine = generation;
  /** @type {import("./util.js").ViewContext} */
  const ctx = { perf, onLeave: (fn) => cleanups.push(fn), current: () => mine === generation };
  document.title = `Sightline · ${view.view}${view.id ? ` ${view.id}` : ""}`;
  Promise.resolve()
    .then(() => entry.render(fresh, view, ctx))
    .catch((error) => {
      fresh.append(el("div", { class: "error-box" }, `This view failed: ${error.message}`));
      fresh.dataset.loaded = "error";
    });
}

/**
 * The collector refused our query token (or we sent none): ask for one,
 * keep it for this tab, and render the view again.
 * @param {CustomEvent<string>} event `detail` is the collector's message
 */
function askForToken(event) {
  if (document.getElementById("token-dialog")) return;
  const input = /** @type {HTMLInputElement} */ (el("input", { id: "token-input", type: "password", autocomplete: "off", required: true, "aria-label": "query token" }));
  const form = el(
    "form",
    { id: "token-form" },
    el("h2", {}, "Query token"),
    el("p", {}, queryToken() ? "The collector refused this token." : "This collector asks for a query token."),
    el("p", { class: "muted" }, event.detail || ""),
    input,
    el("button", { type: "submit" }, "Use token"),
    el("p", { class: "muted" }, "Kept for this browser tab only and sent as an Authorization header, never in a URL."),
  );
  const dialog = el("div", { id: "token-dialog", class: "token-dialog", role: "dialog" }, form);
  form.addEventListener("submit", (submit) => {
    submit.preventDefault();
    setQueryToken(input.value.trim());
    dialog.remove();
    route();
  });
  document.body.append(dialog);
  input.focus();
}

window.addEventListener("sightline:unauthorized", /** @type {EventListener} */ (askForToken));
window.addEventListener("hashchange", route);
route();

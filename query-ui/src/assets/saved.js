// @ts-check
// Saved searches in the Logs view: save the current query under a name,
// run a saved one, delete it, and "alert from this search" (a counter of
// its matches with history from the stored records, and a rule over it,
// applied without a restart). The list lives server-side (`/api/searches`).

import { el, fetchJson, hashFor, errorBox } from "./util.js";

/**
 * An alert made from a saved search.
 * @typedef {object} SearchAlert
 * @property {string} metric the counter of the search's matches
 * @property {string} [group_by] the field it is labelled by
 * @property {number} threshold fires above this many matches in the window
 * @property {number} window_seconds
 * @property {number} for_seconds
 * @property {string} severity
 * @property {number} created nanoseconds since the epoch
 */

/**
 * One saved search.
 * @typedef {object} SavedSearch
 * @property {string} id
 * @property {string} name
 * @property {string} query
 * @property {number} created nanoseconds since the epoch
 * @property {SearchAlert} [alert]
 */

/** `GET /api/searches`. @typedef {{searches: SavedSearch[]}} SavedSearchList */

/**
 * What a new alert's history holds (`PUT /api/searches/{id}/alert`).
 * @typedef {{metric: string, from_ms: number, to_ms: number, step_ms: number, series: number, samples: number, records: number, warnings: string[]}} BackfillReport
 */

/** The PromQL the alert's rule compares with its threshold. @type {(alert: SearchAlert) => string} */
function alertExpr(alert) {
  const by = alert.group_by ? ` by (${alert.group_by.replace(/^(attributes|resource)\./, "").replace(/[^A-Za-z0-9_]/g, "_")})` : "";
  return `sum${by} (increase(${alert.metric}[${alert.window_seconds}s]))`;
}

/**
 * The "Save" and "Saved" buttons of the query bar and the panel they open.
 * @param {HTMLInputElement} input the query bar
 * @param {(query: string) => void} run searches for a query
 * @returns {{buttons: HTMLElement[], panel: HTMLElement}}
 */
export function savedSearches(input, run) {
  const panel = el("div", { id: "saved-searches", class: "saved-searches" });
  panel.hidden = true;
  const saveButton = el("button", { type: "button", id: "save-search", class: "secondary", title: "save this search" }, "Save");
  const listButton = el("button", { type: "button", id: "saved-button", class: "secondary", title: "saved searches" }, "Saved");
  const message = el("div", { class: "saved-message", role: "status" });

  const refresh = async () => {
    /** @type {SavedSearchList} */
    let list;
    try {
      list = await fetchJson("/api/searches");
    } catch (error) {
      panel.replaceChildren(errorBox(error));
      return;
    }
    const items = el("ul", { class: "saved-list" });
    for (const search of list.searches) items.append(item(search));
    panel.replaceChildren(el("h4", {}, "Saved searches"), message, list.searches.length ? items : el("p", { class: "muted" }, "None yet: type a query and press Save."));
  };

  /** @param {SavedSearch} search */
  const item = (search) => {
    const open = el("a", { href: hashFor("logs", "", new URLSearchParams({ q: search.query })), class: "saved-name" }, search.name);
    open.addEventListener("click", (event) => {
      event.preventDefault();
      run(search.query);
    });
    const remove = el("button", { type: "button", class: "secondary small", title: "delete this saved search" }, "Delete");
    remove.addEventListener("click", async () => {
      try {
        await fetchJson(`/api/searches/${encodeURIComponent(search.id)}`, { method: "DELETE" });
        refresh();
      } catch (error) {
        message.replaceChildren(errorBox(error));
      }
    });
    const row = el("li", { class: "saved-search", "data-id": search.id }, open, " ", el("code", { class: "muted" }, search.query), " ");
    if (search.alert) {
      const graph = hashFor("explore", "", new URLSearchParams({ q: alertExpr(search.alert), from: "now-6h" }));
      row.append(el("span", { class: "alert-badge" }, `alert: more than ${search.alert.threshold} in ${search.alert.window_seconds}s${search.alert.group_by ? ` by ${search.alert.group_by}` : ""}`), " ", el("a", { href: graph, class: "alert-graph" }, "graph"), " ");
    } else {
      const alertButton = el("button", { type: "button", class: "secondary small make-alert" }, "Alert…");
      alertButton.addEventListener("click", () => {
        if (!row.querySelector("form")) row.append(alertForm(search));
      });
      row.append(alertButton, " ");
    }
    row.append(remove);
    return row;
  };

  /** @param {SavedSearch} search */
  const alertForm = (search) => {
    const threshold = /** @type {HTMLInputElement} */ (el("input", { name: "threshold", type: "number", min: "0", step: "any", value: "10", title: "fires above this many matches in the window" }));
    const window = /** @type {HTMLInputElement} */ (el("input", { name: "window", value: "1m", size: "5", title: "a Prometheus duration" }));
    const groupBy = /** @type {HTMLInputElement} */ (el("input", { name: "group_by", placeholder: "one field, e.g. ip_address", size: "18" }));
    const form = el("form", { class: "alert-form" }, el("label", {}, "more than ", threshold), el("label", {}, " matches in ", window), el("label", {}, " by ", groupBy), " ", el("button", { type: "submit" }, "Create alert"));
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const body = { threshold: Number(threshold.value), window: window.value, group_by: groupBy.value || undefined };
      try {
        /** @type {{search: SavedSearch, backfill: BackfillReport[]}} */
        const made = await fetchJson(`/api/searches/${encodeURIComponent(search.id)}/alert`, { method: "PUT", headers: { "content-type": "application/json" }, body: JSON.stringify(body) });
        const history = made.backfill[0];
        await refresh();
        message.replaceChildren(
          el("span", { class: "alert-made" }, `Alert "${search.name}" made: ${made.search.alert ? made.search.alert.metric : ""}` + (history ? `, history from ${history.records} stored records` : "")),
          ...(history && history.warnings.length ? [el("div", { class: "muted" }, history.warnings.join("; "))] : []),
        );
      } catch (error) {
        form.append(errorBox(error));
      }
    });
    return form;
  };

  listButton.addEventListener("click", () => {
    panel.hidden = !panel.hidden;
    if (!panel.hidden) refresh();
  });
  saveButton.addEventListener("click", () => {
    panel.hidden = false;
    const name = /** @type {HTMLInputElement} */ (el("input", { name: "name", placeholder: "name", required: true }));
    const form = el("form", { class: "save-form" }, el("label", {}, "Save ", el("code", {}, input.value || "*"), " as ", name), " ", el("button", { type: "submit" }, "Save search"));
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      try {
        await fetchJson("/api/searches", { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ name: name.value, query: input.value || "*" }) });
        await refresh();
      } catch (error) {
        form.append(errorBox(error));
      }
    });
    refresh().then(() => {
      panel.prepend(form);
      name.focus();
    });
  });
  return { buttons: [saveButton, listButton], panel };
}

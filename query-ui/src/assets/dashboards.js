// @ts-check
// Dashboards: the Grafana-classic dashboards of `dashboards/*.json`
// (served by `/api/dashboards`), rendered against the collector's
// Prometheus API: timeseries (and old `graph`), stat, gauge and table
// panels, rows, template variables and the time range.
// State: `#/dashboards` and `#/dashboard/<uid>?from=&to=&var-<name>=<value>`.

import { el, fetchJson, go, hashFor, timeRange, rangePicker, errorBox, durationMs, PALETTE } from "./util.js";
import { timeChart, formatValue, emptyChart, sweepCharts } from "./chart.js";

/**
 * One dashboard of `GET /api/dashboards`; a file that does not parse has
 * its `error` and no `tags`.
 * @typedef {object} DashboardEntry
 * @property {string} uid
 * @property {string} title the dashboard's title, or the file name
 * @property {string} file
 * @property {string[]} [tags]
 * @property {string} [error]
 */

/** `GET /api/dashboards`: the directory read (`null` when none is set) and its dashboards. @typedef {{directory: string | null, dashboards: DashboardEntry[]}} DashboardList */

/**
 * Grafana's dashboard JSON as `GET /api/dashboards/{uid}` serves it (the
 * file's own JSON, read leniently): `title`, `time`, `templating.list`,
 * `panels` and old `rows`.
 * @typedef {import("./util.js").JsonObject} Dashboard
 */

/** A Grafana panel (`type`, `title`, `gridPos`, `targets`, `fieldConfig`, ...). @typedef {import("./util.js").JsonObject} Panel */
/** A Grafana template variable (`name`, `type`, `query`, `current`, ...). @typedef {import("./util.js").JsonObject} Variable */
/** Replaces `$var`, `${var}` and `[[var]]` in a text. @typedef {(text: string) => string} Interpolate */
/** @typedef {import("./util.js").TimeRange} TimeRange */
/** @typedef {import("./util.js").PromLabels} PromLabels */
/** @typedef {import("./util.js").PromSeries} PromSeries */
/** @typedef {import("./util.js").PromSeriesExemplars} PromSeriesExemplars */
/** @typedef {import("./chart.js").ChartMarker} ChartMarker */

/** Exemplars drawn on one panel at most (the slowest, on latency panels). */
const MAX_EXEMPLARS = 300;

/**
 * `#/dashboards`.
 * @param {HTMLElement} root
 */
export async function renderList(root) {
  const list = el("ul", { id: "dashboard-list", class: "dashboard-list" });
  root.append(el("section", { id: "dashboards-view" }, el("h2", {}, "Dashboards"), list));
  try {
    /** @type {DashboardList} */
    const result = await fetchJson("/api/dashboards");
    if (!result.directory) list.append(el("li", { class: "muted" }, "No dashboards directory: start the collector with --dashboards-dir <dir> (Grafana dashboard JSON files, read at run time)."));
    else if (!result.dashboards.length) list.append(el("li", { class: "muted" }, `No dashboards in ${result.directory}: add Grafana dashboard JSON files there, no restart needed.`));
    else root.querySelector("h2")?.after(el("p", { class: "muted", id: "dashboards-directory" }, `From ${result.directory}, read on every visit.`));
    for (const dashboard of result.dashboards) {
      const tags = el("span", { class: "tags" });
      for (const tag of dashboard.tags || []) tags.append(el("span", { class: "tag" }, tag));
      list.append(el("li", { class: "dashboard-item", "data-uid": dashboard.uid }, el("a", { href: hashFor("dashboard", dashboard.uid) }, dashboard.title), " ", el("span", { class: "muted" }, dashboard.file), tags, dashboard.error ? el("div", { class: "error-box" }, dashboard.error) : null));
    }
    root.dataset.loaded = "1";
  } catch (error) {
    list.replaceChildren(errorBox(error));
    root.dataset.loaded = "error";
  }
}

/**
 * Panels in grid order, rows' collapsed panels and old `rows[]` included.
 * @param {Dashboard} dashboard
 * @returns {Panel[]}
 */
function allPanels(dashboard) {
  /** @type {Panel[]} */
  const out = [];
  /** @type {(panel: Panel) => void} */
  const add = (panel) => {
    out.push(panel);
    if (panel.type === "row" && Array.isArray(panel.panels)) panel.panels.forEach(add);
  };
  (dashboard.panels || []).forEach(add);
  let y = 0;
  for (const row of dashboard.rows || []) {
    if (row.title && row.showTitle !== false) out.push({ type: "row", title: row.title, gridPos: { x: 0, y, w: 24, h: 1 } });
    y += 1;
    let x = 0;
    for (const panel of row.panels || []) {
      const w = Math.max(1, Math.round(((panel.span || 12) / 12) * 24));
      out.push({ ...panel, gridPos: panel.gridPos || { x, y, w, h: 8 } });
      x += w;
    }
    y += 8;
  }
  return out;
}

/**
 * Values of a template variable query: `label_values(label)`, `label_values(metric, label)`, `query_result(expr)`.
 * @param {Variable} variable
 * @param {TimeRange} range
 * @param {Interpolate} interpolate
 * @returns {Promise<string[]>}
 */
async function variableValues(variable, range, interpolate) {
  if (variable.type === "custom") return String(variable.query || "").split(",").map((s) => s.trim()).filter(Boolean);
  if (variable.type === "interval") return String(variable.query || "1m,5m,1h").split(",").map((s) => s.trim()).filter(Boolean);
  if (variable.type === "constant" || variable.type === "textbox") return [String(variable.query || "")];
  if (variable.type !== "query") return [];
  const text = interpolate(typeof variable.query === "object" ? variable.query.query || "" : variable.query || "");
  const window = { start: String(range.start / 1000), end: String(range.end / 1000) };
  /** @type {string[]} */
  let values = [];
  let match = /^label_values\(\s*([a-zA-Z_][\w]*)\s*\)$/.exec(text.trim());
  if (match) {
    values = (await fetchJson(`/api/v1/label/${encodeURIComponent(match[1])}/values?${new URLSearchParams(window)}`)).data;
  } else if ((match = /^label_values\(\s*(.+)\s*,\s*([a-zA-Z_][\w]*)\s*\)$/.exec(text.trim()))) {
    const api = new URLSearchParams(window);
    api.append("match[]", match[1]);
    /** @type {PromLabels[]} */
    const series = (await fetchJson(`/api/v1/series?${api}`)).data;
    values = [...new Set(series.map((s) => s[match[2]]).filter((v) => v !== undefined))];
  } else if ((match = /^query_result\((.+)\)$/.exec(text.trim()))) {
    /** @type {import("./util.js").PromSample[]} */
    const result = (await fetchJson(`/api/v1/query?${new URLSearchParams({ query: match[1], time: window.end })}`)).data.result;
    values = result.map((s) => JSON.stringify(s.metric));
  } else if (text.trim()) {
    values = (await fetchJson(`/api/v1/label/${encodeURIComponent(text.trim())}/values?${new URLSearchParams(window)}`).catch(() => ({ data: /** @type {string[]} */ ([]) }))).data;
  }
  if (variable.regex) {
    try {
      const regex = new RegExp(variable.regex.replace(/^\/(.*)\/[a-z]*$/, "$1"));
      values = values.map((v) => {
        const m = regex.exec(v);
        return m ? (m[1] !== undefined ? m[1] : v) : null;
      }).filter((v) => v !== null);
    } catch {
      // A regex JavaScript cannot parse: the values unfiltered.
    }
  }
  return [...new Set(values)].sort();
}

/** @type {(s: string) => string} */
const regexEscape = (s) => s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");

/**
 * @param {Record<string, string | string[]>} values the variables' chosen values
 * @param {Record<string, string>} builtins `__interval`, `__range`, ...
 * @returns {Interpolate}
 */
function interpolator(values, builtins) {
  /** @type {(name: string) => string | null} */
  const lookup = (name) => {
    if (name in builtins) return builtins[name];
    if (!(name in values)) return null;
    const value = values[name];
    if (Array.isArray(value)) return value.length === 1 ? value[0] : `(${value.map(regexEscape).join("|")})`;
    return value;
  };
  return (text) =>
    String(text).replace(/\$\{(\w+)(?::\w+)?\}|\[\[(\w+)\]\]|\$(\w+)/g, (/** @type {string} */ whole, /** @type {string} */ a, /** @type {string} */ b, /** @type {string} */ c) => {
      const value = lookup(a || b || c);
      return value === null ? whole : value;
    });
}

/**
 * A series' legend: the panel's `{{label}}` format, or the series as PromQL writes it.
 * @param {string} format
 * @param {PromLabels} metric
 * @param {string} fallback
 * @returns {string}
 */
function legend(format, metric, fallback) {
  if (format && format !== "__auto") return format.replace(/\{\{\s*(\w+)\s*\}\}/g, (/** @type {string} */ _, /** @type {string} */ name) => metric[name] ?? "");
  const labels = Object.entries(metric).filter(([k]) => k !== "__name__");
  if (!labels.length) return metric.__name__ || fallback;
  return `${metric.__name__ || ""}{${labels.map(([k, v]) => `${k}="${v}"`).join(", ")}}`;
}

/**
 * A stat panel's number: Grafana's reducer `calc` over the values.
 * @param {string[]} values
 * @param {string} calc
 * @returns {number | null}
 */
function reduce(values, calc) {
  const numbers = values.map(Number).filter((v) => Number.isFinite(v));
  if (!numbers.length) return null;
  switch (calc) {
    case "mean":
      return numbers.reduce((a, b) => a + b, 0) / numbers.length;
    case "max":
      return Math.max(...numbers);
    case "min":
      return Math.min(...numbers);
    case "sum":
      return numbers.reduce((a, b) => a + b, 0);
    case "first":
    case "firstNotNull":
      return numbers[0];
    default:
      return numbers[numbers.length - 1];
  }
}

/**
 * The colour of the panel's threshold step `value` reaches, if any.
 * @param {Panel} panel
 * @param {number} value
 * @returns {string | null}
 */
function thresholdColor(panel, value) {
  /** @type {Array<{value: number | null, color: string}>} */
  const steps = panel.fieldConfig?.defaults?.thresholds?.steps || [];
  /** @type {string | null} */
  let color = null;
  for (const step of steps) if (step.value === null || step.value === undefined || value >= step.value) color = step.color;
  /** @type {Record<string, string>} */
  const named = { green: "#2da44e", red: "#cf222e", yellow: "#d4a72c", orange: "#e07a10", blue: "#2f6fde", purple: "#a371f7" };
  return named[color] || (typeof color === "string" && /^#[0-9a-fA-F]{3,8}$/.test(color) ? color : null);
}

/**
 * @param {string} expr
 * @param {TimeRange} range
 * @param {number} step seconds
 * @returns {Promise<PromSeries[]>}
 */
async function rangeQuery(expr, range, step) {
  /** @type {import("./util.js").PromResponse<{resultType: "matrix", result: PromSeries[]}>} */
  const result = await fetchJson(`/api/v1/query_range?${new URLSearchParams({ query: expr, start: String(range.start / 1000), end: String(range.end / 1000), step: String(step) })}`);
  return result.data.result;
}

/**
 * The exemplars of the series `expr` reads, as links to their requests.
 * @param {string} expr
 * @param {TimeRange} range
 * @param {string} unit
 * @returns {Promise<ChartMarker[]>}
 */
async function exemplarMarkers(expr, range, unit) {
  /** @type {import("./util.js").PromResponse<PromSeriesExemplars[]>} */
  const result = await fetchJson(`/api/v1/query_exemplars?${new URLSearchParams({ query: expr, start: String(range.start / 1000), end: String(range.end / 1000) })}`);
  return result.data.flatMap((series) =>
    series.exemplars
      .filter((e) => e.labels.trace_id)
      .map((e) => ({
        x: e.timestamp,
        y: Number(e.value),
        title: `${series.seriesLabels.service || series.seriesLabels.job || ""} ${formatValue(Number(e.value), unit)} at ${new Date(e.timestamp * 1000).toLocaleTimeString()}: trace ${e.labels.trace_id}`.trim(),
        href: hashFor("request", e.labels.trace_id),
      })),
  );
}

/**
 * @param {string} expr
 * @param {TimeRange} range evaluated at its end
 * @returns {Promise<import("./util.js").PromQueryData>}
 */
async function instantQuery(expr, range) {
  /** @type {import("./util.js").PromResponse<import("./util.js").PromQueryData>} */
  const result = await fetchJson(`/api/v1/query?${new URLSearchParams({ query: expr, time: String(range.end / 1000) })}`);
  return result.data;
}

/**
 * Draws one panel: its queries against the Prometheus API, as a chart, a table or stats.
 * @param {HTMLElement} body
 * @param {Panel} panel
 * @param {TimeRange} range
 * @param {number} step seconds
 * @param {Interpolate} interpolate
 */
async function drawPanel(body, panel, range, step, interpolate) {
  /** @type {Array<{expr: string, hide?: boolean, legendFormat?: string, refId?: string, exemplar?: boolean}>} */
  const targets = (panel.targets || []).filter((/** @type {{expr?: string, hide?: boolean}} */ t) => t.expr && !t.hide);
  const unit = panel.fieldConfig?.defaults?.unit || (panel.yaxes && panel.yaxes[0]?.format) || "";
  if (!targets.length) {
    body.append(emptyChart(panel.type === "text" ? panel.options?.content || "" : "no queries"));
    return;
  }
  if (panel.type === "timeseries" || panel.type === "graph") {
    const results = await Promise.all(targets.map((t) => rangeQuery(interpolate(t.expr), range, step).then((series) => series.map((s) => ({ ...s, target: t })))));
    const all = results.flat();
    if (!all.length) {
      body.append(emptyChart("no data"));
      return;
    }
    // The range's ends too: the axis spans the range, also while the
    // series have a single point so far.
    const ends = [range.start / 1000, range.end / 1000];
    const times = [...new Set([...ends, ...all.flatMap((s) => s.values.map((v) => v[0]))])].sort((a, b) => a - b);
    const index = new Map(times.map((t, i) => [t, i]));
    const series = all.slice(0, 40).map((s, i) => {
      const values = times.map(() => /** @type {number | null} */ (null));
      for (const [t, v] of s.values) values[index.get(t)] = Number(v);
      return { label: legend(interpolate(s.target.legendFormat || ""), s.metric, s.target.refId || "A"), color: PALETTE[i % PALETTE.length], values };
    });
    // Exemplars of the targets that ask for them (Grafana's `exemplar: true`).
    const found = await Promise.all(targets.filter((t) => t.exemplar).map((t) => exemplarMarkers(interpolate(t.expr), range, unit).catch(() => /** @type {ChartMarker[]} */ ([]))));
    // Targets over the same series find the same exemplars: each once.
    const unique = new Map(found.flat().map((m) => [`${m.href}@${m.x}`, m]));
    const markers = [...unique.values()].sort((a, b) => b.y - a.y).slice(0, MAX_EXEMPLARS);
    timeChart(body, { xs: times, series, height: Math.max(120, body.clientHeight - 50), unit, markers, onSelect: (a, b) => applyRange(a, b) });
    return;
  }
  if (panel.type === "table") {
    const table = el("table", { class: "panel-table" });
    /** @type {Array<{metric: PromLabels, value: number}>} */
    const rows = [];
    for (const target of targets) {
      const data = await instantQuery(interpolate(target.expr), range);
      for (const s of data.resultType === "vector" ? data.result : []) rows.push({ metric: s.metric, value: Number(s.value[1]) });
    }
    const labels = [...new Set(rows.flatMap((r) => Object.keys(r.metric)))];
    table.append(el("thead", {}, el("tr", {}, ...labels.map((l) => el("th", {}, l)), el("th", {}, "Value"))));
    const tbody = el("tbody");
    for (const row of rows) tbody.append(el("tr", {}, ...labels.map((l) => el("td", {}, row.metric[l] ?? "")), el("td", { class: "num" }, formatValue(row.value, unit))));
    table.append(tbody);
    body.append(rows.length ? table : emptyChart("no data"));
    return;
  }
  if (panel.type === "stat" || panel.type === "gauge" || panel.type === "singlestat" || panel.type === "bargauge") {
    const calc = panel.options?.reduceOptions?.calcs?.[0] || "lastNotNull";
    const box = el("div", { class: `panel-${panel.type === "gauge" ? "gauge" : "stat"}` });
    for (const target of targets) {
      const series = await rangeQuery(interpolate(target.expr), range, step);
      for (const s of series.slice(0, 8)) {
        const value = reduce(s.values.map((v) => v[1]), calc);
        const color = value === null ? null : thresholdColor(panel, value);
        const number = el("div", { class: "stat-value" }, formatValue(value, unit));
        if (color) number.style.color = color;
        const item = el("div", { class: "stat-item" }, number, series.length > 1 || target.legendFormat ? el("div", { class: "stat-label" }, legend(interpolate(target.legendFormat || ""), s.metric, "")) : null);
        if (panel.type === "gauge" || panel.type === "bargauge") {
          const min = panel.fieldConfig?.defaults?.min ?? 0;
          const max = panel.fieldConfig?.defaults?.max ?? (unit === "percentunit" ? 1 : unit === "percent" ? 100 : Math.max(1, value || 0));
          item.prepend(el("meter", { min, max, value: value ?? 0, class: "gauge-meter" }));
        }
        box.append(item);
      }
    }
    body.append(box.children.length ? box : emptyChart("no data"));
    return;
  }
  body.append(emptyChart(`panel type ${panel.type} is not supported`));
}

/**
 * Zooms the dashboard to a dragged range (epoch milliseconds); set by the dashboard shown.
 * @type {(startMs: number, endMs: number) => void}
 */
let applyRange = () => {};

/**
 * `#/dashboard/<uid>`. With a relative range (`to` is `now`), the panels are
 * drawn again every `refresh` (the dashboard's, or `?refresh=` as in
 * Grafana's URLs; at least 1s), and the dashboard file is read again each
 * time: a changed file shows without reloading the page.
 * @param {HTMLElement} root
 * @param {import("./util.js").View} view
 * @param {import("./util.js").ViewContext} ctx
 */
export async function renderDashboard(root, view, ctx) {
  const uid = view.id;
  const params = view.params;
  const header = el("div", { class: "dashboard-header" }, el("a", { href: hashFor("dashboards") }, "← dashboards"));
  const variablesBar = el("div", { id: "dashboard-variables", class: "variables" });
  const grid = el("div", { id: "dashboard-grid", class: "dashboard-grid" });
  root.append(el("section", { id: "dashboard-view" }, header, variablesBar, grid));
  /** @type {Dashboard} */
  let dashboard;
  try {
    dashboard = await fetchJson(`/api/dashboards/${encodeURIComponent(uid)}`);
  } catch (error) {
    grid.replaceChildren(errorBox(error));
    root.dataset.loaded = "error";
    return;
  }
  const withDefaults = new URLSearchParams(params);
  if (!withDefaults.get("from")) withDefaults.set("from", dashboard.time?.from || "now-1h");
  if (!withDefaults.get("to")) withDefaults.set("to", dashboard.time?.to || "now");
  const range = timeRange(withDefaults);
  /** @type {(changes: Record<string, string>) => void} */
  const nav = (changes) => {
    const next = new URLSearchParams(withDefaults);
    for (const [k, v] of Object.entries(changes)) next.set(k, v);
    go("dashboard", uid, next);
  };
  applyRange = (a, b) => nav({ from: String(a), to: String(b) });
  header.append(el("h2", {}, dashboard.title || uid), rangePicker(withDefaults, (from, to) => nav({ from, to })));

  const seconds = (range.end - range.start) / 1000;
  const step = Math.max(15, Math.ceil(seconds / 240));
  const builtins = { __interval: `${step}s`, __rate_interval: `${Math.max(4 * step, 60)}s`, __range: `${Math.round(seconds)}s`, __range_s: String(Math.round(seconds)) };
  /** @type {Record<string, string | string[]>} */
  const values = {};
  for (const variable of dashboard.templating?.list || []) {
    if (variable.type === "datasource" || variable.type === "adhoc") continue;
    const name = variable.name;
    /** @type {string[]} */
    let options = [];
    try {
      options = await variableValues(variable, range, interpolator(values, builtins));
    } catch {
      options = [];
    }
    const fromUrl = params.getAll(`var-${name}`);
    const current = variable.current?.value;
    /** @type {string[]} */
    let chosen = fromUrl.length ? fromUrl : Array.isArray(current) ? current : current !== undefined ? [current] : [];
    const all = chosen.includes("$__all") || chosen.includes("All");
    if (all || !chosen.length || !chosen.every((c) => options.includes(c))) chosen = variable.includeAll && (all || !options.length) ? ["$__all"] : options.length ? [options[0]] : chosen;
    values[name] = chosen.includes("$__all") ? variable.allValue || (options.length ? options : [".*"]) : variable.multi ? chosen : chosen[0] || "";
    if (variable.hide === 2) continue;
    const select = /** @type {HTMLSelectElement} */ (el("select", { "data-variable": name, multiple: variable.multi || false }));
    if (variable.includeAll) select.append(el("option", { value: "$__all", selected: chosen.includes("$__all") }, "All"));
    for (const option of options) select.append(el("option", { value: option, selected: chosen.includes(option) }, option));
    select.addEventListener("change", () => {
      const next = new URLSearchParams(withDefaults);
      next.delete(`var-${name}`);
      for (const option of select.selectedOptions) next.append(`var-${name}`, option.value);
      go("dashboard", uid, next);
    });
    variablesBar.append(el("label", { class: "variable" }, `${variable.label || name} `, select));
  }
  const interpolate = interpolator(values, builtins);
  /** @type {Array<{body: HTMLElement, panel: Panel}>} */
  const drawn = [];
  const panels = allPanels(dashboard).sort((a, b) => (a.gridPos?.y ?? 0) - (b.gridPos?.y ?? 0) || (a.gridPos?.x ?? 0) - (b.gridPos?.x ?? 0));
  /** @type {Promise<void>[]} */
  const work = [];
  for (const panel of panels) {
    const pos = panel.gridPos || { x: 0, y: 0, w: 12, h: 8 };
    const box = el("div", { class: `panel panel-type-${String(panel.type).replace(/[^a-z-]/gi, "")}`, "data-panel-id": panel.id ?? "" });
    box.style.gridColumn = `${(pos.x || 0) + 1} / span ${Math.min(24, pos.w || 12)}`;
    box.style.gridRow = `${(pos.y || 0) + 1} / span ${Math.max(1, pos.h || 8)}`;
    if (panel.type === "row") {
      box.append(el("h3", { class: "row-title" }, interpolate(panel.title || "")));
      grid.append(box);
      continue;
    }
    const body = el("div", { class: "panel-body" });
    body.dataset.uid = uid;
    box.append(el("div", { class: "panel-title", title: panel.description || "" }, interpolate(panel.title || "")), body);
    grid.append(box);
    drawn.push({ body, panel });
    work.push(drawPanel(body, panel, range, step, interpolate).catch((error) => body.replaceChildren(errorBox(error))));
  }
  await Promise.all(work);
  root.dataset.loaded = "1";

  const every = refreshMs(params.get("refresh") || dashboard.refresh);
  if (every === null || !/^now/.test(range.to)) return;
  header.append(el("span", { class: "muted refresh-every", title: "the panels are drawn again on this interval" }, `refresh ${params.get("refresh") || dashboard.refresh}`));
  const original = JSON.stringify(dashboard);
  let refreshes = 0;
  let busy = false;
  const timer = setInterval(async () => {
    if (busy || !ctx.current()) return;
    busy = true;
    try {
      /** @type {Dashboard} */
      const latest = await fetchJson(`/api/dashboards/${encodeURIComponent(uid)}`);
      if (!ctx.current()) return;
      if (JSON.stringify(latest) !== original) {
        // The file changed: lay the dashboard out again from it.
        window.dispatchEvent(new HashChangeEvent("hashchange"));
        return;
      }
      const now = timeRange(withDefaults);
      await Promise.all(
        drawn.map(({ body, panel }) => {
          body.replaceChildren();
          return drawPanel(body, panel, now, step, interpolate).catch((error) => body.replaceChildren(errorBox(error)));
        }),
      );
      sweepCharts();
      refreshes += 1;
      root.dataset.refreshes = String(refreshes);
    } catch {
      // A failed refresh keeps what is drawn; the next one tries again.
    } finally {
      busy = false;
    }
  }, every);
  ctx.onLeave(() => clearInterval(timer));
}

/**
 * A dashboard's `refresh` (`"30s"`, `"1m"`; `""` or `false` for none) in
 * milliseconds, at least one second.
 * @param {unknown} refresh
 * @returns {number | null}
 */
function refreshMs(refresh) {
  if (typeof refresh !== "string" || !refresh) return null;
  const ms = durationMs(refresh);
  return ms === null || ms <= 0 ? null : Math.max(1000, ms);
}

// @ts-check
// Charts with the vendored uPlot (vendor/uPlot.esm.js, MIT): time series,
// stacked bars for the log volume, sparklines.

import uPlot from "./vendor/uPlot.esm.js";
import { el } from "./util.js";

/**
 * The parts of a uPlot chart this module uses (the vendored build carries
 * no types of its own).
 * @typedef {object} Chart
 * @property {HTMLElement} root
 * @property {HTMLElement} over
 * @property {{idx?: number | null}} cursor
 * @property {{left: number, width: number, top: number, height: number}} select
 * @property {() => void} destroy
 * @property {(position: number, scale: string) => number} posToVal
 * @property {(value: number, scale: string) => number} valToPos
 * @property {(select: {left: number, width: number, top: number, height: number}, fire: boolean) => void} setSelect
 */

/**
 * The uPlot constructor and the path builders used here.
 * @typedef {{new (options: object, data: Array<Array<number | null>>, target: HTMLElement): Chart, paths: {bars: (options: object) => unknown}, rangeNum: (min: number, max: number, pad: number, soft: boolean) => [number, number]}} ChartConstructor
 */

const UPlot = /** @type {ChartConstructor} */ (/** @type {unknown} */ (uPlot));

/** @type {Set<Chart>} */
const charts = new Set();

/** Destroys charts whose canvas left the page (views re-render on navigation). */
export function sweepCharts() {
  for (const chart of charts) {
    if (!chart.root.isConnected) {
      chart.destroy();
      charts.delete(chart);
    }
  }
}

/**
 * @param {HTMLElement} container
 * @param {number} [fallback]
 * @returns {number}
 */
function widthOf(container, fallback = 600) {
  return Math.max(120, Math.floor(container.clientWidth || container.parentElement?.clientWidth || fallback));
}

/**
 * One line (or bar stack) of a chart: a value per x, `null` for a gap.
 * @typedef {{label: string, color: string, values: Array<number | null>}} ChartSeries
 */

/**
 * A point drawn over a chart as a link: an exemplar (`x` epoch seconds, `y`
 * its value) opening the request it came from.
 * @typedef {{x: number, y: number, title: string, href: string}} ChartMarker
 */

/**
 * A time-series chart. `xs` are epoch seconds; each series is
 * `{label, color, values}`. `bars` draws stacked bars (the series are
 * stacked in order). `onSelect(startMs, endMs)` is called after a drag, and
 * `onClick(index)` after a click on a point. `markers` are drawn over the
 * lines as links (`a.exemplar`), the y axis stretched to show them.
 * @param {HTMLElement} container
 * @param {object} chart
 * @param {number[]} chart.xs
 * @param {ChartSeries[]} chart.series
 * @param {number} [chart.height]
 * @param {boolean} [chart.bars]
 * @param {(startMs: number, endMs: number) => void} [chart.onSelect]
 * @param {(index: number) => void} [chart.onClick]
 * @param {string} [chart.unit] a Grafana unit, see [`formatValue`]
 * @param {ChartMarker[]} [chart.markers]
 * @returns {Chart}
 */
export function timeChart(container, { xs, series, height = 220, bars = false, onSelect, onClick, unit = "", markers = [] }) {
  /** @type {Array<Array<number | null>>} */
  let data = [xs];
  if (bars) {
    // Stacked: series i is drawn as the running sum, the top ones first.
    const sums = xs.map(() => 0);
    const stacked = series.map((s) => s.values.map((v, i) => (sums[i] += v || 0)));
    data = [xs, ...stacked];
  } else {
    data = [xs, ...series.map((s) => s.values)];
  }
  const barPaths = bars ? UPlot.paths.bars({ size: [0.9, 60] }) : undefined;
  const options = {
    width: widthOf(container),
    height,
    cursor: { drag: { x: Boolean(onSelect), y: false, setScale: false } },
    legend: { show: true },
    scales: markers.length ? { x: { time: true }, y: { range: markerRange(markers) } } : { x: { time: true } },
    axes: [{}, { size: 60, values: (/** @type {Chart} */ _, /** @type {number[]} */ ticks) => ticks.map((t) => formatValue(t, unit)) }],
    series: [
      {},
      ...series.map((s) => ({
        label: s.label,
        stroke: s.color,
        fill: bars ? s.color : undefined,
        width: bars ? 0 : 1.5,
        paths: barPaths,
        // Lines: uPlot's default, points only where they are far apart, so
        // a series with a single sample so far still shows.
        points: bars ? { show: false } : {},
        value: (/** @type {Chart} */ _, /** @type {number | null} */ v) => (v === null || v === undefined ? "–" : formatValue(v, unit)),
      })),
    ],
    hooks: {
      setSelect: [
        (/** @type {Chart} */ u) => {
          if (!onSelect || u.select.width < 3) return;
          const a = u.posToVal(u.select.left, "x");
          const b = u.posToVal(u.select.left + u.select.width, "x");
          u.setSelect({ left: 0, width: 0, top: 0, height: 0 }, false);
          onSelect(Math.floor(a * 1000), Math.ceil(b * 1000));
        },
      ],
      draw: [(/** @type {Chart} */ u) => placeMarkers(u, markers, links)],
    },
  };
  const links = markers.map((m) => el("a", { class: "exemplar", href: m.href, title: m.title, "aria-label": m.title }));
  if (bars) {
    // Draw the biggest (cumulative) first so smaller stacks stay visible.
    options.series = [options.series[0], ...options.series.slice(1).reverse()];
    data = [data[0], ...data.slice(1).reverse()];
  }
  const chart = new UPlot(options, data, container);
  if (links.length) {
    chart.over.append(el("div", { class: "chart-markers" }, ...links));
    placeMarkers(chart, markers, links);
  }
  if (onClick) {
    chart.over.addEventListener("click", () => {
      if (chart.cursor.idx !== null && chart.cursor.idx !== undefined && chart.select.width < 3) onClick(chart.cursor.idx);
    });
  }
  charts.add(chart);
  return chart;
}

/**
 * The y range of a chart with markers: the data's and the markers' values.
 * @param {ChartMarker[]} markers
 * @returns {(u: Chart, min: number | null, max: number | null) => [number, number]}
 */
function markerRange(markers) {
  const ys = markers.map((m) => m.y).filter(Number.isFinite);
  return (_, min, max) => {
    const low = Math.min(min ?? Infinity, ...ys);
    const high = Math.max(max ?? -Infinity, ...ys);
    return Number.isFinite(low) && Number.isFinite(high) ? UPlot.rangeNum(low, high, 0.1, true) : [0, 1];
  };
}

/**
 * Moves each marker's link onto its point (after every redraw: zoom,
 * resize); those outside the plot are hidden.
 * @param {Chart} chart
 * @param {ChartMarker[]} markers
 * @param {HTMLElement[]} links
 */
function placeMarkers(chart, markers, links) {
  markers.forEach((marker, i) => {
    const link = links[i];
    if (!link) return;
    const left = chart.valToPos(marker.x, "x");
    const top = chart.valToPos(marker.y, "y");
    const inside = Number.isFinite(left) && Number.isFinite(top) && left >= 0 && top >= 0 && left <= chart.over.clientWidth && top <= chart.over.clientHeight;
    link.hidden = !inside;
    link.style.left = `${left}px`;
    link.style.top = `${top}px`;
  });
}

/**
 * A small line without axes or legend.
 * @param {HTMLElement} container
 * @param {number[]} xs epoch seconds
 * @param {number[]} values
 * @param {string} color
 * @returns {Chart}
 */
export function sparkline(container, xs, values, color) {
  const chart = new UPlot(
    {
      width: 160,
      height: 36,
      cursor: { show: false },
      legend: { show: false },
      axes: [{ show: false }, { show: false }],
      scales: { x: { time: true } },
      series: [{}, { stroke: color, fill: `${color}33`, width: 1.5, points: { show: false } }],
    },
    [xs, values],
    container,
  );
  charts.add(chart);
  return chart;
}

/**
 * A number with a Grafana unit (`s`, `ms`, `percentunit`, `percent`, `bytes`, `reqps`).
 * @param {number | null | undefined} value
 * @param {string} [unit]
 * @returns {string}
 */
export function formatValue(value, unit = "") {
  if (value === null || value === undefined || Number.isNaN(value)) return "–";
  /** @type {(v: number) => string} */
  const short = (v) => {
    const abs = Math.abs(v);
    if (abs >= 1e9) return `${(v / 1e9).toFixed(2)}G`;
    if (abs >= 1e6) return `${(v / 1e6).toFixed(2)}M`;
    if (abs >= 1e3) return `${(v / 1e3).toFixed(2)}k`;
    if (abs === 0) return "0";
    if (abs < 0.01) return v.toExponential(1);
    return String(Math.round(v * 100) / 100);
  };
  switch (unit) {
    case "percentunit":
      return `${(value * 100).toFixed(1)}%`;
    case "percent":
      return `${value.toFixed(1)}%`;
    case "s":
      return value < 1 ? `${(value * 1000).toFixed(1)} ms` : `${value.toFixed(2)} s`;
    case "ms":
      return `${value.toFixed(1)} ms`;
    case "bytes":
    case "decbytes": {
      const units = ["B", "KiB", "MiB", "GiB", "TiB"];
      let v = value;
      let i = 0;
      while (Math.abs(v) >= 1024 && i < units.length - 1) {
        v /= 1024;
        i++;
      }
      return `${v.toFixed(i ? 1 : 0)} ${units[i]}`;
    }
    case "reqps":
      return `${short(value)} req/s`;
    default:
      return short(value);
  }
}

/**
 * The placeholder of a chart without data.
 * @param {string} text
 * @returns {HTMLElement}
 */
export function emptyChart(text) {
  return el("div", { class: "chart-empty" }, text);
}

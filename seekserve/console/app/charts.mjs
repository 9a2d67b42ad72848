// Charts: daily bars drawn by uPlot (canvas, sized to their container), and horizontal bars
// in plain HTML for totals per model or key.
import uPlot from "../vendor/uplot/uPlot.esm.js";
import { Component, createRef, fmtInt, fmtMoney, html } from "./ui.mjs";

const DAY = 86400;

/** Every UTC day from `start` to `end` (YYYY-MM-DD), as epoch seconds. */
export function daysBetween(start, end) {
  const out = [];
  for (let t = Date.parse(`${start}T00:00:00Z`) / 1000; t <= Date.parse(`${end}T00:00:00Z`) / 1000; t += DAY) {
    out.push(t);
  }
  return out;
}

/** Daily bars: `series` is [{label, color, values}], stacked in the order given. */
export class DayBars extends Component {
  constructor() {
    super();
    this.box = createRef();
    this.plot = null;
    this.resize = null;
  }

  componentDidMount() {
    this.draw();
    this.resize = new ResizeObserver(() => {
      if (this.plot) this.plot.setSize(this.size());
    });
    this.resize.observe(this.box.current);
  }

  componentDidUpdate(previous) {
    if (previous.days !== this.props.days || previous.series !== this.props.series) this.draw();
  }

  componentWillUnmount() {
    if (this.resize) this.resize.disconnect();
    if (this.plot) this.plot.destroy();
  }

  size() {
    return { width: Math.max(240, this.box.current.clientWidth), height: this.props.height || 220 };
  }

  draw() {
    if (this.plot) this.plot.destroy();
    const { days, series, money } = this.props;
    // Stacked: each drawn bar is the sum of its series and those after it, drawn tallest first,
    // so every series shows its own share; the legend reads the series' own values.
    const stacked = series.map((_, i) => days.map((__, d) =>
      series.slice(i).reduce((sum, s) => sum + (s.values[d] || 0), 0)));
    const format = money ? (v) => fmtMoney(v) : (v) => fmtInt(v);
    const bars = uPlot.paths.bars({ size: [0.6, 48] });
    this.plot = new uPlot({
      ...this.size(),
      tzDate: (ts) => uPlot.tzDate(new Date(ts * 1e3), "Etc/UTC"),
      cursor: { points: { show: false }, drag: { x: false, y: false } },
      legend: { live: false },
      scales: {
        x: { time: true, range: (_, min, max) => [min - DAY * 0.6, max + DAY * 0.6] },
        y: { range: (_, __, max) => [0, max > 0 ? max * 1.1 : 1] },
      },
      axes: [
        { stroke: "#5c6370", grid: { show: false }, ticks: { stroke: "#e3e6ea" } },
        { stroke: "#5c6370", size: money ? 84 : 56, grid: { stroke: "#eef0f3" }, ticks: { show: false },
          values: (_, splits) => splits.map((v) => (money ? fmtMoney(v) : compact(v))) },
      ],
      series: [
        { value: (_, ts) => (ts === null ? "—" : new Date(ts * 1e3).toISOString().slice(0, 10)) },
        ...series.map((s, i) => ({
          label: s.label,
          stroke: s.color,
          fill: s.color,
          width: 0,
          paths: bars,
          points: { show: false },
          value: (u, _, __, idx) => (idx === null ? "—" : format(series[i].values[idx] || 0)),
        })),
      ],
    }, [days, ...stacked], this.box.current);
  }

  render() {
    return html`<div class="chart" ref=${this.box} role="img" aria-label=${this.props.label}></div>`;
  }
}

function compact(value) {
  if (value >= 1e6) return `${(value / 1e6).toFixed(value >= 1e7 ? 0 : 1)}M`;
  if (value >= 1e3) return `${(value / 1e3).toFixed(value >= 1e4 ? 0 : 1)}k`;
  return String(Math.round(value));
}

/** Totals as horizontal bars: rows are [{label, detail, tokens, cost, requests}]. */
export function TotalBars({ rows, caption }) {
  const max = Math.max(1, ...rows.map((r) => r.tokens));
  if (!rows.length) return html`<p class="muted">No usage in this range.</p>`;
  return html`<div class="table-wrap"><table class="bars">
    <caption class="sr-only">${caption}</caption>
    <thead><tr><th scope="col">${caption}</th><th scope="col">Tokens</th>
      <th scope="col" class="num col-requests">Requests</th><th scope="col" class="num">Cost</th></tr></thead>
    <tbody>${rows.map((r) => html`<tr>
      <th scope="row"><span class="bar-label">${r.label}</span>
        ${r.detail && html`<span class="muted small bar-detail">${r.detail}</span>`}</th>
      <td class="bar-cell">
        <div class="hbar"><div class="hbar-fill" style=${{ width: `${(100 * r.tokens) / max}%` }}></div></div>
        <span class="num">${fmtInt(r.tokens)}</span>
      </td>
      <td class="num col-requests">${fmtInt(r.requests)}</td>
      <td class="num">${fmtMoney(r.cost)}</td>
    </tr>`)}</tbody>
  </table></div>`;
}

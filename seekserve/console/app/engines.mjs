// Engines: each engine's live state from GET /ready, read again every few seconds.
import { readJson } from "./api.mjs";
import { Component, Notice, fmtInt, html } from "./ui.mjs";

const REFRESH_MS = 2000;

function ratio(part, whole) {
  return whole > 0 ? part / whole : null;
}

function percent(value) {
  return value === null ? "—" : `${(value * 100).toFixed(1)}%`;
}

export class Engines extends Component {
  constructor() {
    super();
    this.state = { ready: null, error: null, at: null };
    this.timer = null;
  }

  componentDidMount() {
    this.poll();
  }

  componentWillUnmount() {
    clearTimeout(this.timer);
    this.timer = "unmounted";
  }

  async poll() {
    try {
      const response = await fetch("/ready", { headers: { Accept: "application/json" },
        credentials: "omit", cache: "no-store" });
      // 503 while engines load: its body still says where each one is.
      const body = response.status === 503 ? await response.json() : await readJson(response);
      this.setState({ ready: body, error: null, at: new Date() });
    } catch (err) {
      this.setState({ error: err.message });
    }
    if (this.timer !== "unmounted") this.timer = setTimeout(() => this.poll(), REFRESH_MS);
  }

  render(_, s) {
    if (!s.ready) {
      return s.error ? html`<${Notice} kind="error">${s.error}</${Notice}>`
        : html`<p class="muted">Loading engine state…</p>`;
    }
    const engines = Object.entries(s.ready.engines);
    return html`<div class="stack">
      <p class="muted small live" aria-live="polite">
        Server ${s.ready.status} · ${engines.length} engine${engines.length === 1 ? "" : "s"} ·
        refreshed every ${REFRESH_MS / 1000} s${s.at ? `, last at ${s.at.toLocaleTimeString("en-GB")}` : ""}
      </p>
      ${s.error && html`<${Notice} kind="warn" title="Refresh failed:">${s.error}</${Notice}>`}
      <div class="engine-grid">
        ${engines.map(([name, state]) => html`<${EngineCard} name=${name} state=${state} />`)}
      </div>
    </div>`;
  }
}

function EngineCard({ name, state }) {
  const remote = state.replicas !== undefined;
  const kvShare = ratio(state.kv_cells_used, state.kv_cells_total);
  const hit = ratio(state.cache_hit_tokens_total, state.prompt_tokens_total);
  const stats = [
    ["Running", fmtInt(state.running), "running"],
    ["Queued requests", fmtInt(state.queued), "queued"],
    ["Queued tokens", fmtInt(state.queued_tokens), "queued-tokens"],
    ["Preemptions", fmtInt(state.preemptions_total), "preemptions"],
    ["Cache entries", fmtInt(state.cache_entries), "cache-entries"],
    ["Cache hit ratio", percent(hit), "hit-ratio"],
    ["Prompt tokens", fmtInt(state.prompt_tokens_total), "prompt-total"],
    ["Cache-hit tokens", fmtInt(state.cache_hit_tokens_total), "hit-total"],
  ];
  return html`<section class="card engine" data-engine=${name} aria-labelledby=${`engine-${name}`}>
    <div class="engine-head">
      <h2 id=${`engine-${name}`}>${name}</h2>
      <span class="muted small">${remote ? "remote" : "embedded"}</span>
      <span class=${`badge ${state.loaded ? "ok" : "warn"}`}>${state.loaded ? "serving" : "not ready"}</span>
    </div>
    ${!remote && html`<div class="kv">
      <div class="kv-label"><span>KV cells used</span>
        <span class="num">${`${fmtInt(state.kv_cells_used)} / ${fmtInt(state.kv_cells_total)} (${percent(kvShare)})`}</span></div>
      <div class="hbar" role="meter" aria-label="KV cells used" aria-valuemin="0"
        aria-valuemax=${state.kv_cells_total} aria-valuenow=${state.kv_cells_used}>
        <div class="hbar-fill" style=${{ width: `${100 * (kvShare || 0)}%` }}></div>
      </div>
    </div>`}
    <dl class="stats">
      ${stats.map(([label, value, key]) => html`<div class=${`stat stat-${key}`}>
        <dt>${label}</dt><dd>${value}</dd></div>`)}
    </dl>
    ${remote && html`<${Replicas} state=${state} />`}
  </section>`;
}

function Replicas({ state }) {
  return html`<div class="table-wrap">
    <table class="replicas">
      <caption>Replicas: ${state.replicas_serving} of ${state.replicas} serving ·
        ${fmtInt(state.upstream_failures_total)} upstream failures ·
        ${fmtInt(state.breaker_openings_total)} breaker openings</caption>
      <thead><tr><th scope="col">#</th><th scope="col">Health check</th><th scope="col">Breaker</th>
        <th scope="col" class="num">In flight</th><th scope="col" class="num">Failures</th></tr></thead>
      <tbody>${(state.replica_states || []).map((r) => html`<tr>
        <td>${r.index}</td>
        <td><span class=${`badge ${r.healthy ? "ok" : "error"}`}>${r.healthy ? "healthy" : "failing"}</span></td>
        <td><span class=${`badge breaker-${r.breaker}`}>${r.breaker.replace("_", "-")}</span></td>
        <td class="num">${fmtInt(r.in_flight)}</td>
        <td class="num">${fmtInt(r.failures_total)}</td>
      </tr>`)}</tbody>
    </table>
  </div>`;
}

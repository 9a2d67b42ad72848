// Usage from the ledger: tokens and cost per day, per model and per key, and the latest
// requests (admin key); with an API key only, that key's own usage (GET /v1/usage).
import { call, catalog, getKey } from "./api.mjs";
import { DayBars, TotalBars, daysBetween } from "./charts.mjs";
import { Component, Field, Notice, fmtInt, fmtMoney, fmtSeconds, fmtTime, html, uid } from "./ui.mjs";

const PROMPT_COLOR = "#4263eb";
const COMPLETION_COLOR = "#20c997";
const COST_COLOR = "#f59f00";

function today() {
  return new Date().toISOString().slice(0, 10);
}

function daysAgo(n) {
  return new Date(Date.now() - n * 86400e3).toISOString().slice(0, 10);
}

function totalsBy(rows, field) {
  const out = new Map();
  for (const r of rows) {
    const name = r[field];
    const t = out.get(name) || { name, tokens: 0, cost: 0, requests: 0, prompt: 0, completion: 0 };
    t.tokens += r.total_tokens;
    t.cost += Number(r.cost);
    t.requests += r.requests;
    t.prompt += r.prompt_tokens;
    t.completion += r.completion_tokens;
    out.set(name, t);
  }
  return [...out.values()].sort((a, b) => b.tokens - a.tokens);
}

export class Usage extends Component {
  constructor() {
    super();
    this.ids = { key: uid("u-key"), model: uid("u-model"), start: uid("u-start"), end: uid("u-end") };
    this.state = { key: "", model: "", start: daysAgo(13), end: today(), keys: [], models: [],
      daily: null, byKey: null, requests: null, error: null, loading: false };
  }

  admin() {
    return Boolean(getKey("admin"));
  }

  componentDidMount() {
    catalog().then((found) => this.setState({ models: found.models }), () => {});
    if (this.admin()) {
      call("/admin/keys", { kind: "admin" }).then((r) => this.setState({ keys: r.data }), () => {});
    }
    this.load();
  }

  async load() {
    const { key, model, start, end } = this.state;
    if (start && end && end < start) {
      this.setState({ error: "The end date is before the start date." });
      return;
    }
    this.setState({ loading: true, error: null });
    try {
      if (this.admin()) {
        const filters = { key, model, start, end };
        const [daily, byKey, requests] = await Promise.all([
          call("/admin/usage", { kind: "admin", query: { group_by: ["day", "model"], ...filters } }),
          call("/admin/usage", { kind: "admin", query: { group_by: ["key"], ...filters } }),
          call("/admin/requests", { kind: "admin", query: { limit: 25, ...filters } }),
        ]);
        this.setState({ daily: daily.data, byKey: byKey.data, requests: requests.data });
      } else {
        const own = await call("/v1/usage", { query: { start, end } });
        const rows = model ? own.data.filter((r) => r.model === model) : own.data;
        this.setState({ daily: rows, byKey: null, requests: null });
      }
    } catch (err) {
      this.setState({ error: err.message });
    } finally {
      this.setState({ loading: false });
    }
  }

  filter(name) {
    return (e) => this.setState({ [name]: e.currentTarget.value }, () => this.load());
  }

  keyName(id) {
    if (id === null) return "static key / no key";
    const key = this.state.keys.find((k) => k.id === id);
    return key ? key.name : id;
  }

  render(_, s) {
    const admin = this.admin();
    return html`<div class="stack">
      ${!admin && html`<${Notice} kind="info" title="Your key's usage.">
        Usage of every key, per key, and the latest requests need the admin key.</${Notice}>`}
      ${this.renderFilters(s, admin)}
      ${s.error && html`<${Notice} kind="error">${s.error}</${Notice}>`}
      ${s.daily && this.renderSummary(s)}
      ${s.daily && this.renderCharts(s)}
      ${s.requests && this.renderRequests(s)}
    </div>`;
  }

  renderFilters(s, admin) {
    const ids = this.ids;
    return html`<form class="card filters" aria-label="Filters" onSubmit=${(e) => { e.preventDefault(); this.load(); }}>
      ${admin && html`<${Field} id=${ids.key} label="Key">
        ${() => html`<select id=${ids.key} value=${s.key} onChange=${this.filter("key")}>
          <option value="">All keys</option>
          ${s.keys.map((k) => html`<option value=${k.id}>${k.name} (${k.prefix})</option>`)}
        </select>`}
      </${Field}>`}
      <${Field} id=${ids.model} label="Model">
        ${() => html`<select id=${ids.model} value=${s.model} onChange=${this.filter("model")}>
          <option value="">All models</option>
          ${s.models.map((m) => html`<option value=${m.id}>${m.id}</option>`)}
        </select>`}
      </${Field}>
      <${Field} id=${ids.start} label="From (UTC)">
        ${() => html`<input id=${ids.start} type="date" value=${s.start} onChange=${this.filter("start")} />`}
      </${Field}>
      <${Field} id=${ids.end} label="To (UTC)">
        ${() => html`<input id=${ids.end} type="date" value=${s.end} onChange=${this.filter("end")} />`}
      </${Field}>
      <div class="field end">
        <button type="submit" class="btn" disabled=${s.loading}>${s.loading ? "Loading…" : "Refresh"}</button>
      </div>
    </form>`;
  }

  renderSummary(s) {
    const sum = (field) => s.daily.reduce((n, r) => n + Number(r[field]), 0);
    const items = [
      ["Requests", fmtInt(sum("requests")), null],
      ["Prompt tokens", fmtInt(sum("prompt_tokens")), `${fmtInt(sum("cached_tokens"))} cached`],
      ["Completion tokens", fmtInt(sum("completion_tokens")), `${fmtInt(sum("reasoning_tokens"))} reasoning`],
      ["Cost", fmtMoney(sum("cost")), "at the models' prices"],
    ];
    return html`<dl class="summary">
      ${items.map(([label, value, detail]) => html`<div class="card metric">
        <dt>${label}</dt><dd>${value}</dd>${detail && html`<dd class="muted small">${detail}</dd>`}
      </div>`)}
    </dl>`;
  }

  renderCharts(s) {
    const first = s.daily.reduce((m, r) => (r.day < m ? r.day : m), s.start || today());
    const last = s.daily.reduce((m, r) => (r.day > m ? r.day : m), s.end || today());
    const days = daysBetween(first, last);
    const index = new Map(days.map((t, i) => [new Date(t * 1e3).toISOString().slice(0, 10), i]));
    const prompt = days.map(() => 0);
    const completion = days.map(() => 0);
    const cost = days.map(() => 0);
    for (const r of s.daily) {
      const i = index.get(r.day);
      prompt[i] += r.prompt_tokens;
      completion[i] += r.completion_tokens;
      cost[i] += Number(r.cost);
    }
    const tokenSeries = [{ label: "Prompt", color: PROMPT_COLOR, values: prompt },
      { label: "Completion", color: COMPLETION_COLOR, values: completion }];
    const costSeries = [{ label: "Cost", color: COST_COLOR, values: cost }];
    const models = totalsBy(s.daily, "model").map((t) => ({ label: t.name, tokens: t.tokens,
      cost: t.cost, requests: t.requests,
      detail: `${fmtInt(t.prompt)} prompt · ${fmtInt(t.completion)} completion` }));
    const keys = s.byKey && totalsBy(s.byKey, "key").map((t) => ({ label: this.keyName(t.name),
      detail: t.name, tokens: t.tokens, cost: t.cost, requests: t.requests }));
    return html`<div class="chart-grid">
      <section class="card" aria-labelledby="u-tokens-title">
        <h2 id="u-tokens-title">Tokens per day</h2>
        <${DayBars} days=${days} series=${tokenSeries} label="Prompt and completion tokens per day" />
      </section>
      <section class="card" aria-labelledby="u-cost-title">
        <h2 id="u-cost-title">Cost per day</h2>
        <${DayBars} days=${days} series=${costSeries} money label="Cost per day in USD" />
      </section>
      <section class="card" aria-labelledby="u-model-title">
        <h2 id="u-model-title">Per model</h2>
        <${TotalBars} rows=${models} caption="Model" />
      </section>
      ${keys && html`<section class="card" aria-labelledby="u-key-title">
        <h2 id="u-key-title">Per key</h2>
        <${TotalBars} rows=${keys} caption="Key" />
      </section>`}
    </div>`;
  }

  renderRequests(s) {
    return html`<section class="card" aria-labelledby="u-req-title">
      <h2 id="u-req-title">Latest requests</h2>
      ${s.requests.length === 0 ? html`<p class="muted">No requests in this range.</p>` : html`
      <div class="table-wrap">
        <table class="requests">
          <thead><tr>
            <th scope="col">Time</th><th scope="col">Key</th><th scope="col">Model</th>
            <th scope="col">Status</th><th scope="col" class="num">Prompt</th>
            <th scope="col" class="num">Cached</th><th scope="col" class="num">Completion</th>
            <th scope="col" class="num">Reasoning</th><th scope="col" class="num">TTFT</th>
            <th scope="col" class="num">Duration</th><th scope="col" class="num">Cost</th>
          </tr></thead>
          <tbody>${s.requests.map((r) => html`<tr key=${r.request_id} data-request-id=${r.request_id}
              data-user-id=${r.user_id || ""}>
            <td><span class="nowrap">${fmtTime(r.created_at)}</span>
              <div class="muted small">${r.route}</div></td>
            <td>${this.keyName(r.key_id)}</td>
            <td>${r.model}</td>
            <td><span class=${`badge req-${r.status}`}>${r.status}</span></td>
            <td class="num prompt">${fmtInt(r.prompt_tokens)}</td>
            <td class="num cached">${fmtInt(r.cached_tokens)}</td>
            <td class="num completion">${fmtInt(r.completion_tokens)}</td>
            <td class="num reasoning">${fmtInt(r.reasoning_tokens)}</td>
            <td class="num">${fmtSeconds(r.ttft_s)}</td>
            <td class="num">${fmtSeconds(r.total_s)}</td>
            <td class="num">${fmtMoney(r.cost)}</td>
          </tr>`)}</tbody>
        </table>
      </div>`}
    </section>`;
  }
}

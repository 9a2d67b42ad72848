// Managed keys (admin key): create one with its limits (its plaintext shown once), list, revoke.
import { call, catalog } from "./api.mjs";
import { Component, Field, Notice, fmtInt, fmtMoney, html, uid } from "./ui.mjs";

const LIMITS = [
  ["rpm", "Requests / minute"],
  ["tpm", "Tokens / minute"],
  ["max_concurrency", "Concurrent requests"],
  ["max_user_concurrency", "Concurrent per user_id"],
  ["budget_tokens", "Budget (tokens)"],
];

function emptyForm() {
  return { name: "", rpm: "", tpm: "", max_concurrency: "", max_user_concurrency: "",
    budget_tokens: "", budget_usd: "", expires: "", models: [] };
}

function keyState(key) {
  if (key.revoked_at) return ["revoked", "Revoked"];
  if (key.expires_at && new Date(key.expires_at) <= new Date()) return ["expired", "Expired"];
  return ["active", "Active"];
}

function limitsText(key) {
  const parts = [];
  if (key.rpm) parts.push(`${fmtInt(key.rpm)} rpm`);
  if (key.tpm) parts.push(`${fmtInt(key.tpm)} tpm`);
  if (key.max_concurrency) parts.push(`${key.max_concurrency} concurrent`);
  if (key.max_user_concurrency) parts.push(`${key.max_user_concurrency} per user`);
  return parts.join(" · ") || "none";
}

function budgetText(key) {
  const parts = [];
  if (key.budget_tokens !== null) parts.push(`${fmtInt(key.budget_tokens)} tokens`);
  if (key.budget_usd !== null) parts.push(fmtMoney(key.budget_usd));
  return parts.join(" · ") || "none";
}

export class Keys extends Component {
  constructor() {
    super();
    this.ids = { name: uid("key-name"), budgetUsd: uid("key-usd"), expires: uid("key-exp"),
      secret: uid("key-secret") };
    for (const [name] of LIMITS) this.ids[name] = uid(`key-${name}`);
    this.state = { keys: null, models: [], form: emptyForm(), error: null, created: null,
      busy: false, confirming: null, copied: false };
  }

  componentDidMount() {
    this.load();
    catalog().then((found) => this.setState({ models: found.models }), () => {});
  }

  async load() {
    try {
      const listed = await call("/admin/keys", { kind: "admin" });
      this.setState({ keys: listed.data.slice().reverse() });
    } catch (err) {
      this.setState({ error: err.message });
    }
  }

  setField(name) {
    return (e) => this.setState({ form: { ...this.state.form, [name]: e.currentTarget.value } });
  }

  toggleModel(name) {
    const models = this.state.form.models;
    this.setState({ form: { ...this.state.form,
      models: models.includes(name) ? models.filter((m) => m !== name) : [...models, name] } });
  }

  async create(e) {
    e.preventDefault();
    const f = this.state.form;
    const body = { name: f.name.trim() };
    for (const [name] of LIMITS) if (f[name] !== "") body[name] = Number(f[name]);
    if (f.budget_usd !== "") body.budget_usd = f.budget_usd;
    if (f.expires.trim()) body.expires = f.expires.trim();
    if (f.models.length) body.models = f.models;
    this.setState({ busy: true, error: null });
    try {
      const created = await call("/admin/keys", { kind: "admin", method: "POST", body });
      this.setState({ created, form: emptyForm(), copied: false });
      await this.load();
    } catch (err) {
      this.setState({ error: err.param ? `${err.param}: ${err.message}` : err.message });
    } finally {
      this.setState({ busy: false });
    }
  }

  async revoke(id) {
    this.setState({ confirming: null, error: null });
    try {
      await call(`/admin/keys/${encodeURIComponent(id)}`, { kind: "admin", method: "DELETE" });
      await this.load();
    } catch (err) {
      this.setState({ error: err.message });
    }
  }

  async copy() {
    const field = document.getElementById(this.ids.secret);
    try {
      await navigator.clipboard.writeText(this.state.created.key);
    } catch {
      field.select(); // the user can copy the selection themselves
    }
    this.setState({ copied: true });
  }

  render(_, s) {
    return html`<div class="stack">
      ${s.created && this.renderCreated(s)}
      ${s.error && html`<${Notice} kind="error">${s.error}</${Notice}>`}
      ${this.renderForm(s)}
      ${this.renderList(s)}
    </div>`;
  }

  renderCreated(s) {
    return html`<section class="card created" aria-labelledby="key-created-title">
      <h2 id="key-created-title">Key “${s.created.name}” created</h2>
      <p>Copy it now: it is shown once and only its digest is stored.</p>
      <div class="secret">
        <label class="sr-only" for=${this.ids.secret}>New API key</label>
        <input id=${this.ids.secret} class="code" readonly value=${s.created.key}
          onFocus=${(e) => e.currentTarget.select()} />
        <button type="button" class="btn primary" onClick=${() => this.copy()}>
          ${s.copied ? "Copied" : "Copy"}</button>
        <button type="button" class="btn ghost" onClick=${() => this.setState({ created: null })}>
          Done</button>
      </div>
    </section>`;
  }

  renderForm(s) {
    const f = s.form;
    const ids = this.ids;
    return html`<form class="card" onSubmit=${(e) => this.create(e)} aria-labelledby="key-form-title">
      <h2 id="key-form-title">Create a key</h2>
      <div class="grid">
        <${Field} id=${ids.name} label="Name" wide>
          ${() => html`<input id=${ids.name} required maxlength="200" value=${f.name}
            placeholder="team-a" onInput=${this.setField("name")} />`}
        </${Field}>
        ${LIMITS.map(([name, label]) => html`<${Field} id=${ids[name]} label=${label}>
          ${() => html`<input id=${ids[name]} type="number" min=${name === "budget_tokens" ? 0 : 1}
            step="1" inputmode="numeric" placeholder="no limit" value=${f[name]}
            onInput=${this.setField(name)} />`}
        </${Field}>`)}
        <${Field} id=${ids.budgetUsd} label="Budget (USD)">
          ${() => html`<input id=${ids.budgetUsd} type="number" min="0" step="0.01"
            inputmode="decimal" placeholder="no limit" value=${f.budget_usd}
            onInput=${this.setField("budget_usd")} />`}
        </${Field}>
        <${Field} id=${ids.expires} label="Expires" hint="30d, 12h or a date like 2027-01-31.">
          ${(hint) => html`<input id=${ids.expires} aria-describedby=${hint} placeholder="never"
            value=${f.expires} onInput=${this.setField("expires")} />`}
        </${Field}>
      </div>
      <fieldset class="models">
        <legend>Models <span class="muted">(none ticked: every model)</span></legend>
        ${s.models.flatMap((m) => [m.id, ...m.aliases]).map((name) => {
          const id = `key-model-${name.replace(/[^A-Za-z0-9_-]/g, "_")}`;
          return html`<div class="check">
            <input id=${id} type="checkbox" checked=${f.models.includes(name)}
              onChange=${() => this.toggleModel(name)} />
            <label for=${id}>${name}</label>
          </div>`;
        })}
      </fieldset>
      <div class="actions">
        <button type="submit" class="btn primary" disabled=${s.busy}>Create key</button>
      </div>
    </form>`;
  }

  renderList(s) {
    if (!s.keys) return html`<p class="muted">Loading keys…</p>`;
    return html`<section class="card" aria-labelledby="key-list-title">
      <h2 id="key-list-title">Keys <span class="count">${s.keys.length}</span></h2>
      ${s.keys.length === 0 ? html`<p class="muted">No managed keys yet.</p>` : html`
      <div class="table-wrap">
        <table class="keys-table">
          <thead><tr>
            <th scope="col">Name</th><th scope="col">Key</th><th scope="col">State</th>
            <th scope="col">Limits</th><th scope="col">Budget</th><th scope="col">Models</th>
            <th scope="col">Expires</th><th scope="col"><span class="sr-only">Actions</span></th>
          </tr></thead>
          <tbody>
            ${s.keys.map((key) => {
              const [state, label] = keyState(key);
              return html`<tr key=${key.id} data-key-id=${key.id}>
                <td><strong>${key.name}</strong><div class="muted small">${key.id}</div></td>
                <td><code>${key.prefix}</code></td>
                <td><span class=${`badge state-${state}`}>${label}</span></td>
                <td>${limitsText(key)}</td>
                <td>${budgetText(key)}</td>
                <td>${key.models ? key.models.join(", ") : "all"}</td>
                <td>${key.expires_at ? key.expires_at.slice(0, 10) : "never"}</td>
                <td class="row-actions">${state === "revoked" ? "" : s.confirming === key.id
                  ? html`<button type="button" class="btn danger small"
                      onClick=${() => this.revoke(key.id)}>Confirm revoke</button>
                    <button type="button" class="btn ghost small"
                      onClick=${() => this.setState({ confirming: null })}>Cancel</button>`
                  : html`<button type="button" class="btn small" aria-label=${`Revoke ${key.name}`}
                      onClick=${() => this.setState({ confirming: key.id })}>Revoke</button>`}
                </td>
              </tr>`;
            })}
          </tbody>
        </table>
      </div>`}
    </section>`;
  }
}

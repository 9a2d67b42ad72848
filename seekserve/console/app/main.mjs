// The console's shell: navigation between the pages, and the dialog that asks for the keys.
import { getKey, onKeysChange, setKeys, signOut, signedIn, useOpenServer } from "./api.mjs";
import { Engines } from "./engines.mjs";
import { Keys } from "./keys.mjs";
import { Playground } from "./playground.mjs";
import { Component, Notice, createRef, html, render, uid } from "./ui.mjs";
import { Usage } from "./usage.mjs";

const PAGES = {
  playground: { title: "Playground", view: Playground, needs: "api",
    intro: "Try a chat request on any deployment and see what comes back." },
  usage: { title: "Usage", view: Usage, needs: "any",
    intro: "Tokens and cost from the usage ledger." },
  keys: { title: "Keys", view: Keys, needs: "admin",
    intro: "Managed API keys and their limits." },
  engines: { title: "Engines", view: Engines, needs: null,
    intro: "Live state of every engine." },
};

function pageFromPath() {
  const name = location.pathname.replace(/^\/console\/?/, "").replace(/\/$/, "");
  return PAGES[name] ? name : "playground";
}

class SignIn extends Component {
  constructor() {
    super();
    this.dialog = createRef();
    this.ids = { api: uid("signin-api"), admin: uid("signin-admin") };
    this.state = { api: getKey("api"), admin: getKey("admin") };
  }

  componentDidMount() {
    const dialog = this.dialog.current;
    dialog.showModal();
    dialog.addEventListener("cancel", (e) => {
      if (!signedIn()) e.preventDefault(); // nothing to go back to yet
      else this.props.onClose();
    });
  }

  save(e) {
    e.preventDefault();
    setKeys({ api: this.state.api, admin: this.state.admin });
    if (!this.state.api && !this.state.admin) useOpenServer();
    this.props.onClose();
  }

  render(_, s) {
    return html`<dialog class="signin" ref=${this.dialog} aria-labelledby="signin-title">
      <form onSubmit=${(e) => this.save(e)}>
        <h2 id="signin-title">Sign in to seekserve</h2>
        <p class="muted">Keys stay in this tab's session storage and are sent only as
          <code>Authorization</code> headers to this server; closing the tab forgets them.</p>
        <div class="field">
          <label for=${this.ids.api}>API key</label>
          <input id=${this.ids.api} type="password" autocomplete="off" spellcheck="false"
            placeholder="sk-…" value=${s.api} onInput=${(e) => this.setState({ api: e.currentTarget.value })} />
          <p class="hint">For the playground and your own usage. Leave empty on a server without keys.</p>
        </div>
        <div class="field">
          <label for=${this.ids.admin}>Admin key <span class="muted">(optional)</span></label>
          <input id=${this.ids.admin} type="password" autocomplete="off" spellcheck="false"
            value=${s.admin} onInput=${(e) => this.setState({ admin: e.currentTarget.value })} />
          <p class="hint">The server's <code>admin_key</code>: for keys and the usage of every key.</p>
        </div>
        <div class="actions">
          <button type="submit" class="btn primary">${s.api || s.admin ? "Save keys" : "Continue without a key"}</button>
          ${signedIn() && html`<button type="button" class="btn ghost" onClick=${() => this.props.onClose()}>Cancel</button>`}
        </div>
      </form>
    </dialog>`;
  }
}

class App extends Component {
  constructor() {
    super();
    this.state = { page: pageFromPath(), signIn: !signedIn(), version: 0 };
  }

  componentDidMount() {
    this.unsubscribe = onKeysChange(() => this.setState({ version: this.state.version + 1 }));
    addEventListener("popstate", () => this.setState({ page: pageFromPath() }));
  }

  go(e, page) {
    if (e.metaKey || e.ctrlKey || e.shiftKey || e.button !== 0) return;
    e.preventDefault();
    history.pushState(null, "", page === "playground" ? "/console" : `/console/${page}`);
    this.setState({ page });
    document.getElementById("main").focus();
  }

  render(_, s) {
    const page = PAGES[s.page];
    document.title = `${page.title} · seekserve console`;
    return html`
      <a class="skip" href="#main">Skip to content</a>
      <header class="topbar">
        <div class="brand"><span class="logo" aria-hidden="true">s</span>
          <span>seekserve</span><span class="muted">console</span></div>
        <nav aria-label="Console pages">
          <ul>${Object.entries(PAGES).map(([name, p]) => html`<li>
            <a href=${name === "playground" ? "/console" : `/console/${name}`}
              aria-current=${name === s.page ? "page" : undefined}
              onClick=${(e) => this.go(e, name)}>${p.title}
              ${p.needs === "admin" && html`<span class="tag admin">admin</span>`}</a>
          </li>`)}</ul>
        </nav>
        <div class="session">
          <span class=${`pill ${getKey("api") ? "on" : ""}`}>API key ${getKey("api") ? "set" : "not set"}</span>
          <span class=${`pill ${getKey("admin") ? "on" : ""}`}>Admin ${getKey("admin") ? "set" : "not set"}</span>
          <button type="button" class="btn small" onClick=${() => this.setState({ signIn: true })}>Keys…</button>
          ${signedIn() && html`<button type="button" class="btn small ghost"
            onClick=${() => { signOut(); this.setState({ signIn: true }); }}>Sign out</button>`}
        </div>
      </header>
      <main id="main" tabindex="-1">
        <div class="page-head">
          <h1>${page.title}</h1>
          <p class="muted">${page.intro}</p>
        </div>
        ${this.renderPage(s, page)}
      </main>
      ${s.signIn && html`<${SignIn} onClose=${() => this.setState({ signIn: false })} />`}`;
  }

  renderPage(s, page) {
    if (s.signIn && !signedIn()) return null; // nothing is fetched before the user has chosen
    if (page.needs === "admin" && !getKey("admin")) {
      return html`<${Notice} kind="warn" title="This page needs the admin key.">
        Keys are managed with the server's <code>admin_key</code> (<code>SEEKSERVE_ADMIN_KEY</code>).
        <button type="button" class="btn small" onClick=${() => this.setState({ signIn: true })}>
          Enter the admin key</button></${Notice}>`;
    }
    const View = page.view;
    return html`<${View} key=${`${s.page}-${s.version}`} />`;
  }
}

render(html`<${App} />`, document.getElementById("app"));

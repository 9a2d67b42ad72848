// The playground: a chat request built from a form, streamed into an answer with its reasoning,
// tool calls, parsed JSON and numbers; the conversation can be continued by hand.
import { ApiError, catalog, headers, readJson } from "./api.mjs";
import { anthropicSnippet, curlSnippet, openaiSnippet } from "./snippets.mjs";
import { applyChunk, emptyAnswer, hasOutput, sseData } from "./sse.mjs";
import { Component, Field, Notice, fmtInt, html, prettyJson, uid } from "./ui.mjs";

const EXAMPLE_TOOLS = [{
  type: "function",
  function: {
    name: "get_weather",
    description: "Get the current weather in a city.",
    parameters: {
      type: "object",
      properties: {
        city: { type: "string", description: "The city, e.g. Paris" },
        unit: { type: "string", enum: ["celsius", "fahrenheit"] },
      },
      required: ["city"],
    },
  },
}];
const EXAMPLE_SCHEMA = {
  type: "object",
  properties: { name: { type: "string" }, population: { type: "integer" } },
  required: ["name", "population"],
};
const ROLES = ["user", "assistant", "tool"];
let nextMessage = 0;

function message(role, content = "", extra = {}) {
  nextMessage += 1;
  return { key: nextMessage, role, content, toolCallId: "", toolCalls: null, reasoning: "", ...extra };
}

/** Whether the browser can reach a deployment: one bound to Host names needs this page to be
 * opened on one of them (a page cannot set the Host header itself), and on such a host the
 * plain route belongs to that deployment. */
function reachable(dep, deployments) {
  const here = [location.host.toLowerCase(), location.hostname.toLowerCase()];
  const bound = (d) => d.hosts.some((h) => here.includes(h.toLowerCase()));
  if (dep.endpoint_path) return true;
  if (dep.hosts.length) return bound(dep);
  return !deployments.some(bound);
}

function modelNames(models, dep) {
  const names = [];
  for (const model of models) {
    for (const name of [model.id, ...model.aliases]) {
      const allowed = !dep || !dep.models || dep.models.includes(name) || dep.models.includes(model.id);
      if (allowed) names.push({ name, model });
    }
  }
  return names;
}

function number(text, param, { min, max, integer }) {
  if (text.trim() === "") return undefined;
  const value = Number(text);
  if (!Number.isFinite(value) || (integer && !Number.isInteger(value))) {
    throw new Error(`${param} must be ${integer ? "a whole number" : "a number"}.`);
  }
  if (value < min || value > max) throw new Error(`${param} must be between ${min} and ${max}.`);
  return value;
}

function parseJsonField(text, param) {
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new Error(`${param} is not valid JSON: ${err.message}`);
  }
}

export class Playground extends Component {
  constructor() {
    super();
    this.ids = {};
    for (const name of ["deployment", "model", "thinking", "effort", "temperature", "topP",
      "maxTokens", "stop", "format", "schema", "tools", "toolChoice", "system", "toolsOn",
      "parallel"]) {
      this.ids[name] = uid(`pg-${name}`);
    }
    this.state = {
      catalog: null, loadError: null, deployment: "", model: "", thinking: "default",
      effort: "", temperature: "", topP: "", maxTokens: "256", stop: "", format: "text",
      schema: JSON.stringify(EXAMPLE_SCHEMA, null, 2), toolsOn: false, tools: "",
      toolChoice: "auto", parallel: true, system: "", messages: [message("user")], answer: emptyAnswer(),
      run: 0, formError: null, codeTab: null,
    };
    this.controller = null;
  }

  async componentDidMount() {
    try {
      const found = await catalog();
      const dep = found.deployments.find((d) => reachable(d, found.deployments)) || null;
      const names = modelNames(found.models, dep);
      this.setState({ catalog: found, deployment: dep ? dep.name : "",
        model: names.length ? names[0].name : "" });
    } catch (err) {
      this.setState({ loadError: err });
    }
  }

  componentWillUnmount() {
    if (this.controller) this.controller.abort();
  }

  deployment() {
    const found = this.state.catalog;
    return found ? found.deployments.find((d) => d.name === this.state.deployment) || null : null;
  }

  set(name) {
    return (event) => {
      const target = event.currentTarget;
      this.setState({ [name]: target.type === "checkbox" ? target.checked : target.value });
    };
  }

  /** The request body, or an Error naming the field that is wrong. */
  body() {
    const s = this.state;
    const messages = [];
    if (s.system.trim()) messages.push({ role: "system", content: s.system });
    for (const m of s.messages) {
      const out = { role: m.role, content: m.content };
      if (m.role === "tool") out.tool_call_id = m.toolCallId;
      if (m.role === "assistant" && m.toolCalls) {
        out.tool_calls = m.toolCalls.map((c) => ({ id: c.id, type: "function",
          function: { name: c.name, arguments: c.arguments } }));
        if (!m.content) out.content = null;
        if (m.reasoning) out.reasoning_content = m.reasoning;
      }
      messages.push(out);
    }
    const body = { model: s.model, messages, stream: true, stream_options: { include_usage: true } };
    const maxTokens = number(s.maxTokens, "max_tokens", { min: 1, max: 1e7, integer: true });
    if (maxTokens !== undefined) body.max_tokens = maxTokens;
    const temperature = number(s.temperature, "temperature", { min: 0, max: 2 });
    if (temperature !== undefined) body.temperature = temperature;
    const topP = number(s.topP, "top_p", { min: 0, max: 1 });
    if (topP !== undefined) body.top_p = topP;
    const stop = s.stop.split("\n").filter((line) => line !== "");
    if (stop.length) body.stop = stop;
    if (s.thinking !== "default") body.thinking = { type: s.thinking };
    if (s.effort && s.thinking !== "disabled") body.reasoning_effort = s.effort;
    if (s.format === "json_object") body.response_format = { type: "json_object" };
    if (s.format === "json_schema") {
      body.response_format = { type: "json_schema",
        json_schema: { name: "answer", schema: parseJsonField(s.schema, "JSON schema") } };
    }
    if (s.toolsOn) {
      const tools = parseJsonField(s.tools, "tools");
      if (!Array.isArray(tools) || !tools.length) throw new Error("tools must be a JSON array of tools.");
      body.tools = tools;
      body.tool_choice = s.toolChoice;
      if (!s.parallel) body.parallel_tool_calls = false;
    }
    return body;
  }

  async send(event) {
    if (event) event.preventDefault();
    if (this.state.answer.status === "streaming") return;
    const dep = this.deployment();
    let body;
    try {
      body = this.body();
    } catch (err) {
      this.setState({ formError: err.message });
      return;
    }
    const controller = new AbortController();
    this.controller = controller;
    const answer = { ...emptyAnswer(), status: "streaming", startedAt: performance.now(),
      json: this.state.format !== "text", dialect: dep ? dep.dialect : "openai" };
    this.setState({ answer, formError: null, run: this.state.run + 1 });
    try {
      const response = await fetch(dep ? dep.path : "/v1/chat/completions", {
        method: "POST",
        headers: { ...headers("api", true), Accept: "text/event-stream" },
        body: JSON.stringify(body),
        credentials: "omit",
        cache: "no-store",
        signal: controller.signal,
      });
      if (!response.ok) await readJson(response);
      for await (const data of sseData(response.body, controller.signal)) {
        const more = applyChunk(answer, data);
        if (!answer.firstAt && hasOutput(answer)) answer.firstAt = performance.now();
        this.setState({ answer: { ...answer } });
        if (!more) break;
      }
      answer.status = controller.signal.aborted ? "stopped" : answer.error ? "error" : "done";
    } catch (err) {
      if (controller.signal.aborted) {
        answer.status = "stopped";
      } else {
        answer.status = "error";
        answer.error = { message: err.message, code: err instanceof ApiError ? err.code : null,
          status: err instanceof ApiError ? err.status : null };
      }
    }
    answer.endedAt = performance.now();
    this.controller = null;
    this.setState({ answer: { ...answer } });
  }

  stop() {
    if (this.controller) this.controller.abort();
  }

  updateMessage(key, change) {
    this.setState({ messages: this.state.messages.map((m) => (m.key === key ? { ...m, ...change } : m)) });
  }

  removeMessage(key) {
    this.setState({ messages: this.state.messages.filter((m) => m.key !== key) });
  }

  addMessage(role) {
    this.setState({ messages: [...this.state.messages, message(role)] });
  }

  /** The answer becomes an assistant turn; with tool calls, a tool turn follows for each call,
   * to be filled in by hand. */
  keepAnswer(withToolResults) {
    const a = this.state.answer;
    const calls = a.toolCalls.filter(Boolean);
    const turns = [message("assistant", a.content, {
      toolCalls: calls.length ? calls.map((c) => ({ ...c })) : null,
      reasoning: calls.length ? a.reasoning : "",
    })];
    if (withToolResults) {
      for (const call of calls) turns.push(message("tool", "", { toolCallId: call.id }));
    }
    this.setState({ messages: [...this.state.messages, ...turns], answer: emptyAnswer() });
  }

  insertExampleTools() {
    this.setState({ tools: JSON.stringify(EXAMPLE_TOOLS, null, 2), toolsOn: true });
  }

  render(_, s) {
    if (s.loadError) {
      return html`<${Notice} kind="error" title="Could not load the models.">
        ${s.loadError.message}</${Notice}>`;
    }
    if (!s.catalog) return html`<p class="muted">Loading models…</p>`;
    // Two elements (keys): were Stop's button reused as Send's, the click that stops a stream
    // would, once its re-render is done, go on to submit the form and send again.
    const action = s.answer.status === "streaming"
      ? html`<button key="stop" type="button" class="btn danger" onClick=${() => this.stop()}>Stop</button>`
      : html`<button key="send" type="submit" class="btn primary">Send <kbd>Ctrl</kbd><kbd>Enter</kbd></button>`;
    return html`<form class="playground" onSubmit=${(e) => this.send(e)} aria-label="Playground">
      <div class="pg-params">${this.renderParams(s)}</div>
      <div class="pg-chat">
        ${this.renderConversation(s)}
        ${s.formError && html`<${Notice} kind="error" title="Check the form:">${s.formError}</${Notice}>`}
        <div class="actions">
          ${action}
          <button type="button" class="btn" aria-expanded=${s.codeTab ? "true" : "false"}
            onClick=${() => this.setState({ codeTab: s.codeTab ? null : "curl" })}>
            ${s.codeTab ? "Hide code" : "Show code"}</button>
        </div>
        ${s.codeTab && this.renderCode(s)}
        ${s.answer.status !== "idle" && this.renderAnswer(s.answer, s.run)}
      </div>
    </form>`;
  }

  renderParams(s) {
    const ids = this.ids;
    const dep = this.deployment();
    const names = modelNames(s.catalog.models, dep);
    const thinkingOff = s.thinking === "disabled";
    return html`
      <fieldset>
        <legend>Model</legend>
        <${Field} id=${ids.deployment} label="Deployment"
          hint=${dep ? `POST ${dep.path} · ${dep.dialect} shape` : ""}>
          ${(hint) => html`<select id=${ids.deployment} aria-describedby=${hint}
            value=${s.deployment} onChange=${this.set("deployment")}>
            ${s.catalog.deployments.map((d) => {
              const ok = reachable(d, s.catalog.deployments);
              const why = d.hosts.length ? ` (Host: ${d.hosts[0]} only)` : " (another Host's here)";
              return html`<option value=${d.name} disabled=${!ok}>${d.name}${ok ? "" : why}</option>`;
            })}
          </select>`}
        </${Field}>
        <${Field} id=${ids.model} label="Model">
          ${() => html`<select id=${ids.model} value=${s.model} onChange=${this.set("model")}>
            ${names.map(({ name, model }) => html`<option value=${name}>
              ${name === model.id ? name : `${name} (alias of ${model.id})`}</option>`)}
          </select>`}
        </${Field}>
      </fieldset>
      <fieldset>
        <legend>Thinking</legend>
        <div class="row">
          <${Field} id=${ids.thinking} label="Mode">
            ${() => html`<select id=${ids.thinking} value=${s.thinking} onChange=${this.set("thinking")}>
              <option value="default">Model default</option>
              <option value="enabled">On</option>
              <option value="disabled">Off</option>
            </select>`}
          </${Field}>
          <${Field} id=${ids.effort} label="Effort">
            ${() => html`<select id=${ids.effort} value=${s.effort} disabled=${thinkingOff}
              onChange=${this.set("effort")}>
              <option value="">Default</option>
              <option value="low">low</option>
              <option value="high">high</option>
              <option value="max">max</option>
            </select>`}
          </${Field}>
        </div>
      </fieldset>
      <fieldset>
        <legend>Sampling</legend>
        <div class="row">
          <${Field} id=${ids.temperature} label="Temperature">
            ${() => html`<input id=${ids.temperature} type="number" min="0" max="2" step="0.1"
              placeholder="default" inputmode="decimal" value=${s.temperature}
              onInput=${this.set("temperature")} />`}
          </${Field}>
          <${Field} id=${ids.topP} label="top_p">
            ${() => html`<input id=${ids.topP} type="number" min="0" max="1" step="0.05"
              placeholder="default" inputmode="decimal" value=${s.topP} onInput=${this.set("topP")} />`}
          </${Field}>
          <${Field} id=${ids.maxTokens} label="max_tokens">
            ${() => html`<input id=${ids.maxTokens} type="number" min="1" step="1"
              inputmode="numeric" value=${s.maxTokens} onInput=${this.set("maxTokens")} />`}
          </${Field}>
        </div>
        <${Field} id=${ids.stop} label="Stop strings" hint="One per line.">
          ${(hint) => html`<textarea id=${ids.stop} rows="2" aria-describedby=${hint}
            value=${s.stop} onInput=${this.set("stop")}></textarea>`}
        </${Field}>
      </fieldset>
      <fieldset>
        <legend>Output</legend>
        <${Field} id=${ids.format} label="Response format">
          ${() => html`<select id=${ids.format} value=${s.format} onChange=${this.set("format")}>
            <option value="text">Text</option>
            <option value="json_object">JSON object</option>
            <option value="json_schema">JSON schema</option>
          </select>`}
        </${Field}>
        ${s.format === "json_schema" && html`<${Field} id=${ids.schema} label="JSON schema">
          ${() => html`<textarea id=${ids.schema} class="code" rows="8" spellcheck="false"
            value=${s.schema} onInput=${this.set("schema")}></textarea>`}
        </${Field}>`}
      </fieldset>
      <fieldset>
        <legend>Tools</legend>
        <div class="check">
          <input id=${ids.toolsOn} type="checkbox" checked=${s.toolsOn} onChange=${this.set("toolsOn")} />
          <label for=${ids.toolsOn}>Send tools</label>
        </div>
        <div class="check">
          <input id=${ids.parallel} type="checkbox" checked=${s.parallel} onChange=${this.set("parallel")} />
          <label for=${ids.parallel}>Parallel tool calls</label>
        </div>
        <${Field} id=${ids.tools} label="Tools (JSON)" hint="OpenAI's function tools, as a JSON array.">
          ${(hint) => html`<textarea id=${ids.tools} class="code" rows="8" spellcheck="false"
            aria-describedby=${hint} placeholder='[{"type": "function", "function": {...}}]'
            value=${s.tools} onInput=${this.set("tools")}></textarea>`}
        </${Field}>
        <div class="row">
          <${Field} id=${ids.toolChoice} label="tool_choice">
            ${() => html`<select id=${ids.toolChoice} value=${s.toolChoice} onChange=${this.set("toolChoice")}>
              <option value="auto">auto</option>
              <option value="required">required</option>
              <option value="none">none</option>
            </select>`}
          </${Field}>
          <div class="field end">
            <button type="button" class="btn small" onClick=${() => this.insertExampleTools()}>
              Insert example</button>
          </div>
        </div>
      </fieldset>`;
  }

  renderConversation(s) {
    const ids = this.ids;
    return html`<section class="card conversation" aria-labelledby="pg-conv-title">
      <h2 id="pg-conv-title">Conversation</h2>
      <${Field} id=${ids.system} label="System prompt" wide>
        ${() => html`<textarea id=${ids.system} rows="2" placeholder="You are a helpful assistant."
          value=${s.system} onInput=${this.set("system")}></textarea>`}
      </${Field}>
      <ol class="messages">
        ${s.messages.map((m, i) => this.renderMessage(m, i))}
      </ol>
      <div class="actions">
        <button type="button" class="btn small" onClick=${() => this.addMessage("user")}>Add user message</button>
        <button type="button" class="btn small" onClick=${() => this.addMessage("tool")}>Add tool result</button>
      </div>
    </section>`;
  }

  renderMessage(m, index) {
    const roleId = `pg-msg-${m.key}-role`;
    const textId = `pg-msg-${m.key}-text`;
    const callId = `pg-msg-${m.key}-call`;
    const onKey = (e) => {
      if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) this.send(e);
    };
    return html`<li class=${`message role-${m.role}`} key=${m.key}>
      <div class="message-head">
        <label class="sr-only" for=${roleId}>Role of message ${index + 1}</label>
        <select id=${roleId} class="role" value=${m.role}
          onChange=${(e) => this.updateMessage(m.key, { role: e.currentTarget.value })}>
          ${ROLES.map((r) => html`<option value=${r}>${r}</option>`)}
        </select>
        ${m.role === "tool" && html`<label class="inline" for=${callId}>tool_call_id</label>
          <input id=${callId} class="call-id" value=${m.toolCallId} spellcheck="false"
            onInput=${(e) => this.updateMessage(m.key, { toolCallId: e.currentTarget.value })} />`}
        <button type="button" class="btn ghost small" aria-label=${`Remove message ${index + 1}`}
          onClick=${() => this.removeMessage(m.key)}>Remove</button>
      </div>
      ${m.toolCalls && html`<div class="calls">${m.toolCalls.map((c) => html`<${ToolCall} call=${c} />`)}</div>`}
      <label class="sr-only" for=${textId}>Message ${index + 1} (${m.role})</label>
      <textarea id=${textId} rows=${m.role === "user" ? 3 : 2} value=${m.content}
        placeholder=${m.role === "tool" ? "The tool's result, e.g. {\"temperature\": 21}" : "Message"}
        onKeyDown=${onKey}
        onInput=${(e) => this.updateMessage(m.key, { content: e.currentTarget.value })}></textarea>
    </li>`;
  }

  renderCode(s) {
    const dep = this.deployment();
    let body;
    try {
      body = this.body();
    } catch (err) {
      return html`<${Notice} kind="error">${err.message}</${Notice}>`;
    }
    const origin = location.origin;
    const path = dep ? dep.path : "/v1/chat/completions";
    const host = dep && !dep.endpoint_path && dep.hosts.length ? dep.hosts[0] : null;
    const tabs = [["curl", "curl"], ["openai", "Python · openai"]];
    if (!dep || dep.dialect === "openai") tabs.push(["anthropic", "Python · anthropic"]);
    const tab = tabs.some(([name]) => name === s.codeTab) ? s.codeTab : "curl";
    const code = tab === "curl" ? curlSnippet(origin, path, body, host)
      : tab === "openai" ? openaiSnippet(origin, path, body)
        : anthropicSnippet(origin, body, s.catalog.anthropic);
    return html`<section class="card code-view" aria-label="Code for this request">
      <div class="tabs" role="tablist">
        ${tabs.map(([name, label]) => html`<button type="button" role="tab" class="tab"
          aria-selected=${tab === name ? "true" : "false"}
          onClick=${() => this.setState({ codeTab: name })}>${label}</button>`)}
        <button type="button" class="btn small ghost copy"
          onClick=${() => navigator.clipboard && navigator.clipboard.writeText(code)}>Copy</button>
      </div>
      <pre class="code" role="tabpanel"><code>${code}</code></pre>
    </section>`;
  }

  renderAnswer(a, run) {
    const calls = a.toolCalls.filter(Boolean);
    const streaming = a.status === "streaming";
    const labels = { streaming: "Streaming…", done: "Done", stopped: "Stopped", error: "Error" };
    return html`<section class="card answer" key=${run} aria-labelledby="pg-answer-title"
      aria-busy=${streaming ? "true" : "false"}>
      <div class="answer-head">
        <h2 id="pg-answer-title">Answer</h2>
        <span class=${`badge status-${a.status}`}>${labels[a.status]}</span>
      </div>
      ${a.reasoning && html`<details class="reasoning" open>
        <summary>Reasoning</summary>
        <pre class="reasoning-text">${a.reasoning}</pre>
      </details>`}
      ${this.renderContent(a)}
      ${calls.length > 0 && html`<div class="calls" aria-label="Tool calls">
        ${calls.map((c) => html`<${ToolCall} call=${c} />`)}
      </div>`}
      ${a.error && html`<${Notice} kind="error" title=${a.error.status ? `HTTP ${a.error.status}` : "Error"}>
        ${a.error.message}${a.error.code ? ` (${a.error.code})` : ""}</${Notice}>`}
      ${a.status !== "streaming" && this.renderStats(a)}
      ${a.status === "done" && html`<div class="actions">
        ${calls.length > 0
          ? html`<button type="button" class="btn" onClick=${() => this.keepAnswer(true)}>
              Add tool result turn</button>`
          : html`<button type="button" class="btn" onClick=${() => this.keepAnswer(false)}>
              Add answer to conversation</button>`}
      </div>`}
    </section>`;
  }

  renderContent(a) {
    if (!a.content && a.status !== "streaming") return null;
    if (a.json && a.status === "done") {
      try {
        const parsed = JSON.parse(a.content);
        return html`<div class="json-view">
          <span class="badge ok">Parsed JSON</span>
          <pre class="json">${JSON.stringify(parsed, null, 2)}</pre>
        </div>`;
      } catch (err) {
        return html`<div class="json-view">
          <span class="badge warn">Not valid JSON: ${err.message}</span>
          <pre class="answer-text">${a.content}</pre>
        </div>`;
      }
    }
    return html`<pre class="answer-text">${a.content}${a.status === "streaming" ? html`<span class="caret" aria-hidden="true"></span>` : ""}</pre>`;
  }

  renderStats(a) {
    const u = a.usage;
    const ttft = a.firstAt ? (a.firstAt - a.startedAt) / 1000 : null;
    const genS = a.firstAt && a.endedAt > a.firstAt ? (a.endedAt - a.firstAt) / 1000 : null;
    const rate = u && genS ? (u.completion_tokens / genS).toFixed(1) : null;
    const cached = u ? (u.prompt_tokens_details ? u.prompt_tokens_details.cached_tokens
      : u.prompt_cache_hit_tokens) : null;
    const reasoning = u && u.completion_tokens_details ? u.completion_tokens_details.reasoning_tokens : null;
    const items = [
      ["Prompt tokens", u ? fmtInt(u.prompt_tokens) : "—", "prompt"],
      ["Cached", u ? fmtInt(cached) : "—", "cached"],
      ["Completion tokens", u ? fmtInt(u.completion_tokens) : "—", "completion"],
      ["Reasoning tokens", u ? fmtInt(reasoning) : "—", "reasoning"],
      ["Time to first token", ttft === null ? "—" : `${ttft.toFixed(2)} s`, "ttft"],
      ["Tokens / s", rate ?? "—", "rate"],
      ["finish_reason", a.finishReason ?? "—", "finish"],
      ["matched_stop", a.matchedStop === null ? "null" : JSON.stringify(a.matchedStop), "stop"],
    ];
    return html`<dl class="stats">
      ${items.map(([label, value, name]) => html`<div class=${`stat stat-${name}`}>
        <dt>${label}</dt><dd>${value}</dd></div>`)}
    </dl>`;
  }
}

function ToolCall({ call }) {
  return html`<div class="tool-call">
    <div class="tool-call-head">
      <span class="tag">tool call</span>
      <code class="fn">${call.name}</code>
      <code class="call-id muted">${call.id}</code>
    </div>
    <pre class="args">${prettyJson(call.arguments)}</pre>
  </div>`;
}

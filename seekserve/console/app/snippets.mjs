// "Show code": the playground's request as curl, Python `openai` and Python `anthropic` code.
// Snippets read the key from SEEKSERVE_API_KEY; the key itself is never written into them.

const OPENAI_ARGS = new Set(["model", "messages", "stream", "stream_options", "max_tokens",
  "temperature", "top_p", "stop", "response_format", "tools", "tool_choice", "reasoning_effort",
  "parallel_tool_calls"]);

/** A JSON value as a Python literal, indented like black would. */
export function py(value, indent = 0) {
  const pad = "    ".repeat(indent + 1);
  const end = "    ".repeat(indent);
  if (value === null || value === undefined) return "None";
  if (value === true) return "True";
  if (value === false) return "False";
  if (typeof value === "number") return String(value);
  if (typeof value === "string") return JSON.stringify(value);
  if (Array.isArray(value)) {
    if (!value.length) return "[]";
    return `[\n${value.map((v) => pad + py(v, indent + 1)).join(",\n")},\n${end}]`;
  }
  const entries = Object.entries(value);
  if (!entries.length) return "{}";
  return `{\n${entries.map(([k, v]) => `${pad}${JSON.stringify(k)}: ${py(v, indent + 1)}`)
    .join(",\n")},\n${end}}`;
}

function shellQuote(text) {
  return `'${text.replaceAll("'", "'\\''")}'`;
}

export function curlSnippet(origin, path, body, host) {
  const lines = [
    `curl ${origin}${path}`,
    `  -H "Authorization: Bearer $SEEKSERVE_API_KEY"`,
    `  -H 'Content-Type: application/json'`,
  ];
  if (host) lines.push(`  -H ${shellQuote(`Host: ${host}`)}`);
  if (body.stream) lines.push("  --no-buffer");
  lines.push(`  -d ${shellQuote(JSON.stringify(body, null, 2))}`);
  return lines.join(" \\\n");
}

export function openaiSnippet(origin, path, body) {
  const base = origin + path.replace(/\/chat\/completions$/, "");
  const args = [];
  const extra = {};
  for (const [name, value] of Object.entries(body)) {
    if (OPENAI_ARGS.has(name)) args.push(`    ${name}=${py(value, 1)},`);
    else extra[name] = value;
  }
  if (Object.keys(extra).length) args.push(`    extra_body=${py(extra, 1)},`);
  const out = [
    "import os",
    "",
    "from openai import OpenAI",
    "",
    `client = OpenAI(base_url=${JSON.stringify(base)}, api_key=os.environ["SEEKSERVE_API_KEY"])`,
    "",
  ];
  if (body.stream) {
    out.push("stream = client.chat.completions.create(", ...args, ")", "for chunk in stream:",
      "    if chunk.choices:",
      "        delta = chunk.choices[0].delta",
      "        print(getattr(delta, \"reasoning_content\", None) or delta.content or \"\", end=\"\", flush=True)",
      "    elif chunk.usage:",
      "        print(\"\\n\", chunk.usage)");
  } else {
    out.push("response = client.chat.completions.create(", ...args, ")",
      "print(response.choices[0].message.content)");
  }
  return out.join("\n");
}

function anthropicMessages(messages) {
  const out = [];
  for (const message of messages) {
    if (message.role === "system") continue;
    if (message.role === "tool") {
      const block = { type: "tool_result", tool_use_id: message.tool_call_id,
        content: message.content };
      const last = out[out.length - 1];
      if (last && last.role === "user" && Array.isArray(last.content)) last.content.push(block);
      else out.push({ role: "user", content: [block] });
    } else if (message.role === "assistant" && message.tool_calls) {
      const content = message.content ? [{ type: "text", text: message.content }] : [];
      for (const call of message.tool_calls) {
        let input = {};
        try {
          input = JSON.parse(call.function.arguments);
        } catch {
          input = {};
        }
        content.push({ type: "tool_use", id: call.id, name: call.function.name, input });
      }
      out.push({ role: "assistant", content });
    } else {
      out.push({ role: message.role, content: message.content });
    }
  }
  return out;
}

export function anthropicSnippet(origin, body, served) {
  const args = [`    model=${py(body.model)},`, `    max_tokens=${body.max_tokens || 1024},`];
  const system = body.messages.filter((m) => m.role === "system").map((m) => m.content);
  if (system.length) args.push(`    system=${py(system.join("\n\n"), 1)},`);
  args.push(`    messages=${py(anthropicMessages(body.messages), 1)},`);
  if (body.thinking && body.thinking.type === "enabled") {
    args.push(`    thinking=${py({ type: "enabled", budget_tokens: 1024 }, 1)},`);
  } else if (body.thinking && body.thinking.type === "disabled") {
    args.push(`    thinking=${py({ type: "disabled" }, 1)},`);
  }
  if (body.temperature !== undefined) args.push(`    temperature=${body.temperature},`);
  if (body.top_p !== undefined) args.push(`    top_p=${body.top_p},`);
  if (body.stop) args.push(`    stop_sequences=${py(body.stop, 1)},`);
  if (body.tools) {
    const tools = body.tools.map((t) => ({ name: t.function.name,
      description: t.function.description || "", input_schema: t.function.parameters || {} }));
    args.push(`    tools=${py(tools, 1)},`);
    const choice = { auto: { type: "auto" }, required: { type: "any" }, none: { type: "none" } };
    if (typeof body.tool_choice === "string") {
      const picked = { ...choice[body.tool_choice] };
      if (body.parallel_tool_calls === false && body.tool_choice !== "none") {
        picked.disable_parallel_tool_use = true;
      }
      args.push(`    tool_choice=${py(picked, 1)},`);
    }
  }
  const out = [];
  if (!served) {
    out.push("# The Anthropic Messages API (POST /anthropic/v1/messages) is not served by this",
      "# server yet; this is the same request for when it is.");
  }
  if (body.response_format) {
    out.push("# The Messages API has no response_format: JSON mode is left out here.");
  }
  out.push("import os", "", "import anthropic", "",
    `client = anthropic.Anthropic(base_url=${JSON.stringify(`${origin}/anthropic`)}, ` +
      "api_key=os.environ[\"SEEKSERVE_API_KEY\"])", "",
    "with client.messages.stream(", ...args, ") as stream:",
    "    for text in stream.text_stream:",
    "        print(text, end=\"\", flush=True)",
    "    print(\"\\n\", stream.get_final_message().usage)");
  return out.join("\n");
}

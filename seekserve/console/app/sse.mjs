// Server-sent events over fetch (EventSource cannot POST or send a key header), and the reading
// of a streamed chat completion in each of the seed dialects into one answer.

/** The `data` of each event in a text/event-stream body; comments (keep-alives) are skipped.
 * Aborting `signal` ends it at once (a pending read would otherwise wait for the next chunk)
 * and cancels the body, which closes the connection: the server stops generating. */
export async function* sseData(body, signal) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  const cancel = () => reader.cancel().catch(() => {});
  signal.addEventListener("abort", cancel, { once: true });
  let buffer = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let end;
      while ((end = buffer.search(/\r\n\r\n|\n\n|\r\r/)) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end).replace(/^(\r\n\r\n|\n\n|\r\r)/, "");
        const data = block.split(/\r\n|\n|\r/)
          .filter((line) => line.startsWith("data:"))
          .map((line) => line.slice(5).replace(/^ /, ""));
        if (data.length) yield data.join("\n");
      }
    }
  } finally {
    signal.removeEventListener("abort", cancel);
    reader.releaseLock();
  }
}

export function emptyAnswer() {
  return {
    status: "idle", content: "", reasoning: "", toolCalls: [], finishReason: null,
    matchedStop: null, usage: null, error: null, startedAt: 0, firstAt: 0, endedAt: 0,
  };
}

/** Folds one streamed chunk (any dialect) into `answer`, mutating it; returns false on [DONE]. */
export function applyChunk(answer, data) {
  if (data === "[DONE]") return false;
  const chunk = JSON.parse(data);
  if (chunk.error) {
    answer.error = { message: chunk.error.message, code: chunk.error.code || null };
    return true;
  }
  if (chunk.output) { // the {"output": {"text"}} envelope carries the answer text only
    answer.content += chunk.output.text || "";
    return true;
  }
  if (chunk.usage) answer.usage = chunk.usage;
  for (const choice of chunk.choices || []) {
    const delta = choice.delta || {};
    if (delta.reasoning_content) answer.reasoning += delta.reasoning_content;
    if (delta.content) answer.content += delta.content;
    for (const piece of delta.tool_calls || []) {
      let call = answer.toolCalls[piece.index];
      if (!call) {
        call = answer.toolCalls[piece.index] = { id: piece.id || "", name: "", arguments: "" };
      }
      if (piece.id) call.id = piece.id;
      if (piece.function && piece.function.name) call.name = piece.function.name;
      if (piece.function && piece.function.arguments) call.arguments += piece.function.arguments;
    }
    if (choice.finish_reason) {
      answer.finishReason = choice.finish_reason;
      answer.matchedStop = choice.matched_stop ?? null;
    }
  }
  return true;
}

/** Whether the answer has shown anything yet (for the time to first token). */
export function hasOutput(answer) {
  return Boolean(answer.content || answer.reasoning || answer.toolCalls.length);
}

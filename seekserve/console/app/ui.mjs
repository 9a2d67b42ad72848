// Shared view helpers: the htm binding over Preact, form fields and number formatting.
import { Component, Fragment, createRef, h, render } from "../vendor/preact/preact.mjs";
import htm from "../vendor/htm/htm.mjs";

export const html = htm.bind(h);
export { Component, Fragment, createRef, render };

let lastId = 0;
/** A unique element id, so every control can carry a <label for>. */
export function uid(prefix) {
  lastId += 1;
  return `${prefix}-${lastId}`;
}

/** A labelled control: `control` is called with the id its label points at. */
export function Field({ id, label, hint, wide, children }) {
  const hintId = hint ? `${id}-hint` : undefined;
  return html`<div class=${wide ? "field wide" : "field"}>
    <label for=${id}>${label}</label>
    ${children(hintId)}
    ${hint && html`<p class="hint" id=${hintId}>${hint}</p>`}
  </div>`;
}

/** A notice: kind is "info", "warn" or "error". */
export function Notice({ kind = "info", title, children }) {
  return html`<div class=${`notice ${kind}`} role=${kind === "error" ? "alert" : "status"}>
    ${title && html`<strong>${title}</strong> `}${children}
  </div>`;
}

export function fmtInt(value) {
  if (value === null || value === undefined || Number.isNaN(value)) return "—";
  return Number(value).toLocaleString("en-US");
}

export function fmtSeconds(value) {
  if (value === null || value === undefined) return "—";
  if (value < 1) return `${Math.round(value * 1000)} ms`;
  return `${value.toFixed(2)} s`;
}

export function fmtMoney(value) {
  const n = Number(value || 0);
  if (n === 0) return "$0";
  if (n < 0.01) return `$${n.toFixed(6)}`;
  return `$${n.toFixed(n < 10 ? 4 : 2)}`;
}

export function fmtTime(iso) {
  const d = new Date(iso);
  return d.toLocaleString("en-GB", { month: "short", day: "numeric", hour: "2-digit",
                                    minute: "2-digit", second: "2-digit", hour12: false });
}

/** Pretty JSON of a string, or the string itself when it is not JSON. */
export function prettyJson(text) {
  try {
    return JSON.stringify(JSON.parse(text), null, 2);
  } catch {
    return text;
  }
}

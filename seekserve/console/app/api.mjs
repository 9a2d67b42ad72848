// Calls to seekserve with the keys the user gave, which live in sessionStorage only (never in a
// URL or a cookie): they are gone when the tab closes.
const STORAGE = { api: "seekserve.console.apiKey", admin: "seekserve.console.adminKey" };
const listeners = new Set();

export function getKey(kind) {
  return sessionStorage.getItem(STORAGE[kind]) || "";
}

export function setKeys({ api, admin }) {
  for (const [kind, value] of [["api", api], ["admin", admin]]) {
    if (value === undefined) continue;
    if (value) sessionStorage.setItem(STORAGE[kind], value.trim());
    else sessionStorage.removeItem(STORAGE[kind]);
  }
  for (const fn of listeners) fn();
}

/** Whether the user has chosen how to sign in (with keys, or none on an open server). */
export function signedIn() {
  return Boolean(getKey("api") || getKey("admin") || sessionStorage.getItem("seekserve.console.open"));
}

export function useOpenServer() {
  sessionStorage.setItem("seekserve.console.open", "1");
  for (const fn of listeners) fn();
}

export function signOut() {
  for (const name of [...Object.values(STORAGE), "seekserve.console.open"]) {
    sessionStorage.removeItem(name);
  }
  for (const fn of listeners) fn();
}

export function onKeysChange(fn) {
  listeners.add(fn);
  return () => listeners.delete(fn);
}

export class ApiError extends Error {
  constructor(status, error) {
    super(error.message || `HTTP ${status}`);
    this.status = status;
    this.code = error.code || null;
    this.param = error.param || null;
  }
}

export function headers(kind, json) {
  const out = { Accept: "application/json" };
  const key = getKey(kind);
  if (key) out.Authorization = `Bearer ${key}`;
  if (json) out["Content-Type"] = "application/json";
  return out;
}

export function withQuery(path, query) {
  const params = new URLSearchParams();
  for (const [name, value] of Object.entries(query || {})) {
    for (const item of Array.isArray(value) ? value : [value]) {
      if (item !== undefined && item !== null && item !== "") params.append(name, item);
    }
  }
  const text = params.toString();
  return text ? `${path}?${text}` : path;
}

/** The JSON body of a response, or an ApiError with the server's error message. */
export async function readJson(response) {
  const text = await response.text();
  let body = null;
  try {
    body = text ? JSON.parse(text) : null;
  } catch {
    body = null;
  }
  if (!response.ok) {
    throw new ApiError(response.status, (body && body.error) || { message: text || response.statusText });
  }
  return body;
}

/** GET/POST/DELETE `path` with the `kind` of key ("api" or "admin"). */
export async function call(path, { kind = "api", method = "GET", body, query, signal } = {}) {
  const response = await fetch(withQuery(path, query), {
    method,
    headers: headers(kind, body !== undefined),
    body: body === undefined ? undefined : JSON.stringify(body),
    credentials: "omit",
    cache: "no-store",
    signal,
  });
  return readJson(response);
}

/** The models and deployments, with whichever key is set (an API key first). */
export function catalog() {
  return call("/console/api/catalog", { kind: getKey("api") || !getKey("admin") ? "api" : "admin" });
}

// Shared by every console page: the key, calls to the /v1 API, and building DOM from data.
// Everything from the API goes into the page as text (textContent), never as HTML.

const KEY = "vlmq.apiKey";
// Whether the key is an admin key, learnt at sign-in: it only shows the Keys link, as the
// API itself refuses every keys call from any other key.
const ADMIN = "vlmq.admin";
export const ROOT = document.querySelector('meta[name="vlmq-root"]')?.content ?? "";

export function apiKey() {
  return sessionStorage.getItem(KEY);
}

export function signIn(key, admin) {
  sessionStorage.setItem(KEY, key);
  sessionStorage.setItem(ADMIN, admin ? "1" : "0");
}

export function signOut() {
  sessionStorage.removeItem(KEY);
  sessionStorage.removeItem(ADMIN);
  location.assign(`${ROOT}/console/signin`);
}

export class ApiError extends Error {
  constructor(status, code, message, retryAfter) {
    super(message);
    this.status = status;
    this.code = code;
    this.retryAfter = retryAfter;
  }
}

// fetch() on the public API with the key; JSON in and out unless `raw` (then the Response).
export async function api(path, { method = "GET", json, body, raw = false, key, signal } = {}) {
  const headers = { Authorization: `Bearer ${key ?? apiKey() ?? ""}` };
  if (json !== undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(json);
  }
  const resp = await fetch(`${ROOT}${path}`, { method, headers, body, signal, cache: "no-store" });
  if (!resp.ok) {
    let code = "http_error";
    let message = `${resp.status} ${resp.statusText}`;
    try {
      const err = (await resp.json()).error;
      code = err.code;
      message = err.message;
    } catch {
      // not the API's error body (a proxy's page, say): the status says enough
    }
    if (resp.status === 401 && key === undefined) {
      signOut();
    }
    throw new ApiError(resp.status, code, message, Number(resp.headers.get("Retry-After")) || 0);
  }
  return raw ? resp : resp.json();
}

// The page's scripts start with `await signedIn()`: without a key the page goes to sign-in
// and the script goes no further (the promise never settles).
export async function signedIn() {
  const key = apiKey();
  if (!key) {
    location.replace(`${ROOT}/console/signin`);
    await new Promise(() => {});
  }
  // The key's public part only: `vlmq_<id>_<secret>`.
  const who = document.getElementById("who");
  if (who) who.textContent = `key ${key.split("_").slice(0, 2).join("_")}`;
  document.getElementById("signout")?.addEventListener("click", signOut);
  const keys = document.getElementById("nav-keys");
  if (keys) keys.hidden = sessionStorage.getItem(ADMIN) !== "1";
  return key;
}

// el("td", {class: "x"}, "text", child): attributes are set one by one and children are
// nodes or text; there is no way to pass HTML.
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (name === "class") node.className = value;
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

// `fromPoll`: a live refresh's error, which its next success clears; an action's error
// stays until the next action.
export function showError(err, fromPoll = false) {
  const box = document.getElementById("error");
  if (!box) return;
  if (!err) {
    box.hidden = true;
    box.textContent = "";
    return;
  }
  box.hidden = false;
  box.dataset.fromPoll = fromPoll ? "1" : "";
  box.textContent = err instanceof ApiError ? `${err.code}: ${err.message}` : String(err);
}

export function clearPollError() {
  if (document.getElementById("error")?.dataset.fromPoll) showError(null);
}

export function statusBadge(status) {
  return el("span", { class: `status status-${status}` }, status);
}

export function seconds(value) {
  if (value === null || value === undefined || Number.isNaN(value)) return "—";
  if (value < 1) return `${Math.round(value * 1000)} ms`;
  if (value < 120) return `${value.toFixed(1)} s`;
  if (value < 7200) return `${Math.round(value / 60)} min`;
  if (value < 172800) return `${(value / 3600).toFixed(1)} h`;
  return `${Math.round(value / 86400)} d`;
}

export function between(from, to) {
  if (!from || !to) return null;
  return (new Date(to) - new Date(from)) / 1000;
}

export function age(moment) {
  return seconds((Date.now() - new Date(moment)) / 1000);
}

export function jobLink(id, text = id) {
  return el("a", { href: `${ROOT}/console/job?id=${encodeURIComponent(id)}` }, text);
}

export const TERMINAL = new Set(["succeeded", "failed", "cancelled", "expired"]);

// Polls `tick` every `ms` while the tab is visible; one call at a time.
export function every(ms, tick) {
  let busy = false;
  const run = async () => {
    if (busy || document.hidden) return;
    busy = true;
    try {
      await tick();
      clearPollError();
    } catch (err) {
      showError(err, true);
    } finally {
      busy = false;
    }
  };
  run();
  setInterval(run, ms);
  document.addEventListener("visibilitychange", run);
  return run;
}

// The bytes of an API path as a download named `name` (a link cannot send the key).
export async function download(path, name) {
  const blob = await (await api(path, { raw: true })).blob();
  const url = URL.createObjectURL(blob);
  const link = el("a", { href: url, download: name });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

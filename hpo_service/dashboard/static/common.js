// Shared by the dashboard's pages: API calls (with the bearer token from localStorage), polling, formatting.

const POLL_MS = 1500; // live: never more than 2 s behind
const TOKEN_KEY = "hpo-api-token";

export class HttpError extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status;
  }
}

/** The token field in the header: kept in this browser's localStorage, sent with every command. */
export function bindTokenField() {
  const field = document.getElementById("token");
  field.value = localStorage.getItem(TOKEN_KEY) || "";
  field.addEventListener("input", () => localStorage.setItem(TOKEN_KEY, field.value.trim()));
}

export async function getJSON(path) {
  return (await checked(await fetch(path, { cache: "no-store" }))).json();
}

export async function getBlob(path) {
  return (await checked(await fetch(path, { cache: "no-store" }))).blob();
}

export async function post(path) {
  const token = localStorage.getItem(TOKEN_KEY);
  const headers = token ? { Authorization: `Bearer ${token}` } : {};
  return (await checked(await fetch(path, { method: "POST", headers }))).json();
}

async function checked(response) {
  if (response.ok) return response;
  let detail = response.statusText;
  try {
    const body = await response.json();
    detail =
      typeof body.detail === "string" ? body.detail : body.detail.map((e) => `${e.loc.at(-1)}: ${e.msg}`).join("; ");
  } catch {
    // not the API's JSON problem: keep the status text
  }
  throw new HttpError(response.status, detail);
}

/** Run `refresh` now and again `ms` after each run ends (never two at once, nor while the tab is hidden);
 * failures show in #updated. */
export function poll(refresh, ms = POLL_MS) {
  const stamp = document.getElementById("updated");
  const run = async () => {
    if (document.hidden) {
      setTimeout(run, ms);
      return;
    }
    try {
      await refresh();
      stamp.textContent = `live · updated ${new Date().toLocaleTimeString()}`;
      stamp.classList.remove("stale");
    } catch (error) {
      stamp.textContent = `not updated: ${error.message}`;
      stamp.classList.add("stale");
    }
    setTimeout(run, ms);
  };
  run();
}

/** A classic script, added to the page now; resolves once it has run. */
export function loadScript(src) {
  return new Promise((resolve, reject) => {
    const script = el("script", { src });
    script.addEventListener("load", resolve);
    script.addEventListener("error", () => reject(new Error(`cannot load ${src}`)));
    document.head.append(script);
  });
}

/** Times from the API are UTC; SQLite gives them without a zone. */
function parseTime(text) {
  return new Date(/[zZ]|[+-]\d\d:?\d\d$/.test(text) ? text : `${text}Z`);
}

export function age(text) {
  const seconds = Math.max(0, (Date.now() - parseTime(text).getTime()) / 1000);
  if (seconds < 60) return `${Math.round(seconds)} s`;
  if (seconds < 3600) return `${Math.round(seconds / 60)} min`;
  if (seconds < 86400) return `${(seconds / 3600).toFixed(1)} h`;
  return `${(seconds / 86400).toFixed(1)} d`;
}

export function formatLoss(value) {
  return value == null ? "–" : value.toFixed(4);
}

/** A DOM element with attributes and children (strings become text, never HTML). */
export function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value != null) node.setAttribute(name, value);
  }
  node.append(...children.filter((child) => child != null));
  return node;
}

/** The statuses the server names (`/api/meta`: "search_statuses" or "trial_statuses") as options of `select`,
 * after its first ("all"); once: a later call finds them there and asks nothing. */
export async function addStatusOptions(select, kind) {
  if (select.options.length > 1) return;
  const meta = await getJSON("/api/meta");
  select.append(...meta[kind].map((status) => el("option", {}, status)));
}

export function statusBadge(status) {
  return el("span", { class: `status ${status}` }, status);
}

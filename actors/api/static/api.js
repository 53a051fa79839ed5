// The manager's HTTP API as the page calls it: the same JSON API the CLI reads, sent the
// bearer token the user typed (kept in sessionStorage, so it leaves with the tab).

export const PREFIX = "/api/v1";
const TOKEN_KEY = "batchfarm.token";

/** An API call that failed: `message` is the API's one-line error, `status` 0 if no answer. */
export class ApiError extends Error {
  constructor(message, status) {
    super(message);
    this.status = status;
  }
}

export function token() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

export function setToken(value) {
  if (value) sessionStorage.setItem(TOKEN_KEY, value);
  else sessionStorage.removeItem(TOKEN_KEY);
}

function headers() {
  const found = { Accept: "application/json" };
  if (token()) found.Authorization = `Bearer ${token()}`;
  return found;
}

async function send(method, url) {
  try {
    return await fetch(url, { method, headers: headers(), cache: "no-store" });
  } catch {
    throw new ApiError(`no answer from the manager at ${location.origin}: is it running?`, 0);
  }
}

/** `METHOD PREFIX + path`; the reply's JSON, or an ApiError with the API's message. */
export async function call(method, path) {
  const response = await send(method, PREFIX + path);
  const body = await response.json().catch(() => null);
  if (!response.ok) {
    const message = body && typeof body.error === "string" ? body.error : response.statusText;
    throw new ApiError(`${method} ${path}: ${message} (HTTP ${response.status})`, response.status);
  }
  return body;
}

export const get = (path) => call("GET", path);
export const post = (path) => call("POST", path);

/**
 * Save the object at `url` (a results URL of the API) as `name`. A plain link cannot carry
 * the token, so with one set the object is fetched and saved from memory.
 */
export async function download(url, name) {
  const response = await send("GET", url);
  if (!response.ok) {
    const body = await response.json().catch(() => null);
    throw new ApiError(`${name}: ${body?.error ?? response.statusText}`, response.status);
  }
  const link = document.createElement("a");
  link.href = URL.createObjectURL(await response.blob());
  link.download = name;
  link.click();
  setTimeout(() => URL.revokeObjectURL(link.href), 60_000);
}

// The page's building blocks: elements made from text (never from HTML), and the way
// durations, sizes, rates, times, states and progress are shown.

export const OVER = ["succeeded", "failed", "cancelled"];

/** An element: `attrs` become attributes (`on*` listeners, `data` the dataset), children text. */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value == null || value === false) continue;
    if (key === "class") el.className = value;
    else if (key === "data") Object.assign(el.dataset, value);
    else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  el.append(...children.flat().filter((c) => c != null && c !== false && c !== ""));
  return el;
}

export const pct = (p) => `${Math.floor(Math.max(0, Math.min(1, p || 0)) * 100)}%`;

export function dur(s) {
  if (s == null || !Number.isFinite(s)) return "—";
  if (s < 10) return `${s.toFixed(1)} s`;
  if (s < 60) return `${Math.round(s)} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min ${String(Math.floor(s % 60)).padStart(2, "0")} s`;
  return `${Math.floor(m / 60)} h ${String(m % 60).padStart(2, "0")} min`;
}

export function bytes(n) {
  if (n == null) return "—";
  const units = ["B", "kB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) [n, i] = [n / 1000, i + 1];
  return `${i ? n.toFixed(n < 10 ? 1 : 0) : n} ${units[i]}`;
}

export function rate(perSecond) {
  if (!perSecond) return "—";
  if (perSecond >= 1) return `${perSecond.toFixed(1)} tasks/s`;
  return `${(perSecond * 60).toFixed(perSecond * 60 < 10 ? 1 : 0)} tasks/min`;
}

export function ago(ts) {
  if (ts == null) return "—";
  return `${dur(Math.max(0, Date.now() / 1000 - ts))} ago`;
}

/** A time of day, with the date when it is not today. */
export function clock(ts) {
  if (ts == null) return "—";
  const when = new Date(ts * 1000);
  const today = when.toDateString() === new Date().toDateString();
  return today
    ? when.toLocaleTimeString()
    : when.toLocaleString([], { dateStyle: "medium", timeStyle: "short" });
}

export function eta(item) {
  if (OVER.includes(item.state)) return "—";
  if (item.eta_s != null) return dur(item.eta_s);
  return item.state === "running" && !item.why ? "estimating…" : "—";
}

export const badge = (state) => h("span", { class: `badge ${state}` }, state);

export function bar(progress, state) {
  const fill = h("span", { class: "fill" });
  fill.style.width = `${Math.max(0, Math.min(1, progress || 0)) * 100}%`;
  const value = Math.floor((progress || 0) * 100);
  const attrs = { "aria-valuemin": 0, "aria-valuemax": 100, "aria-valuenow": value };
  return h("span", { class: `bar ${state}`, role: "progressbar", ...attrs }, fill);
}

export function progressCell(item) {
  const failed = item.failed ? `, ${item.failed} failed` : "";
  return h(
    "div",
    { class: "progress" },
    bar(item.progress, item.state),
    h("span", { class: "pct" }, pct(item.progress)),
    h("span", { class: "muted small" }, `${item.done}/${item.total} done${failed}`),
  );
}

export const stat = (label, value, extra = {}) =>
  h("div", { class: "stat", ...extra }, h("span", { class: "label" }, label), h("b", {}, value));

export function table(headings, rows, empty) {
  if (!rows.length) return h("p", { class: "empty" }, empty);
  const head = h(
    "tr",
    {},
    headings.map((title) => h("th", {}, title)),
  );
  return h("div", { class: "scroll" }, h("table", {}, h("thead", {}, head), h("tbody", {}, rows)));
}

export const section = (title, ...body) => h("section", {}, h("h2", {}, title), ...body);

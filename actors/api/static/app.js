// The batchfarm page: jobs with live progress, a job's stages, tasks and results, the nodes
// and their workers. It polls the HTTP API and redraws the current view. Everything the API
// says reaches the page as text nodes (never as HTML), so a job name cannot become markup.

import { ApiError, PREFIX, download, get, post, setToken, token } from "./api.js";
import {
  OVER,
  ago,
  badge,
  bar,
  bytes,
  clock,
  dur,
  eta,
  h,
  pct,
  progressCell,
  rate,
  section,
  stat,
  table,
} from "./dom.js";
import { nodesView } from "./nodes.js";

const POLL_MS = 1500;
const TASKS_SHOWN = 200;
const RESULTS_SHOWN = 200;
const $ = (id) => document.getElementById(id);

const jobHref = (id, tasks) =>
  `#/jobs/${encodeURIComponent(id)}${tasks ? `?tasks=${encodeURIComponent(tasks)}` : ""}`;

let flashFromPoll = false;

/** Show `message` above the view ("" hides it); a poll's message goes when a poll succeeds. */
function flash(message, fromPoll = false) {
  const el = $("flash");
  el.textContent = message;
  el.hidden = !message;
  flashFromPoll = fromPoll;
}

// ---------------------------------------------------------------------------------------
// Actions

function cancelButton(job) {
  if (OVER.includes(job.state)) return null;
  const cancel = async (event) => {
    const button = event.currentTarget;
    if (!confirm(`Cancel job ${job.id}? Its queued tasks will not run.`)) return;
    button.disabled = true;
    try {
      await post(`/jobs/${encodeURIComponent(job.id)}/cancel`);
      flash("");
    } catch (error) {
      flash(error.message);
    }
    refresh();
  };
  return h("button", { type: "button", class: "danger", onclick: cancel }, "Cancel");
}

function downloadLink(item) {
  const name = item.key.split("/").pop();
  // The API gives relative URLs under its prefix; anything else is not followed.
  if (typeof item.url !== "string" || !item.url.startsWith(`${PREFIX}/blobs/`)) return name;
  const save = (event) => {
    if (!token()) return; // no token: the browser downloads the link itself
    event.preventDefault();
    download(item.url, name).catch((error) => flash(error.message));
  };
  return h("a", { href: item.url, download: name, class: "download", onclick: save }, "Download");
}

// ---------------------------------------------------------------------------------------
// Views: each fetches what it shows, then returns the nodes to put in <main>

async function jobsView() {
  const [{ jobs }, { nodes }] = await Promise.all([get("/jobs?limit=200"), get("/nodes")]);
  document.title = "Jobs – batchfarm";
  const running = jobs.filter((j) => j.state === "running").length;
  const waiting = jobs.filter((j) => !OVER.includes(j.state) && j.state !== "running").length;
  const up = nodes.filter((n) => n.state === "up");
  const workers = up.reduce((sum, n) => sum + n.workers.length, 0);
  const busy = up.reduce((sum, n) => sum + n.busy, 0);
  const summary = h(
    "div",
    { class: "stats" },
    stat("running jobs", running),
    stat("waiting jobs", waiting),
    stat("finished jobs", jobs.length - running - waiting),
    stat("nodes up", `${up.length} of ${nodes.length}`),
    stat("workers busy", `${busy} of ${workers}`),
  );
  const rows = jobs.map((job) =>
    h(
      "tr",
      { data: { job: job.id, state: job.state } },
      h(
        "td",
        { class: "wrap" },
        h("a", { href: jobHref(job.id), class: "name" }, job.name || job.id),
        h("div", { class: "muted mono small" }, job.id),
      ),
      h("td", { class: "state" }, badge(job.state)),
      h("td", {}, progressCell(job)),
      h("td", {}, eta(job)),
      h("td", {}, rate(job.throughput)),
      h("td", {}, ago(job.created_at)),
      h("td", { class: "why" }, job.why || job.reason || ""),
      h("td", {}, cancelButton(job)),
    ),
  );
  const headings = ["Job", "State", "Progress", "ETA", "Throughput", "Submitted", "Why", ""];
  const empty = "No jobs yet: submit one with `batchfarm submit`.";
  return [summary, section("Jobs", table(headings, rows, empty))];
}

let resultsCache = { key: "", results: [] };

async function resultsOf(job) {
  // Results change only as tasks finish: fetch them again when the counts move.
  const key = `${job.id} ${job.state} ${job.done}`;
  if (resultsCache.key !== key) {
    const { results } = await get(`/jobs/${encodeURIComponent(job.id)}/results`);
    resultsCache = { key, results };
  }
  return resultsCache.results;
}

async function jobView(id, filter) {
  const path = `/jobs/${encodeURIComponent(id)}`;
  const query = new URLSearchParams({ limit: TASKS_SHOWN });
  if (filter) query.set("state", filter);
  const [job, { tasks }] = await Promise.all([get(path), get(`${path}/tasks?${query}`)]);
  const results = await resultsOf(job);
  document.title = `${pct(job.progress)} ${job.name || job.id} – batchfarm`;
  return [
    jobHeader(job),
    stagesSection(job),
    job.failures.length ? failuresSection(job.failures) : null,
    resultsSection(job, results),
    tasksSection(job, tasks, filter),
  ].filter(Boolean);
}

function jobHeader(job) {
  const stats = h(
    "div",
    { class: "stats" },
    stat("progress", `${pct(job.progress)} · ${job.done}/${job.total}`, { id: "job-progress" }),
    stat("failed", job.failed),
    stat("ETA", eta(job)),
    stat("throughput", rate(job.throughput)),
    stat("wall time", dur(job.wall_s)),
    stat("CPU time", dur(job.cpu_s)),
    stat("submitted", clock(job.created_at)),
    stat("started", clock(job.started_at)),
    stat("finished", clock(job.finished_at)),
  );
  const note = job.why || (job.state !== "succeeded" && job.reason);
  return h(
    "section",
    { class: "card job", data: { job: job.id, state: job.state } },
    h(
      "div",
      { class: "title" },
      h("h1", {}, job.name || job.id),
      badge(job.state),
      h("span", { class: "muted mono" }, job.id),
      job.priority !== "normal" ? h("span", { class: "muted" }, `priority ${job.priority}`) : null,
      h("span", { class: "grow" }),
      cancelButton(job),
    ),
    h("div", { class: "big" }, bar(job.progress, job.state)),
    note ? h("p", { class: "why" }, note) : null,
    stats,
  );
}

function stagesSection(job) {
  const rows = job.stages.map((stage) => {
    const counts = Object.entries(stage.tasks)
      .filter(([state, n]) => state !== "total" && n)
      .map(([state, n]) => `${n} ${state}`)
      .join(" · ");
    return h(
      "tr",
      { data: { stage: stage.name } },
      h("td", {}, h("b", {}, stage.name), h("div", { class: "muted small mono" }, stage.handler)),
      h("td", {}, stage.mode),
      h("td", { class: "state" }, badge(stage.state)),
      h("td", {}, progressCell(stage)),
      h("td", { class: "small wrap" }, counts || "—"),
      h("td", {}, dur(stage.wall_s)),
      h("td", {}, dur(stage.cpu_s)),
      h("td", {}, `${bytes(stage.bytes_in)} / ${bytes(stage.bytes_out)}`),
      h("td", {}, rate(stage.throughput)),
      h("td", {}, eta(stage)),
      h("td", { class: "why" }, stage.why || stage.reason || ""),
    );
  });
  const headings = ["Stage", "Mode", "State", "Progress", "Tasks", "Wall", "CPU", "In / out"];
  return section("Stages", table([...headings, "Throughput", "ETA", "Why"], rows, "No stages."));
}

function errorText(error) {
  if (!error) return "";
  return `${error.type || "error"}: ${error.message || "no message"}`;
}

function failuresSection(failures) {
  const items = failures.map((failure) =>
    h(
      "li",
      {},
      h("span", { class: "mono" }, failure.task),
      " ",
      h("span", { class: "error" }, errorText(failure.error)),
      typeof failure.error?.stderr_tail === "string" && failure.error.stderr_tail.trim()
        ? h("details", {}, h("summary", {}, "stderr"), h("pre", {}, failure.error.stderr_tail))
        : null,
    ),
  );
  return section("Failures", h("ul", { class: "failures" }, items));
}

function resultsSection(job, results) {
  const prefix = `jobs/${job.id}/`;
  const rows = results
    .slice(0, RESULTS_SHOWN)
    .map((item) =>
      h(
        "tr",
        { data: { key: item.key } },
        h(
          "td",
          { class: "mono" },
          item.key.startsWith(prefix) ? item.key.slice(prefix.length) : item.key,
        ),
        h("td", {}, bytes(item.size)),
        h("td", {}, downloadLink(item)),
      ),
    );
  const more = results.length > RESULTS_SHOWN ? `and ${results.length - RESULTS_SHOWN} more` : null;
  const empty = OVER.includes(job.state) ? "This job left no results." : "No results yet.";
  const hint = "All of them: `batchfarm results JOB --to DIR`.";
  return section(
    "Results",
    table(["Output", "Size", ""], rows, empty),
    more && h("p", { class: "muted" }, `${more}. ${hint}`),
  );
}

function tasksSection(job, tasks, filter) {
  const now = Date.now() / 1000;
  const states = Object.entries(job.tasks).filter(([state, n]) => state !== "total" && n);
  const links = [["all", job.tasks.total, ""], ...states.map(([s, n]) => [s, n, s])].map(
    ([label, n, state]) =>
      h(
        "a",
        { href: jobHref(job.id, state), class: state === (filter || "") ? "on" : "" },
        `${label} ${n}`,
      ),
  );
  const rows = tasks.map((task) => {
    const end = task.finished_at ?? (task.state === "running" ? now : null);
    const took = task.started_at != null && end != null ? end - task.started_at : null;
    const where = task.node_id ? `${task.node_id} · w${task.worker ?? "?"}` : "—";
    const note = task.error ? errorText(task.error) : task.why;
    return h(
      "tr",
      { data: { task: task.id, state: task.state } },
      h("td", { class: "mono" }, `${task.stage}/${task.part}`),
      h("td", { class: "state" }, badge(task.state)),
      h("td", {}, task.attempts),
      h("td", { class: "mono small" }, where),
      h("td", {}, dur(task.queue_wait_s)),
      h("td", {}, dur(task.compute_s)),
      h("td", {}, dur(took)),
      h("td", {}, `${bytes(task.bytes_in)} / ${bytes(task.bytes_out)}`),
      h("td", { class: task.error ? "error" : "why" }, note || ""),
    );
  });
  const shown =
    tasks.length === TASKS_SHOWN ? h("p", { class: "muted" }, `The first ${TASKS_SHOWN}.`) : null;
  const headings = [
    "Task",
    "State",
    "Attempts",
    "Node · worker",
    "Queued",
    "Compute",
    "Took",
    "In / out",
    "",
  ];
  return section(
    "Tasks",
    h("nav", { class: "filters" }, links),
    table(headings, rows, "No tasks here."),
    shown,
  );
}

// ---------------------------------------------------------------------------------------
// Routing, polling, the token form

function decode(part) {
  try {
    return decodeURIComponent(part);
  } catch {
    return part; // a hand-typed "%" stays as it is
  }
}

function route() {
  const [path, query] = location.hash.replace(/^#/, "").split("?");
  const parts = path.split("/").filter(Boolean).map(decode);
  if (parts[0] === "jobs" && parts.length > 1) {
    const filter = new URLSearchParams(query).get("tasks") || "";
    return { tab: "jobs", view: () => jobView(parts.slice(1).join("/"), filter) };
  }
  if (parts[0] === "nodes") return { tab: "nodes", view: nodesView };
  return { tab: "jobs", view: jobsView };
}

let generation = 0;
let timer = 0;
let named = false;

function setStatus(text, kind) {
  const el = $("status");
  el.textContent = text;
  el.className = `status ${kind}`;
}

async function nameGrid() {
  const health = await get("/health");
  $("grid").textContent = `grid ${health.grid} · ${health.version}`;
  named = true;
}

async function refresh() {
  clearTimeout(timer);
  const mine = ++generation;
  const { tab, view } = route();
  for (const link of document.querySelectorAll("nav a[data-tab]")) {
    link.classList.toggle("on", link.dataset.tab === tab);
  }
  try {
    const nodes = await view();
    if (mine !== generation) return; // a newer refresh (another view) owns <main> now
    $("main").replaceChildren(...nodes);
    setStatus(`live · ${new Date().toLocaleTimeString()}`, "ok");
    if (flashFromPoll) flash("");
    if (!named) nameGrid().catch(() => {});
  } catch (error) {
    if (mine !== generation) return;
    const auth = error instanceof ApiError && (error.status === 401 || error.status === 403);
    setStatus(auth ? "needs a token" : "offline", "bad");
    if (auth) showToken(error.message);
    else if (error instanceof ApiError && error.status === 404)
      $("main").replaceChildren(h("p", { class: "empty" }, error.message));
    else flash(error.message, true);
  }
  if (mine === generation && !document.hidden) timer = setTimeout(refresh, POLL_MS);
}

function showToken(message) {
  $("token-form").hidden = false;
  $("token-note").textContent = message || "Kept in this tab only (sessionStorage).";
  $("token").focus();
}

function tokenLabel() {
  $("token-toggle").textContent = token() ? "Token ✓" : "Token";
}

$("token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  setToken($("token").value.trim());
  $("token").value = "";
  $("token-form").hidden = true;
  flash("");
  tokenLabel();
  named = false;
  refresh();
});
$("token-forget").addEventListener("click", () => {
  setToken("");
  tokenLabel();
  refresh();
});
$("token-toggle").addEventListener("click", () => {
  if ($("token-form").hidden) showToken();
  else $("token-form").hidden = true;
});
window.addEventListener("hashchange", () => {
  flash("");
  refresh();
});
document.addEventListener("visibilitychange", () => document.hidden || refresh());
tokenLabel();
refresh();

// The nodes view: each node's state, load and heartbeat, and its workers with their task.

import { get } from "./api.js";
import { ago, badge, bytes, h, section, stat, table } from "./dom.js";

export async function nodesView() {
  const { nodes } = await get("/nodes");
  document.title = "Nodes – batchfarm";
  const empty = "No node has reported yet: start one with `batchfarm node` or `batchfarm up`.";
  if (!nodes.length) return [section("Nodes", h("p", { class: "empty" }, empty))];
  return [section("Nodes", h("div", { class: "nodes" }, nodes.map(nodeCard)))];
}

function nodeCard(node) {
  const load = h("span", { class: "bar load" }, h("span", { class: "fill" }));
  const cores = Math.max(1, node.workers.length);
  load.firstChild.style.width = `${Math.min(100, node.cpu_percent / cores)}%`;
  const rows = node.workers.map((w) =>
    h(
      "tr",
      { data: { worker: w.index, state: w.state } },
      h("td", {}, `w${w.index}`),
      h("td", {}, w.core ?? "—"),
      h("td", { class: "state" }, badge(w.state)),
      h("td", { class: "mono small task" }, w.task || ""),
      h("td", {}, w.done),
      h("td", {}, w.failed),
      h("td", {}, `${Math.round(w.cpu_percent)}%`),
      h("td", {}, bytes(w.rss_bytes)),
    ),
  );
  const cordon = node.cordoned
    ? h("p", { class: "why" }, `cordoned: ${node.cordon_reason || "no reason given"}`)
    : null;
  return h(
    "section",
    { class: "card node", data: { node: node.id, state: node.state } },
    h(
      "div",
      { class: "title" },
      h("h3", { class: "mono" }, node.id),
      badge(node.state),
      h("span", { class: "muted" }, `${node.host} · class ${node.node_class}`),
    ),
    node.reason && node.state !== "up" ? h("p", { class: "why" }, node.reason) : null,
    cordon,
    h(
      "div",
      { class: "stats" },
      stat("workers busy", `${node.busy} of ${node.workers.length}`),
      h(
        "div",
        { class: "stat" },
        h("span", { class: "label" }, "CPU"),
        h("b", {}, `${Math.round(node.cpu_percent)}%`),
        load,
      ),
      stat("memory", bytes(node.rss_bytes)),
      stat("heartbeat", ago(node.last_heartbeat)),
    ),
    table(
      ["Worker", "Core", "State", "Task", "Done", "Failed", "CPU", "Memory"],
      rows,
      "No workers reported.",
    ),
  );
}

// ClusterODM admin page: polls the /r/ JSON API and renders nodes, tasks and routes.
// Plain DOM, no framework; every value from the server is set with textContent (task names
// come from users, so nothing is ever parsed as HTML).
"use strict";

(function () {
  const POLL_MS = 3000;
  const CONFIRM_MS = 4000;
  const armed = new Map(); // node name -> time the Remove button was first clicked
  let lastOk = 0;
  let timer = null;

  const $ = (id) => document.getElementById(id);

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (key === "text") node.textContent = value;
      else if (key === "className") node.className = value;
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? "" : value);
    }
    for (const child of children) {
      if (child !== null && child !== undefined) {
        node.append(child instanceof Node ? child : document.createTextNode(String(child)));
      }
    }
    return node;
  }

  async function api(method, path, body) {
    const init = { method, headers: { Accept: "application/json" }, cache: "no-store" };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const resp = await fetch(path, init);
    let data = null;
    try {
      data = await resp.json();
    } catch (e) {
      data = null;
    }
    if (!resp.ok) {
      const reason = data && data.error ? data.error : `HTTP ${resp.status}`;
      throw new Error(reason);
    }
    return data;
  }

  function say(text, kind) {
    const box = $("message");
    box.textContent = text;
    box.className = `banner ${kind || ""}`;
    box.hidden = !text;
  }

  function ago(ms) {
    if (!ms) return "never";
    const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
    if (s < 60) return `${s} s ago`;
    if (s < 3600) return `${Math.floor(s / 60)} min ago`;
    if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
    return new Date(ms).toLocaleString();
  }

  function when(ms) {
    return ms ? new Date(ms).toLocaleString() : "";
  }

  function shortId(uuid) {
    return el("span", { className: "mono", title: uuid, text: uuid.slice(0, 8) });
  }

  // --- nodes ------------------------------------------------------------------------------
  async function nodeAction(node, path, method) {
    try {
      const ok = await api(method, path, { number: node.number, name: node.name });
      if (ok === false) say(`Node ${node.name} is gone.`, "error");
      else say("", "");
    } catch (e) {
      say(`${node.name}: ${e.message}`, "error");
    }
    refresh();
  }

  function removeButton(node) {
    const at = armed.get(node.name);
    const isArmed = at && Date.now() - at < CONFIRM_MS;
    return el("button", {
      className: isArmed ? "danger armed remove" : "danger remove",
      text: isArmed ? "Confirm remove" : "Remove",
      title: "Stop using this node and forget its routes",
      onclick: () => {
        const first = armed.get(node.name);
        if (first && Date.now() - first < CONFIRM_MS) {
          armed.delete(node.name);
          nodeAction(node, "/r/node", "DELETE");
        } else {
          armed.set(node.name, Date.now());
          renderNodes(lastNodes);
          setTimeout(() => renderNodes(lastNodes), CONFIRM_MS + 50);
        }
      },
    });
  }

  let lastNodes = [];

  function renderNodes(nodes) {
    lastNodes = nodes;
    const body = $("nodes").tBodies[0];
    body.replaceChildren(
      ...nodes.map((n) => {
        const flags = el("td");
        if (n.isLocked) flags.append(el("span", { className: "pill flag", title: "Locked", text: "L" }));
        if (n.isAutoSpawned) {
          flags.append(el("span", { className: "pill flag", title: "Auto-spawned", text: "A" }));
        }
        if (n.discoveredBy) {
          const title = `Discovered by ${n.discoveredBy}${n.isDraining ? ", draining" : ""}`;
          flags.append(el("span", { className: "pill flag", title, text: n.isDraining ? "D…" : "D" }));
        }
        const lock = n.isLocked
          ? el("button", { className: "unlock", text: "Unlock", onclick: () => nodeAction(n, "/r/node/unlock", "POST") })
          : el("button", { className: "lock", text: "Lock", onclick: () => nodeAction(n, "/r/node/lock", "POST") });
        return el(
          "tr",
          { "data-name": n.name, "data-number": n.number },
          el("td", { className: "num", text: n.number }),
          el("td", { className: "mono", text: n.name }),
          el("td", {}, el("span", {
            className: `pill status ${n.isOnline ? "online" : "offline"}`,
            text: n.isOnline ? "online" : "offline",
          })),
          el("td", { className: "num queue", text: `${n.getTaskQueueCount}/${n.getMaxParallelTasks}` }),
          el("td", { text: n.getEngineInfo }),
          el("td", { text: n.getVersion }),
          flags,
          el("td", { className: "muted", title: when(n.lastRefreshed), text: ago(n.lastRefreshed) }),
          el("td", { className: "actions" }, lock, removeButton(n)),
        );
      }),
    );
    $("nodes-empty").hidden = nodes.length > 0;
  }

  // --- tasks and routes -------------------------------------------------------------------
  function statusPill(t) {
    const name = t.statusName || "unknown";
    return el("span", { className: `pill ${name}`, title: t.error || t.stage || "", text: name });
  }

  function progress(t) {
    if (typeof t.progress !== "number") return el("span", { className: "muted", text: "" });
    const pct = Math.max(0, Math.min(100, t.progress));
    return el("div", { className: "bar", title: `${pct.toFixed(0)} %` }, el("span", { style: `width:${pct}%` }));
  }

  function renderTasks(tasks) {
    $("tasks").tBodies[0].replaceChildren(
      ...tasks.map((t) =>
        el(
          "tr",
          { "data-uuid": t.uuid },
          el("td", {}, shortId(t.uuid)),
          el("td", { text: t.name || "" }),
          el("td", { className: "mono", text: t.node ? `${t.number ? t.number + ") " : ""}${t.node}` : "waiting" }),
          el("td", {}, statusPill(t)),
          el("td", {}, progress(t)),
          el("td", { className: "num", text: t.imagesCount ?? "" }),
          el("td", { className: "muted", text: when(t.dateCreated) }),
        ),
      ),
    );
    $("tasks-empty").hidden = tasks.length > 0;
  }

  function renderRoutes(routes) {
    $("routes").tBodies[0].replaceChildren(
      ...routes.map((r) =>
        el(
          "tr",
          { "data-uuid": r.uuid },
          el("td", {}, shortId(r.uuid)),
          el("td", { className: "mono", text: `${r.number ? r.number + ") " : ""}${r.name}` }),
          el("td", { className: "muted", title: when(r.accessed), text: ago(r.accessed) }),
        ),
      ),
    );
    $("routes-empty").hidden = routes.length > 0;
  }

  function renderInfo(info) {
    $("stat-nodes").textContent = info.nodes;
    $("stat-online").textContent = info.onlineNodes;
    $("stat-locked").textContent = info.lockedNodes;
    $("stat-routes").textContent = info.routes;
    $("stat-held").textContent = info.heldTasks;
    $("version").textContent = info.version;
  }

  // --- polling ----------------------------------------------------------------------------
  async function refresh() {
    clearTimeout(timer);
    try {
      const [info, nodes, tasks, routes] = await Promise.all([
        api("GET", "/r/info"),
        api("GET", "/r/node/list"),
        api("GET", "/r/tasks?limit=50"),
        api("GET", "/r/routes?limit=50"),
      ]);
      renderInfo(info);
      renderNodes(nodes);
      renderTasks(tasks);
      renderRoutes(routes);
      lastOk = Date.now();
      $("updated").textContent = `updated ${new Date(lastOk).toLocaleTimeString()}`;
      $("live-dot").classList.remove("stale");
    } catch (e) {
      $("updated").textContent = `cannot reach the cluster (${e.message})`;
      $("live-dot").classList.add("stale");
    }
    timer = setTimeout(refresh, POLL_MS);
  }

  $("add-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const button = $("add-button");
    const hostname = $("add-hostname").value.trim();
    const port = $("add-port").value.trim();
    const token = $("add-token").value;
    button.disabled = true;
    try {
      const answer = await api("POST", "/r/node/add", { hostname, port, token });
      say(`Added ${hostname}:${port} as node ${answer.number}.`, "success");
      event.target.reset();
    } catch (e) {
      say(`Cannot add ${hostname}:${port}: ${e.message}`, "error");
    } finally {
      button.disabled = false;
    }
    refresh();
  });

  const withPassword = document.body.dataset.auth === "password";
  $("no-password").hidden = withPassword;
  $("signout").hidden = !withPassword;
  refresh();
})();

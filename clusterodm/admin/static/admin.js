// ClusterODM admin page: polls the /r/ JSON API and renders nodes, tasks and charts.
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

  // today: the time only; before: the date and time
  function compact(ms) {
    if (!ms) return "";
    const d = new Date(ms);
    const today = d.toDateString() === new Date().toDateString();
    return today ? d.toLocaleTimeString() : d.toLocaleString([], { dateStyle: "short", timeStyle: "short" });
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

  function gb(bytes) {
    return `${(bytes / 1024 ** 3).toFixed(bytes >= 10 * 1024 ** 3 ? 0 : 1)} GB`;
  }

  function capacityText(c) {
    if (!c || Object.keys(c).length === 0) return "";
    const parts = [];
    parts.push(typeof c.maxImages === "number" ? `≤ ${c.maxImages} images` : "any images");
    if (typeof c.cpuCores === "number") parts.push(`${c.cpuCores} CPU`);
    if (typeof c.totalMemory === "number") {
      const free = typeof c.availableMemory === "number" ? `${gb(c.availableMemory).split(" ")[0]}/` : "";
      parts.push(`${free}${gb(c.totalMemory)} free`);
    }
    return parts.join(" · ");
  }

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
        const status = el("td", {}, el("span", {
          className: `pill status ${n.isOnline ? "online" : "offline"}`,
          text: n.isOnline ? "online" : "offline",
        }));
        if (!n.isOnline && n.offlineReason) {
          status.append(el("div", { className: "why", title: n.offlineReason, text: n.offlineReason }));
        }
        const cap = n.capacity || {};
        return el(
          "tr",
          { "data-name": n.name, "data-number": n.number },
          el("td", { className: "num", text: n.number }),
          el("td", { className: "mono", text: n.name }),
          status,
          el("td", {
            className: "num queue",
            title: "tasks queued or running on the node / parallel slots",
            text: `${n.getTaskQueueCount}/${n.getMaxParallelTasks}`,
          }),
          el("td", { className: "num tasks", text: n.tasks ?? "" }),
          el("td", {
            className: "capacity",
            title: "maxImages · CPU cores · memory available/total, from the node's /info",
            text: capacityText(cap),
          }),
          el("td", { className: "nowrap engine", text: `${n.getEngineInfo} · ${n.getVersion}` }),
          flags,
          el("td", { className: "muted", title: when(n.lastRefreshed), text: ago(n.lastRefreshed) }),
          el("td", { className: "actions" }, lock, removeButton(n)),
        );
      }),
    );
    $("nodes-empty").hidden = nodes.length > 0;
  }

  // --- tasks ------------------------------------------------------------------------------
  const FINAL = new Set(["completed", "failed", "canceled"]);
  const armedTasks = new Map(); // uuid -> time the Remove button was first clicked
  let lastTasks = [];

  function duration(s) {
    if (typeof s !== "number") return "";
    if (s < 60) return `${Math.round(s)} s`;
    if (s < 3600) return `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
    return `${Math.floor(s / 3600)} h ${Math.round((s % 3600) / 60)} min`;
  }

  function statusCell(t) {
    const name = t.statusName || "unknown";
    const cell = el("td", {}, el("span", { className: `pill ${name}`, title: t.error || t.stage || "", text: name }));
    if (t.error) cell.append(el("div", { className: "why", title: t.error, text: t.error }));
    return cell;
  }

  function progress(t) {
    if (typeof t.progress !== "number") return el("span", { className: "muted", text: "" });
    const pct = Math.max(0, Math.min(100, t.progress));
    return el(
      "div",
      { className: "progress" },
      el("div", { className: "bar", title: `${pct.toFixed(1)} %` }, el("span", { style: `width:${pct}%` })),
      el("span", { className: "pct", text: `${pct.toFixed(0)} %` }),
    );
  }

  async function taskAction(t, action) {
    try {
      const answer = await api("POST", `/r/task/${action}`, { uuid: t.uuid });
      if (answer && answer.success === true) {
        say(`Task ${t.uuid.slice(0, 8)}: ${action === "cancel" ? "cancelled" : "removed"}.`, "success");
      } else {
        say(`Task ${t.uuid.slice(0, 8)}: ${action} refused: ${answer && answer.error}`, "error");
      }
    } catch (e) {
      say(`Task ${t.uuid.slice(0, 8)}: ${e.message}`, "error");
    }
    refresh();
  }

  function taskButtons(t) {
    const cell = el("td", { className: "actions" });
    if (!FINAL.has(t.statusName)) {
      cell.append(el("button", { className: "cancel", text: "Cancel", title: "Stop the task", onclick: () => taskAction(t, "cancel") }));
    }
    const at = armedTasks.get(t.uuid);
    const isArmed = at && Date.now() - at < CONFIRM_MS;
    cell.append(el("button", {
      className: isArmed ? "danger armed remove" : "danger remove",
      text: isArmed ? "Confirm remove" : "Remove",
      title: "Remove the task and its results from its node",
      onclick: () => {
        const first = armedTasks.get(t.uuid);
        if (first && Date.now() - first < CONFIRM_MS) {
          armedTasks.delete(t.uuid);
          taskAction(t, "remove");
        } else {
          armedTasks.set(t.uuid, Date.now());
          renderTasks(lastTasks);
          setTimeout(() => renderTasks(lastTasks), CONFIRM_MS + 50);
        }
      },
    }));
    return cell;
  }

  function renderTasks(tasks) {
    lastTasks = tasks;
    $("tasks").tBodies[0].replaceChildren(
      ...tasks.map((t) =>
        el(
          "tr",
          { "data-uuid": t.uuid },
          el("td", {}, shortId(t.uuid)),
          el("td", { className: "name", text: t.name || "" }),
          el("td", { className: "user", text: t.user || "" }),
          el("td", { className: "mono", text: t.node ? `${t.number ? t.number + ") " : ""}${t.node}` : "not yet" }),
          statusCell(t),
          el("td", {}, progress(t)),
          el("td", { className: "num t-place", text: t.place ? `${t.place} of ${t.queueLength}` : "" }),
          el("td", { className: "num t-queued", text: duration(t.queuedS) }),
          el("td", { className: "num t-running", text: duration(t.runningS) }),
          el("td", { className: "num", text: t.imagesCount ?? "" }),
          el("td", { className: "muted nowrap", title: when(t.dateCreated), text: compact(t.dateCreated) }),
          taskButtons(t),
        ),
      ),
    );
    $("tasks-empty").hidden = tasks.length > 0;
  }

  // --- charts: small SVGs drawn here, no library ------------------------------------------
  const SVG = "http://www.w3.org/2000/svg";
  const W = 300;
  const H = 110;
  const PAD = { l: 40, r: 8, t: 8, b: 18 };

  function svg(tag, attrs) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    return node;
  }

  function short(v) {
    if (v >= 1e9) return `${(v / 1e9).toFixed(1)}G`;
    if (v >= 1e6) return `${(v / 1e6).toFixed(1)}M`;
    if (v >= 1e3) return `${(v / 1e3).toFixed(1)}k`;
    return `${Math.round(v * 10) / 10}`;
  }

  let withSeconds = false; // short spans: label the axis to the second
  function clock(t) {
    const opts = { hour: "2-digit", minute: "2-digit" };
    if (withSeconds) opts.second = "2-digit";
    return new Date(t * 1000).toLocaleTimeString([], opts);
  }

  // lines: [{name, cls, points: [[t, v], ...]}]
  function drawChart(id, lines) {
    const fig = $(id);
    const all = lines.flatMap((l) => l.points);
    const box = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", class: "plot" });
    const t0 = all.length ? Math.min(...all.map((p) => p[0])) : 0;
    const t1 = all.length ? Math.max(...all.map((p) => p[0])) : 1;
    const top = Math.max(1, ...all.map((p) => p[1]));
    const x = (t) => PAD.l + ((t - t0) / Math.max(1e-9, t1 - t0)) * (W - PAD.l - PAD.r);
    const y = (v) => H - PAD.b - (v / top) * (H - PAD.t - PAD.b);
    for (const v of [0, top / 2, top]) {
      box.append(svg("line", { x1: PAD.l, x2: W - PAD.r, y1: y(v), y2: y(v), class: "gridline" }));
      const label = svg("text", { x: PAD.l - 4, y: y(v) + 3, class: "axis", "text-anchor": "end" });
      label.textContent = short(v);
      box.append(label);
    }
    if (all.length) {
      for (const [t, anchor] of [[t0, "start"], [t1, "end"]]) {
        const label = svg("text", { x: x(t), y: H - 4, class: "axis", "text-anchor": anchor });
        label.textContent = clock(t);
        box.append(label);
      }
    }
    for (const line of lines) {
      if (!line.points.length) continue;
      const d = line.points.map((p, i) => `${i ? "L" : "M"}${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`).join("");
      if (lines.length === 1) {
        const first = line.points[0];
        const last = line.points[line.points.length - 1];
        box.append(svg("path", {
          d: `${d}L${x(last[0]).toFixed(1)},${y(0)}L${x(first[0]).toFixed(1)},${y(0)}Z`,
          class: `area ${line.cls}`,
        }));
      }
      box.append(svg("path", { d, class: `line ${line.cls}`, "data-name": line.name }));
    }
    const legend = el("div", { className: "legend" });
    for (const line of lines) {
      const last = line.points.length ? line.points[line.points.length - 1][1] : 0;
      legend.append(el("span", { className: `key ${line.cls}`, "data-name": line.name, text: `${line.name} ${line.fmt ? line.fmt(last) : short(last)}` }));
    }
    fig.dataset.points = String(all.length);
    fig.replaceChildren(fig.querySelector("figcaption") || el("figcaption"), box, legend);
  }

  function rate(bytes) {
    return `${short(bytes)}B/s`;
  }

  function renderSeries(series) {
    const pts = series.points || [];
    const step = series.stepS || 60;
    const now = series.now || null;
    const queue = pts.map((p) => [p.t, p.queue]);
    const running = pts.map((p) => [p.t, p.running]);
    if (now) {
      queue.push([now.t, now.queue]);
      running.push([now.t, now.running]);
    }
    // finished over the trailing hour at each sample
    withSeconds = pts.length > 1 && pts[pts.length - 1].t - pts[0].t < 1800;
    const finished = pts.map((p, i) => {
      let sum = 0;
      for (let j = i; j >= 0 && pts[j].t > p.t - 3600; j--) sum += pts[j].finished;
      return [p.t, sum];
    });
    drawChart("chart-queue", [{ name: "waiting", cls: "s1", points: queue }]);
    drawChart("chart-running", [{ name: "running", cls: "s2", points: running }]);
    drawChart("chart-finished", [{ name: "last hour", cls: "s3", points: finished }]);
    drawChart("chart-bytes", [
      { name: "in", cls: "s1", fmt: rate, points: pts.map((p) => [p.t, p.bytesIn / step]) },
      { name: "out", cls: "s4", fmt: rate, points: pts.map((p) => [p.t, p.bytesOut / step]) },
    ]);
    const minutes = Math.round(step / 60);
    $("charts-span").textContent = pts.length
      ? `${pts.length} samples, one every ${minutes >= 1 ? minutes + " min" : step + " s"}, since ${clock(pts[0].t)}`
      : "no samples yet: the first comes a minute after start";
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
      const [info, nodes, tasks, series] = await Promise.all([
        api("GET", "/r/info"),
        api("GET", "/r/node/list"),
        api("GET", "/r/tasks?limit=50"),
        api("GET", "/r/series"),
      ]);
      renderInfo(info);
      renderNodes(nodes);
      renderTasks(tasks);
      renderSeries(series);
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

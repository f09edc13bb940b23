// The dashboard's own script: it refreshes the page the daemon rendered, in place, from
// /api/dashboard every second, and the plots from /api/plots when a new sample exists (and,
// just after the daemon started serving plots, while it is still reading the last hour).
// Values are formatted as tacore/observability/dashboard.py does (fmt_* there, fmt.* here).
"use strict";

(function () {
  const REFRESH_MS = 1000;
  let plotsVersion = document.getElementById("updated").dataset.version;
  let failingSince = null;

  const fmt = {
    duration(s) {
      if (s === null || s === undefined) return "-";
      if (s < 60) return s.toFixed(1) + "s";
      let minutes = Math.floor(s / 60);
      const secs = Math.floor(s) % 60;
      if (minutes < 60) return minutes + "m" + pad(secs);
      const hours = Math.floor(minutes / 60);
      minutes %= 60;
      return hours < 48 ? hours + "h" + pad(minutes) : Math.floor(hours / 24) + "d" + pad(hours % 24);
    },
    bytes(v) { return v === null ? "-" : (v / 1048576).toFixed(1) + " MiB"; },
    ms(s) { return s === null || s === undefined ? "-" : (s * 1000).toFixed(1) + " ms"; },
    number(v) { return v === null || v === undefined ? "-" : v.toFixed(1); },
    exit(info, now) {
      if (!info) return "-";
      const how = info.signal ? "signal " + info.signal : "code " + info.code;
      const by = info.by ? ", by " + info.by : "";
      return `${info.reason} (${how}${by}) ${fmt.duration(Math.max(0, now - info.at))} ago`;
    },
    statuses(byStatus) {
      return Object.keys(byStatus).sort().map((k) => k + ":" + byStatus[k]).join(" ") || "-";
    },
    clock(ts) { return new Date(ts * 1000).toTimeString().slice(0, 8); },
  };

  function pad(n) { return String(n).padStart(2, "0"); }

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    for (const child of children) node.append(child);
    return node;
  }

  function row(attrs, cells) {
    return el("tr", attrs, ...cells.map((c, i) => el("td", { class: "c" + i }, String(c))));
  }

  function replaceBody(tableId, rows) {
    document.querySelector(`#${tableId} tbody`).replaceChildren(...rows);
  }

  function daemonLine(view) {
    const d = view.daemon;
    return `pid ${d.pid}, up ${fmt.duration(d.uptime)}, version ${d.version}, config ${d.config}, ` +
      `CPU ${fmt.number(d.cpu_percent)}%, RSS ${fmt.bytes(d.rss_bytes)}` +
      (d.stopping ? " — STOPPING" : "");
  }

  function verdict(view) {
    if (view.healthy) return "healthy" + view.warnings.map((w) => "; " + w).join("");
    return "unhealthy: " + view.problems.concat(view.warnings).join("; ");
  }

  function serviceRow(s) {
    return row({ "data-service": s.name, class: s.healthy ? "ok" : "failing" }, [
      s.name,
      `${s.ready}/${s.workers} (min ${s.min_ready})` + (s.external ? ` (+${s.external} external)` : ""),
      s.healthy ? "ok" : s.problem, s.queue, fmt.number(s.per_second), fmt.ms(s.p50),
      fmt.ms(s.p99), fmt.statuses(s.by_status), s.restarts]);
  }

  function workerState(w) {
    let text = w.state;
    if (w.state === "FATAL") text += ": " + w.fatal_reason;
    else if (w.starting_late) text += ` for ${fmt.duration(w.state_for)} of ${fmt.duration(w.start_timeout)}`;
    else if (w.state === "BACKOFF" && w.backoff_remaining !== null) {
      text += ", retry in " + fmt.duration(w.backoff_remaining);
    }
    if (w.draining) text += ` (draining: ${w.draining})`;
    return text + (w.external ? " (external)" : "");
  }

  function workerKey(w) {
    return `${w.service}/${w.slot !== null ? w.slot : w.identity}` + (w.replacing ? "/new" : "");
  }

  function workerRow(w, now) {
    const attrs = { "data-worker": workerKey(w), class: `state-${w.state}` + (w.starting_late ? " late" : "") };
    return row(attrs, [
      w.service, w.slot === null ? "-" : w.slot, workerState(w), w.pid || "-",
      fmt.duration(w.uptime), fmt.duration(w.last_seen), w.requests, fmt.number(w.cpu_percent),
      fmt.bytes(w.rss_bytes), w.restarts, fmt.exit(w.last_exit, now)]);
  }

  function eventKey(e) { return e.id !== null ? String(e.id) : `${e.ts}:${e.event}:${e.pid}`; }

  function eventItem(e) {
    const where = [e.service, e.slot].filter((x) => x !== null).join("/");
    const item = el("li", { "data-event": eventKey(e), class: "level-" + e.level },
      el("span", { class: "ts" }, fmt.clock(e.ts)), " ",
      el("span", { class: "name" }, e.event), " ",
      el("span", { class: "where" }, where + (e.pid ? " pid " + e.pid : "")), " ",
      el("span", { class: "context" }, e.context));
    if (e.stack || e.output) {
      const text = (e.stack || "") + (e.output ? "\n--- output ---\n" + e.output.join("\n") : "");
      const summary = e.blocked_at ? "blocked at " + e.blocked_at : "details";
      item.append(el("details", {}, el("summary", {}, summary), el("pre", {}, text)));
    }
    return item;
  }

  function renderEvents(events) {
    const list = document.getElementById("events");
    const keys = events.map(eventKey);
    const shown = Array.from(list.children, (li) => li.dataset.event);
    if (keys.join("\n") === shown.join("\n")) return; // nothing new: keep what is open
    const opened = list.querySelectorAll("details[open]");
    const open = new Set(Array.from(opened, (d) => d.parentElement.dataset.event));
    list.replaceChildren(...events.map(eventItem));
    for (const li of list.children) {
      if (open.has(li.dataset.event)) li.querySelector("details").open = true;
    }
  }

  function render(view) {
    document.getElementById("daemon").textContent = daemonLine(view);
    const verdictNode = document.getElementById("verdict");
    verdictNode.textContent = verdict(view);
    verdictNode.className = view.healthy ? "ok" : "bad";
    replaceBody("services", view.services.map(serviceRow));
    replaceBody("workers", view.workers.map((w) => workerRow(w, view.now)));
    renderEvents(view.events);
    const updated = document.getElementById("updated");
    updated.textContent = "as of " + fmt.clock(view.now);
    updated.className = "";
  }

  async function refreshPlots(version) {
    const response = await fetch("/api/plots", { cache: "no-store" });
    if (!response.ok) throw new Error("/api/plots: " + response.status);
    // The daemon escapes every name it puts in the SVG; this is its own markup.
    document.getElementById("plots").innerHTML = await response.text();
    plotsVersion = String(version);
  }

  async function refresh() {
    try {
      const response = await fetch("/api/dashboard", { cache: "no-store" });
      if (!response.ok) throw new Error("/api/dashboard: " + response.status);
      const view = await response.json();
      render(view);
      if (String(view.plots_version) !== plotsVersion || !view.plots_complete) {
        await refreshPlots(view.plots_version);
      }
      failingSince = null;
    } catch (error) {
      failingSince = failingSince || Date.now() / 1000;
      const updated = document.getElementById("updated");
      updated.textContent = `not answering since ${fmt.clock(failingSince)} (${error.message})`;
      updated.className = "stale";
    } finally {
      setTimeout(refresh, REFRESH_MS);
    }
  }

  setTimeout(refresh, REFRESH_MS);
})();

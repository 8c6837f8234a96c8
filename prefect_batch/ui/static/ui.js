// prefect-batch web page: confirmations for actions, and polling of the page's own JSON.
// Values from the service are written with textContent/setAttribute only, never as HTML.
"use strict";

function every(ms, url, apply, until) {
  let stopped = false;
  async function tick() {
    if (stopped || document.hidden) { if (!stopped) setTimeout(tick, ms); return; }
    try {
      const answer = await fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } });
      if (answer.status === 401) { stopped = true; return; }
      if (answer.ok) {
        const data = await answer.json();
        apply(data);
        if (until && until(data)) { stopped = true; return; }
      }
    } catch (err) { /* the server may be restarting: try again next time */ }
    setTimeout(tick, ms);
  }
  setTimeout(tick, ms);
}

function text(root, selector, value) {
  const el = root.querySelector(selector);
  if (el) el.textContent = value === null || value === undefined ? "" : String(value);
}

function heatmap(el) {
  every(3000, el.dataset.tiles, function (data) {
    const byId = new Map();
    el.querySelectorAll(".tile").forEach(function (t) { byId.set(t.dataset.node, t); });
    const base = el.dataset.tiles.replace("/api/pools/", "/pools/").replace(/\/tiles$/, "/nodes/");
    const seen = new Set();
    data.tiles.forEach(function (tile) {
      let t = byId.get(tile.id);
      if (!t) {
        t = document.createElement("a");
        t.dataset.node = tile.id;
        t.href = base + encodeURIComponent(tile.id);
        el.appendChild(t);
      }
      seen.add(tile.id);
      t.className = "tile s-" + tile.state;
      t.dataset.state = tile.state;
      t.title = tile.id + ": " + tile.state + ", " + tile.running + " running, " + tile.slots + "/" + tile.slotsPerNode + " slots";
      t.textContent = "";
      if (tile.running) { const s = document.createElement("span"); s.textContent = String(tile.running); t.appendChild(s); }
    });
    byId.forEach(function (t, id) { if (!seen.has(id)) t.remove(); });
    const section = el.closest("section, main");
    if (section) {
      text(section, "[data-alloc]", data.allocationState);
      text(section, "[data-current]", data.currentDedicatedNodes);
      text(section, "[data-target]", data.targetDedicatedNodes);
      text(section, "[data-running]", data.running);
      text(section, "[data-slots]", data.slotsUsed);
      text(section, "[data-slots-total]", data.slotsTotal);
    }
  });
}

function progress(el) {
  every(3000, el.dataset.progress, function (data) {
    const p = data.percent;
    let x = 0;
    ["succeeded", "failed", "running", "active"].forEach(function (name) {
      const rect = el.querySelector(".b-" + name);
      if (rect) { rect.setAttribute("x", String(x)); rect.setAttribute("width", String(p[name])); }
      x += p[name];
    });
    ["active", "running", "succeeded", "failed"].forEach(function (name) {
      text(el, '[data-count="' + name + '"]', data.counts[name]);
    });
    text(el, '[data-count="total"]', data.total);
    text(document, "#job-state", data.state);
  }, function (data) { return data.state === "completed"; });
}

function output(el) {
  if (el.dataset.state === "completed") return;
  every(2000, el.dataset.output, function (data) {
    text(el, '[data-stream="stdout"]', data.stdout);
    text(el, '[data-stream="stderr"]', data.stderr);
    text(document, "#task-state", data.state);
    text(document, "#exit-code", data.row.exitCode === null ? "–" : data.row.exitCode);
    text(document, "#task-result", data.row.result || "–");
    text(document, "#task-duration", data.row.duration || "–");
  }, function (data) { return data.state === "completed"; });
}

document.addEventListener("DOMContentLoaded", function () {
  document.querySelectorAll("form[data-confirm]").forEach(function (form) {
    form.addEventListener("submit", function (event) {
      if (!window.confirm(form.dataset.confirm)) event.preventDefault();
    });
  });
  document.querySelectorAll("[data-tiles]").forEach(heatmap);
  document.querySelectorAll("[data-progress]").forEach(progress);
  document.querySelectorAll("[data-output]").forEach(output);
});

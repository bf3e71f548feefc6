// hyperv-ci dashboard: auto-refresh, the live build page, confirm prompts.
// Server text is only ever set with textContent, or as HTML the server
// rendered with autoescaping (the refreshed fragments).
"use strict";

function refreshFragment(el) {
  const seconds = Number(el.dataset.interval || 5);
  // Swapping the table while a button is held would eat the click (its
  // mouseup lands on a new element): hold the swap until the press ends.
  let pressed = false;
  el.addEventListener("pointerdown", () => { pressed = true; });
  document.addEventListener("pointerup", () => setTimeout(() => { pressed = false; }, 0));
  document.addEventListener("pointercancel", () => { pressed = false; });
  const tick = async () => {
    try {
      const response = await fetch(el.dataset.refresh, { headers: { Accept: "text/html" } });
      if (response.ok) {
        const html = await response.text();
        while (pressed) await new Promise((resolve) => setTimeout(resolve, 50));
        if (html !== el.innerHTML) el.innerHTML = html;
      }
    } catch (err) {
      // The dashboard restarting is not fatal: try again on the next tick.
    }
    setTimeout(tick, seconds * 1000);
  };
  setTimeout(tick, seconds * 1000);
}

function formatDuration(seconds) {
  if (seconds === null || seconds === undefined) return "";
  const total = Math.floor(seconds);
  const h = Math.floor(total / 3600), m = Math.floor((total % 3600) / 60), s = total % 60;
  const pad = (n) => String(n).padStart(2, "0");
  if (h) return `${h}h ${pad(m)}m ${pad(s)}s`;
  if (m) return `${m}m ${pad(s)}s`;
  return `${s}s`;
}

// "3 min ago" as dashboard/polish.py's `ago` writes it, kept current in the page.
function formatAgo(iso, now) {
  let seconds = (now - Date.parse(iso)) / 1000;
  const future = seconds < 0;
  seconds = Math.abs(seconds);
  if (seconds < 45) return "just now";
  let text = `${Math.max(1, Math.round(seconds / 60))} min`;
  for (const [size, unit] of [[86400 * 365, "year"], [86400 * 30, "month"], [86400, "day"], [3600, "hour"]]) {
    if (seconds >= size * 0.95) {
      const count = Math.round(seconds / size);
      text = `${count} ${unit}${count !== 1 ? "s" : ""}`;
      break;
    }
  }
  return future ? `in ${text}` : `${text} ago`;
}

function refreshTimes(root) {
  const now = Date.now();
  root.querySelectorAll("time[datetime]").forEach((el) => {
    const text = formatAgo(el.getAttribute("datetime"), now);
    if (el.textContent !== text) el.textContent = text;
  });
}

function setText(el, text) {
  if (el && el.textContent !== text) el.textContent = text;
}

// The tempest step's live counts (the step's "progress" in /api/builds/<id>).
function setProgress(box, progress) {
  if (!box) return;
  if (!progress) { box.hidden = true; return; }
  setText(box.querySelector(".progress-done"), String(progress.done));
  setText(box.querySelector(".progress-passed"), String(progress.passed));
  setText(box.querySelector(".progress-failed"), String(progress.failed));
  setText(box.querySelector(".progress-skipped"), String(progress.done - progress.passed - progress.failed));
  const current = box.querySelector(".progress-current-box");
  current.hidden = !progress.current;
  setText(box.querySelector(".progress-current"), progress.current || "");
  box.hidden = false;
}

function setBadge(cell, state) {
  const badge = cell.querySelector(".state");
  if (!badge || badge.textContent === state) return;
  badge.textContent = state;
  badge.className = "state state-" + state;
}

function liveBuild(root) {
  const every = Number(root.dataset.poll || 2) * 1000;
  const poll = async () => {
    let build;
    try {
      const response = await fetch(root.dataset.api, { headers: { Accept: "application/json" } });
      if (!response.ok) throw new Error(String(response.status));
      build = await response.json();
    } catch (err) {
      setTimeout(poll, 2 * every);
      return;
    }
    // A new step or a finished build changes the page's shape: reload it whole.
    if (build.state !== root.dataset.state || build.steps.length !== Number(root.dataset.steps)) {
      window.location.reload();
      return;
    }
    setText(document.getElementById("build-duration"), formatDuration(build.duration));
    setText(document.getElementById("build-elapsed"), formatDuration(build.duration));
    const eta = root.querySelector(".verdict .eta");
    if (eta && build.eta) setText(eta, build.eta.text);
    for (const step of build.steps) {
      const body = root.querySelector(`tbody.step[data-step-id="${step.id}"]`);
      if (!body) continue;
      setBadge(body.querySelector(".step-state"), step.state);
      body.querySelector(".step-duration").textContent = formatDuration(step.duration);
      body.querySelector(".step-exit").textContent = step.exit_code === null ? "" : String(step.exit_code);
      setProgress(body.querySelector(`p.progress[data-progress-for="${step.id}"]`), step.progress);
      const tail = body.querySelector("pre.tail");
      if (tail.textContent !== step.output_tail) {
        const atBottom = tail.scrollTop + tail.clientHeight >= tail.scrollHeight - 4;
        tail.textContent = step.output_tail;
        if (atBottom) tail.scrollTop = tail.scrollHeight;
      }
    }
    setTimeout(poll, every);
  };
  setTimeout(poll, every);
}

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("[data-refresh]").forEach(refreshFragment);
  setInterval(() => refreshTimes(document), 30 * 1000);
  const build = document.getElementById("build");
  if (build && build.dataset.live === "1") liveBuild(build);
  document.addEventListener("submit", (event) => {
    const message = event.target.dataset.confirm;
    if (message && !window.confirm(message)) event.preventDefault();
  });
});

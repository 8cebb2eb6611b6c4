// The dashboard: reads the JSON routes, follows the event stream, redraws what changed.

import { api, ensureKey, followEvents, MONITORING, onKeyNeeded, TASKS } from "./api.js";
import { lineChart } from "./charts.js";
import { badge, bar, clock, duration, fill, h, percent, relative, setBar } from "./dom.js";
import { renderTranslations } from "./translations.js";

const $ = (selector, root = document) => root.querySelector(selector);
const TERMINAL = new Set(["completed", "failed", "cancelled"]);
const ALL = ["health", "queue", "tasks", "dead", "schedules", "breakers", "resources", "translations", "detail"];

const state = {
  live: new Map(), // task id -> {progress, message, status}: fresher than storage
  running: [], // the running tasks as last listed
  selected: null, // task id shown in the detail view
  queue: null,
};

// --- refresh: parts marked dirty are reloaded together, at most one reload at a time -----

const dirty = new Set();
let timer = null;
let busy = false;

function schedule(...parts) {
  for (const part of parts) dirty.add(part);
  timer ??= setTimeout(flush, 60);
}

async function flush() {
  timer = null;
  if (busy) {
    timer = setTimeout(flush, 60);
    return;
  }
  busy = true;
  try {
    while (dirty.size) {
      const parts = new Set(dirty);
      dirty.clear();
      await Promise.all([...parts].map((part) => load(part)));
    }
    $("#updated").textContent = `updated ${clock(new Date().toISOString())}`;
    document.body.dataset.ready = "true";
  } finally {
    busy = false;
  }
}

const loaders = {
  health: loadHealth,
  queue: loadQueue,
  tasks: loadTasks,
  dead: loadDeadLetters,
  schedules: loadSchedules,
  breakers: loadBreakers,
  resources: loadResources,
  translations: () => renderTranslations($("#translations")),
  detail: loadDetail,
};

async function load(part) {
  const section = { tasks: "#running", dead: "#dead-letters" }[part] ?? `#${part}`;
  const error = $(`${section} .error`);
  try {
    await loaders[part]();
    if (error) error.hidden = true;
  } catch (problem) {
    if (error) {
      error.textContent = String(problem.message ?? problem);
      error.hidden = false;
    }
  }
}

// --- health and alerts -------------------------------------------------------------------

function stats(container, entries) {
  fill(
    container,
    entries.map(([label, value, attrs = {}]) => h("div", attrs, h("dt", {}, label), h("dd", {}, value))),
  );
}

async function loadHealth() {
  const health = await api(`${MONITORING}/health`);
  const header = $("#health-status");
  header.dataset.status = health.status;
  header.textContent = health.status;
  stats($("#health-stats"), [
    ["Status", badge(health.status), { id: "health-value" }],
    ["CPU", percent(health.cpu_usage)],
    ["Memory", percent(health.memory_usage)],
    ["Disk", percent(health.disk_usage)],
    ["Process", `${Math.round(health.process_memory_mb)} MB`],
    ["Error rate", percent(health.error_rate * 100, 1)],
    ["Storage", health.storage_ok ? "ok" : "failing"],
  ]);
  const alerts = health.alerts.map((alert) =>
    h(
      "li",
      { "data-level": alert.level, "data-name": alert.name },
      badge(alert.level),
      " ",
      alert.message,
      h("span", { class: "muted" }, ` · since ${clock(alert.since)}`),
    ),
  );
  fill($("#alerts"), alerts.length ? alerts : [h("li", { class: "none" }, "No alerts.")]);
}

// --- queue ---------------------------------------------------------------------------------

async function loadQueue() {
  const queue = await api(`${TASKS}/queue/status`);
  state.queue = queue;
  const line = $("#queue-state");
  line.dataset.paused = String(queue.paused);
  line.textContent = queue.paused
    ? `Paused${queue.pause_reason ? `: ${queue.pause_reason}` : ""}`
    : queue.workers_enabled
      ? "Processing"
      : "Accepting tasks (no workers in this process)";
  stats($("#queue-stats"), [
    ["Pending", queue.pending],
    ["Retrying", queue.retrying],
    ["Running", queue.running],
    ["Capacity", `${queue.queue_size}/${queue.max_queue_size}`],
  ]);
  $("#pause").disabled = queue.paused;
  $("#resume").disabled = !queue.paused;
  $("#clear").disabled = queue.queue_size === 0;
}

async function act(button, section, call, ...parts) {
  const error = $(`${section} .error`);
  button.disabled = true;
  try {
    await call();
    if (error) error.hidden = true;
  } catch (problem) {
    if (error) {
      error.textContent = String(problem.message ?? problem);
      error.hidden = false;
    }
  } finally {
    button.disabled = false;
    schedule(...parts);
  }
}

// --- task lists ----------------------------------------------------------------------------

function liveOf(task) {
  const live = state.live.get(task.task_id);
  return {
    progress: live?.progress ?? task.progress,
    message: live?.message ?? task.message,
  };
}

function cancelButton(task) {
  return h(
    "button",
    {
      type: "button",
      class: "small cancel",
      title: "Cancel this task",
      onclick: (event) => {
        event.stopPropagation();
        act(event.currentTarget, "#queue", () => api(`${TASKS}/cancel/${encodeURIComponent(task.task_id)}`, { method: "POST" }), "tasks", "queue");
      },
    },
    "Cancel",
  );
}

/** A task's list item: its name and type, ``right`` beside them, ``below`` under them. */
function taskItem(task, right, ...below) {
  return h(
    "li",
    { "data-task-id": task.task_id, "data-status": task.status, ...opens(task.task_id) },
    h(
      "div",
      { class: "task-line" },
      h("span", { class: "name" }, task.name),
      h("span", { class: "type" }, task.task_type),
      h("span", { class: "right" }, ...right, cancelButton(task)),
    ),
    ...below,
  );
}

function runningItem(task) {
  const { progress, message } = liveOf(task);
  return taskItem(
    task,
    [
      task.attempts > 1 ? h("span", { class: "muted" }, `attempt ${task.attempts}`) : null,
      h("span", { class: "muted elapsed", "data-since": task.started_at }, duration(elapsed(task.started_at))),
      h("span", { class: "pct" }, `${Math.round(progress * 100)}%`),
    ],
    bar(progress, task.status),
    h("div", { class: "message" }, message ?? ""),
  );
}

function queuedItem(task) {
  const waiting = task.run_at && Date.parse(task.run_at) > Date.now();
  return taskItem(
    task,
    [
      waiting ? h("span", { class: "muted", "data-relative": task.run_at }, relative(task.run_at)) : null,
      h("span", { class: "badge priority", "data-priority": task.priority }, task.priority),
      badge(task.status),
    ],
    task.status === "retrying" && task.error
      ? h("div", { class: "message" }, `attempt ${task.attempts} failed: `, h("span", { class: "category" }, task.error.category ?? ""), ` ${task.error.message ?? ""}`)
      : null,
  );
}

function errorCell(task) {
  if (!task.error) return h("td", { class: "err" });
  return h(
    "td",
    { class: "err", title: task.error.message ?? "" },
    h("span", { class: "category" }, task.error.category ?? "unknown"),
    h("div", { class: "sub" }, `${task.error.type ?? ""}: ${task.error.message ?? ""}`),
  );
}

function recentRow(task) {
  return h(
    "tr",
    { "data-task-id": task.task_id, "data-status": task.status, ...opens(task.task_id) },
    h("td", {}, task.name, h("div", { class: "sub" }, task.task_type)),
    h("td", {}, badge(task.status)),
    h("td", { class: "num duration" }, duration(task.duration_seconds)),
    h("td", { class: "num" }, task.attempts),
    errorCell(task),
    h("td", { class: "num muted", "data-relative": task.finished_at }, relative(task.finished_at)),
  );
}

function list(selector, tasks, item, total) {
  const section = $(selector);
  fill(section.querySelector("tbody, ul"), tasks.map(item));
  section.querySelector(".empty").hidden = tasks.length > 0;
  const count = section.querySelector(".count");
  if (count) count.textContent = total === undefined ? `(${tasks.length})` : `(${total})`;
}

async function loadTasks() {
  const [running, queued, recent] = await Promise.all([
    api(`${TASKS}/queue/running?limit=50`),
    api(`${TASKS}/queue/tasks?limit=50`),
    api(`${TASKS}/completed?limit=20`),
  ]);
  state.running = running.tasks;
  for (const [id, live] of state.live) {
    if (TERMINAL.has(live.status) && id !== state.selected) state.live.delete(id);
  }
  list("#running", running.tasks, runningItem, running.tasks.length === 50 ? state.queue?.running : undefined);
  // A list holds at most 50: beyond that, say how many there are in all.
  const waiting = queued.tasks.length === 50 ? state.queue?.queue_size : undefined;
  list("#queued", queued.tasks, queuedItem, waiting);
  list("#recent", recent.tasks, recentRow);
}

// --- dead letter queue ---------------------------------------------------------------------

function deadRow(task) {
  return h(
    "tr",
    { "data-task-id": task.task_id, ...opens(task.task_id) },
    h("td", {}, task.name, h("div", { class: "sub" }, task.task_type)),
    h("td", {}, h("span", { class: "category" }, task.error?.category ?? "unknown")),
    h("td", { class: "err", title: task.error?.message ?? "" }, `${task.error?.type ?? ""}: ${task.error?.message ?? ""}`),
    h("td", { class: "num" }, task.attempts),
    h("td", { class: "num muted", "data-relative": task.finished_at }, relative(task.finished_at)),
    h(
      "td",
      {},
      h(
        "button",
        {
          type: "button",
          class: "small requeue",
          onclick: (event) => {
            event.stopPropagation();
            act(event.currentTarget, "#dead-letters", () => api(`${TASKS}/dead-letters/${encodeURIComponent(task.task_id)}/requeue`, { method: "POST" }), "dead", "tasks", "queue");
          },
        },
        "Requeue",
      ),
    ),
  );
}

async function loadDeadLetters() {
  const dead = await api(`${TASKS}/dead-letters?limit=50`);
  list("#dead-letters", dead.tasks, deadRow);
  $("#requeue-all").disabled = dead.tasks.length === 0;
}

// --- schedules -----------------------------------------------------------------------------

function scheduleButton(schedule) {
  const action = schedule.enabled ? "pause" : "resume";
  return h(
    "button",
    {
      type: "button",
      class: `small ${action}-schedule`,
      onclick: (event) =>
        act(event.currentTarget, "#schedules", () => api(`${TASKS}/schedules/${encodeURIComponent(schedule.name)}/${action}`, { method: "POST" }), "schedules"),
    },
    schedule.enabled ? "Pause" : "Resume",
  );
}

function scheduleRow(schedule) {
  const when = schedule.cron !== null ? `cron ${schedule.cron}` : `every ${duration(schedule.every)}`;
  return h(
    "tr",
    { "data-schedule": schedule.name, "data-enabled": String(schedule.enabled) },
    h("td", {}, schedule.name, h("div", { class: "sub" }, schedule.task_type)),
    h("td", { class: "when" }, when),
    h("td", { class: "timezone" }, schedule.timezone),
    h("td", { class: "state" }, badge(schedule.enabled ? "enabled" : "paused")),
    schedule.next_run_at
      ? h("td", { class: "num next-run", title: schedule.next_run_at, "data-relative": schedule.next_run_at }, relative(schedule.next_run_at))
      : h("td", { class: "num next-run muted" }, "paused"),
    h("td", { class: "num last-tick muted", title: schedule.last_tick_at ?? "", "data-relative": schedule.last_tick_at ?? undefined }, relative(schedule.last_tick_at)),
    h("td", {}, scheduleButton(schedule)),
  );
}

async function loadSchedules() {
  const { schedules } = await api(`${TASKS}/schedules`);
  list("#schedules", schedules, scheduleRow);
}

// --- breakers and resources ----------------------------------------------------------------

async function loadBreakers() {
  const { breakers } = await api(`${MONITORING}/breakers`);
  const items = breakers.map((breaker) =>
    h(
      "li",
      { "data-breaker": breaker.name, "data-state": breaker.state },
      h("span", { class: "name" }, breaker.name),
      badge(breaker.state),
      h(
        "span",
        { class: "sub" },
        `${breaker.consecutive_failures}/${breaker.failure_threshold} failures`,
        breaker.state === "open" && breaker.retry_at ? h("span", { "data-relative": breaker.retry_at }, ` · trial ${relative(breaker.retry_at)}`) : null,
      ),
    ),
  );
  const section = $("#breakers");
  fill(section.querySelector("ul"), items);
  section.querySelector(".empty").hidden = items.length > 0;
}

const CHARTS = [
  ["CPU", "cpu_percent", "#2f6fde"],
  ["Memory", "memory_percent", "#8e44ad"],
  ["Disk", "disk_percent", "#1f9d55"],
];

async function loadResources() {
  const since = Date.now() / 1000 - 3600;
  const { samples } = await api(`${MONITORING}/metrics/performance?limit=240&since=${since}`);
  const rows = CHARTS.map(([label, field, color]) => {
    const points = samples.map((sample) => ({ t: Date.parse(sample.timestamp), v: sample[field] }));
    const last = points.length ? points[points.length - 1].v : null;
    return h(
      "div",
      { class: "chart", "data-metric": field },
      h("span", { class: "label" }, label),
      lineChart(points, { color, label: `${label} over the last hour` }),
      h("span", { class: "value" }, percent(last)),
    );
  });
  const note = h("div", { class: "muted" }, samples.length ? `${samples.length} samples, last hour` : "No samples yet.");
  fill($("#charts"), [...rows, note]);
}

// --- task detail ---------------------------------------------------------------------------

/** Attributes of a row that opens a task's detail: by click, or Enter when focused. */
function opens(taskId) {
  return {
    tabindex: 0,
    onclick: () => select(taskId),
    onkeydown: (event) => {
      if (event.key === "Enter" && event.target === event.currentTarget) select(taskId);
    },
  };
}

function select(taskId) {
  location.hash = `task=${encodeURIComponent(taskId)}`;
}

function readHash() {
  const match = /^#task=(.+)$/.exec(location.hash);
  state.selected = match ? decodeURIComponent(match[1]) : null;
  $("#detail").hidden = state.selected === null;
  if (state.selected !== null) {
    $("#detail-title").textContent = state.selected;
    schedule("detail");
    $("#detail").scrollIntoView({ block: "nearest" });
  }
}

function elapsed(since) {
  return since ? Math.max(0, (Date.now() - Date.parse(since)) / 1000) : null;
}

async function loadDetail() {
  const id = state.selected;
  if (id === null) return;
  const path = encodeURIComponent(id);
  const [task, history] = await Promise.all([
    api(`${TASKS}/status/${path}`),
    api(`${MONITORING}/tasks/${path}/history?limit=200`),
  ]);
  if (state.selected !== id) return;
  const live = state.live.get(id);
  const progress = TERMINAL.has(task.status) ? task.progress : (live?.progress ?? task.progress);
  $("#detail-title").textContent = task.name;
  const facts = [
    ["ID", id],
    ["Type", task.task_type],
    ["Priority", task.priority],
    ["Status", badge(task.status)],
    ["Attempts", `${task.attempts} (up to ${task.max_retries + 1})`],
    ["Created", clock(task.created_at)],
    ["Started", clock(task.started_at)],
    ["Finished", clock(task.finished_at)],
    ["Duration", duration(task.duration_seconds ?? (task.status === "running" ? elapsed(task.started_at) : null))],
  ];
  if (task.error) {
    facts.push(["Error", h("span", {}, h("span", { class: "category" }, task.error.category ?? "unknown"), ` ${task.error.type ?? ""}: ${task.error.message ?? ""}`)]);
  }
  const left = h(
    "div",
    { "data-task-id": id },
    h("dl", { class: "kv" }, facts.map(([label, value]) => [h("dt", {}, label), h("dd", { "data-field": label.toLowerCase() }, value)]).flat()),
    h("h3", {}, "Progress"),
    h("div", { class: "task-line" }, h("span", { class: "message" }, live?.message ?? task.message ?? ""), h("span", { class: "right pct" }, `${Math.round(progress * 100)}%`)),
    bar(progress, task.status),
    TERMINAL.has(task.status) ? null : h("div", { class: "buttons" }, cancelButton(task)),
  );
  const points = history.history.map((point) =>
    h("li", {}, h("span", { class: "muted" }, clock(point.timestamp)), h("span", { class: "pct" }, `${Math.round(point.progress * 100)}%`), h("span", {}, point.message ?? "")),
  );
  const attempts = task.executions.map((execution) =>
    h(
      "tr",
      { "data-attempt": execution.attempt },
      h("td", { class: "num" }, execution.attempt),
      h("td", {}, badge(execution.outcome)),
      h("td", { class: "num" }, clock(execution.started_at)),
      h("td", { class: "num" }, duration(execution.finished_at ? (Date.parse(execution.finished_at) - Date.parse(execution.started_at)) / 1000 : null)),
      h("td", {}, h("span", { class: "category" }, execution.error_category ?? "")),
      h("td", { class: "err", title: execution.error_message ?? "" }, execution.error_type ? `${execution.error_type}: ${execution.error_message ?? ""}` : ""),
    ),
  );
  const right = h(
    "div",
    {},
    h("h3", {}, "Progress history"),
    h("ul", { class: "history" }, points),
    h("p", { class: "empty no-history", hidden: points.length > 0 }, "No progress reported."),
    h("h3", {}, "Attempts"),
    attempts.length
      ? h(
          "table",
          { class: "attempts" },
          h("thead", {}, h("tr", {}, ["#", "Outcome", "Started", "Took", "Category", "Error"].map((t) => h("th", {}, t)))),
          h("tbody", {}, attempts),
        )
      : h("p", { class: "empty" }, "Not run yet."),
    task.result !== null && task.result !== undefined ? [h("h3", {}, "Result"), h("pre", {}, JSON.stringify(task.result, null, 2))] : null,
  );
  fill($("#detail-body"), [h("div", { class: "detail-grid" }, left, right)]);
}

// --- live events ---------------------------------------------------------------------------

function applyLive(taskId) {
  const live = state.live.get(taskId);
  if (!live) return;
  for (const element of document.querySelectorAll(`[data-task-id="${CSS.escape(taskId)}"]`)) {
    const progressBar = element.querySelector(".bar");
    if (progressBar) setBar(progressBar, live.progress, live.status);
    const pct = element.querySelector(".pct");
    if (pct) pct.textContent = `${Math.round(live.progress * 100)}%`;
    const message = element.querySelector(".message");
    if (message && live.message !== undefined) message.textContent = live.message ?? "";
  }
}

function onEvent(kind, data) {
  const id = data.task_id;
  switch (kind) {
    case "task_progressed": {
      const update = data.update ?? {};
      if (data.task_type === "translation") schedule("translations");
      state.live.set(id, { progress: update.progress ?? 0, message: update.message, status: "running" });
      applyLive(id);
      if (!state.running.some((task) => task.task_id === id)) schedule("tasks", "queue");
      if (id === state.selected) {
        const history = $("#detail .history");
        $("#detail .no-history")?.setAttribute("hidden", "");
        history?.append(h("li", {}, h("span", { class: "muted" }, clock(update.timestamp)), h("span", { class: "pct" }, `${Math.round((update.progress ?? 0) * 100)}%`), h("span", {}, update.message ?? "")));
      }
      return;
    }
    case "task_started":
      state.live.delete(id); // a new attempt starts over
      break;
    case "task_completed":
      state.live.set(id, { ...state.live.get(id), progress: 1, status: "completed" });
      applyLive(id);
      break;
    case "task_dead_lettered":
    case "task_cancelled": {
      const previous = state.live.get(id);
      state.live.set(id, { progress: previous?.progress ?? 0, message: previous?.message, status: kind === "task_cancelled" ? "cancelled" : "failed" });
      applyLive(id);
      break;
    }
    case "breaker_state_changed":
      schedule("breakers");
      return;
    case "alert_raised":
    case "alert_cleared":
    case "health_changed":
      schedule("health");
      return;
    case "reset":
      schedule(...ALL);
      return;
    default:
      break;
  }
  schedule("tasks", "queue");
  if (data.task_type === "translation") schedule("translations");
  if (["task_dead_lettered", "task_requeued", "task_failed"].includes(kind)) schedule("dead");
  if (kind === "task_submitted") schedule("schedules"); // a tick's task: its last tick moved
  if (["task_completed", "task_failed"].includes(kind)) schedule("health"); // error rate, counts
  if (id !== undefined && id === state.selected) schedule("detail");
}

function onState(connection) {
  const live = $("#live");
  live.dataset.state = connection;
  live.textContent = { open: "live", connecting: "reconnecting…", closed: "offline" }[connection];
  document.body.dataset.live = connection;
  if (connection === "open") schedule(...ALL); // anything missed while away
}

// --- the once-a-second clock and the wiring ---------------------------------------------

function tick() {
  for (const element of document.querySelectorAll("[data-since]")) {
    element.textContent = duration(elapsed(element.dataset.since));
  }
  for (const element of document.querySelectorAll("[data-relative]")) {
    const prefix = element.textContent.startsWith(" · trial ") ? " · trial " : "";
    element.textContent = prefix + relative(element.dataset.relative);
  }
}

function askForKey(refused) {
  const dialog = $("#key-dialog");
  const input = $("#api-key-input");
  $("#key-error").hidden = !refused;
  input.value = "";
  return new Promise((resolve) => {
    $("#key-form").onsubmit = (event) => {
      event.preventDefault();
      const key = input.value.trim();
      if (!key) return;
      dialog.close();
      resolve(key);
    };
    dialog.showModal();
    input.focus();
  });
}

function wire() {
  $("#key-dialog").addEventListener("cancel", (event) => event.preventDefault());
  $("#pause").addEventListener("click", (event) =>
    act(event.currentTarget, "#queue", () => api(`${TASKS}/queue/pause`, { method: "POST", body: { reason: "paused from the dashboard" } }), "queue", "tasks"),
  );
  $("#resume").addEventListener("click", (event) =>
    act(event.currentTarget, "#queue", () => api(`${TASKS}/queue/resume`, { method: "POST" }), "queue", "tasks"),
  );
  $("#clear").addEventListener("click", (event) => {
    const waiting = state.queue?.queue_size ?? 0;
    if (!confirm(`Cancel all ${waiting} waiting tasks?`)) return;
    act(event.currentTarget, "#queue", () => api(`${TASKS}/queue/clear`, { method: "POST" }), "queue", "tasks");
  });
  $("#requeue-all").addEventListener("click", (event) =>
    act(event.currentTarget, "#dead-letters", () => api(`${TASKS}/dead-letters/requeue`, { method: "POST" }), "dead", "tasks", "queue"),
  );
  $("#detail-close").addEventListener("click", () => {
    history.replaceState(null, "", location.pathname + location.search);
    readHash();
  });
  window.addEventListener("hashchange", readHash);
  setInterval(tick, 1000);
  setInterval(() => schedule("health", "resources", "breakers", "schedules"), 5000);
  setInterval(() => {
    if (document.body.dataset.live !== "open") schedule(...ALL); // poll while the stream is down
  }, 10_000);
}

async function start() {
  onKeyNeeded(askForKey);
  wire();
  await ensureKey();
  readHash();
  schedule(...ALL);
  followEvents({ onEvent, onState });
}

start();

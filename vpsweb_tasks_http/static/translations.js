// Translation jobs: each step's output side by side. The translation routes
// (/api/v1/background-tasks/translation/{job_id}[/result]) may not exist on a server: the
// panel then says so instead of failing.

import { api, ApiError, FEATURES, TASKS } from "./api.js";
import { badge, bar, duration, fill, h } from "./dom.js";

const STEP_KEYS = ["initial_translation", "editor_review", "translator_revision"];
const TEXT_KEYS = ["output", "text", "translation", "content", "revised_translation", "suggestions", "review"];
const finished = new Map(); // job id -> {job, result}: a finished job's outputs do not change

function humanise(name) {
  const words = String(name).replace(/[_-]+/g, " ").trim();
  return words.charAt(0).toUpperCase() + words.slice(1);
}

function textOf(step) {
  if (step === null || step === undefined) return "";
  if (typeof step !== "object") return String(step);
  for (const key of TEXT_KEYS) if (typeof step[key] === "string") return step[key];
  return JSON.stringify(step, null, 2);
}

function notesOf(step) {
  if (!step || typeof step !== "object") return "";
  const tokens = step.tokens_used ?? step.tokens ?? step.usage?.total_tokens;
  const seconds = step.duration_seconds ?? step.duration;
  const model = step.model ?? step.model_info?.model;
  return [model, tokens !== undefined ? `${tokens} tokens` : null, seconds !== undefined ? duration(seconds) : null]
    .filter(Boolean)
    .join(" · ");
}

/** The steps of a result, whichever of the plausible shapes it has. */
export function stepsOf(result) {
  if (!result || typeof result !== "object") return [];
  const steps = result.steps ?? result.step_outputs ?? result.outputs;
  if (Array.isArray(steps)) {
    return steps.map((step, i) => ({
      name: step?.name ?? step?.step ?? `Step ${i + 1}`,
      text: textOf(step),
      notes: notesOf(step),
    }));
  }
  if (steps && typeof steps === "object") {
    return Object.entries(steps).map(([name, step]) => ({ name: humanise(name), text: textOf(step), notes: notesOf(step) }));
  }
  return STEP_KEYS.filter((key) => key in result).map((key) => ({
    name: humanise(key),
    text: textOf(result[key]),
    notes: notesOf(result[key]),
  }));
}

async function load(task) {
  const id = task.metadata?.job_id ?? task.task_id;
  const cached = finished.get(id);
  if (cached) return cached;
  const base = `${TASKS}/translation/${encodeURIComponent(id)}`;
  const job = await api(base);
  let result = null;
  if (["completed", "failed"].includes(job.status ?? task.status)) {
    try {
      result = await api(`${base}/result`);
    } catch (error) {
      if (!(error instanceof ApiError && [404, 409].includes(error.status))) throw error;
    }
  }
  const loaded = { id, job, result };
  if (result !== null) finished.set(id, loaded);
  return loaded;
}

function jobView(task, loaded) {
  const job = loaded?.job ?? {};
  const status = job.status ?? task.status;
  const source = job.source_language ?? task.metadata?.source_language;
  const target = job.target_language ?? task.metadata?.target_language;
  const mode = job.workflow_mode ?? task.metadata?.workflow_mode;
  const head = h(
    "div",
    { class: "task-line" },
    h("span", { class: "name" }, job.metadata?.title ?? task.name),
    h("span", { class: "type" }, [source && target ? `${source} → ${target}` : "", mode ? ` · ${mode}` : ""].join("")),
    h("span", { class: "right" }, badge(status)),
  );
  const view = h("div", { class: "job", "data-job-id": loaded?.id ?? task.task_id }, head);
  if (loaded === null) {
    view.append(h("p", { class: "empty unavailable" }, "Translation details not available on this server."));
    return view;
  }
  if (!["completed", "failed", "cancelled"].includes(status)) {
    view.append(bar(job.progress ?? task.progress, status));
  }
  const result = loaded.result?.result ?? loaded.result;
  const steps = stepsOf(result);
  const original = job.original_text ?? result?.original_text;
  const columns = [];
  if (original) columns.push(h("div", { class: "step original" }, h("h4", {}, "Original"), h("p", {}, original)));
  for (const step of steps) {
    columns.push(
      h(
        "div",
        { class: "step" },
        h("h4", {}, step.name),
        h("p", {}, step.text),
        step.notes ? h("div", { class: "muted" }, step.notes) : null,
      ),
    );
  }
  if (columns.length) view.append(h("div", { class: "steps" }, columns));
  return view;
}

/** Renders the translation tasks among ``tasks`` (any lists of task responses). */
export async function renderTranslations(section, tasks) {
  const jobs = tasks.filter((task) => task.task_type === "translation");
  const container = section.querySelector(".jobs");
  const empty = section.querySelector(".empty");
  empty.textContent = FEATURES.has("translation")
    ? "No translation jobs."
    : "No translation jobs (the translation API is not available on this server).";
  empty.hidden = jobs.length > 0;
  const views = [];
  for (const task of jobs.slice(0, 10)) {
    let loaded = null;
    try {
      loaded = await load(task);
    } catch (error) {
      if (!(error instanceof ApiError && error.status === 404)) throw error;
    }
    views.push(jobView(task, loaded));
  }
  fill(container, views);
}

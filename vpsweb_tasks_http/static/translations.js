// Translation jobs: the latest jobs, and for a finished one each step's output side by
// side with the original. Routes (the design document's "Translation Jobs" table):
//   GET /api/v1/background-tasks/translation?limit=N      jobs, newest first
//   GET /api/v1/background-tasks/translation/{id}/result  original, steps, final text
//   GET /api/v1/background-tasks/translation/usage        tokens and cost of the window
// A server without them (the page is told so when it is served) or answering 404 / 405
// gets "not available" instead of an error.

import { api, ApiError, FEATURES, TASKS } from "./api.js";
import { badge, bar, duration, fill, h } from "./dom.js";

const TERMINAL = new Set(["completed", "failed", "cancelled"]);
const results = new Map(); // job id -> result: a finished job's outputs never change

function humanise(name) {
  const words = String(name ?? "").replace(/[_-]+/g, " ").trim();
  return words.charAt(0).toUpperCase() + words.slice(1);
}

function tokensOf(tokens) {
  if (tokens === null || tokens === undefined) return null;
  return typeof tokens === "object" ? tokens.total_tokens : tokens;
}

function costOf(cost, currency = "") {
  if (cost === null || cost === undefined) return null;
  const digits = cost >= 1 ? 2 : 4;
  return `${cost.toFixed(digits)}${currency ? ` ${currency}` : ""}`;
}

function notesOf(step) {
  const tokens = tokensOf(step.tokens);
  return [
    step.model,
    tokens ? `${tokens} tokens` : null,
    costOf(step.cost),
    step.duration_seconds !== undefined ? duration(step.duration_seconds) : null,
  ]
    .filter(Boolean)
    .join(" · ");
}

function column(title, text, notes, extra = {}, remarks = null) {
  return h(
    "div",
    { class: "step", ...extra },
    h("h4", {}, title),
    h("p", {}, text ?? ""),
    remarks ? h("div", { class: "remarks" }, remarks) : null,
    notes ? h("div", { class: "muted" }, notes) : null,
  );
}

/** A job's tokens and cost so far (and its cap), as one muted note; null if nothing yet. */
function spend(job) {
  const tokens = tokensOf(job.token_usage);
  const parts = [tokens ? `${tokens} tokens` : null, costOf(job.cost)];
  if (job.max_cost !== null && job.max_cost !== undefined) parts.push(`cap ${costOf(job.max_cost)}`);
  const text = parts.filter(Boolean).join(" · ");
  return text ? h("span", { class: "muted spend" }, text) : null;
}

function jobView(job, result) {
  const status = job.status;
  const title = job.metadata?.title ?? job.metadata?.name ?? `Job ${job.job_id}`;
  const author = job.metadata?.author ? ` by ${job.metadata.author}` : "";
  const view = h(
    "div",
    { class: "job", "data-job-id": job.job_id, "data-status": status },
    h(
      "div",
      { class: "task-line" },
      h("span", { class: "name" }, `${title}${author}`),
      h("span", { class: "type" }, `${job.source_language} → ${job.target_language} · ${job.workflow_mode}`),
      h(
        "span",
        { class: "right" },
        spend(job),
        result ? h("span", { class: "muted" }, duration(result.duration_seconds)) : null,
        badge(status),
      ),
    ),
  );
  if (!TERMINAL.has(status)) {
    const step = job.current_step ? humanise(job.current_step) : "waiting";
    view.append(
      h("div", { "data-task-id": job.task_id ?? job.job_id }, bar(job.progress ?? 0, status), h("div", { class: "message" }, job.message ?? step)),
    );
  }
  if (job.error_message) {
    view.append(h("div", { class: "message" }, h("span", { class: "category" }, job.error_category ?? ""), ` ${job.error_message}`));
  }
  // A finished job shows the original and every step; a running or failed one the steps
  // it has finished so far (their checkpoints come with the job).
  const steps = result ? result.steps ?? [] : job.steps ?? [];
  const columns = result ? [column("Original", result.original_text, null, { "data-step": "original" })] : [];
  for (const step of steps) {
    columns.push(column(step.name ?? humanise(step.step), step.output, notesOf(step), { "data-step": step.step ?? "" }, step.notes));
  }
  if (columns.length) view.append(h("div", { class: "steps" }, columns));
  return view;
}

async function resultOf(job) {
  if (!(job.result_available ?? job.status === "completed")) return null;
  if (!results.has(job.job_id)) {
    try {
      results.set(job.job_id, await api(`${TASKS}/translation/${encodeURIComponent(job.job_id)}/result`));
    } catch (error) {
      if (error instanceof ApiError && [404, 409].includes(error.status)) return null;
      throw error;
    }
  }
  return results.get(job.job_id);
}

function unavailable(section, text) {
  fill(section.querySelector(".jobs"), []);
  const empty = section.querySelector(".empty");
  empty.textContent = text;
  empty.hidden = false;
  section.dataset.available = "false";
}

/** The tokens and cost of the statistics window, above the jobs. */
async function renderUsage(line) {
  let usage;
  try {
    usage = await api(`${TASKS}/translation/usage`);
  } catch (error) {
    if (error instanceof ApiError && [404, 405].includes(error.status)) {
      line.hidden = true;
      return;
    }
    throw error;
  }
  const tokens = usage.prompt_tokens + usage.completion_tokens;
  const hours = usage.window_seconds / 3600;
  const window = hours >= 1 ? `${hours.toFixed(hours % 1 ? 1 : 0)} h` : `${Math.round(usage.window_seconds / 60)} min`;
  const cost = costOf(usage.cost, usage.currency);
  line.textContent = `Last ${window}: ${tokens} tokens${cost ? ` · ${cost}` : ""}`;
  line.hidden = false;
}

/** Draws the latest translation jobs into ``section``. */
export async function renderTranslations(section, limit = 5) {
  if (!FEATURES.has("translation")) {
    unavailable(section, "Translation jobs: not available on this server.");
    return;
  }
  let listing;
  try {
    listing = await api(`${TASKS}/translation?limit=${limit}`);
  } catch (error) {
    if (error instanceof ApiError && [404, 405].includes(error.status)) {
      unavailable(section, "Translation jobs: not available on this server.");
      return;
    }
    if (error instanceof ApiError && error.status === 503) {
      unavailable(section, `Translation jobs: ${error.message}`);
      return;
    }
    throw error;
  }
  section.dataset.available = "true";
  await renderUsage(section.querySelector(".usage"));
  const views = [];
  for (const job of listing.jobs) views.push(jobView(job, await resultOf(job)));
  fill(section.querySelector(".jobs"), views);
  const empty = section.querySelector(".empty");
  empty.textContent = "No translation jobs.";
  empty.hidden = views.length > 0;
}

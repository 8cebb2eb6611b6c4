// Translation jobs (GET /translation): progress while they run, then the original and each
// step's output side by side (GET /translation/{job_id}/result). A server mounted without
// the translation routes says so instead of failing.

import { api, FEATURES, TASKS } from "./api.js";
import { badge, bar, duration, fill, h } from "./dom.js";

const TRANSLATION = `${TASKS}/translation`;
const TERMINAL = new Set(["completed", "failed", "cancelled"]);
const results = new Map(); // job id -> result: a completed job's outputs never change

function notesOf(step) {
  const tokens = step.tokens?.total_tokens;
  return [step.model, tokens ? `${tokens} tokens` : null, duration(step.duration_seconds)]
    .filter(Boolean)
    .join(" · ");
}

async function resultOf(job) {
  if (!job.result_available) return null;
  if (!results.has(job.job_id)) {
    results.set(job.job_id, await api(`${TRANSLATION}/${encodeURIComponent(job.job_id)}/result`));
  }
  return results.get(job.job_id);
}

function column(name, text, notes, extra = "") {
  return h(
    "div",
    { class: `step ${extra}`.trim() },
    h("h4", {}, name),
    h("p", {}, text),
    notes ? h("div", { class: "muted" }, notes) : null,
  );
}

function jobView(job, result) {
  const title = job.metadata?.title ?? job.job_id;
  const author = job.metadata?.author ? ` (${job.metadata.author})` : "";
  const view = h(
    "div",
    { class: "job", "data-job-id": job.job_id, "data-status": job.status },
    h(
      "div",
      { class: "task-line" },
      h("span", { class: "name" }, title + author),
      h("span", { class: "type" }, `${job.source_language} → ${job.target_language} · ${job.workflow_mode}`),
      h("span", { class: "right" }, badge(job.status)),
    ),
  );
  if (!TERMINAL.has(job.status)) {
    const step = job.current_step ? `${job.current_step}: ` : "";
    view.append(bar(job.progress, job.status), h("div", { class: "muted" }, step + (job.message ?? "")));
  }
  if (job.error_message) {
    view.append(h("div", { class: "err" }, `${job.error_category ?? "unknown"}: ${job.error_message}`));
  }
  if (result !== null) {
    view.append(
      h(
        "div",
        { class: "steps" },
        column("Original", result.original_text, `${result.source_language}`, "original"),
        result.steps.map((step) => column(step.name, step.output, notesOf(step))),
      ),
    );
  }
  return view;
}

/** Renders the newest translation jobs into ``section``. */
export async function renderTranslations(section) {
  const container = section.querySelector(".jobs");
  const empty = section.querySelector(".empty");
  if (!FEATURES.has("translation")) {
    empty.textContent = "No translation jobs (the translation API is not available on this server).";
    empty.hidden = false;
    fill(container, []);
    return;
  }
  const { jobs } = await api(`${TRANSLATION}?limit=10`);
  empty.textContent = "No translation jobs.";
  empty.hidden = jobs.length > 0;
  const views = [];
  for (const job of jobs) views.push(jobView(job, await resultOf(job)));
  fill(container, views);
}

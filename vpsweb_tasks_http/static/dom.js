// Small DOM and formatting helpers. Text always goes in through textContent, never HTML.

/** h("td", {class: "num"}, "12 s", child...) */
export function h(tag, attrs = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) element.addEventListener(name.slice(2), value);
    else if (name === "dataset") Object.assign(element.dataset, value);
    else element.setAttribute(name, value === true ? "" : String(value));
  }
  element.append(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
  return element;
}

export function badge(status, text = status) {
  return h("span", { class: "badge", "data-status": status }, text);
}

/** A progress bar; update it with setBar. */
export function bar(progress, status = "running") {
  const fill = h("span");
  const element = h("div", { class: "bar", role: "progressbar", "aria-valuemin": 0, "aria-valuemax": 100 }, fill);
  setBar(element, progress, status);
  return element;
}

export function setBar(element, progress, status) {
  const percent = Math.round(Math.max(0, Math.min(1, progress)) * 100);
  element.setAttribute("aria-valuenow", String(percent));
  element.dataset.progress = String(progress);
  if (status) element.dataset.status = status;
  element.firstElementChild.style.width = `${percent}%`;
}

export function percent(value, digits = 0) {
  return value === null || value === undefined ? "–" : `${Number(value).toFixed(digits)}%`;
}

export function duration(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  if (seconds < 1) return `${Math.round(seconds * 1000)} ms`;
  if (seconds < 60) return `${seconds.toFixed(seconds < 10 ? 1 : 0)} s`;
  const minutes = Math.floor(seconds / 60);
  if (minutes < 60) return `${minutes} min ${Math.round(seconds % 60)} s`;
  return `${Math.floor(minutes / 60)} h ${minutes % 60} min`;
}

/** "12 s ago", "in 3 s" */
export function relative(iso, now = Date.now()) {
  if (!iso) return "–";
  const seconds = (Date.parse(iso) - now) / 1000;
  const text = duration(Math.abs(seconds)).replace(/^\d+ ms$/, "now");
  if (text === "now") return text;
  return seconds < 0 ? `${text} ago` : `in ${text}`;
}

export function clock(iso) {
  return iso ? new Date(iso).toLocaleTimeString([], { hour12: false }) : "–";
}

/** Replaces a container's children. */
export function fill(container, children) {
  container.replaceChildren(...children);
}

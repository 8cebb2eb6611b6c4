// The HTTP API as the dashboard uses it: JSON calls with the API key, and the event stream.

function meta(name) {
  const content = document.querySelector(`meta[name="${name}"]`)?.content ?? "";
  // Served as a plain file (not through mount_dashboard) the placeholders stay unfilled.
  return content.startsWith("{{") ? "" : content;
}

const BASE = meta("vpsweb-api-base");
export const TASKS = `${BASE}/api/v1/background-tasks`;
export const MONITORING = `${BASE}/api/v1/monitoring`;
export const KEY_REQUIRED = meta("vpsweb-api-key") === "required";
export const FEATURES = new Set(meta("vpsweb-features").split(/\s+/).filter(Boolean));

const KEY_ITEM = "vpsweb-tasks.api-key";

export class ApiError extends Error {
  constructor(status, detail) {
    super(typeof detail === "string" ? detail : `HTTP ${status}`);
    this.status = status;
    this.detail = detail;
  }
}

let askForKey = null; // (refused: boolean) => Promise<string>, set by the page
let pendingKey = null; // one prompt shared by every request waiting for a key

/** Registers the function that asks the user for the API key. */
export function onKeyNeeded(ask) {
  askForKey = ask;
}

function storedKey() {
  return sessionStorage.getItem(KEY_ITEM);
}

function newKey(refused) {
  if (askForKey === null) return Promise.reject(new ApiError(401, "an API key is required"));
  pendingKey ??= askForKey(refused)
    .then((key) => {
      sessionStorage.setItem(KEY_ITEM, key);
      return key;
    })
    .finally(() => {
      pendingKey = null;
    });
  return pendingKey;
}

/** Makes sure a key is at hand before the first call when the server wants one. */
export async function ensureKey() {
  if (KEY_REQUIRED && !storedKey()) await newKey(false);
}

/** One JSON call. Asks for the key again when the server refuses it. */
export async function api(path, { method = "GET", body } = {}) {
  for (;;) {
    if (pendingKey) await pendingKey;
    const key = storedKey();
    const headers = { Accept: "application/json" };
    if (key) headers["X-API-Key"] = key;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    if (response.status === 401) {
      if (storedKey() === key) {
        sessionStorage.removeItem(KEY_ITEM);
        await newKey(Boolean(key));
      }
      continue;
    }
    const data = response.headers.get("content-type")?.includes("json")
      ? await response.json()
      : await response.text();
    if (!response.ok) throw new ApiError(response.status, data?.detail ?? data);
    return data;
  }
}

/**
 * Follows the event stream of everything. EventSource cannot send X-API-Key, so with a key
 * the URL carries a short-lived token; when the browser's own reconnection is refused
 * (token expired) a new token is fetched and the stream resumes after the last event seen.
 */
export function followEvents({ onEvent, onState }) {
  let source = null;
  let lastId = null;
  let stopped = false;
  let retryDelay = 500;

  async function connect() {
    const params = new URLSearchParams();
    if (lastId !== null) params.set("after", lastId);
    if (KEY_REQUIRED) {
      const { token } = await api(`${MONITORING}/stream-token`, { method: "POST" });
      params.set("token", token);
    }
    if (stopped) return;
    const query = params.toString();
    source = new EventSource(`${MONITORING}/events${query ? `?${query}` : ""}`);
    source.onopen = () => {
      retryDelay = 500;
      onState("open");
    };
    source.onerror = () => {
      if (source.readyState === EventSource.CLOSED) {
        onState("closed");
        setTimeout(() => connect().catch(() => onState("closed")), retryDelay);
        retryDelay = Math.min(retryDelay * 2, 10_000);
      } else {
        onState("connecting");
      }
    };
    source.onmessage = null;
    for (const kind of EVENT_KINDS) {
      source.addEventListener(kind, (message) => {
        if (message.lastEventId) lastId = message.lastEventId;
        onEvent(kind, JSON.parse(message.data));
        if (kind === "reset") {
          // The server no longer has the events after ours: start from now (the page
          // reloads its panels) instead of letting the browser resume from a lost id.
          lastId = null;
          source.close();
          connect().catch(() => onState("closed"));
        }
      });
    }
  }

  connect().catch(() => onState("closed"));
  return () => {
    stopped = true;
    source?.close();
  };
}

export const EVENT_KINDS = [
  "task_submitted",
  "task_started",
  "task_progressed",
  "task_completed",
  "task_failed",
  "task_retry_scheduled",
  "task_dead_lettered",
  "task_deferred",
  "task_cancelled",
  "task_requeued",
  "queue_paused",
  "queue_resumed",
  "queue_cleared",
  "breaker_state_changed",
  "alert_raised",
  "alert_cleared",
  "health_changed",
  "reset",
];

/**
 * The operator dashboard (served at /dashboard, no framework, no CDN). It logs in by exchanging an
 * operator key for a session cookie (POST /dashboard/login; the key is dropped from the page at
 * once), then reads GET /v1/admin/overview every POLL_MS and follows one job at a time over
 * GET /v1/admin/jobs/{id}/events. Every value from the server is set as text, never as markup.
 */

const POLL_MS = 1_500;

interface Gpu { index: number; name: string; vram_total_mb: number; vram_free_mb: number; utilization_percent: number | null }
interface Miner {
  miner_id: string; name: string; replica: string | null; connected: boolean; connected_since: string | null;
  gpus: Gpu[]; models: string[]; slots: number; slots_used: number; slots_free: number; draining: boolean; drained: boolean;
  tokens_per_second: number | null; jobs_done: number; jobs_failed: number;
  last_error: { code: string; message: string; at: string } | null;
  current_jobs: { job_id: string; status: string; progress: number }[];
}
interface Failure { job_id: string; model: string; status: string; error: { code: string; message: string } | null; miner_id: string | null; completed_at: string | null }
interface Overview {
  at: string; replica: string; storage: string; show_outputs: boolean;
  summary: { miners_connected: number; miners_drained: number; slots: number; slots_free: number; tokens_per_second: number; jobs: Record<string, number> };
  miners: Miner[];
  queue: { items: { model: string; priority: string; count: number }[]; total: number };
  throughput: { bucket_seconds: number; buckets: { start: string; jobs: number; tokens: number; tokens_per_second: number }[] };
  failures: Failure[];
}
interface JobRow { job_id: string; tenant: string; model: string; status: string; progress: number; miner_id: string | null; created_at: string }

const $ = <T extends HTMLElement>(id: string): T => {
  const e = document.getElementById(id);
  if (e === null) throw new Error(`#${id} missing`);
  return e as T;
};

type Child = Node | string | number | null | undefined;
function el<K extends keyof HTMLElementTagNameMap>(tag: K, attrs: Record<string, string> = {}, ...children: Child[]): HTMLElementTagNameMap[K] {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  for (const c of children) if (c !== null && c !== undefined) e.append(typeof c === "number" ? String(c) : c);
  return e;
}

const SVG = "http://www.w3.org/2000/svg";
function svg(tag: string, attrs: Record<string, string | number>, text?: string): SVGElement {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
  if (text !== undefined) e.textContent = text;
  return e;
}

function badge(text: string, kind: "ok" | "bad" | "warn" | "muted"): HTMLElement {
  return el("span", { class: `badge ${kind}` }, text);
}

function stateBadge(status: string): HTMLElement {
  const kind = status === "completed" ? "ok" : status === "failed" || status === "timed_out" ? "bad" : status === "running" || status === "assigned" ? "warn" : "muted";
  return badge(status, kind);
}

function ago(isoTime: string | null): string {
  if (isoTime === null) return "—";
  const s = Math.max(0, Math.round((Date.now() - Date.parse(isoTime)) / 1000));
  return s < 60 ? `${s} s ago` : s < 3600 ? `${Math.floor(s / 60)} min ago` : `${Math.floor(s / 3600)} h ago`;
}

class UnauthorizedError extends Error {}

async function api<T>(method: string, url: string, body?: unknown): Promise<T> {
  const res = await fetch(url, {
    method,
    credentials: "same-origin",
    headers: body === undefined ? {} : { "content-type": "application/json" },
    ...(body === undefined ? {} : { body: JSON.stringify(body) }),
  });
  if (res.status === 401) throw new UnauthorizedError("not logged in");
  const text = await res.text();
  const data = (text === "" ? {} : JSON.parse(text)) as T & { detail?: string };
  if (!res.ok) throw new Error(data.detail ?? `${res.status}`);
  return data;
}

// ------------------------------------------------------------------ rendering

function renderSummary(o: Overview): void {
  const j = o.summary.jobs;
  const items: [string, string | number][] = [
    ["Miners connected", o.summary.miners_connected],
    ["Drained", o.summary.miners_drained],
    ["Free slots", `${o.summary.slots_free} / ${o.summary.slots}`],
    ["Tokens/s now", o.summary.tokens_per_second],
    ["Queued", j.queued ?? 0],
    ["Running", (j.running ?? 0) + (j.assigned ?? 0)],
    ["Completed", j.completed ?? 0],
    ["Failed", (j.failed ?? 0) + (j.timed_out ?? 0)],
  ];
  $("summary").replaceChildren(...items.map(([k, v]) => el("div", {}, el("dt", {}, k), el("dd", {}, String(v)))));
}

function renderMiners(o: Overview): void {
  const rows = o.miners.map((m) => {
    const state = !m.connected ? badge("offline", "muted") : m.drained ? badge("drained", "warn") : m.draining ? badge("draining", "warn") : badge("online", "ok");
    const gpus = m.gpus.length === 0 ? "CPU" : m.gpus.map((g) => `${g.name} (${Math.round(g.vram_total_mb / 1024)} GiB${g.utilization_percent === null ? "" : `, ${g.utilization_percent}%`})`).join(", ");
    const drain = el("button", { type: "button", class: "secondary", "data-action": m.drained ? "undrain" : "drain", "aria-label": `${m.drained ? "Undrain" : "Drain"} ${m.name}` }, m.drained ? "Undrain" : "Drain");
    drain.addEventListener("click", () => void act(`/v1/admin/miners/${m.miner_id}/${m.drained ? "undrain" : "drain"}`));
    const disconnect = el("button", { type: "button", class: "danger", "aria-label": `Disconnect ${m.name}` }, "Disconnect");
    disconnect.addEventListener("click", () => void act(`/v1/admin/miners/${m.miner_id}/disconnect`));
    if (!m.connected) disconnect.setAttribute("disabled", "");
    const jobs = el("td", {});
    for (const cj of m.current_jobs) {
      const a = el("a", { href: `#job=${cj.job_id}`, class: "mono" }, cj.job_id);
      jobs.append(a, ` ${cj.status} ${cj.progress}%`, el("br"));
    }
    return el(
      "tr",
      { "data-miner": m.miner_id, "data-name": m.name, "data-drained": String(m.drained) },
      el("td", {}, el("strong", {}, m.name), el("br"), el("span", { class: "mono" }, m.miner_id), m.replica === null ? null : el("br"), m.replica === null ? null : `on ${m.replica}`),
      el("td", {}, state, el("br"), m.connected ? `since ${ago(m.connected_since)}` : ""),
      el("td", {}, gpus),
      el("td", {}, m.models.join(", ")),
      el("td", {}, `${m.slots_used} / ${m.slots_free}`),
      el("td", {}, m.tokens_per_second === null ? "—" : String(m.tokens_per_second)),
      el("td", {}, `${m.jobs_done} / ${m.jobs_failed}`),
      jobs,
      el("td", {}, m.last_error === null ? "—" : `${m.last_error.code} (${ago(m.last_error.at)})`),
      el("td", {}, el("div", { class: "actions" }, drain, disconnect)),
    );
  });
  const body = $("miners").querySelector("tbody")!;
  body.replaceChildren(...(rows.length === 0 ? [el("tr", {}, el("td", { colspan: "10", class: "empty" }, "No miners connected."))] : rows));
}

function renderQueue(o: Overview): void {
  const box = $("queue-chart");
  const byModel = new Map<string, number>();
  for (const q of o.queue.items) byModel.set(q.model, (byModel.get(q.model) ?? 0) + q.count);
  if (byModel.size === 0) {
    box.replaceChildren(el("p", { class: "empty" }, "Nothing queued."));
    return;
  }
  const max = Math.max(...byModel.values());
  const rowH = 26;
  const s = svg("svg", { viewBox: `0 0 400 ${byModel.size * rowH + 4}`, role: "img", "aria-label": `Queued jobs by model: ${[...byModel].map(([m, n]) => `${m} ${n}`).join(", ")}` });
  [...byModel].forEach(([model, n], i) => {
    const y = i * rowH + 2;
    s.append(svg("text", { x: 0, y: y + 16, class: "axis" }, model.length > 18 ? `${model.slice(0, 17)}…` : model));
    s.append(svg("rect", { x: 130, y: y + 3, width: Math.max(2, (n / max) * 230), height: rowH - 8, class: "bar" }));
    s.append(svg("text", { x: 135 + Math.max(2, (n / max) * 230), y: y + 16, class: "axis" }, String(n)));
  });
  box.replaceChildren(s);
}

function renderThroughput(o: Overview): void {
  const b = o.throughput.buckets;
  const max = Math.max(1, ...b.map((x) => x.tokens_per_second));
  const w = 400;
  const h = 140;
  const bw = w / b.length;
  const total = b.reduce((n, x) => n + x.jobs, 0);
  const s = svg("svg", { viewBox: `0 0 ${w} ${h + 18}`, role: "img", "aria-label": `Tokens per second per minute over the last hour; ${total} jobs completed` });
  b.forEach((x, i) => {
    const bh = (x.tokens_per_second / max) * h;
    if (bh > 0) s.append(svg("rect", { x: i * bw + 0.5, y: h - bh, width: Math.max(1, bw - 1), height: bh, class: "bar" }));
  });
  s.append(svg("text", { x: 0, y: h + 14, class: "axis" }, "−60 min"));
  s.append(svg("text", { x: w - 30, y: h + 14, class: "axis" }, "now"));
  s.append(svg("text", { x: w / 2 - 60, y: h + 14, class: "axis" }, `peak ${max} tok/s · ${total} jobs`));
  $("throughput-chart").replaceChildren(s);
}

function renderFailures(o: Overview): void {
  const rows = o.failures.map((f) =>
    el(
      "tr",
      {},
      el("td", {}, el("a", { href: `#job=${f.job_id}`, class: "mono" }, f.job_id)),
      el("td", {}, f.model),
      el("td", {}, stateBadge(f.status)),
      el("td", {}, f.error === null ? "—" : `${f.error.code}: ${f.error.message}`),
      el("td", { class: "mono" }, f.miner_id ?? "—"),
      el("td", {}, ago(f.completed_at)),
    ),
  );
  $("failures").querySelector("tbody")!.replaceChildren(...(rows.length === 0 ? [el("tr", {}, el("td", { colspan: "6", class: "empty" }, "No failures in the last 24 h."))] : rows));
}

function renderJobs(jobs: JobRow[]): void {
  const rows = jobs.map((j) => {
    const tr = el(
      "tr",
      { class: "clickable", tabindex: "0", "data-job": j.job_id, "data-status": j.status },
      el("td", {}, el("a", { href: `#job=${j.job_id}`, class: "mono" }, j.job_id)),
      el("td", {}, j.tenant),
      el("td", {}, j.model),
      el("td", {}, stateBadge(j.status)),
      el("td", {}, `${j.progress}%`),
      el("td", { class: "mono" }, j.miner_id ?? "—"),
      el("td", {}, ago(j.created_at)),
    );
    tr.addEventListener("keydown", (e) => {
      if (e.key === "Enter") location.hash = `job=${j.job_id}`;
    });
    return tr;
  });
  $("jobs").querySelector("tbody")!.replaceChildren(...(rows.length === 0 ? [el("tr", {}, el("td", { colspan: "7", class: "empty" }, "No jobs yet."))] : rows));
}

// ------------------------------------------------------------------ job detail (SSE)

let following: { jobId: string; source: EventSource } | undefined;
let showOutputs = false;

function closeDetail(): void {
  following?.source.close();
  following = undefined;
  $("detail").hidden = true;
}

function openDetail(jobId: string): void {
  if (following?.jobId === jobId) return;
  closeDetail();
  $("detail").hidden = false;
  $("detail-id").textContent = jobId;
  $("detail-status").textContent = "…";
  $("detail-progress").textContent = "";
  $("detail-events").replaceChildren();
  const text = $("detail-text");
  text.textContent = showOutputs ? "" : "Outputs are hidden: [admin] show_outputs = false.";
  const source = new EventSource(`/v1/admin/jobs/${encodeURIComponent(jobId)}/events`);
  following = { jobId, source };
  let current = "";
  const log = (line: string): void => {
    $("detail-events").append(el("li", {}, line));
  };
  const status = (s: string): void => {
    $("detail-status").textContent = s;
    $("detail").setAttribute("data-status", s);
  };
  source.addEventListener("snapshot", (e) => {
    const d = JSON.parse((e as MessageEvent<string>).data) as { status: string; progress: number };
    status(d.status);
    $("detail-progress").textContent = `${d.progress}%`;
  });
  for (const type of ["queued", "assigned", "running", "requeued", "cancel_requested", "completed", "failed", "cancelled", "timed_out", "expired", "uploaded", "upload_failed"]) {
    source.addEventListener(type, (e) => {
      const d = JSON.parse((e as MessageEvent<string>).data) as { at?: string; miner_id?: string | null; reason?: string; error?: { code: string } };
      log(`${d.at === undefined ? "" : new Date(d.at).toLocaleTimeString()} ${type}${d.miner_id ? ` on ${d.miner_id}` : ""}${d.reason ? ` (${d.reason})` : ""}${d.error ? ` — ${d.error.code}` : ""}`);
      if (type !== "uploaded" && type !== "upload_failed") status(type);
      if (["completed", "failed", "cancelled", "timed_out", "expired"].includes(type)) source.close();
    });
  }
  source.addEventListener("progress", (e) => {
    const d = JSON.parse((e as MessageEvent<string>).data) as { progress: number; tokens: number; tokens_per_second: number };
    $("detail-progress").textContent = `${d.progress}% · ${d.tokens} tokens · ${d.tokens_per_second} tok/s`;
  });
  source.addEventListener("text_restart", () => {
    current = "";
    text.textContent = "";
    log("text restarted (a new attempt)");
  });
  source.addEventListener("token", (e) => {
    const d = JSON.parse((e as MessageEvent<string>).data) as { index: number; text: string };
    current = current.slice(0, d.index) + d.text;
    text.textContent = current;
  });
  source.onerror = () => {
    if (source.readyState === EventSource.CLOSED) return;
    // EventSource reconnects on its own with Last-Event-ID.
  };
}

// ------------------------------------------------------------------ actions, polling, login

function say(message: string): void {
  $("status").textContent = message;
}

async function act(url: string): Promise<void> {
  try {
    await api("POST", url);
    await refresh();
  } catch (err) {
    say(err instanceof Error ? err.message : String(err));
  }
}

let timer: number | undefined;

async function refresh(): Promise<void> {
  try {
    const [o, jobs] = await Promise.all([api<Overview>("GET", "/v1/admin/overview"), api<{ items: JobRow[] }>("GET", "/v1/admin/jobs?limit=15")]);
    showOutputs = o.show_outputs;
    renderSummary(o);
    renderMiners(o);
    renderQueue(o);
    renderThroughput(o);
    renderFailures(o);
    renderJobs(jobs.items);
    say(`Updated ${new Date(o.at).toLocaleTimeString()} · replica ${o.replica} · ${o.storage}`);
  } catch (err) {
    if (err instanceof UnauthorizedError) return showLogin();
    say(`Not updated: ${err instanceof Error ? err.message : String(err)}`);
  }
}

function showApp(): void {
  $("login").hidden = true;
  $("app").hidden = false;
  $("logout").hidden = false;
  void refresh();
  window.clearInterval(timer);
  timer = window.setInterval(() => void refresh(), POLL_MS);
  route();
}

function showLogin(): void {
  window.clearInterval(timer);
  closeDetail();
  $("app").hidden = true;
  $("logout").hidden = true;
  $("login").hidden = false;
  say("");
  $<HTMLInputElement>("key").focus();
}

function route(): void {
  const m = /^#job=(job_[a-z0-9]+)$/.exec(location.hash);
  if (m?.[1] !== undefined) openDetail(m[1]);
  else closeDetail();
}

function main(): void {
  $<HTMLFormElement>("login-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const input = $<HTMLInputElement>("key");
    const key = input.value.trim();
    input.value = "";
    $("login-error").textContent = "";
    api("POST", "/dashboard/login", { key })
      .then(showApp)
      .catch((err: unknown) => {
        $("login-error").textContent = err instanceof UnauthorizedError ? "That is not a valid operator key." : `Login failed: ${err instanceof Error ? err.message : String(err)}`;
        input.focus();
      });
  });
  $("logout").addEventListener("click", () => void api("POST", "/dashboard/logout").finally(showLogin));
  $("detail-close").addEventListener("click", () => {
    history.replaceState(null, "", location.pathname);
    closeDetail();
  });
  $("detail-cancel").addEventListener("click", () => {
    if (following !== undefined) void act(`/v1/admin/jobs/${following.jobId}/cancel`);
  });
  $("detail-retry").addEventListener("click", () => {
    if (following === undefined) return;
    api<{ job_id: string }>("POST", `/v1/admin/jobs/${following.jobId}/retry`).then(
      (j) => (location.hash = `job=${j.job_id}`),
      (err: unknown) => say(err instanceof Error ? err.message : String(err)),
    );
  });
  window.addEventListener("hashchange", route);
  // Logged in already (a session cookie from earlier)?
  api<{ operator: unknown }>("GET", "/dashboard/session").then(
    (s) => (s.operator === null ? showLogin() : showApp()),
    showLogin,
  );
}

main();

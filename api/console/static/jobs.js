import {
  ROOT, age, api, between, el, every, jobLink, seconds, showError, signedIn, statusBadge,
} from "./common.js";

await signedIn();

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
const PAGE = 50;
const form = document.getElementById("filters");
const field = (id) => document.getElementById(id);
const body = document.querySelector("#jobs tbody");
const older = field("older");
let cursors = [null]; // the cursor of each page shown; the live refresh redraws them all

// Filters live in the page's query string, so a filtered list can be linked to.
const query = new URLSearchParams(location.search);
for (const [param, id] of [["status", "f-status"], ["model", "f-model"],
  ["batch_id", "f-batch"], ["tenant", "f-tenant"], ["q", "f-id"]]) {
  if (query.has(param)) field(id).value = query.get(param);
}

function filters() {
  const params = new URLSearchParams({ limit: String(PAGE) });
  for (const [param, id] of [["status", "f-status"], ["model", "f-model"],
    ["batch_id", "f-batch"], ["tenant", "f-tenant"]]) {
    const value = field(id).value.trim();
    if (value) params.set(param, value);
  }
  return params;
}

function row(job) {
  // A job cancelled or expired before it started waited until it ended.
  const queued = between(job.created_at,
    job.started_at ?? (job.status === "queued" ? new Date() : job.finished_at));
  const engine = between(job.started_at, job.finished_at ?? (job.status === "running" ? new Date() : null));
  const prompt = job.prompt.length > 60 ? `${job.prompt.slice(0, 60)}…` : job.prompt;
  return el("tr", { "data-job": job.id },
    el("td", { class: "id" }, jobLink(job.id, job.id.slice(0, 8))),
    el("td", {}, statusBadge(job.status)),
    el("td", {}, job.model),
    el("td", { class: "num" }, job.priority),
    el("td", { class: "num", title: job.created_at }, age(job.created_at)),
    el("td", { class: "num" }, seconds(queued)),
    el("td", { class: "num" }, seconds(engine)),
    el("td", { class: "prompt" }, prompt));
}

async function refresh() {
  const needle = field("f-id").value.trim().toLowerCase();
  const rows = [];
  let next = null;
  for (const cursor of cursors) {
    const params = filters();
    if (cursor) params.set("cursor", cursor);
    const page = await api(`/v1/jobs?${params}`);
    rows.push(...page.data);
    next = page.next_cursor;
  }
  const shown = rows.filter((job) => !needle || job.id.startsWith(needle));
  body.replaceChildren(...shown.map(row));
  if (!shown.length) {
    body.append(el("tr", {}, el("td", { colspan: 8, class: "hint" }, "No jobs match.")));
  }
  older.hidden = !next;
  older.dataset.cursor = next ?? "";
  field("count").textContent = `${shown.length} shown, refreshed ${new Date().toLocaleTimeString()}`;
}

const run = every(2000, refresh);

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  const needle = field("f-id").value.trim();
  if (UUID.test(needle)) {
    try {
      await api(`/v1/jobs/${needle}`);
      location.assign(`${ROOT}/console/job?id=${encodeURIComponent(needle)}`);
    } catch (err) {
      showError(err);
    }
    return;
  }
  const params = filters();
  params.delete("limit");
  if (needle) params.set("q", needle);
  history.replaceState(null, "", `?${params}`);
  cursors = [null];
  run();
});

older.addEventListener("click", () => {
  cursors.push(older.dataset.cursor);
  run();
});

api("/v1/models").then((models) => {
  field("models").replaceChildren(...models.data.map((m) => el("option", { value: m.id })));
}).catch(showError);

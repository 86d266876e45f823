import {
  ApiError, TERMINAL, api, el, jobLink, showError, signedIn, statusBadge,
} from "./common.js";

await signedIn();

const $ = (id) => document.getElementById(id);
const IMAGE = /\.(jpe?g|png|webp|gif|bmp|tiff?)$/i;
const SENDERS = 4;
// Each long poll holds one of the browser's six connections to this host: leave some free.
const WATCHERS = 3;
let picked = [];

function isImage(file) {
  return file.type.startsWith("image/") || IMAGE.test(file.name);
}

function pick(files) {
  picked = [...files].filter(isImage);
  $("picked").textContent = picked.length
    ? `${picked.length} image${picked.length > 1 ? "s" : ""} chosen: ${picked.slice(0, 5).map((f) => f.name).join(", ")}${picked.length > 5 ? ", …" : ""}`
    : "No images chosen.";
}

// A dropped folder arrives as an entry to walk, not as files.
async function filesOf(entry) {
  if (entry.isFile) return [await new Promise((ok, fail) => entry.file(ok, fail))];
  const reader = entry.createReader();
  const found = [];
  for (;;) {
    const batch = await new Promise((ok, fail) => reader.readEntries(ok, fail));
    if (!batch.length) break;
    for (const child of batch) found.push(...await filesOf(child));
  }
  return found;
}

const drop = $("drop");
drop.addEventListener("dragover", (event) => {
  event.preventDefault();
  drop.classList.add("over");
});
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", async (event) => {
  event.preventDefault();
  drop.classList.remove("over");
  const entries = [...event.dataTransfer.items].map((item) => item.webkitGetAsEntry?.());
  if (entries.every(Boolean)) {
    const nested = await Promise.all(entries.map(filesOf));
    pick(nested.flat());
  } else {
    pick(event.dataTransfer.files);
  }
});
$("files").addEventListener("change", (event) => pick(event.target.files));
$("folder").addEventListener("change", (event) => pick(event.target.files));

api("/v1/models").then((models) => {
  $("model").append(...models.data.map((m) => el("option", { value: m.id }, m.id)));
}).catch(showError);

function form(file) {
  const data = new FormData();
  data.append("image", file, file.name);
  data.append("prompt", $("prompt").value);
  for (const name of ["model", "max_tokens", "temperature", "priority"]) {
    const value = $(name).value.trim();
    if (value) data.append(name, value);
  }
  return data;
}

// Over the rate or during an outage the API says when to come back.
async function send(file) {
  for (let attempt = 1; ; attempt++) {
    try {
      return await api("/v1/jobs", { method: "POST", body: form(file) });
    } catch (err) {
      const again = err instanceof ApiError && (err.status === 429 || err.status === 503);
      if (!again || attempt >= 5) throw err;
      await new Promise((resolve) => setTimeout(resolve, 1000 * Math.max(1, err.retryAfter)));
    }
  }
}

function show(cells, job) {
  cells.job.replaceChildren(jobLink(job.id, job.id.slice(0, 8)));
  cells.status.replaceChildren(statusBadge(job.status));
  cells.result.classList.toggle("failure", Boolean(job.error));
  cells.result.textContent = job.result?.text
    ?? (job.error ? `${job.error.code}: ${job.error.message}` : "");
}

async function watch(cells, job) {
  while (!TERMINAL.has(job.status)) {
    try {
      job = await api(`/v1/jobs/${job.id}?wait=30`);
    } catch (err) {
      cells.result.textContent = err.message;
      await new Promise((resolve) => setTimeout(resolve, 3000));
    }
    show(cells, job);
  }
}

// Runs `work` over `items` with at most `width` at a time.
async function pool(items, width, work) {
  let next = 0;
  const lane = async () => {
    while (next < items.length) await work(items[next++]);
  };
  await Promise.all(Array.from({ length: Math.min(width, items.length) }, lane));
}

$("submit-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  if (!picked.length) {
    showError("Choose or drop at least one image.");
    return;
  }
  showError(null);
  $("send").disabled = true;
  const body = document.querySelector("#results tbody");
  const rows = picked.map((file) => {
    const cells = {
      job: el("td", { class: "id" }, "—"),
      status: el("td", {}, "sending"),
      result: el("td", { class: "result" }),
    };
    const thumb = el("img", { class: "thumb", alt: file.name, src: URL.createObjectURL(file) });
    body.prepend(el("tr", { "data-file": file.name }, el("td", {}, thumb),
      el("td", {}, file.webkitRelativePath || file.name), cells.job, cells.status, cells.result));
    return { file, cells, job: null };
  });
  const watching = [];
  try {
    await pool(rows, SENDERS, async (row) => {
      try {
        row.job = await send(row.file);
        show(row.cells, row.job);
      } catch (err) {
        row.cells.status.replaceChildren(statusBadge("failed"));
        row.cells.result.textContent = err instanceof ApiError ? `${err.code}: ${err.message}` : String(err);
      }
    });
    watching.push(pool(rows.filter((r) => r.job), WATCHERS, (r) => watch(r.cells, r.job)));
  } finally {
    $("send").disabled = false;
  }
  await Promise.all(watching);
});

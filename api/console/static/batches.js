import {
  ROOT, age, api, download, el, every, showError, signedIn, statusBadge,
} from "./common.js";

await signedIn();

const CANCELLABLE = new Set(["validating", "in_progress"]);
const body = document.querySelector("#batches tbody");

function progress(batch) {
  const { total, completed, failed } = batch.request_counts;
  const done = completed + failed;
  return el("td", { class: "progress" },
    el("progress", { max: Math.max(total, 1), value: done }),
    el("span", { class: "hint" }, ` ${done} / ${total}`,
      failed ? `, ${failed} failed` : ""));
}

function fileButton(label, fileId, name) {
  return el("button", {
    type: "button", class: "file", "data-file": label,
    onclick: () => download(`/v1/files/${encodeURIComponent(fileId)}/content`, name).catch(showError),
  }, label);
}

async function cancel(batchId) {
  try {
    await api(`/v1/batches/${encodeURIComponent(batchId)}/cancel`, { method: "POST" });
    await run();
  } catch (err) {
    showError(err);
  }
}

function row(batch) {
  const files = [fileButton("input", batch.input_file_id, `${batch.id}-input.jsonl`)];
  if (batch.output_file_id) files.push(fileButton("output", batch.output_file_id, `${batch.id}-output.jsonl`));
  if (batch.error_file_id) files.push(fileButton("errors", batch.error_file_id, `${batch.id}-errors.jsonl`));
  const jobs = el("a", { href: `${ROOT}/console?batch_id=${encodeURIComponent(batch.id)}` }, "lines");
  const errors = (batch.errors?.data ?? []).map((e) => el("div", { class: "failure" },
    `line ${e.line ?? "?"}: ${e.code ?? ""} ${e.message ?? ""}`));
  return el("tr", { "data-batch": batch.id },
    el("td", { class: "id" }, batch.id, el("br"), jobs),
    el("td", {}, statusBadge(batch.status), errors),
    el("td", {}, batch.model ?? "—"),
    progress(batch),
    el("td", { class: "num", title: new Date(batch.created_at * 1000).toISOString() },
      age(batch.created_at * 1000)),
    el("td", {}, el("div", { class: "files" }, files)),
    el("td", {}, CANCELLABLE.has(batch.status)
      ? el("button", { type: "button", class: "cancel", onclick: () => cancel(batch.id) }, "Cancel")
      : null));
}

const run = every(2000, async () => {
  const list = await api("/v1/batches?limit=50");
  body.replaceChildren(...list.data.map(row));
  document.getElementById("no-batches").hidden = list.data.length > 0;
});

import {
  ApiError, TERMINAL, api, between, clearPollError, el, every, seconds, showError, signedIn,
  statusBadge,
} from "./common.js";

await signedIn();

const id = new URLSearchParams(location.search).get("id") ?? "";
const $ = (name) => document.getElementById(name);

function fact(term, value) {
  return [el("dt", {}, term), el("dd", {}, value ?? "—")];
}

function render(job) {
  document.title = `Job ${job.id.slice(0, 8)} · vlmq console`;
  $("job-id").textContent = job.id;
  $("job-status").replaceChildren(statusBadge(job.status));
  $("cancel").hidden = !(job.status === "queued" || job.status === "running");
  $("delete").hidden = !TERMINAL.has(job.status);
  const image = job.image
    ? `${job.image.format} ${job.image.width}×${job.image.height}, ${job.image.bytes} bytes`
    : "given by reference";
  const facts = [
    fact("Model", job.model),
    fact("Priority", String(job.priority)),
    fact("Attempts", String(job.attempts)),
    fact("Created", job.created_at),
    fact("Started", job.started_at),
    fact("Finished", job.finished_at),
    fact("Queued for", seconds(between(job.created_at, job.started_at ?? job.finished_at))),
    fact("In the engine", seconds(between(job.started_at, job.finished_at))),
    fact("Image", image),
  ];
  if (job.status === "queued") {
    facts.push(fact("Place in line", job.queue_position === null ? null : String(job.queue_position)));
    facts.push(fact("Estimated done in", job.waiting_for_worker
      ? "waiting for a worker for this model" : seconds(job.eta_seconds)));
  }
  if (job.result) {
    facts.push(fact("Tokens", `${job.result.prompt_tokens} in, ${job.result.completion_tokens} out`));
    facts.push(fact("Finish reason", job.result.finish_reason));
  }
  if (job.batch_id) facts.push(fact("Batch", `${job.batch_id} line ${job.custom_id ?? ""}`));
  if (job.webhook_url) facts.push(fact("Webhook", job.webhook_url));
  $("facts").replaceChildren(...facts.flat());
  $("prompt").textContent = job.prompt;
  $("params").textContent = JSON.stringify(job.params, null, 2);
  const outcome = $("outcome");
  outcome.classList.toggle("failure", Boolean(job.error));
  if (job.error) {
    $("outcome-title").textContent = "Error";
    outcome.textContent = `${job.error.code}: ${job.error.message}`;
  } else if (job.result) {
    $("outcome-title").textContent = "Result";
    outcome.textContent = job.result.text;
  } else {
    $("outcome-title").textContent = "Result";
    outcome.textContent = TERMINAL.has(job.status) ? "(none)" : `(${job.status})`;
  }
}

async function showImage(job) {
  const note = $("image-note");
  if (!job.image) {
    note.textContent = job.image_url ? `Given by reference: ${job.image_url}` : "";
    return;
  }
  if (!job.image.stored) {
    note.textContent = "Removed from the store when the job ended (keep_image false).";
    return;
  }
  try {
    const blob = await (await api(`/v1/jobs/${job.id}/image`, { raw: true })).blob();
    const img = $("image");
    img.src = URL.createObjectURL(blob);
    img.hidden = false;
  } catch (err) {
    note.textContent = err instanceof ApiError ? err.message : String(err);
  }
}

async function loadDeliveries() {
  const list = await api(`/v1/jobs/${id}/deliveries`);
  const body = document.querySelector("#deliveries tbody");
  body.replaceChildren(...list.data.map((d) => el("tr", { "data-delivery": d.id },
    el("td", {}, d.event),
    el("td", { class: "url" }, d.url),
    el("td", {}, statusBadge(d.status)),
    el("td", { class: "num" }, String(d.attempts)),
    el("td", {}, d.last_status_code ? String(d.last_status_code) : (d.last_error ?? "—")),
    el("td", {}, d.delivered_at ?? "—"),
    el("td", {}, el("button", { type: "button", onclick: () => redeliver(d.id) }, "Redeliver")),
  )));
  $("deliveries").hidden = !list.data.length;
  $("no-deliveries").hidden = Boolean(list.data.length);
}

async function redeliver(deliveryId) {
  try {
    await api(`/v1/deliveries/${deliveryId}/redeliver`, { method: "POST" });
    await loadDeliveries();
    showError(null);
  } catch (err) {
    showError(err);
  }
}

$("cancel").addEventListener("click", async () => {
  try {
    render(await api(`/v1/jobs/${id}/cancel`, { method: "POST" }));
    await loadDeliveries();
    showError(null);
  } catch (err) {
    showError(err);
  }
});

$("delete").addEventListener("click", async () => {
  if (!confirm("Delete this job's image, prompt, result and webhook deliveries? This cannot be undone.")) return;
  try {
    await api(`/v1/jobs/${id}`, { method: "DELETE" });
    for (const part of document.querySelectorAll("main > :not(h1):not(#deleted-note)")) part.hidden = true;
    $("deleted-note").hidden = false;
    showError(null);
  } catch (err) {
    showError(err);
  }
});

async function main() {
  let job;
  try {
    job = await api(`/v1/jobs/${encodeURIComponent(id)}`);
  } catch (err) {
    showError(err);
    return;
  }
  render(job);
  showImage(job);
  // Deliveries change without the job changing (retries, a redelivery).
  every(3000, loadDeliveries);
  // Long polls: the API answers as soon as the job ends, or after 30 s as it stands.
  while (!TERMINAL.has(job.status)) {
    try {
      job = await api(`/v1/jobs/${id}?wait=30`);
      render(job);
      clearPollError();
    } catch (err) {
      showError(err, true);
      await new Promise((resolve) => setTimeout(resolve, 3000));
    }
  }
}

main();

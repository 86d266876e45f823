import { api, el, every, seconds, signedIn } from "./common.js";

await signedIn();

const body = document.querySelector("#models tbody");

// The API estimates a queued job's wait as (its place in line + 1) / the model's jobs done
// per second over the last five minutes; read back from any queued job this key can see,
// that rate divided into the model's whole queue is when the queue drains.
async function drain(model) {
  if (!model.queued) return { text: "empty", rate: null };
  const page = await api(`/v1/jobs?status=queued&model=${encodeURIComponent(model.id)}&limit=1`);
  if (!page.data.length) return { text: "—", rate: null };
  const job = await api(`/v1/jobs/${page.data[0].id}`);
  if (job.status !== "queued" || !job.eta_seconds) return { text: "—", rate: null };
  const rate = (job.queue_position + 1) / job.eta_seconds;
  return { text: seconds(model.queued / rate), rate };
}

function row(model, estimate) {
  return el("tr", { "data-model": model.id },
    el("td", {}, model.id),
    el("td", { class: "num" }, String(model.workers)),
    el("td", {}, model.engines.join(", ")),
    el("td", { class: "num" }, String(model.capacity)),
    el("td", { class: "num" }, String(model.queued)),
    el("td", { class: "num" }, String(model.running)),
    el("td", { class: "num" }, seconds(model.oldest_queued_seconds)),
    el("td", { class: "num drain", title: estimate.rate
      ? `${(estimate.rate * 60).toFixed(1)} jobs/min over the last 5 min` : "" }, estimate.text));
}

every(3000, async () => {
  const models = (await api("/v1/models")).data;
  const estimates = await Promise.all(models.map(drain));
  body.replaceChildren(...models.map((m, i) => row(m, estimates[i])));
  document.getElementById("no-models").hidden = models.length > 0;
});

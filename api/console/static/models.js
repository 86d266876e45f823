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

// --- throughput plots ----------------------------------------------------------------------

const SVG = "http://www.w3.org/2000/svg";
const W = 600;
const H = 150;
const PAD = { left: 44, right: 6, top: 8, bottom: 20 };

function svg(tag, attrs, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, String(value));
  if (text !== undefined) node.textContent = text;
  return node;
}

function rate(value) {
  if (value >= 100) return value.toFixed(0);
  if (value >= 1) return value.toFixed(1);
  return value.toFixed(2);
}

// One bar per minute, as a rate per second; each bar's title says its minute and value.
function plot(target, minutes, perMinute, unit) {
  const rates = minutes.map((m) => perMinute(m) / 60);
  const top = Math.max(...rates, 0) || 1;
  const width = (W - PAD.left - PAD.right) / rates.length;
  const height = H - PAD.top - PAD.bottom;
  const nodes = [
    svg("line", { x1: PAD.left, y1: H - PAD.bottom, x2: W - PAD.right, y2: H - PAD.bottom, class: "axis" }),
    svg("text", { x: PAD.left - 4, y: PAD.top + 8, class: "label end" }, rate(top)),
    svg("text", { x: PAD.left - 4, y: H - PAD.bottom, class: "label end" }, "0"),
    svg("text", { x: PAD.left, y: H - 4, class: "label" }, `−${rates.length} min`),
    svg("text", { x: W - PAD.right, y: H - 4, class: "label end" }, "now"),
  ];
  rates.forEach((value, i) => {
    const h = (value / top) * height;
    const bar = svg("rect", {
      x: PAD.left + i * width + 0.5, y: H - PAD.bottom - h, width: Math.max(width - 1, 1),
      height: h, class: "bar", "data-value": value,
    });
    bar.append(svg("title", {}, `${minutes[i].start.slice(11, 16)} UTC: ${rate(value)} ${unit}/s`));
    nodes.push(bar);
  });
  target.replaceChildren(...nodes);
  target.dataset.total = String(minutes.reduce((sum, m) => sum + perMinute(m), 0));
}

function recent(minutes, perMinute, unit) {
  // The last five minutes, the current one counted for as long as it has run so far.
  const last = minutes.slice(-5);
  const filling = Math.min(Math.max((Date.now() - new Date(last.at(-1).start)) / 1000, 1), 60);
  const value = last.reduce((sum, m) => sum + perMinute(m), 0) / ((last.length - 1) * 60 + filling);
  return `(last 5 min: ${rate(value)} ${unit}/s)`;
}

const modelChoice = document.getElementById("t-model");

async function throughput() {
  const model = modelChoice.value;
  const query = new URLSearchParams({ minutes: "60" });
  if (model) query.set("model", model);
  const { data } = await api(`/v1/stats/throughput?${query}`);
  plot(document.getElementById("plot-images"), data, (m) => m.images, "images");
  plot(document.getElementById("plot-tokens"), data, (m) => m.completion_tokens, "tokens");
  document.getElementById("images-recent").textContent = recent(data, (m) => m.images, "images");
  document.getElementById("tokens-recent").textContent = recent(data, (m) => m.completion_tokens, "tokens");
}

const redraw = every(15000, throughput);
modelChoice.addEventListener("change", redraw);
api("/v1/models").then((models) => {
  modelChoice.append(...models.data.map((m) => el("option", { value: m.id }, m.id)));
}).catch(() => {});

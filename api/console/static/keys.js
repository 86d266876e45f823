import { ApiError, api, el, every, showError, signedIn } from "./common.js";

await signedIn();

const $ = (id) => document.getElementById(id);
const LIMITS = ["max_active_jobs", "submits_per_second", "max_queued_batch_lines",
  "max_active_batches"];
// A tenant's own setting beside the server's (GET /v1/tenants gives both): null is the
// server's default, a limit of 0 none for this tenant, a retention of 0 for ever.
const UNITS = [["d", 86400], ["h", 3600], ["m", 60]];

function limitText(value) {
  if (value === null || value === undefined) return "";
  return value === 0 ? "unlimited" : String(value);
}

function retentionText(value) {
  if (value === null || value === undefined) return "";
  if (value === 0) return "forever";
  for (const [unit, size] of UNITS) if (value % size === 0) return `${value / size}${unit}`;
  return `${value}s`;
}

// What an input says, as PATCH /v1/tenants takes it; an Error for anything else. A bare 0
// is refused: it used to mean the server's default, and now would mean no limit.
function limitValue(name, text) {
  const word = text.trim().toLowerCase();
  if (word === "") return null;
  if (word === "unlimited") return 0;
  const value = Number(word);
  const whole = name !== "submits_per_second";
  if (!/^[0-9]+(\.[0-9]+)?$/.test(word) || (whole && !Number.isInteger(value))) {
    throw new Error(`${name}: ${whole ? "a whole number" : "a number"}, "unlimited", or empty for the server's default`);
  }
  if (value === 0) throw new Error(`${name}: say "unlimited" for no limit, or leave it empty for the server's default`);
  return value;
}

function retentionValue(text) {
  const word = text.trim().toLowerCase();
  if (word === "") return null;
  if (word === "forever") return 0;
  const match = /^([0-9]{1,12})([smhd]?)$/.exec(word);
  const seconds = match ? Number(match[1]) * { "": 1, s: 1, m: 60, h: 3600, d: 86400 }[match[2]] : 0;
  if (!seconds) throw new Error('retention: seconds or 30d, 12h, 90m; "forever"; or empty for the server\'s default');
  return seconds;
}

function described(value) {
  return value === 0 ? "unlimited" : String(value);
}

function keyRow(key) {
  const revoke = key.revoked_at ? null : el("button", {
    type: "button", class: "cancel",
    onclick: async () => {
      if (!confirm(`Revoke key ${key.id} of ${key.tenant}? It stops working within a second.`)) return;
      try {
        await api(`/v1/keys/${encodeURIComponent(key.id)}/revoke`, { method: "POST" });
        await refresh();
      } catch (err) {
        showError(err);
      }
    },
  }, "Revoke");
  return el("tr", { "data-key": key.id },
    el("td", { class: "id" }, key.id),
    el("td", {}, key.tenant),
    el("td", {}, key.name ?? "—"),
    el("td", {}, key.admin ? "admin" : ""),
    el("td", {}, key.created_at.slice(0, 16).replace("T", " ")),
    el("td", {}, key.last_used_at ? key.last_used_at.slice(0, 16).replace("T", " ") : "—"),
    el("td", {}, key.revoked_at ? key.revoked_at.slice(0, 16).replace("T", " ") : ""),
    el("td", {}, revoke));
}

function tenantRow(tenant, defaults) {
  const inputs = Object.fromEntries(LIMITS.map((name) => [name, el("input", {
    name, value: limitText(tenant[name]), class: "limit", spellcheck: "false",
    placeholder: "default",
    title: `a number, "unlimited", or empty for the server's default (${described(defaults[name])})`,
  })]));
  const retention = el("input", {
    name: "retention_seconds", value: retentionText(tenant.retention_seconds), class: "limit",
    spellcheck: "false", placeholder: "default",
    title: `seconds or 30d, 12h, 90m; "forever"; or empty for the server's default (${retentionText(defaults.retention_seconds)})`,
  });
  const keepDefault = "default";
  const keepImages = el("select", { name: "keep_images" },
    [["", keepDefault], ["true", "yes"], ["false", "no"]].map(([value, label]) => el("option", {
      value, selected: String(tenant.keep_images ?? "") === value }, label)));
  const prefixes = el("input", { name: "image_url_prefixes", spellcheck: "false",
    value: tenant.image_url_prefixes.join(" "), placeholder: "none", class: "prefixes" });
  const save = el("button", { type: "button", onclick: async () => {
    try {
      const body = { image_url_prefixes: prefixes.value.split(/[\s,]+/).filter(Boolean),
        retention_seconds: retentionValue(retention.value),
        keep_images: keepImages.value === "" ? null : keepImages.value === "true" };
      for (const name of LIMITS) body[name] = limitValue(name, inputs[name].value);
      await api(`/v1/tenants/${encodeURIComponent(tenant.id)}`, { method: "PATCH", json: body });
      save.textContent = "Saved";
      showError(null);
    } catch (err) {
      save.textContent = "Save";
      showError(err);
    }
  } }, "Save");
  return el("tr", { "data-tenant": tenant.id }, el("td", {}, tenant.id),
    LIMITS.map((name) => el("td", {}, inputs[name])), el("td", {}, retention),
    el("td", {}, keepImages), el("td", {}, prefixes), el("td", {}, save));
}

// What an empty input stands for, above the tenants.
function defaultsRow(defaults) {
  return el("tr", { class: "defaults", "data-defaults": "" }, el("td", {}, "server default"),
    LIMITS.map((name) => el("td", {}, described(defaults[name]))),
    el("td", {}, retentionText(defaults.retention_seconds)),
    el("td", {}, defaults.keep_images ? "yes" : "no"), el("td", {}, "none"), el("td"));
}

async function refresh() {
  const keys = await api("/v1/keys");
  $("keys").querySelector("tbody").replaceChildren(...keys.data.map(keyRow));
}

// Tenants are drawn once (and after a new key), so a refresh never wipes what is being typed.
async function loadTenants() {
  const tenants = await api("/v1/tenants");
  $("tenants").querySelector("tbody").replaceChildren(defaultsRow(tenants.defaults),
    ...tenants.data.map((tenant) => tenantRow(tenant, tenants.defaults)));
}

$("create-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  try {
    const created = await api("/v1/keys", { method: "POST", json: {
      tenant: $("k-tenant").value.trim(), name: $("k-name").value.trim() || null,
      admin: $("k-admin").checked,
    } });
    $("new-tenant").textContent = created.tenant;
    $("new-key").textContent = created.key;
    $("created").hidden = false;
    $("create-form").reset();
    await Promise.all([refresh(), loadTenants()]);
    showError(null);
  } catch (err) {
    showError(err);
  }
});

try {
  await loadTenants();
  $("admin").hidden = false;
  every(5000, refresh);
} catch (err) {
  if (err instanceof ApiError && err.status === 403) $("not-admin").hidden = false;
  else showError(err);
}

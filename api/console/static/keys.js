import { ApiError, api, el, every, showError, signedIn } from "./common.js";

await signedIn();

const $ = (id) => document.getElementById(id);
const LIMITS = ["max_active_jobs", "submits_per_second", "max_queued_batch_lines",
  "max_active_batches"];

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

function tenantRow(tenant) {
  const inputs = Object.fromEntries(LIMITS.map((name) => [name, el("input", {
    type: "number", min: "0", step: name === "submits_per_second" ? "any" : "1",
    name, value: tenant[name] ?? "", placeholder: "default", class: "limit",
  })]));
  const prefixes = el("input", { name: "image_url_prefixes", spellcheck: "false",
    value: tenant.image_url_prefixes.join(" "), placeholder: "none", class: "prefixes" });
  const save = el("button", { type: "button", onclick: async () => {
    const body = { image_url_prefixes: prefixes.value.split(/[\s,]+/).filter(Boolean) };
    for (const name of LIMITS) body[name] = inputs[name].value === "" ? 0 : Number(inputs[name].value);
    try {
      await api(`/v1/tenants/${encodeURIComponent(tenant.id)}`, { method: "PATCH", json: body });
      save.textContent = "Saved";
      showError(null);
    } catch (err) {
      showError(err);
    }
  } }, "Save");
  return el("tr", { "data-tenant": tenant.id }, el("td", {}, tenant.id),
    LIMITS.map((name) => el("td", {}, inputs[name])), el("td", {}, prefixes), el("td", {}, save));
}

async function refresh() {
  const keys = await api("/v1/keys");
  $("keys").querySelector("tbody").replaceChildren(...keys.data.map(keyRow));
}

// Tenants are drawn once (and after a new key), so a refresh never wipes what is being typed.
async function loadTenants() {
  const tenants = await api("/v1/tenants");
  $("tenants").querySelector("tbody").replaceChildren(...tenants.data.map(tenantRow));
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

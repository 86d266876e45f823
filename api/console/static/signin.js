import { ApiError, ROOT, api, apiKey, showError, signIn } from "./common.js";

if (apiKey()) location.replace(`${ROOT}/console`);

document.getElementById("signin-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const key = document.getElementById("key").value.trim();
  try {
    // Any authenticated read proves the key; a one-job page is the cheapest.
    await api("/v1/jobs?limit=1", { key });
  } catch (err) {
    showError(err instanceof ApiError && err.status === 401
      ? "That key is unknown or revoked." : err);
    return;
  }
  let admin = false;
  try {
    await api("/v1/tenants", { key });
    admin = true;
  } catch {
    // 403: a tenant's key
  }
  signIn(key, admin);
  location.replace(`${ROOT}/console`);
});

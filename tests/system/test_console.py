"""The web console (/console) in a real headless Chromium, against a real API, echo worker and
control process: sign in with a key, see jobs live, open a job (its image, result and webhook
deliveries, with redelivery), cancel a queued job, submit images from the page, watch a
batch's progress, see models and workers; and a tenant's console never shows another
tenant's job. Screenshots go to .artifacts/ (kept by CI, ignored by git).

Chromium is Debian's (scripts/install-browser.sh, run by `make test`, installs it), driven by
Playwright: Playwright's own browser download is not used.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.helpers.echo_stack import (
    ENDPOINT,
    EchoStack,
    batch_line,
    echo_stack,
    openai_client,
    upload,
)
from tests.helpers.images import data_url, png_bytes
from tests.helpers.services import bearer, create_api_key, start_worker, wait_terminal
from tests.helpers.stack import Stack
from tests.helpers.webhook_receiver import Receiver, receiver
from worker.engines.echo_backend import ECHO_TEXT

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / ".artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SECRET = "whsec_" + base64.b64encode(b"console-webhook-secret-32-bytes!").decode()
HOOK_HOST = "127.0.0.3"
# Every wait on the page: generous, as the machine may be busy; nothing here measures speed.
WAIT_MS = 30_000


@dataclass
class Console:
    echo: EchoStack
    browser: Browser
    hook: Receiver
    a_key: str
    b_key: str
    parked: str  # accepted, served by no worker: its jobs wait queued
    later: str  # accepted, served by a worker a test starts part way through
    slow: str  # the same, by a worker that runs one job at a time
    admin_key: str
    problems: list[str] = field(default_factory=list)  # CSP violations and script errors

    @property
    def base(self) -> str:
        return self.echo.base

    def client(self, key: str) -> httpx.Client:
        return httpx.Client(base_url=self.base, timeout=30, headers=bearer(key))


@pytest.fixture(scope="module")
def console(stack: Stack) -> Iterator[Console]:
    assert Path(CHROMIUM).exists(), (
        "no chromium: run scripts/install-browser.sh as root (make test does), or "
        "apt-get install -y "
        "--no-install-recommends chromium chromium-driver")
    ARTIFACTS.mkdir(exist_ok=True)
    expect.set_options(timeout=WAIT_MS)  # Playwright's default is 5 s
    tag = uuid.uuid4().hex[:6]
    parked, later, slow = f"parked-{tag}", f"later-{tag}", f"slow-{tag}"
    with receiver(host=HOOK_HOST) as hook, echo_stack(
        stack, "console", accepted_models=json.dumps([parked, later, slow]),
        webhook_secrets=json.dumps([SECRET]), webhook_allow_http="true",
        webhook_allowed_networks=f'["{HOOK_HOST}/32"]', webhook_poll_seconds="0.2",
    ) as echo, sync_playwright() as pw:
        url = echo.stack.settings.database_url
        browser = pw.chromium.launch(executable_path=CHROMIUM)
        try:
            yield Console(echo, browser, hook, create_api_key(url, f"console-a-{tag}"),
                          create_api_key(url, f"console-b-{tag}"), parked, later, slow,
                          create_api_key(url, f"console-ops-{tag}", admin=True))
        finally:
            browser.close()


@pytest.fixture()
def page(console: Console, request: pytest.FixtureRequest) -> Iterator[Page]:
    """A fresh browser context (its own sessionStorage) whose problems fail the test, with a
    screenshot of where it ended."""
    context = console.browser.new_context(viewport={"width": 1280, "height": 820})
    tab = context.new_page()
    problems: list[str] = []
    tab.on("pageerror", lambda exc: problems.append(f"script error: {exc}"))
    tab.on("console", lambda msg: problems.append(msg.text)
           if "Content Security Policy" in msg.text else None)
    tab.set_default_timeout(WAIT_MS)
    yield tab
    tab.screenshot(path=str(ARTIFACTS / f"console-{request.node.name}.png"), full_page=True)
    context.close()
    assert not problems, problems


def sign_in(page: Page, console: Console, key: str) -> list[str]:
    """Signs in through the form; the URLs of every request the page makes from then on."""
    urls: list[str] = []
    page.on("request", lambda req: urls.append(req.url))
    page.goto(f"{console.base}/console")
    expect(page).to_have_url(f"{console.base}/console/signin")
    page.fill("#key", key)
    page.click("button[type=submit]")
    expect(page).to_have_url(f"{console.base}/console")
    return urls


def submit(client: httpx.Client, prompt: str, **data: str) -> str:
    resp = client.post("/v1/jobs", files={"image": ("a.png", png_bytes(80, 60, seed=7),
                                                    "image/png")},
                       data={"prompt": prompt, "max_tokens": "4", **data})
    assert resp.status_code == 202, resp.text
    return str(resp.json()["id"])


def image_width(page: Page, width: int) -> None:
    """Waits until the job page's image has loaded at `width` pixels. A Python loop, since
    page.wait_for_function evaluates its string, which the console's CSP rightly refuses."""
    deadline = time.monotonic() + WAIT_MS / 1000
    while page.locator("#image").evaluate("img => img.naturalWidth") != width:
        assert time.monotonic() < deadline, "the job's image did not load"
        page.wait_for_timeout(100)


def echo_words(max_tokens: int) -> str:
    return " ".join(ECHO_TEXT.split()[:max_tokens])


# --- sign-in --------------------------------------------------------------------------------


def test_sign_in_refuses_a_wrong_key_and_keeps_the_key_out_of_urls(
    console: Console, page: Page,
) -> None:
    page.goto(f"{console.base}/console/job?id={uuid.uuid4()}")
    expect(page).to_have_url(f"{console.base}/console/signin")  # no key: sign in first
    page.fill("#key", "vlmq_nosuchkey_0000")
    page.click("button[type=submit]")
    expect(page.locator("#error")).to_contain_text("unknown or revoked")
    expect(page).to_have_url(f"{console.base}/console/signin")

    urls = sign_in(page, console, console.a_key)
    expect(page.locator("#jobs")).to_be_visible()
    assert page.evaluate("sessionStorage.getItem('vlmq.apiKey')") == console.a_key
    assert page.evaluate("localStorage.length") == 0
    assert urls and not [u for u in urls if console.a_key in u or "key=" in u]

    page.click("#signout")
    expect(page).to_have_url(f"{console.base}/console/signin")
    assert page.evaluate("sessionStorage.getItem('vlmq.apiKey')") is None


# --- jobs -----------------------------------------------------------------------------------


def test_a_job_shows_in_the_live_list_and_on_its_page_with_image_result_and_deliveries(
    console: Console, page: Page,
) -> None:
    sign_in(page, console, console.a_key)
    with console.client(console.a_key) as a:
        job_id = submit(a, "console: what is in the picture?", webhook_url=console.hook.url())
        assert wait_terminal(a, job_id)["status"] == "succeeded"
    console.hook.wait_for(1)

    row = page.locator(f'#jobs tr[data-job="{job_id}"]')  # the list refreshes by itself
    expect(row).to_contain_text("succeeded")
    expect(row).to_contain_text(console.echo.model)
    page.select_option("#f-status", "failed")
    page.click("#filters button[type=submit]")
    expect(row).to_have_count(0)
    page.select_option("#f-status", "succeeded")
    page.click("#filters button[type=submit]")
    expect(row).to_have_count(1)
    expect(page).to_have_url(re.compile(r"status=succeeded"))

    page.fill("#f-id", job_id)  # a whole id opens the job
    page.click("#filters button[type=submit]")
    expect(page).to_have_url(f"{console.base}/console/job?id={job_id}")
    expect(page.locator("#job-status")).to_have_text("succeeded")
    expect(page.locator("#outcome")).to_have_text(echo_words(4))
    expect(page.locator("#prompt")).to_have_text("console: what is in the picture?")
    expect(page.locator("#params")).to_contain_text('"max_tokens": 4')
    expect(page.locator("#facts")).to_contain_text("In the engine")
    image = page.locator("#image")
    expect(image).to_be_visible()
    image_width(page, 80)

    delivery = page.locator("#deliveries tbody tr")
    expect(delivery).to_have_count(1)
    expect(delivery).to_contain_text("job.succeeded")
    expect(delivery.locator("td").nth(2)).to_have_text("succeeded")
    expect(delivery.locator("td").nth(4)).to_have_text("200")
    delivery.locator("button", has_text="Redeliver").click()
    console.hook.wait_for(2)  # the same event sent again
    expect(delivery.locator("td").nth(3)).to_have_text("2")


def test_a_queued_job_is_cancelled_from_its_page(console: Console, page: Page) -> None:
    with console.client(console.a_key) as a:
        job_id = submit(a, "console: waits for a worker", model=console.parked)
        sign_in(page, console, console.a_key)
        page.goto(f"{console.base}/console/job?id={job_id}")
        expect(page.locator("#job-status")).to_have_text("queued")
        expect(page.locator("#facts")).to_contain_text("waiting for a worker")
        page.click("#cancel")
        expect(page.locator("#job-status")).to_have_text("cancelled")
        expect(page.locator("#cancel")).to_be_hidden()
        assert a.get(f"/v1/jobs/{job_id}").json()["status"] == "cancelled"
        # Ended, it may be deleted, once the browser's confirmation is accepted.
        page.once("dialog", lambda dialog: dialog.accept())
        page.click("#delete")
        expect(page.locator("#deleted-note")).to_be_visible()
        expect(page.locator("#prompt")).to_be_hidden()
        gone = a.get(f"/v1/jobs/{job_id}")
        assert gone.status_code == 410 and gone.json()["error"]["code"] == "expired_data"


def test_a_tenants_console_never_shows_another_tenants_job(
    console: Console, page: Page,
) -> None:
    secret_prompt = f"console: tenant b's secret {uuid.uuid4().hex}"
    with console.client(console.b_key) as b, console.client(console.a_key) as a:
        theirs = submit(b, secret_prompt, model=console.parked)
        ours = submit(a, "console: tenant a's own", model=console.parked)
    sign_in(page, console, console.a_key)
    expect(page.locator(f'#jobs tr[data-job="{ours}"]')).to_have_count(1)
    expect(page.locator(f'#jobs tr[data-job="{theirs}"]')).to_have_count(0)
    page.fill("#f-id", theirs)
    page.click("#filters button[type=submit]")
    expect(page.locator("#error")).to_contain_text("not_found")
    expect(page).to_have_url(re.compile(r"/console$"))

    page.goto(f"{console.base}/console/job?id={theirs}")
    expect(page.locator("#error")).to_contain_text("not_found")
    expect(page.locator("#prompt")).to_have_text("")
    expect(page.locator("#image")).to_be_hidden()
    page.goto(f"{console.base}/console?tenant=console-b")  # only an admin key's filter counts
    expect(page.locator(f'#jobs tr[data-job="{ours}"]')).to_have_count(1)
    assert secret_prompt not in page.content()


# --- submit ---------------------------------------------------------------------------------


def test_images_submitted_from_the_page_each_show_their_result(
    console: Console, page: Page, tmp_path: Path,
) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(2):
        (folder / f"photo-{i}.png").write_bytes(png_bytes(64, 48, seed=20 + i))
    (folder / "notes.txt").write_text("not an image: left out")
    sign_in(page, console, console.a_key)
    page.click("nav >> text=Submit")
    expect(page).to_have_url(f"{console.base}/console/submit")
    expect(page.locator("#model option", has_text=console.echo.model)).to_have_count(1)

    page.set_input_files("#folder", str(folder))  # a folder, as a user picks one
    expect(page.locator("#picked")).to_contain_text("2 images chosen")
    page.fill("#prompt", "console: from the page")
    page.fill("#max_tokens", "3")
    page.click("#send")
    rows = page.locator("#results tbody tr")
    expect(rows).to_have_count(2)
    for i in range(2):
        row = page.locator(f'#results tr[data-file="photo-{i}.png"]')
        expect(row.locator("td").nth(3)).to_have_text("succeeded")
        expect(row.locator("td").nth(4)).to_have_text(echo_words(3))

    # A drop: the drop zone takes the files a drag carries.
    page.evaluate("""async (bytes) => {
        const transfer = new DataTransfer();
        transfer.items.add(new File([new Uint8Array(bytes)], "dropped.png", {type: "image/png"}));
        const zone = document.getElementById("drop");
        zone.dispatchEvent(new DragEvent("drop", {dataTransfer: transfer, bubbles: true,
                                                  cancelable: true}));
    }""", list(png_bytes(40, 30, seed=30)))
    expect(page.locator("#picked")).to_contain_text("1 image chosen: dropped.png")
    page.click("#send")
    dropped = page.locator('#results tr[data-file="dropped.png"]')
    expect(dropped.locator("td").nth(3)).to_have_text("succeeded")
    dropped.locator("td").nth(2).locator("a").click()
    expect(page.locator("#prompt")).to_have_text("console: from the page")
    image_width(page, 40)


# --- batches --------------------------------------------------------------------------------


def test_a_batchs_progress_moves_and_its_files_download(console: Console, page: Page) -> None:
    image = data_url(png_bytes(32, 24))
    lines = [batch_line(f"line-{i}", console.later, image, max_tokens=2) for i in range(4)]
    lines.append(batch_line("not-an-image", console.later, data_url(b"not a png")))
    with openai_client(console.base, console.a_key) as client:
        batch = client.batches.create(input_file_id=upload(client, lines), endpoint=ENDPOINT,
                                      completion_window="24h")
    sign_in(page, console, console.a_key)
    page.click("nav >> text=Batches")
    row = page.locator(f'#batches tr[data-batch="{batch.id}"]')
    bar = row.locator("progress")
    # No worker serves the model yet: the lines wait, and the bad one has failed already.
    expect(row.locator(".status")).to_have_text("in_progress")
    expect(row.locator("td.progress")).to_contain_text("1 / 5, 1 failed")
    expect(bar).to_have_attribute("value", "1")
    expect(bar).to_have_attribute("max", "5")
    page.screenshot(path=str(ARTIFACTS / "console-batch-waiting.png"))

    st = console.echo.stack.with_env(model=console.later)
    worker = start_worker(st.env, st.log_dir, name=f"worker-{console.later}")
    try:
        expect(bar).to_have_attribute("value", "5")
        expect(row.locator(".status")).to_have_text("completed")
    finally:
        worker.stop()
    with page.expect_download() as output:
        row.locator('button[data-file="output"]').click()
    got = [json.loads(x) for x in Path(output.value.path()).read_text().splitlines()]
    assert sorted(x["custom_id"] for x in got) == [f"line-{i}" for i in range(4)]
    with page.expect_download() as errors:
        row.locator('button[data-file="errors"]').click()
    assert json.loads(Path(errors.value.path()).read_text())["custom_id"] == "not-an-image"

    row.locator("a", has_text="lines").click()  # the batch's lines in the jobs list
    expect(page.locator("#jobs tbody tr")).to_have_count(5)  # the bad line is a failed job
    expect(page.locator("#jobs tbody .status-succeeded")).to_have_count(4)
    expect(page.locator("#jobs tbody .status-failed")).to_have_count(1)


def test_a_batch_is_cancelled_from_the_page(console: Console, page: Page) -> None:
    lines = [batch_line(f"wait-{i}", console.parked, data_url(png_bytes(32, 24)))
             for i in range(2)]
    with openai_client(console.base, console.a_key) as client:
        batch = client.batches.create(input_file_id=upload(client, lines), endpoint=ENDPOINT,
                                      completion_window="24h")
        sign_in(page, console, console.a_key)
        page.goto(f"{console.base}/console/batches")
        row = page.locator(f'#batches tr[data-batch="{batch.id}"]')
        expect(row.locator(".status")).to_have_text("in_progress")
        row.locator("button.cancel").click()
        expect(row.locator(".status")).to_have_text("cancelled")
        expect(row.locator("button.cancel")).to_have_count(0)
        expect(row.locator('button[data-file="errors"]')).to_have_count(1)
        assert client.batches.retrieve(batch.id).status == "cancelled"


# --- models ---------------------------------------------------------------------------------


def test_models_show_their_workers_queue_and_when_it_drains(console: Console, page: Page) -> None:
    st = console.echo.stack.with_env(model=console.slow, max_batch_size="1", max_in_flight="1")
    worker = start_worker(st.env, st.log_dir, name=f"worker-{console.slow}")
    try:
        with console.client(console.a_key) as a:
            first = submit(a, "console: done first", model=console.slow)
            assert wait_terminal(a, first)["status"] == "succeeded"
            # Holds the worker's one slot, so the next three wait behind it.
            stuck = submit(a, "[echo:hang] console: holds the slot", model=console.slow)
            waiting = [submit(a, f"console: waits {i}", model=console.slow) for i in range(3)]
            sign_in(page, console, console.a_key)
            page.click("nav >> text=Models")
            row = page.locator(f'#models tr[data-model="{console.slow}"]')
            cells = row.locator("td")
            expect(cells.nth(1)).to_have_text("1")  # workers
            expect(cells.nth(2)).to_have_text("echo")
            expect(cells.nth(3)).to_have_text("1")  # capacity
            expect(cells.nth(4)).to_have_text("3")  # queued
            expect(cells.nth(5)).to_have_text("1")  # running
            # One job done in the API's five-minute window: 1/300 jobs/s, so three queued
            # jobs drain in 900 s.
            expect(cells.nth(7)).to_have_text("15 min")
            echo_row = page.locator(f'#models tr[data-model="{console.echo.model}"] td')
            expect(echo_row.nth(4)).to_have_text("0")
            expect(echo_row.nth(7)).to_have_text("empty")
            expect(page.locator(f'#models tr[data-model="{console.parked}"]')).to_have_count(0)

            # The plots: every job of this tenant's that succeeded (all within the hour),
            # and its generated tokens, read through GET /v1/stats/throughput on Postgres.
            done = a.get("/v1/jobs", params={"status": "succeeded", "limit": 500}).json()["data"]
            images, tokens = page.locator("#plot-images"), page.locator("#plot-tokens")
            expect(images).to_have_attribute("data-total", str(len(done)))
            expect(tokens).to_have_attribute(
                "data-total", str(sum(j["result"]["completion_tokens"] for j in done)))
            expect(images.locator("rect.bar")).to_have_count(60)
            expect(page.locator("#images-recent")).to_contain_text("images/s")
            page.select_option("#t-model", console.slow)
            expect(images).to_have_attribute("data-total", "1")  # "done first" alone
            page.screenshot(path=str(ARTIFACTS / "console-models.png"))
            for job_id in [stuck, *waiting]:
                a.post(f"/v1/jobs/{job_id}/cancel")
    finally:
        worker.stop()
    # The tenant's jobs of the whole module, every status among them (the README's picture).
    page.click("nav >> text=Jobs")
    expect(page.locator(f'#jobs tr[data-job="{stuck}"] .status')).to_have_text("cancelled")
    page.set_viewport_size({"width": 1100, "height": 560})
    page.screenshot(path=str(ARTIFACTS / "console-jobs.png"))


# --- keys (admin) ---------------------------------------------------------------------------


def test_keys_are_managed_by_an_admin_key_only(console: Console, page: Page) -> None:
    sign_in(page, console, console.a_key)
    expect(page.locator("#nav-keys")).to_be_hidden()
    page.goto(f"{console.base}/console/keys")
    expect(page.locator("#not-admin")).to_be_visible()
    expect(page.locator("#admin")).to_be_hidden()
    page.click("#signout")

    with console.client(console.b_key) as b:
        theirs = submit(b, "console: b's job, seen by an admin", model=console.parked)
    sign_in(page, console, console.admin_key)
    expect(page.locator(f'#jobs tr[data-job="{theirs}"]')).to_have_count(1)  # every tenant's
    page.click("#nav-keys")
    tenant = f"console-new-{uuid.uuid4().hex[:6]}"
    page.fill("#k-tenant", tenant)
    page.fill("#k-name", "made in the console")
    page.click("#create-form button[type=submit]")
    expect(page.locator("#created")).to_be_visible()
    new_key = page.locator("#new-key").inner_text()
    with console.client(new_key) as new:
        assert new.get("/v1/jobs").status_code == 200
        row = page.locator("#keys tbody tr", has_text="made in the console")
        expect(row).to_contain_text(tenant)

        limits = page.locator(f'#tenants tr[data-tenant="{tenant}"]')
        jobs_input = limits.locator('input[name="max_active_jobs"]')
        # Empty is the server's default, which the first row gives in words (the stack's
        # API has no active-jobs limit, and the usual cap on batches).
        expect(jobs_input).to_have_value("")
        expect(jobs_input).to_have_attribute("placeholder", "default")
        expect(page.locator("#tenants tr.defaults td")).to_have_text(
            ["server default", "unlimited", "unlimited", "100000", "10", "30d", "yes", "none",
             ""])
        # A bare 0 is refused in the page: it once meant the default.
        limits.locator('input[name="max_active_batches"]').fill("0")
        limits.locator("button").click()
        expect(page.locator("#error")).to_contain_text('say "unlimited"')
        jobs_input.fill("3")
        limits.locator('input[name="max_active_batches"]').fill("unlimited")
        limits.locator('input[name="retention_seconds"]').fill("7d")
        limits.locator('select[name="keep_images"]').select_option("false")
        limits.locator('input[name="image_url_prefixes"]').fill("s3://photos/new")
        limits.locator("button").click()
        expect(limits.locator("button")).to_have_text("Saved")
        with console.client(console.admin_key) as admin:
            [saved] = [t for t in admin.get("/v1/tenants").json()["data"] if t["id"] == tenant]
        assert (saved["max_active_jobs"], saved["max_active_batches"]) == (3, 0)
        assert (saved["submits_per_second"], saved["max_queued_batch_lines"]) == (None, None)
        assert (saved["retention_seconds"], saved["keep_images"]) == (7 * 86400, False)
        assert saved["image_url_prefixes"] == ["s3://photos/new/"]
        page.reload()  # drawn afresh from what was saved, in the words typed
        expect(limits.locator('input[name="max_active_batches"]')).to_have_value("unlimited")
        expect(limits.locator('input[name="retention_seconds"]')).to_have_value("7d")
        expect(limits.locator('select[name="keep_images"]')).to_have_value("false")
        expect(limits.locator('input[name="submits_per_second"]')).to_have_value("")

        page.once("dialog", lambda dialog: dialog.accept())
        row.locator("button", has_text="Revoke").click()
        expect(row.locator("td").nth(6)).not_to_have_text("")
        expect(row.locator("button")).to_have_count(0)
        deadline = time.monotonic() + 30  # API processes cache a key for a second
        while new.get("/v1/jobs").status_code != 401:
            assert time.monotonic() < deadline, "a key revoked in the console still works"
            time.sleep(0.2)
    page.screenshot(path=str(ARTIFACTS / "console-keys.png"))

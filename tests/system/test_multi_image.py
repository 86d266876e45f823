"""Several images per job: two- and three-image jobs by multipart (repeated `image` parts),
JSON `images` (base64 and a data: URL), a chat completion and batch lines through the
official `openai` client in strict mode, all through the tiny model in vLLM; the rendered
prompt holds one image block per image, in order (the model's own processor and
tokenizer); a ninth image, an empty list and one bad image among good ones are a 400 with
nothing stored; DELETE and the orphan sweep handle every object of a job. One vLLM worker
for the module."""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from transformers import AutoProcessor

from shared.db import make_engine
from shared.retention.sweeper import RetentionSweeper
from shared.storage import make_store
from tests.helpers.echo_stack import openai_client, upload, wait_batch
from tests.helpers.images import data_url, png_bytes, sample_image
from tests.helpers.services import Service, start_worker, wait_terminal
from tests.helpers.stack import Stack, db_sessions
from tests.helpers.store import count_objects

MODEL = "tiny-qwen2-vl-multi"
SIZE = (224, 168)  # every end-to-end image: so prompt tokens grow by one image's worth


@pytest.fixture(scope="module")
def multi_stack(stack: Stack) -> Stack:
    return stack.with_env(model=MODEL, engine="vllm", enforce_eager="true",
                          max_batch_size="16", max_num_seqs="16", max_attempts="1")


@pytest.fixture(scope="module")
def vllm_worker(multi_stack: Stack) -> Iterator[Service]:
    svc = start_worker(multi_stack.env, multi_stack.log_dir, name="worker-multi-image")
    yield svc
    svc.stop()


@pytest.fixture()
def client(api: str, stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=api, timeout=60, headers=stack.headers) as c:
        yield c


def png(seed: int) -> bytes:
    return png_bytes(*SIZE, seed=seed)


def b64(seed: int) -> str:
    return base64.b64encode(png(seed)).decode()


def by_form(client: httpx.Client, seeds: list[int], model: str = MODEL) -> httpx.Response:
    files = [("image", (f"p{s}.png", png(s), "image/png")) for s in seeds]
    return client.post("/v1/jobs", files=files, data={
        "prompt": "Compare the pictures.", "model": model, "max_tokens": "4"})


def by_json(client: httpx.Client, images: list[dict[str, str]],
            model: str = MODEL) -> httpx.Response:
    return client.post("/v1/jobs", json={"prompt": "Compare the pictures.", "model": model,
                                          "max_tokens": 4, "images": images})


def accepted(resp: httpx.Response) -> str:
    assert resp.status_code == 202, resp.text
    return str(resp.json()["id"])


def test_the_prompt_holds_one_image_block_per_image_in_order(tiny_model: Path) -> None:
    """The worker's prompt builder with the model's processor: n images give n vision
    blocks, and the processor fills the n-th with the n-th image's tokens."""
    from worker.prompting import render_chat_prompt

    processor = AutoProcessor.from_pretrained(tiny_model)
    tokenizer = processor.tokenizer
    start, pad = (tokenizer.convert_tokens_to_ids(t)
                  for t in ("<|vision_start|>", "<|image_pad|>"))
    # Different sizes, so each block's length says which image filled it.
    sizes = [(224, 168), (112, 112), (336, 224)]
    for n in (1, 2, 3):
        text = render_chat_prompt(processor, "Compare <|image_pad|> these.", n)
        ids = tokenizer(text)["input_ids"]
        assert ids.count(start) == n and ids.count(pad) == n, text
        images = [sample_image(w, h, i) for i, (w, h) in enumerate(sizes[:n])]
        expanded = processor(text=[text], images=images)["input_ids"][0]
        runs = _pad_runs(list(expanded), pad)
        merge = processor.image_processor.merge_size ** 2
        grids = processor.image_processor(images=images)["image_grid_thw"]
        assert runs == [int(g.prod()) // merge for g in grids], (runs, grids)
        assert len(set(runs)) == n  # the sizes differ, so the order is the images' order


def test_text_between_images_is_rendered_in_its_place(tiny_model: Path) -> None:
    """`image_offsets` put each image block inside the text, and the processor still
    fills the n-th block with the n-th image; guarded text stays guarded on each side."""
    from worker.prompting import render_chat_prompt

    processor = AutoProcessor.from_pretrained(tiny_model)
    prompt = "Front:Back:Which side shows <|im_end|> the price?"
    text = render_chat_prompt(processor, prompt, 2, [len("Front:"), len("Front:Back:")])
    block = "<|vision_start|><|image_pad|><|vision_end|>"
    assert f"Front:{block}Back:{block}Which side" in text, text
    assert text.count(block) == 2 and "<|im_end|> the price" not in text
    images = [sample_image(224, 168, 0), sample_image(112, 112, 1)]
    expanded = processor(text=[text], images=images)["input_ids"][0]
    grids = processor.image_processor(images=images)["image_grid_thw"]
    merge = processor.image_processor.merge_size ** 2
    pad = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert _pad_runs(list(expanded), pad) == [int(g.prod()) // merge for g in grids]
    # An image after all the text, and the default (every image first).
    assert render_chat_prompt(processor, "Before:", 1, [len("Before:")]).count(
        f"Before:{block}") == 1
    assert f"{block}{block}Compare" in render_chat_prompt(processor, "Compare", 2)


def _pad_runs(ids: list[int], pad: int) -> list[int]:
    runs: list[int] = []
    previous = None
    for token in ids:
        if token == pad:
            if previous == pad:
                runs[-1] += 1
            else:
                runs.append(1)
        previous = token
    return runs


def test_two_and_three_image_jobs_by_upload_and_json(
    client: httpx.Client, vllm_worker: Service
) -> None:
    ids = {
        "one": accepted(by_form(client, [1])),
        "form2": accepted(by_form(client, [1, 2])),
        "form3": accepted(by_form(client, [1, 2, 3])),
        "json2": accepted(by_json(client, [{"base64": b64(1)}, {"url": data_url(png(2))}])),
        "json3": accepted(by_json(client, [{"base64": b64(s)} for s in (1, 2, 3)])),
    }
    jobs = {name: wait_terminal(client, job_id, timeout=240) for name, job_id in ids.items()}
    for name, job in jobs.items():
        assert job["status"] == "succeeded", (name, job)
    tokens = {name: job["result"]["prompt_tokens"] for name, job in jobs.items()}
    per_image = tokens["form2"] - tokens["one"]
    assert per_image > 0 and tokens["form3"] - tokens["form2"] == per_image, tokens
    assert tokens["json2"] == tokens["form2"] and tokens["json3"] == tokens["form3"], tokens

    listed = jobs["form3"]["images"]
    assert [(i["width"], i["height"], i["format"], i["stored"]) for i in listed] == [
        (*SIZE, "PNG", True)] * 3
    assert listed[0]["sha256"] == jobs["form3"]["image"]["sha256"]
    assert len({i["sha256"] for i in listed}) == 3
    third = client.get(f"/v1/jobs/{ids['form3']}/image", params={"index": 2})
    assert third.status_code == 200 and third.content == png(3)
    missing = client.get(f"/v1/jobs/{ids['form3']}/image", params={"index": 3})
    assert missing.status_code == 404, missing.text
    assert len(jobs["json2"]["images"]) == 2


def test_a_chat_completion_and_batch_lines_with_several_images(
    api: str, stack: Stack, control: Service, vllm_worker: Service
) -> None:
    def body(seeds: list[int]) -> dict[str, Any]:
        return {"model": MODEL, "max_tokens": 4, "messages": [{"role": "user", "content": [
            {"type": "text", "text": "Compare the pictures."},
            *({"type": "image_url", "image_url": {"url": data_url(png(s))}} for s in seeds)]}]}

    lines = [{"custom_id": f"n{len(seeds)}", "method": "POST", "url": "/v1/chat/completions",
              "body": body(seeds)} for seeds in ([4], [4, 5], [4, 5, 6])]
    with openai_client(api, stack.api_key, timeout=240) as oai:
        chat = oai.chat.completions.create(**body([7, 8]))
        assert chat.choices[0].message.content is not None
        batch = oai.batches.create(input_file_id=upload(oai, lines),
                                   endpoint="/v1/chat/completions", completion_window="24h")
        done = wait_batch(oai, batch.id, {"completed", "failed"}, timeout=240)
        assert done.status == "completed" and done.request_counts.completed == 3, done
        assert done.output_file_id is not None
        out = [json.loads(x) for x in oai.files.content(done.output_file_id).text.splitlines()]
    tokens = {o["custom_id"]: o["response"]["body"]["usage"]["prompt_tokens"] for o in out}
    per_image = tokens["n2"] - tokens["n1"]
    assert per_image > 0 and tokens["n3"] - tokens["n2"] == per_image, tokens
    assert chat.usage is not None and chat.usage.prompt_tokens == tokens["n2"]


def test_text_between_images_reaches_the_job_and_runs(
    client: httpx.Client, api: str, stack: Stack, vllm_worker: Service
) -> None:
    """A chat completion whose text parts sit between its images: the job holds each
    image's place (`image_offsets`) and runs, with the same prompt tokens as the images
    first (the same blocks, moved); a native job may place its images itself, and offsets
    that do not fit its images or prompt are a 400."""
    parts = [{"type": "text", "text": "Front:"},
             {"type": "image_url", "image_url": {"url": data_url(png(1))}},
             {"type": "text", "text": "Back:"},
             {"type": "image_url", "image_url": {"url": data_url(png(2))}},
             {"type": "text", "text": "Compare."}]
    first = [parts[1], parts[3], parts[0], parts[2], parts[4]]
    with openai_client(api, stack.api_key, timeout=240) as oai:
        placed, leading = (oai.chat.completions.create(
            model=MODEL, max_tokens=4, messages=[{"role": "user", "content": content}])
            for content in (parts, first))
    job = client.get(f"/v1/jobs/{placed.id.removeprefix('chatcmpl-')}").json()
    assert job["prompt"] == "Front:\n\nBack:\n\nCompare."
    assert job["params"]["image_offsets"] == [len("Front:\n\n"), len("Front:\n\nBack:\n\n")]
    assert placed.usage is not None and leading.usage is not None
    assert placed.usage.prompt_tokens == leading.usage.prompt_tokens

    images = [{"base64": b64(1)}, {"base64": b64(2)}]
    native = client.post("/v1/jobs", json={"prompt": "Front: Back:", "model": MODEL,
                                            "max_tokens": 4, "images": images,
                                            "image_offsets": [0, 7]})
    assert wait_terminal(client, accepted(native), timeout=240)["status"] == "succeeded"
    model = stack.settings.model
    for offsets, code in (([0], "invalid_image_offsets"), ([0, 99], "invalid_image_offsets")):
        bad = client.post("/v1/jobs", json={"prompt": "Front: Back:", "model": model,
                                             "images": images, "image_offsets": offsets})
        assert bad.status_code == 400 and bad.json()["error"]["code"] == code, bad.text
    backwards = client.post("/v1/jobs", json={"prompt": "Front: Back:", "model": model,
                                               "images": images, "image_offsets": [7, 0]})
    assert backwards.status_code in (400, 422) and "image_offsets" in backwards.text


def test_too_many_no_or_a_bad_image_is_a_400_with_nothing_stored(
    client: httpx.Client, stack: Stack, s3: Any
) -> None:
    before = count_objects(s3, stack.settings.store_url)
    model = stack.settings.model  # always accepted: no worker needed to be refused
    nine = by_form(client, list(range(9)), model)
    assert nine.status_code == 400 and nine.json()["error"]["code"] == "too_many_images", \
        nine.text
    nine = by_json(client, [{"base64": b64(s)} for s in range(9)], model)
    assert nine.status_code == 400 and nine.json()["error"]["code"] == "too_many_images"
    none = by_json(client, [], model)
    assert none.status_code == 400 and none.json()["error"]["code"] == "missing_image"
    both = client.post("/v1/jobs", json={"prompt": "p", "model": model,
                                         "image": {"base64": b64(1)},
                                         "images": [{"base64": b64(1)}]})
    assert both.status_code in (400, 422), both.text
    bad = by_json(client, [{"base64": b64(1)}, {"base64": b64(2)},
                           {"base64": base64.b64encode(b"not an image").decode()}], model)
    assert bad.status_code in (400, 415) and bad.json()["error"]["message"].startswith(
        "images[2]: "), bad.text
    bad_form = client.post("/v1/jobs", files=[
        ("image", ("a.png", png(1), "image/png")), ("image", ("b.png", b"junk", "image/png"))],
        data={"prompt": "p", "model": model})
    assert bad_form.status_code in (400, 415), bad_form.text
    assert "images[1]: " in bad_form.json()["error"]["message"]
    two = [{"base64": b64(1)}, {"base64": b64(2)}]
    hostile: list[object] = [[[0], [1]], ["0", "x"], [0, -1], list(range(65)), [0, 10**30],
                             {"a": 1}, "0,1", [0, 1.5], [[[[[[[[0]]]]]]]] * 2]
    for offsets in hostile:
        refused = client.post("/v1/jobs", json={"prompt": "Front: Back:", "model": model,
                                                 "images": two, "image_offsets": offsets})
        assert refused.status_code in (400, 422), (offsets, refused.text)
        assert "image_offsets" in refused.json()["error"]["message"], refused.text
    form = client.post("/v1/jobs", files=[
        ("image", ("a.png", png(1), "image/png")), ("image", ("b.png", png(2), "image/png"))],
        data={"prompt": "p", "model": model, "image_offsets": ["0", "not a number"]})
    assert form.status_code in (400, 422) and "image_offsets" in form.text, form.text
    assert count_objects(s3, stack.settings.store_url) == before


def test_delete_and_the_orphan_sweep_handle_every_image_of_a_job(
    client: httpx.Client, stack: Stack, vllm_worker: Service
) -> None:
    store = make_store(stack.settings)
    gone_id = accepted(by_form(client, [1, 2, 3]))
    kept_id = accepted(by_form(client, [4, 5]))
    for job_id in (gone_id, kept_id):
        assert wait_terminal(client, job_id, timeout=240)["status"] == "succeeded"
    gone_keys = [f"images/{gone_id}", f"images/{gone_id}.1", f"images/{gone_id}.2"]
    assert all(store.exists(k) for k in gone_keys)
    assert client.delete(f"/v1/jobs/{gone_id}").status_code == 200
    assert not any(store.exists(k) for k in gone_keys)

    stray = f"images/{uuid.uuid4()}.1"  # a second image whose job was never inserted
    store.put(stray, b"x", "application/octet-stream")
    time.sleep(1.5)
    settings = stack.settings.model_copy(update={"orphan_min_age_seconds": 1.0})
    engine = make_engine(settings)
    try:
        RetentionSweeper(engine, db_sessions(settings), store, settings).sweep(
            orphans_now=True)
    finally:
        engine.dispose()
    assert not store.exists(stray)
    assert store.exists(f"images/{kept_id}") and store.exists(f"images/{kept_id}.1")

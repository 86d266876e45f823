"""Text between images: a chat body's text and image_url parts in their order become the
job's prompt and `image_offsets` (where each image sits in it), and the params hold the
offsets only when some image does not come first."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from shared.chat import parse_chat_request
from shared.jobs.params import GenerationParams


def text(words: str) -> dict[str, Any]:
    return {"type": "text", "text": words}


def image(name: str) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": f"https://example.com/{name}.png"}}


def chat(*messages: dict[str, Any]) -> dict[str, Any]:
    return {"model": "m", "messages": list(messages)}


def test_text_between_images_keeps_its_place() -> None:
    job = parse_chat_request(chat({"role": "user", "content": [
        text("Page one:"), image("p1"), text("Page two:"), image("p2"),
        text("Which page names a price?")]}))
    assert job.prompt == "Page one:\n\nPage two:\n\nWhich page names a price?"
    assert job.image_urls == ("https://example.com/p1.png", "https://example.com/p2.png")
    # Each image sits at the start of the text that follows it.
    first, second = job.params["image_offsets"]
    assert job.prompt[first:].startswith("Page two:")
    assert job.prompt[second:].startswith("Which page")


def test_an_image_after_all_the_text_sits_at_its_end() -> None:
    job = parse_chat_request(chat({"role": "user", "content": [
        image("a"), text("Before and after:"), image("b")]}))
    assert job.params["image_offsets"] == [0, len(job.prompt)]


def test_images_first_store_no_offsets() -> None:
    job = parse_chat_request(chat({"role": "user", "content": [
        image("a"), image("b"), text("Compare them.")]}))
    assert "image_offsets" not in job.params


def test_a_system_message_comes_before_the_users_images() -> None:
    job = parse_chat_request(chat(
        {"role": "system", "content": "Answer in one word."},
        {"role": "user", "content": [image("a"), text("What is it?")]}))
    assert job.prompt == "Answer in one word.\n\nWhat is it?"
    assert job.params["image_offsets"] == [len("Answer in one word.\n\n")]


def test_blank_text_parts_take_no_place() -> None:
    job = parse_chat_request(chat({"role": "user", "content": [
        text("  "), image("a"), text(""), text("Describe it.")]}))
    assert job.prompt == "Describe it." and "image_offsets" not in job.params


def test_params_take_offsets_in_order_and_store_them_only_when_they_place_an_image() -> None:
    assert GenerationParams(image_offsets=[0, 0]).stored().get("image_offsets") is None
    assert GenerationParams(image_offsets=[0, 5, 5]).stored()["image_offsets"] == [0, 5, 5]
    assert "image_offsets" not in GenerationParams().stored()
    for bad in ([3, 1], [-1], [], list(range(65))):
        with pytest.raises(ValidationError):
            GenerationParams(image_offsets=bad)

"""Greedy token ids from both engines for the same images and prompts, printed as JSON.

Run as a script (`python -m tests.helpers.parity_probe MODEL_DIR`): vLLM starts its engine core in
a child process, which needs a `__main__` guard that pytest's own process does not give.
"""

from __future__ import annotations

import json
import sys

from PIL import Image, ImageDraw

from shared.settings import EngineKind, Settings
from worker.context import load_backend
from worker.engines.base import GenerationOutput, GenerationRequest, StepBackend

PROMPTS = ["What is in this picture?", "Describe the colours.", "Count the shapes."]


def sample_image(seed: int) -> Image.Image:
    img = Image.new("RGB", (224 + 56 * seed, 168), (30 * seed % 255, 90, 200))
    draw = ImageDraw.Draw(img)
    draw.rectangle((10 * seed, 20, 120, 100), fill=(250, 200 - 40 * seed, 40))
    return img


def requests(max_tokens: int) -> list[GenerationRequest]:
    return [
        GenerationRequest(
            request_id=f"r{i}",
            prompt=prompt,
            image=sample_image(i),
            params={"max_tokens": max_tokens, "temperature": 0.0, "top_p": 1.0, "top_k": 0,
                    "seed": None, "stop": []},
        )
        for i, prompt in enumerate(PROMPTS)
    ]


def drain(backend: StepBackend, reqs: list[GenerationRequest]) -> dict[str, GenerationOutput]:
    rejected = backend.add(reqs)
    if rejected:
        raise RuntimeError(f"rejected: {rejected}")
    done: dict[str, GenerationOutput] = {}
    while backend.num_unfinished():
        for request_id, out in backend.step():
            if isinstance(out, Exception):
                raise out
            done[request_id] = out
    return done


def token_ids(engine: EngineKind, model_path: str, max_tokens: int) -> dict[str, list[int]]:
    settings = Settings(
        engine=engine, model_path=model_path, max_model_len=2048, enforce_eager=True,
        max_batch_size=4, max_num_seqs=8,
    )
    backend = load_backend(settings)
    try:
        return {rid: out.token_ids for rid, out in drain(backend, requests(max_tokens)).items()}
    finally:
        backend.shutdown()


def main() -> None:
    model_path, max_tokens = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 16
    result = {kind.value: token_ids(kind, model_path, max_tokens) for kind in EngineKind}
    print("PARITY " + json.dumps(result))


if __name__ == "__main__":
    main()

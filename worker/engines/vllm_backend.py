"""vLLM backend: a resident `LLMEngine` driven step by step by the micro-batcher.

vLLM's scheduler does continuous batching; the batcher adds requests between steps,
so new jobs join the running batch as soon as a slot frees.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

from shared.jobs.structured import INVALID, constraint_kind
from shared.settings import EngineSettings
from worker.engines.base import (
    GenerationOutput,
    GenerationRequest,
    RequestRejected,
    StepResult,
    unprocessable,
)
from worker.prompting import ChatPrompt

log = logging.getLogger(__name__)


class VllmBackend:
    def __init__(self, engine: Any, *, ignore_eos: bool = False) -> None:
        self.engine = engine
        self.tokenizer = engine.get_tokenizer()
        self.chat = ChatPrompt(self.tokenizer)
        self.ignore_eos = ignore_eos
        self.image_token_id = _image_token_id(engine)
        # Requests with a structured-output constraint, until they finish.
        self._constrained: set[str] = set()
        self._closed = threading.Event()
        threading.Thread(target=self._watch_engine_core, name="engine-watch", daemon=True).start()

    @classmethod
    def from_settings(cls, engine_settings: EngineSettings) -> VllmBackend:
        # Read by vLLM's CPU backend at import; GPU builds ignore it.
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(engine_settings.cpu_kvcache_gib))
        from vllm import EngineArgs
        from vllm.v1.engine.llm_engine import LLMEngine

        mm_kwargs = {
            k: v
            for k, v in (("min_pixels", engine_settings.min_pixels),
                         ("max_pixels", engine_settings.max_pixels))
            if v is not None
        }
        args = EngineArgs(
            model=engine_settings.model_path,
            served_model_name=[engine_settings.model],
            max_model_len=engine_settings.max_model_len,
            gpu_memory_utilization=engine_settings.gpu_memory_utilization,
            dtype=engine_settings.dtype,
            quantization=engine_settings.quantization,
            max_num_seqs=engine_settings.max_num_seqs,
            enforce_eager=engine_settings.enforce_eager,
            limit_mm_per_prompt={"image": engine_settings.limit_mm_per_prompt, "video": 0},
            mm_processor_kwargs=mm_kwargs or None,
            scheduling_policy="priority",
            disable_log_stats=True,
            # xgrammar alone, the library intake compiles constraints with: "auto" would
            # fall back to other backends for schemas it refuses, each its own dialect.
            # Compact JSON: with whitespace allowed between tokens, a weak model can spend
            # its max_tokens on blanks and return JSON cut short.
            structured_outputs_config={"backend": "xgrammar", "disable_any_whitespace": True},
        )
        return cls(LLMEngine.from_engine_args(args), ignore_eos=engine_settings.ignore_eos)

    def add(self, requests: list[GenerationRequest]) -> list[StepResult]:
        from vllm.exceptions import VLLMValidationError
        from vllm.v1.engine.exceptions import EngineDeadError

        rejected: list[StepResult] = []
        for request in requests:
            constrained = constraint_kind(request.params) is not None
            try:
                self.engine.add_request(
                    request.request_id,
                    {
                        "prompt": self.chat.render(request.prompt, len(request.images),
                                                  request.params.get("image_offsets")),
                        # A list for several: the n-th fills the prompt's n-th image block.
                        "multi_modal_data": {"image": request.image if not request.extra_images
                                             else request.images},
                    },
                    self._sampling_params(request.params),
                    priority=int(request.params.get("priority", 0)),
                )
            except VLLMValidationError as exc:
                code = ("prompt_too_long" if "maximum model length" in str(exc)
                        else INVALID if constrained else "invalid_params")
                rejected.append((request.request_id, RequestRejected(code, str(exc))))
                continue
            except EngineDeadError:
                raise
            except Exception as exc:  # input processing of this one request failed
                log.warning("request %s rejected by the processor", request.request_id, exc_info=True)
                rejected.append((request.request_id, unprocessable(exc)))
                continue
            if constrained:
                self._constrained.add(request.request_id)
        return rejected

    def step(self) -> list[StepResult]:
        finished: list[StepResult] = []
        for out in self.engine.step():
            if not out.finished:
                continue
            completion = out.outputs[0]
            constrained = out.request_id in self._constrained
            self._constrained.discard(out.request_id)
            if constrained and completion.finish_reason == "error":
                # The engine could not compile the job's grammar (intake compiles it too,
                # but a slim API without xgrammar checks its shape only).
                finished.append((out.request_id, RequestRejected(
                    INVALID, "the engine could not compile the job's structured output "
                    "constraint into a grammar")))
                continue
            ids = list(completion.token_ids)
            eos = self.tokenizer.eos_token_id
            if ids and ids[-1] == eos and completion.finish_reason == "stop":
                ids = ids[:-1]
            finished.append(
                (
                    out.request_id,
                    GenerationOutput(
                        text=completion.text,
                        token_ids=ids,
                        prompt_tokens=len(out.prompt_token_ids or []),
                        completion_tokens=len(completion.token_ids),
                        finish_reason=completion.finish_reason or "stop",
                        image_tokens=self._image_tokens(out.prompt_token_ids),
                    ),
                )
            )
        return finished

    def _image_tokens(self, prompt_token_ids: list[int] | None) -> int | None:
        """The image's placeholders in the prompt, which the processor expanded to one per
        patch group: a count in C over a list of a few thousand ids at most."""
        if self.image_token_id is None or prompt_token_ids is None:
            return None
        ids = prompt_token_ids if isinstance(prompt_token_ids, list) else list(prompt_token_ids)
        return ids.count(self.image_token_id)

    def abort(self, request_ids: list[str]) -> None:
        if request_ids:
            self._constrained.difference_update(request_ids)
            self.engine.abort_request(request_ids)

    def num_unfinished(self) -> int:
        return self.engine.get_num_unfinished_requests()

    def _watch_engine_core(self) -> None:
        """Wakes a `step()` blocked on a dead engine core.

        The sync client marks the engine dead when its core process exits but leaves
        `get_output()` waiting forever; the async client queues EngineDeadError instead.
        Doing the same here turns a hang into an error the batcher recovers from.
        """
        from vllm.v1.engine.exceptions import EngineDeadError

        core = getattr(self.engine, "engine_core", None)
        resources = getattr(core, "resources", None)
        outputs = getattr(core, "outputs_queue", None)
        if resources is None or outputs is None:
            return
        while not self._closed.wait(0.5):
            if getattr(resources, "engine_dead", False):
                log.error("vLLM engine core died")
                outputs.put_nowait(EngineDeadError())
                return

    def shutdown(self) -> None:
        self._closed.set()
        core = getattr(self.engine, "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()

    def _sampling_params(self, params: dict[str, Any]) -> Any:
        from vllm import SamplingParams

        top_k = int(params.get("top_k", -1))
        return SamplingParams(
            max_tokens=int(params["max_tokens"]),
            temperature=float(params.get("temperature", 0.0)),
            top_p=float(params.get("top_p", 1.0)),
            top_k=top_k if top_k > 0 else 0,
            seed=params.get("seed"),
            stop=list(params.get("stop") or []) or None,
            # A grammar ends the answer itself; ignoring EOS would run on past it.
            ignore_eos=self.ignore_eos and constraint_kind(params) is None,
            skip_special_tokens=True,
            structured_outputs=_structured_outputs(params),
        )


def _structured_outputs(params: dict[str, Any]) -> Any:
    """vLLM's form of the job's constraint (shared/jobs/structured.py), or None. Each
    request carries its own: requests with different schemas run in one batch, and the
    engine's xgrammar compiler caches each grammar by its text."""
    kind = constraint_kind(params)
    if kind is None:
        return None
    from vllm.sampling_params import StructuredOutputsParams

    if kind == "json_schema":
        return StructuredOutputsParams(json=params["response_format"]["json_schema"]["schema"])
    if kind == "json_object":
        return StructuredOutputsParams(json_object=True)
    if kind == "choices":
        return StructuredOutputsParams(choice=list(params["choices"]))
    return StructuredOutputsParams(regex=params["regex"])


def _image_token_id(engine: Any) -> int | None:
    """The id of the model's image placeholder token (Qwen2-VL's <|image_pad|>), if its
    config names one."""
    config = getattr(getattr(engine, "model_config", None), "hf_config", None)
    token_id = getattr(config, "image_token_id", None)
    return token_id if isinstance(token_id, int) else None

"""The one workload every benchmark arm runs: same model, images, prompts and lengths."""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

from shared.settings import Settings

PROMPTS = [
    "Describe this image.",
    "What objects are in the picture?",
    "What colours dominate this photo?",
    "Write a caption for this image.",
]


@dataclass(frozen=True)
class Workload:
    model_path: Path
    jobs: int = int(os.environ.get("BENCH_JOBS", "192"))
    naive_jobs: int = int(os.environ.get("BENCH_NAIVE_JOBS", "24"))
    light_jobs: int = int(os.environ.get("BENCH_LIGHT_JOBS", "20"))
    light_rounds: int = int(os.environ.get("BENCH_LIGHT_ROUNDS", "3"))
    # Worker-only and API-only arms: enough work that start-up and timer noise vanish.
    echo_jobs: int = int(os.environ.get("BENCH_ECHO_JOBS", "1000"))
    # The task events' cost is a few percent of a drain that lasts seconds: more jobs and
    # rounds than the ceiling's own, so that its run-to-run spread does not decide it.
    event_jobs: int = int(os.environ.get("BENCH_EVENT_JOBS", "3000"))
    event_rounds: int = int(os.environ.get("BENCH_EVENT_ROUNDS", "4"))
    uploads: int = int(os.environ.get("BENCH_UPLOADS", "600"))
    upload_threads: int = int(os.environ.get("BENCH_UPLOAD_THREADS", "8"))
    poll_jobs: int = int(os.environ.get("BENCH_POLL_JOBS", "200"))
    poll_wave: int = int(os.environ.get("BENCH_POLL_WAVE", "8"))
    held_polls: tuple[int, ...] = tuple(
        int(n) for n in os.environ.get("BENCH_HELD_POLLS", "300,1000").split(","))
    submits: int = int(os.environ.get("BENCH_SUBMITS", "40"))
    # The simulated GPU engine's arm: its sequence limit and step, and how many full waves
    # of sequences are queued (whole waves, so a perfectly fed engine drains them at exactly
    # its top rate).
    simulated_seqs: int = int(os.environ.get("BENCH_SIMULATED_SEQS", "256"))
    simulated_step_ms: float = float(os.environ.get("BENCH_SIMULATED_STEP_MS", "15"))
    simulated_waves: int = int(os.environ.get("BENCH_SIMULATED_WAVES", "16"))
    max_tokens: int = 64
    # 224x168 gives 48 vision tokens; bigger images are dominated by the CPU vision kernels.
    width: int = 224
    height: int = 168
    max_batch_size: int = 64

    def prompt(self, i: int) -> str:
        return PROMPTS[i % len(PROMPTS)]

    def image(self, i: int) -> Image.Image:
        """Distinct pixels per request, so no engine cache can skip the vision encoder."""
        img = Image.new("RGB", (self.width, self.height), (i * 37 % 256, i * 91 % 256, 200))
        draw = ImageDraw.Draw(img)
        x = i % (self.width - 40)
        draw.ellipse((x, 10, x + 40, 50 + i % 60), fill=(250, (i * 13) % 256, 30))
        return img

    def png(self, i: int) -> bytes:
        buf = io.BytesIO()
        self.image(i).save(buf, format="PNG")
        return buf.getvalue()

    def params(self) -> dict[str, object]:
        return {"max_tokens": self.max_tokens, "temperature": 0.0, "top_p": 1.0, "top_k": -1,
                "seed": None, "stop": []}

    def engine_settings(self, engine: str) -> Settings:
        """Engine settings shared by the raw arms and the system's worker."""
        return Settings(
            engine=engine,
            model_path=str(self.model_path),
            max_model_len=2048,
            enforce_eager=True,
            max_num_seqs=self.max_batch_size,
            max_batch_size=self.max_batch_size,
            cpu_kvcache_gib=2,
            ignore_eos=True,
        )

    def worker_env(self) -> dict[str, str]:
        s = self.engine_settings("vllm")
        return {
            "VLMQ_ENGINE": "vllm",
            "VLMQ_MODEL_PATH": s.model_path,
            "VLMQ_MAX_MODEL_LEN": str(s.max_model_len),
            "VLMQ_ENFORCE_EAGER": "true",
            "VLMQ_MAX_NUM_SEQS": str(s.max_num_seqs),
            "VLMQ_MAX_BATCH_SIZE": str(s.max_batch_size),
            "VLMQ_CPU_KVCACHE_GIB": str(s.cpu_kvcache_gib),
            "VLMQ_IGNORE_EOS": "true",
            "VLMQ_MAX_TOKENS_LIMIT": str(self.max_tokens),
        }

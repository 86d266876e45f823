"""`make gpu-check`: the worker's engine path against its engine run raw, on real hardware.

On a machine with an NVIDIA GPU (vLLM optional: without it the transformers engine runs),
this builds a random-weight model of Qwen2-VL-2B's shape (no download: see the
`qwen2-vl-2b` preset in shared/devtools/tiny_model.py), then runs the same camera-sized
images through two arms, each in a process of its own:

- raw: the engine as a plain user drives it; vLLM's `LLM.generate` over every request at
  once, or transformers' padded `generate` in batches of `--batch`;
- worker: what `vlmq worker` runs, the micro-batcher (worker/batcher.py) in front of the
  backend `load_backend` builds from the worker's settings (worker/engines/), fed every
  request at once.

Both arms see the same prompts and the same pixels: the images are JPEGs decoded and
bounded as the worker's intake does (`shared.images.prepare_image`, VLMQ_WORKER_MAX_PIXELS)
before the clock starts, since the worker decodes on other threads than the engine's.
EOS is ignored so every request generates exactly `--max-tokens`. Each arm prints
images/s and tokens/s, and the GPU's utilization and memory sampled while it ran (pynvml
if installed, else `nvidia-smi`); the ratio worker / raw is what the worker costs its
engine. This is a measuring tool for a GPU machine, never part of CI; tests/system/
test_gpu_check.py runs it on the tiny model on CPU so it keeps working.

    python scripts/gpu_check.py                       # 2B shape, 300 images, cuda, auto engine
    python scripts/gpu_check.py --shape tiny --device cpu --images 8 --engine transformers
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # runs from a checkout, installed or not
    sys.path.insert(0, str(ROOT))

# --shape → shared/devtools/tiny_model.py preset, and the folder a build is kept in.
SHAPES = {"2b": ("qwen2-vl-2b", "gpu-check-qwen2-vl-2b"), "tiny": ("tiny", "tiny-qwen2-vl")}
PROMPTS = [
    "Describe this image.",
    "What objects are in the picture?",
    "What colours dominate this photo?",
    "Write a caption for this image.",
]
WARM_UP_IMAGES = 8
SAMPLE_SECONDS = 0.1


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="gpu_check", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=300, help="timed images per arm")
    parser.add_argument("--max-tokens", type=int, default=32, help="tokens generated per image")
    parser.add_argument("--engine", choices=["auto", "vllm", "transformers"], default="auto",
                        help="auto: vLLM when it can be found, else transformers")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda",
                        help="cpu hides the GPUs from both arms (a smoke run)")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="2b",
                        help="2b: Qwen2-VL-2B's shape; tiny: the test model")
    parser.add_argument("--model-dir", type=Path, default=None,
                        help="where the random-weight model is built or found "
                             "(default .vlmq/models/<shape's folder>)")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=960)
    parser.add_argument("--batch", type=int, default=64,
                        help="VLMQ_MAX_BATCH_SIZE and VLMQ_MAX_NUM_SEQS for the worker, the "
                             "same sequence limit (or batch) for the raw engine")
    parser.add_argument("--max-model-len", type=int, default=4096)
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    parser.add_argument("--out", type=Path, default=None, help="also write the results as JSON")
    # Internal: one arm, or the model build, in a process of its own.
    parser.add_argument("--arm", choices=["build", "raw", "worker"], help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--photos", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# --- the parent: build, photos, arms, report -----------------------------------------------

def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.arm:
        run_arm(args)
        return
    args.engine = resolve_engine(args.engine)
    preset, folder = SHAPES[args.shape]
    args.model_dir = (args.model_dir or Path(".vlmq/models") / folder).resolve()
    log(f"model: {preset} shape, random weights, in {args.model_dir}")
    # In a child, so that this process never holds a CUDA context while the arms run.
    child(args, "build", Path(os.devnull))
    args.photos = write_photos(args.width, args.height, WARM_UP_IMAGES + args.images)
    results = {}
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        for arm in ("raw", "worker"):
            log(f"{arm} arm ({args.engine})")
            results[arm] = child(args, arm, Path(tmp) / f"{arm}.json")
    report = summary(args, preset, results)
    print(format_report(report))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")


def resolve_engine(choice: str) -> str:
    if choice != "auto":
        return choice
    return "vllm" if importlib.util.find_spec("vllm") is not None else "transformers"


def child(args: argparse.Namespace, arm: str, result: Path) -> dict[str, Any]:
    argv = [sys.executable, str(Path(__file__).resolve()), "--arm", arm, "--result", str(result),
            "--engine", args.engine, "--device", args.device, "--shape", args.shape,
            "--model-dir", str(args.model_dir), "--images", str(args.images),
            "--max-tokens", str(args.max_tokens), "--batch", str(args.batch),
            "--max-model-len", str(args.max_model_len),
            "--gpu-memory-utilization", str(args.gpu_memory_utilization)]
    if args.photos:
        argv += ["--photos", str(args.photos)]
    # The worker's settings come from these arguments alone: a VLMQ_* variable in the
    # caller's shell would reach the worker arm and not the raw one.
    env = {k: v for k, v in os.environ.items() if not k.startswith("VLMQ_")}
    env["HF_HUB_OFFLINE"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    if args.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    proc = subprocess.run(argv, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"gpu-check: the {arm} step exited with {proc.returncode}")
    return json.loads(result.read_text()) if arm != "build" else {}


def write_photos(width: int, height: int, n: int) -> Path:
    """JPEGs of a camera's size and grain (distinct pixels each, so no engine cache skips
    the vision encoder), kept between runs."""
    import numpy as np
    from PIL import Image, ImageDraw

    folder = Path(".vlmq/gpu-check") / f"photos-{width}x{height}"
    folder.mkdir(parents=True, exist_ok=True)
    missing = [i for i in range(n) if not (folder / f"photo-{i:04d}.jpg").exists()]
    if missing:
        log(f"writing {len(missing)} {width}x{height} photos to {folder}")
        rng = np.random.default_rng(0)
        y = np.linspace(0, 1, height, dtype=np.float32)[:, None, None]
        x = np.linspace(0, 1, width, dtype=np.float32)[None, :, None]
        base = 60 + 120 * x + 60 * y + rng.normal(0, 8, (height, width, 3)).astype(np.float32)
        grain = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
    for i in missing:
        img = grain.copy()
        draw = ImageDraw.Draw(img)
        for k in range(4):  # shapes placed and coloured by i
            cx, cy = (i * 97 + k * 311) % width, (i * 53 + k * 173) % height
            r = 40 + (i * 7 + k * 29) % (min(width, height) // 4)
            draw.ellipse((cx - r, cy - r, cx + r, cy + r),
                         fill=((i * 37 + k * 80) % 256, (i * 91) % 256, (k * 60 + i) % 256))
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=90)
        (folder / f"photo-{i:04d}.jpg").write_bytes(buf.getvalue())
    return folder.resolve()


def summary(args: argparse.Namespace, preset: str, results: dict[str, Any]) -> dict[str, Any]:
    raw, worker = results["raw"], results["worker"]
    return {
        "shape": preset, "engine": args.engine, "device": raw["device"],
        "versions": raw["versions"], "images": args.images, "max_tokens": args.max_tokens,
        "width": args.width, "height": args.height, "worker_max_pixels": raw["max_pixels"],
        "batch": args.batch, "raw": raw, "worker": worker,
        "worker_over_raw": worker["images_per_s"] / raw["images_per_s"],
    }


def format_report(r: dict[str, Any]) -> str:
    versions = ", ".join(f"{k} {v}" for k, v in r["versions"].items())
    names = {
        "raw": "raw vLLM (LLM.generate)" if r["engine"] == "vllm"
        else "raw transformers (generate)",
        "worker": "worker engine path (batcher + backend)",
    }
    lines = [
        f"gpu-check: {r['shape']} shape, random weights; {r['engine']} engine on {r['device']}",
        f"  {versions}",
        f"  {r['images']} images {r['width']}x{r['height']} (bounded to "
        f"{r['worker_max_pixels']} pixels as the worker does), {r['max_tokens']} tokens each, "
        f"EOS ignored, batch {r['batch']}",
        f"  {'arm':<40} {'images/s':>9} {'tokens/s':>10} {'GPU util mean/max':>18} "
        f"{'GPU memory max':>15}",
    ]
    for arm in ("raw", "worker"):
        a = r[arm]
        gpu = a["gpu"]
        util = (f"{gpu['util_mean']:.0f}% / {gpu['util_max']:.0f}%" if gpu["samples"]
                else f"n/a ({gpu['source']})")
        memory = f"{gpu['memory_max_mib']:.0f} MiB" if gpu["samples"] else "n/a"
        lines.append(f"  {names[arm]:<40} {a['images_per_s']:>9.2f} {a['tokens_per_s']:>10.1f} "
                     f"{util:>18} {memory:>15}")
    lines.append(f"  worker / raw: {r['worker_over_raw']:.2f} (images/s)")
    return "\n".join(lines)


def log(message: str) -> None:
    print(f"gpu-check: {message}", file=sys.stderr, flush=True)


# --- an arm, in its own process --------------------------------------------------------------

def run_arm(args: argparse.Namespace) -> None:
    if args.arm == "build":
        from shared.devtools.tiny_model import build_tiny_model

        device = "cuda" if args.device == "cuda" and _cuda() else "cpu"
        build_tiny_model(args.model_dir, size=SHAPES[args.shape][0], device=device)
        return
    settings = worker_settings(args)
    photos = sorted(args.photos.glob("photo-*.jpg"))[: WARM_UP_IMAGES + args.images]
    from shared.images import prepare_image

    images = [prepare_image(p.read_bytes(), settings.worker_max_pixels) for p in photos]
    warm, timed = images[:WARM_UP_IMAGES], images[WARM_UP_IMAGES:]
    run = {"raw": {"vllm": raw_vllm, "transformers": raw_transformers},
           "worker": {"vllm": worker_path, "transformers": worker_path}}[args.arm][args.engine]
    result = run(settings, args.max_tokens, warm, timed)
    result.update(images=len(timed), max_pixels=settings.worker_max_pixels,
                  images_per_s=len(timed) / result["seconds"],
                  tokens_per_s=result["tokens"] / result["seconds"],
                  device=_device_name(), versions=_versions(args.engine))
    args.result.write_text(json.dumps(result))
    _exit_leaving_nothing()


def worker_settings(args: argparse.Namespace) -> Any:
    from shared.settings import Settings

    cpu = args.device == "cpu"
    return Settings(
        engine=args.engine, model="gpu-check", model_path=str(args.model_dir),
        max_model_len=args.max_model_len, max_batch_size=args.batch, max_num_seqs=args.batch,
        gpu_memory_utilization=args.gpu_memory_utilization, ignore_eos=True,
        # CUDA graphs on a GPU, as a worker runs by default; the CPU backend needs eager.
        enforce_eager=cpu, cpu_kvcache_gib=2,
    )


def params(max_tokens: int) -> dict[str, Any]:
    return {"max_tokens": max_tokens, "temperature": 0.0, "top_p": 1.0, "top_k": -1,
            "seed": None, "stop": []}


def worker_path(
    settings: Any, max_tokens: int, warm: list[Any], timed: list[Any]
) -> dict[str, Any]:
    """What `vlmq worker` builds in WorkerContext.start, fed as its intake feeds it."""
    from worker.batcher import BatchingEngine
    from worker.context import load_backend
    from worker.engines.base import GenerationRequest
    from worker.metrics import WorkerMetrics
    from worker.warmup import warm_up

    engine = BatchingEngine(
        lambda: load_backend(settings), max_batch_size=settings.max_batch_size,
        max_wait_ms=settings.max_wait_ms, metrics=WorkerMetrics(settings.model),
        max_job_seconds=settings.max_job_seconds)
    warm_up(engine, settings)

    def submit_all(images: list[Any], tag: str) -> list[Any]:
        futures = [engine.submit(GenerationRequest(f"{tag}{i}", PROMPTS[i % len(PROMPTS)], img,
                                                   params(max_tokens)))
                   for i, img in enumerate(images)]
        return [f.result() for f in futures]

    submit_all(warm, "warm-")  # camera-sized shapes too, as the raw arm warms with them
    with GpuSampler() as gpu:
        start = time.perf_counter()
        outs = submit_all(timed, "job-")
        seconds = time.perf_counter() - start
    engine.shutdown()
    return {"seconds": seconds, "tokens": sum(o.completion_tokens for o in outs),
            "gpu": gpu.result()}


def raw_vllm(
    settings: Any, max_tokens: int, warm: list[Any], timed: list[Any]
) -> dict[str, Any]:
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(settings.cpu_kvcache_gib))
    from vllm import LLM, SamplingParams

    from worker.prompting import render_chat_prompt

    llm = LLM(model=settings.model_path, max_model_len=settings.max_model_len,
              max_num_seqs=settings.max_num_seqs, enforce_eager=settings.enforce_eager,
              gpu_memory_utilization=settings.gpu_memory_utilization, dtype=settings.dtype,
              limit_mm_per_prompt={"image": 1, "video": 0}, disable_log_stats=True)
    tokenizer = llm.get_tokenizer()
    sampling = SamplingParams(max_tokens=max_tokens, ignore_eos=True,
                              temperature=0.0)

    def inputs(images: list[Any]) -> list[dict[str, Any]]:
        return [{"prompt": render_chat_prompt(tokenizer, PROMPTS[i % len(PROMPTS)]),
                 "multi_modal_data": {"image": img}} for i, img in enumerate(images)]

    llm.generate(inputs(warm), sampling, use_tqdm=False)
    prompts = inputs(timed)
    with GpuSampler() as gpu:
        start = time.perf_counter()
        outs = llm.generate(prompts, sampling, use_tqdm=False)
        seconds = time.perf_counter() - start
    llm.llm_engine.engine_core.shutdown()
    return {"seconds": seconds, "tokens": sum(len(o.outputs[0].token_ids) for o in outs),
            "gpu": gpu.result()}


def raw_transformers(
    settings: Any, max_tokens: int, warm: list[Any], timed: list[Any]
) -> dict[str, Any]:
    """transformers as its model cards show it, batched: the processor over a batch, then
    one padded `generate`, on the device and in the dtype the worker's backend picks."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from worker.prompting import render_chat_prompt

    device = "cuda" if torch.cuda.is_available() else "cpu"
    processor = AutoProcessor.from_pretrained(settings.model_path)
    processor.tokenizer.padding_side = "left"
    model = AutoModelForImageTextToText.from_pretrained(
        settings.model_path, dtype=torch.bfloat16 if device == "cuda" else torch.float32)
    model.to(device).eval()

    @torch.inference_mode()
    def run(images: list[Any]) -> int:
        tokens = 0
        for at in range(0, len(images), settings.max_batch_size):
            batch = images[at:at + settings.max_batch_size]
            texts = [render_chat_prompt(processor, PROMPTS[(at + i) % len(PROMPTS)])
                     for i in range(len(batch))]
            inputs = processor(text=texts, images=batch, padding=True,
                               return_tensors="pt").to(device)
            out = model.generate(**inputs, max_new_tokens=max_tokens,
                                 min_new_tokens=max_tokens, do_sample=False,
                                 pad_token_id=processor.tokenizer.pad_token_id)
            tokens += (out.shape[1] - inputs["input_ids"].shape[1]) * len(batch)
        if device == "cuda":
            torch.cuda.synchronize()
        return tokens

    run(warm)
    with GpuSampler() as gpu:
        start = time.perf_counter()
        tokens = run(timed)
        seconds = time.perf_counter() - start
    return {"seconds": seconds, "tokens": tokens, "gpu": gpu.result()}


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _device_name() -> str:
    if os.environ.get("CUDA_VISIBLE_DEVICES") == "":
        return "cpu"
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return "cpu"


def _versions(engine: str) -> dict[str, str]:
    import importlib.metadata

    from worker.engines.vllm_version import installed_vllm

    found: dict[str, str] = {}
    if engine == "vllm" and (vllm := installed_vllm()) is not None:
        found[vllm.distribution or "vllm"] = vllm.version or "(unknown)"
    for name in ("torch", "transformers"):
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return found


def _exit_leaving_nothing() -> None:
    """vLLM's helper threads can keep the interpreter alive after the work is done: exit
    without them, but never leave an engine process behind."""
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        import psutil

        for proc in psutil.Process().children(recursive=True):
            proc.kill()
    except ImportError:
        pass
    os._exit(0)


# --- GPU utilization while an arm runs ----------------------------------------------------------

class GpuSampler:
    """Samples the arm's GPU every SAMPLE_SECONDS on a thread: pynvml when installed (vLLM
    brings it), else a streaming `nvidia-smi`; on CPU runs, nothing."""

    def __init__(self) -> None:
        self.util: list[float] = []
        self.memory: list[float] = []
        self.source = "cpu run"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._smi: subprocess.Popen[str] | None = None

    def __enter__(self) -> GpuSampler:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        if visible == "":
            return self
        index = (visible or "0").split(",")[0].strip()
        try:
            import pynvml

            pynvml.nvmlInit()
            handle = (pynvml.nvmlDeviceGetHandleByUUID(index) if index.startswith("GPU-")
                      else pynvml.nvmlDeviceGetHandleByIndex(int(index)))
            self.source = "pynvml"
            self._thread = threading.Thread(target=self._nvml, args=(pynvml, handle),
                                            daemon=True)
        except Exception:
            if shutil.which("nvidia-smi") is None:
                self.source = "no pynvml or nvidia-smi"
                return self
            self.source = "nvidia-smi"
            self._smi = subprocess.Popen(
                ["nvidia-smi", "-i", index, "--query-gpu=utilization.gpu,memory.used",
                 "--format=csv,noheader,nounits", f"-lms={int(SAMPLE_SECONDS * 1000)}"],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            self._thread = threading.Thread(target=self._read_smi, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._smi is not None:
            self._smi.terminate()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _nvml(self, pynvml: Any, handle: Any) -> None:
        while not self._stop.wait(SAMPLE_SECONDS):
            self.util.append(float(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu))
            self.memory.append(pynvml.nvmlDeviceGetMemoryInfo(handle).used / 2**20)

    def _read_smi(self) -> None:
        assert self._smi is not None and self._smi.stdout is not None
        for line in self._smi.stdout:
            try:
                util, memory = (float(v) for v in line.split(","))
            except ValueError:
                continue
            self.util.append(util)
            self.memory.append(memory)

    def result(self) -> dict[str, Any]:
        n = len(self.util)
        return {"source": self.source, "samples": n,
                "util_mean": sum(self.util) / n if n else None,
                "util_max": max(self.util) if n else None,
                "memory_max_mib": max(self.memory) if n else None}


if __name__ == "__main__":
    main()

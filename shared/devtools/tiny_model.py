"""A random-init Qwen2-VL built offline, for tests, the demo and benchmarks.

No model hub is reachable here, so the test model is made in-process: a byte-level BPE
tokenizer trained on a small built-in corpus, a Qwen2-VL config sized by a preset, and
random weights. The folder loads like a real checkpoint in transformers and in vLLM.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

MARKER = "vlmq-tiny-model.json"
FORMAT_VERSION = 1

SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

# Qwen2-VL's own template, with the image and video parts it accepts.
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Images are resized to at most this many pixels: 448*448 gives at most 256 image tokens.
MIN_PIXELS = 56 * 56
MAX_PIXELS = 448 * 448


@dataclass(frozen=True)
class Preset:
    text_hidden: int
    text_layers: int
    text_heads: int
    text_kv_heads: int
    text_intermediate: int
    vision_embed: int
    vision_depth: int
    vision_heads: int
    vocab_target: int = 1024
    # The model's vocabulary, when larger than the trained tokenizer's: the tokenizer is
    # padded with plain entries up to it, so every id a random model emits decodes.
    vocab_size: int | None = None
    tie_embeddings: bool = False
    max_positions: int = 4096
    dtype: str = "float32"
    max_pixels: int = MAX_PIXELS




# Text head_dim is hidden/heads = 64 in both: vLLM's CPU attention rejects smaller ones.
PRESETS: dict[str, Preset] = {
    "tiny": Preset(128, 2, 2, 2, 256, vision_embed=64, vision_depth=2, vision_heads=4),
    "bench": Preset(512, 4, 8, 2, 1024, vision_embed=256, vision_depth=4, vision_heads=4),
    # Qwen/Qwen2-VL-2B-Instruct's shape (its config.json): text hidden 1536, 28 layers,
    # 12 heads (head_dim 128), 2 KV heads, MLP 8960, vocabulary 151936, tied embeddings;
    # vision 32 blocks of width 1280, 16 heads, merged into the text width; bfloat16.
    # Random weights give its real compute cost (make gpu-check) without a download.
    "qwen2-vl-2b": Preset(1536, 28, 12, 2, 8960, vision_embed=1280, vision_depth=32,
                          vision_heads=16, vocab_size=151_936, tie_embeddings=True,
                          max_positions=32_768, dtype="bfloat16", max_pixels=12_845_056),
}

_WORDS = {
    "adj": "small large red blue yellow white black quiet bright old young green heavy soft "
    "tall short dark happy wooden narrow empty crowded famous strange beautiful".split(),
    "noun": "cat dog house tree river city child window table garden bird road picture "
    "mountain boat camera person flower street horse kitchen book light woman man bicycle "
    "bridge forest beach chair computer phone train station market building sign shadow "
    "cloud field fence basket bottle painting student teacher doctor farmer island".split(),
    "verb": "sees holds shows crosses watches carries follows finds paints describes opens "
    "touches reaches leaves enters passes climbs visits".split(),
    "place": "in the park|on the hill|near the water|under a blue sky|at night|"
    "in the morning|beside the door|on a busy street".split("|"),
}
_SENTENCES = [
    "You are a helpful assistant.",
    "Describe this image in detail.",
    "What is shown in the picture? Answer in one sentence.",
    "The photo shows a scene with people, animals and buildings.",
    "There are 3 apples, 12 oranges and 2024 grains of rice on the table!",
    "Is it raining? No, the weather is sunny and warm; the sky is clear.",
]


def build_tiny_model(
    out_dir: Path, *, size: str = "tiny", seed: int = 0, device: str = "cpu"
) -> Path:
    """Builds the model into `out_dir` (unless a completed build of it is there) and returns it.

    `device` is where the random weights are drawn: "cuda" makes a 2B model in seconds
    rather than the minutes a CPU takes.
    """
    if size not in PRESETS:
        raise ValueError(f"unknown size {size!r}; choose one of {sorted(PRESETS)}")
    out_dir = Path(out_dir)
    if _is_complete(out_dir, size, seed):
        return out_dir
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    try:
        _write_model(staging, PRESETS[size], seed, device)
        marker = {"size": size, "seed": seed, "format": FORMAT_VERSION}
        (staging / MARKER).write_text(json.dumps(marker) + "\n")
        _publish(staging, out_dir, size, seed)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir


def _is_complete(out_dir: Path, size: str, seed: int) -> bool:
    try:
        marker = json.loads((out_dir / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return marker == {"size": size, "seed": seed, "format": FORMAT_VERSION}


def _publish(staging: Path, out_dir: Path, size: str, seed: int) -> None:
    """Moves the finished build into place; the marker always arrives last."""
    staging.chmod(0o755)  # mkdtemp and some writers create private files
    for path in staging.iterdir():
        path.chmod(0o644)
    try:
        os.rename(staging, out_dir)  # atomic when out_dir is absent or empty
        return
    except OSError:
        pass
    if _is_complete(out_dir, size, seed):  # a concurrent build finished first
        return
    # out_dir holds other files: replace ours one by one, invalidating any old marker first.
    (out_dir / MARKER).unlink(missing_ok=True)
    for path in sorted(staging.iterdir(), key=lambda p: p.name == MARKER):
        os.replace(path, out_dir / path.name)


def _write_model(out_dir: Path, preset: Preset, seed: int, device: str = "cpu") -> None:
    import torch
    from transformers import (
        GenerationConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
        Qwen2VLVideoProcessor,
    )

    tokenizer = _train_tokenizer(preset.vocab_target, seed, pad_to=preset.vocab_size)
    ids = {tok: tokenizer.convert_tokens_to_ids(tok) for tok in SPECIAL_TOKENS}
    config = _model_config(preset, len(tokenizer), ids)
    dtype = getattr(torch, preset.dtype)
    with torch.random.fork_rng(devices=[]), torch.device(device):
        torch.manual_seed(seed)
        # Built in its own dtype: a 2B model in float32 first would need twice the memory.
        default_dtype = torch.get_default_dtype()
        torch.set_default_dtype(dtype)
        try:
            model = Qwen2VLForConditionalGeneration(config).to(dtype).eval()
        finally:
            torch.set_default_dtype(default_dtype)
    model.generation_config = GenerationConfig(
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]],
        pad_token_id=ids["<|endoftext|>"],
    )
    model.save_pretrained(out_dir)
    del model

    pixels = {"min_pixels": MIN_PIXELS, "max_pixels": preset.max_pixels}
    processor = Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessor(**pixels),
        # Explicit, so transformers does not warn about its default changing in v5.22.
        video_processor=Qwen2VLVideoProcessor(**pixels, cap_pixels_per_frame=True),
        tokenizer=tokenizer,
        chat_template=CHAT_TEMPLATE,
    )
    processor.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def _model_config(preset: Preset, vocab_size: int, ids: dict[str, int]):
    from transformers import Qwen2VLConfig

    head_dim = preset.text_hidden // preset.text_heads
    # M-RoPE splits the head_dim/2 rotary frequencies 2:3:3 over (time, height, width), as Qwen.
    unit = head_dim // 16
    mrope_section = [2 * unit, 3 * unit, 3 * unit]
    text = {
        "vocab_size": vocab_size,
        "hidden_size": preset.text_hidden,
        "intermediate_size": preset.text_intermediate,
        "num_hidden_layers": preset.text_layers,
        "num_attention_heads": preset.text_heads,
        "num_key_value_heads": preset.text_kv_heads,
        "max_position_embeddings": preset.max_positions,
        "max_window_layers": preset.text_layers,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 1_000_000.0,
            "mrope_section": mrope_section,
        },
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|im_end|>"],
        "pad_token_id": ids["<|endoftext|>"],
        "tie_word_embeddings": preset.tie_embeddings,
    }
    vision = {
        "depth": preset.vision_depth,
        "embed_dim": preset.vision_embed,
        "num_heads": preset.vision_heads,
        "hidden_size": preset.text_hidden,  # the merger projects into the text width
        "mlp_ratio": 4,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
    }
    return Qwen2VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
        tie_word_embeddings=preset.tie_embeddings,
        dtype=preset.dtype,
    )


def _train_tokenizer(vocab_target: int, seed: int, pad_to: int | None = None):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_target,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(seed), trainer)
    if pad_to is not None:
        tok = _padded(tok, pad_to)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens=[t for t in SPECIAL_TOKENS if t not in ("<|im_end|>", "<|endoftext|>")],
        chat_template=CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,
        model_max_length=4096,
    )


def _padded(tok, size: int):
    """`tok` with plain vocabulary entries added up to `size` ids. No merge produces them, so
    encoding is unchanged; they exist so a model with a real-sized vocabulary (random, it
    emits any id) decodes every id it generates."""
    from tokenizers import Tokenizer

    data = json.loads(tok.to_str())
    vocab: dict[str, int] = data["model"]["vocab"]
    next_id = max(vocab.values()) + 1
    n = 0
    while next_id < size:
        entry = f"\u0120w{n}"  # " w<n>" in byte-level form: printable when decoded
        n += 1
        if entry not in vocab:
            vocab[entry] = next_id
            next_id += 1
    return Tokenizer.from_str(json.dumps(data))


def _corpus(seed: int, n: int = 2000) -> Iterator[str]:
    """Fixed sentences plus generated ones, so the merges cover common English words."""
    yield from _SENTENCES
    rng = random.Random(seed)
    for _ in range(n):
        w = {k: rng.choice(v) for k, v in _WORDS.items()}
        other = rng.choice(_WORDS["noun"])
        yield (
            f"The {w['adj']} {w['noun']} {w['verb']} a {other} {w['place']}. "
            f"{w['noun'].capitalize()}s and {other}s, {rng.randint(1, 99)} of them."
        )


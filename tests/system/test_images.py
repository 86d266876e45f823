"""Images the service must accept and convert, and the image rules of shared/images.py.

The unit tests need no services. The end-to-end tests push the awkward-but-valid images
through the real API and worker, because the worker's model processor is the final judge
of whether an accepted image is usable.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import httpx
import pytest
from PIL import Image

from shared.errors import InvalidInput, UnsupportedMediaType
from shared.images import (
    MAX_ASPECT_RATIO,
    ImageInfo,
    check_dimensions,
    inspect_image,
    prepare_image,
)
from tests.helpers.images import png_bytes
from tests.helpers.services import Service, wait_terminal
from tests.helpers.stack import Stack

ALL_FORMATS = ["JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"]
WORKER_BOUND = 448 * 448
# The most elongated image Qwen2-VL's processor takes (it raises above this).
PROCESSOR_MAX_RATIO = 200

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def _save(img: Image.Image, fmt: str, **options: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **options)
    return buf.getvalue()


def _inspect(data: bytes, **limits: object) -> ImageInfo:
    kwargs: dict[str, object] = {
        "max_bytes": 2 * 1024 * 1024,
        "max_pixels": 4_000_000,
        "max_side": 16_384,
        "allowed_formats": ALL_FORMATS,
    }
    kwargs.update(limits)
    return inspect_image(data, **kwargs)  # type: ignore[arg-type]


def gray16_png() -> bytes:
    """16-bit grayscale PNG; Pillow opens it as mode I;16, which convert("RGB") clips to white."""
    return _save(Image.new("I;16", (64, 48), 0x8000), "PNG")


def cmyk_jpeg() -> bytes:
    return _save(Image.new("CMYK", (64, 48), (0, 255, 255, 0)), "JPEG", quality=95)


def palette_png_with_transparency() -> bytes:
    img = Image.new("P", (64, 48), 0)
    img.putpalette([0, 0, 0, *RED, *GREEN] + [0] * (256 * 3 - 9))
    img.paste(1, (0, 0, 32, 48))
    return _save(img, "PNG", transparency=0)


def rgba_png() -> bytes:
    img = Image.new("RGBA", (64, 48), (0, 0, 0, 0))
    img.paste((*BLUE, 128), (16, 16, 48, 40))
    return _save(img, "PNG")


def animated_gif() -> bytes:
    """Three frames, red then green then blue; only the first (red) one is used."""
    frames = [Image.new("RGB", (64, 48), colour) for colour in (RED, GREEN, BLUE)]
    return _save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)


def exif_rotated_jpeg(width: int = 64, height: int = 32) -> bytes:
    """Stored landscape, EXIF orientation 6: a viewer turns it 90 degrees into portrait."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return _save(png_image(width, height), "JPEG", exif=exif)


def png_image(width: int, height: int) -> Image.Image:
    return Image.open(io.BytesIO(png_bytes(width, height))).convert("RGB")


def wide_strip(width: int, height: int = 10) -> bytes:
    return _save(Image.new("RGB", (width, height), (90, 140, 200)), "PNG")


# -- inspect_image --------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ALL_FORMATS)
def test_inspect_detects_format_from_bytes(fmt: str) -> None:
    """The format comes from the bytes, never from a file name or declared content type."""
    data = png_bytes(80, 60, fmt=fmt)
    info = _inspect(data)
    assert (info.format, info.width, info.height, info.size) == (fmt, 80, 60, len(data))
    assert info.content_type == f"image/{fmt.lower()}"
    assert len(info.sha256) == 64


def test_inspect_refuses_formats_outside_the_allowed_list() -> None:
    with pytest.raises(UnsupportedMediaType) as exc:
        _inspect(png_bytes(32, 32, fmt="JPEG"), allowed_formats=["PNG"])
    assert (exc.value.http_status, exc.value.code) == (415, "unsupported_image_format")
    ico = _save(Image.new("RGB", (16, 16)), "ICO")
    with pytest.raises(UnsupportedMediaType):
        _inspect(ico)


@pytest.mark.parametrize(
    ("width", "height", "code"),
    [
        (5000, 5000, "image_too_many_pixels"),
        (20000, 10, "image_side_too_long"),
        (10, 20000, "image_side_too_long"),
        (3000, 10, "image_aspect_ratio_too_large"),
        (10, 1600, "image_aspect_ratio_too_large"),
    ],
)
def test_check_dimensions_codes(width: int, height: int, code: str) -> None:
    with pytest.raises(InvalidInput) as exc:
        check_dimensions(width, height, max_pixels=4_000_000, max_side=16_384)
    assert exc.value.code == code
    assert f"{width}x{height}" in exc.value.message


@pytest.mark.parametrize(("width", "height"), [(1, 1), (2000, 2000), (1500, 10), (16_384, 200)])
def test_check_dimensions_accepts_the_boundaries(width: int, height: int) -> None:
    check_dimensions(width, height, max_pixels=4_000_000, max_side=16_384)


def test_inspect_refuses_a_decompression_bomb_before_decoding_it() -> None:
    bomb = _save(Image.new("1", (5000, 5000), 1), "PNG")
    assert len(bomb) < 100_000
    with pytest.raises(InvalidInput) as exc:
        _inspect(bomb)
    assert exc.value.code == "image_too_many_pixels"


def test_inspect_reports_stored_not_rotated_size() -> None:
    info = _inspect(exif_rotated_jpeg(64, 32))
    assert (info.width, info.height) == (64, 32)


# -- prepare_image ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("width", "height"),
    [(1000, 800), (4000, 3000), (449, 449), (15_000, 100), (10, 1500), (448, 448)],
)
def test_prepare_bounds_pixels_and_keeps_aspect(width: int, height: int) -> None:
    data = _save(Image.new("RGB", (width, height), (10, 20, 30)), "PNG")
    out = prepare_image(data, WORKER_BOUND)
    assert out.width * out.height <= WORKER_BOUND
    if width * height <= WORKER_BOUND:
        assert out.size == (width, height)
    else:
        assert abs(out.width / out.height - width / height) / (width / height) < 0.05


def test_prepare_keeps_the_largest_accepted_aspect_ratio_within_the_processor_limit() -> None:
    """Downscaling rounds the short side down; the upload limit leaves room for that."""
    data = wide_strip(MAX_ASPECT_RATIO * 100, 100)
    out = prepare_image(data, WORKER_BOUND)
    assert out.width * out.height <= WORKER_BOUND
    assert out.width / out.height <= PROCESSOR_MAX_RATIO


@pytest.mark.parametrize(
    ("make", "source_mode"),
    [
        (gray16_png, "I;16"),
        (cmyk_jpeg, "CMYK"),
        (palette_png_with_transparency, "P"),
        (rgba_png, "RGBA"),
        (animated_gif, "P"),
        (lambda: _save(Image.new("LA", (20, 20), (90, 200)), "PNG"), "LA"),
        (lambda: _save(Image.new("1", (20, 20), 1), "PNG"), "1"),
        (lambda: _save(Image.new("L", (20, 20), 90), "JPEG"), "L"),
        (lambda: _save(Image.new("F", (20, 20), 0.5), "TIFF"), "F"),
    ],
)
def test_prepare_outputs_rgb(make: Callable[[], bytes], source_mode: str) -> None:
    data = make()
    assert Image.open(io.BytesIO(data)).mode == source_mode
    _inspect(data)
    assert prepare_image(data, WORKER_BOUND).mode == "RGB"


def test_prepare_scales_16_bit_gray_to_8_bits() -> None:
    assert prepare_image(gray16_png(), WORKER_BOUND).getpixel((0, 0)) == (128, 128, 128)


def test_prepare_converts_cmyk_colours() -> None:
    r, g, b = prepare_image(cmyk_jpeg(), WORKER_BOUND).getpixel((10, 10))  # type: ignore[misc]
    assert r > 230 and g < 25 and b < 25


def test_prepare_puts_transparency_on_white() -> None:
    out = prepare_image(palette_png_with_transparency(), WORKER_BOUND)
    assert out.getpixel((10, 10)) == RED
    assert out.getpixel((50, 10)) == (255, 255, 255)
    out = prepare_image(rgba_png(), WORKER_BOUND)
    assert out.getpixel((0, 0)) == (255, 255, 255)
    r, g, b = out.getpixel((30, 30))  # type: ignore[misc]
    assert 120 <= r <= 135 and 120 <= g <= 135 and b == 255


def test_prepare_uses_the_first_frame_of_an_animation() -> None:
    data = animated_gif()
    assert Image.open(io.BytesIO(data)).n_frames == 3
    assert prepare_image(data, WORKER_BOUND).getpixel((5, 5)) == RED


def test_prepare_applies_exif_rotation() -> None:
    out = prepare_image(exif_rotated_jpeg(64, 32), WORKER_BOUND)
    assert out.size == (32, 64)


def test_prepare_ignores_a_damaged_exif_block() -> None:
    """Pixels that decoded at upload must not fail the job over unreadable metadata."""
    exif = Image.Exif()
    exif[0x0112] = 6
    data = _save(Image.new("RGB", (40, 30), GREEN), "WEBP", exif=exif)
    tiff_header = data.index(b"EXIF") + 8
    damaged = data[:tiff_header] + b"XM\x00*" + data[tiff_header + 4 :]
    _inspect(damaged)
    assert prepare_image(damaged, WORKER_BOUND).size == (40, 30)


# -- end to end -------------------------------------------------------------------------------

ACCEPTED: dict[str, tuple[Callable[[], bytes], str, tuple[int, int]]] = {
    "gray16.png": (gray16_png, "PNG", (64, 48)),
    "cmyk.jpg": (cmyk_jpeg, "JPEG", (64, 48)),
    "palette-transparent.png": (palette_png_with_transparency, "PNG", (64, 48)),
    "rgba.png": (rgba_png, "PNG", (64, 48)),
    "animated.gif": (animated_gif, "GIF", (64, 48)),
    "exif-rotated.jpg": (lambda: exif_rotated_jpeg(64, 32), "JPEG", (64, 32)),
    "strip-150-to-1.png": (lambda: wide_strip(1500), "PNG", (1500, 10)),
}


def test_awkward_images_run_to_success(stack: Stack, client: httpx.Client, worker: Service) -> None:
    """Submitted together so the worker batches them, which is also how they arrive in use."""
    submitted: dict[str, str] = {}
    for name, (make, _, _) in ACCEPTED.items():
        resp = client.post(
            "/v1/jobs",
            files={"image": (name, make(), "application/octet-stream")},
            data={"prompt": "What is this?", "max_tokens": "4"},
        )
        assert resp.status_code == 202, (name, resp.text)
        submitted[name] = resp.json()["id"]

    for name, job_id in submitted.items():
        job = wait_terminal(client, job_id)
        _, fmt, size = ACCEPTED[name]
        assert job["status"] == "succeeded", (name, job)
        assert job["image"]["format"] == fmt, name
        assert (job["image"]["width"], job["image"]["height"]) == size, name
        assert job["result"]["completion_tokens"] >= 1, name


@pytest.mark.parametrize(
    ("width", "height", "code"),
    [(20000, 10, "image_side_too_long"), (3000, 10, "image_aspect_ratio_too_large")],
)
def test_too_elongated_images_are_refused_up_front(
    stack: Stack, client: httpx.Client, width: int, height: int, code: str
) -> None:
    """The model's processor cannot take them, so the API refuses them rather than the worker
    failing the job later; both are well under the pixel limit."""
    assert width * height < stack.settings.max_image_pixels
    assert (max(width, height) > stack.settings.max_image_side) == (code == "image_side_too_long")
    resp = client.post(
        "/v1/jobs",
        files={"image": ("strip.png", wide_strip(width, height), "image/png")},
        data={"prompt": "What is this?", "max_tokens": "4"},
    )
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["code"] == code

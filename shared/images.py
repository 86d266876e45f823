"""Image checks at upload time and preprocessing before inference.

Both sides use this module: the API must refuse what the worker could not decode,
so they share one definition of "a usable image".
"""

from __future__ import annotations

import hashlib
import io
import logging
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import numpy as np
import pillow_heif
from PIL import Image, ImageOps, UnidentifiedImageError

from shared.errors import InvalidInput, PayloadTooLarge, UnsupportedMediaType

log = logging.getLogger(__name__)

# We enforce our own pixel limit before decoding; Pillow's global guard would turn
# our clear 4xx into a warning or a different exception type.
Image.MAX_IMAGE_PIXELS = None

# HEIF (iPhone photos) comes from pillow-heif, as Pillow has no HEIF plugin; AVIF stays with
# Pillow's own plugin. Pillow's plugins are loaded first so that they come first in the
# order Image.open tries: Pillow's AVIF plugin also claims files of the generic `mif1`
# brand and steps aside for the HEIF ones, while pillow-heif, tried first, would take an
# AVIF of that brand and fail to decode it. Thumbnails, depth maps and auxiliary images
# are never used, so they are not read.
Image.init()
pillow_heif.register_heif_opener(thumbnails=False, depth_images=False, aux_images=False)

# Qwen2-VL's image processor refuses aspect ratios above 200:1; the margin covers the
# rounding when the worker scales an image down to its pixel bound.
MAX_ASPECT_RATIO = 150

CONTENT_TYPES = {
    "JPEG": "image/jpeg",
    "PNG": "image/png",
    "WEBP": "image/webp",
    "GIF": "image/gif",
    "BMP": "image/bmp",
    "TIFF": "image/tiff",
    "HEIF": "image/heif",
    "AVIF": "image/avif",
}

# libheif and libavif decode into planes of their own, which are then converted into
# Pillow's pixels: a 12 Mpx photo peaks at about 2 (HEIF) and 2.4 (AVIF) times what the
# pixels alone take, where JPEG and PNG decode in place.
_DECODER_COPIES = {"HEIF": 3, "AVIF": 3}


@dataclass(frozen=True)
class ImageInfo:
    format: str
    width: int
    height: int
    sha256: str
    size: int

    @property
    def content_type(self) -> str:
        return CONTENT_TYPES.get(self.format, "application/octet-stream")


def inspect_image(
    data: bytes, *, max_bytes: int, max_pixels: int, max_side: int, allowed_formats: list[str],
    reserve: Callable[[int], AbstractContextManager[object]] = lambda nbytes: nullcontext(),
) -> ImageInfo:
    """Decode `data` fully, or raise an InvalidInput whose code says what is wrong.

    The decode runs inside `reserve(bytes the decoded pixels take)`, so a caller can bound
    the memory that concurrent inspections use.
    """
    fmt, (width, height), mode = _check_header(
        data, max_bytes=max_bytes, max_pixels=max_pixels, max_side=max_side,
        allowed_formats=allowed_formats,
    )
    with reserve(decoded_bytes(width, height, mode) * _DECODER_COPIES.get(fmt, 1)):
        try:
            with Image.open(io.BytesIO(data)) as img:
                img.load()
        except Exception as exc:
            raise _corrupt(fmt, exc) from exc
    return ImageInfo(
        format=fmt,
        width=width,
        height=height,
        sha256=hashlib.sha256(data).hexdigest(),
        size=len(data),
    )


def decoded_bytes(width: int, height: int, mode: str) -> int:
    """What Pillow allocates for these pixels: one byte each in modes 1, L and P, two in
    16-bit integer modes, four in the rest (RGB too, padded to four channels)."""
    per_pixel = 1 if mode in ("1", "L", "P") else 2 if mode.startswith("I;16") else 4
    return width * height * per_pixel


def prepare_image(data: bytes, max_pixels: int) -> Image.Image:
    """Decode, apply EXIF rotation, convert to RGB, bound the pixels.

    Image.open stands on the frame the header checks measured: the first one (of an
    animation, say), or a HEIF's primary image, which need not be its first. Seeking to
    another would decode pixels no limit was applied to.
    """
    img = Image.open(io.BytesIO(data))
    img = _exif_oriented(img)
    return bound_pixels(to_rgb(img), max_pixels)


def bound_pixels(img: Image.Image, max_pixels: int) -> Image.Image:
    """`img` scaled down, keeping its aspect, to at most `max_pixels`."""
    pixels = img.width * img.height
    if pixels <= max_pixels:
        return img
    scale = (max_pixels / pixels) ** 0.5
    size = (max(1, int(img.width * scale)), max(1, int(img.height * scale)))
    return img.resize(size, Image.Resampling.BICUBIC)


def check_dimensions(width: int, height: int, *, max_pixels: int, max_side: int) -> None:
    """Refuse sizes the worker cannot or should not process, each with its own code."""
    if width < 1 or height < 1:
        raise InvalidInput(f"the image is {width}x{height}", code="corrupt_image")
    if width * height > max_pixels:
        raise InvalidInput(
            f"the image is {width}x{height} = {width * height} pixels; the limit is {max_pixels}",
            code="image_too_many_pixels",
        )
    if max(width, height) > max_side:
        raise InvalidInput(
            f"the image is {width}x{height}; no side may be longer than {max_side} pixels",
            code="image_side_too_long",
        )
    ratio = max(width, height) / min(width, height)
    if ratio > MAX_ASPECT_RATIO:
        raise InvalidInput(
            f"the image is {width}x{height}, an aspect ratio of {ratio:.0f}:1; "
            f"the limit is {MAX_ASPECT_RATIO}:1; crop or pad it",
            code="image_aspect_ratio_too_large",
        )


def _corrupt(what: str, exc: Exception) -> InvalidInput:
    return InvalidInput(
        f"the {what} could not be decoded ({exc.__class__.__name__}: {exc}); "
        "re-export it and try again",
        code="corrupt_image",
    )


_ORIENTATION_TAG = 0x0112


def _exif_oriented(img: Image.Image) -> Image.Image:
    """Apply the EXIF orientation; a damaged EXIF block leaves the pixels as stored.

    The pixels were decoded at upload, so unreadable metadata is no reason to fail the job.
    Most images carry no rotation, and exif_transpose would copy them all the same.
    Pillow's AVIF plugin reports the file's rotation (its irot and imir boxes) here, and
    rotates nothing itself. A HEIF's rotation libheif applies while decoding, and
    pillow-heif sets the EXIF orientation to 1 in return, so each turns exactly once.
    """
    try:
        if img.getexif().get(_ORIENTATION_TAG, 1) == 1:
            return img
        return ImageOps.exif_transpose(img) or img
    except Exception:
        log.warning("ignoring an unreadable EXIF orientation", exc_info=True)
        return img


def to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        wide = np.asarray(img, dtype=np.uint32)
        return Image.fromarray((wide >> 8).clip(0, 255).astype(np.uint8), "L").convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        rgba = img.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return img.convert("RGB")


class JobPixels:
    """A job's images' pixels together, held to VLMQ_MAX_JOB_IMAGE_PIXELS as the worker
    reads each image's header: referenced images reach no total at submit, and an image
    past the total is refused before its pixels are decoded."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def take(self, width: int, height: int) -> None:
        self.used += width * height
        if self.used > self.limit:
            raise PayloadTooLarge(
                f"the job's images hold {self.used} pixels together up to this one; a job's "
                f"images may hold {self.limit} (VLMQ_MAX_JOB_IMAGE_PIXELS)",
                code="images_too_large",
            )


def decode_stored_image(
    data: bytes,
    *,
    sha256: str,
    max_bytes: int,
    max_pixels: int,
    max_side: int,
    allowed_formats: list[str],
    prepare_max_pixels: int,
    job_pixels: JobPixels | None = None,
) -> Image.Image:
    """The worker's decode of an uploaded image read back from the store, fully loaded.

    The API checked these bytes before storing them, but the store is not ours to trust:
    an object can be overwritten or damaged after upload, and the decoder is where a pixel
    bomb goes off. So the bytes must be the ones the API hashed, and the upload limits are
    applied again, from the header, before any pixel is decoded. Pillow's own guard is off
    (see MAX_IMAGE_PIXELS above), and setting it per call would race between threads.
    Raises InvalidInput with the API's codes, plus `image_corrupted` for a hash mismatch.
    """
    if hashlib.sha256(data).hexdigest() != sha256:
        raise InvalidInput(
            "the stored image does not match the image uploaded with this job (it was "
            "changed or damaged in storage after upload); submit the job again",
            code="image_corrupted",
        )
    return decode_fetched_image(
        data, max_bytes=max_bytes, max_pixels=max_pixels, max_side=max_side,
        allowed_formats=allowed_formats, prepare_max_pixels=prepare_max_pixels,
        job_pixels=job_pixels,
    )


def decode_fetched_image(
    data: bytes,
    *,
    max_bytes: int,
    max_pixels: int,
    max_side: int,
    allowed_formats: list[str],
    prepare_max_pixels: int,
    job_pixels: JobPixels | None = None,
) -> Image.Image:
    """The worker's decode of an image fetched by reference (or read back and verified).

    A referenced image never went through the API's checks, so this is where the upload
    limits first apply to it: from the header, before any pixel is decoded. There is no
    hash to compare. Raises InvalidInput with the API's codes.
    """
    _, size, _ = _check_header(data, max_bytes=max_bytes, max_pixels=max_pixels,
                               max_side=max_side, allowed_formats=allowed_formats)
    if job_pixels is not None:
        job_pixels.take(*size)
    try:
        img = prepare_image(data, prepare_max_pixels)
        # Decode here rather than at first use, which would be on the engine's thread.
        img.load()
    except Exception as exc:
        raise _corrupt("image", exc) from exc
    return img


def _check_header(
    data: bytes, *, max_bytes: int, max_pixels: int, max_side: int, allowed_formats: list[str]
) -> tuple[str, tuple[int, int], str]:
    """The checks that need no pixels, with their codes; the format, size and mode."""
    if not data:
        raise InvalidInput("the image is empty (0 bytes)", code="empty_image")
    if len(data) > max_bytes:
        raise PayloadTooLarge(
            f"the image is {len(data)} bytes; the limit is {max_bytes}", code="image_too_large"
        )
    try:
        img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError as exc:
        if container := pillow_heif.get_file_mimetype(data[:16]):
            # A HEIF or AVIF by its signature whose container would not parse (cut short,
            # say): both plugins then step aside as if it were some other format, where a
            # damaged JPEG or PNG is reported corrupt.
            raise InvalidInput(
                f"the {'AVIF' if 'avif' in container else 'HEIF'} file could not be read (its "
                "container is damaged or cut short); re-export it and try again",
                code="corrupt_image",
            ) from exc
        raise InvalidInput(
            "the file is not an image Pillow can identify; send JPEG, PNG, WEBP, GIF, BMP, "
            "TIFF, HEIC/HEIF or AVIF",
            code="invalid_image",
        ) from exc
    except Exception as exc:
        # A plugin recognised the signature, then choked on the header. Pillow's plugins
        # raise OSError, ValueError, SyntaxError, struct.error, ... for this; all are bad input.
        raise _corrupt("image", exc) from exc
    with img:
        fmt = (img.format or "").upper()
        if fmt not in allowed_formats:
            raise UnsupportedMediaType(
                f"image format {fmt or 'unknown'} is not accepted; "
                f"allowed: {', '.join(allowed_formats)}"
            )
        size = _stored_size(img)
        check_dimensions(*size, max_pixels=max_pixels, max_side=max_side)
        return fmt, size, img.mode


def _stored_size(img: Image.Image) -> tuple[int, int]:
    """The size before any rotation, as JPEG and AVIF report it, so the job's image metadata
    says the same of a photo whatever its format.

    pillow-heif reports a HEIF's size after the rotation libheif applies while decoding (an
    iPhone stores its photos sideways with a quarter turn in the file); the size before it
    has the sides the other way round. The limits themselves do not depend on the way.
    """
    width, height = img.size
    if img.format != "HEIF":
        return width, height
    heif_file = getattr(img, "_heif_file", None)
    c_image = getattr(heif_file[img.tell()], "_c_image", None) if heif_file else None
    # Read from pillow-heif's decoder object, which has no public way to say this; should
    # it go, the size is reported after the turn (tests/system/test_heic_avif.py notices).
    turned = sum(angle for name, angle, *_ in getattr(c_image, "transformations", ())
                 if name == "irot")
    return (height, width) if turned % 180 == 90 else (width, height)

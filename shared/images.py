"""Image checks at upload time and preprocessing before inference.

Both sides use this module: the API must refuse what the worker could not decode,
so they share one definition of "a usable image".
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from shared.errors import InvalidInput, PayloadTooLarge, UnsupportedMediaType

# We enforce our own pixel limit before decoding; Pillow's global guard would turn
# our clear 4xx into a warning or a different exception type.
Image.MAX_IMAGE_PIXELS = None

CONTENT_TYPES = {
    "JPEG": "image/jpeg",
    "PNG": "image/png",
    "WEBP": "image/webp",
    "GIF": "image/gif",
    "BMP": "image/bmp",
    "TIFF": "image/tiff",
}


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
    data: bytes, *, max_bytes: int, max_pixels: int, max_side: int, allowed_formats: list[str]
) -> ImageInfo:
    """Decode `data` fully, or raise an InvalidInput whose code says what is wrong."""
    if not data:
        raise InvalidInput("the image is empty (0 bytes)", code="empty_image")
    if len(data) > max_bytes:
        raise PayloadTooLarge(
            f"the image is {len(data)} bytes; the limit is {max_bytes}", code="image_too_large"
        )
    try:
        img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError as exc:
        raise InvalidInput(
            "the file is not an image Pillow can identify; send JPEG, PNG, WEBP, GIF, BMP or TIFF",
            code="invalid_image",
        ) from exc
    fmt = (img.format or "").upper()
    if fmt not in allowed_formats:
        raise UnsupportedMediaType(
            f"image format {fmt or 'unknown'} is not accepted; allowed: {', '.join(allowed_formats)}"
        )
    width, height = img.size
    if width * height > max_pixels or max(width, height) > max_side:
        raise InvalidInput(
            f"the image is {width}x{height}; the limits are {max_pixels} pixels "
            f"and {max_side} pixels per side",
            code="image_too_many_pixels",
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # libjpeg's "corrupt data" warnings mean corrupt
            img.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError, Warning) as exc:
        raise InvalidInput(
            f"the {fmt} image could not be decoded ({exc}); re-export it and try again",
            code="corrupt_image",
        ) from exc
    return ImageInfo(
        format=fmt,
        width=width,
        height=height,
        sha256=hashlib.sha256(data).hexdigest(),
        size=len(data),
    )


def prepare_image(data: bytes, max_pixels: int) -> Image.Image:
    """Decode, apply EXIF rotation, take the first frame, convert to RGB, bound the pixels."""
    img = Image.open(io.BytesIO(data))
    img.seek(0)
    img = ImageOps.exif_transpose(img) or img
    img = to_rgb(img)
    pixels = img.width * img.height
    if pixels > max_pixels:
        scale = (max_pixels / pixels) ** 0.5
        size = (max(1, int(img.width * scale)), max(1, int(img.height * scale)))
        img = img.resize(size, Image.Resampling.BICUBIC)
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

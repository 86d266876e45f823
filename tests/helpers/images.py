"""Small test images, made in memory."""

from __future__ import annotations

import base64
import io

from PIL import Image, ImageDraw


def sample_image(width: int = 64, height: int = 48, seed: int = 0) -> Image.Image:
    img = Image.new("RGB", (width, height), (20 + seed * 37 % 200, 120, 200))
    ImageDraw.Draw(img).ellipse((width // 8, height // 8, width // 2, height // 2),
                                fill=(250, 220, 30))
    return img


# The default is the size of a small photo after the worker's resize: several patches.
def png_bytes(width: int = 448, height: int = 336, seed: int = 0, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    sample_image(width, height, seed).save(buf, format=fmt)
    return buf.getvalue()


def data_url(image: bytes) -> str:
    """The image inline, as a client sends one it has no URL for."""
    return "data:image/png;base64," + base64.b64encode(image).decode()

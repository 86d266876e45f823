"""HEIC/HEIF (pillow-heif) and AVIF (Pillow's own plugin): the same checks, limits and
rotation as every other format, in the API's upload check and in the worker's decode.

The unit tests call the functions both sides use (shared/images.py) with the bytes the
end-to-end tests upload; those push the photos through the real API and worker.
"""

from __future__ import annotations

import base64
import hashlib
import io
import struct
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image
from sqlalchemy import Engine, func, select

from shared.errors import InvalidInput, UnsupportedMediaType
from shared.images import decode_stored_image, inspect_image, prepare_image
from shared.models import Job
from shared.settings import LimitsSettings
from tests.helpers.services import Service, start_api, wait_terminal
from tests.helpers.stack import Stack
from tests.helpers.store import count_objects

ORIENTATION = 0x0112
LIMITS: dict[str, Any] = {
    "max_bytes": 2 * 1024 * 1024, "max_pixels": 4_000_000, "max_side": 16_384,
    "allowed_formats": LimitsSettings().allowed_formats,
}
WORKER_BOUND = 448 * 448
# What a viewer does to the stored pixels for each EXIF orientation (as ImageOps.exif_transpose).
UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_90,
}


def quadrants(width: int = 64, height: int = 32) -> Image.Image:
    """Four blocks of clearly different colours, so any wrong turn or flip shows."""
    img = Image.new("RGB", (width, height), (220, 30, 30))
    img.paste((30, 200, 40), (width // 2, 0, width, height // 2))
    img.paste((40, 60, 230), (0, height // 2, width // 2, height))
    img.paste((240, 230, 60), (width // 2, height // 2, width, height))
    return img


def encode(img: Image.Image, fmt: str, orientation: int = 1, **options: Any) -> bytes:
    """As a camera stores a photo: the pixels as the sensor saw them, with an orientation.

    Both encoders turn the EXIF orientation into the container's rotation (irot, imir) and
    pillow-heif keeps it in the EXIF too, as iPhones do. pillow-heif reads `exif` as bytes.
    """
    exif = Image.Exif()
    if orientation != 1:
        exif[ORIENTATION] = orientation
    buf = io.BytesIO()
    img.save(buf, format=fmt, exif=exif.tobytes(), **options)
    return buf.getvalue()


def heic(orientation: int = 6) -> bytes:
    return encode(quadrants(), "HEIF", orientation)


def avif(orientation: int = 6) -> bytes:
    return encode(quadrants(), "AVIF", orientation)


def heic_bomb(width: int = 5000, height: int = 5000) -> bytes:
    """A 64x64 HEIC whose header (its ispe box) claims `width` x `height`: a few hundred
    bytes, and its pixels cannot even be decoded, so any refusal but the header's is seen."""
    data = bytearray(encode(Image.new("RGB", (64, 64), (10, 200, 30)), "HEIF"))
    assert data.count(b"ispe") == 1
    at = data.index(b"ispe") + 8  # past the box type, and the version and flags
    assert struct.unpack(">II", data[at:at + 8]) == (64, 64)
    data[at:at + 8] = struct.pack(">II", width, height)
    return bytes(data)


def corrupt_heic() -> bytes:
    """A valid container whose coded picture is noise from its first NAL unit's length on."""
    data = encode(quadrants(256, 256), "HEIF")
    start = data.index(b"mdat") + 4
    return data[:start] + np.random.default_rng(0).bytes(len(data) - start)


def truncated_heic() -> bytes:
    """Cut short, as an interrupted upload or copy leaves it."""
    data = encode(quadrants(256, 256), "HEIF")
    return data[:data.index(b"mdat") + 100]


def truncated_avif() -> bytes:
    data = avif(1)
    return data[:len(data) // 2]


def difference(a: Image.Image, b: Image.Image) -> float:
    assert a.size == b.size, (a.size, b.size)
    return float(np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)).mean())


def worker_decode(data: bytes, **limits: Any) -> Image.Image:
    """The worker's decode of a stored upload, as worker/intake.py calls it."""
    kwargs = {**LIMITS, **limits}
    return decode_stored_image(data, sha256=hashlib.sha256(data).hexdigest(),
                               prepare_max_pixels=WORKER_BOUND, **kwargs)


# -- the checks, as the API makes them ------------------------------------------------------


@pytest.mark.parametrize(("make", "fmt", "content_type"),
                         [(heic, "HEIF", "image/heif"), (avif, "AVIF", "image/avif")])
def test_heic_and_avif_are_read_with_their_size_as_stored(
    make: Callable[[int], bytes], fmt: str, content_type: str
) -> None:
    """Like a JPEG's, the size is the stored one, before the photo's rotation."""
    data = make(6)
    info = inspect_image(data, **LIMITS)
    assert (info.format, info.content_type, info.size) == (fmt, content_type, len(data))
    assert (info.width, info.height) == (64, 32)
    assert inspect_image(make(1), **LIMITS).width == 64


def test_the_heic_is_stored_as_an_iphone_stores_it() -> None:
    """A rotation in the container (irot) and the same one in the EXIF: decoders must apply
    one of them, never both."""
    data = heic(6)
    assert b"irot" in data
    with Image.open(io.BytesIO(data)) as img:
        assert img.info["original_orientation"] == 6  # pillow-heif took it out of the EXIF


@pytest.mark.parametrize("brand_of", ["HEIF", "AVIF"])
def test_the_generic_mif1_brand_opens_with_the_right_plugin(brand_of: str) -> None:
    data = bytearray(heic(1) if brand_of == "HEIF" else avif(1))
    data[8:12] = b"mif1"
    assert inspect_image(bytes(data), **LIMITS).format == brand_of


def test_a_heic_bomb_is_refused_from_its_header() -> None:
    bomb = heic_bomb()
    assert len(bomb) < 2000
    for check in (lambda: inspect_image(bomb, **LIMITS), lambda: worker_decode(bomb)):
        with pytest.raises(InvalidInput) as exc:
            check()
        assert exc.value.code == "image_too_many_pixels"
        assert "5000x5000" in exc.value.message
    with pytest.raises(InvalidInput) as exc:
        inspect_image(heic_bomb(20_000, 10), **LIMITS)
    assert exc.value.code == "image_side_too_long"


@pytest.mark.parametrize("make", [corrupt_heic, truncated_heic, truncated_avif])
def test_a_damaged_heic_or_avif_is_corrupt_image(make: Callable[[], bytes]) -> None:
    """As a damaged JPEG or PNG is, where its signature is seen but it will not decode."""
    for check in (lambda: inspect_image(make(), **LIMITS), lambda: worker_decode(make())):
        with pytest.raises(InvalidInput) as exc:
            check()
        assert exc.value.code == "corrupt_image"
        assert "re-export it" in exc.value.message


@pytest.mark.parametrize("make", [heic, avif])
def test_formats_left_out_of_the_list_are_415(make: Callable[[int], bytes]) -> None:
    with pytest.raises(UnsupportedMediaType) as exc:
        inspect_image(make(1), **{**LIMITS, "allowed_formats": ["JPEG", "PNG"]})
    assert (exc.value.http_status, exc.value.code) == (415, "unsupported_image_format")


def test_the_format_list_takes_heic_for_heif(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLMQ_ALLOWED_FORMATS", '["jpeg", "HEIC", "avif"]')
    assert LimitsSettings().allowed_formats == ["JPEG", "HEIF", "AVIF"]
    assert {"HEIF", "AVIF"} <= set(LIMITS["allowed_formats"])


# -- the decode, as the worker makes it -----------------------------------------------------


@pytest.mark.parametrize("orientation", sorted(UPRIGHT))
@pytest.mark.parametrize("fmt", ["HEIF", "AVIF", "JPEG"])
def test_the_worker_turns_each_photo_upright_once(fmt: str, orientation: int) -> None:
    """The picture the engine gets is the stored one turned as a viewer shows it: for a
    quarter turn, its sides swap; turned twice or not at all, the colours are elsewhere."""
    data = encode(quadrants(), fmt, orientation, **({"quality": 95} if fmt == "JPEG" else {}))
    out = worker_decode(data)
    upright = quadrants().transpose(UPRIGHT[orientation])
    assert out.mode == "RGB"
    assert out.size == upright.size
    assert difference(out, upright) < 12
    if orientation in (5, 6, 7, 8):
        assert out.size == (32, 64)
    for other, method in UPRIGHT.items():
        wrong = quadrants().transpose(method)
        if wrong.size == out.size and wrong.tobytes() != upright.tobytes():
            assert difference(out, wrong) > 40, other
    assert prepare_image(data, WORKER_BOUND).tobytes() == out.tobytes()


def test_a_heic_bomb_fails_in_the_worker_as_at_upload() -> None:
    """An object overwritten in the store after upload is checked again, before decode."""
    with pytest.raises(InvalidInput) as exc:
        worker_decode(heic_bomb(), max_pixels=1_000_000)
    assert exc.value.code == "image_too_many_pixels"


# -- end to end -------------------------------------------------------------------------------


@pytest.fixture()
def nothing_new(stack: Stack, db_engine: Engine, s3: Any) -> Iterator[None]:
    """Fails the test if it leaves a job row or a stored object behind."""
    def count() -> tuple[int, int]:
        with db_engine.connect() as conn:
            rows = conn.execute(select(func.count()).select_from(Job)).scalar_one()
        return rows, count_objects(s3, stack.settings.store_url)

    before = count()
    yield
    assert count() == before, "a refused upload left a job row or a stored object"


def test_heic_and_avif_photos_run_to_success(
    stack: Stack, client: httpx.Client, worker: Service
) -> None:
    photos = {"photo.heic": (heic(6), "HEIF", "image/heif"),
              "photo.avif": (avif(6), "AVIF", "image/avif")}
    submitted: dict[str, str] = {}
    for name, (data, _, _) in photos.items():
        resp = client.post(
            "/v1/jobs", files={"image": (name, data, "application/octet-stream")},
            data={"prompt": "What is this?", "max_tokens": "4"},
        )
        assert resp.status_code == 202, (name, resp.text)
        submitted[name] = resp.json()["id"]
    resp = client.post("/v1/jobs", json={"prompt": "What is this?", "max_tokens": 4,
                                         "image": {"base64": base64.b64encode(heic(8)).decode()}})
    assert resp.status_code == 202, resp.text
    submitted["json.heic"] = resp.json()["id"]
    photos["json.heic"] = (heic(8), "HEIF", "image/heif")

    for name, job_id in submitted.items():
        data, fmt, content_type = photos[name]
        job = wait_terminal(client, job_id)
        assert job["status"] == "succeeded", (name, job)
        assert job["result"]["completion_tokens"] >= 1, name
        image = job["image"]
        assert (image["format"], image["width"], image["height"], image["bytes"]) == (
            fmt, 64, 32, len(data)), name
        stored = client.get(f"/v1/jobs/{job_id}/image")
        assert stored.status_code == 200, stored.text
        assert stored.headers["content-type"] == content_type
        assert stored.content == data
        assert f"{job_id}.{fmt.lower()}" in stored.headers.get("content-disposition", "")


@pytest.mark.parametrize(("make", "code"), [(heic_bomb, "image_too_many_pixels"),
                                            (corrupt_heic, "corrupt_image"),
                                            (truncated_heic, "corrupt_image")])
def test_a_bad_heic_is_refused_without_trace(
    client: httpx.Client, nothing_new: None, make: Callable[[], bytes], code: str
) -> None:
    for request in (
        {"files": {"image": ("bad.heic", make(), "image/heic")},
         "data": {"prompt": "What is this?", "max_tokens": "4"}},
        {"json": {"prompt": "What is this?", "image": {"base64": base64.b64encode(make()).decode()}}},
    ):
        resp = client.post("/v1/jobs", **request)
        assert resp.status_code == 400, resp.text
        assert resp.json()["error"]["code"] == code


def test_an_api_without_heif_in_its_list_answers_415(stack: Stack) -> None:
    st = stack.with_env(allowed_formats='["JPEG", "PNG", "AVIF"]')
    svc, base = start_api(st.env, st.log_dir, name="api-no-heif")
    try:
        with httpx.Client(base_url=base, timeout=30, headers=stack.headers) as c:
            resp = c.post("/v1/jobs", files={"image": ("p.heic", heic(), "image/heic")},
                          data={"prompt": "What is this?", "model": "parked"})
            assert resp.status_code == 415, resp.text
            assert resp.json()["error"]["code"] == "unsupported_image_format"
            assert "HEIF" in resp.json()["error"]["message"]
            resp = c.post("/v1/jobs", files={"image": ("p.avif", avif(), "image/avif")},
                          data={"prompt": "What is this?", "model": "parked", "max_tokens": "1"})
            assert resp.status_code == 202, resp.text
            c.post(f"/v1/jobs/{resp.json()['id']}/cancel")
    finally:
        svc.stop()

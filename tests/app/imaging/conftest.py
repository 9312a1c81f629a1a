"""Shared by the imaging tests: the timm reference, preprocessors built from the one metadata factory,
a phone-sized photo and a decode pool that counts the resize bands it accepted."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app.imaging import DecodePool, ImagePreprocessor
from app.imaging.geometry import Offload
from tests.support.images import encode
from tests.support.metadata import make_metadata

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "preprocess"
PHOTOS = FIXTURES / "photos"
REFERENCE = FIXTURES / "preprocess_expected.npz"

with np.load(REFERENCE) as _reference:
    REFERENCE_KEYS = sorted(_reference.files)


def make_preprocessor(
    image_size: int = 224,
    crop_pct: float = 0.9,
    *,
    max_image_bytes: int = 20_000_000,
    max_image_pixels: int = 40_000_000,
    jpeg_reducing_gap: float = 0.0,
    offload: Offload | None = None,
) -> ImagePreprocessor:
    return ImagePreprocessor(
        make_metadata(image_size=image_size, crop_pct=crop_pct),
        max_image_bytes=max_image_bytes,
        max_image_pixels=max_image_pixels,
        jpeg_reducing_gap=jpeg_reducing_gap,
        offload=offload,
    )


@pytest.fixture(scope="module")
def preprocessor() -> ImagePreprocessor:
    return make_preprocessor()


@pytest.fixture(scope="module")
def reference() -> dict[str, np.ndarray]:
    with np.load(REFERENCE) as data:
        return {key: data[key] for key in data.files}


@pytest.fixture(scope="module")
def phone_photo() -> bytes:
    """A 4032 x 3024 JPEG (a 12-Mpixel phone photo's size) with real photographic content."""
    with Image.open(PHOTOS / "astronaut.png") as photo:
        large = photo.convert("RGB").resize((4032, 3024), Image.Resampling.BICUBIC)
    return encode(large, "JPEG", quality=90)


class RecordingPool(DecodePool):
    """A two-thread decode pool that counts the bands it accepted."""

    def __init__(self) -> None:
        super().__init__(max_workers=2)
        self.submitted = 0

    def submit_if_idle(self, fn, /, *args):  # type: ignore[no-untyped-def, override]
        future = super().submit_if_idle(fn, *args)
        self.submitted += future is not None
        return future


@pytest.fixture
def helper() -> Iterator[RecordingPool]:
    with RecordingPool() as pool:
        yield pool


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, ...] | None]:
    """Every `PIL.Image.open` call's `formats` argument, in order (the call itself goes through)."""
    calls: list[tuple[str, ...] | None] = []
    real_open = Image.open

    def spy(fp, mode="r", formats=None):  # type: ignore[no-untyped-def]
        calls.append(None if formats is None else tuple(formats))
        return real_open(fp, mode, formats)

    monkeypatch.setattr(Image, "open", spy)
    return calls

"""ImagePreprocessor as a whole: pixel-exact with timm's eval transform on real photos, normalised,
safe from many threads, torch-free.

The exactness reference is `tests/fixtures/preprocess/preprocess_expected.npz`, produced by timm's
`create_transform` on scikit-image's sample photos (copied into `tests/fixtures/preprocess/photos/`).
Every other expectation is computed independently of the module under test (numpy on the source
pixels, hand-worked torchvision arithmetic), never from the module's own earlier output.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from app.imaging import (
    ImagePreprocessor,
)
from tests.app.imaging.conftest import PHOTOS, REFERENCE_KEYS, make_preprocessor
from tests.support.metadata import IMAGENET_MEAN, IMAGENET_STD, make_metadata


def test_reference_covers_every_photo_and_configuration(reference: dict[str, np.ndarray]) -> None:
    photos = {key.split("|")[0] for key in reference}
    configs = {tuple(key.split("|")[1:]) for key in reference}
    assert len(reference) == 24
    assert photos == {path.name for path in PHOTOS.iterdir()}
    assert configs == {("224", "0.9"), ("224", "0.95"), ("384", "0.95")}


@pytest.mark.parametrize("key", REFERENCE_KEYS)
def test_transform_is_pixel_exact_with_timm(key: str, reference: dict[str, np.ndarray]) -> None:
    photo, size, crop_pct = key.split("|")
    preprocessor = make_preprocessor(int(size), float(crop_pct))
    pixels = preprocessor.transform(preprocessor.decode((PHOTOS / photo).read_bytes()))
    expected = reference[key]
    assert pixels.dtype == np.uint8
    assert pixels.shape == expected.shape
    diff = np.abs(pixels.astype(np.int16) - expected.astype(np.int16))
    assert diff.max() == 0, f"{key}: {np.count_nonzero(diff)} values differ, max {diff.max()}"


@pytest.mark.parametrize("key", [k for k in REFERENCE_KEYS if k.startswith(("chelsea", "logo", "camera"))])
def test_call_normalises_the_reference_pixels(key: str, reference: dict[str, np.ndarray]) -> None:
    photo, size, crop_pct = key.split("|")
    preprocessor = make_preprocessor(int(size), float(crop_pct))
    tensor = preprocessor((PHOTOS / photo).read_bytes())
    # Independent formula in float64, channels first.
    mean = np.asarray(IMAGENET_MEAN)[:, None, None]
    std = np.asarray(IMAGENET_STD)[:, None, None]
    expected = (reference[key].transpose(2, 0, 1) / 255.0 - mean) / std
    assert tensor.dtype == np.float32
    assert tensor.shape == (3, int(size), int(size)) == preprocessor.output_shape
    assert tensor.flags.c_contiguous
    np.testing.assert_allclose(tensor, expected, rtol=0, atol=1e-6)


def test_constructor_refuses_nonsense_limits_and_interpolations() -> None:
    with pytest.raises(ValueError, match="max_image_bytes"):
        make_preprocessor(max_image_bytes=0)
    with pytest.raises(ValueError, match="max_image_pixels"):
        make_preprocessor(max_image_pixels=-1)
    bilinear = make_metadata().model_copy(update={"interpolation": "bilinear"})
    with pytest.raises(ValueError, match="bicubic"):
        ImagePreprocessor(bilinear, max_image_bytes=10, max_image_pixels=10)


def test_process_wide_pillow_settings_that_weaken_checks_are_logged(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with caplog.at_level(logging.WARNING, logger="app.imaging"):
        make_preprocessor(max_image_pixels=Image.MAX_IMAGE_PIXELS + 1)
    assert "LOAD_TRUNCATED_IMAGES" in caplog.text
    assert "MAX_IMAGE_PIXELS" in caplog.text


def test_concurrent_calls_give_the_sequential_results(preprocessor: ImagePreprocessor) -> None:
    payloads = [path.read_bytes() for path in sorted(PHOTOS.iterdir())] * 3
    sequential = [preprocessor(data) for data in payloads]
    with ThreadPoolExecutor(max_workers=4) as pool:
        concurrent = list(pool.map(preprocessor, payloads))
    for expected, got in zip(sequential, concurrent, strict=True):
        np.testing.assert_array_equal(got, expected)


def test_imaging_does_not_import_torch() -> None:
    code = "import sys, app.imaging; sys.exit(1 if 'torch' in sys.modules else 0)"
    root = Path(__file__).resolve().parents[3]
    result = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, check=False)
    assert result.returncode == 0, result.stderr.decode()

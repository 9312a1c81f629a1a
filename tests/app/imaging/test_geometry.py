"""timm's resize + centre crop: torchvision's size arithmetic worked by hand, the aspect-ratio limit,
and the resize split over two threads, which must be bit-identical to one call."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from PIL import Image

from app.errors import PayloadTooLargeError
from app.imaging import (
    SPLIT_RESIZE_MIN_PIXELS,
    DecodePool,
    center_crop_box,
    resized_size,
)
from app.imaging import geometry as geometry_module
from tests.app.imaging.conftest import PHOTOS, REFERENCE_KEYS, RecordingPool, make_preprocessor
from tests.support.images import encode


@pytest.mark.parametrize(
    ("size", "shorter", "expected"),
    [
        ((500, 375), 248, (330, 248)),  # 248 * 500 / 375 = 330.67 -> truncated, not rounded
        ((375, 500), 248, (248, 330)),
        ((300, 300), 248, (248, 248)),
        ((1, 1), 248, (248, 248)),
        ((451, 300), 235, (353, 235)),  # 353.28
        ((300, 451), 235, (235, 353)),
    ],
)
def test_resized_size_truncates_the_long_side_like_torchvision(
    size: tuple[int, int], shorter: int, expected: tuple[int, int]
) -> None:
    assert resized_size(*size, shorter) == expected


@pytest.mark.parametrize(
    ("width", "height", "crop", "expected"),
    [
        (330, 248, 224, (53, 12, 277, 236)),
        (225, 224, 224, (0, 0, 224, 224)),  # surplus 1: offset 0.5 rounds half-to-even -> 0
        (227, 224, 224, (2, 0, 226, 224)),  # surplus 3: offset 1.5 rounds half-to-even -> 2
        (224, 229, 224, (0, 2, 224, 226)),  # surplus 5: offset 2.5 rounds half-to-even -> 2
        (224, 224, 224, (0, 0, 224, 224)),
    ],
)
def test_center_crop_box_rounds_offsets_like_torchvision(
    width: int, height: int, crop: int, expected: tuple[int, int, int, int]
) -> None:
    assert center_crop_box(width, height, crop) == expected


@pytest.mark.parametrize(
    ("image_size", "crop_pct", "expected"),
    [(224, 0.9, 248), (224, 0.95, 235), (384, 0.95, 404), (288, 0.9, 320), (224, 0.8, 280), (224, 1.0, 224)],
)
def test_resize_size_is_timms_floor_of_size_over_crop_pct(
    image_size: int, crop_pct: float, expected: int
) -> None:
    # Worked by hand: 288 / 0.9 = 320 and 224 / 0.8 = 280 exactly, which float floor division misses.
    assert make_preprocessor(image_size, crop_pct).resize_size == expected


def test_image_already_at_resize_size_is_only_centre_cropped() -> None:
    # 320 is the shorter side timm resizes to for 288 / 0.9, so timm leaves these pixels untouched.
    source = np.random.default_rng(3).integers(0, 256, size=(320, 400, 3), dtype=np.uint8)
    preprocessor = make_preprocessor(288, 0.9)
    pixels = preprocessor.transform(Image.fromarray(source))
    np.testing.assert_array_equal(pixels, source[16:304, 56:344])


@pytest.mark.parametrize("key", REFERENCE_KEYS)
def test_split_resize_is_pixel_exact_with_timm(
    key: str, reference: dict[str, np.ndarray], helper: RecordingPool
) -> None:
    photo, size, crop_pct = key.split("|")
    preprocessor = make_preprocessor(int(size), float(crop_pct), offload=helper.submit_if_idle)
    image = preprocessor.decode((PHOTOS / photo).read_bytes())
    np.testing.assert_array_equal(preprocessor.transform(image), reference[key])
    width, height = image.size
    # Photos of at least 0.2 Mpixel (7 of the 8) really take the two-thread path.
    assert helper.submitted == (1 if width * height >= SPLIT_RESIZE_MIN_PIXELS else 0)


@pytest.mark.parametrize(
    ("width", "height", "splits"),  # splits: of the two configurations below
    [
        (640, 480, 2),  # landscape
        (481, 777, 2),  # portrait, odd height: bands of 388 and 389 rows
        (4032, 3024, 2),  # a phone photo
        (300, 2, 2),  # two rows: one per band
        (97, 61, 2),  # upsampled to 248 on the shorter side
        (1000, 1999, 2),  # the height loses exactly twice the width's pixels: horizontal first
        (1000, 2100, 0),  # over 2:1: Pillow 13 resizes vertically first, so no split
        # To 248 wide the height loses 5 rows to the width's 1 (vertical first); to 404 both grow.
        (249, 1000, 1),
    ],
)
def test_split_resize_equals_one_resize_at_every_shape(
    width: int, height: int, splits: int, helper: RecordingPool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(geometry_module, "SPLIT_RESIZE_MIN_PIXELS", 1)  # split even tiny images
    noise = np.random.default_rng(width * height).integers(0, 256, (height, width, 3), dtype=np.uint8)
    image = Image.fromarray(noise)
    for image_size, crop_pct in ((224, 0.9), (384, 0.95)):
        expected = make_preprocessor(image_size, crop_pct).transform(image)
        got = make_preprocessor(image_size, crop_pct, offload=helper.submit_if_idle).transform(image)
        np.testing.assert_array_equal(got, expected)
    assert helper.submitted == splits


def test_split_resize_borrows_no_thread_when_every_thread_has_work(
    phone_photo: bytes, helper: RecordingPool
) -> None:
    expected = make_preprocessor()(phone_photo)
    preprocessor = make_preprocessor(offload=helper.submit_if_idle)
    release = threading.Event()
    blockers = [helper.submit(release.wait) for _ in range(helper.workers)]
    try:
        # Called here, outside the pool, while both threads are taken: one ordinary resize.
        np.testing.assert_array_equal(preprocessor(phone_photo), expected)
        assert helper.submitted == 0
    finally:
        release.set()
    for blocker in blockers:
        blocker.result(timeout=10)
    np.testing.assert_array_equal(preprocessor(phone_photo), expected)  # now a thread is idle
    assert helper.submitted == 1


def test_split_resize_inside_a_one_thread_pool_never_waits_for_itself(phone_photo: bytes) -> None:
    # The only thread is the one running the call: it has no idle thread to borrow.
    expected = make_preprocessor()(phone_photo)
    with DecodePool(1) as pool:
        preprocessor = make_preprocessor(offload=pool.submit_if_idle)
        np.testing.assert_array_equal(pool.submit(preprocessor, phone_photo).result(timeout=60), expected)
        assert pool.outstanding == 0


def test_split_resize_with_a_shut_down_pool_resizes_alone(phone_photo: bytes) -> None:
    pool = DecodePool(2)
    pool.shutdown()
    np.testing.assert_array_equal(
        make_preprocessor(offload=pool.submit_if_idle)(phone_photo), make_preprocessor()(phone_photo)
    )
    assert pool.outstanding == 0


def test_extreme_aspect_ratio_is_refused_before_decoding() -> None:
    preprocessor = make_preprocessor(max_image_pixels=1_000_000)
    strip = encode(Image.new("RGB", (5000, 1)), "PNG")  # 5000 pixels: within the pixel limit
    blocks_before = Image.core.get_stats()["new_count"]
    with pytest.raises(PayloadTooLargeError, match="aspect ratio"):
        preprocessor.decode(strip)  # its header says it would resize to 1,240,000 x 248
    assert Image.core.get_stats()["new_count"] == blocks_before  # not a pixel was decoded


def test_extreme_aspect_ratio_is_refused_before_resizing() -> None:
    # The same rule guards the transform for an image that did not come through the decoder.
    preprocessor = make_preprocessor(max_image_pixels=1_000_000)
    strip = Image.new("RGB", (5000, 1))
    blocks_before = Image.core.get_stats()["new_count"]
    with pytest.raises(PayloadTooLargeError, match="aspect ratio"):
        preprocessor.transform(strip)
    assert Image.core.get_stats()["new_count"] == blocks_before
    # A 16:1 panorama is always served.
    panorama = preprocessor.decode(encode(Image.new("RGB", (1600, 100)), "PNG"))
    assert preprocessor.transform(panorama).shape == (224, 224, 3)

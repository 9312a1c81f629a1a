"""ImagePreprocessor: pixel-exact with timm's eval transform, every supported mode, every refusal.

The exactness reference is `tests/fixtures/preprocess/preprocess_expected.npz`, produced by timm's
`create_transform` on scikit-image's sample photos (copied into `tests/fixtures/preprocess/photos/`).
Every other expectation is computed independently of the module under test (numpy on the source
pixels, hand-worked torchvision arithmetic), never from the module's own earlier output.
"""

from __future__ import annotations

import contextlib
import io
import logging
import struct
import subprocess
import sys
import threading
import tracemalloc
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from app import preprocess as preprocess_module
from app.errors import ImageDecodeError, PayloadTooLargeError, UnsupportedMediaTypeError
from app.preprocess import (
    SPLIT_RESIZE_MIN_PIXELS,
    SUPPORTED_CONTENT_TYPES,
    SUPPORTED_FORMATS,
    DecodePool,
    ImagePreprocessor,
    center_crop_box,
    check_content_type,
    resized_size,
)
from runtime.metadata import IMAGENET_MEAN, IMAGENET_STD, ModelMetadata

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "preprocess"
PHOTOS = FIXTURES / "photos"
REFERENCE = FIXTURES / "preprocess_expected.npz"
REPO_ROOT = Path(__file__).resolve().parents[2]

with np.load(REFERENCE) as _reference:
    REFERENCE_KEYS = sorted(_reference.files)


def make_metadata(image_size: int = 224, crop_pct: float = 0.9) -> ModelMetadata:
    return ModelMetadata(
        variant="transxnet_t",
        image_size=image_size,
        crop_pct=crop_pct,
        num_classes=2,
        labels=("cat", "dog"),
        weights="random-init seed 0",
        pretrained=False,
        embed_dim=448,
    )


def make_preprocessor(
    image_size: int = 224,
    crop_pct: float = 0.9,
    *,
    max_image_bytes: int = 20_000_000,
    max_image_pixels: int = 40_000_000,
    jpeg_reducing_gap: float = 0.0,
    resize_helper: DecodePool | None = None,
) -> ImagePreprocessor:
    return ImagePreprocessor(
        make_metadata(image_size, crop_pct),
        max_image_bytes=max_image_bytes,
        max_image_pixels=max_image_pixels,
        jpeg_reducing_gap=jpeg_reducing_gap,
        resize_helper=resize_helper,
    )


@pytest.fixture(scope="module")
def preprocessor() -> ImagePreprocessor:
    return make_preprocessor()


@pytest.fixture(scope="module")
def reference() -> dict[str, np.ndarray]:
    with np.load(REFERENCE) as data:
        return {key: data[key] for key in data.files}


def encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def gradient_rgb(width: int = 40, height: int = 30) -> np.ndarray:
    """A deterministic image with distinct values along both axes and in every channel."""
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([(x * 6) % 256, (y * 8) % 256, (x * 3 + y * 5) % 256], axis=-1).astype(np.uint8)


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_declaring(width: int, height: int) -> bytes:
    """A ~60-byte PNG whose header claims width x height RGB pixels: a decompression bomb's shape."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + png_chunk(b"IEND", b"")
    )


# --- exactness against timm ------------------------------------------------------------------------


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


def test_normalisation_is_bitwise_equal_to_torch_to_tensor_and_normalize(
    preprocessor: ImagePreprocessor,
) -> None:
    torch = pytest.importorskip("torch")
    pixels = np.random.default_rng(0).integers(0, 256, size=(224, 224, 3), dtype=np.uint8)
    # What torchvision's ToTensor + Normalize compute: float32 divide by 255, subtract, divide.
    tensor = torch.from_numpy(pixels).permute(2, 0, 1).to(torch.float32).div(255)
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32)[:, None, None]
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32)[:, None, None]
    expected = tensor.sub(mean).div(std).numpy()
    np.testing.assert_array_equal(preprocessor.normalize(pixels), expected)


def test_normalisation_uses_the_metadata_mean_and_std() -> None:
    metadata = make_metadata().model_copy(update={"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.25, 0.125)})
    preprocessor = ImagePreprocessor(metadata, max_image_bytes=1000, max_image_pixels=1000)
    pixels = np.full((2, 2, 3), 255, dtype=np.uint8)
    out = preprocessor.normalize(pixels)
    np.testing.assert_allclose(out[:, 0, 0], [1.0, 2.0, 4.0], rtol=0, atol=1e-6)


# --- torchvision's size arithmetic, worked by hand -------------------------------------------------


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


# --- colour modes and formats ----------------------------------------------------------------------


def test_grayscale_png_repeats_the_grey_channel(preprocessor: ImagePreprocessor) -> None:
    grey = gradient_rgb()[..., 0]
    decoded = preprocessor.decode(encode(Image.fromarray(grey, mode="L"), "PNG"))
    assert decoded.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(decoded), np.repeat(grey[..., None], 3, axis=-1))


def test_palette_png_with_transparency_uses_palette_colours(preprocessor: ImagePreprocessor) -> None:
    rng = np.random.default_rng(1)
    palette = rng.integers(0, 256, size=(256, 3), dtype=np.uint8)
    indices = rng.integers(0, 256, size=(20, 30), dtype=np.uint8)
    image = Image.fromarray(indices, mode="P")
    image.putpalette(palette.tobytes())
    data = encode(image, "PNG", transparency=7)
    decoded = preprocessor.decode(data)
    # timm's convert('RGB') drops transparency: transparent pixels keep their palette colour.
    np.testing.assert_array_equal(np.asarray(decoded), palette[indices])


@pytest.mark.parametrize("fmt", ["PNG", "WEBP", "TIFF"])
def test_rgba_drops_alpha_as_timm_does(preprocessor: ImagePreprocessor, fmt: str) -> None:
    rgb = gradient_rgb()
    alpha = np.tile(np.arange(0, 240, 8, dtype=np.uint8)[:, None], (1, rgb.shape[1]))
    alpha[alpha == 0] = 1  # fully transparent pixels may be re-coloured by lossless WebP encoders
    rgba = np.dstack([rgb, alpha])
    params = {"lossless": True, "exact": True} if fmt == "WEBP" else {}
    decoded = preprocessor.decode(encode(Image.fromarray(rgba, mode="RGBA"), fmt, **params))
    np.testing.assert_array_equal(np.asarray(decoded), rgb)


def test_la_png_drops_alpha_and_repeats_grey(preprocessor: ImagePreprocessor) -> None:
    grey = gradient_rgb()[..., 1]
    alpha = np.full_like(grey, 128)
    decoded = preprocessor.decode(encode(Image.fromarray(np.dstack([grey, alpha]), mode="LA"), "PNG"))
    np.testing.assert_array_equal(np.asarray(decoded), np.repeat(grey[..., None], 3, axis=-1))


@pytest.mark.parametrize("fmt", ["PNG", "BMP", "TIFF"])
def test_bilevel_image_becomes_black_and_white(preprocessor: ImagePreprocessor, fmt: str) -> None:
    bits = (gradient_rgb()[..., 0] > 100).astype(np.uint8) * 255
    decoded = preprocessor.decode(encode(Image.fromarray(bits, mode="L").convert("1"), fmt))
    np.testing.assert_array_equal(np.asarray(decoded), np.repeat(bits[..., None], 3, axis=-1))


def test_cmyk_jpeg_converts_to_rgb(preprocessor: ImagePreprocessor) -> None:
    cmyk = np.zeros((32, 64, 4), dtype=np.uint8)
    cmyk[:, :32] = (255, 0, 0, 0)  # pure cyan
    cmyk[:, 32:] = (100, 0, 0, 100)
    data = encode(Image.fromarray(cmyk, mode="CMYK"), "JPEG", quality=100)
    decoded = np.asarray(preprocessor.decode(data)).astype(int)
    # Independent: R = (255 - C) * (255 - K) / 255 per channel (Pillow's documented CMYK -> RGB).
    assert np.abs(decoded[8:24, 4:28] - [0, 255, 255]).max() <= 3
    assert np.abs(decoded[8:24, 36:60] - [94, 155, 155]).max() <= 3


def test_16_bit_greyscale_png_keeps_the_high_byte_instead_of_clipping(
    preprocessor: ImagePreprocessor,
) -> None:
    samples = np.arange(0, 65536, 64, dtype=np.uint16).reshape(32, 32)
    image = Image.fromarray(samples)
    data = encode(image, "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I")  # really 16-bit on the way in
    decoded = np.asarray(preprocessor.decode(data))
    expected = (samples >> 8).astype(np.uint8)
    np.testing.assert_array_equal(decoded, np.repeat(expected[..., None], 3, axis=-1))
    # Pillow's plain convert('RGB') would have clipped nearly everything to white.
    assert np.count_nonzero(decoded == 255) < decoded.size // 100


def test_32_bit_integer_tiff_is_treated_as_16_bit_and_clipped(preprocessor: ImagePreprocessor) -> None:
    samples = np.array([[0, 256, 65535, 70000, -5, 32768]], dtype=np.int32)
    decoded = np.asarray(preprocessor.decode(encode(Image.fromarray(samples), "TIFF")))
    np.testing.assert_array_equal(decoded[..., 0], [[0, 1, 255, 255, 0, 128]])


def test_floating_point_tiff_is_refused_as_unsupported(preprocessor: ImagePreprocessor) -> None:
    data = encode(Image.fromarray(np.ones((4, 4), dtype=np.float32)), "TIFF")
    with pytest.raises(UnsupportedMediaTypeError, match="floating-point"):
        preprocessor.decode(data)


@pytest.mark.parametrize("fmt", ["PNG", "BMP", "TIFF", "GIF", "JPEG", "WEBP"])
def test_one_pixel_image_gives_a_constant_full_size_input(preprocessor: ImagePreprocessor, fmt: str) -> None:
    colour = (255, 255, 255) if fmt in ("JPEG", "WEBP") else (10, 200, 90)  # white survives lossy coding
    data = encode(Image.new("RGB", (1, 1), colour), fmt)
    pixels = preprocessor.transform(preprocessor.decode(data))
    assert pixels.shape == (224, 224, 3)
    np.testing.assert_array_equal(pixels, np.broadcast_to(np.array(colour, dtype=np.uint8), pixels.shape))
    assert preprocessor(data).shape == (3, 224, 224)


@pytest.mark.parametrize(
    ("fmt", "params"),
    [
        ("PNG", {}),
        ("BMP", {}),
        ("TIFF", {}),
        ("WEBP", {"lossless": True}),
        ("TIFF", {"compression": "tiff_lzw"}),
    ],
)
def test_lossless_formats_decode_to_the_source_pixels(
    preprocessor: ImagePreprocessor, fmt: str, params: dict[str, object]
) -> None:
    rgb = gradient_rgb()
    decoded = preprocessor.decode(encode(Image.fromarray(rgb), fmt, **params))
    assert decoded.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(decoded), rgb)


def test_animated_gif_uses_the_first_frame(preprocessor: ImagePreprocessor) -> None:
    frames = [Image.new("RGB", (16, 16), colour) for colour in [(255, 0, 0), (0, 0, 255), (0, 255, 0)]]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    assert Image.open(io.BytesIO(data)).n_frames == 3
    decoded = np.asarray(preprocessor.decode(data))
    np.testing.assert_array_equal(decoded, np.broadcast_to(np.uint8([255, 0, 0]), decoded.shape))


def test_multi_picture_jpeg_uses_the_first_picture(preprocessor: ImagePreprocessor) -> None:
    first, second = Image.new("RGB", (16, 16), (255, 255, 255)), Image.new("RGB", (16, 16), (0, 0, 0))
    data = encode(first, "MPO", save_all=True, append_images=[second])
    assert Image.open(io.BytesIO(data)).format == "MPO"
    decoded = np.asarray(preprocessor.decode(data))
    assert decoded.min() >= 250


def test_exif_orientation_6_is_applied(preprocessor: ImagePreprocessor) -> None:
    stored = np.zeros((32, 64, 3), dtype=np.uint8)
    stored[:, :32] = (255, 0, 0)  # left half red
    stored[:, 32:] = (0, 0, 255)  # right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: the stored image must be rotated 90 degrees clockwise to display
    plain = encode(Image.fromarray(stored), "JPEG", quality=95)
    tagged = encode(Image.fromarray(stored), "JPEG", quality=95, exif=exif.tobytes())
    as_stored = np.asarray(preprocessor.decode(plain))
    displayed = np.asarray(preprocessor.decode(tagged))
    # Same JPEG pixel data, so the rotation is checked exactly against numpy's clockwise rot90.
    np.testing.assert_array_equal(displayed, np.rot90(as_stored, k=-1))
    assert displayed.shape == (64, 32, 3)
    assert displayed[4, 16, 0] > 200 and displayed[4, 16, 2] < 50  # top is red once rotated
    assert displayed[60, 16, 2] > 200 and displayed[60, 16, 0] < 50


def test_an_unreadable_exif_block_is_logged_and_the_image_served(
    preprocessor: ImagePreprocessor, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken_exif(*args: object, **kwargs: object) -> None:
        raise SyntaxError("not a TIFF file")

    monkeypatch.setattr("app.preprocess.ImageOps.exif_transpose", broken_exif)
    rgb = gradient_rgb()
    with caplog.at_level(logging.WARNING, logger="app.preprocess"):
        decoded = preprocessor.decode(encode(Image.fromarray(rgb), "PNG"))
    np.testing.assert_array_equal(np.asarray(decoded), rgb)
    assert "EXIF" in caplog.text


# --- resize split over two threads (bit-identical) ------------------------------------------------


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


@pytest.mark.parametrize("key", REFERENCE_KEYS)
def test_split_resize_is_pixel_exact_with_timm(
    key: str, reference: dict[str, np.ndarray], helper: RecordingPool
) -> None:
    photo, size, crop_pct = key.split("|")
    preprocessor = make_preprocessor(int(size), float(crop_pct), resize_helper=helper)
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
    monkeypatch.setattr(preprocess_module, "SPLIT_RESIZE_MIN_PIXELS", 1)  # split even tiny images
    noise = np.random.default_rng(width * height).integers(0, 256, (height, width, 3), dtype=np.uint8)
    image = Image.fromarray(noise)
    for image_size, crop_pct in ((224, 0.9), (384, 0.95)):
        expected = make_preprocessor(image_size, crop_pct).transform(image)
        got = make_preprocessor(image_size, crop_pct, resize_helper=helper).transform(image)
        np.testing.assert_array_equal(got, expected)
    assert helper.submitted == splits


def test_split_resize_borrows_no_thread_when_every_thread_has_work(
    phone_photo: bytes, helper: RecordingPool
) -> None:
    expected = make_preprocessor()(phone_photo)
    preprocessor = make_preprocessor(resize_helper=helper)
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
        preprocessor = make_preprocessor(resize_helper=pool)
        np.testing.assert_array_equal(pool.submit(preprocessor, phone_photo).result(timeout=60), expected)
        assert pool.outstanding == 0


def test_split_resize_with_a_shut_down_pool_resizes_alone(phone_photo: bytes) -> None:
    pool = DecodePool(2)
    pool.shutdown()
    np.testing.assert_array_equal(
        make_preprocessor(resize_helper=pool)(phone_photo), make_preprocessor()(phone_photo)
    )
    assert pool.outstanding == 0


def test_decode_pool_counts_queued_running_and_cancelled_tasks() -> None:
    release = threading.Event()
    with DecodePool(1) as pool:
        running = pool.submit(release.wait)
        assert pool.submit_if_idle(int) is None  # the one thread is busy
        queued = pool.submit(int, 7)
        assert pool.outstanding == 2
        assert queued.cancel() and pool.outstanding == 1
        release.set()
        running.result(timeout=10)
        assert pool.outstanding == 0
        idle = pool.submit_if_idle(int, 3)
        assert idle is not None and idle.result(timeout=10) == 3
    assert pool.outstanding == 0


# --- reduced-scale JPEG decoding (opt-in, not pixel-exact) ---------------------------------------


@pytest.fixture(scope="module")
def phone_photo() -> bytes:
    """A 4032 x 3024 JPEG (a 12-Mpixel phone photo's size) with real photographic content."""
    with Image.open(PHOTOS / "astronaut.png") as photo:
        large = photo.convert("RGB").resize((4032, 3024), Image.Resampling.BICUBIC)
    return encode(large, "JPEG", quality=90)


@pytest.mark.parametrize(
    ("gap", "stored", "decoded"),
    [
        # Resize target 330 x 248; libjpeg scales by the largest of 8, 4, 2 that keeps gap x target.
        (1.0, (4032, 3024), (504, 378)),  # 3024 // 248 = 12 -> 1/8
        (2.0, (4032, 3024), (1008, 756)),  # 3024 // 496 = 6 -> 1/4
        (2.0, (2000, 1500), (1000, 750)),  # 1500 // 496 = 3 -> 1/2
        (2.0, (900, 600), (900, 600)),  # 600 // 496 = 1: nothing to gain, decoded as stored
        (1.0, (3024, 4032), (378, 504)),  # portrait: the shorter side still decides
    ],
)
def test_reducing_gap_decodes_large_jpegs_at_the_scale_the_gap_allows(
    gap: float, stored: tuple[int, int], decoded: tuple[int, int]
) -> None:
    data = encode(Image.fromarray(gradient_rgb(*stored)), "JPEG", quality=85)
    assert make_preprocessor(jpeg_reducing_gap=gap).decode(data).size == decoded
    assert make_preprocessor().decode(data).size == stored  # off by default


@pytest.mark.parametrize("gap", [1.0, 2.0])
def test_reduced_scale_decoding_stays_close_to_the_exact_transform(phone_photo: bytes, gap: float) -> None:
    exact = make_preprocessor()
    reduced = make_preprocessor(jpeg_reducing_gap=gap)
    expected = exact.transform(exact.decode(phone_photo)).astype(np.int16)
    pixels = reduced.transform(reduced.decode(phone_photo))
    assert pixels.shape == expected.shape == (224, 224, 3)
    diff = np.abs(pixels.astype(np.int16) - expected)
    # Measured: mean 0.63 / max 13 grey levels at gap 1, 0.22 / 3 at gap 2. A wrong crop, scale or
    # orientation would move the mean by tens of levels; an unreduced decode would give exactly 0.
    assert 0 < diff.mean() < (1.0 if gap == 1.0 else 0.4)
    assert diff.max() <= (20 if gap == 1.0 else 6)


def test_reduced_scale_decoding_matches_timm_where_it_cannot_reduce(reference: dict[str, np.ndarray]) -> None:
    # hubble_deep_field.jpg is 1000 x 872: at gap 2 (568 x 496 needed) no 1/2 decode fits, so the
    # result must still be timm's, bit for bit; at gap 1 it decodes at 1/2 and must stay close.
    key = "hubble_deep_field.jpg|224|0.9"
    data = (PHOTOS / "hubble_deep_field.jpg").read_bytes()
    at_two = make_preprocessor(jpeg_reducing_gap=2.0)
    np.testing.assert_array_equal(at_two.transform(at_two.decode(data)), reference[key])
    at_one = make_preprocessor(jpeg_reducing_gap=1.0)
    image = at_one.decode(data)
    assert image.size == (500, 436)
    diff = np.abs(at_one.transform(image).astype(np.int16) - reference[key].astype(np.int16))
    assert 0 < diff.mean() < 1.0  # measured 0.58 on this star field, the worst case for a low-pass


def test_reduced_scale_decoding_applies_exif_orientation_after_reducing() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    stored = np.zeros((1000, 2000, 3), dtype=np.uint8)
    stored[:, :1000] = (255, 0, 0)  # left half red: the top once rotated
    data = encode(Image.fromarray(stored), "JPEG", quality=90, exif=exif.tobytes())
    decoded = np.asarray(make_preprocessor(jpeg_reducing_gap=2.0).decode(data))
    assert decoded.shape == (1000, 500, 3)  # 2000 x 1000 stored, 1/2 scale, then rotated
    assert decoded[10, 250, 0] > 200 and decoded[990, 250, 0] < 50


def test_reduced_scale_decoding_leaves_other_formats_exact() -> None:
    rgb = gradient_rgb(2000, 1500)
    reduced = make_preprocessor(jpeg_reducing_gap=1.0)
    exact = make_preprocessor()
    data = encode(Image.fromarray(rgb), "PNG")
    np.testing.assert_array_equal(reduced(data), exact(data))
    assert not exact.jpeg_reducing_gap and exact.pixel_exact and not reduced.pixel_exact


def test_reduced_scale_decoding_keeps_the_limits_and_refusals(phone_photo: bytes) -> None:
    # The pixel limit is on the stored size, not the reduced one.
    tight = make_preprocessor(max_image_pixels=4032 * 3024 - 1, jpeg_reducing_gap=1.0)
    with pytest.raises(PayloadTooLargeError, match="4032x3024"):
        tight.decode(phone_photo)
    with pytest.raises(ImageDecodeError, match="truncated or corrupt"):
        make_preprocessor(jpeg_reducing_gap=1.0).decode(phone_photo[: len(phone_photo) // 2])


@pytest.mark.parametrize("gap", [0.5, -1.0, float("nan")])
def test_reducing_gap_between_zero_and_one_is_refused(gap: float) -> None:
    with pytest.raises(ValueError, match="jpeg_reducing_gap"):
        make_preprocessor(jpeg_reducing_gap=gap)


# --- refusals --------------------------------------------------------------------------------------


def test_empty_body_is_a_decode_error(preprocessor: ImagePreprocessor) -> None:
    with pytest.raises(ImageDecodeError, match="empty"):
        preprocessor(b"")


def test_random_bytes_are_a_decode_error(preprocessor: ImagePreprocessor) -> None:
    with pytest.raises(ImageDecodeError):
        preprocessor(np.random.default_rng(0).bytes(4096))


@pytest.mark.parametrize("photo", ["rocket.jpg", "chelsea.png"])
def test_truncated_file_is_a_decode_error(preprocessor: ImagePreprocessor, photo: str) -> None:
    data = (PHOTOS / photo).read_bytes()
    with pytest.raises(ImageDecodeError, match="truncated or corrupt"):
        preprocessor.decode(data[: len(data) // 2])


def test_corrupted_png_data_is_a_decode_error(preprocessor: ImagePreprocessor) -> None:
    data = bytearray((PHOTOS / "chelsea.png").read_bytes())
    data[2000:2400] = bytes(400)  # zero out compressed pixel data: CRC and zlib both fail
    with pytest.raises(ImageDecodeError):
        preprocessor.decode(bytes(data))


def test_too_many_bytes_is_payload_too_large() -> None:
    data = (PHOTOS / "rocket.jpg").read_bytes()
    preprocessor = make_preprocessor(max_image_bytes=len(data) - 1)
    with pytest.raises(PayloadTooLargeError, match="bytes"):
        preprocessor.decode(data)
    assert make_preprocessor(max_image_bytes=len(data)).decode(data).size == (640, 427)


@pytest.mark.parametrize(
    ("width", "height", "max_pixels"),
    [
        (5_000, 5_000, 1_000_000),  # refused by our limit; Pillow's own would have let it through
        (100_000, 100_000, 40_000_000),  # also above twice Pillow's global limit: its bomb error -> 413
    ],
)
def test_png_bomb_is_refused_before_its_pixels_are_allocated(
    width: int, height: int, max_pixels: int
) -> None:
    preprocessor = make_preprocessor(max_image_pixels=max_pixels)
    data = png_declaring(width, height)
    assert len(data) < 100
    limit_before = Image.MAX_IMAGE_PIXELS
    blocks_before = Image.core.get_stats()["new_count"]
    tracemalloc.start()
    try:
        with pytest.raises(PayloadTooLargeError, match="pixels"):
            preprocessor.decode(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2_000_000
    # Pillow allocates pixel storage in C, invisible to tracemalloc: its own counter must not move.
    assert Image.core.get_stats()["new_count"] == blocks_before
    assert limit_before == Image.MAX_IMAGE_PIXELS


def test_pillow_allocation_counter_sees_a_real_decode(preprocessor: ImagePreprocessor) -> None:
    # Guards the bomb test above: the counter it relies on does move when pixels are decoded.
    blocks_before = Image.core.get_stats()["new_count"]
    preprocessor.decode(encode(Image.new("RGB", (8, 8)), "PNG"))
    assert Image.core.get_stats()["new_count"] > blocks_before


def test_pixel_limit_is_inclusive() -> None:
    data = encode(Image.new("RGB", (100, 50)), "PNG")
    assert make_preprocessor(max_image_pixels=5000).decode(data).size == (100, 50)
    with pytest.raises(PayloadTooLargeError):
        make_preprocessor(max_image_pixels=4999).decode(data)


def test_extreme_aspect_ratio_is_refused_before_resizing() -> None:
    preprocessor = make_preprocessor(max_image_pixels=1_000_000)
    strip = preprocessor.decode(encode(Image.new("RGB", (5000, 1)), "PNG"))  # 5000 pixels: within limits
    blocks_before = Image.core.get_stats()["new_count"]
    with pytest.raises(PayloadTooLargeError, match="aspect ratio"):
        preprocessor.transform(strip)  # would resize to 1,240,000 x 248
    assert Image.core.get_stats()["new_count"] == blocks_before
    # A 16:1 panorama is always served.
    panorama = preprocessor.decode(encode(Image.new("RGB", (1600, 100)), "PNG"))
    assert preprocessor.transform(panorama).shape == (224, 224, 3)


@pytest.mark.parametrize(("fmt", "name"), [("ICO", "ICO"), ("PPM", "PPM"), ("TGA", "TGA")])
def test_formats_pillow_reads_but_we_do_not_serve_are_unsupported(
    preprocessor: ImagePreprocessor, fmt: str, name: str
) -> None:
    data = encode(Image.fromarray(gradient_rgb(16, 16)), fmt)
    with pytest.raises(UnsupportedMediaTypeError, match=name) as raised:
        preprocessor.decode(data)
    assert "JPEG" in raised.value.message
    assert raised.value.status_code == 415


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow warns about each mangled TIFF tag
def test_no_pillow_exception_escapes_on_mangled_inputs(preprocessor: ImagePreprocessor) -> None:
    rng = np.random.default_rng(2)
    sources = [(PHOTOS / name).read_bytes() for name in ("rocket.jpg", "logo.png")]
    sources.append(encode(Image.fromarray(gradient_rgb()), "GIF"))
    sources.append(encode(Image.fromarray(gradient_rgb()), "TIFF"))
    sources.append(encode(Image.fromarray(gradient_rgb()), "BMP"))
    sources.append(encode(Image.fromarray(gradient_rgb()), "WEBP"))
    for source in sources:
        for _ in range(25):
            data = np.frombuffer(source, dtype=np.uint8).copy()
            positions = rng.integers(0, min(len(data), 512), size=8)  # headers hold the fragile fields
            data[positions] = rng.integers(0, 256, size=8, dtype=np.uint8)
            # Success or one of our errors; any other exception type fails the test.
            with contextlib.suppress(ImageDecodeError, UnsupportedMediaTypeError, PayloadTooLargeError):
                preprocessor(data.tobytes())


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
    with caplog.at_level(logging.WARNING, logger="app.preprocess"):
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


# --- content types ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    [
        None,
        "",
        "image/png",
        "image/jpeg; charset=binary",
        "IMAGE/JPEG",
        "image/webp",
        "image/bmp",
        "image/x-ms-bmp",
        "image/gif",
        "image/tiff",
        "application/octet-stream",
    ],
)
def test_image_content_types_are_accepted(content_type: str | None) -> None:
    check_content_type(content_type)


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/json", "image/svg+xml", "image/avif", "video/mp4"]
)
def test_other_content_types_are_unsupported_and_the_message_lists_what_is_accepted(
    content_type: str,
) -> None:
    with pytest.raises(UnsupportedMediaTypeError) as raised:
        check_content_type(content_type)
    assert "image/jpeg" in raised.value.message and "image/png" in raised.value.message


def test_supported_sets_cover_the_documented_formats() -> None:
    assert {"JPEG", "MPO", "PNG", "WEBP", "BMP", "GIF", "TIFF"} == SUPPORTED_FORMATS
    for content_type in ("image/jpeg", "image/png", "image/webp", "image/bmp", "image/gif", "image/tiff"):
        assert content_type in SUPPORTED_CONTENT_TYPES


def test_module_does_not_import_torch() -> None:
    code = "import sys, app.preprocess; sys.exit(1 if 'torch' in sys.modules else 0)"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, check=False)
    assert result.returncode == 0, result.stderr.decode()

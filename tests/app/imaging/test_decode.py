"""Decoding untrusted bytes: every colour mode and format as timm's convert('RGB') has it (16-bit
greyscale excepted, by design, and reduced band by band), EXIF orientation, opt-in reduced-scale JPEG
decoding, and every refusal (empty, random, truncated, corrupt, too many bytes, pixels or bytes of
decode memory, formats we do not serve). Structural caps: test_inspect.py; the hostile corpus:
test_hostile.py."""

from __future__ import annotations

import contextlib
import io
import logging
import tracemalloc

import numpy as np
import pytest
from PIL import Image

from app.errors import ImageDecodeError, OverloadedError, PayloadTooLargeError, UnsupportedMediaTypeError
from app.imaging import (
    SUPPORTED_FORMATS,
    ImageDecoder,
    ImagePreprocessor,
)
from tests.app.imaging.conftest import PHOTOS, make_preprocessor
from tests.support import hostile
from tests.support.images import encode, gradient_rgb, png_declaring


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

    monkeypatch.setattr("app.imaging.decode.ImageOps.exif_transpose", broken_exif)
    rgb = gradient_rgb()
    with caplog.at_level(logging.WARNING, logger="app.imaging"):
        decoded = preprocessor.decode(encode(Image.fromarray(rgb), "PNG"))
    np.testing.assert_array_equal(np.asarray(decoded), rgb)
    assert "EXIF" in caplog.text


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


@pytest.mark.parametrize(("fmt", "name"), [("ICO", "ICO"), ("PPM", "PPM"), ("TGA", "TGA")])
def test_formats_pillow_reads_but_we_do_not_serve_are_unsupported(
    preprocessor: ImagePreprocessor, fmt: str, name: str
) -> None:
    data = encode(Image.fromarray(gradient_rgb(16, 16)), fmt)
    with pytest.raises(UnsupportedMediaTypeError, match=name) as raised:
        preprocessor.decode(data)
    assert "JPEG" in raised.value.message
    assert raised.value.code == "unsupported_media_type"


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


def test_supported_formats_are_the_documented_ones() -> None:
    assert {"JPEG", "MPO", "PNG", "WEBP", "BMP", "GIF", "TIFF"} == SUPPORTED_FORMATS


# --- wide greyscale, decode memory and EXIF within the inspection caps ------------------------------


def test_16_bit_greyscale_keeps_the_high_byte_of_every_value(preprocessor: ImagePreprocessor) -> None:
    samples = np.arange(65536, dtype=np.uint16).reshape(256, 256)
    decoded = np.asarray(preprocessor.decode(encode(Image.fromarray(samples), "PNG")))
    np.testing.assert_array_equal(decoded[..., 1], (samples >> 8).astype(np.uint8))


def test_big_endian_16_bit_tiff_keeps_the_high_byte(preprocessor: ImagePreprocessor) -> None:
    samples = (np.arange(40 * 32, dtype=np.uint32) * 51 % 65536).astype(">u2").reshape(32, 40)
    data = hostile.tiff_grey16_big_endian(samples.tobytes(), 40, 32)
    assert Image.open(io.BytesIO(data)).mode == "I;16B"
    decoded = np.asarray(preprocessor.decode(data))
    np.testing.assert_array_equal(decoded[..., 0], (samples.astype(np.uint16) >> 8).astype(np.uint8))


def test_wide_greyscale_is_reduced_band_by_band_without_seams(preprocessor: ImagePreprocessor) -> None:
    # 300 rows: three bands of 128, 128 and 44, each row its own value.
    rows = (np.arange(300, dtype=np.uint32) * 218).astype(np.uint16)
    samples = np.repeat(rows[:, None], 7, axis=1)
    for data in (
        encode(Image.fromarray(samples), "PNG"),
        encode(Image.fromarray(samples.astype(np.int32)), "TIFF"),
    ):
        decoded = np.asarray(preprocessor.decode(data))
        np.testing.assert_array_equal(decoded[:, :, 2], (samples >> 8).astype(np.uint8))


def test_webp_is_served_up_to_half_the_pixel_limit(opened: list) -> None:
    # libwebp's decoder needs 16 bytes per pixel where the others need 8 at most.
    four = encode(Image.new("RGB", (4, 4), (9, 99, 199)), "WEBP", lossless=True)
    five = encode(Image.new("RGB", (5, 5), (9, 99, 199)), "WEBP", lossless=True)
    preprocessor = make_preprocessor(max_image_pixels=32)
    assert preprocessor.decode(four).size == (4, 4)
    opened.clear()
    with pytest.raises(PayloadTooLargeError, match="libwebp"):
        preprocessor.decode(five)
    assert opened == []
    assert make_preprocessor(max_image_pixels=50).decode(five).size == (5, 5)


def test_compressed_tiff_in_huge_strips_is_refused_for_libtiffs_buffer(opened: list) -> None:
    # 100 x 100 16-bit RGBA: one 80 KB strip for libtiff besides the image, over 8 bytes per pixel.
    preprocessor = make_preprocessor(max_image_pixels=10_000)
    with pytest.raises(PayloadTooLargeError, match="libtiff decompresses it 100 rows at a time"):
        preprocessor.decode(hostile.tiff_deflate(100, 100, bits=16, samples=4, rows_per_strip=100))
    assert opened == []
    decoded = np.asarray(
        preprocessor.decode(hostile.tiff_deflate(100, 100, bits=16, samples=4, rows_per_strip=8))
    )
    # The ramp's 16-bit samples become their high byte; the alpha channel is dropped.
    ramp = (np.resize(np.arange(256) * 257, 400).reshape(100, 4) >> 8).astype(np.uint8)
    np.testing.assert_array_equal(decoded[0], ramp[:, :3])


@pytest.mark.parametrize("fmt", ["PNG", "WEBP"])
def test_exif_orientation_in_png_and_webp_is_applied(preprocessor: ImagePreprocessor, fmt: str) -> None:
    stored = np.zeros((16, 32, 3), dtype=np.uint8)
    stored[:, :16] = (255, 0, 0)  # left half red: the top once rotated clockwise
    exif = Image.Exif()
    exif[0x0112] = 6
    params = {"lossless": True} if fmt == "WEBP" else {}
    decoded = np.asarray(
        preprocessor.decode(encode(Image.fromarray(stored), fmt, exif=exif.tobytes(), **params))
    )
    np.testing.assert_array_equal(decoded, np.rot90(stored, k=-1))


def test_a_corrupt_compressed_tiff_prints_nothing_past_the_log_format(
    preprocessor: ImagePreprocessor, capfd: pytest.CaptureFixture[str]
) -> None:
    # libtiff prints "ZIPDecode: Decoding error ..." to the process's stderr unless silenced; the
    # request still gets its 400, which names the failure.
    data = bytearray(encode(Image.fromarray(gradient_rgb(64, 48)), "TIFF", compression="tiff_adobe_deflate"))
    with Image.open(io.BytesIO(bytes(data))) as image:
        strip = image.tag_v2[273][0]
    data[strip + 2 : strip + 40] = bytes(38)  # past the zlib header: the deflate data is garbage
    capfd.readouterr()
    with pytest.raises(ImageDecodeError, match="cannot be decoded"):
        preprocessor.decode(bytes(data))
    assert capfd.readouterr().err == ""


class RecordingBudget:
    """A memory budget that admits up to `limit` bytes and records what was reserved and released."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0
        self.peak = 0
        self.reserved: list[int] = []

    def try_reserve(self, size: int) -> bool:
        if self.held + size > self.limit:
            return False
        self.held += size
        self.peak = max(self.peak, self.held)
        self.reserved.append(size)
        return True

    def release(self, size: int) -> None:
        self.held -= size


def test_a_decode_holds_its_peak_memory_in_the_budget_while_it_runs() -> None:
    from app.imaging.inspect import inspect_image

    data = encode(Image.fromarray(gradient_rgb(400, 300)), "PNG")
    budget = RecordingBudget(1 << 30)
    decoder = ImageDecoder(max_image_bytes=1 << 24, max_image_pixels=10**7, resize_size=248, memory=budget)
    assert decoder(data).size == (400, 300)
    assert budget.reserved == [inspect_image(data).decode_bytes]
    assert budget.held == 0  # released once the RGB image exists


def test_a_decode_the_budget_cannot_hold_is_overloaded_before_any_pixel_is_decoded() -> None:
    data = encode(Image.fromarray(gradient_rgb(400, 300)), "PNG")
    decoder = ImageDecoder(
        max_image_bytes=1 << 24, max_image_pixels=10**7, resize_size=248, memory=RecordingBudget(1000)
    )
    blocks_before = Image.core.get_stats()["new_count"]
    with pytest.raises(OverloadedError) as raised:
        decoder(data)
    assert raised.value.retry_after_s == 1
    assert Image.core.get_stats()["new_count"] == blocks_before

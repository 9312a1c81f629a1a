"""Header-only inspection: each cap accepts a file at it and refuses one past it (413) before any
Pillow reader runs; the sizes it reads agree with Pillow's on every kind of legitimate file; its own
work is bounded by the caps, not by the file."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from app.errors import ImageDecodeError, PayloadTooLargeError, ServiceError, UnsupportedMediaTypeError
from app.imaging import inspect as caps
from app.imaging import inspect_image
from tests.app.imaging.conftest import PHOTOS, make_preprocessor
from tests.support import hostile
from tests.support.images import encode, gradient_rgb


def refused(data: bytes, match: str) -> None:
    with pytest.raises(PayloadTooLargeError, match=match):
        inspect_image(data)


def segments_before_scan(jpeg: bytes) -> int:
    """Marker segments from the one after SOI to SOS, walked by their lengths (no stray bytes)."""
    pos, count = 2, 0
    while True:
        marker = jpeg[pos + 1]
        count += 1
        if marker == 0xDA:
            return count
        pos += 2 + struct.unpack_from(">H", jpeg, pos + 2)[0]


# --- JPEG -----------------------------------------------------------------------------------------


def test_jpeg_segments_before_the_first_scan_are_capped() -> None:
    base = segments_before_scan(hostile.small_jpeg())
    at_cap = hostile.jpeg_empty_app_markers(caps.JPEG_MAX_SEGMENTS - base)
    assert inspect_image(at_cap).format == "JPEG"
    refused(hostile.jpeg_empty_app_markers(caps.JPEG_MAX_SEGMENTS - base + 1), "1024 marker segments")


def test_jpeg_stray_bytes_between_markers_are_capped() -> None:
    assert inspect_image(hostile.jpeg_junk_between_markers(caps.JPEG_MAX_STRAY_BYTES)).format == "JPEG"
    with pytest.raises(ImageDecodeError, match="stray bytes"):
        inspect_image(hostile.jpeg_junk_between_markers(caps.JPEG_MAX_STRAY_BYTES + 1))
    # Fill bytes (0xFF runs before a marker) count as stray bytes too: Pillow reads them one by one.
    jpeg = hostile.small_jpeg()
    with pytest.raises(ImageDecodeError, match="stray bytes"):
        inspect_image(jpeg[:2] + b"\xff" * (caps.JPEG_MAX_STRAY_BYTES + 2) + jpeg[2:])


def test_jpeg_exif_is_capped_over_all_its_segments() -> None:
    # Two maximum-size APP1 segments fit the cap (the standard allows one); Pillow concatenates them.
    assert inspect_image(hostile.jpeg_exif_segments(2)).format == "JPEG"
    refused(hostile.jpeg_exif_segments(3), "bytes of EXIF")


def test_jpeg_scans_are_capped_by_count_and_by_count_times_pixels() -> None:
    small = hostile.jpeg_many_scans(0, side=64)
    base = small.count(b"\xff\xda")
    assert base == 10  # libjpeg's progressive script for colour images
    assert inspect_image(hostile.jpeg_many_scans(caps.JPEG_MAX_SCANS - base, side=64)).width == 64
    refused(hostile.jpeg_many_scans(caps.JPEG_MAX_SCANS - base + 1, side=64), "scans")
    # At 4096 x 4096 the scan-pixel product allows 95 scans, not 256 (the 12-s file had 1000).
    limit = caps.JPEG_MAX_SCAN_PIXELS // 4096**2
    assert limit == 95
    assert inspect_image(hostile.jpeg_many_scans(limit - base, side=4096)).width == 4096
    refused(hostile.jpeg_many_scans(limit - base + 1, side=4096), "95 scans")


def test_jpeg_markers_after_the_first_scan_are_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    data = hostile.jpeg_many_scans(0, side=64)  # 9 later scans and their Huffman tables, then EOI
    monkeypatch.setattr(caps, "JPEG_MAX_LATER_MARKERS", 5)
    refused(data, "markers after its first scan")


def test_jpeg_restart_markers_are_not_counted() -> None:
    # A restart marker after every MCU row: real files have thousands; only other markers count.
    data = encode(Image.fromarray(gradient_rgb(2000, 1600)), "JPEG", restart_marker_rows=1)
    assert data.count(b"\xff\xd0") + data.count(b"\xff\xd7") > 20
    assert inspect_image(data).width == 2000


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"\xff\xd8\xff\xd9", "end of image before its first scan"),
        (b"\xff\xd8\xff\xe0\x00\x01", "length 1"),
        (b"\xff\xd8\xff\xf7\x00\x04\x00\x00", "0xFFF7"),  # JPEG-LS, which libjpeg does not decode
        (b"\xff\xd8\xff\xda\x00\x02", "no frame header"),
        (b"\xff\xd8\xff\xe0\x00\x10", "does not fit"),
    ],
)
def test_malformed_jpeg_structure_is_a_decode_error(data: bytes, match: str) -> None:
    with pytest.raises(ImageDecodeError, match=match):
        inspect_image(data)


def test_jpeg_with_two_frame_headers_is_a_decode_error() -> None:
    jpeg = hostile.small_jpeg()
    sof = jpeg.index(b"\xff\xc0")
    length = struct.unpack_from(">H", jpeg, sof + 2)[0]
    doubled = jpeg[: sof + 2 + length] + jpeg[sof : sof + 2 + length] + jpeg[sof + 2 + length :]
    with pytest.raises(ImageDecodeError, match="two frame headers"):
        inspect_image(doubled)


# --- PNG ------------------------------------------------------------------------------------------


def test_png_metadata_chunks_are_capped_before_and_after_the_image_data() -> None:
    # IHDR counts among them: 255 private chunks reach the cap of 256.
    assert inspect_image(hostile.png_unknown_chunks(caps.PNG_MAX_METADATA_CHUNKS - 1)).format == "PNG"
    for after_data in (False, True):
        refused(
            hostile.png_unknown_chunks(caps.PNG_MAX_METADATA_CHUNKS, after_data=after_data), "metadata chunks"
        )


def test_png_image_data_chunks_are_capped() -> None:
    assert inspect_image(hostile.png_data_chunks(caps.PNG_MAX_DATA_CHUNKS)).width == 8
    refused(hostile.png_data_chunks(caps.PNG_MAX_DATA_CHUNKS + 1), "image data chunks")


def test_png_compressed_metadata_chunks_are_capped() -> None:
    assert (
        inspect_image(hostile.png_compressed_text(caps.PNG_MAX_COMPRESSED_CHUNKS, text_bytes=100)).width == 1
    )
    refused(
        hostile.png_compressed_text(caps.PNG_MAX_COMPRESSED_CHUNKS + 1, text_bytes=100), "compressed metadata"
    )


def test_png_exif_chunk_is_capped() -> None:
    exif = hostile.exif_with_long_tag(16)
    padded = exif + bytes(caps.EXIF_MAX_BYTES - len(exif))
    assert inspect_image(hostile.png_with_exif(padded)).width == 8
    refused(hostile.png_with_exif(padded + b"\x00"), "bytes of EXIF")


@pytest.mark.parametrize("kind", ["tEXt", "zTXt", "iTXt", "iTXt-compressed"])
def test_png_exif_text_is_capped_however_it_is_stored(kind: str) -> None:
    # ImageMagick stores EXIF as hex in "Raw profile type exif"; Pillow reads it as EXIF.
    def chunk(size: int) -> bytes:
        text = b"\nexif\n" + b"0" * size
        key = b"Raw profile type exif\x00"
        if kind == "tEXt":
            return hostile.png_chunk(b"tEXt", key + text)
        if kind == "zTXt":
            return hostile.png_chunk(b"zTXt", key + b"\x00" + zlib.compress(text))
        flag = b"\x01\x00" if kind == "iTXt-compressed" else b"\x00\x00"
        body = zlib.compress(text) if kind == "iTXt-compressed" else text
        return hostile.png_chunk(b"iTXt", key + flag + b"\x00\x00" + body)

    assert inspect_image(hostile.png_image(1, 1, chunks_before=[chunk(2 * caps.EXIF_MAX_BYTES)])).width == 1
    refused(hostile.png_image(1, 1, chunks_before=[chunk(2 * caps.EXIF_MAX_BYTES + 1100)]), "bytes of EXIF")


def test_png_without_ihdr_first_is_a_decode_error() -> None:
    data = hostile.PNG_SIGNATURE + hostile.png_chunk(b"tEXt", b"a\x00b") + hostile.png_declaring(8, 8)[8:]
    with pytest.raises(ImageDecodeError, match="IHDR"):
        inspect_image(data)


# --- GIF ------------------------------------------------------------------------------------------


def test_gif_extensions_before_the_first_image_are_capped() -> None:
    assert inspect_image(hostile.gif_many_extensions(caps.GIF_MAX_EXTENSIONS)).width == 1
    refused(hostile.gif_many_extensions(caps.GIF_MAX_EXTENSIONS + 1), "extension blocks")


def test_gif_extension_sub_blocks_are_capped() -> None:
    assert inspect_image(hostile.gif_comment_subblocks(caps.GIF_MAX_SUB_BLOCKS)).width == 1
    refused(hostile.gif_comment_subblocks(caps.GIF_MAX_SUB_BLOCKS + 1), "extension data blocks")


def test_gif_size_grows_to_the_first_frame_as_pillow_does() -> None:
    frame = b"," + struct.pack("<HHHHB", 30, 40, 1, 1, 0) + b"\x02\x02\x44\x01\x00"
    data = hostile.gif_with_extensions(b"", screen=(10, 10))[:19] + frame + b";"  # header, palette
    with Image.open(io.BytesIO(data)) as image:
        assert image.size == (31, 41)
    assert (inspect_image(data).width, inspect_image(data).height) == (31, 41)


# --- WebP -----------------------------------------------------------------------------------------


def test_webp_chunks_are_capped() -> None:
    # VP8X and the image chunk count too.
    assert inspect_image(hostile.webp_unknown_chunks(caps.WEBP_MAX_CHUNKS - 2)).width == 4
    refused(hostile.webp_unknown_chunks(caps.WEBP_MAX_CHUNKS - 1), "chunks")


def test_webp_exif_chunk_is_capped() -> None:
    assert inspect_image(hostile.webp_extended(exif=bytes(caps.EXIF_MAX_BYTES))).width == 4
    refused(hostile.webp_extended(exif=bytes(caps.EXIF_MAX_BYTES + 1)), "bytes of EXIF")


def test_webp_declares_its_decoders_working_memory() -> None:
    header = inspect_image(hostile.webp_extended(canvas=4))
    assert header.working_bytes == caps.WEBP_WORKING_BYTES_PER_PIXEL * 16
    assert header.decode_bytes == 4 * 16 + 12 * 16


def test_truncated_riff_is_a_decode_error() -> None:
    data = hostile.webp_extended()
    with pytest.raises(ImageDecodeError, match="RIFF"):
        inspect_image(data[:-10])


# --- BMP ------------------------------------------------------------------------------------------


def test_rle_bmp_has_a_pixel_limit_of_its_own() -> None:
    assert inspect_image(hostile.bmp_rle8_line_ends(2000, 1000)).width == 2000
    with pytest.raises(PayloadTooLargeError, match="RLE"):
        inspect_image(hostile.bmp_rle8_line_ends(2001, 1000))
    # Uncompressed BMPs are bounded by the ordinary pixel limit only.
    assert inspect_image(hostile.bmp_declaring(3000, 3000)).height == 3000


def test_top_down_bmp_has_its_height_as_pillow_reads_it() -> None:
    info = struct.pack("<IiiHHIIiiII", 40, 3, -2, 1, 24, 0, 0, 0, 0, 0, 0)
    data = b"BM" + struct.pack("<IHHI", 54 + 24, 0, 0, 54) + info + bytes(24)
    with Image.open(io.BytesIO(data)) as image:
        assert image.size == (3, 2)
    header = inspect_image(data)
    assert (header.width, header.height) == (3, 2)


# --- TIFF -----------------------------------------------------------------------------------------


def test_tiff_strips_and_tiles_are_capped() -> None:
    assert inspect_image(hostile.tiff_strips(1, caps.TIFF_MAX_STRIPS)).height == caps.TIFF_MAX_STRIPS
    refused(hostile.tiff_strips(1, caps.TIFF_MAX_STRIPS + 1), "strips or tiles")
    assert inspect_image(hostile.tiff_tiles(256, 128, tile=1)).width == 256  # 32768 tiles
    refused(hostile.tiff_tiles(257, 128, tile=1), "strips or tiles")


def test_tiff_directory_entries_are_capped() -> None:
    assert inspect_image(hostile.tiff_many_entries(caps.TIFF_MAX_ENTRIES)).width == 1
    refused(hostile.tiff_many_entries(caps.TIFF_MAX_ENTRIES + 1), "entries in one directory")


@pytest.mark.parametrize("in_exif_ifd", [False, True])
def test_tiff_tag_values_are_capped_per_directory(in_exif_ifd: bool) -> None:
    assert inspect_image(hostile.tiff_with_tag_values(200_000, in_exif_ifd=in_exif_ifd)).width == 1
    refused(hostile.tiff_with_tag_values(caps.TIFF_MAX_TAG_VALUES + 1, in_exif_ifd=in_exif_ifd), "tag values")


def test_tiff_pages_are_capped_and_a_loop_ends_the_chain(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(caps, "TIFF_MAX_PAGES", 3)
    assert inspect_image(hostile.tiff_pages(3)).width == 1
    refused(hostile.tiff_pages(4), "pages")
    assert inspect_image(hostile.tiff_pages(3, loop=True)).width == 1
    with Image.open(io.BytesIO(hostile.tiff_pages(3, loop=True))) as image:
        assert image.n_frames == 3  # Pillow also ends the chain at the loop


def test_floating_point_tiff_is_refused_from_its_header() -> None:
    data = encode(Image.fromarray(np.ones((4, 4), dtype=np.float32)), "TIFF")
    with pytest.raises(UnsupportedMediaTypeError, match="floating-point"):
        inspect_image(data)


def test_compressed_tiff_declares_libtiffs_strip_buffer() -> None:
    one_strip = inspect_image(hostile.tiff_deflate(100, 50, bits=16, samples=4, rows_per_strip=50))
    assert one_strip.working_bytes == 100 * 50 * 8
    strips = inspect_image(hostile.tiff_deflate(100, 50, bits=16, samples=4, rows_per_strip=8))
    assert strips.working_bytes == 100 * 8 * 8
    assert inspect_image(hostile.tiff_strips(10, 10)).working_bytes == 0  # uncompressed: Pillow's reader


def test_jpeg_compressed_tiff_scans_are_capped_per_strip() -> None:
    assert (
        inspect_image(hostile.tiff_jpeg_scans(caps.TIFF_JPEG_MAX_SCANS_PER_STRIP - 10, side=64)).width == 64
    )
    refused(hostile.tiff_jpeg_scans(caps.TIFF_JPEG_MAX_SCANS_PER_STRIP - 9, side=64), "JPEG scans per strip")


def test_tiff_without_a_size_is_a_decode_error() -> None:
    tiff = hostile.TiffBuilder()
    data = tiff.finish(tiff.ifd({259: tiff.values(hostile.SHORT, [1])}))
    with pytest.raises(ImageDecodeError, match="width or length"):
        inspect_image(data)


# --- every legitimate kind of file: inspection's size is Pillow's -----------------------------------


def legitimate_files() -> dict[str, bytes]:
    rgb = Image.fromarray(gradient_rgb(120, 90))

    class Frames:  # fresh images per save: Pillow leaves encoder settings on the images it saved
        def __getitem__(self, key: slice) -> list[Image.Image]:
            return [rgb.transpose(Image.Transpose.FLIP_LEFT_RIGHT), Image.new("RGB", (120, 90), (1, 2, 3))]

    frames = Frames()
    text = PngImagePlugin.PngInfo()
    text.add_text("Comment", "hello")
    text.add_text("Description", "x" * 5000, zip=True)
    text.add_itxt("XML:com.adobe.xmp", "<x:xmpmeta/>", zip=True)
    exif = Image.Exif()
    exif[0x0112] = 6
    files = {path.name: path.read_bytes() for path in sorted(PHOTOS.iterdir())}
    files |= {
        "phone.jpg": hostile.jpeg_exif_photo(800, 600),
        "progressive.jpg": encode(rgb, "JPEG", progressive=True),
        "cmyk.jpg": encode(rgb.convert("CMYK"), "JPEG"),
        "grey.jpg": encode(rgb.convert("L"), "JPEG"),
        "icc-split.jpg": encode(rgb, "JPEG", icc_profile=bytes(200_000)),  # four APP2 segments
        "mpo.mpo": encode(rgb, "MPO", save_all=True, append_images=frames[1:]),
        "palette-transparency.png": encode(rgb.quantize(16), "PNG", transparency=3),
        "text.png": encode(rgb, "PNG", pnginfo=text),
        "exif.png": encode(rgb, "PNG", exif=exif.tobytes()),
        "grey16.png": encode(Image.fromarray(gradient_rgb(120, 90)[..., 0].astype(np.uint16) * 257), "PNG"),
        "apng.png": encode(rgb, "PNG", save_all=True, append_images=frames[1:]),
        "animated.gif": encode(rgb, "GIF", save_all=True, append_images=frames[1:], comment=b"hi", loop=0),
        "lossy.webp": encode(rgb, "WEBP"),
        "lossless.webp": encode(rgb, "WEBP", lossless=True),
        "alpha.webp": encode(rgb.convert("RGBA"), "WEBP"),
        "exif.webp": encode(rgb, "WEBP", exif=exif.tobytes()),
        "animated.webp": encode(rgb, "WEBP", save_all=True, append_images=frames[1:]),
        "bmp.bmp": encode(rgb, "BMP"),
        "bmp-palette.bmp": encode(rgb.quantize(16), "BMP"),
        "tiff-lzw.tif": encode(rgb, "TIFF", compression="tiff_lzw"),
        "tiff-jpeg.tif": encode(rgb, "TIFF", compression="jpeg"),
        "tiff-deflate-exif.tif": encode(rgb, "TIFF", compression="tiff_adobe_deflate", exif=exif.tobytes()),
        "tiff-cmyk.tif": encode(rgb.convert("CMYK"), "TIFF"),
        "tiff-big.tif": encode(rgb, "TIFF", big_tiff=True),
        "tiff-big-endian-16.tif": hostile.tiff_grey16_big_endian(bytes(range(256)) * 10, 40, 32),
        "tiff-tiled.tif": hostile.tiff_tiles(100, 70, tile=16),
        "tiff-pages.tif": encode(rgb, "TIFF", save_all=True, append_images=frames[1:]),
    }
    return files


LEGITIMATE = legitimate_files()


@pytest.mark.parametrize("name", sorted(LEGITIMATE))
def test_inspection_accepts_legitimate_files_with_pillows_size(name: str) -> None:
    data = LEGITIMATE[name]
    header = inspect_image(data)
    with Image.open(io.BytesIO(data)) as image:
        assert header.format == image.format.replace("MPO", "JPEG")
        # Pillow swaps a TIFF's size for orientations 5-8; the pixel count is what the limits use.
        assert {header.width, header.height} == set(image.size)
        assert header.pixels == image.width * image.height
        image.load()  # and Pillow really decodes it


def test_inspection_of_a_20_mb_jpeg_is_bounded_by_its_markers_not_its_bytes() -> None:
    # A real large JPEG: the walk reads its few header segments and then counts markers in the
    # entropy-coded data at C speed; no Python loop runs per byte.
    noise = np.random.default_rng(0).integers(0, 256, (2400, 3200, 3), dtype=np.uint8)
    data = encode(Image.fromarray(noise), "JPEG", quality=100)
    assert len(data) > 15_000_000
    calls = 0
    original = caps._jpeg_segment

    def counted(*args):  # type: ignore[no-untyped-def]
        nonlocal calls
        calls += 1
        return original(*args)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(caps, "_jpeg_segment", counted)
        assert inspect_image(data).width == 3200
    assert calls == segments_before_scan(data) - 1  # every segment before SOS, SOS itself excluded


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow warns about mangled TIFF tags
def test_mangled_headers_of_every_kind_raise_only_our_errors() -> None:
    preprocessor = make_preprocessor()
    rng = np.random.default_rng(21)
    for name, source in LEGITIMATE.items():
        for _ in range(12):
            data = np.frombuffer(source, dtype=np.uint8).copy()
            positions = rng.integers(0, min(len(data), 512), size=6)
            data[positions] = rng.integers(0, 256, size=6, dtype=np.uint8)
            try:
                preprocessor(data.tobytes())
            except ServiceError:
                pass
            except Exception as exc:  # pragma: no cover - the failure message names the file
                raise AssertionError(f"{name}: {type(exc).__name__}: {exc}") from exc


def test_data_after_the_first_jpeg_picture_is_not_counted() -> None:
    # Motion photos append an MP4 after EOI, Ultra HDR a gain-map JPEG, MPO its other pictures: none
    # is decoded, and arbitrary bytes there hold "markers" (0xFF then a marker byte) by the thousand.
    trailer = np.random.default_rng(8).bytes(3_000_000)
    assert len(caps._JPEG_LATER_MARKER.findall(trailer)) > caps.JPEG_MAX_LATER_MARKERS
    progressive = hostile.jpeg_many_scans(0, side=64)
    assert inspect_image(progressive + trailer).width == 64
    mpo = LEGITIMATE["mpo.mpo"]
    assert inspect_image(mpo + trailer).width == 120

"""The hostile image corpus of issue 21, built in code (no stored blobs), each file with the outcome
the service must give it.

Every builder returns bytes and is cheap: files whose attack is a huge structure (millions of
markers, chunks, strips or tag values) are repeated byte strings; files whose attack is a huge
*decoded* size (decompression bombs, 40-Mpixel greyscale) are compressed streams built from one
compressed block repeated (`zlib_repeating`), so a 169-Mpixel PNG costs milliseconds and a few
hundred kilobytes to build, never the decoded size.

`hostile_cases(max_image_bytes)` sizes every case to fit under a byte limit (so each one reaches the
check it is meant for, not the byte limit) and gives its expected error class, HTTP status and JSON
error code; the imaging unit tests and the end-to-end hostile tests (which send them to the real
process and measure time and memory) share it.
"""

from __future__ import annotations

import io
import json
import math
import struct
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from app.errors import ImageDecodeError, PayloadTooLargeError, ServiceError, UnsupportedMediaTypeError

MPIX = 1_000_000


# --- compressed streams built from repeated blocks ----------------------------------------------


def zlib_repeating(prefix: bytes, unit: bytes, count: int, *, level: int = 9) -> bytes:
    """A zlib stream of `prefix + unit * count`, built in time and memory of about one megabyte.

    After a full flush deflate's state no longer depends on earlier input, so compressing the same
    block again gives the same bytes: the block is compressed once and its output repeated. The
    Adler-32 trailer is computed over the real (never materialised) data.
    """
    per_block = max(1, (1 << 20) // max(1, len(unit)))
    block = unit * min(per_block, count)
    compressor = zlib.compressobj(level)
    head = compressor.compress(prefix) + compressor.flush(zlib.Z_FULL_FLUSH)
    adler = zlib.adler32(prefix)
    blocks, rest = divmod(count, per_block) if count >= per_block else (0, count)
    body = b""
    if blocks:
        body = compressor.compress(block) + compressor.flush(zlib.Z_FULL_FLUSH)
        for _ in range(blocks):
            adler = zlib.adler32(block, adler)
    tail_data = unit * rest
    tail = compressor.compress(tail_data) + compressor.flush(zlib.Z_FINISH)
    adler = zlib.adler32(tail_data, adler)
    return head + body * blocks + tail[:-4] + struct.pack(">I", adler)


# --- PNG -----------------------------------------------------------------------------------------


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_CHANNELS = {0: 1, 2: 3, 4: 2, 6: 4}  # colour type -> samples per pixel


def png_image(
    width: int,
    height: int,
    *,
    bit_depth: int = 8,
    colour_type: int = 2,
    first_row: bytes | None = None,
    chunks_before: Sequence[bytes] = (),
    chunks_after: Sequence[bytes] = (),
) -> bytes:
    """A PNG whose first row is `first_row` (default: zeros) and every later row repeats the one
    above (filter Up with zero deltas), so any size compresses to almost nothing."""
    row_bytes = width * _PNG_CHANNELS[colour_type] * bit_depth // 8
    first = first_row if first_row is not None else bytes(row_bytes)
    assert len(first) == row_bytes, (len(first), row_bytes)
    stream = zlib_repeating(b"\x00" + first, b"\x02" + bytes(row_bytes), height - 1)
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return (
        PNG_SIGNATURE
        + png_chunk(b"IHDR", header)
        + b"".join(chunks_before)
        + png_chunk(b"IDAT", stream)
        + b"".join(chunks_after)
        + png_chunk(b"IEND", b"")
    )


def png_declaring(width: int, height: int) -> bytes:
    """A ~70-byte PNG whose header claims width x height RGB pixels: a decompression bomb's shape."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        PNG_SIGNATURE
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + png_chunk(b"IEND", b"")
    )


def png_grey16(width: int, height: int) -> bytes:
    """16-bit greyscale: the first row is a ramp over the whole 16-bit range, the others repeat it."""
    ramp = (np.arange(width, dtype=np.uint64) * 65535 // max(1, width - 1)).astype(">u2")
    return png_image(width, height, bit_depth=16, colour_type=0, first_row=ramp.tobytes())


def png_rgb(width: int, height: int) -> bytes:
    """8-bit RGB with a coloured first row repeated: the ordinary case the others are measured against."""
    row = np.stack([np.arange(width) % 256, np.full(width, 90), np.arange(width)[::-1] % 256], axis=-1)
    return png_image(width, height, first_row=row.astype(np.uint8).tobytes())


def png_unknown_chunks(count: int, *, after_data: bool = False) -> bytes:
    """A 1x1 PNG carrying `count` empty private chunks (12 bytes each), before or after its IDAT."""
    chunks = [png_chunk(b"prVt", b"")] * count
    if after_data:
        return png_image(1, 1, chunks_after=chunks)
    return png_image(1, 1, chunks_before=chunks)


def png_data_chunks(count: int) -> bytes:
    """An 8x8 PNG whose compressed data is split into `count` IDAT chunks (most of them empty)."""
    stream = zlib.compress(bytes(8 * 25))
    header = struct.pack(">IIBBBBB", 8, 8, 8, 2, 0, 0, 0)
    empties = png_chunk(b"IDAT", b"") * (count - 1)
    return (
        PNG_SIGNATURE
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", stream)
        + empties
        + png_chunk(b"IEND", b"")
    )


def png_with_exif(exif: bytes, *, side: int = 8) -> bytes:
    """A small PNG with `exif` (a TIFF structure, without the Exif\\0\\0 prefix) as its eXIf chunk."""
    return png_image(side, side, chunks_before=[png_chunk(b"eXIf", exif)])


def png_compressed_text(count: int, *, text_bytes: int = 1 << 20) -> bytes:
    """A 1x1 PNG with `count` zTXt chunks, each inflating to `text_bytes` (Pillow's per-chunk maximum)."""
    payload = b"Comment\x00\x00" + zlib.compress(b"a" * (text_bytes - 1), 9)
    return png_image(1, 1, chunks_before=[png_chunk(b"zTXt", payload)] * count)


# --- EXIF / TIFF structures ------------------------------------------------------------------------

SHORT, LONG, RATIONAL, BYTE, ASCII, UNDEFINED = 3, 4, 5, 1, 2, 7


class TiffBuilder:
    """A little-endian classic TIFF assembled blob by blob: `blob` places bytes and returns their offset,
    `ifd` places a directory (its out-of-line values first) and returns its offset."""

    def __init__(self, *, big_endian: bool = False) -> None:
        self.order = ">" if big_endian else "<"
        self.buffer = bytearray((b"MM\x00*" if big_endian else b"II*\x00") + bytes(4))

    def blob(self, data: bytes) -> int:
        if len(self.buffer) % 2:
            self.buffer += b"\x00"
        offset = len(self.buffer)
        self.buffer += data
        return offset

    def values(self, kind: int, values: Sequence[int] | np.ndarray) -> tuple[int, int, bytes]:
        """(type, count, packed bytes) for SHORT or LONG values, in this file's byte order."""
        dtype = {SHORT: "u2", LONG: "u4"}[kind]
        array = np.asarray(values, dtype=self.order + dtype)
        return kind, int(array.size), array.tobytes()

    def ifd(self, entries: dict[int, tuple[int, int, bytes]], *, next_ifd: int = 0) -> int:
        packed = []
        for tag in sorted(entries):
            kind, count, payload = entries[tag]
            value = (
                payload.ljust(4, b"\x00")
                if len(payload) <= 4
                else struct.pack(self.order + "I", self.blob(payload))
            )
            packed.append(struct.pack(self.order + "HHI", tag, kind, count) + value)
        directory = struct.pack(self.order + "H", len(packed)) + b"".join(packed)
        return self.blob(directory + struct.pack(self.order + "I", next_ifd))

    def finish(self, first_ifd: int) -> bytes:
        self.buffer[4:8] = struct.pack(self.order + "I", first_ifd)
        return bytes(self.buffer)


def exif_with_long_tag(values: int, *, orientation: int = 6) -> bytes:
    """An EXIF block (TIFF structure): Orientation plus one tag holding `values` LONG values."""
    tiff = TiffBuilder(big_endian=True)
    ifd = tiff.ifd(
        {
            0x0112: tiff.values(SHORT, [orientation]),
            0x0111: (LONG, values, bytes(4 * values)),
        }
    )
    return tiff.finish(ifd)


def _tiff_grey_entries(tiff: TiffBuilder, width: int, height: int, bits: int = 8) -> dict:
    return {
        256: tiff.values(LONG, [width]),
        257: tiff.values(LONG, [height]),
        258: tiff.values(SHORT, [bits]),
        259: tiff.values(SHORT, [1]),
        262: tiff.values(SHORT, [1]),  # BlackIsZero
        277: tiff.values(SHORT, [1]),
    }


def tiff_grey16_big_endian(pixels: bytes, width: int, height: int) -> bytes:
    """One strip of big-endian 16-bit greyscale ("I;16B" to Pillow), `pixels` as stored."""
    tiff = TiffBuilder(big_endian=True)
    strip = tiff.blob(pixels)
    entries = _tiff_grey_entries(tiff, width, height, bits=16)
    entries[273] = tiff.values(LONG, [strip])
    return tiff.finish(tiff.ifd(entries))


def tiff_strips(width: int, height: int, *, rows_per_strip: int = 1) -> bytes:
    """Uncompressed 8-bit greyscale cut into strips of `rows_per_strip` rows, every strip offset
    pointing at one shared strip of zeros (19.6 MB for the issue's 1 x 4.9M image)."""
    tiff = TiffBuilder()
    strips = -(-height // rows_per_strip)
    data = tiff.blob(bytes(width * rows_per_strip))
    entries = _tiff_grey_entries(tiff, width, height)
    entries[273] = tiff.values(LONG, np.full(strips, data))
    entries[278] = tiff.values(LONG, [rows_per_strip])
    return tiff.finish(tiff.ifd(entries))


def tiff_tiles(width: int, height: int, *, tile: int = 1) -> bytes:
    """Uncompressed 8-bit greyscale in `tile` x `tile` tiles (the spec wants multiples of 16; Pillow
    accepts 1), every tile pointing at one shared tile of zeros."""
    tiff = TiffBuilder()
    tiles = -(-width // tile) * -(-height // tile)
    data = tiff.blob(bytes(tile * tile))
    entries = _tiff_grey_entries(tiff, width, height)
    entries[322] = tiff.values(LONG, [tile])
    entries[323] = tiff.values(LONG, [tile])
    entries[324] = tiff.values(LONG, np.full(tiles, data))
    entries[325] = tiff.values(SHORT, np.full(tiles, tile * tile))
    return tiff.finish(tiff.ifd(entries))


def tiff_with_tag_values(values: int, *, in_exif_ifd: bool = False) -> bytes:
    """A 1x1 TIFF with one private tag of `values` LONG values, in IFD0 or in its EXIF sub-IFD
    (which Pillow parses when it finishes loading the pixels)."""
    tiff = TiffBuilder()
    data = tiff.blob(b"\x00")
    entries = _tiff_grey_entries(tiff, 1, 1)
    entries[273] = tiff.values(LONG, [data])
    bomb = (LONG, values, bytes(4 * values))
    if in_exif_ifd:
        entries[34665] = tiff.values(LONG, [tiff.ifd({0x9C9C: bomb})])
    else:
        entries[0xC0DE] = bomb
    return tiff.finish(tiff.ifd(entries))


def tiff_many_entries(count: int) -> bytes:
    """A 1x1 TIFF whose first directory has `count` entries (12 bytes each), most of them one private
    tag repeated."""
    tiff = TiffBuilder()
    data = tiff.blob(b"\x00")
    entries = _tiff_grey_entries(tiff, 1, 1)
    entries[273] = tiff.values(LONG, [data])
    directory = [
        struct.pack("<HHI", tag, *entries[tag][:2]) + entries[tag][2].ljust(4, b"\x00")
        for tag in sorted(entries)
    ]
    directory += [struct.pack("<HHII", 0xC0DE, SHORT, 1, 0)] * (count - len(directory))
    offset = tiff.blob(struct.pack("<H", len(directory)) + b"".join(directory) + bytes(4))
    return tiff.finish(offset)


def tiff_deflate(
    width: int,
    height: int,
    *,
    bits: int = 8,
    samples: int = 3,
    rows_per_strip: int = 64,
    signed: bool = False,
) -> bytes:
    """A Deflate-compressed TIFF (RGB for 3 samples, RGBA for 4, greyscale for 1) whose strips all
    share one compressed strip. Each row is a 256-sample ramp over the whole range (0 to 65535 for
    signed 32-bit) repeated, short enough for deflate's window: any size in a few kilobytes."""
    tiff = TiffBuilder()
    peak = 65535 if signed else 2**bits - 1
    ramp = np.resize(np.arange(256, dtype=np.int64) * (peak // 255), width * samples)
    row = ramp.astype(f"<{'i' if signed else 'u'}{bits // 8}").tobytes()
    strip = tiff.blob(zlib_repeating(b"", row, rows_per_strip))
    strips = -(-height // rows_per_strip)
    entries = _tiff_grey_entries(tiff, width, height, bits=bits)
    entries[258] = tiff.values(SHORT, [bits] * samples)
    entries[259] = tiff.values(SHORT, [8])  # Adobe Deflate
    entries[262] = tiff.values(SHORT, [2 if samples >= 3 else 1])
    entries[273] = tiff.values(LONG, np.full(strips, strip))
    entries[277] = tiff.values(SHORT, [samples])
    entries[278] = tiff.values(LONG, [rows_per_strip])
    entries[279] = tiff.values(LONG, np.full(strips, len(tiff.buffer) - strip))
    if samples == 4:
        entries[338] = tiff.values(SHORT, [2])  # unassociated alpha
    if signed:
        entries[339] = tiff.values(SHORT, [2] * samples)
    return tiff.finish(tiff.ifd(entries))


def tiff_grey32(width: int, height: int) -> bytes:
    """32-bit signed greyscale (Pillow mode I), 160 MB of pixels at 40 Mpixel in a few kilobytes."""
    return tiff_deflate(width, height, bits=32, samples=1, signed=True)


def tiff_pages(count: int, *, loop: bool = False) -> bytes:
    """`count` one-pixel pages chained; with `loop` the last page points back at the first."""
    tiff = TiffBuilder()
    data = tiff.blob(b"\x00")
    entries = _tiff_grey_entries(tiff, 1, 1)
    entries[273] = tiff.values(LONG, [data])
    directory = [
        struct.pack("<HHI", tag, *entries[tag][:2]) + entries[tag][2].ljust(4, b"\x00")
        for tag in sorted(entries)
    ]
    size = 2 + 12 * len(directory) + 4
    first = len(tiff.buffer)
    for page in range(count):
        following = first + (page + 1) * size if page + 1 < count else (first if loop else 0)
        tiff.buffer += struct.pack("<H", len(directory)) + b"".join(directory) + struct.pack("<I", following)
    return tiff.finish(first)


def tiff_jpeg_scans(count: int, *, side: int = 2048) -> bytes:
    """A JPEG-compressed TIFF whose one strip is a flat progressive JPEG with `count` extra scans
    (libtiff stops at 100 per strip, so a file of many such strips costs 100 passes per pixel)."""
    jpeg = jpeg_many_scans(count, side=side)
    tiff = TiffBuilder()
    strip = tiff.blob(jpeg)
    entries = _tiff_grey_entries(tiff, side, side)
    entries[258] = tiff.values(SHORT, [8, 8, 8])
    entries[259] = tiff.values(SHORT, [7])  # JPEG
    entries[262] = tiff.values(SHORT, [6])  # YCbCr
    entries[273] = tiff.values(LONG, [strip])
    entries[277] = tiff.values(SHORT, [3])
    entries[278] = tiff.values(LONG, [side])
    entries[279] = tiff.values(LONG, [len(jpeg)])
    return tiff.finish(tiff.ifd(entries))


def tiff_declaring(width: int, height: int) -> bytes:
    """A TIFF header claiming width x height pixels with one byte of data."""
    tiff = TiffBuilder()
    data = tiff.blob(b"\x00")
    entries = _tiff_grey_entries(tiff, width, height)
    entries[273] = tiff.values(LONG, [data])
    return tiff.finish(tiff.ifd(entries))


# --- JPEG ------------------------------------------------------------------------------------------


def small_jpeg(side: int = 16, **params: object) -> bytes:
    return encode(Image.new("RGB", (side, side), (200, 120, 40)), "JPEG", **params)


def jpeg_with_segments(segments: bytes, *, base: bytes | None = None) -> bytes:
    """A real JPEG with `segments` inserted right after its SOI marker."""
    jpeg = base if base is not None else small_jpeg()
    return jpeg[:2] + segments + jpeg[2:]


def jpeg_empty_app_markers(count: int) -> bytes:
    """`count` empty APP15 segments (4 bytes each) before the frame header."""
    return jpeg_with_segments(b"\xff\xef\x00\x02" * count)


def jpeg_junk_between_markers(count: int) -> bytes:
    """`count` zero bytes after the first segment (Pillow skips junk one Python call per byte)."""
    jpeg = small_jpeg()
    (first_length,) = struct.unpack_from(">H", jpeg, 4)
    split = 4 + first_length
    return jpeg[:split] + bytes(count) + jpeg[split:]


def jpeg_exif_segments(count: int) -> bytes:
    """`count` maximum-size APP1 EXIF segments: Pillow concatenates them into one EXIF block, whose
    first directory declares a tag with as many LONG values as the segments hold."""
    payload = 65533 - 2 - 6
    values = (payload * count - 64) // 4
    first = exif_with_long_tag(values)[:payload]
    segments = [b"Exif\x00\x00" + first.ljust(payload, b"\x00")]
    segments += [b"Exif\x00\x00" + bytes(payload)] * (count - 1)
    return jpeg_with_segments(b"".join(b"\xff\xe1" + struct.pack(">H", len(s) + 2) + s for s in segments))


def jpeg_many_scans(count: int, *, side: int = 4096) -> bytes:
    """A flat progressive JPEG whose last scan (33 bytes at 4096 x 4096) is repeated `count` times:
    each repetition is one more pass of libjpeg over the component's coefficients (12 s for 1000)."""
    data = encode(Image.new("RGB", (side, side), (120, 50, 200)), "JPEG", progressive=True, quality=90)
    last = data.rindex(b"\xff\xda")
    return data[:-2] + data[last:-2] * count + b"\xff\xd9"


def jpeg_declaring(width: int, height: int) -> bytes:
    """A real JPEG whose frame header is rewritten to declare width x height pixels."""
    data = bytearray(small_jpeg(64))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def jpeg_exif_photo(width: int = 4032, height: int = 3024, *, orientation: int = 6) -> bytes:
    """A phone-sized JPEG with a phone-like EXIF block (orientation, camera fields, GPS, thumbnail)."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    exif[0x010F] = "Phone Maker"
    exif[0x0110] = "Phone 15"
    exif[0x0131] = "Camera 1.0"
    exif[0x0132] = "2024:05:01 12:00:00"
    details = exif.get_ifd(0x8769)
    details[0x829A] = 1 / 120  # ExposureTime
    details[0x8827] = 100  # ISO
    details[0x9003] = "2024:05:01 12:00:00"
    details[0x927C] = bytes(range(256)) * 24  # a 6 KB MakerNote, as phones write
    gps = exif.get_ifd(0x8825)
    gps[1], gps[3] = "N", "E"
    rng = np.random.default_rng(4)
    blocks = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
    photo = Image.fromarray(blocks).resize((width, height), Image.Resampling.BILINEAR)
    return encode(photo, "JPEG", quality=85, exif=exif.tobytes())


# --- GIF, WebP, BMP ------------------------------------------------------------------------------------


def gif_with_extensions(extensions: bytes, *, screen: tuple[int, int] = (1, 1)) -> bytes:
    """A 1x1-pixel GIF89a with `extensions` (raw extension blocks) before its only image."""
    header = b"GIF89a" + struct.pack("<HHBBB", *screen, 0x80, 0, 0) + b"\x00\x00\x00\xff\xff\xff"
    image = b"," + struct.pack("<HHHHB", 0, 0, 1, 1, 0) + b"\x02\x02\x44\x01\x00"
    return header + extensions + image + b";"


def gif_comment_subblocks(count: int) -> bytes:
    """One comment extension made of `count` one-byte sub-blocks (2 bytes each)."""
    return gif_with_extensions(b"\x21\xfe" + b"\x01c" * count + b"\x00")


def gif_many_extensions(count: int) -> bytes:
    """`count` graphic control extensions (8 bytes each) before the first image."""
    return gif_with_extensions(b"\x21\xf9\x04\x00\x00\x00\x00\x00" * count)


def gif_declaring(width: int, height: int) -> bytes:
    """A GIF whose logical screen claims width x height (Pillow's size for the first frame)."""
    return gif_with_extensions(b"", screen=(width, height))


def gif_trailing_frames(count: int) -> bytes:
    """A real one-pixel first frame followed by `count` more tiny frames: only the first is decoded."""
    frame = (
        b"\x21\xf9\x04\x00\x00\x00\x00\x00," + struct.pack("<HHHHB", 0, 0, 1, 1, 0) + b"\x02\x02\x44\x01\x00"
    )
    return gif_with_extensions(b"")[:-1] + frame * count + b";"


def riff_chunk(kind: bytes, payload: bytes) -> bytes:
    return kind + struct.pack("<I", len(payload)) + payload + b"\x00" * (len(payload) % 2)


def webp_lossless_chunk(side: int = 4) -> bytes:
    """The VP8L chunk of a tiny lossless WebP encoded by Pillow."""
    data = encode(Image.new("RGB", (side, side), (10, 200, 30)), "WEBP", lossless=True)
    assert data[12:16] == b"VP8L"
    return data[12:]


def webp_extended(*, chunks_after: Sequence[bytes] = (), exif: bytes | None = None, canvas: int = 4) -> bytes:
    """A VP8X (extended) WebP around a `canvas`-square lossless image, with an optional EXIF chunk
    and extra chunks after the image data."""
    flags = 0x08 if exif is not None else 0
    vp8x = riff_chunk(b"VP8X", struct.pack("<I", flags) + (canvas - 1).to_bytes(3, "little") * 2)
    body = vp8x + webp_lossless_chunk(canvas) + b"".join(chunks_after)
    if exif is not None:
        body += riff_chunk(b"EXIF", exif)
    return b"RIFF" + struct.pack("<I", len(body) + 4) + b"WEBP" + body


def webp_unknown_chunks(count: int) -> bytes:
    return webp_extended(chunks_after=[riff_chunk(b"XUNK", b"")] * count)


def webp_declaring(width: int, height: int) -> bytes:
    """An extended WebP whose canvas claims width x height around a 4x4 image."""
    data = bytearray(webp_extended())
    data[24:30] = (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    return bytes(data)


def bmp_rle8_line_ends(width: int, height: int) -> bytes:
    """An RLE8 BMP whose every row is one pixel and an end-of-line code: Pillow's pure-Python RLE
    decoder pads the rest of each row one byte per step, width x height steps for 4 x height bytes."""
    palette = bytes(i & 0xFF for i in range(256 * 4))
    data = b"\x01\x00\x00\x00" * height + b"\x00\x01"
    offset = 14 + 40 + len(palette)
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 8, 1, len(data), 2835, 2835, 256, 0)
    return b"BM" + struct.pack("<IHHI", offset + len(data), 0, 0, offset) + info + palette + data


def bmp_declaring(width: int, height: int) -> bytes:
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 14 + 40 + 4, 0, 0, 54) + info + bytes(4)


# --- formats we refuse -----------------------------------------------------------------------------


def eps_comments(size: int) -> bytes:
    """An EPS file of `size` bytes that is all comment lines: Pillow's EPS reader scans it byte by byte."""
    head = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n"
    line = b"%" + b"x" * 70 + b"\n"
    return head + line * ((size - len(head)) // len(line))


def ico_wrapping_png(side: int) -> bytes:
    """An ICO whose one entry is a `side` x `side` greyscale PNG (169 Mpixel at 13000, ~170 KB)."""
    png = png_image(side, side, colour_type=0)
    entry = struct.pack("<BBBBHHII", 0, 0, 0, 0, 1, 32, len(png), 22)
    return struct.pack("<HHH", 0, 1, 1) + entry + png


def ppm_declaring(width: int, height: int) -> bytes:
    return f"P6\n{width} {height}\n255\n".encode() + bytes(16)


#: (sample name, the format name the 415 must give, first bytes): formats refused by name without
#: any decoder running.
REFUSED_FORMAT_SAMPLES: tuple[tuple[str, str, bytes], ...] = (
    ("pdf", "PDF", b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< >>\nendobj\n"),
    ("postscript", "PostScript", b"%!PS-Adobe-3.0\n%%Pages: 1\n"),
    ("eps", "EPS", b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n"),
    ("eps-dos-binary", "EPS", b"\xc5\xd0\xd3\xc6" + bytes(28)),
    ("ico", "ICO", struct.pack("<HHH", 0, 1, 1) + bytes(16)),
    ("cur", "CUR", struct.pack("<HHH", 0, 2, 1) + bytes(16)),
    ("ppm", "PPM", b"P6\n16 16\n255\n" + bytes(16)),
    ("pgm", "PGM", b"P5\n16 16\n255\n" + bytes(16)),
    ("pbm", "PBM", b"P4\n16 16\n" + bytes(16)),
    ("psd", "PSD", b"8BPS\x00\x01" + bytes(20)),
    ("svg-xml", "SVG", b'<?xml version="1.0" encoding="UTF-8"?>\n<svg xmlns="http://www.w3.org/2000/svg"/>'),
    ("svg-bom", "SVG", b'\xef\xbb\xbf  <svg xmlns="http://www.w3.org/2000/svg" width="10"></svg>'),
    ("heic", "HEIC", b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(16)),
    ("avif", "AVIF", b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00avifmif1miaf" + bytes(16)),
    ("jpeg-xl-codestream", "JPEG XL", b"\xff\x0a\xfa\x7f" + bytes(16)),
    ("jpeg-xl-container", "JPEG XL", b"\x00\x00\x00\x0cJXL \r\n\x87\n" + bytes(16)),
    ("jpeg-2000", "JPEG 2000", b"\x00\x00\x00\x0cjP  \r\n\x87\n" + bytes(16)),
    ("zip", "ZIP", b"PK\x03\x04\x14\x00" + bytes(24)),
    ("gzip", "gzip", b"\x1f\x8b\x08\x00" + bytes(20)),
    ("qoi", "QOI", b"qoif" + bytes(16)),
    ("dds", "DDS", b"DDS |" + bytes(20)),
    ("html", "HTML", b"<!DOCTYPE html><html><body>not an image</body></html>"),
)


def refused_format_samples() -> list[tuple[str, str, bytes]]:
    """`REFUSED_FORMAT_SAMPLES` plus the magic-less TGA as Pillow writes it (16x16 RGB)."""
    tga = encode(Image.new("RGB", (16, 16), (1, 2, 3)), "TGA")
    return [*REFUSED_FORMAT_SAMPLES, ("tga", "TGA", tga)]


# --- helpers ------------------------------------------------------------------------------------------


def encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


# --- the corpus with its expected outcomes ------------------------------------------------------------


@dataclass(frozen=True)
class HostileCase:
    """One hostile (or hostile-looking but legitimate) image and what the service must answer."""

    name: str
    build: Callable[[], bytes]
    error: type[ServiceError] | None  # None: served with 200
    attack: str  # one line: what the file does to a naive decoder
    content_type: str = "application/octet-stream"

    @property
    def status(self) -> int:
        """The HTTP status the service answers with (the transports map error codes to statuses)."""
        from app.http.errors import STATUS

        return 200 if self.error is None else STATUS[self.error.code]

    @property
    def code(self) -> str | None:
        return None if self.error is None else self.error.code


def _fit(count: int, unit_bytes: int, max_image_bytes: int, overhead: int = 4096) -> int:
    """`count` repetitions of a `unit_bytes` structure, fewer if the file would not fit the byte limit."""
    return max(1, min(count, (max_image_bytes - overhead) // unit_bytes))


def hostile_cases(max_image_bytes: int = 20_000_000) -> dict[str, HostileCase]:
    """Issue 21's corpus sized to fit `max_image_bytes` (at the default 20 MB, the issue's own sizes).

    Each case is built lazily (`case.build()`, a second or less each); refusals expected before any
    pixel is decoded are 413 (a structural or size cap) or 415 (a format we do not decode).
    """
    limit = max_image_bytes
    too_large, unsupported, corrupt = PayloadTooLargeError, UnsupportedMediaTypeError, ImageDecodeError
    side40 = 6324  # 6324^2 = 39.99 Mpixel, just inside the default 40-Mpixel limit
    cases = [
        HostileCase(
            "eps-of-comments",
            lambda: eps_comments(min(20_000_000, limit)),
            unsupported,
            "EPS reader scans 20 MB of comment lines byte by byte (17 s holding the GIL)",
        ),
        HostileCase(
            "ico-wrapping-169-mpixel-png",
            lambda: ico_wrapping_png(13000),
            unsupported,
            "the ICO reader decodes its 13000x13000 PNG in full before the 415",
        ),
        HostileCase(
            "ppm-bomb-header",
            lambda: ppm_declaring(100_000, 100_000),
            unsupported,
            "a PPM header declaring 10 Gpixel",
        ),
        HostileCase(
            "tiff-one-row-strips-1x4.9m",
            lambda: tiff_strips(1, _fit(4_900_000, 4, limit)),
            too_large,
            "4.9M one-row strips: 38.6 s and +1.3 GB before the aspect-ratio 413",
        ),
        HostileCase(
            "tiff-1x1-tiles-900x900",
            lambda: tiff_tiles(*[min(900, math.isqrt(_fit(810_000, 6, limit)))] * 2, tile=1),
            too_large,
            "810,000 one-pixel tiles, one Python decoder call each (6 s)",
        ),
        HostileCase(
            "tiff-4.9m-value-tag",
            lambda: tiff_with_tag_values(_fit(4_900_000, 4, limit)),
            too_large,
            "a private tag with 4.9M LONG values, parsed three times by Pillow",
        ),
        HostileCase(
            "tiff-exif-ifd-4.9m-value-tag",
            lambda: tiff_with_tag_values(_fit(4_900_000, 4, limit), in_exif_ifd=True),
            too_large,
            "the same in the EXIF sub-directory, parsed after the pixels are loaded",
        ),
        HostileCase(
            "tiff-65535-directory-entries",
            lambda: tiff_many_entries(65535),
            too_large,
            "a directory of 65535 entries",
        ),
        HostileCase(
            "tiff-jpeg-strip-of-90-scans",
            lambda: tiff_jpeg_scans(80),
            too_large,
            "a JPEG-compressed strip of 90 progressive scans, just under libtiff's own limit of 100",
        ),
        HostileCase(
            "tiff-bomb-header",
            lambda: tiff_declaring(100_000, 100_000),
            too_large,
            "a TIFF header declaring 10 Gpixel",
        ),
        HostileCase(
            "png-exif-4.9m-value-tag",
            lambda: png_with_exif(exif_with_long_tag(_fit(4_900_000, 4, limit))),
            too_large,
            "orientation 6 plus a 4.9M-value EXIF tag: 4.7 s and +800 MB in exif_transpose",
        ),
        HostileCase(
            "png-1.6m-unknown-chunks",
            lambda: png_unknown_chunks(_fit(1_600_000, 12, limit)),
            too_large,
            "1.6M empty private chunks before the image data (5.6 s)",
        ),
        HostileCase(
            "png-1.6m-unknown-chunks-after-data",
            lambda: png_unknown_chunks(_fit(1_600_000, 12, limit), after_data=True),
            too_large,
            "the same after the image data, walked once the pixels are decoded",
        ),
        HostileCase(
            "png-1.6m-idat-chunks",
            lambda: png_data_chunks(_fit(1_600_000, 12, limit)),
            too_large,
            "the image data split into 1.6M chunks",
        ),
        HostileCase(
            "png-64-zTXt-of-1-mb",
            lambda: png_compressed_text(64),
            too_large,
            "64 compressed text chunks inflating to 64 MB of text",
        ),
        HostileCase(
            "png-extreme-aspect-1x4.9m",
            lambda: png_image(1, 4_900_000, colour_type=0),
            too_large,
            "4.9 Mpixel within the pixel limit, but 1:4.9M: the resize would need 1.2 Gpixel",
        ),
        HostileCase(
            "png-bomb-header",
            lambda: png_declaring(100_000, 100_000),
            too_large,
            "a PNG header declaring 10 Gpixel",
        ),
        HostileCase(
            "jpeg-5m-empty-app-markers",
            lambda: jpeg_empty_app_markers(_fit(5_000_000, 4, limit)),
            too_large,
            "5M empty APP markers before the frame: 6.3 s and +700 MB",
        ),
        HostileCase(
            "jpeg-20mb-junk-between-markers",
            lambda: jpeg_junk_between_markers(_fit(20_000_000, 1, limit)),
            corrupt,
            "junk bytes between markers, skipped by Pillow one byte at a time",
        ),
        HostileCase(
            "jpeg-300-exif-segments",
            lambda: jpeg_exif_segments(_fit(300, 65535, limit)),
            too_large,
            "EXIF split over 300 APP1 segments, concatenated by Pillow into a 4.9M-value tag",
        ),
        HostileCase(
            "jpeg-1000-scans",
            lambda: jpeg_many_scans(1000),
            too_large,
            "a 132 KB progressive 16-Mpixel JPEG of 1000 scans, each a pass over a component (12 s)",
        ),
        HostileCase(
            "jpeg-bomb-header",
            lambda: jpeg_declaring(65000, 65000),
            too_large,
            "a JPEG frame header declaring 4.2 Gpixel",
        ),
        HostileCase(
            "gif-10m-comment-subblocks",
            lambda: gif_comment_subblocks(_fit(10_000_000, 2, limit)),
            too_large,
            "a comment of one-byte sub-blocks, read one Python call each",
        ),
        HostileCase(
            "gif-2.5m-extensions",
            lambda: gif_many_extensions(_fit(2_500_000, 8, limit)),
            too_large,
            "2.5M graphic control extensions before the first image",
        ),
        HostileCase(
            "gif-bomb-screen",
            lambda: gif_declaring(65535, 65535),
            too_large,
            "a logical screen of 4.3 Gpixel",
        ),
        HostileCase(
            "webp-exif-4.9m-value-tag",
            lambda: webp_extended(exif=exif_with_long_tag(_fit(4_900_000, 4, limit))),
            too_large,
            "orientation 6 plus a 4.9M-value EXIF tag in a WebP",
        ),
        HostileCase(
            "webp-1.6m-unknown-chunks",
            lambda: webp_unknown_chunks(_fit(1_600_000, 8, limit)),
            too_large,
            "1.6M unknown chunks, each a node in libwebp's demuxer",
        ),
        HostileCase(
            "webp-bomb-canvas",
            lambda: webp_declaring(1 << 24, 1 << 24),
            too_large,
            "a VP8X canvas of 2^48 pixels",
        ),
        HostileCase(
            "bmp-rle8-36-mpixel-of-line-ends",
            lambda: bmp_rle8_line_ends(6000, 6000),
            too_large,
            "24 KB of RLE8 line ends: 36M steps of Pillow's pure-Python RLE decoder",
        ),
        HostileCase(
            "bmp-bomb-header",
            lambda: bmp_declaring(100_000, 100_000),
            too_large,
            "a BMP header declaring 10 Gpixel",
        ),
        HostileCase(
            "tiff-rgba16-one-strip-40-mpixel",
            lambda: tiff_deflate(side40, side40, bits=16, samples=4, rows_per_strip=side40),
            too_large,
            "one 320 MB Deflate strip: libtiff's strip buffer and the image took 458 MiB",
        ),
        HostileCase(
            "webp-40-mpixel-canvas",
            lambda: webp_declaring(side40, side40),
            too_large,
            "a 40-Mpixel WebP: libwebp keeps two canvases and a copy, 611 MiB for a real one",
        ),
        # Legitimate but heavy: served, with memory per decode no worse than about the RGB case.
        HostileCase(
            "png-rgb-40-mpixel",
            lambda: png_rgb(side40, side40),
            None,
            "the ordinary 40-Mpixel RGB decode the others are measured against",
        ),
        HostileCase(
            "png-grey16-40-mpixel",
            lambda: png_grey16(side40, side40),
            None,
            "16-bit greyscale at 40 Mpixel: +430 MB in numpy copies",
        ),
        HostileCase(
            "tiff-grey32-40-mpixel",
            lambda: tiff_grey32(side40, side40),
            None,
            "32-bit greyscale at 40 Mpixel: +560 MB in numpy copies",
        ),
        HostileCase(
            "gif-first-frame-of-100k",
            lambda: gif_trailing_frames(_fit(100_000, 22, limit)),
            None,
            "100,000 frames after the first: only the first may be read",
        ),
        HostileCase(
            "phone-jpeg-with-exif",
            jpeg_exif_photo,
            None,
            "a 12-Mpixel phone photo with orientation 6, camera fields, GPS and a MakerNote",
        ),
    ]
    return {case.name: case for case in cases}


# --- request-level payloads (the /v2 JSON attacks) ----------------------------------------------------

#: Headers for a deflate-compressed JSON body.
DEFLATE_JSON = {"content-encoding": "deflate", "content-type": "application/json"}


def json_inflation_bomb(inflated_bytes: int = 550_000_000) -> bytes:
    """A deflate-compressed /v2 infer body of `inflated_bytes` of JSON zeros, about 0.5 MB on the
    wire (the issue's attack: four of them at once took RSS to 2.8 GiB). Send with DEFLATE_JSON."""
    prefix = b'{"inputs": [{"name": "images", "datatype": "FP32", "shape": [32, 3, 224, 224], "data": ['
    unit = b"0.000000000,"
    return zlib_repeating(prefix, unit, inflated_bytes // len(unit))


def json_tensor_body(images: int = 14, *, seed: int = 0, side: int = 224) -> bytes:
    """A /v2 infer body with `images` FP32 images as a JSON tensor, logits asked for: the issue's
    44 MB input at the defaults (it held /healthz for 2 s)."""
    values = np.random.default_rng(seed).normal(size=(images, 3, side, side)).astype(np.float32)
    tensor = {
        "name": "images",
        "datatype": "FP32",
        "shape": list(values.shape),
        "data": values.ravel().tolist(),
    }
    return json.dumps({"inputs": [tensor], "outputs": [{"name": "logits"}]}).encode()

"""Header-only inspection: every structure a decoder would walk, counted and capped before any decoder
runs.

Pillow parses headers lazily, but "lazily" is not "cheaply": to reach the pixels its readers walk
every JPEG marker, PNG chunk, GIF extension and TIFF strip in Python, and some of what they keep
(EXIF blocks, strip offset tables, private chunks) costs a Python object per value. A file can make
each of those walks arbitrarily long while staying small: 5M empty JPEG APP markers took 6.3 s and
+700 MB, 1.6M unknown PNG chunks 5.6 s, a 4.9M-value EXIF tag 4.7 s and +800 MB, 1x1 TIFF tiles
6 s. So before Pillow sees a file, `inspect_image` walks the same structures itself with a bound on
every loop (it stops at the cap, so its own cost is bounded by the caps, never by the file), and
refuses a file that exceeds a cap with 413.

The caps are far above what real files use (each constant says what real files have) and are not
settings: they bound the work of a decode, which the pixel limit bounds for the pixel data itself.
What is inspected is what Pillow reads for the first frame: later GIF frames, later TIFF pages and
animated WebP frames other than the first are never decoded, so only their count is bounded.
"""

from __future__ import annotations

import re
import struct
import zlib
from dataclasses import dataclass

from app.errors import ImageDecodeError, PayloadTooLargeError, UnsupportedMediaTypeError
from app.imaging.sniff import sniff_format

# --- caps ----------------------------------------------------------------------------------------

#: EXIF bytes in one image (JPEG APP1 segments together, a PNG eXIf chunk or EXIF text, a WebP EXIF
#: chunk). The EXIF standard limits EXIF to one 64 KiB APP1 segment, and phones write 10-60 KiB
#: (thumbnail and MakerNote included); PNG and WebP copies of it are the same size. Pillow turns
#: every value into a Python object when it rewrites EXIF after applying the orientation.
EXIF_MAX_BYTES = 128 * 1024

#: JPEG segments (markers) before the first scan. A phone JPEG has 10-20 (SOI, APP1 EXIF, APP1 XMP,
#: APP2 ICC and MPF, DQT, SOF, 4 DHT, SOS); extended XMP (depth maps) and ICC profiles split over
#: APP2 segments (at most 255 by the ICC spec) stay in the hundreds. Pillow walks these in Python.
JPEG_MAX_SEGMENTS = 1024

#: Bytes that are not markers between the segments before the first scan (junk and fill bytes):
#: encoders write none or a few; Pillow skips them one Python call per byte.
JPEG_MAX_STRAY_BYTES = 65536

#: Scans (SOS markers) in the whole file. libjpeg's progressive JPEGs have 10 (6 for greyscale),
#: mozjpeg's optimised ones about as many, baseline 1-3; an MPO's second picture adds its own. Each
#: progressive scan is one more pass over a component's coefficients (libjpeg-turbo's advice for
#: untrusted input is its TJPARAM_SCANLIMIT): a 132 KB flat 16-Mpixel JPEG of 1000 scans took 12 s.
JPEG_MAX_SCANS = 256

#: Scans times pixels: the scan limit for large images, so that the passes stay within about a
#: second (measured 0.75 ns per pixel and scan): 40 scans at 40 Mpixel, 130 at a phone's 12 Mpixel,
#: never fewer than JPEG_MIN_SCAN_LIMIT.
JPEG_MAX_SCAN_PIXELS = 1_600_000_000
JPEG_MIN_SCAN_LIMIT = 16

#: Markers from the first scan to the first picture's end, restart markers aside (real files have
#: them by the thousand): the DHT and SOS of each progressive scan. libjpeg walks these in C.
JPEG_MAX_LATER_MARKERS = 2048

#: PNG image-data chunks (IDAT, and APNG's fdAT and fcTL). libpng writes 8 KiB IDATs (2,560 for a
#: 20 MB file), Pillow 64 KiB; Pillow reads each chunk header in Python.
PNG_MAX_DATA_CHUNKS = 32768

#: Other PNG chunks. Real files have a handful (PLTE, tRNS, gAMA, cHRM, sRGB, iCCP, pHYs, tIME, eXIf,
#: a few text chunks); Pillow walks each in Python and keeps private ones in a list.
PNG_MAX_METADATA_CHUNKS = 256

#: Compressed PNG metadata chunks (zTXt, compressed iTXt, iCCP): Pillow inflates each, up to 1 MiB,
#: so this bounds that work to 16 MiB. ImageMagick writes 2-4 (raw EXIF, IPTC, XMP profiles).
PNG_MAX_COMPRESSED_CHUNKS = 16

#: GIF extension blocks before the first image: real files have 1-4 (graphic control, NETSCAPE
#: loop, XMP, comment). Pillow walks them in Python.
GIF_MAX_EXTENSIONS = 256

#: Data sub-blocks of those extensions (255 bytes each at most): XMP's "magic trailer" alone is 258,
#: a 1 MB comment about 4,000. Pillow reads each with a Python call.
GIF_MAX_SUB_BLOCKS = 16384

#: RIFF chunks in a WebP: a still image has 1-5, an animation one per frame (stickers: tens to a
#: thousand). libwebp's demuxer keeps a node per chunk.
WEBP_MAX_CHUNKS = 16384

#: Pixels of an RLE-compressed BMP. Pillow decodes BMP RLE in pure Python, a few interpreter steps
#: per pixel: 9 KB of RLE8 line ends describing 4 Mpixel took 0.45 s, 24 KB describing 36 Mpixel
#: 4.3 s. RLE BMPs are small palette images (icons, 1990s screenshots), so they get a pixel limit of
#: their own, which bounds that at about what a 12-Mpixel JPEG costs.
BMP_RLE_MAX_PIXELS = 2_000_000

#: TIFF strips or tiles in the first image. Writers aim at 8-64 KiB strips (a 40-Mpixel RGB image:
#: 2,000-15,000), one row per strip at worst (6,324 for a square 40-Mpixel image); tiles are
#: 256x256 or 512x512 (a few hundred). Pillow makes one Python decoder call per uncompressed strip.
TIFF_MAX_STRIPS = 32768

#: Entries in one TIFF directory: a camera TIFF or DNG has 20-150 tags in IFD0, 30-70 in EXIF.
TIFF_MAX_ENTRIES = 1024

#: Numeric values in one directory, strip and tile tables aside (ColorMap: 768, a 16-bit
#: TransferFunction 196,608 is the largest standard table; real files stay under a few thousand).
#: Pillow turns each into a Python object when it reads the EXIF and GPS directories.
TIFF_MAX_TAG_VALUES = 262144

#: Pages (directories in the chain): Pillow reads the first only, but counts them if asked.
TIFF_MAX_PAGES = 1024

#: JPEG scans per strip or tile of a JPEG-compressed TIFF. libtiff writes baseline strips (one
#: scan); libtiff itself stops at 100 per strip (LIBTIFF_JPEG_MAX_ALLOWED_SCAN_NUMBER), which would
#: still let every strip cost 100 passes over its pixels.
TIFF_JPEG_MAX_SCANS_PER_STRIP = 16

# --- memory per decode -----------------------------------------------------------------------------

#: Bytes per pixel of Pillow's decoded image, whatever the mode we accept (RGB, RGBA, CMYK and mode I
#: take 4; L, P and 1 one; 16-bit greyscale two), and again of its 8-bit RGB conversion.
IMAGE_BYTES_PER_PIXEL = 4

#: libwebp's animation decoder, Pillow's only WebP reader, keeps two RGBA canvases and hands Pillow a
#: third copy as bytes while it decodes: 12 bytes per pixel besides the image (measured: a 40-Mpixel
#: WebP peaks at 611 MiB, against 160 MiB for the same JPEG).
WEBP_WORKING_BYTES_PER_PIXEL = 12


@dataclass(frozen=True)
class ImageHeader:
    """What the header says, before any pixel is decoded."""

    format: str  # the Pillow reader to open the file with: JPEG, PNG, WEBP, GIF, BMP, TIFF
    width: int  # as Pillow will report it for the first frame
    height: int
    working_bytes: int = 0  # the decoder's own buffers besides the image (libwebp, libtiff strips)
    working_note: str = ""  # what those are, for an error message

    @property
    def pixels(self) -> int:
        return self.width * self.height

    @property
    def decode_bytes(self) -> int:
        """An upper bound of the decode's peak memory: the decoded image, plus the larger of its RGB
        conversion and the decoder's working buffers (which are freed before the conversion)."""
        image = IMAGE_BYTES_PER_PIXEL * self.pixels
        return image + max(image, self.working_bytes)


def inspect_image(data: bytes) -> ImageHeader:
    """Sniff the format and walk its structure within the caps above; Pillow has not run yet.

    Raises `UnsupportedMediaTypeError` (415) for a format we do not decode, `PayloadTooLargeError`
    (413) for a structure over a cap, `ImageDecodeError` (400) for a header that is not well formed.
    The size is not checked against any pixel limit here: that is the caller's.
    """
    fmt = sniff_format(data)
    try:
        return _INSPECTORS[fmt](data)
    except (struct.error, IndexError) as exc:
        raise ImageDecodeError(
            f"the {fmt} file ends inside its header ({exc}): the file is truncated or corrupt"
        ) from exc


def _too_many(fmt: str, what: str, cap: int) -> PayloadTooLargeError:
    return PayloadTooLargeError(
        f"the {fmt} file has more than {cap} {what}, more than any real image has: re-save it with "
        "a common encoder (without extra metadata)"
    )


def _corrupt(fmt: str, what: str) -> ImageDecodeError:
    return ImageDecodeError(f"the {fmt} file {what}: the file is corrupt")


# --- JPEG ----------------------------------------------------------------------------------------

# A marker: 0xFF (any number of fill 0xFFs) and a byte that is neither 0x00 (a stuffed 0xFF) nor 0xFF.
_JPEG_MARKER = re.compile(rb"\xff+([^\x00\xff])")
# Markers after the first scan that count: all but RSTn (0xD0-0xD7).
_JPEG_LATER_MARKER = re.compile(rb"\xff([\xc0-\xcf\xd8-\xfe])")
# Frame headers (SOFn); DHP (0xDE) too, because Pillow reads its size as a frame header's.
_JPEG_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF, 0xDE})
# Markers libjpeg refuses (reserved JPGn, TEM, JPEG-LS frames): refused here before Pillow walks on.
_JPEG_UNSUPPORTED = frozenset({0x01, 0xC8, *range(0xF0, 0xFE)})


@dataclass
class _JpegWalk:
    segments: int = 0
    stray: int = 0
    exif: int = 0
    size: tuple[int, int] | None = None


def _inspect_jpeg(data: bytes) -> ImageHeader:
    walk = _JpegWalk()
    pos = 2
    while True:
        marker, pos = _next_jpeg_marker(data, pos, walk)
        if 0xD0 <= marker <= 0xD7:
            continue  # restart markers carry no segment
        if marker in (0xD8, 0xD9):
            raise _corrupt("JPEG", "has a second start or an end of image before its first scan")
        if marker in _JPEG_UNSUPPORTED:
            raise _corrupt("JPEG", f"uses marker 0xFF{marker:02X}, which no baseline or progressive JPEG has")
        (length,) = struct.unpack_from(">H", data, pos)
        end = pos + length
        if length < 2 or end > len(data):
            raise _corrupt("JPEG", f"has a marker segment of length {length} that does not fit the file")
        if marker == 0xDA:
            break
        _jpeg_segment(data, marker, pos + 2, end, walk)
        pos = end
    if walk.size is None:
        raise _corrupt("JPEG", "has no frame header before its first scan")
    width, height = walk.size
    scan_limit = min(JPEG_MAX_SCANS, max(JPEG_MIN_SCAN_LIMIT, JPEG_MAX_SCAN_PIXELS // max(1, width * height)))
    _count_later_jpeg_markers(data, pos, scan_limit)
    return ImageHeader("JPEG", width, height)


def _next_jpeg_marker(data: bytes, pos: int, walk: _JpegWalk) -> tuple[int, int]:
    """The next marker byte and the position after it, counting segments and stray bytes."""
    budget = JPEG_MAX_STRAY_BYTES - walk.stray
    found = _JPEG_MARKER.search(data, pos, pos + budget + 64)
    if found is None:
        if len(data) <= pos + budget:
            raise _corrupt("JPEG", "ends before its first scan")
        raise _corrupt("JPEG", f"has more than {JPEG_MAX_STRAY_BYTES} stray bytes between its markers")
    walk.stray += found.start(1) - 1 - pos  # junk before the 0xFF run, and its extra fill bytes
    if walk.stray > JPEG_MAX_STRAY_BYTES:
        raise _corrupt("JPEG", f"has more than {JPEG_MAX_STRAY_BYTES} stray bytes between its markers")
    walk.segments += 1
    if walk.segments > JPEG_MAX_SEGMENTS:
        raise _too_many("JPEG", "marker segments before its first scan", JPEG_MAX_SEGMENTS)
    return found.group(1)[0], found.end()


def _jpeg_segment(data: bytes, marker: int, body: int, end: int, walk: _JpegWalk) -> None:
    if marker in _JPEG_SOF:
        if walk.size is not None:
            raise _corrupt("JPEG", "has two frame headers")
        height, width = struct.unpack_from(">HH", data, body + 1)
        walk.size = (width, height)
    elif marker == 0xE1 and data.startswith(b"Exif\x00\x00", body):
        walk.exif += end - body
        if walk.exif > EXIF_MAX_BYTES:
            raise _too_many("JPEG", "bytes of EXIF", EXIF_MAX_BYTES)


def _count_later_jpeg_markers(data: bytes, pos: int, scan_limit: int) -> None:
    """Scans and other markers from the first scan to the end of the first picture (EOI).

    Entropy-coded data never holds 0xFF followed by a marker byte (encoders stuff a zero after every
    0xFF; restart markers are left out), so each marker is found at C speed and its segment skipped
    by its length; the Python loop runs once per marker, bounded by the caps. What follows EOI (an
    MPO's other pictures, a motion photo's video, an Ultra HDR gain map) is never decoded, so it is
    not counted: it is arbitrary data.
    """
    scans = markers = 0
    while (found := _JPEG_LATER_MARKER.search(data, pos)) is not None:
        markers += 1
        if markers > JPEG_MAX_LATER_MARKERS:
            raise _too_many("JPEG", "markers after its first scan", JPEG_MAX_LATER_MARKERS)
        marker, pos = found.group(1)[0], found.end()
        if marker == 0xD9:
            return
        if marker == 0xDA:
            scans += 1
            if scans + 1 > scan_limit:
                raise _too_many("JPEG", "scans for its size", scan_limit)
        if marker != 0xD8 and pos + 2 <= len(data):
            pos += struct.unpack_from(">H", data, pos)[0]  # skip the segment, whatever it holds


# --- PNG -----------------------------------------------------------------------------------------

_PNG_DATA_CHUNKS = frozenset({b"IDAT", b"fdAT", b"fcTL"})
_PNG_COMPRESSED = frozenset({b"zTXt", b"iCCP"})
# Text keys whose value Pillow reads as EXIF (the second hex-encoded, as ImageMagick writes it).
_PNG_EXIF_KEYS = frozenset({b"exif", b"Raw profile type exif"})
_PNG_EXIF_TEXT_MAX = 2 * EXIF_MAX_BYTES + 1024  # hex doubles the size; a short header precedes it


@dataclass
class _PngWalk:
    data_chunks: int = 0
    metadata_chunks: int = 0
    compressed: int = 0


def _inspect_png(data: bytes) -> ImageHeader:
    length, kind, width, height = struct.unpack_from(">I4sII", data, 8)
    if kind != b"IHDR" or length != 13:
        raise _corrupt("PNG", "does not start with its IHDR header")
    walk = _PngWalk()
    pos = 8
    while pos + 8 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, pos)
        if length > 0x7FFFFFFF:
            raise _corrupt("PNG", f"declares a chunk of {length} bytes")
        if kind == b"IEND":
            break
        _png_chunk(data, kind, pos + 8, length, walk)
        pos += 12 + length
    # A file that stops short of IEND is left to Pillow, which serves it if its image data is whole.
    return ImageHeader("PNG", width, height)


def _png_chunk(data: bytes, kind: bytes, body: int, length: int, walk: _PngWalk) -> None:
    if kind in _PNG_DATA_CHUNKS:
        walk.data_chunks += 1
        if walk.data_chunks > PNG_MAX_DATA_CHUNKS:
            raise _too_many("PNG", "image data chunks", PNG_MAX_DATA_CHUNKS)
        return
    walk.metadata_chunks += 1
    if walk.metadata_chunks > PNG_MAX_METADATA_CHUNKS:
        raise _too_many("PNG", "metadata chunks", PNG_MAX_METADATA_CHUNKS)
    if kind == b"eXIf" and length > EXIF_MAX_BYTES:
        raise _too_many("PNG", "bytes of EXIF", EXIF_MAX_BYTES)
    if kind in (b"tEXt", b"zTXt", b"iTXt", b"iCCP"):
        _png_text(data[body : body + length], kind, walk)


def _png_text(payload: bytes, kind: bytes, walk: _PngWalk) -> None:
    """Count compressed chunks; an EXIF text value is inflated (to the cap at most) and measured."""
    key, _, rest = payload.partition(b"\x00")
    compressed = kind in _PNG_COMPRESSED or (kind == b"iTXt" and rest[:1] == b"\x01")
    if compressed:
        walk.compressed += 1
        if walk.compressed > PNG_MAX_COMPRESSED_CHUNKS:
            raise _too_many("PNG", "compressed metadata chunks", PNG_MAX_COMPRESSED_CHUNKS)
    if key not in _PNG_EXIF_KEYS:
        return
    if kind == b"iTXt":
        rest = rest[2:].split(b"\x00", 2)[-1]  # after flag, method, language and translated key
    elif kind == b"zTXt":
        rest = rest[1:]  # after the compression method
    if compressed:
        try:
            rest = zlib.decompressobj().decompress(rest, _PNG_EXIF_TEXT_MAX + 1)
        except zlib.error:
            return  # Pillow ignores a text chunk it cannot inflate
    if len(rest) > _PNG_EXIF_TEXT_MAX:
        raise _too_many("PNG", "bytes of EXIF", EXIF_MAX_BYTES)


# --- GIF -----------------------------------------------------------------------------------------


def _inspect_gif(data: bytes) -> ImageHeader:
    width, height, flags = struct.unpack_from("<HHB", data, 6)
    pos = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
    extensions = sub_blocks = 0
    while True:
        introducer = data[pos]
        if introducer == 0x2C:  # image descriptor: Pillow grows the size to fit the first frame
            left, top, frame_width, frame_height = struct.unpack_from("<HHHH", data, pos + 1)
            return ImageHeader("GIF", max(width, left + frame_width), max(height, top + frame_height))
        if introducer != 0x21:
            raise _corrupt(
                "GIF", "has no image before its trailer" if introducer == 0x3B else "has an unknown block"
            )
        extensions += 1
        if extensions > GIF_MAX_EXTENSIONS:
            raise _too_many("GIF", "extension blocks before its first image", GIF_MAX_EXTENSIONS)
        pos += 2
        while data[pos]:
            sub_blocks += 1
            if sub_blocks > GIF_MAX_SUB_BLOCKS:
                raise _too_many("GIF", "extension data blocks before its first image", GIF_MAX_SUB_BLOCKS)
            pos += 1 + data[pos]
        pos += 1


# --- WebP ----------------------------------------------------------------------------------------


def _inspect_webp(data: bytes) -> ImageHeader:
    (riff_size,) = struct.unpack_from("<I", data, 4)
    end = 8 + riff_size
    if end > len(data):
        raise _corrupt("WebP", f"declares {riff_size} bytes of RIFF data but holds {len(data) - 8}")
    size = _webp_size(data, struct.unpack_from("<4sI", data, 12))
    pos, chunks = 12, 0
    while pos + 8 <= end:
        kind, length = struct.unpack_from("<4sI", data, pos)
        if pos + 8 + length > end:
            raise _corrupt("WebP", f"has a {kind!r} chunk that does not fit the file")
        chunks += 1
        if chunks > WEBP_MAX_CHUNKS:
            raise _too_many("WebP", "chunks", WEBP_MAX_CHUNKS)
        if kind == b"EXIF" and length > EXIF_MAX_BYTES:
            raise _too_many("WebP", "bytes of EXIF", EXIF_MAX_BYTES)
        pos += 8 + length + (length & 1)
    working = WEBP_WORKING_BYTES_PER_PIXEL * size[0] * size[1]
    return ImageHeader("WEBP", *size, working, "libwebp keeps two canvases and a copy of the image")


def _webp_size(data: bytes, first: tuple[bytes, int]) -> tuple[int, int]:
    """The canvas (extended format) or bitstream size from the first chunk."""
    kind, _ = first
    body = 20
    if kind == b"VP8X":
        width = int.from_bytes(data[body + 4 : body + 7], "little") + 1
        height = int.from_bytes(data[body + 7 : body + 10], "little") + 1
        return width, height
    if kind == b"VP8L":
        if data[body] != 0x2F:
            raise _corrupt("WebP", "has a lossless bitstream without its signature")
        (bits,) = struct.unpack_from("<I", data, body + 1)
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if kind == b"VP8 ":
        if data[body + 3 : body + 6] != b"\x9d\x01\x2a":
            raise _corrupt("WebP", "has a lossy bitstream without its start code")
        width, height = struct.unpack_from("<HH", data, body + 6)
        return width & 0x3FFF, height & 0x3FFF
    raise _corrupt("WebP", f"starts with a {kind!r} chunk instead of an image")


# --- BMP -----------------------------------------------------------------------------------------

_BMP_RLE = frozenset({1, 2})


def _inspect_bmp(data: bytes) -> ImageHeader:
    (header_size,) = struct.unpack_from("<I", data, 14)
    if header_size == 12:  # OS/2 core header: unsigned 16-bit sizes, never compressed
        width, height = struct.unpack_from("<HH", data, 18)
        return ImageHeader("BMP", width, height)
    width, height, _, _, compression = struct.unpack_from("<IiHHI", data, 18)
    height = abs(height)  # negative: stored top-down
    if compression in _BMP_RLE and width * height > BMP_RLE_MAX_PIXELS:
        raise PayloadTooLargeError(
            f"the RLE-compressed BMP is {width}x{height} = {width * height} pixels, above the limit of "
            f"{BMP_RLE_MAX_PIXELS} for RLE BMPs: send it uncompressed or as PNG"
        )
    return ImageHeader("BMP", width, height)


# --- TIFF ----------------------------------------------------------------------------------------

# Types Pillow unpacks into one Python object per value (BYTE, ASCII and UNDEFINED stay bytes).
_TIFF_NUMERIC_TYPES = {3: 2, 4: 4, 5: 8, 6: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4, 16: 8}
_TIFF_TABLE_TAGS = frozenset({273, 279, 324, 325})  # strip and tile offsets and byte counts
_TIFF_SUB_DIRECTORIES = (34665, 34853)  # EXIF and GPS, read by Pillow after the pixels
_TIFF_INTEROP = 40965  # inside the EXIF directory


class _TiffReader:
    """Directories of a classic or BigTIFF file: each entry as (type, count, raw value field)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.order = "<" if data[:2] == b"II" else ">"
        self.big = data[2:4] in (b"+\x00", b"\x00+")
        self.count_format = self.order + ("Q" if self.big else "H")
        self.entry_format = self.order + ("HHQ8s" if self.big else "HHI4s")
        self.entry_size = 20 if self.big else 12
        self.offset_format = self.order + ("Q" if self.big else "I")

    def first_offset(self) -> int:
        return struct.unpack_from(self.offset_format, self.data, 8 if self.big else 4)[0]

    def directory(self, offset: int) -> tuple[dict[int, tuple[int, int, bytes]], int]:
        """(entries by tag, offset of the next directory); over TIFF_MAX_ENTRIES entries is refused."""
        (count,) = struct.unpack_from(self.count_format, self.data, offset)
        if count > TIFF_MAX_ENTRIES:
            raise _too_many("TIFF", "entries in one directory", TIFF_MAX_ENTRIES)
        start = offset + struct.calcsize(self.count_format)
        entries: dict[int, tuple[int, int, bytes]] = {}
        for index in range(count):
            tag, kind, values, field = struct.unpack_from(
                self.entry_format, self.data, start + index * self.entry_size
            )
            entries.setdefault(tag, (kind, values, field))  # Pillow keeps the first of duplicates
        (following,) = struct.unpack_from(self.offset_format, self.data, start + count * self.entry_size)
        return entries, following

    def values(self, entry: tuple[int, int, bytes] | None, limit: int = 16) -> list[int]:
        """Up to `limit` values of a small SHORT or LONG entry (empty for None or another type)."""
        if entry is None or entry[0] not in (3, 4):
            return []
        kind, count, field = entry
        unit = 2 if kind == 3 else 4
        count = min(count, limit)
        if count * unit <= len(field):
            raw, at = field, 0
        else:
            raw, at = self.data, struct.unpack_from(self.offset_format, field)[0]
        return list(struct.unpack_from(f"{self.order}{count}{'H' if kind == 3 else 'I'}", raw, at))

    def scalar(self, entry: tuple[int, int, bytes]) -> int:
        """The first value of a SHORT, LONG or IFD entry (held in the value field itself)."""
        kind, _, field = entry
        if kind == 3:
            return struct.unpack_from(self.order + "H", field)[0]
        if kind in (4, 13):
            return struct.unpack_from(self.order + "I", field)[0]
        if kind == 16:
            return struct.unpack_from(self.order + "Q", field)[0]
        raise _corrupt("TIFF", f"has a size or offset of type {kind}")


def _check_tiff_values(entries: dict[int, tuple[int, int, bytes]]) -> None:
    values = 0
    for tag, (kind, count, _) in entries.items():
        if tag in _TIFF_TABLE_TAGS:
            if count > TIFF_MAX_STRIPS:
                raise _too_many("TIFF", "strips or tiles", TIFF_MAX_STRIPS)
        elif kind in _TIFF_NUMERIC_TYPES:
            values += count
    if values > TIFF_MAX_TAG_VALUES:
        raise _too_many("TIFF", "tag values in one directory", TIFF_MAX_TAG_VALUES)


def _inspect_tiff(data: bytes) -> ImageHeader:
    reader = _TiffReader(data)
    first = reader.first_offset()
    entries, following = reader.directory(first)
    _check_tiff_values(entries)
    for tag in _TIFF_SUB_DIRECTORIES:
        if tag in entries:
            _inspect_tiff_sub_directory(reader, entries[tag], nested=tag == 34665)
    if 256 not in entries or 257 not in entries:
        raise _corrupt("TIFF", "has no image width or length")
    _count_tiff_pages(reader, first, following)
    width, height = reader.scalar(entries[256]), reader.scalar(entries[257])
    if 3 in reader.values(entries.get(339)):
        raise UnsupportedMediaTypeError(
            "floating-point images (TIFF SampleFormat 3) have no defined display range: "
            "send an 8- or 16-bit image"
        )
    return _tiff_header(reader, entries, width, height)


def _tiff_header(
    reader: _TiffReader, entries: dict[int, tuple[int, int, bytes]], width: int, height: int
) -> ImageHeader:
    """The header with libtiff's strip or tile buffer: Pillow hands every compressed TIFF to libtiff,
    which decompresses one whole strip (or tile) at a time into a buffer of its own."""
    compression = (reader.values(entries.get(259)) or [1])[0]
    if compression == 1:
        return ImageHeader("TIFF", width, height)  # uncompressed: Pillow reads it in small blocks
    if compression in (6, 7):  # old- and new-style JPEG: count the scans of all strips at C speed
        strips = max((entries[tag][1] for tag in (273, 324) if tag in entries), default=1)
        if reader.data.count(b"\xff\xda") > TIFF_JPEG_MAX_SCANS_PER_STRIP * strips:
            raise _too_many("TIFF", "JPEG scans per strip", TIFF_JPEG_MAX_SCANS_PER_STRIP)
    bits = reader.values(entries.get(258)) or [1]
    samples = (reader.values(entries.get(277)) or [1])[0]
    planar = (reader.values(entries.get(284)) or [1])[0] == 2
    pixel_bits = max(bits) if planar else sum(bits) if len(bits) > 1 else bits[0] * samples
    if (reader.values(entries.get(262)) or [0])[0] == 6:
        pixel_bits = max(pixel_bits, 32)  # YCbCr goes through libtiff's RGBA reader
    if 322 in entries and 323 in entries:
        unit_width, unit_rows = reader.scalar(entries[322]), reader.scalar(entries[323])
    else:
        unit_width, unit_rows = width, min(height, (reader.values(entries.get(278)) or [height])[0])
    working = unit_width * unit_rows * -(-pixel_bits // 8)
    note = f"libtiff decompresses it {unit_rows} rows at a time, {working // 2**20} MiB per strip or tile"
    return ImageHeader("TIFF", width, height, working, note)


def _inspect_tiff_sub_directory(
    reader: _TiffReader, pointer: tuple[int, int, bytes], *, nested: bool
) -> None:
    offset = reader.scalar(pointer)
    if offset + 2 > len(reader.data):
        return  # Pillow skips a sub-directory it cannot seek to
    entries, _ = reader.directory(offset)
    _check_tiff_values(entries)
    if nested and _TIFF_INTEROP in entries:
        _inspect_tiff_sub_directory(reader, entries[_TIFF_INTEROP], nested=False)


def _count_tiff_pages(reader: _TiffReader, first: int, following: int) -> None:
    """Walk the chain of page directories (their entry counts only) up to the cap; a loop ends it,
    as it does for Pillow, and so does a pointer out of the file (Pillow never reads that far)."""
    seen = {first}
    while following and following not in seen and following + 8 <= len(reader.data):
        seen.add(following)
        if len(seen) > TIFF_MAX_PAGES:
            raise _too_many("TIFF", "pages", TIFF_MAX_PAGES)
        (count,) = struct.unpack_from(reader.count_format, reader.data, following)
        next_at = following + struct.calcsize(reader.count_format) + count * reader.entry_size
        if next_at + struct.calcsize(reader.offset_format) > len(reader.data):
            return
        (following,) = struct.unpack_from(reader.offset_format, reader.data, next_at)


_INSPECTORS = {
    "JPEG": _inspect_jpeg,
    "PNG": _inspect_png,
    "GIF": _inspect_gif,
    "WEBP": _inspect_webp,
    "BMP": _inspect_bmp,
    "TIFF": _inspect_tiff,
}

"""A file's format from its first bytes, before any decoder sees it.

Only the formats we decode are ever handed to Pillow, and then only to that one format's reader
(`Image.open(..., formats=[name])`). Everything else is named from its magic number (or, for TGA,
which has none, from a plausibility check of its fixed header) and refused with 415, so a refused
format costs a few byte comparisons: no Pillow reader runs over it, however large or hostile it is
(an EPS of comment lines was read byte by byte for 17 s; an ICO wrapping a 169-Mpixel PNG was
decoded in full, just to word the refusal).
"""

from __future__ import annotations

import re
import struct

from app.errors import ImageDecodeError, UnsupportedMediaTypeError

#: How error messages name what we accept.
ACCEPTED_FORMATS_TEXT = "JPEG, PNG, WebP, BMP, GIF, TIFF"

# BITMAPINFOHEADER sizes Pillow's BMP reader knows (core, V1, V2, V3, OS/2 v2, V4, V5).
_BMP_HEADER_SIZES = frozenset({12, 40, 52, 56, 64, 108, 124})

# (prefix, name) of formats we refuse, tried in order; names are what the 415 says.
_REFUSED_PREFIXES: tuple[tuple[bytes, str], ...] = (
    (b"%PDF-", "PDF"),
    (b"\xc5\xd0\xd3\xc6", "EPS"),  # DOS EPS binary header
    (b"8BPS", "PSD"),
    (b"\xff\x0a", "JPEG XL"),  # bare codestream
    (b"\x00\x00\x00\x0cJXL \r\n\x87\n", "JPEG XL"),  # ISO BMFF container
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "JPEG 2000"),
    (b"\xff\x4f\xff\x51", "JPEG 2000"),  # bare J2K codestream
    (b"PK\x03\x04", "ZIP"),
    (b"PK\x05\x06", "ZIP"),
    (b"\x1f\x8b", "gzip"),
    (b"BZh", "bzip2"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x28\xb5\x2f\xfd", "Zstandard"),
    (b"7z\xbc\xaf\x27\x1c", "7-Zip"),
    (b"Rar!\x1a\x07", "RAR"),
    (b"qoif", "QOI"),
    (b"DDS ", "DDS"),
    (b"icns", "ICNS"),
    (b"v/1\x01", "OpenEXR"),
    (b"#?RADIANCE", "Radiance HDR"),
    (b"#?RGBE", "Radiance HDR"),
    (b"SIMPLE  =", "FITS"),
    (b"\x01\xda\x00\x01", "SGI"),  # magic, storage (verbatim or RLE), bytes per channel
    (b"\x01\xda\x01\x01", "SGI"),
    (b"\x01\xda\x00\x02", "SGI"),
    (b"\x01\xda\x01\x02", "SGI"),
    (b"\x59\xa6\x6a\x95", "Sun raster"),
    (b"\xb1\x68\xde\x3a", "DCX"),
    (b"BLP1", "BLP"),
    (b"BLP2", "BLP"),
    (b"gimp xcf", "XCF"),
    (b"/* XPM */", "XPM"),
    (b"#define ", "XBM"),
    (b"\xd7\xcd\xc6\x9a", "WMF"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "OLE compound file (FlashPix, MIC, Office)"),
    (b"\x1a\x45\xdf\xa3", "Matroska/WebM video"),
    (b"OggS", "Ogg"),
    (b"ID3", "MP3 audio"),
)

# ISO base media file format brands (the `ftyp` box): HEIF stills and everything else.
_HEIC_BRANDS = frozenset({b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs"})
_AVIF_BRANDS = frozenset({b"avif", b"avis"})
_ISO_MAJOR_BRANDS = {b"mif1": "HEIF", b"msf1": "HEIF", b"crx ": "Canon CR3 raw", b"qt  ": "QuickTime video"}

# Text formats, recognised after an optional UTF-8 byte order mark and whitespace.
_TEXT_START = re.compile(rb"\A(?:\xef\xbb\xbf)?\s*")
_NETPBM = re.compile(rb"\AP([1-7fF])\s")
_NETPBM_NAMES = {b"1": "PBM", b"4": "PBM", b"2": "PGM", b"5": "PGM", b"3": "PPM", b"6": "PPM", b"7": "PAM"}

# TGA has no magic number: its 18-byte header is checked for values a TGA writer can produce.
_TGA_IMAGE_TYPES = frozenset({1, 2, 3, 9, 10, 11, 32, 33})
_TGA_DEPTHS = frozenset({1, 8, 15, 16, 24, 32})
_TGA_FOOTER = b"TRUEVISION-XFILE.\x00"


def sniff_format(data: bytes) -> str:
    """The Pillow format name to open `data` with: JPEG, PNG, WEBP, GIF, BMP or TIFF.

    Raises `UnsupportedMediaTypeError` (415) naming any other format it recognises and
    `ImageDecodeError` (400) for bytes that are no known format. Looks at the first bytes only (and
    at the last 18 for a TGA footer): its cost does not depend on the size or content of the file.
    """
    accepted = _accepted_format(data)
    if accepted is not None:
        return accepted
    refused = refused_format_name(data)
    if refused is not None:
        raise UnsupportedMediaTypeError(
            f"image format {refused} is not supported: send {ACCEPTED_FORMATS_TEXT}"
        )
    raise ImageDecodeError(
        f"the {len(data)} bytes sent are not a recognisable image ({ACCEPTED_FORMATS_TEXT}): "
        "the file may be corrupt or not an image"
    )


# (prefixes, Pillow format) of what we decode. Pillow's JPEG reader returns MPO itself for
# multi-picture files; a WebP is RIFF with the WEBP form type at offset 8 (checked below).
_ACCEPTED_PREFIXES: tuple[tuple[tuple[bytes, ...], str], ...] = (
    ((b"\xff\xd8\xff",), "JPEG"),
    ((b"\x89PNG\r\n\x1a\n",), "PNG"),
    ((b"GIF87a", b"GIF89a"), "GIF"),
    ((b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"), "TIFF"),  # classic and BigTIFF
)


def _accepted_format(data: bytes) -> str | None:
    for prefixes, name in _ACCEPTED_PREFIXES:
        if data.startswith(prefixes):
            return name
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    # "BM" alone is two letters of text: a BMP also needs a header size Pillow's reader knows.
    bmp = data.startswith(b"BM") and len(data) >= 18
    return "BMP" if bmp and struct.unpack_from("<I", data, 14)[0] in _BMP_HEADER_SIZES else None


def refused_format_name(data: bytes) -> str | None:
    """The name of a format we do not decode, if the first bytes say which; None if unknown."""
    for prefix, name in _REFUSED_PREFIXES:
        if data.startswith(prefix):
            return name
    return (
        _icon_name(data)
        or _iso_media_name(data)
        or _riff_name(data)
        or _text_format_name(data)
        or _dicom_name(data)
        or _tga_name(data)
    )


def _icon_name(data: bytes) -> str | None:
    if len(data) < 6 or data[:2] != b"\x00\x00":
        return None
    kind, count = struct.unpack_from("<HH", data, 2)
    if count == 0:
        return None
    return {1: "ICO", 2: "CUR"}.get(kind)


def _iso_media_name(data: bytes) -> str | None:
    """HEIC, AVIF, and the other ISO base media files (MP4, QuickTime, CR3) from their `ftyp` box."""
    if data[4:8] != b"ftyp" or len(data) < 12:
        return None
    (box_size,) = struct.unpack_from(">I", data, 0)
    major = data[8:12]
    brands = {major} | {data[i : i + 4] for i in range(16, min(box_size, len(data), 64), 4)}
    if brands & _AVIF_BRANDS:
        return "AVIF"
    if brands & _HEIC_BRANDS:
        return "HEIC"
    return _ISO_MAJOR_BRANDS.get(major, "MP4 video")


def _riff_name(data: bytes) -> str | None:
    if data[:4] != b"RIFF" or len(data) < 12:
        return None
    form = data[8:12]
    return {b"AVI ": "AVI video", b"WAVE": "WAV audio"}.get(form, f"RIFF {form!r}")


def _text_format_name(data: bytes) -> str | None:
    """PostScript/EPS, SVG, other XML, HTML and the Netpbm family, which are all text-headed."""
    if data.startswith(b"%!PS"):
        return "EPS" if b"EPSF" in data[:40] else "PostScript"
    netpbm = _NETPBM.match(data)
    if netpbm:
        return _NETPBM_NAMES.get(netpbm.group(1), "PFM")
    start = _TEXT_START.match(data[:1024])
    text = data[start.end() if start else 0 : 1024].lower()
    if text.startswith(b"<svg") or (text.startswith(b"<?xml") and b"<svg" in text):
        return "SVG"
    if text.startswith(b"<?xml"):
        return "XML"
    if text.startswith((b"<!doctype html", b"<html")):
        return "HTML"
    return None


def _dicom_name(data: bytes) -> str | None:
    return "DICOM" if data[128:132] == b"DICM" else None


def _tga_name(data: bytes) -> str | None:
    """TGA by its optional footer, else by a fixed header whose every field holds a legal value."""
    if data.endswith(_TGA_FOOTER):
        return "TGA"
    if len(data) < 18:
        return None
    id_length, colour_map_type, image_type = data[0], data[1], data[2]
    width, height, depth, descriptor = struct.unpack_from("<HHBB", data, 12)
    plausible = (
        colour_map_type in (0, 1)
        and image_type in _TGA_IMAGE_TYPES
        and depth in _TGA_DEPTHS
        and width > 0
        and height > 0
        and descriptor & 0xC0 == 0
        and len(data) > 18 + id_length
    )
    if plausible and colour_map_type == 0:
        plausible = data[3:8] == bytes(5)  # no colour map: its specification is zero
    return "TGA" if plausible else None

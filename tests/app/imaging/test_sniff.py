"""Sniffing: the accepted formats are recognised from their first bytes and opened with their own
Pillow reader only; every other format is named from its magic number, with no Pillow reader run."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from app.errors import ImageDecodeError, UnsupportedMediaTypeError
from app.imaging import ImagePreprocessor, sniff_format
from tests.app.imaging.conftest import PHOTOS
from tests.support.hostile import eps_comments, ico_wrapping_png, refused_format_samples
from tests.support.images import encode, gradient_rgb

ACCEPTED = [
    ("JPEG", "JPEG", {}),
    ("PNG", "PNG", {}),
    ("GIF", "GIF", {}),
    ("WEBP", "WEBP", {}),
    ("WEBP", "WEBP", {"lossless": True}),
    ("BMP", "BMP", {}),
    ("TIFF", "TIFF", {}),
    ("TIFF", "TIFF", {"compression": "tiff_lzw"}),
    ("TIFF", "TIFF", {"big_tiff": True}),
    ("MPO", "JPEG", {}),  # an MPO is a JPEG whose reader returns MpoImageFile
]


@pytest.mark.parametrize(("fmt", "sniffed", "params"), ACCEPTED)
def test_accepted_formats_are_sniffed_and_opened_with_their_reader_only(
    preprocessor: ImagePreprocessor, opened: list, fmt: str, sniffed: str, params: dict
) -> None:
    data = encode(Image.fromarray(gradient_rgb()), fmt, **params)
    assert sniff_format(data) == sniffed
    decoded = preprocessor.decode(data)
    assert decoded.size == (40, 30)
    assert opened == [(sniffed,)]


def test_reference_photos_are_sniffed_as_what_pillow_reads_them_as() -> None:
    for path in sorted(PHOTOS.iterdir()):
        data = path.read_bytes()
        with Image.open(io.BytesIO(data)) as image:
            assert sniff_format(data) == image.format.replace("MPO", "JPEG"), path.name


@pytest.mark.parametrize(
    ("label", "name", "data"), refused_format_samples(), ids=lambda v: v if isinstance(v, str) else ""
)
def test_refused_formats_are_named_without_any_reader_running(
    preprocessor: ImagePreprocessor, monkeypatch: pytest.MonkeyPatch, label: str, name: str, data: bytes
) -> None:
    def no_reader(*args: object, **kwargs: object) -> None:
        raise AssertionError("a Pillow reader was asked to open a refused format")

    monkeypatch.setattr(Image, "open", no_reader)
    with pytest.raises(UnsupportedMediaTypeError, match=f"format {name} is not supported") as raised:
        preprocessor.decode(data)
    assert "JPEG, PNG, WebP, BMP, GIF, TIFF" in raised.value.message
    assert raised.value.code == "unsupported_media_type"


def test_a_huge_refused_file_costs_no_more_than_its_first_bytes(
    preprocessor: ImagePreprocessor, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The EPS that Pillow read byte by byte for 17 s and the ICO whose 169-Mpixel PNG it decoded:
    # sniffing looks at a bounded prefix (and TGA's 18-byte footer), never at the rest.
    looked_at: list[int] = []

    class Watched(bytes):
        def __getitem__(self, key):  # type: ignore[no-untyped-def]
            if isinstance(key, slice):
                looked_at.append((key.stop or len(self)) - (key.start or 0))
            return super().__getitem__(key)

    for data, name in ((eps_comments(20_000_000), "EPS"), (ico_wrapping_png(13000), "ICO")):
        looked_at.clear()
        with pytest.raises(UnsupportedMediaTypeError, match=name):
            preprocessor.decode(Watched(data))
        assert max(looked_at, default=0) <= 1024


def test_pillow_written_tga_without_magic_is_named_from_its_header(preprocessor: ImagePreprocessor) -> None:
    data = encode(Image.fromarray(gradient_rgb(16, 16)), "TGA")
    footerless = data[: data.rindex(b"\x00\x00\x00\x00\x00\x00\x00\x00TRUEVISION")]  # a TGA 1.0 file
    for tga in (data, footerless):
        with pytest.raises(UnsupportedMediaTypeError, match="TGA"):
            preprocessor.decode(tga)


@pytest.mark.parametrize(
    "data",
    [
        b"BM" + bytes(40),  # "BM" without a known BMP header size: two letters, not a bitmap
        b"GIF8",  # a truncated magic number
        b"RIFF\x10\x00\x00\x00WAVX",  # RIFF of an unknown form type is named, but not as WebP
        bytes(64),
    ],
)
def test_bytes_that_are_no_known_format_are_a_decode_error_or_named(data: bytes) -> None:
    with pytest.raises((ImageDecodeError, UnsupportedMediaTypeError)) as raised:
        sniff_format(data)
    assert "WEBP" not in raised.value.message


def test_random_bytes_are_not_taken_for_a_magic_less_format() -> None:
    rng = np.random.default_rng(5)
    # A random file passes TGA's header check with probability about 1 in 3 million.
    for _ in range(300):
        with pytest.raises(ImageDecodeError, match="not a recognisable image"):
            sniff_format(rng.bytes(256))

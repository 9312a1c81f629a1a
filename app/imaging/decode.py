"""Untrusted image bytes to an 8-bit RGB `PIL.Image`, refusing anything over the limits.

Deliberate decisions a caller must know:

- Formats are sniffed from the first bytes (`sniff`), never trusted from the content type: JPEG (and
  MPO, a JPEG with extra frames), PNG, WebP, BMP, GIF and TIFF are decoded, each opened by its own
  Pillow reader only; any other format is named from its magic number and refused with 415 without
  any Pillow reader running over it.
- Limits are checked in order of cost, all but the first before Pillow sees the file: bytes, then a
  header-only walk of the file's structure with caps on every marker, chunk, strip, tag and EXIF
  block a reader would walk (`inspect`), then the header's `width * height` against the pixel limit
  and the size of the resize it implies (`check_geometry`, timm's resize of a 1:4.9M strip would be
  1.2 Gpixel). A pathological file is refused in milliseconds, before a pixel is allocated.
- Pillow's global `Image.MAX_IMAGE_PIXELS` is left alone: other code in the process may rely on it.
  Our `max_image_pixels` is the binding limit, checked before Pillow opens the file, so with the
  default limits Pillow never warns (`DecompressionBombWarning`); its own `DecompressionBombError`
  is defence in depth and is mapped to the same 413. A deployment that raises `max_image_pixels`
  above Pillow's global gets the warning (and a start-up log line saying so); the service routes
  Python warnings into its logs.
- Memory per decode stays at about the decoded image plus one 8-bit RGB copy, whatever the mode:
  16- and 32-bit greyscale are reduced to 8 bits band by band, and a source image is closed as soon
  as its RGB conversion exists.
- EXIF orientation is applied (timm does not; its reference photos carry none, so exactness with the
  reference is unaffected). A corrupt EXIF block is logged and the image is used as stored.
- Colour: `convert('RGB')` as timm does (alpha dropped, palette transparency ignored, CMYK converted
  naively, ICC profiles ignored), except for 16-bit greyscale (`I;16*`, and `I` as Pillow decodes some
  16-bit files): Pillow's plain convert clips those to 255, turning almost every pixel white, so they
  are reduced to 8 bits by keeping the high byte, which is also what Pillow does with 16-bit RGB PNGs.
  Floating-point images (mode `F`) have no defined display range and are refused with 415.
- Pixel-exactness has one opt-out, `jpeg_reducing_gap` (off by default): with it, libjpeg decodes a
  large JPEG at 1/2, 1/4 or 1/8 scale in the DCT domain (Pillow's `draft`, what `Image.thumbnail`
  does) as long as the decoded image stays at least `gap` times the resize target. A 12-Mpixel phone
  photo then costs 18 ms instead of 108 ms to preprocess (gap 2.0, docs/benchmarks.md) at the price
  of a slightly different low-pass filter: the uint8 crop moves by about half a grey level on average.
  Images too small to reduce, and every other format, are unaffected and stay exact.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
from collections.abc import Callable, Iterator
from typing import Protocol

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from app.errors import (
    ImageDecodeError,
    OverloadedError,
    PayloadTooLargeError,
    ServiceError,
    UnsupportedMediaTypeError,
)
from app.imaging.geometry import resized_size
from app.imaging.inspect import ImageHeader, inspect_image
from app.imaging.sniff import ACCEPTED_FORMATS_TEXT

logger = logging.getLogger(__name__)

#: Pillow format names we decode. MPO is how Pillow names a JPEG that carries extra frames
#: (phone cameras write them); its first frame is an ordinary JPEG.
SUPPORTED_FORMATS: frozenset[str] = frozenset({"JPEG", "MPO", "PNG", "WEBP", "BMP", "GIF", "TIFF"})

__all__ = [
    "ACCEPTED_FORMATS_TEXT",
    "DECODE_BYTES_PER_PIXEL",
    "SUPPORTED_FORMATS",
    "GeometryCheck",
    "ImageDecoder",
    "MemoryBudget",
]

#: Raises `PayloadTooLargeError` for a (width, height) whose later processing would be too large.
GeometryCheck = Callable[[int, int], None]


class MemoryBudget(Protocol):
    """Where a decode charges its peak memory while it runs (the service's request budget)."""

    def try_reserve(self, size: int) -> bool: ...

    def release(self, size: int) -> None: ...


#: Peak memory of one decode, per pixel of `max_image_pixels`: twice an 8-bit RGB image, what an
#: RGBA or CMYK image and its RGB conversion take (320 MB at the default 40 Mpixel).
DECODE_BYTES_PER_PIXEL = 8

# Formats whose decoder can scale down while decoding (`Image.draft`): JPEG, and MPO's JPEG frame.
_DRAFT_FORMATS = frozenset({"JPEG", "MPO"})

# Modes holding 16-bit greyscale samples that Pillow's convert('RGB') would clip at 255.
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})


# Rows per band when reducing 16- or 32-bit greyscale to 8 bits: a band's temporaries stay around
# 1-3 MB at any width up to 40 Mpixel's 6,300 columns.
_GREY_BAND_ROWS = 128


def _high_byte_grey(image: Image.Image) -> Image.Image:
    """16-bit greyscale (or mode I) to 8-bit L by keeping the high byte, one band of rows at a time.

    Mode I holds 16-bit data when Pillow decodes 16-bit greyscale into it; anything wider is clipped to
    the 16-bit range rather than wrapped. Working in bands keeps the extra memory to one band, where
    converting the whole array at once cost four copies of it (+430-560 MB at 40 Mpixel).
    """
    width, height = image.size
    out = np.empty((height, width), dtype=np.uint8)
    for top in range(0, height, _GREY_BAND_ROWS):
        bottom = min(height, top + _GREY_BAND_ROWS)
        band = np.asarray(image.crop((0, top, width, bottom)))
        if image.mode == "I":
            band = np.clip(band, 0, 0xFFFF)
        out[top:bottom] = band >> 8
    return Image.fromarray(out)  # 2-D uint8 -> mode L


def _to_rgb(image: Image.Image) -> Image.Image:
    """Convert to 8-bit RGB the way timm does, except that 16-bit greyscale keeps its contrast.

    Returns `image` itself when it is RGB already; otherwise the caller should close `image` once
    it has the result, so that only one copy of the pixels outlives the call.
    """
    mode = image.mode
    if mode == "RGB":
        return image  # convert('RGB') would only copy
    if mode in _SIXTEEN_BIT_MODES:
        grey = _high_byte_grey(image)
        image.close()  # the wide samples go before the 4-byte-per-pixel RGB image is allocated
        return grey.convert("RGB")
    if mode == "F":
        raise UnsupportedMediaTypeError(
            "floating-point images (Pillow mode F) have no defined display range: send an 8- or 16-bit image"
        )
    return image.convert("RGB")


class ImageDecoder:
    """Decodes within fixed limits; holds no mutable state, so any number of threads may call it
    (Pillow releases the GIL while decoding)."""

    def __init__(
        self,
        *,
        max_image_bytes: int,
        max_image_pixels: int,
        resize_size: int,
        jpeg_reducing_gap: float = 0.0,
        check_geometry: GeometryCheck | None = None,
        memory: MemoryBudget | None = None,
    ) -> None:
        if max_image_bytes <= 0:
            raise ValueError(f"max_image_bytes must be positive, got {max_image_bytes}")
        if max_image_pixels <= 0:
            raise ValueError(f"max_image_pixels must be positive, got {max_image_pixels}")
        if jpeg_reducing_gap != 0 and not jpeg_reducing_gap >= 1:
            # Below 1 the decoder would hand the resize fewer pixels than it outputs: an upsample.
            raise ValueError(f"jpeg_reducing_gap must be 0 (off) or >= 1, got {jpeg_reducing_gap}")
        self.max_image_bytes = max_image_bytes
        self.max_image_pixels = max_image_pixels
        self.resize_size = resize_size
        self.jpeg_reducing_gap = jpeg_reducing_gap
        self.check_geometry = check_geometry
        self.memory = memory
        self.max_decode_bytes = DECODE_BYTES_PER_PIXEL * max_image_pixels

    def __call__(self, data: bytes) -> Image.Image:
        """Bytes to an RGB image with EXIF orientation applied.

        With `jpeg_reducing_gap` set, a large JPEG comes back at 1/2, 1/4 or 1/8 of its stored size
        (never smaller than the gap times the resize target); the pixel limit still applies to the
        stored size.

        Raises `PayloadTooLargeError` (413) for too many bytes or pixels, a structure over one of
        `inspect`'s caps or a size `check_geometry` refuses, `UnsupportedMediaTypeError` (415) for a
        format we do not decode, `ImageDecodeError` (400) for empty, random, truncated or corrupt
        data. No Pillow exception escapes.
        """
        image, header = self._open(data)
        with self._charged(header.decode_bytes):
            return self._decoded(image)

    @contextlib.contextmanager
    def _charged(self, size: int) -> Iterator[None]:
        """Hold `size` bytes of the memory budget while the pixels are decoded and converted: the
        decodes running at once never take more than the budget leaves (503 beyond it)."""
        if self.memory is None:
            yield
            return
        if not self.memory.try_reserve(size):
            raise OverloadedError(
                f"decoding this image takes about {size // 2**20} MiB, more than the memory budget "
                "(TRANSXNET_MAX_INFLIGHT_BYTES) has free now: retry shortly",
                retry_after_s=1,
            )
        try:
            yield
        finally:
            self.memory.release(size)

    def _decoded(self, image: Image.Image) -> Image.Image:
        """Decode, orient and convert to RGB an image whose header passed every check."""
        self._load(image)
        try:
            ImageOps.exif_transpose(image, in_place=True)
        except MemoryError:
            raise
        except Exception as exc:
            # A broken EXIF block should not cost the user their request: viewers ignore it too.
            logger.warning(
                "ignoring unreadable EXIF orientation (%s: %s); using the image as stored",
                type(exc).__name__,
                exc,
            )
        fmt, mode = image.format, image.mode
        try:
            rgb = _to_rgb(image)
        except (ServiceError, MemoryError):
            raise
        except Exception as exc:
            raise ImageDecodeError(
                f"the {fmt} image's pixel mode {mode} cannot be converted to RGB "
                f"({type(exc).__name__}: {exc})"
            ) from exc
        if rgb is not image:
            image.close()  # frees the decoded pixels now rather than after the resize
        return rgb

    def _open(self, data: bytes) -> tuple[Image.Image, ImageHeader]:
        """Inspect the header and check it against the limits, then let Pillow parse it (its one
        reader for the sniffed format; no pixel is decoded yet)."""
        if len(data) > self.max_image_bytes:
            raise PayloadTooLargeError(
                f"image is {len(data)} bytes, above the limit of {self.max_image_bytes} bytes: "
                "send a smaller file"
            )
        if not data:
            raise ImageDecodeError("the image is empty (0 bytes): send the file's contents")
        header = inspect_image(data)
        self._check_size(header.width, header.height)
        self._check_memory(header)
        try:
            image = Image.open(io.BytesIO(data), formats=(header.format,))
        except Image.DecompressionBombError as exc:
            raise PayloadTooLargeError(
                f"image declares too many pixels ({exc}); the limit is {self.max_image_pixels} pixels"
            ) from exc
        except UnidentifiedImageError as exc:
            raise ImageDecodeError(
                f"the image looks like {header.format} but its header cannot be read: the file is corrupt"
            ) from exc
        except MemoryError:
            raise
        except Exception as exc:  # hostile input: any parser failure is the client's corrupt file
            raise ImageDecodeError(
                f"the image header cannot be read ({type(exc).__name__}: {exc}): the file is corrupt"
            ) from exc

        if image.format not in SUPPORTED_FORMATS:
            # A plugin we asked for reported another format name; refuse rather than guess.
            raise UnsupportedMediaTypeError(
                f"image format {image.format} is not supported: send {ACCEPTED_FORMATS_TEXT}"
            )
        # Again on Pillow's own reading of the header, in case it differs from ours.
        self._check_size(*image.size)
        return image, header

    def _check_memory(self, header: ImageHeader) -> None:
        """The decode's peak memory, bounded at `DECODE_BYTES_PER_PIXEL` per pixel of the limit.

        Only decoders with large buffers of their own reach it below the pixel limit: libwebp (16
        bytes per pixel in all, so WebPs are served up to half the pixel limit) and libtiff on a
        compressed TIFF stored as one or a few huge strips.
        """
        if header.decode_bytes <= self.max_decode_bytes:
            return
        raise PayloadTooLargeError(
            f"decoding this {header.width}x{header.height} {header.format} would take about "
            f"{header.decode_bytes // 2**20} MiB ({header.working_note}), above the limit of "
            f"{self.max_decode_bytes // 2**20} MiB per image: send a smaller image, or a JPEG or PNG"
        )

    def _check_size(self, width: int, height: int) -> None:
        """Pixel limit, then the caller's geometry check, on a size no pixel of which is decoded."""
        if width <= 0 or height <= 0:
            raise ImageDecodeError(f"image declares an empty size {width}x{height}: the file is corrupt")
        if width * height > self.max_image_pixels:
            raise PayloadTooLargeError(
                f"image is {width}x{height} = {width * height} pixels, above the limit of "
                f"{self.max_image_pixels} pixels: send a smaller image"
            )
        if self.check_geometry is not None:
            self.check_geometry(width, height)

    def _load(self, image: Image.Image) -> None:
        """Decode the pixels now, so truncated data fails here and not in a later step."""
        try:
            if self.jpeg_reducing_gap and image.format in _DRAFT_FORMATS:
                self._request_draft(image)
            image.load()
        except MemoryError:
            raise
        except Image.DecompressionBombError as exc:
            raise PayloadTooLargeError(f"image has too many pixels ({exc})") from exc
        except Exception as exc:  # hostile input: any decoder failure is the client's corrupt file
            raise ImageDecodeError(
                f"the {image.format} image cannot be decoded ({type(exc).__name__}: {exc}): "
                "the file is truncated or corrupt"
            ) from exc

    def _request_draft(self, image: Image.Image) -> None:
        """Ask libjpeg for the largest 1/2, 1/4 or 1/8 scale that keeps `gap` x the resize target.

        The target is computed on the stored (pre-EXIF) size; scaling is uniform, so the rotation that
        follows does not change which side is the shorter one relative to the target.
        """
        width, height = image.size
        new_width, new_height = resized_size(width, height, self.resize_size)
        gap = self.jpeg_reducing_gap
        image.draft(None, (math.ceil(new_width * gap), math.ceil(new_height * gap)))

"""Untrusted image bytes to an 8-bit RGB `PIL.Image`, refusing anything over the limits.

Deliberate decisions a caller must know:

- Formats are sniffed from the bytes, never trusted from the content type: JPEG (and MPO, a JPEG
  with extra frames), PNG, WebP, BMP, GIF and TIFF are decoded; anything else Pillow could read
  (ICO, PPM, EPS, ...) is refused with 415 without decoding its pixels.
- Limits are checked in order of cost: bytes before parsing, then the header's `width * height`
  before a single pixel is decoded (Pillow parses headers lazily).
- Pillow's global `Image.MAX_IMAGE_PIXELS` is left alone: other code in the process may rely on it.
  Our `max_image_pixels` is the binding limit; Pillow's own `DecompressionBombError` (above twice its
  global) is defence in depth and is mapped to the same 413. Pillow's `DecompressionBombWarning` is
  not turned into an error here (`warnings.catch_warnings` is process-global, not thread-safe); an
  image that triggers it is either within our limit (and served) or refused by our check.
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

import io
import logging
import math

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from app.errors import ImageDecodeError, PayloadTooLargeError, ServiceError, UnsupportedMediaTypeError
from app.imaging.geometry import resized_size

logger = logging.getLogger(__name__)

#: Pillow format names we decode. MPO is how Pillow names a JPEG that carries extra frames
#: (phone cameras write them); its first frame is an ordinary JPEG.
SUPPORTED_FORMATS: frozenset[str] = frozenset({"JPEG", "MPO", "PNG", "WEBP", "BMP", "GIF", "TIFF"})

#: How error messages name what we accept.
ACCEPTED_FORMATS_TEXT = "JPEG, PNG, WebP, BMP, GIF, TIFF"

# Tried in this order when sniffing: the common web formats first.
_OPEN_ORDER: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")

# Formats whose decoder can scale down while decoding (`Image.draft`): JPEG, and MPO's JPEG frame.
_DRAFT_FORMATS = frozenset({"JPEG", "MPO"})

# Modes holding 16-bit greyscale samples that Pillow's convert('RGB') would clip at 255.
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})


def _sniff_other_format(data: bytes) -> str | None:
    """Name the format of bytes none of our decoders accepted, if Pillow knows it (header only).

    This only parses a header (no pixel data is decoded), so that a valid ICO or PPM gets a 415
    that says which formats we take rather than a 400 that calls the file corrupt.
    """
    try:
        with Image.open(io.BytesIO(data)) as other:
            return other.format or "unknown"
    except Image.DecompressionBombError:
        return "unknown"
    except MemoryError:
        raise
    except Exception:  # not an image any plugin recognises: the caller reports a decode error
        return None


def _to_rgb(image: Image.Image) -> Image.Image:
    """Convert to 8-bit RGB the way timm does, except that 16-bit greyscale keeps its contrast."""
    mode = image.mode
    if mode == "RGB":
        return image  # convert('RGB') would only copy
    if mode in _SIXTEEN_BIT_MODES:
        samples = np.asarray(image)
        if mode == "I":
            # Mode I holds 16-bit data when Pillow decodes 16-bit greyscale into it; anything wider
            # is clipped to the 16-bit range rather than wrapped.
            samples = np.clip(samples, 0, 0xFFFF)
        high_byte = (samples.astype(np.uint32, copy=False) >> 8).astype(np.uint8)
        return Image.fromarray(high_byte).convert("RGB")  # 2-D uint8 -> mode L
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

    def __call__(self, data: bytes) -> Image.Image:
        """Bytes to an RGB image with EXIF orientation applied.

        With `jpeg_reducing_gap` set, a large JPEG comes back at 1/2, 1/4 or 1/8 of its stored size
        (never smaller than the gap times the resize target); the pixel limit still applies to the
        stored size.

        Raises `PayloadTooLargeError` (413) for too many bytes or pixels, `UnsupportedMediaTypeError`
        (415) for a format we do not decode, `ImageDecodeError` (400) for empty, random, truncated or
        corrupt data. No Pillow exception escapes.
        """
        image = self._open(data)
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
        try:
            return _to_rgb(image)
        except (ServiceError, MemoryError):
            raise
        except Exception as exc:
            raise ImageDecodeError(
                f"the {image.format} image's pixel mode {image.mode} cannot be converted to RGB "
                f"({type(exc).__name__}: {exc})"
            ) from exc

    def _open(self, data: bytes) -> Image.Image:
        """Parse the header only, and check bytes, format and declared pixels against the limits."""
        if len(data) > self.max_image_bytes:
            raise PayloadTooLargeError(
                f"image is {len(data)} bytes, above the limit of {self.max_image_bytes} bytes: "
                "send a smaller file"
            )
        if not data:
            raise ImageDecodeError("the image is empty (0 bytes): send the file's contents")
        try:
            image = Image.open(io.BytesIO(data), formats=_OPEN_ORDER)
        except Image.DecompressionBombError as exc:
            raise PayloadTooLargeError(
                f"image declares too many pixels ({exc}); the limit is {self.max_image_pixels} pixels"
            ) from exc
        except UnidentifiedImageError as exc:
            other = _sniff_other_format(data)
            if other is not None:
                raise UnsupportedMediaTypeError(
                    f"image format {other} is not supported: send {ACCEPTED_FORMATS_TEXT}"
                ) from exc
            raise ImageDecodeError(
                f"the {len(data)} bytes sent are not a recognisable image "
                f"({ACCEPTED_FORMATS_TEXT}): the file may be corrupt or not an image"
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
        width, height = image.size
        if width <= 0 or height <= 0:
            raise ImageDecodeError(f"image declares an empty size {width}x{height}: the file is corrupt")
        # Checked on the parsed header, before load() allocates or decodes a single pixel.
        if width * height > self.max_image_pixels:
            raise PayloadTooLargeError(
                f"image is {width}x{height} = {width * height} pixels, above the limit of "
                f"{self.max_image_pixels} pixels: send a smaller image"
            )
        return image

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

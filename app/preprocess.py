"""Image bytes in, model input out: decoding and timm's evaluation transform, pixel-exact.

The service must feed the exported graph exactly what timm's eval pipeline would have fed the PyTorch
model, or every accuracy number measured in PyTorch silently stops applying. timm's pipeline is
`Image.open(f).convert('RGB')`, torchvision `Resize(floor(size / crop_pct), BICUBIC)` (shorter side),
`CenterCrop(size)`, `ToTensor()`, `Normalize(mean, std)`. On PIL images torchvision delegates the
resize to Pillow, so a Pillow-only pipeline that reproduces torchvision's size arithmetic (long side
truncated, crop offsets rounded half-to-even) is pixel-exact, and the normalisation below reproduces
torch's float32 arithmetic bit for bit through a lookup table.

Deliberate decisions a caller must know:

- Formats are sniffed from the bytes, never trusted from the content type: JPEG (and MPO, a JPEG
  with extra frames), PNG, WebP, BMP, GIF and TIFF are decoded; anything else Pillow could read
  (ICO, PPM, EPS, ...) is refused with 415 without decoding its pixels.
- Limits are checked in order of cost: bytes before parsing, then the header's `width * height`
  before a single pixel is decoded (Pillow parses headers lazily), then the size of the resized
  intermediate before resizing (a 1 x 100000 strip would otherwise be resized to 248 x 24.8M).
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
- A large image's resize can borrow an idle decode thread (`resize_helper`, a `DecodePool`): the
  horizontal pass, which is most of the work, then runs as two row bands, each a `resize(box=...)`
  with integer row bounds, so Pillow computes the very same filter coefficients and the result is
  bit-identical to one call. (Portraits over about 2:1, which Pillow 13 resizes vertically first,
  stay one call.) Only a thread with nothing queued is borrowed, so under load, when every decode
  thread has work, nothing is split and no request's decode waits behind another's band.
- `ImagePreprocessor` holds no mutable state after `__init__`: call it from any number of threads
  (Pillow releases the GIL while decoding and resizing).
"""

from __future__ import annotations

import io
import logging
import math
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from app.errors import ImageDecodeError, PayloadTooLargeError, ServiceError, UnsupportedMediaTypeError
from runtime.metadata import ModelMetadata

logger = logging.getLogger(__name__)

#: Pillow format names we decode. MPO is how Pillow names a JPEG that carries extra frames
#: (phone cameras write them); its first frame is an ordinary JPEG.
SUPPORTED_FORMATS: frozenset[str] = frozenset({"JPEG", "MPO", "PNG", "WEBP", "BMP", "GIF", "TIFF"})

#: Content types accepted for an image body or part (parameters such as `; charset=` are ignored).
#: The bytes are sniffed regardless, so a client that only knows `application/octet-stream` is fine.
SUPPORTED_CONTENT_TYPES: frozenset[str] = frozenset(
    {
        "image/jpeg",
        "image/jpg",  # not registered, but common enough in the wild to accept
        "image/png",
        "image/webp",
        "image/bmp",
        "image/x-ms-bmp",
        "image/gif",
        "image/tiff",
        "application/octet-stream",
    }
)

# Tried in this order when sniffing: the common web formats first.
_OPEN_ORDER: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")

# Formats whose decoder can scale down while decoding (`Image.draft`): JPEG, and MPO's JPEG frame.
_DRAFT_FORMATS = frozenset({"JPEG", "MPO"})

# Modes holding 16-bit greyscale samples that Pillow's convert('RGB') would clip at 255.
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})

# Shorter-side multiples always allowed for the resized intermediate, whatever max_image_pixels says,
# so a tight pixel limit never refuses an ordinary photo that must be upsampled (aspect up to 16:1).
_MIN_RESIZE_BUDGET_ASPECT = 16


# Source pixels from which a resize is split over two threads. Measured alone on 2 cores: around
# 0.1 Mpixel the hand-off costs what half a horizontal pass saves; the split is 1.2x faster at 0.3
# Mpixel, 1.3x at 1 Mpixel and 1.7x at 12 Mpixel (docs/benchmarks.md).
SPLIT_RESIZE_MIN_PIXELS = 200_000

# How error messages name what we accept.
_ACCEPTED_FORMATS_TEXT = "JPEG, PNG, WebP, BMP, GIF, TIFF"


def check_content_type(content_type: str | None) -> None:
    """Refuse a declared content type that cannot be an image we decode (415).

    None or an empty string is accepted: the bytes are sniffed anyway. Parameters (`; charset=...`)
    and case are ignored, as RFC 9110 says media types are case-insensitive.
    """
    if not content_type:
        return
    media_type = content_type.split(";", 1)[0].strip().lower()
    if not media_type or media_type in SUPPORTED_CONTENT_TYPES:
        return
    raise UnsupportedMediaTypeError(
        f"content type {media_type!r} is not accepted: send one of "
        f"{', '.join(sorted(SUPPORTED_CONTENT_TYPES))} (formats {_ACCEPTED_FORMATS_TEXT})"
    )


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


def resized_size(width: int, height: int, shorter: int) -> tuple[int, int]:
    """(width, height) after torchvision's `Resize(shorter)`: the long side is truncated, not rounded.

    Mirrors `torchvision.transforms.functional._compute_resized_output_size` for an int size without
    `max_size`, which is what timm's eval transform uses for a square input.
    """
    if width <= height:
        return shorter, int(shorter * height / width)
    return int(shorter * width / height), shorter


def center_crop_box(width: int, height: int, crop: int) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of torchvision's `CenterCrop(crop)`: offsets rounded half-to-even.

    Python's `round` is what torchvision uses, so a 1-pixel surplus goes to the right/bottom edge for
    even halves and to the left/top for odd ones, exactly as there.
    """
    if crop > width or crop > height:
        # timm's resize makes the shorter side >= crop whenever crop_pct <= 1 (metadata enforces it).
        raise ValueError(f"cannot centre-crop {crop}x{crop} from a {width}x{height} image")
    top = round((height - crop) / 2.0)
    left = round((width - crop) / 2.0)
    return left, top, left + crop, top + crop


def _pillow_resizes_vertically_first(width: int, height: int, new_width: int, new_height: int) -> bool:
    """Pillow 13's pass order: vertical first when the height loses more than twice the pixels the
    width does (`ImagingResampleInner`); earlier Pillows always start horizontally.

    For timm's shorter-side resize that means portraits taller than about 2:1. The split resize
    reproduces the horizontal-first order only, so it leaves those to a single call.
    """
    shrink = height - new_height
    return shrink > 0 and shrink > 2 * (width - new_width)


def _normalisation_table(mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """(3, 256) float32: every uint8 value of every channel after ToTensor + Normalize.

    Computed with torch's float32 operation order, `(v / 255 - mean) / std`, each step rounded to
    float32, so the table lookup is bit-identical to torch and costs one gather per output value.
    """
    values = np.arange(256, dtype=np.float32) / np.float32(255.0)
    mean32 = np.asarray(mean, dtype=np.float32)[:, None]
    std32 = np.asarray(std, dtype=np.float32)[:, None]
    table = (values[None, :] - mean32) / std32
    return np.ascontiguousarray(table, dtype=np.float32)


class DecodePool(ThreadPoolExecutor):
    """The decode threads, counting their outstanding tasks so that a resize can borrow one that
    would otherwise sit idle.

    `submit_if_idle` runs a task only when fewer tasks are queued or running than there are
    threads: an idle thread picks it up at once. When every thread has work it returns None and
    the caller does the work itself, so borrowing never puts one request's band ahead of another
    request's decode.
    """

    def __init__(self, max_workers: int, thread_name_prefix: str = "preprocess") -> None:
        super().__init__(max_workers=max_workers, thread_name_prefix=thread_name_prefix)
        self.workers = max_workers
        self._outstanding = 0
        self._lock = threading.Lock()

    @property
    def outstanding(self) -> int:
        """Tasks submitted and not yet finished (queued or running)."""
        return self._outstanding

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        with self._lock:
            self._outstanding += 1
        return self._counted(fn, args, kwargs)

    def submit_if_idle(self, fn: Callable[..., Any], /, *args: Any) -> Future | None:
        """Submit `fn(*args)` if a thread is free to start it now; otherwise None."""
        with self._lock:
            if self._outstanding >= self.workers:
                return None
            self._outstanding += 1
        return self._counted(fn, args, {})

    def _counted(self, fn: Callable[..., Any], args: tuple, kwargs: dict) -> Future:
        try:
            future = super().submit(fn, *args, **kwargs)
        except BaseException:  # shut down: the task never existed
            self._finished(None)
            raise
        future.add_done_callback(self._finished)  # also runs on cancel()
        return future

    def _finished(self, _: Future | None) -> None:
        with self._lock:
            self._outstanding -= 1


class ImagePreprocessor:
    """Decode untrusted image bytes and apply the model's evaluation transform, pixel-exact with timm.

    Everything the transform needs comes from the ONNX file's `ModelMetadata`, so a model exported
    at 384 with crop_pct 0.95 is preprocessed as it was trained, with no service setting to forget.
    """

    def __init__(
        self,
        metadata: ModelMetadata,
        *,
        max_image_bytes: int,
        max_image_pixels: int,
        jpeg_reducing_gap: float = 0.0,
        resize_helper: DecodePool | None = None,
    ) -> None:
        if max_image_bytes <= 0:
            raise ValueError(f"max_image_bytes must be positive, got {max_image_bytes}")
        if max_image_pixels <= 0:
            raise ValueError(f"max_image_pixels must be positive, got {max_image_pixels}")
        if jpeg_reducing_gap != 0 and not jpeg_reducing_gap >= 1:
            # Below 1 the decoder would hand the resize fewer pixels than it outputs: an upsample.
            raise ValueError(f"jpeg_reducing_gap must be 0 (off) or >= 1, got {jpeg_reducing_gap}")
        if metadata.interpolation != "bicubic":
            raise ValueError(
                f"model metadata asks for {metadata.interpolation!r} interpolation; this preprocessor "
                "implements timm's bicubic eval transform only: re-export with interpolation='bicubic'"
            )
        self.metadata = metadata
        self.max_image_bytes = max_image_bytes
        self.max_image_pixels = max_image_pixels
        self.jpeg_reducing_gap = jpeg_reducing_gap
        self.resize_helper = resize_helper
        self.image_size = metadata.image_size
        self.resize_size = metadata.resize_size
        # The resized intermediate obeys the pixel limit too (never below a 16:1 strip of the shorter side).
        self._resize_budget = max(max_image_pixels, _MIN_RESIZE_BUDGET_ASPECT * self.resize_size**2)
        self._table = _normalisation_table(metadata.mean, metadata.std)
        if ImageFile.LOAD_TRUNCATED_IMAGES:
            # Someone in this process opted Pillow into padding truncated files with grey; we do not
            # undo a global, but the service would then classify half-received uploads.
            logger.warning(
                "PIL.ImageFile.LOAD_TRUNCATED_IMAGES is set in this process: truncated uploads will be "
                "served padded instead of refused with 400"
            )
        pillow_limit = Image.MAX_IMAGE_PIXELS
        if pillow_limit is not None and max_image_pixels > pillow_limit:
            # Not an error: our limit still binds, Pillow merely warns between its limit and twice it
            # and refuses (413 here too) above twice it.
            logger.warning(
                "max_image_pixels=%d exceeds Pillow's Image.MAX_IMAGE_PIXELS=%d: images between the two "
                "are served but Pillow emits DecompressionBombWarning for them, and images above %d "
                "are refused by Pillow's own check",
                max_image_pixels,
                pillow_limit,
                2 * pillow_limit,
            )

    @property
    def output_shape(self) -> tuple[int, int, int]:
        """Shape of one preprocessed image: (3, image_size, image_size)."""
        return 3, self.image_size, self.image_size

    def decode(self, data: bytes) -> Image.Image:
        """Bytes to an RGB image with EXIF orientation applied, refusing anything over the limits.

        With `jpeg_reducing_gap` set, a large JPEG comes back at 1/2, 1/4 or 1/8 of its stored size
        (never smaller than the gap times the resize target); the pixel limit still applies to the
        stored size.

        Raises `PayloadTooLargeError` (413) for too many bytes or pixels, `UnsupportedMediaTypeError`
        (415) for a format we do not decode, `ImageDecodeError` (400) for empty, random, truncated or
        corrupt data. No Pillow exception escapes.
        """
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
                    f"image format {other} is not supported: send {_ACCEPTED_FORMATS_TEXT}"
                ) from exc
            raise ImageDecodeError(
                f"the {len(data)} bytes sent are not a recognisable image "
                f"({_ACCEPTED_FORMATS_TEXT}): the file may be corrupt or not an image"
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
                f"image format {image.format} is not supported: send {_ACCEPTED_FORMATS_TEXT}"
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
        try:
            if self.jpeg_reducing_gap and image.format in _DRAFT_FORMATS:
                self._request_draft(image)
            image.load()  # decode now, so truncated data fails here and not in a later step
        except MemoryError:
            raise
        except Image.DecompressionBombError as exc:
            raise PayloadTooLargeError(f"image has too many pixels ({exc})") from exc
        except Exception as exc:  # hostile input: any decoder failure is the client's corrupt file
            raise ImageDecodeError(
                f"the {image.format} image cannot be decoded ({type(exc).__name__}: {exc}): "
                "the file is truncated or corrupt"
            ) from exc
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

    def _request_draft(self, image: Image.Image) -> None:
        """Ask libjpeg for the largest 1/2, 1/4 or 1/8 scale that keeps `gap` x the resize target.

        The target is computed on the stored (pre-EXIF) size; scaling is uniform, so the rotation that
        follows does not change which side is the shorter one relative to the target.
        """
        width, height = image.size
        new_width, new_height = resized_size(width, height, self.resize_size)
        gap = self.jpeg_reducing_gap
        image.draft(None, (math.ceil(new_width * gap), math.ceil(new_height * gap)))

    @property
    def pixel_exact(self) -> bool:
        """Whether every image gets exactly timm's eval transform (no reduced-scale JPEG decoding)."""
        return not self.jpeg_reducing_gap

    def transform(self, image: Image.Image) -> np.ndarray:
        """RGB image to uint8 (S, S, 3): timm's resize + centre crop, before normalisation.

        This is the array the stored reference holds; `__call__` normalises it.
        """
        if image.mode != "RGB":
            raise ValueError(f"transform expects an RGB image (use decode), got mode {image.mode}")
        width, height = image.size
        new_width, new_height = resized_size(width, height, self.resize_size)
        if new_width * new_height > self._resize_budget:
            # Extreme aspect ratios blow up on resize (1x10000 -> 248x2480000): refuse before allocating.
            raise PayloadTooLargeError(
                f"a {width}x{height} image resizes to {new_width}x{new_height} before cropping, above "
                f"the limit of {self._resize_budget} pixels: send an image with a less extreme aspect ratio"
            )
        box = center_crop_box(new_width, new_height, self.image_size)
        if self._splits(width, height, new_width, new_height):
            split = self._split_resize_crop(image, new_width, new_height, box)
            if split is not None:
                return np.asarray(split)
        if (new_width, new_height) != (width, height):
            image = image.resize((new_width, new_height), Image.Resampling.BICUBIC)
        if box != (0, 0, new_width, new_height):
            image = image.crop(box)
        return np.asarray(image)

    def _splits(self, width: int, height: int, new_width: int, new_height: int) -> bool:
        """Whether this resize is worth two threads: a helper, a horizontal pass that Pillow runs
        first, enough pixels."""
        return (
            self.resize_helper is not None
            and new_width != width
            and height >= 2
            and width * height >= SPLIT_RESIZE_MIN_PIXELS
            and not _pillow_resizes_vertically_first(width, height, new_width, new_height)
        )

    def _split_resize_crop(
        self, image: Image.Image, new_width: int, new_height: int, box: tuple[int, int, int, int]
    ) -> Image.Image | None:
        """Pillow's two-pass bicubic resize + crop, the horizontal pass split over two threads; None
        when the pool has no idle thread (one ordinary call is then cheaper than two bands).

        For the shapes `_splits` admits, Pillow resizes every source row to `new_width` first, then
        the columns. Each band is `resize((new_width, rows), box=(0, top, width, bottom))`: the horizontal
        coefficients depend only on `width` and `new_width`, so they equal the full call's, and with
        integer row bounds the band's vertical pass has scale 1 and integer centres, which makes its
        weights exactly (0, 1, 0, 0): a copy. The vertical pass then runs on the crop's columns only,
        which is exact because it treats every column alike.
        """
        assert self.resize_helper is not None
        width, height = image.size
        middle = height // 2
        bicubic = Image.Resampling.BICUBIC

        def band(top: int, bottom: int) -> Image.Image:
            return image.resize((new_width, bottom - top), bicubic, box=(0, top, width, bottom))

        try:
            other = self.resize_helper.submit_if_idle(band, middle, height)
        except RuntimeError:  # the pool is shutting down
            other = None
        if other is None:
            return None
        upper = band(0, middle)
        # Taken back if the idle thread has not started it yet (it was given other work first).
        lower = band(middle, height) if other.cancel() else other.result()
        left, top, right, bottom = box
        columns = Image.new("RGB", (right - left, height))
        columns.paste(upper.crop((left, 0, right, middle)), (0, 0))
        columns.paste(lower.crop((left, 0, right, height - middle)), (0, middle))
        if new_height != height:
            columns = columns.resize((right - left, new_height), bicubic)
        return columns.crop((0, top, right - left, bottom))

    def normalize(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 (S, S, 3) to float32 (3, S, S), C-contiguous: ToTensor + Normalize in one gather."""
        height, width, channels = pixels.shape
        if channels != 3 or pixels.dtype != np.uint8:
            raise ValueError(f"normalize expects uint8 HxWx3, got {pixels.dtype} {pixels.shape}")
        out = np.empty((3, height, width), dtype=np.float32)
        for channel in range(3):
            np.take(self._table[channel], pixels[:, :, channel], out=out[channel])
        return out

    def __call__(self, data: bytes) -> np.ndarray:
        """Image bytes to the model's input: float32 (3, S, S), C-contiguous, normalised."""
        return self.normalize(self.transform(self.decode(data)))

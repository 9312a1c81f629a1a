"""timm's eval geometry on an RGB image: shorter-side bicubic resize, then centre crop, pixel-exact.

On PIL images torchvision delegates the resize to Pillow, so a Pillow-only pipeline that reproduces
torchvision's size arithmetic (long side truncated, crop offsets rounded half-to-even) is exact.

A large image's resize can hand half of its work to another thread through `offload` (given by the
caller, typically the decode pool's `submit_if_idle`): the horizontal pass, which is most of the
work, then runs as two row bands, each a `resize(box=...)` with integer row bounds, so Pillow
computes the very same filter coefficients and the result is bit-identical to one call. (Portraits
over about 2:1, which Pillow 13 resizes vertically first, stay one call.) When `offload` declines
(no idle thread), the resize runs as one call, so under load no request waits behind another's band.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future

import numpy as np
from PIL import Image

from app.errors import PayloadTooLargeError

#: Runs `fn(*args)` on another thread now and returns its future, or declines with None.
Offload = Callable[..., "Future[Image.Image] | None"]

# Source pixels from which a resize is split over two threads. Measured alone on 2 cores: around
# 0.1 Mpixel the hand-off costs what half a horizontal pass saves; the split is 1.2x faster at 0.3
# Mpixel, 1.3x at 1 Mpixel and 1.7x at 12 Mpixel (docs/benchmarks.md).
SPLIT_RESIZE_MIN_PIXELS = 200_000

# Shorter-side multiples always allowed for the resized intermediate, whatever max_image_pixels says,
# so a tight pixel limit never refuses an ordinary photo that must be upsampled (aspect up to 16:1).
_MIN_RESIZE_BUDGET_ASPECT = 16


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


def pillow_resizes_vertically_first(width: int, height: int, new_width: int, new_height: int) -> bool:
    """Pillow 13's pass order: vertical first when the height loses more than twice the pixels the
    width does (`ImagingResampleInner`); earlier Pillows always start horizontally.

    For timm's shorter-side resize that means portraits taller than about 2:1. The split resize
    reproduces the horizontal-first order only, so it leaves those to a single call.
    """
    shrink = height - new_height
    return shrink > 0 and shrink > 2 * (width - new_width)


class ResizeCrop:
    """RGB image to uint8 (S, S, 3): timm's resize + centre crop. Stateless after `__init__`."""

    def __init__(
        self, *, resize_size: int, image_size: int, max_image_pixels: int, offload: Offload | None = None
    ) -> None:
        self.resize_size = resize_size
        self.image_size = image_size
        self.offload = offload
        # The resized intermediate obeys the pixel limit too (never below a 16:1 strip of the shorter side).
        self.resize_budget = max(max_image_pixels, _MIN_RESIZE_BUDGET_ASPECT * resize_size**2)

    def __call__(self, image: Image.Image) -> np.ndarray:
        if image.mode != "RGB":
            raise ValueError(f"transform expects an RGB image (decode it first), got mode {image.mode}")
        width, height = image.size
        new_width, new_height = self.check(width, height)
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

    def check(self, width: int, height: int) -> tuple[int, int]:
        """The resized size of a width x height image, or `PayloadTooLargeError` if that is over the
        resize budget. The decoder calls it on the header's size, before decoding a pixel; the size
        is symmetric in width and height, so EXIF rotation does not change the verdict."""
        new_width, new_height = resized_size(width, height, self.resize_size)
        if new_width * new_height > self.resize_budget:
            # Extreme aspect ratios blow up on resize (1x10000 -> 248x2480000): refuse before allocating.
            raise PayloadTooLargeError(
                f"a {width}x{height} image resizes to {new_width}x{new_height} before cropping, above "
                f"the limit of {self.resize_budget} pixels: send an image with a less extreme aspect ratio"
            )
        return new_width, new_height

    def _splits(self, width: int, height: int, new_width: int, new_height: int) -> bool:
        """Whether this resize is worth two threads: someone to offload to, a horizontal pass that
        Pillow runs first, enough pixels."""
        return (
            self.offload is not None
            and new_width != width
            and height >= 2
            and width * height >= SPLIT_RESIZE_MIN_PIXELS
            and not pillow_resizes_vertically_first(width, height, new_width, new_height)
        )

    def _split_resize_crop(
        self, image: Image.Image, new_width: int, new_height: int, box: tuple[int, int, int, int]
    ) -> Image.Image | None:
        """Pillow's two-pass bicubic resize + crop, the horizontal pass split over two threads; None
        when `offload` declines (one ordinary call is then cheaper than two bands).

        For the shapes `_splits` admits, Pillow resizes every source row to `new_width` first, then
        the columns. Each band is `resize((new_width, rows), box=(0, top, width, bottom))`: the horizontal
        coefficients depend only on `width` and `new_width`, so they equal the full call's, and with
        integer row bounds the band's vertical pass has scale 1 and integer centres, which makes its
        weights exactly (0, 1, 0, 0): a copy. The vertical pass then runs on the crop's columns only,
        which is exact because it treats every column alike.
        """
        assert self.offload is not None
        width, height = image.size
        middle = height // 2
        bicubic = Image.Resampling.BICUBIC

        def band(top: int, bottom: int) -> Image.Image:
            return image.resize((new_width, bottom - top), bicubic, box=(0, top, width, bottom))

        try:
            other = self.offload(band, middle, height)
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

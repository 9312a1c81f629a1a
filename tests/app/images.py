"""Test images: distinct, deterministic, small, encoded in memory."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def encoded_image(seed: int, *, size: tuple[int, int] = (64, 48), fmt: str = "PNG") -> bytes:
    """Coarse random colour blocks (8x6) upscaled: different seeds give clearly different images."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    image = Image.fromarray(blocks).resize(size, Image.Resampling.NEAREST)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def solid_png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (120, 30, 200)).save(buffer, format="PNG")
    return buffer.getvalue()

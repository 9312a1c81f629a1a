"""ToTensor + Normalize through the lookup table: bit-identical with torch, from the metadata."""

from __future__ import annotations

import numpy as np
import pytest

from app.imaging import (
    ImagePreprocessor,
)
from tests.support.metadata import IMAGENET_MEAN, IMAGENET_STD, make_metadata


def test_normalisation_is_bitwise_equal_to_torch_to_tensor_and_normalize(
    preprocessor: ImagePreprocessor,
) -> None:
    torch = pytest.importorskip("torch")
    pixels = np.random.default_rng(0).integers(0, 256, size=(224, 224, 3), dtype=np.uint8)
    # What torchvision's ToTensor + Normalize compute: float32 divide by 255, subtract, divide.
    tensor = torch.from_numpy(pixels).permute(2, 0, 1).to(torch.float32).div(255)
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32)[:, None, None]
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32)[:, None, None]
    expected = tensor.sub(mean).div(std).numpy()
    np.testing.assert_array_equal(preprocessor.normalize(pixels), expected)


def test_normalisation_uses_the_metadata_mean_and_std() -> None:
    metadata = make_metadata().model_copy(update={"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.25, 0.125)})
    preprocessor = ImagePreprocessor(metadata, max_image_bytes=1000, max_image_pixels=1000)
    pixels = np.full((2, 2, 3), 255, dtype=np.uint8)
    out = preprocessor.normalize(pixels)
    np.testing.assert_allclose(out[:, 0, 0], [1.0, 2.0, 4.0], rtol=0, atol=1e-6)

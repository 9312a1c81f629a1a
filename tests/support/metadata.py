"""The one `ModelMetadata` factory for tests: a valid metadata record with overridable fields."""

from __future__ import annotations

from runtime.metadata import ModelMetadata

NUM_CLASSES = 1000
#: ImageNet's normalisation, as the release weights use it (model/weights.py is the source of truth;
#: these tests do not import torch-side code).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def make_metadata(**overrides: object) -> ModelMetadata:
    """A 224-pixel, crop 0.9, 1000-class record labelled `class_<i>`, with any field overridden.

    Overriding `num_classes` without `labels` labels the classes the same way."""
    num_classes = int(overrides.get("num_classes", NUM_CLASSES))  # type: ignore[call-overload]
    fields: dict[str, object] = {
        "variant": "transxnet_fake",
        "image_size": 224,
        "crop_pct": 0.9,
        "num_classes": num_classes,
        "labels": tuple(f"class_{i}" for i in range(num_classes)),
        "weights": "random-init seed 0",
        "pretrained": False,
        "embed_dim": 32,
        "exporter": "tests/support",
        "interpolation": "bicubic",
        "mean": IMAGENET_MEAN,
        "std": IMAGENET_STD,
    }
    fields.update(overrides)
    return ModelMetadata(**fields)  # type: ignore[arg-type]

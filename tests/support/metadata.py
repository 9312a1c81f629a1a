"""The one `ModelMetadata` factory for tests: a valid metadata record with overridable fields."""

from __future__ import annotations

from runtime.metadata import ModelMetadata

NUM_CLASSES = 1000


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
        "mean": (0.485, 0.456, 0.406),
        "std": (0.229, 0.224, 0.225),
    }
    fields.update(overrides)
    return ModelMetadata(**fields)  # type: ignore[arg-type]

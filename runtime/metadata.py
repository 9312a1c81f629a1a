"""The contract between an exported ONNX file and everything that serves it.

`export/` writes a `ModelMetadata` into the file's `metadata_props`; `app/` reads it back through
ONNX Runtime alone (no onnx, no torch), so preprocessing, labels and provenance travel with the
weights and the service never guesses them. Values are strings in ONNX, so lists are JSON-encoded.
"""

from __future__ import annotations

import json
import math
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

#: Prefix of every metadata key this project writes, so foreign keys are left alone.
KEY_PREFIX = "transxnet."

#: Tensor names of the exported graph (also the Triton repository's and the v2 protocol's).
INPUT_NAME = "images"
STAGE_OUTPUTS = ("stage1", "stage2", "stage3", "stage4")
OUTPUT_NAMES = ("logits", "pooled", *STAGE_OUTPUTS)

#: Bump when the meaning of a key changes; readers refuse versions they do not know.
SCHEMA_VERSION = 1


class MetadataError(ValueError):
    """The ONNX file lacks this project's metadata or carries an unreadable version of it."""


class ModelMetadata(BaseModel):
    """What a served model must carry besides its weights."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: int = SCHEMA_VERSION
    variant: str = Field(description="Canonical variant name, e.g. 'transxnet_t'.")
    image_size: int = Field(gt=0, description="Square input side the graph was exported for.")
    crop_pct: float = Field(gt=0, le=1)
    interpolation: str = Field(description="Resize interpolation of the weights' eval transform.")
    mean: tuple[float, float, float] = Field(description="Normalisation mean per channel (RGB).")
    std: tuple[float, float, float] = Field(description="Normalisation std per channel (RGB).")
    num_classes: int = Field(gt=0)
    labels: tuple[str, ...]
    weights: str = Field(description="Provenance: 'file.pth.tar sha256:<hex>' or 'random-init seed N'.")
    pretrained: bool = Field(description="False for a seeded random initialisation.")
    precision: str = "fp32"
    embed_dim: int = Field(gt=0, description="Channels of `pooled` (the last stage's width).")
    exporter: str = ""

    @field_validator("labels")
    @classmethod
    def _labels_nonempty(cls, labels: tuple[str, ...]) -> tuple[str, ...]:
        if not labels:
            raise ValueError("labels must not be empty")
        return labels

    def model_post_init(self, context: Any, /) -> None:
        if len(self.labels) != self.num_classes:
            raise ValueError(f"{len(self.labels)} labels for {self.num_classes} classes")
        if self.schema_version != SCHEMA_VERSION:
            raise ValueError(
                f"metadata schema version {self.schema_version}; this build reads {SCHEMA_VERSION}"
            )

    @property
    def resize_size(self) -> int:
        """Shorter side before the centre crop, as timm computes it: floor(size / crop_pct)."""
        # Not `size // crop_pct`: float floor division gives 319 for 288 / 0.9 where timm gets 320.
        return math.floor(self.image_size / self.crop_pct)

    def to_props(self) -> dict[str, str]:
        """Flatten into ONNX `metadata_props` (string to string)."""
        props = {}
        for name, value in self.model_dump().items():
            text = value if isinstance(value, str) else json.dumps(value)
            props[KEY_PREFIX + name] = text
        return props

    @classmethod
    def from_props(cls, props: dict[str, str]) -> ModelMetadata:
        """Rebuild from `metadata_props`; raises `MetadataError` saying what is missing or wrong."""
        ours = {k[len(KEY_PREFIX) :]: v for k, v in props.items() if k.startswith(KEY_PREFIX)}
        if not ours:
            raise MetadataError(
                "the ONNX file carries no transxnet metadata: export it with `python -m export`"
            )
        fields = cls.model_fields
        values: dict[str, Any] = {}
        for name, text in ours.items():
            if name not in fields:
                continue  # written by a newer exporter; schema_version guards meaning changes
            annotation = fields[name].annotation
            values[name] = text if annotation in (str, "str") else json.loads(text)
        try:
            return cls(**values)
        except (ValidationError, ValueError) as exc:
            raise MetadataError(f"the ONNX file's transxnet metadata is invalid: {exc}") from exc

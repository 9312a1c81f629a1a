"""Response models: they document the API (OpenAPI, with examples). Handlers serialise the payload
themselves (plain `json.dumps`), because validating thousands of feature floats would cost more
than computing them."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from runtime.metadata import STAGE_OUTPUTS


class ErrorDetail(BaseModel):
    code: str = Field(description="Stable machine-readable code.", examples=["invalid_image"])
    message: str = Field(
        description="What went wrong and what to do.",
        examples=["the image could not be decoded: send a JPEG, PNG, WebP, BMP, GIF or TIFF"],
    )


class ErrorResponse(BaseModel):
    error: ErrorDetail


class Prediction(BaseModel):
    index: int = Field(description="Class index in the model's label list.", examples=[207])
    label: str = Field(examples=["golden retriever"])
    probability: float = Field(ge=0, le=1, examples=[0.8123])


class ClassifyResult(BaseModel):
    predictions: list[Prediction] = Field(description="Top-k classes, most probable first.")


class ClassifyResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "model": "transxnet_t",
                    "weights": "transx-t.pth.tar sha256:1f2e...",
                    "results": [
                        {
                            "predictions": [
                                {"index": 207, "label": "golden retriever", "probability": 0.8123},
                                {"index": 208, "label": "Labrador retriever", "probability": 0.0611},
                            ]
                        }
                    ],
                }
            ]
        }
    )

    model: str = Field(description="Model variant.")
    weights: str = Field(description="Weights provenance (file and sha256, or random-init seed).")
    results: list[ClassifyResult] = Field(description="One entry per image, in request order.")


class FeatureTensor(BaseModel):
    shape: list[int] = Field(description="Shape of this image's tensor (no batch axis).", examples=[[384]])
    dtype: str = Field(examples=["float32"])
    data: list[float] = Field(description="Values, flattened in C order.")


class FeaturesResult(BaseModel):
    model_config = ConfigDict(extra="forbid")

    pooled: FeatureTensor | None = Field(None, description="Globally pooled last-stage features [C].")
    stage1: FeatureTensor | None = Field(None, description="Stride-4 feature map [C1, S/4, S/4].")
    stage2: FeatureTensor | None = Field(None, description="Stride-8 feature map.")
    stage3: FeatureTensor | None = Field(None, description="Stride-16 feature map.")
    stage4: FeatureTensor | None = Field(None, description="Stride-32 feature map.")


class FeaturesResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "model": "transxnet_t",
                    "weights": "transx-t.pth.tar sha256:1f2e...",
                    "results": [{"pooled": {"shape": [4], "dtype": "float32", "data": [0.1, 0.0, 1.2, 0.3]}}],
                }
            ]
        }
    )

    model: str
    weights: str
    results: list[FeaturesResult] = Field(
        description=f"One entry per image, in request order, holding the requested outputs "
        f"(pooled, {', '.join(STAGE_OUTPUTS)})."
    )


class ReadyResponse(BaseModel):
    status: str = Field(examples=["ready"])
    model: str = Field(examples=["transxnet_t"])
    image_size: int = Field(examples=[224])
    weights: str
    providers: list[str] = Field(examples=[["CPUExecutionProvider"]])
    requested_providers: str = Field(examples=["auto"])
    fallbacks: list[str] = Field(description="Why providers were skipped under `auto`.")


class HealthResponse(BaseModel):
    status: str = Field(examples=["ok"])


class Limits(BaseModel):
    max_batch_size: int
    max_batch_delay_ms: float
    batch_wait: str = Field(examples=["incoming"])
    max_queue_size: int
    max_images_per_request: int
    max_image_bytes: int
    max_image_pixels: int
    max_inflight_bytes: int
    request_timeout_s: float


class ModelInfo(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "model": "transxnet_t",
                    "image_size": 224,
                    "resize_size": 248,
                    "crop_pct": 0.9,
                    "interpolation": "bicubic",
                    "pixel_exact": True,
                    "jpeg_reducing_gap": 0.0,
                    "mean": [0.485, 0.456, 0.406],
                    "std": [0.229, 0.224, 0.225],
                    "num_classes": 1000,
                    "embed_dim": 384,
                    "weights": "transx-t.pth.tar sha256:1f2e...",
                    "pretrained": True,
                    "precision": "fp32",
                    "input": {"name": "images", "shape": ["N", 3, 224, 224]},
                    "outputs": {"logits": ["N", 1000], "pooled": ["N", 384]},
                    "providers": ["CPUExecutionProvider"],
                    "model_instances": 1,
                    "intra_op_threads": 0,
                    "lone_batch_intra_op_threads": 0,
                    "limits": {
                        "max_batch_size": 16,
                        "max_batch_delay_ms": 5.0,
                        "batch_wait": "incoming",
                        "max_queue_size": 256,
                        "max_images_per_request": 32,
                        "max_image_bytes": 20971520,
                        "max_image_pixels": 40000000,
                        "max_inflight_bytes": 536870912,
                        "request_timeout_s": 30.0,
                    },
                }
            ]
        }
    )

    model: str
    image_size: int
    resize_size: int
    crop_pct: float
    interpolation: str
    pixel_exact: bool = Field(description="Whether every image gets exactly timm's eval transform.")
    jpeg_reducing_gap: float = Field(
        description="0, or how far above the resize target large JPEGs are decoded at reduced scale."
    )
    mean: list[float]
    std: list[float]
    num_classes: int
    embed_dim: int
    weights: str
    pretrained: bool
    precision: str
    input: dict[str, object]
    outputs: dict[str, list[int | str | None]] = Field(description="Output name -> shape (N = batch).")
    providers: list[str]
    model_instances: int = Field(description="Batches run at once (TRANSXNET_MODEL_INSTANCES).")
    intra_op_threads: int = Field(description="ONNX Runtime intra-op threads per run; 0 = its default.")
    lone_batch_intra_op_threads: int = Field(
        description="With several CPU instances: the threads of the second session that runs a batch "
        "with nothing else running, queued or decoding; 0 when there is none."
    )
    limits: Limits

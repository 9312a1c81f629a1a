"""Model outputs to response bodies, in numpy: softmax + top-k for /classify, tensors as JSON or a
compact `.npz` for /features. Everything here is cheap next to inference; the JSON is built with
`json.dumps` on plain lists (no per-float pydantic validation)."""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np

from app import jsonio
from app.batching import ImageResult
from runtime.metadata import ModelMetadata


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64 (stable: max subtracted), so probabilities sum to 1 exactly enough."""
    shifted = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def top_k(probabilities: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest values per row, largest first (ties: lower index first)."""
    if k >= probabilities.shape[-1]:
        return np.argsort(-probabilities, axis=-1, kind="stable")
    candidates = np.argpartition(-probabilities, k - 1, axis=-1)[..., :k]
    picked = np.take_along_axis(probabilities, candidates, axis=-1)
    # lexsort: primary key descending probability, secondary ascending index
    order = np.lexsort((candidates, -picked), axis=-1)
    return np.take_along_axis(candidates, order, axis=-1)


def classify_payload(results: Sequence[ImageResult], metadata: ModelMetadata, k: int) -> dict:
    logits = np.stack([result["logits"] for result in results])
    probabilities = softmax(logits)
    indices = top_k(probabilities, k)
    labels = metadata.labels
    return {
        "model": metadata.variant,
        "weights": metadata.weights,
        "results": [
            {
                "predictions": [
                    {"index": int(i), "label": labels[i], "probability": float(p)}
                    for i, p in zip(row.tolist(), probs[row].tolist(), strict=True)
                ]
            }
            for row, probs in zip(indices, probabilities, strict=True)
        ],
    }


def features_payload(results: Sequence[ImageResult], metadata: ModelMetadata, outputs: Sequence[str]) -> dict:
    return {
        "model": metadata.variant,
        "weights": metadata.weights,
        "results": [
            {
                name: {
                    "shape": list(result[name].shape),
                    "dtype": str(result[name].dtype),
                    "data": result[name].ravel().tolist(),
                }
                for name in outputs
            }
            for result in results
        ],
    }


def features_npz(results: Sequence[ImageResult], outputs: Sequence[str]) -> bytes:
    """One array per output, stacked over the request's images (first axis = image order)."""
    buffer = io.BytesIO()
    np.savez(buffer, **{name: np.stack([result[name] for result in results]) for name in outputs})
    return buffer.getvalue()


def dumps(payload: dict) -> bytes:
    """Compact JSON, encoded in slices that leave the GIL to the event loop (`app.jsonio`)."""
    return jsonio.dumps(payload)

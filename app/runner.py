"""The production `ModelRunner`: an ONNX Runtime session asked only for the outputs a batch needs.

Naming the outputs matters for speed: ORT prunes the graph to what is fetched, so a logits-only
batch skips materialising (and copying out) the large stage maps.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from runtime.metadata import INPUT_NAME, OUTPUT_NAMES
from runtime.session import LoadedSession


class OnnxRunner:
    """Runs batches on a loaded session, from the batcher's inference threads (ORT's Run is thread-safe)."""

    def __init__(self, loaded: LoadedSession) -> None:
        self.loaded = loaded
        names = {node.name for node in loaded.session.get_outputs()}
        missing = [name for name in OUTPUT_NAMES if name not in names]
        if missing:
            raise ValueError(
                f"the ONNX model lacks outputs {missing} (it has {sorted(names)}); re-export it with "
                "`python -m export`"
            )
        inputs = [node.name for node in loaded.session.get_inputs()]
        if inputs != [INPUT_NAME]:
            raise ValueError(f"the ONNX model's inputs are {inputs}; this service expects [{INPUT_NAME!r}]")

    def run(self, batch: np.ndarray, outputs: Sequence[str]) -> dict[str, np.ndarray]:
        names = list(outputs)
        values = self.loaded.session.run(names, {INPUT_NAME: batch})
        return dict(zip(names, values, strict=True))

    def output_shapes(self) -> dict[str, list[int | str | None]]:
        """Declared output shapes (batch axis symbolic) for /v1/models."""
        return {node.name: list(node.shape) for node in self.loaded.session.get_outputs()}

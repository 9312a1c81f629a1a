"""ONNX Runtime for the export's verification and the service: sessions, providers and the metadata
contract (no torch, no onnx).

ONNX Runtime 1.32 collects telemetry unless told not to: at its first session it writes a device ID
and an event database under `$HOME/.cache/Microsoft` (found by tracing the service's writes; on a
read-only root filesystem it only logs a warning, on an air-gapped host it should not try at all).
It reads `ORT_DISABLE_TELEMETRY` when it loads, so it is set here, before anything of ours imports
onnxruntime; an operator who sets it explicitly keeps their value.
"""

import os

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

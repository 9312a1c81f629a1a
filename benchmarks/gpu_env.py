"""First thing the GPU measurement records: versions, the machine, and whether ONNX Runtime's CUDA
provider really initialises (a one-node graph, so a broken install is told apart from a model problem).

    python -m benchmarks.gpu_env --results R.json [--smoke]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.gpu_common import ResultsFile, environment, log  # noqa: E402


def cuda_provider_probe() -> dict[str, object]:
    """A Relu graph on the CUDA provider: which providers the session kept, and its output."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    preload = "not called"
    try:
        ort.preload_dlls()  # CUDA/cuDNN from the nvidia wheels torch brought (LD_LIBRARY_PATH too)
        preload = "ok"
    except Exception as exc:
        preload = f"{type(exc).__name__}: {exc}"
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
    )
    # IR 10, as the export writes: onnx's helper defaults to the newest IR, which ORT may not read yet.
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)], ir_version=10)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "probe.onnx"
        onnx.save(model, str(path))
        session = ort.InferenceSession(str(path), providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
        x = np.array([[-1.0, 0.0, 2.0], [3.0, -4.0, 5.0]], np.float32)
        y = session.run(None, {"x": x})[0]
    return {
        "preload_dlls": preload,
        "session_providers": session.get_providers(),
        "cuda_initialised": session.get_providers()[0] == "CUDAExecutionProvider",
        "output_correct": bool(np.array_equal(y, np.maximum(x, 0))),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, required=True)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args(argv)
    results = ResultsFile(args.results)
    results.put(["mode"], "smoke" if args.smoke else "gpu")
    env = environment()
    results.put(["environment"], env)
    log(f"environment: {env}")
    if args.smoke:
        return 0
    try:
        probe = cuda_provider_probe()
    except Exception as exc:
        probe = {"error": f"{type(exc).__name__}: {exc}"[:2000], "cuda_initialised": False}
    results.put(["cuda_provider_probe"], probe)
    log(f"CUDA provider probe: {probe}")
    return 0 if probe.get("cuda_initialised") else 3


if __name__ == "__main__":
    sys.exit(main())

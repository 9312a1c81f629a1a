"""LitServe serving the same ONNX file with the same preprocessing: the peer a user would pick instead.

`python -m benchmarks.litserve_peer --model models/transxnet_t.onnx --port 8100`

Configured to be fair, not to lose: one API server and one inference worker on the CPU
(`workers_per_device=1`, as the service has one model session), LitServe's own dynamic batching on
with the service's batch limit and delay (`max_batch_size=16`, `batch_timeout=0.005` s), the same ONNX
Runtime session options (`runtime.session.create_session`, providers cpu, same intra-op threads), the
same `app.imaging.ImagePreprocessor` (pixel-exact timm transform) and the same top-5 softmax
payload. Uploads come as multipart `file` parts, which LitServe hands to `decode_request` as form
data. LitServe decodes inside its inference worker, so decoding does not overlap inference there;
that is its architecture, not a handicap we added.
"""

# No `from __future__ import annotations`: LitServe compares decode_request's annotation with
# fastapi.Request at run time, and a string annotation would turn the upload into a query parameter.
import argparse
import os

import litserve as ls
import numpy as np
from fastapi import Request


class TransXNetAPI(ls.LitAPI):
    """decode_request -> batch -> ONNX Runtime -> unbatch -> top-5 JSON, as /classify answers."""

    def __init__(self, model_path: str, intra_op_threads: int, max_batch_size: int, batch_timeout: float):
        super().__init__(max_batch_size=max_batch_size, batch_timeout=batch_timeout, api_path="/classify")
        self.model_path = model_path
        self.intra_op_threads = intra_op_threads

    def setup(self, device: str) -> None:
        from app.imaging import ImagePreprocessor
        from runtime.session import create_session, read_metadata

        loaded = create_session(self.model_path, providers="cpu", intra_op_threads=self.intra_op_threads)
        self.session = loaded.session
        self.metadata = read_metadata(self.session)
        self.preprocess = ImagePreprocessor(
            self.metadata, max_image_bytes=20 * 2**20, max_image_pixels=40_000_000
        )
        size = self.metadata.image_size
        self.session.run(["logits"], {"images": np.zeros((1, 3, size, size), np.float32)})

    def decode_request(self, request: Request) -> np.ndarray:
        upload = request["file"]  # LitServe passed `await request.form()` for a multipart body
        data = upload.file.read() if hasattr(upload, "file") else bytes(upload)
        return self.preprocess(data)

    def batch(self, inputs: list[np.ndarray]) -> np.ndarray:
        return np.stack(inputs)

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(["logits"], {"images": x})[0]

    def unbatch(self, output: np.ndarray) -> list[np.ndarray]:
        return list(output)

    def encode_response(self, output: np.ndarray) -> dict:
        from app.postprocess import classify_payload

        return classify_payload([{"logits": output}], self.metadata, 5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--port", type=int, default=8100)
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--batch-timeout", type=float, default=0.005, help="seconds")
    parser.add_argument("--intra-op-threads", type=int, default=0)
    args = parser.parse_args()
    os.environ.setdefault("LITSERVE_DISABLE_TELEMETRY", "1")
    api = TransXNetAPI(args.model, args.intra_op_threads, args.max_batch_size, args.batch_timeout)
    server = ls.LitServer(api, accelerator="cpu", devices=1, workers_per_device=1, timeout=120)
    server.run(
        host="127.0.0.1", port=args.port, num_api_servers=1, log_level="warning", generate_client_file=False
    )


if __name__ == "__main__":
    main()

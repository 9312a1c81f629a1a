"""The Open Inference Protocol over gRPC (`inference.GRPCInferenceService`, Triton's package and
names) and the standard health service, served by grpcio's asyncio server in the service's process.

Import `app.v2.grpc.server` only where the gRPC server runs: the generated modules register the
`inference.*` messages in protobuf's default pool, as `tritonclient.grpc` does, and one process
cannot hold both (protobuf refuses duplicate symbols). The service process never imports
tritonclient; the tests that drive it with tritonclient.grpc run the server in a subprocess.
"""

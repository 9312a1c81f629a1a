"""What tests and benchmarks share: launching the service as a process, a tiny ONNX stand-in for the
model, one `ModelMetadata` factory, test images and the reference numerics."""

"""The Open Inference Protocol (KServe v2, as Triton speaks it): the wire format, the model semantics
shared by its transports, the HTTP routes and the gRPC transport."""

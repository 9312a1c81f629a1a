"""The gRPC protocol's .proto files and the modules grpcio-tools generates from them (committed; run
`python scripts/protos.py` after editing a .proto)."""

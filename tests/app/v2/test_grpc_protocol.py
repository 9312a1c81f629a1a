"""The gRPC protocol's definitions, without a server: our .proto files say what Triton's say (every
message, field number, type, enum value and method we declare is Triton's, as tritonclient.grpc and
grpcio-health-checking compiled them), the committed modules are what grpcio-tools makes of them, and
every error code of the taxonomy has its gRPC status.

This module never imports our generated modules: they and tritonclient.grpc claim the same protobuf
names, and one process can hold only one of the two (app/v2/grpc/__init__.py). Our definitions are
read from a descriptor set that protoc writes to a file.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor_pb2

from app import errors
from app.v2.grpc.status import STATUS, retry_metadata, status_of
from tests.support.processes import ROOT

service_pb2 = pytest.importorskip("tritonclient.grpc.service_pb2")
health_pb2 = pytest.importorskip("grpc_health.v1.health_pb2")
pytest.importorskip("grpc_tools")

PROTO_DIR = ROOT / "app" / "v2" / "grpc" / "proto"


@pytest.fixture(scope="module")
def ours(tmp_path_factory: pytest.TempPathFactory) -> descriptor_pb2.FileDescriptorSet:
    out = tmp_path_factory.mktemp("descriptors") / "set.pb"
    protos = sorted(str(path.relative_to(ROOT)) for path in PROTO_DIR.glob("*.proto"))
    done = subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{ROOT}", f"--descriptor_set_out={out}", *protos],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())


def _messages(
    prefix: str, messages: list[descriptor_pb2.DescriptorProto]
) -> Iterator[tuple[str, descriptor_pb2.DescriptorProto]]:
    for message in messages:
        name = f"{prefix}.{message.name}"
        yield name, message
        yield from _messages(name, list(message.nested_type))


def _enums(prefix: str, file_or_message) -> Iterator[tuple[str, descriptor_pb2.EnumDescriptorProto]]:
    for enum in file_or_message.enum_type:
        yield f"{prefix}.{enum.name}", enum
    for message in getattr(file_or_message, "nested_type", getattr(file_or_message, "message_type", [])):
        yield from _enums(f"{prefix}.{message.name}", message)


def _published(full_name: str) -> descriptor_pb2.DescriptorProto:
    """The message as Triton's (or the health protocol's) compiled modules declare it."""
    for pool in (service_pb2.DESCRIPTOR.pool, health_pb2.DESCRIPTOR.pool):
        try:
            found = pool.FindMessageTypeByName(full_name)
        except KeyError:
            continue
        proto = descriptor_pb2.DescriptorProto()
        found.CopyToProto(proto)
        return proto
    raise AssertionError(f"{full_name} is not a message of Triton's protocol nor of grpc.health.v1")


def _field_facts(message: descriptor_pb2.DescriptorProto) -> dict[int, tuple]:
    oneofs = [oneof.name for oneof in message.oneof_decl]
    return {
        field.number: (
            field.name,
            field.label,
            field.type,
            field.type_name.lstrip("."),
            oneofs[field.oneof_index] if field.HasField("oneof_index") else None,
        )
        for field in message.field
    }


def test_every_message_and_field_we_declare_is_tritons(ours) -> None:
    checked = 0
    for file in ours.file:
        for name, message in _messages(file.package, list(file.message_type)):
            published = _field_facts(_published(name))
            for number, facts in _field_facts(message).items():
                assert published.get(number) == facts, f"{name} field {number}: {published.get(number)}"
                checked += 1
    assert checked > 100  # every message of the protocol, its nested tensors and parameter maps


def test_every_enum_value_we_declare_is_tritons(ours) -> None:
    pools = (service_pb2.DESCRIPTOR.pool, health_pb2.DESCRIPTOR.pool)
    for file in ours.file:
        for name, enum in _enums(file.package, file):
            published = None
            for pool in pools:
                try:
                    published = pool.FindEnumTypeByName(name)
                except KeyError:
                    continue
            assert published is not None, name
            assert {v.name: v.number for v in enum.value}.items() <= {
                v.name: v.number for v in published.values
            }.items(), name


def test_every_method_we_serve_is_tritons_or_the_health_protocols(ours) -> None:
    served = {}
    for file in ours.file:
        for service in file.service:
            for method in service.method:
                served[f"{file.package}.{service.name}/{method.name}"] = method
    assert set(served) == {
        *(
            f"inference.GRPCInferenceService/{name}"
            for name in (
                "ServerLive",
                "ServerReady",
                "ModelReady",
                "ServerMetadata",
                "ModelMetadata",
                "ModelInfer",
                "ModelConfig",
                "ModelStatistics",
            )
        ),
        "grpc.health.v1.Health/Check",
        "grpc.health.v1.Health/Watch",
    }
    for path, method in served.items():
        service_name, method_name = path.split("/")
        module = health_pb2 if service_name.startswith("grpc.health") else service_pb2
        published = module.DESCRIPTOR.services_by_name[service_name.rsplit(".", 1)[1]].methods_by_name[
            method_name
        ]
        assert method.input_type.lstrip(".") == published.input_type.full_name, path
        assert method.output_type.lstrip(".") == published.output_type.full_name, path
        assert (method.client_streaming, method.server_streaming) == (
            published.client_streaming,
            published.server_streaming,
        ), path


def test_committed_modules_are_what_grpcio_tools_generates(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "scripts/protos.py", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    generated = {path.name: path.read_bytes() for path in (tmp_path / "app/v2/grpc/proto").glob("*.py")}
    committed = {path.name: path.read_bytes() for path in PROTO_DIR.glob("*_pb2*.py")}
    assert sorted(generated) == sorted(committed)
    stale = [name for name in generated if generated[name] != committed[name]]
    assert not stale, f"{stale} differ from the .proto files: run `python scripts/protos.py` and commit"


def _service_errors(cls: type[errors.ServiceError]) -> Iterator[type[errors.ServiceError]]:
    yield cls
    for sub in cls.__subclasses__():
        yield from _service_errors(sub)


def test_every_error_code_has_a_grpc_status() -> None:
    codes = {cls.code for cls in _service_errors(errors.ServiceError)}
    assert len(codes) >= 17
    missing = codes - set(STATUS)
    assert not missing, f"app/v2/grpc/status.py has no status for {sorted(missing)}"
    assert set(STATUS) - codes <= set(), f"codes no error class raises: {sorted(set(STATUS) - codes)}"


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (errors.ProtocolError("bad shape"), grpc.StatusCode.INVALID_ARGUMENT),
        (errors.ImageDecodeError("not an image"), grpc.StatusCode.INVALID_ARGUMENT),
        (errors.InvalidParameterError("k < 0"), grpc.StatusCode.INVALID_ARGUMENT),
        (errors.PayloadTooLargeError("too big"), grpc.StatusCode.RESOURCE_EXHAUSTED),
        (errors.TooManyImagesError("too many"), grpc.StatusCode.RESOURCE_EXHAUSTED),
        (errors.ModelNotFoundError("nope"), grpc.StatusCode.NOT_FOUND),
        (errors.UnsupportedFeatureError("shm"), grpc.StatusCode.UNIMPLEMENTED),
        (errors.QueueFullError("full"), grpc.StatusCode.UNAVAILABLE),
        (errors.OverloadedError("budget"), grpc.StatusCode.UNAVAILABLE),
        (errors.NotReadyError("draining"), grpc.StatusCode.UNAVAILABLE),
        (errors.RequestTimeoutError("late"), grpc.StatusCode.DEADLINE_EXCEEDED),
        (errors.ClientDisconnectedError("gone"), grpc.StatusCode.CANCELLED),
        (errors.InferenceError("ort"), grpc.StatusCode.INTERNAL),
    ],
)
def test_statuses_follow_the_protocols_meaning(error: errors.ServiceError, expected: grpc.StatusCode) -> None:
    assert status_of(error) == expected


def test_a_retry_invitation_travels_as_retry_after_seconds() -> None:
    assert retry_metadata(errors.OverloadedError("budget", retry_after_s=0.2)) == (("retry-after", "1"),)
    assert retry_metadata(errors.QueueFullError("full", retry_after_s=2.5)) == (("retry-after", "3"),)
    assert retry_metadata(errors.ProtocolError("bad")) == ()

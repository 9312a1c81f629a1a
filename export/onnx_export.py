"""Trace TransXNet to one self-contained ONNX file with a dynamic batch and the service's metadata.

The graph has one input, `images` float32 [N, 3, S, S] (normalised, N dynamic), and six outputs:
`logits`, `pooled` and `stage1`..`stage4`, so one file serves classification and features. The
metadata (`runtime.metadata.ModelMetadata`) carries the preprocessing, labels and weights'
provenance, so the service never guesses them.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import onnx
import torch
from torch import nn

from export.download import ResolvedCheckpoint
from model import create_model, resolve_variant
from model.transxnet import TransXNet
from model.weights import eval_cfg
from runtime.metadata import INPUT_NAME, OUTPUT_NAMES, ModelMetadata

log = logging.getLogger(__name__)

DEFAULT_OPSET = 20  # the first opset with a native Gelu, which ORT runs fused
DEFAULT_SEED = 0
TRACE_BATCH = 2  # a batch of 1 would let the tracer specialise the batch dimension to 1


class ExportError(RuntimeError):
    """The model could not be traced or the traced graph is not a valid ONNX model."""


@dataclass
class StepTimer:
    """Console progress for each export step, with its duration (logged at INFO)."""

    timings: dict[str, float] = field(default_factory=dict)

    @contextlib.contextmanager
    def step(self, name: str, what: str) -> Iterator[None]:
        log.info("[%s] %s ...", name, what)
        start = time.perf_counter()
        yield
        self.timings[name] = time.perf_counter() - start
        log.info("[%s] done in %.1f s", name, self.timings[name])


class _ExportHead(nn.Module):
    """Traces `forward_outputs`: every output the service needs, from one forward pass."""

    def __init__(self, net: TransXNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        # named like OUTPUT_NAMES, in that order (tests/export checks the two agree)
        return tuple(self.net.forward_outputs(images))


def prepare_for_export(model: TransXNet) -> TransXNet:
    """An eval-mode copy of `model` in its exact export form (`TransXNet.reparameterize`): IDConv
    batch-independent (ONNX `Conv.group` is static), the affine layers ONNX Runtime cannot fuse
    folded. The copy computes the same function as `model`, at any input size; `model` is untouched.
    """
    return copy.deepcopy(model).reparameterize()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def build_model(
    variant: str,
    *,
    checkpoint: ResolvedCheckpoint | None,
    image_size: int = 224,
    num_classes: int = 1000,
    seed: int = DEFAULT_SEED,
) -> tuple[TransXNet, str]:
    """Create the model and say where its weights come from ('file sha256:...' or 'random-init seed N').

    'file' is `checkpoint.name` (for a download the URL's file name, not the cache file's), the hash
    is of the bytes actually loaded. Without a checkpoint the weights are a seeded random
    initialisation: deterministic, loudly logged, and recorded in the file so a random model can
    never pass for a trained one.
    """
    if checkpoint is None:
        torch.manual_seed(seed)
        net = create_model(variant, image_size=image_size, num_classes=num_classes)
        log.warning(
            "NO CHECKPOINT: %s has a seeded random initialisation (seed %d); its predictions are "
            "meaningless. Pass --checkpoint pretrained (or a file/URL) for real weights.",
            net.variant,
            seed,
        )
        return net, f"random-init seed {seed}"
    net = create_model(variant, checkpoint=checkpoint.path, image_size=image_size, num_classes=num_classes)
    return net, f"{checkpoint.name} sha256:{file_sha256(checkpoint.path)}"


def build_metadata(
    net: TransXNet, *, weights: str, labels: tuple[str, ...], precision: str = "fp32", opset: int
) -> ModelMetadata:
    """The file's metadata; preprocessing comes from the release table (`model.weights.eval_cfg`),
    so the service prepares images exactly as the weights were evaluated."""
    try:
        ours = version("transxnet-serve")
    except PackageNotFoundError:
        ours = "unknown"
    transform = eval_cfg(net.variant, net.image_size)  # the release's evaluation transform
    return ModelMetadata(
        variant=net.variant,
        image_size=net.image_size,
        crop_pct=transform.crop_pct,
        interpolation=transform.interpolation,
        mean=transform.mean,
        std=transform.std,
        num_classes=net.num_classes,
        labels=labels,
        weights=weights,
        pretrained=not weights.startswith("random-init"),
        precision=precision,
        embed_dim=net.num_features,
        exporter=f"transxnet-serve {ours}; torch {torch.__version__}; onnx opset {opset}",
    )


def trace_to_onnx(net: TransXNet, *, opset: int = DEFAULT_OPSET) -> onnx.ModelProto:
    """Trace `net` (after the exact export rewrites) with a dynamic batch axis named 'batch'."""
    wrapper = _ExportHead(prepare_for_export(net)).eval()
    example = torch.randn(TRACE_BATCH, 3, net.image_size, net.image_size)
    batch = torch.export.Dim("batch", min=1, max=4096)
    try:
        with torch.inference_mode(False), torch.no_grad():
            program = torch.onnx.export(
                wrapper,
                (example,),
                dynamo=True,
                input_names=[INPUT_NAME],
                output_names=list(OUTPUT_NAMES),
                dynamic_shapes={"images": {0: batch}},
                opset_version=opset,
                external_data=False,
                optimize=True,
                verbose=False,
            )
    except Exception as exc:  # the exporter raises many types; all mean the same to the user
        raise ExportError(f"tracing {net.variant} to ONNX failed: {type(exc).__name__}: {exc}") from exc
    if program is None:
        raise ExportError("torch.onnx.export returned no program")
    model = program.model_proto
    fold_constant_casts(model)
    return model


def fold_constant_casts(model: onnx.ModelProto) -> int:
    """Replace each Cast of an initializer by the cast initializer; returns how many were folded.

    The exporter leaves the IDConv's constant one-hot Toeplitz expanders as Cast(bool initializer);
    folding them saves the casts at run time, and onnxconverter-common's float16 pass would otherwise
    relabel their outputs float16 while leaving `to=FLOAT` (ORT then refuses the file).
    """
    inits = {init.name: init for init in model.graph.initializer}
    consumers: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers[name] = consumers.get(name, 0) + 1
    graph_outputs = {o.name for o in model.graph.output}
    folded = []
    for node in model.graph.node:
        if node.op_type != "Cast" or node.input[0] not in inits or node.output[0] in graph_outputs:
            continue
        to = next(a.i for a in node.attribute if a.name == "to")
        value = onnx.numpy_helper.to_array(inits[node.input[0]])
        cast = value.astype(onnx.helper.tensor_dtype_to_np_dtype(to))
        model.graph.initializer.append(onnx.numpy_helper.from_array(cast, node.output[0]))
        consumers[node.input[0]] -= 1
        folded.append(node)
    for node in folded:
        model.graph.node.remove(node)
    unused = [i for i in model.graph.initializer if consumers.get(i.name, 0) == 0 and i.name in inits]
    for init in unused:
        model.graph.initializer.remove(init)
    return len(folded)


def _detach_graph_outputs(model: onnx.ModelProto) -> None:
    """Give every graph output that other nodes also consume its own Identity node.

    The stage maps are both outputs and inputs of the next stage; onnxconverter-common's
    `keep_io_types` casts outputs back to float32 and would otherwise wire that cast into the
    float16 graph (ORT then refuses the file: Conv bound to float and float16).
    """
    consumed = {name for node in model.graph.node for name in node.input}
    for output in model.graph.output:
        if output.name not in consumed:
            continue
        internal = f"{output.name}__internal"
        for node in model.graph.node:
            node.output[:] = [internal if o == output.name else o for o in node.output]
            node.input[:] = [internal if i == output.name else i for i in node.input]
        model.graph.node.append(onnx.helper.make_node("Identity", [internal], [output.name]))


def convert_to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """Cast weights and activations to float16 for GPU providers; inputs and outputs stay float32 so
    the service and clients are unchanged. GroupNorm's statistics stay float32: the stage maps reach
    magnitudes whose squares overflow float16."""
    from onnxconverter_common import float16

    _detach_graph_outputs(model)
    return float16.convert_float_to_float16(
        model, keep_io_types=True, op_block_list=["InstanceNormalization", "ReduceMean", "Pow", "Sqrt"]
    )


def attach_metadata(model: onnx.ModelProto, metadata: ModelMetadata) -> None:
    """Replace this project's metadata_props (foreign keys are kept)."""
    props = metadata.to_props()
    kept = [p for p in model.metadata_props if p.key not in props]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    for key, value in props.items():
        model.metadata_props.add(key=key, value=value)
    model.producer_name = "transxnet-serve"
    model.doc_string = f"TransXNet {metadata.variant} {metadata.image_size}px; weights: {metadata.weights}"


def check_onnx(path: Path) -> None:
    """onnx.checker's full check (shape inference included), by path so large models work too."""
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"{path} fails onnx.checker: {exc}") from exc


def save_onnx(model: onnx.ModelProto, path: Path) -> None:
    """Write one self-contained file (no external .data), atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        onnx.save_model(model, tmp, save_as_external_data=False)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def default_output_path(variant: str, image_size: int, *, fp16: bool = False) -> Path:
    name = resolve_variant(variant)
    suffix = ("" if image_size == 224 else f"_{image_size}") + ("_fp16" if fp16 else "")
    return Path("models") / f"{name}{suffix}.onnx"

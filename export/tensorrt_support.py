"""Static check that an ONNX graph is inside TensorRT 10's ONNX parser support matrix.

Why static: TensorRT 10 (over 1 GB of libraries) cannot be brought to the GPU machine this project
is lent, so whether the TensorRT execution provider can take the exported graph whole is checked
here, from the parser's published support matrix, before any GPU time is spent.

Source of the rules: onnx/onnx-tensorrt, `docs/operators.md` at commit
fa5aa9f61e7781d2ca8f5351d42c1f19525a6124 ("TensorRT 10.15 supports operators in the inclusive
range of opset 9 to opset 24"), the newest 10.x version of that table available to this project
(the GPU image pins `tensorrt-cu13-libs==10.16.1.11`, a later 10.x release). Every operator the
table marks supported is listed below with its supported types; every restriction the table states
for an operator that this project's graphs could plausibly contain is checked (axes that must be
constants, Resize modes, pooling rank and dilations, single-output forms, ...). One rule is stricter
than the 10.15 table: InstanceNormalization's scale and bias must be build-time constants, as the
8.x parser required (the table no longer says so). "Build-time constant" means an initializer, a
Constant node, or a Cast/Identity of one (the fp16 export feeds InstanceNormalization, which stays
float32, through Casts of float16 initializers; the parser folds those, as ORT does).

What the table cannot tell, and this check therefore does not claim: numerical agreement of the
engine, engine build success for a given optimisation profile, or speed. Those need TensorRT.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

SOURCE = "onnx/onnx-tensorrt docs/operators.md @ fa5aa9f61e7781d2ca8f5351d42c1f19525a6124 (TensorRT 10.15)"
TENSORRT_VERSION = "10.15"
OPSET_MIN, OPSET_MAX = 9, 24

# ---------------------------------------------------------------------------------------------- types
# ONNX element types by the names the table uses.
TYPE_NAMES: dict[int, str] = {
    TensorProto.FLOAT: "FP32",
    TensorProto.FLOAT16: "FP16",
    TensorProto.BFLOAT16: "BF16",
    TensorProto.INT32: "INT32",
    TensorProto.INT64: "INT64",
    TensorProto.BOOL: "BOOL",
    TensorProto.UINT8: "UINT8",
    TensorProto.INT8: "INT8",
    TensorProto.INT4: "INT4",
    TensorProto.FLOAT8E4M3FN: "FP8",
    TensorProto.FLOAT4E2M1: "FP4",
    TensorProto.DOUBLE: "DOUBLE",
}

_F = ("FP32", "FP16", "BF16")
_I = ("INT32", "INT64")
_B = ("BOOL",)
_FH = ("FP32", "FP16")
_FIB = _F + _I + _B
_FI = _F + _I
_QUANT_CONST = ("FP8", "FP4", "INT4")


def _names(text: str) -> list[str]:
    return text.split()


#: Operators the 10.15 table marks supported (default ONNX domain), with the types it lists.
SUPPORTED_TYPES: dict[str, tuple[str, ...]] = {
    **dict.fromkeys(
        _names(
            "Acos Acosh Asin Asinh Atan Atanh AveragePool BatchNormalization Ceil Celu Clip Conv "
            "ConvTranspose Cos Cosh CumSum Dropout Einsum Elu Erf Exp Floor Gemm GlobalAveragePool "
            "GlobalLpPool GlobalMaxPool GroupNormalization GRU HardSigmoid HardSwish Hardmax ImageScaler "
            "InstanceNormalization IsInf LayerNormalization LeakyRelu Log LogSoftmax LRN LSTM "
            "LpNormalization LpPool MatMul MaxPool MeanVarianceNormalization ParametricSoftplus PRelu "
            "QuantizeLinear RandomNormal RandomNormalLike RandomUniform RandomUniformLike Reciprocal "
            "Resize RMSNormalization RNN RotaryEmbedding Round ScaledTanh Scan Selu Sigmoid Sin Sinh "
            "Softmax Softplus Softsign Sqrt Tan Tanh ThresholdedRelu Upsample"
        ),
        _F,
    ),
    **dict.fromkeys(
        _names(
            "Abs Add ArgMax ArgMin DepthToSpace Div Equal Greater GreaterOrEqual IsNaN Less LessOrEqual "
            "Max Min Mod Mul Neg Pad Pow Range ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax "
            "ReduceMean ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Scatter ScatterElements "
            "ScatterND Shrink Sign SpaceToDepth Sub Sum TopK"
        ),
        _FI,
    ),
    **dict.fromkeys(
        _names(
            "Concat Expand EyeLike Flatten Gather GatherElements GatherND Identity If Loop OneHot Reshape "
            "ReverseSequence Shape Size Slice Split Squeeze Tile Transpose Trilu Unsqueeze Where"
        ),
        _FIB,
    ),
    **dict.fromkeys(_names("And Not Or Xor"), _B),
    **dict.fromkeys(
        _names(
            "BlackmanWindow DeformConv GridSample HammingWindow HannWindow Mish NonMaxSuppression "
            "NonZero RoiAlign"
        ),
        _FH,
    ),
    "Attention": (*_F, "INT8", "FP8"),
    "Cast": (*_FI, "UINT8", "BOOL"),
    "CastLike": (*_FI, "UINT8", "BOOL"),
    "Constant": (*_F, *_QUANT_CONST, *_I, "BOOL"),
    "ConstantOfShape": (*_F, *_QUANT_CONST, *_I, "BOOL"),
    "DequantizeLinear": ("INT8", "FP8", "FP4", "INT4"),
    "Gelu": (*_F, "INT8", *_I),
    "Mean": (*_F, "FP8", *_I),
    "STFT": ("FP32",),
    "TensorScatter": (*_F, "INT32"),
}

#: Operators the 10.15 table lists as unsupported (an ONNX op in neither set is unknown to it).
UNSUPPORTED: frozenset[str] = frozenset(
    _names(
        "AffineGrid Bernoulli BitShift BitwiseAnd BitwiseNot BitwiseOr BitwiseXor Col2Im CenterCropPad "
        "Compress ConcatFromSequence ConvInteger DFT Det DynamicQuantizeLinear ImageDecoder MatMulInteger "
        "MaxRoiPool MaxUnpool MelWeightMatrix Multinomial NegativeLogLikelihoodLoss Optional "
        "OptionalGetElement OptionalHasElement QLinearConv QLinearMatMul RegexFullMatch SequenceAt "
        "SequenceConstruct SequenceEmpty SequenceErase SequenceInsert SequenceLength SequenceMap "
        "SoftmaxCrossEntropyLoss SplitToSequence StringConcat StringNormalizer StringSplit "
        "TfIdfVectorizer Unique"
    )
)

_REDUCE_OPS = frozenset(op for op in SUPPORTED_TYPES if op.startswith("Reduce"))
_RESIZE_COORDINATE_MODES = frozenset(
    {"half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric", "align_corners"}
)
_RESIZE_NEAREST_MODES = frozenset({"floor", "ceil", "round_prefer_floor", "round_prefer_ceil"})
_TOPK_MAX_K = 3840
_SUBGRAPH_ATTRIBUTES = (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)


# ------------------------------------------------------------------------------------------ the report
@dataclass(frozen=True)
class Issue:
    """One reason TensorRT's parser would reject (part of) the graph."""

    node: str
    op_type: str
    reason: str

    def __str__(self) -> str:
        return f"{self.op_type} {self.node!r}: {self.reason}"


@dataclass
class SupportReport:
    """The verdict for one graph, with what was looked at so a reader can judge the coverage."""

    opset: int
    op_counts: Counter[str] = field(default_factory=Counter)
    types_seen: Counter[str] = field(default_factory=Counter)
    dynamic_inputs: dict[str, list[str]] = field(default_factory=dict)
    issues: list[Issue] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.issues

    def text(self) -> str:
        verdict = "supported" if self.ok else f"NOT supported ({len(self.issues)} issues)"
        lines = [
            f"TensorRT {TENSORRT_VERSION} ONNX parser: {verdict} (rules: {SOURCE})",
            f"opset {self.opset}; {sum(self.op_counts.values())} nodes of {len(self.op_counts)} types: "
            + ", ".join(f"{op} {n}" for op, n in self.op_counts.most_common()),
            "tensor types: " + ", ".join(f"{t} {n}" for t, n in self.types_seen.most_common()),
            "dynamic inputs (need an optimisation profile): "
            + (", ".join(f"{k} {v}" for k, v in self.dynamic_inputs.items()) or "none"),
        ]
        lines += [f"note: {n}" for n in self.notes]
        lines += [f"ISSUE: {i}" for i in self.issues]
        return "\n".join(lines)


# ----------------------------------------------------------------------------------- graph helpers
@dataclass
class _Graph:
    """What the per-node rules need: element types, constant values and static shapes by name."""

    types: dict[str, int]
    shapes: dict[str, list[int | None]]
    constants: dict[str, np.ndarray]
    initializers: frozenset[str]

    def is_constant(self, name: str) -> bool:
        return name in self.constants

    def type_name(self, name: str) -> str | None:
        elem = self.types.get(name)
        return None if elem is None else TYPE_NAMES.get(elem, TensorProto.DataType.Name(elem))


def _shape_of(value: onnx.ValueInfoProto) -> list[int | None]:
    return [d.dim_value if d.HasField("dim_value") else None for d in value.type.tensor_type.shape.dim]


def _index_graph(model: onnx.ModelProto) -> _Graph:
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    graph = inferred.graph
    types: dict[str, int] = {}
    shapes: dict[str, list[int | None]] = {}
    for value in [*graph.input, *graph.value_info, *graph.output]:
        if value.type.HasField("tensor_type"):
            types[value.name] = value.type.tensor_type.elem_type
            shapes[value.name] = _shape_of(value)
    constants: dict[str, np.ndarray] = {}
    for init in graph.initializer:
        types[init.name] = init.data_type
        shapes[init.name] = list(init.dims)
        constants[init.name] = numpy_helper.to_array(init)
    for node in graph.node:  # topological order: a fold sees its input's fold
        if node.domain not in ("", "ai.onnx"):
            continue
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    constants[node.output[0]] = numpy_helper.to_array(attr.t)
                    types[node.output[0]] = attr.t.data_type
        elif node.op_type in ("Cast", "Identity") and node.input[0] in constants:
            # What the parser and ORT fold before building: Cast(weights) is weights.
            value = constants[node.input[0]]
            if node.op_type == "Cast":
                to = int(_attr(node, "to"))
                value = value.astype(onnx.helper.tensor_dtype_to_np_dtype(to))
                types[node.output[0]] = to
            constants[node.output[0]] = value
    return _Graph(types, shapes, constants, frozenset(i.name for i in graph.initializer))


def _attr(node: onnx.NodeProto, name: str, default: object = None) -> object:
    for attr in node.attribute:
        if attr.name == name:
            value = onnx.helper.get_attribute_value(attr)
            return value.decode() if isinstance(value, bytes) else value
    return default


def _input(node: onnx.NodeProto, index: int) -> str | None:
    """The node's input at `index`, None where it is absent or left empty (an omitted optional)."""
    return node.input[index] if len(node.input) > index and node.input[index] else None


# ---------------------------------------------------------------------------- per-operator restrictions
Rule = Callable[[onnx.NodeProto, _Graph], Iterable[str]]


def _axes_constant(position: int, attribute: str = "axes") -> Rule:
    """`axes` (an input since opsets 13/18, an attribute before) must be known when the engine is built."""

    def rule(node: onnx.NodeProto, graph: _Graph) -> Iterable[str]:
        name = _input(node, position)
        if name is not None and not graph.is_constant(name):
            yield f"input {position} ({attribute}) {name!r} must be a build-time constant"

    return rule


def _pooling(node: onnx.NodeProto, graph: _Graph) -> Iterable[str]:
    kernel = _attr(node, "kernel_shape", [])
    if len(kernel) not in (2, 3):
        yield f"only 2D or 3D pooling is supported, kernel_shape {kernel}"
    dilations = _attr(node, "dilations", [])
    if dilations and any(d != 1 for d in dilations):
        yield f"dilations must be empty or all ones, got {dilations}"
    if node.op_type == "MaxPool" and len([o for o in node.output if o]) > 1:
        yield "the Indices output is unsupported"


def _resize(node: onnx.NodeProto, graph: _Graph) -> Iterable[str]:
    mode = _attr(node, "mode", "nearest")
    if mode not in ("nearest", "linear"):
        yield f"mode {mode!r} is unsupported (nearest or linear only)"
    coordinate = _attr(node, "coordinate_transformation_mode", "half_pixel")
    if coordinate not in _RESIZE_COORDINATE_MODES:
        yield f"coordinate_transformation_mode {coordinate!r} is unsupported"
    if mode == "nearest" and _attr(node, "nearest_mode", "round_prefer_floor") not in _RESIZE_NEAREST_MODES:
        yield f"nearest_mode {_attr(node, 'nearest_mode')!r} is unsupported"
    if _attr(node, "keep_aspect_ratio_policy", "stretch") != "stretch":
        yield "keep_aspect_ratio_policy must be 'stretch'"
    if _attr(node, "antialias", 0):
        yield "antialiasing is unsupported"
    scales = _input(node, 2)
    axes = _attr(node, "axes", None)
    rank = len(graph.shapes.get(node.input[0], []))
    dynamic_scales = scales is not None and not graph.is_constant(scales)
    if dynamic_scales and axes is not None and list(axes) != list(range(rank)):
        yield "with scales as a tensor input, axes must be 0..rank-1"


def _gather(node: onnx.NodeProto, graph: _Graph) -> Iterable[str]:
    indices = _input(node, 1)
    if indices is None:
        return
    kind = graph.type_name(indices)
    if kind not in (None, "INT32", "INT64"):
        yield f"indices must be INT32 or INT64, got {kind}"
    data_shape = graph.shapes.get(node.input[0])
    if indices in graph.constants and data_shape:
        axis = int(_attr(node, "axis", 0))
        size = data_shape[axis] if -len(data_shape) <= axis < len(data_shape) else None
        values = graph.constants[indices]
        if size and values.size and (values.min() < -size or values.max() >= size):
            yield f"constant indices {values.min()}..{values.max()} fall outside axis {axis} of size {size}"


def _instance_norm(node: onnx.NodeProto, graph: _Graph) -> Iterable[str]:
    for position, what in ((1, "scale"), (2, "B")):
        name = _input(node, position)
        if name is not None and not graph.is_constant(name):
            yield f"{what} must be a build-time constant (the parser builds it into the layer)"
    rank = len(graph.shapes.get(node.input[0], []))
    if rank and not 3 <= rank <= 5:
        yield f"input rank must be 3 to 5, got {rank}"


def _dropout(node: onnx.NodeProto, graph: _Graph) -> Iterable[str]:
    training = _input(node, 2)
    if training is not None and (training not in graph.constants or bool(graph.constants[training])):
        yield "is_training must be an initializer that is False"


def _single_output(what: str) -> Rule:
    def rule(node: onnx.NodeProto, graph: _Graph) -> Iterable[str]:
        if len([o for o in node.output if o]) > 1:
            yield f"only the first output ({what}) is supported"

    return rule


def _topk(node: onnx.NodeProto, graph: _Graph) -> Iterable[str]:
    if int(_attr(node, "sorted", 1)) != 1:
        yield "sorted must be 1"
    k = _input(node, 1)
    if k is not None and k in graph.constants and int(graph.constants[k].reshape(-1)[0]) >= _TOPK_MAX_K:
        yield f"K must be below {_TOPK_MAX_K}"


def _scatter_nd(node: onnx.NodeProto, graph: _Graph) -> Iterable[str]:
    if _attr(node, "reduction", "none") != "none":
        yield "reduction other than 'none' is unsupported"


def _constant(node: onnx.NodeProto, graph: _Graph) -> Iterable[str]:
    for name in ("sparse_value", "value_string", "value_strings"):
        if _attr(node, name) is not None:
            yield f"attribute {name} is unsupported"


def _build_time_input(position: int, what: str) -> Rule:
    def rule(node: onnx.NodeProto, graph: _Graph) -> Iterable[str]:
        name = _input(node, position)
        if name is not None and not graph.is_constant(name):
            yield f"{what} must be a build-time constant"

    return rule


RULES: dict[str, tuple[Rule, ...]] = {
    **{op: (_axes_constant(1),) for op in _REDUCE_OPS},
    "Squeeze": (_axes_constant(1),),
    "Unsqueeze": (_axes_constant(1),),
    "AveragePool": (_pooling,),
    "MaxPool": (_pooling,),
    "LpPool": (_pooling,),
    "Resize": (_resize,),
    "Gather": (_gather,),
    "InstanceNormalization": (_instance_norm,),
    "Dropout": (_dropout,),
    "LayerNormalization": (_single_output("Y"),),
    "TopK": (_topk,),
    "ScatterND": (_scatter_nd,),
    "Constant": (_constant,),
    "CumSum": (_build_time_input(1, "axis"),),
    "OneHot": (_build_time_input(1, "depth"),),
}


# ------------------------------------------------------------------------------------------- checks
def _opset(model: onnx.ModelProto) -> int:
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    raise ValueError("the model imports no default-domain opset: not an ONNX operator graph")


def _check_node(node: onnx.NodeProto, graph: _Graph, report: SupportReport) -> None:
    name = node.name or (node.output[0] if node.output else "?")
    op = node.op_type
    if node.domain not in ("", "ai.onnx"):
        report.issues.append(Issue(name, op, f"domain {node.domain!r}: TensorRT needs a plugin for it"))
        return
    if op in UNSUPPORTED:
        report.issues.append(Issue(name, op, "marked unsupported in the TensorRT support matrix"))
        return
    allowed = SUPPORTED_TYPES.get(op)
    if allowed is None:
        report.issues.append(Issue(name, op, "not in the TensorRT support matrix"))
        return
    # The table's types are those of the data tensors: the first input and the outputs. Auxiliary
    # inputs (shapes, axes, indices, pads) are INT64 by the ONNX spec and checked by the rules.
    for tensor in [n for n in (_input(node, 0), *node.output) if n]:
        kind = graph.type_name(tensor)
        if kind is None:
            report.notes.append(f"{op} {name!r}: type of {tensor!r} unknown after shape inference")
        elif kind not in allowed:
            supported = ", ".join(allowed)
            report.issues.append(Issue(name, op, f"tensor {tensor!r} is {kind}; supported: {supported}"))
    for rule in RULES.get(op, ()):
        report.issues.extend(Issue(name, op, reason) for reason in rule(node, graph))


def _dynamic_inputs(model: onnx.ModelProto, profile_inputs: Sequence[str], report: SupportReport) -> None:
    initializers = {init.name for init in model.graph.initializer}
    for value in model.graph.input:
        if value.name in initializers:
            continue
        dims = value.type.tensor_type.shape.dim
        symbolic = [d.dim_param or "?" for d in dims if not d.HasField("dim_value")]
        if not symbolic:
            continue
        report.dynamic_inputs[value.name] = [d.dim_param or str(d.dim_value) or "?" for d in dims]
        if value.name not in profile_inputs:
            report.issues.append(
                Issue(
                    value.name,
                    "graph input",
                    f"dynamic dims {symbolic} and no optimisation profile names this input",
                )
            )
        elif any(not d.HasField("dim_value") for d in dims[1:]):
            report.notes.append(
                f"{value.name}: dims past the batch are dynamic; the profile must bound them too"
            )


def check_model(model: onnx.ModelProto, *, profile_inputs: Sequence[str] = ("images",)) -> SupportReport:
    """Check every node (and subgraph-free structure) of `model` against TensorRT 10's parser.

    `profile_inputs`: graph inputs the TensorRT provider gives an optimisation profile for
    (`runtime.session.tensorrt_provider_options` profiles `images` over batch 1..max). A dynamic
    input outside it is an issue; one inside it is reported in `dynamic_inputs`.
    """
    opset = _opset(model)
    report = SupportReport(opset=opset)
    if not OPSET_MIN <= opset <= OPSET_MAX:
        report.issues.append(
            Issue("model", "opset", f"opset {opset} is outside TensorRT's {OPSET_MIN}..{OPSET_MAX}")
        )
    for entry in model.opset_import:
        if entry.domain not in ("", "ai.onnx"):
            report.notes.append(f"imports domain {entry.domain!r} version {entry.version}")
    if len(model.functions):
        report.notes.append(f"{len(model.functions)} model-local functions (the parser inlines them)")
    graph = _index_graph(model)
    report.types_seen.update(graph.type_name(name) or "?" for name in graph.types)
    for node in model.graph.node:
        report.op_counts[node.op_type] += 1
        if any(attr.type in _SUBGRAPH_ATTRIBUTES for attr in node.attribute):
            report.notes.append(f"{node.op_type} {node.name!r} has subgraphs; this check does not enter them")
        _check_node(node, graph, report)
    _dynamic_inputs(model, profile_inputs, report)
    return report


def check_file(path: str | Path, *, profile_inputs: Sequence[str] = ("images",)) -> SupportReport:
    """`check_model` on a file (its weights are read: constant indices and axes are checked too)."""
    return check_model(onnx.load(str(path)), profile_inputs=profile_inputs)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m export.tensorrt_support",
        description=f"Check ONNX files against TensorRT {TENSORRT_VERSION}'s ONNX parser support matrix.",
    )
    parser.add_argument("models", nargs="+", type=Path)
    parser.add_argument("--profile-inputs", default="images", help="comma-separated inputs with a profile")
    args = parser.parse_args(argv)
    status = 0
    for path in args.models:
        report = check_file(path, profile_inputs=tuple(filter(None, args.profile_inputs.split(","))))
        print(f"== {path}\n{report.text()}\n")
        status |= 0 if report.ok else 1
    return status


if __name__ == "__main__":
    sys.exit(main())

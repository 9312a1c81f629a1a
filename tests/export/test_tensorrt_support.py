"""TensorRT 10's ONNX parser support matrix, checked statically: the exported graphs (fp32 and the fp16
conversion) pass, and each rule rejects a small graph that breaks it (so a pass means something)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from export.tensorrt_support import (
    OPSET_MAX,
    SUPPORTED_TYPES,
    UNSUPPORTED,
    check_file,
    check_model,
)

FLOAT = TensorProto.FLOAT


def _model(
    nodes: Sequence[onnx.NodeProto],
    inputs: Sequence[onnx.ValueInfoProto],
    outputs: Sequence[onnx.ValueInfoProto],
    initializers: Sequence[onnx.TensorProto] = (),
    opset: int = 20,
) -> onnx.ModelProto:
    graph = helper.make_graph(list(nodes), "g", list(inputs), list(outputs), list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _x(
    shape: Sequence[int | str] = (1, 4, 8, 8), elem: int = FLOAT, name: str = "images"
) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, list(shape))


def _y(name: str = "y", elem: int = FLOAT) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, None)


def _reasons(model: onnx.ModelProto, **kwargs: object) -> str:
    report = check_model(model, **kwargs)
    return " | ".join(str(issue) for issue in report.issues)


# ------------------------------------------------------------------------------ the real exports


@pytest.mark.slow
def test_exported_fp32_graph_is_inside_the_support_matrix(exported_t_path):
    report = check_file(exported_t_path)
    assert report.ok, report.text()
    graph = onnx.load(str(exported_t_path)).graph
    assert set(report.op_counts) == {node.op_type for node in graph.node}
    assert all(op in SUPPORTED_TYPES for op in report.op_counts)
    assert "FP32" in report.types_seen and "FP16" not in report.types_seen
    # Only the batch is dynamic, and runtime.session's TensorRT profile covers `images`.
    (dims,) = report.dynamic_inputs.values()
    assert dims[1:] == ["3", "224", "224"] and not dims[0].isdigit()


@pytest.mark.slow
def test_fp16_conversion_of_the_export_is_inside_the_support_matrix(exported_t_path):
    from export.onnx_export import convert_to_fp16

    fp16 = convert_to_fp16(onnx.load(str(exported_t_path)))
    report = check_model(fp16)
    assert report.ok, report.text()
    assert report.types_seen["FP16"] > report.types_seen["FP32"]
    # InstanceNormalization stays float32 behind Casts of float16 weights: the constant-folding
    # rule (not the initializer shortcut) is what accepted its scale and bias here.
    producers = {out: node for node in fp16.graph.node for out in node.output}
    norms = [node for node in fp16.graph.node if node.op_type == "InstanceNormalization"]
    assert norms and any(producers.get(n.input[1]) is not None for n in norms)


# ------------------------------------------------------------------------------ each rule can fail


def _conv_model() -> onnx.ModelProto:
    weight = numpy_helper.from_array(np.ones((4, 1, 3, 3), np.float32), "w")
    node = helper.make_node("Conv", ["images", "w"], ["y"], group=4, pads=[1, 1, 1, 1])
    return _model([node], [_x(("batch", 4, 8, 8))], [_y()], [weight])


def test_a_small_supported_graph_passes_with_its_dynamic_batch_profiled():
    report = check_model(_conv_model())
    assert report.ok, report.text()
    assert report.dynamic_inputs == {"images": ["batch", "4", "8", "8"]}


def test_a_dynamic_input_without_an_optimisation_profile_is_an_issue():
    assert "no optimisation profile" in _reasons(_conv_model(), profile_inputs=())


@pytest.mark.parametrize(
    ("mode", "coordinate", "expected"),
    [
        ("cubic", "half_pixel", "mode 'cubic' is unsupported"),
        ("linear", "tf_crop_and_resize", "coordinate_transformation_mode"),
    ],
)
def test_resize_modes_outside_nearest_and_linear_are_rejected(mode, coordinate, expected):
    sizes = numpy_helper.from_array(np.array([1, 4, 16, 16], np.int64), "sizes")
    node = helper.make_node(
        "Resize", ["images", "", "", "sizes"], ["y"], mode=mode, coordinate_transformation_mode=coordinate
    )
    assert expected in _reasons(_model([node], [_x()], [_y()], [sizes]))
    ok = helper.make_node("Resize", ["images", "", "", "sizes"], ["y"], mode="linear")
    assert check_model(_model([ok], [_x()], [_y()], [sizes])).ok


def test_unsupported_unknown_and_foreign_operators_are_rejected():
    assert "Unique" in UNSUPPORTED
    unique = helper.make_node("Unique", ["images"], ["y"])
    assert "marked unsupported" in _reasons(_model([unique], [_x()], [_y()]))
    unknown = helper.make_node("NoSuchOp", ["images"], ["y"])
    assert "not in the TensorRT support matrix" in _reasons(_model([unknown], [_x()], [_y()]))
    foreign = helper.make_node("FusedConv", ["images"], ["y"], domain="com.microsoft")
    model = _model([foreign], [_x()], [_y()])
    model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    assert "needs a plugin" in _reasons(model)


def test_an_opset_past_the_parsers_range_is_rejected():
    relu = helper.make_node("Relu", ["images"], ["y"])
    assert f"outside TensorRT's 9..{OPSET_MAX}" in _reasons(
        _model([relu], [_x()], [_y()], opset=OPSET_MAX + 1)
    )


def test_reduce_axes_must_be_build_time_constants():
    axes_input = helper.make_tensor_value_info("axes", TensorProto.INT64, [1])
    node = helper.make_node("ReduceMean", ["images", "axes"], ["y"])
    assert "must be a build-time constant" in _reasons(_model([node], [_x(), axes_input], [_y()]))
    axes = numpy_helper.from_array(np.array([1], np.int64), "axes")
    assert check_model(_model([node], [_x()], [_y()], [axes])).ok


def test_a_data_type_outside_the_operators_list_is_rejected():
    node = helper.make_node("Add", ["images", "images"], ["y"])
    reasons = _reasons(_model([node], [_x(elem=TensorProto.UINT8)], [_y(elem=TensorProto.UINT8)]))
    assert "is UINT8" in reasons


def test_maxpool_indices_output_and_dilations_are_rejected():
    node = helper.make_node("MaxPool", ["images"], ["y", "idx"], kernel_shape=[2, 2], dilations=[2, 2])
    reasons = _reasons(_model([node], [_x()], [_y(), _y("idx", TensorProto.INT64)]))
    assert "Indices output is unsupported" in reasons and "dilations" in reasons


def test_gather_indices_out_of_range_are_rejected():
    bad = numpy_helper.from_array(np.array([0, 8], np.int64), "idx")
    node = helper.make_node("Gather", ["images", "idx"], ["y"], axis=2)
    assert "outside axis 2 of size 8" in _reasons(_model([node], [_x()], [_y()], [bad]))
    good = numpy_helper.from_array(np.array([0, -8, 7], np.int64), "idx")
    assert check_model(_model([node], [_x()], [_y()], [good])).ok


def test_instance_norm_weights_must_be_constant_and_a_cast_of_an_initializer_is():
    scale_input = helper.make_tensor_value_info("scale", FLOAT, [4])
    bias = numpy_helper.from_array(np.zeros(4, np.float32), "bias")
    node = helper.make_node("InstanceNormalization", ["images", "scale", "bias"], ["y"])
    assert "scale must be a build-time constant" in _reasons(
        _model([node], [_x(), scale_input], [_y()], [bias])
    )
    scale16 = numpy_helper.from_array(np.ones(4, np.float16), "scale16")
    cast = helper.make_node("Cast", ["scale16"], ["scale"], to=FLOAT)
    assert check_model(_model([cast, node], [_x()], [_y()], [scale16, bias])).ok


def test_topk_beyond_the_parsers_k_limit_is_rejected():
    k = numpy_helper.from_array(np.array([4000], np.int64), "k")
    node = helper.make_node("TopK", ["images", "k"], ["values", "indices"])
    reasons = _reasons(_model([node], [_x((1, 5000))], [_y("values"), _y("indices", TensorProto.INT64)], [k]))
    assert "K must be below 3840" in reasons

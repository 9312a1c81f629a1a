"""The exported ONNX file: dynamic batch, metadata, self-containedness, and a verification that fails
when the file is wrong. The expensive trace happens once (the `exported_t` session fixture); tests
that exercise the pipeline around it reuse the traced graph instead of tracing again."""

from __future__ import annotations

import functools
import hashlib
import re
import shutil
import threading
from collections import Counter
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from export import pipeline
from export.__main__ import main as export_main
from export.onnx_export import build_model, convert_to_fp16
from export.verify import VerificationError, relative_error, verify_onnx
from model import VARIANTS, create_model, weights
from runtime.metadata import INPUT_NAME, OUTPUT_NAMES
from runtime.session import create_session, read_metadata

pytestmark = pytest.mark.slow  # they share one real export of TransXNet-T (~1-2 min)


@pytest.fixture(scope="module")
def session(exported_t_path):
    return create_session(exported_t_path, providers="cpu").session


@pytest.fixture(scope="module")
def reference_net(reference_checkpoint_t):
    return create_model("t", checkpoint=reference_checkpoint_t)


@pytest.fixture
def traced_proto(exported_t_path, monkeypatch):
    """Make the pipeline reuse the already traced graph (tracing is what costs a minute)."""
    proto = onnx.load(str(exported_t_path))
    monkeypatch.setattr(pipeline, "trace_to_onnx", lambda net, opset: proto)
    return proto


def test_export_verified_every_output_at_batch_1_3_8_and_the_official_outputs(exported_t):
    report = exported_t.verification
    assert report is not None and report.ok
    seen = {(c.output, c.batch_size) for c in report.comparisons}
    for name in OUTPUT_NAMES:
        for batch in (1, 3, 8):
            assert (name, batch) in seen
        assert (f"{name}*", 2) in seen  # expected_t.npz: the official implementation's outputs
    assert max(c.rel_error for c in report.comparisons) <= 1e-4


def test_batch_axis_is_dynamic_and_samples_stay_independent(session):
    inputs = session.get_inputs()
    assert [i.name for i in inputs] == [INPUT_NAME]
    assert isinstance(inputs[0].shape[0], str) and inputs[0].shape[1:] == [3, 224, 224]
    assert [o.name for o in session.get_outputs()] == list(OUTPUT_NAMES)
    x = np.random.default_rng(11).standard_normal((5, 3, 224, 224)).astype(np.float32)
    batched = session.run(None, {INPUT_NAME: x})
    expected_shapes = [
        (5, 1000),
        (5, 448),
        (5, 48, 56, 56),
        (5, 96, 28, 28),
        (5, 224, 14, 14),
        (5, 448, 7, 7),
    ]
    assert [o.shape for o in batched] == expected_shapes
    for i in (0, 4):
        single = session.run(None, {INPUT_NAME: x[i : i + 1]})
        for got, want in zip(batched, single, strict=True):
            assert relative_error(got[i : i + 1], want) <= 1e-5
    (logits16,) = session.run(["logits"], {INPUT_NAME: np.repeat(x[:1], 16, axis=0)})
    assert logits16.shape == (16, 1000)


def test_metadata_round_trips_through_onnx_runtime(exported_t, session, reference_checkpoint_t):
    meta = read_metadata(session)
    assert meta == exported_t.metadata
    assert meta.variant == "transxnet_t" and meta.image_size == 224 and meta.crop_pct == 0.9
    assert meta.interpolation == "bicubic" and meta.embed_dim == 448 and meta.num_classes == 1000
    assert meta.labels[0] == "tench" and meta.labels[207] == "golden retriever"
    digest = hashlib.sha256(reference_checkpoint_t.read_bytes()).hexdigest()
    assert meta.weights == f"{reference_checkpoint_t.name} sha256:{digest}"
    assert meta.pretrained and meta.precision == "fp32"


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def release_server(tmp_path, reference_checkpoint_t) -> Iterator[str]:
    """A loopback 'release' that serves the reference checkpoint as transx-t.pth.tar; yields its URL."""
    root = tmp_path / "release"
    (root / "v1.0").mkdir(parents=True)
    shutil.copyfile(reference_checkpoint_t, root / "v1.0" / "transx-t.pth.tar")
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/v1.0/transx-t.pth.tar"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_downloaded_checkpoint_records_the_release_name_not_the_cache_file(
    traced_proto, release_server, reference_checkpoint_t, tmp_path, monkeypatch
):
    monkeypatch.setattr(weights, "RELEASE_URL", release_server.removesuffix("transx-t.pth.tar"))
    out, cache = tmp_path / "t.onnx", tmp_path / "cache"
    args = ["--variant", "t", "--checkpoint", "pretrained", "--cache-dir", str(cache), "--output", str(out)]
    code = export_main([*args, "--no-verify", "-q"])
    assert code == 0
    (cached,) = (cache / "checkpoints").iterdir()
    assert cached.name != "transx-t.pth.tar"  # the cache file is hash-prefixed ...
    digest = hashlib.sha256(reference_checkpoint_t.read_bytes()).hexdigest()
    meta = read_metadata(create_session(out, providers="cpu").session)
    assert meta.weights == f"transx-t.pth.tar sha256:{digest}"  # ... provenance names the release


def test_file_is_self_contained_and_passes_the_full_checker(exported_t_path):
    assert sorted(p.name for p in exported_t_path.parent.iterdir()) == [exported_t_path.name]
    proto = onnx.load(str(exported_t_path), load_external_data=False)
    assert all(init.data_location != onnx.TensorProto.EXTERNAL for init in proto.graph.initializer)
    onnx.checker.check_model(str(exported_t_path), full_check=True)


def test_graph_avoids_the_op_patterns_onnx_runtime_runs_slowly(exported_t_path, tmp_path):
    """The rewrites that make the file fast must survive tracing: no Softmax over a non-last axis
    (IDConv's group mix is a sigmoid), and MS-FFN's depthwise convs are two branches, 3x3 and 7x7
    (not one conv over a Split, nor every kernel padded to 7x7). In the graph ONNX Runtime actually
    runs (after its fusions), IDConv's row bands are one Gather per block (not a Slice per kernel
    row and a Concat) and OSRA leaves no Transpose."""
    graph = onnx.load(str(exported_t_path)).graph
    blocks = sum(VARIANTS["transxnet_t"].layers)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(exported_t_path), options, providers=["CPUExecutionProvider"])
    ops = Counter(node.op_type for node in onnx.load(options.optimized_model_filepath).graph.node)
    assert ops["Gather"] == blocks and ops["Concat"] == blocks, ops  # bands; D-Mixer's own concat
    assert ops["Slice"] == 0 and ops["Transpose"] == 0, ops
    softmax_axes = [
        next((a.i for a in node.attribute if a.name == "axis"), -1)
        for node in graph.node
        if node.op_type == "Softmax"
    ]
    assert softmax_axes and all(axis == -1 for axis in softmax_axes), softmax_axes  # attention only
    kernels: Counter[tuple[int, ...]] = Counter()
    for node in graph.node:
        if node.op_type == "Conv" and re.search(r"\.mlp\.branches\.\d+\.dwconv\.weight$", node.input[1]):
            attributes = {a.name: a for a in node.attribute}
            assert attributes["group"].i > 1, node.input[1]
            kernels[tuple(attributes["kernel_shape"].ints)] += 1
    assert kernels == {(3, 3): blocks, (7, 7): blocks}, kernels  # scales 1/3 and 5/7


def _corrupt(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Perturb one stage-3 conv weight by 5%: a plausible silent export bug."""
    bad = onnx.ModelProto()
    bad.CopyFrom(proto)
    target = next(i for i in bad.graph.initializer if "network.4.3" in i.name and len(i.dims) == 4)
    values = onnx.numpy_helper.to_array(target) * 1.05
    target.CopyFrom(onnx.numpy_helper.from_array(values.astype(np.float32), target.name))
    return bad


def test_verification_fails_on_a_corrupted_model_and_says_by_how_much(
    exported_t_path, reference_net, tmp_path
):
    bad_path = tmp_path / "bad.onnx"
    onnx.save(_corrupt(onnx.load(str(exported_t_path))), str(bad_path))
    with pytest.raises(VerificationError) as info:
        verify_onnx(bad_path, reference_net, batch_sizes=(1, 3))
    failed = [c for c in info.value.report.comparisons if not c.ok]
    assert {c.output for c in failed} >= {"logits", "stage3", "stage4"}
    assert "stage1" not in {c.output for c in failed}  # upstream of the corruption
    assert "logits at batch 1:" in str(info.value) and "> 1e-04" in str(info.value)


def test_cli_exits_nonzero_and_writes_nothing_when_verification_fails(
    traced_proto, reference_checkpoint_t, tmp_path, monkeypatch, capsys
):
    bad = _corrupt(traced_proto)
    monkeypatch.setattr(pipeline, "trace_to_onnx", lambda net, opset: bad)
    out = tmp_path / "model.onnx"
    code = export_main(
        ["--variant", "t", "--checkpoint", str(reference_checkpoint_t), "--output", str(out), "-q"]
    )
    assert code == 3
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_cli_reports_a_missing_checkpoint(tmp_path, caplog):
    code = export_main(
        ["--checkpoint", str(tmp_path / "absent.pth.tar"), "--output", str(tmp_path / "m.onnx")]
    )
    assert code == 2
    assert "absent.pth.tar" in caplog.text


def test_fp16_export_keeps_float32_io_and_matches_within_1e_2(
    traced_proto, reference_checkpoint_t, tmp_path, expected_t
):
    result = pipeline.export_model(
        "t", checkpoint=str(reference_checkpoint_t), output=tmp_path / "t16.onnx", fp16=True, expected=None
    )
    assert result.metadata.precision == "fp16"
    proto = onnx.load(str(result.path))
    io = [*proto.graph.input, *proto.graph.output]
    assert all(v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for v in io)
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in proto.graph.initializer)
    sess = create_session(result.path, providers="cpu").session
    (logits,) = sess.run(["logits"], {INPUT_NAME: expected_t["inputs"]})
    assert relative_error(logits, expected_t["logits"]) <= 1e-2
    assert np.array_equal(logits.argmax(1), expected_t["logits"].argmax(1))


def test_fp16_conversion_alone_is_caught_by_fp32_tolerance(exported_t_path, reference_net, tmp_path):
    path = tmp_path / "half.onnx"
    onnx.save(convert_to_fp16(onnx.load(str(exported_t_path))), str(path))
    verify_onnx(path, reference_net, batch_sizes=(2,), fp16=True)
    with pytest.raises(VerificationError):
        verify_onnx(path, reference_net, batch_sizes=(2,), tolerance=1e-6)


def test_pipeline_writes_a_triton_repository(traced_proto, reference_checkpoint_t, tmp_path):
    result = pipeline.export_model(
        "t",
        checkpoint=str(reference_checkpoint_t),
        output=tmp_path / "transxnet_t.onnx",
        verify=False,
        triton_repo=tmp_path / "repo",
        max_batch_size=32,
    )
    model_dir = result.triton_model_dir
    assert model_dir == tmp_path / "repo" / "transxnet_t"
    assert (model_dir / "1" / "model.onnx").read_bytes() == result.path.read_bytes()
    assert "max_batch_size: 32" in (model_dir / "config.pbtxt").read_text()


def test_random_init_is_seeded_and_says_so(caplog):
    a, prov_a = build_model("t", checkpoint=None, seed=5)
    b, _ = build_model("t", checkpoint=None, seed=5)
    c, _ = build_model("t", checkpoint=None, seed=6)
    assert prov_a == "random-init seed 5"
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(np.array_equal(sa[k].numpy(), sb[k].numpy()) for k in sa)
    assert not np.array_equal(sa["classifier.2.weight"].numpy(), sc["classifier.2.weight"].numpy())
    assert "NO CHECKPOINT" in caplog.text

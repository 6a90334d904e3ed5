"""Weight-only block int4 (DequantizeLinear(int4, block_size) -> MatMul), held to a numpy reference and to fp32."""

import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from agff_deploy.errors import InputError
from export.int4_sensitivity import int4_errors, int4_kept_in_float
from export.int8_sensitivity import sample_activations
from export.precision import INT4_OPSET, Int4Counts, int4_counts, int4_dequantized, quantize_int4

DIM, HIDDEN, OUT, HEAD = 256, 128, 96, 32
# Weight MatMuls: name -> (weight, K, N). "head"'s K (96) is not a whole number of 128-row blocks: it stays float.
WEIGHTS = {"q_proj": ("w_q", DIM, HIDDEN), "k_proj": ("w_k", DIM, HIDDEN), "out_proj": ("w_out", HIDDEN, OUT)}
KEPT = {"head": ("w_head", OUT, HEAD)}
ACTIVATION_MATMULS = {"attention": ["q", "kt"], "mix": ["probs", "q"]}
# Cosine to fp32 per output row of this graph (Gaussian weights, the worst case for int4's 15 levels), measured
# on feeds 1-3 (36 rows): one projection min 0.990 (mean 0.993); through attention and two more projections
# min 0.953 (mean 0.979), with ONNX Runtime's fp32-activation kernel and its default int8-activation one alike.
MIN_COSINE = 0.94


def _graph(dtype: int = TensorProto.FLOAT) -> onnx.ModelProto:
    """Two projections of one input, attention between them (two activation MatMuls), an output projection and a
    head whose K is not a multiple of the block size."""
    rng = np.random.default_rng(0)
    np_dtype = helper.tensor_dtype_to_np_dtype(dtype)
    shapes = {weight: (k, n) for weight, k, n in [*WEIGHTS.values(), *KEPT.values()]}
    weights = [
        numpy_helper.from_array((rng.normal(size=shape) / np.sqrt(shape[0])).astype(np_dtype), name)
        for name, shape in shapes.items()
    ]
    weights.append(numpy_helper.from_array(np.array(HIDDEN**-0.5, np_dtype), "temperature"))
    nodes = [
        helper.make_node("MatMul", ["x", "w_q"], ["q"], name="q_proj"),
        helper.make_node("MatMul", ["x", "w_k"], ["k"], name="k_proj"),
        helper.make_node("Transpose", ["k"], ["kt"], perm=[1, 0]),
        helper.make_node("MatMul", ["q", "kt"], ["logits"], name="attention"),
        helper.make_node("Mul", ["logits", "temperature"], ["scores"]),
        helper.make_node("Softmax", ["scores"], ["probs"]),
        helper.make_node("MatMul", ["probs", "q"], ["mixed"], name="mix"),
        helper.make_node("MatMul", ["mixed", "w_out"], ["h"], name="out_proj"),
        helper.make_node("MatMul", ["h", "w_head"], ["y"], name="head"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", dtype, ["n", DIM])],
        [helper.make_tensor_value_info("y", dtype, ["n", HEAD])],
        weights,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


@pytest.fixture(params=["inline", "external"])
def source(request, tmp_path) -> Path:
    """The fp32 graph with its weights in the protobuf or in an external-data file beside it."""
    path = tmp_path / "src" / "model.onnx"
    path.parent.mkdir()
    external = request.param == "external"
    onnx.save(_graph(), str(path), save_as_external_data=external, location="model.onnx.data", size_threshold=0)
    return path


def _feed(seed: int = 1, dtype: type = np.float32) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(seed).normal(size=(12, DIM)).astype(dtype)}


def _run(path: Path, feed: dict[str, np.ndarray], accuracy_level: int | None = None, outputs=("y",)) -> list:
    """ONNX Runtime CPU; `accuracy_level` is that of the MatMulNBits its optimiser fuses DQ(int4) -> MatMul into
    (1: fp32 activations, as TensorRT's weight-only int4; its default, 4, quantises activations to int8)."""
    options = ort.SessionOptions()
    if accuracy_level is not None:
        options.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", str(accuracy_level))
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(list(outputs), feed)


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


def _reference_int4(weight: np.ndarray, block_size: int) -> np.ndarray:
    """Symmetric block int4, one block at a time: scale = |block| max / 7, round half to even, clip to [-8, 7]."""
    weight = weight.astype(np.float32)
    out = np.empty_like(weight)
    for row in range(0, weight.shape[0], block_size):
        for col in range(weight.shape[1]):
            block = weight[row : row + block_size, col]
            scale = np.float32(np.abs(block).max() / np.float32(7))
            out[row : row + block_size, col] = np.clip(np.rint(block / scale), -8, 7) * scale
    return out


def _initializers(path: Path) -> dict[str, onnx.TensorProto]:
    return {t.name: t for t in onnx.load(str(path), load_external_data=False).graph.initializer}


def test_int4_puts_every_weight_matmul_behind_a_block_int4_dequantize(tmp_path, source):
    dst = quantize_int4(source, tmp_path / "int4.onnx")
    model = onnx.load(str(dst))
    onnx.checker.check_model(model, full_check=True)
    assert {o.domain: o.version for o in model.opset_import}[""] == INT4_OPSET and model.ir_version >= 10
    initializers = {t.name: t for t in model.graph.initializer}
    dqs = {n.output[0]: n for n in model.graph.node if n.op_type == "DequantizeLinear"}
    matmuls = {n.name: list(n.input) for n in model.graph.node if n.op_type == "MatMul"}
    for name, (weight, k, n) in WEIGHTS.items():
        dq = dqs[matmuls[name][1]]
        assert helper.get_attribute_value(next(a for a in dq.attribute if a.name == "block_size")) == 128
        assert helper.get_attribute_value(next(a for a in dq.attribute if a.name == "axis")) == 0
        codes, scale = (initializers[i] for i in dq.input)  # no zero point: symmetric
        assert codes.data_type == TensorProto.INT4 and list(codes.dims) == [k, n]
        assert list(scale.dims) == [k // 128, n] and (numpy_helper.to_array(scale) > 0).all()
        assert weight not in initializers
    assert {name: matmuls[name] for name in ACTIVATION_MATMULS} == ACTIVATION_MATMULS
    assert matmuls["head"] == ["h", "w_head"] and initializers["w_head"].data_type == TensorProto.FLOAT
    assert int4_counts(dst) == Int4Counts(quantized=3, kept=1, activation=2)
    assert int4_counts(source) == Int4Counts(quantized=0, kept=4, activation=2)


def test_int4_dequantizes_to_a_numpy_reference_of_symmetric_block_rounding_exactly(tmp_path, source):
    dst = quantize_int4(source, tmp_path / "int4.onnx")
    model = onnx.load(str(dst))
    names = [f"{weight}_dequantized" for weight, _, _ in WEIGHTS.values()]
    model.graph.output.extend(helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in names)
    probe = tmp_path / "probe.onnx"
    onnx.save(model, str(probe))
    dequantized = _run(probe, _feed(), outputs=names)
    fp32 = {t.name: numpy_helper.to_array(t) for t in _graph().graph.initializer}
    stored = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for (weight, _, _), onnx_runtime in zip(WEIGHTS.values(), dequantized, strict=True):
        np.testing.assert_array_equal(onnx_runtime, _reference_int4(fp32[weight], 128))
        codes = stored[f"{weight}_int4"]
        assert codes.min() == -7 and codes.max() == 7  # symmetric: -8 is never used


@pytest.mark.parametrize("accuracy_level", [1, None])
def test_int4_outputs_stay_close_to_fp32(tmp_path, source, accuracy_level):
    dst = quantize_int4(source, tmp_path / "int4.onnx")
    for seed in (1, 2, 3):
        feed = _feed(seed)
        quantized, exact = _run(dst, feed, accuracy_level)[0], _run(source, feed)[0]
        assert not np.array_equal(quantized, exact)
        assert _cosines(quantized, exact).min() > MIN_COSINE


def test_int4_with_exact_activations_is_the_fp32_graph_on_dequantized_weights(tmp_path, source):
    """Weight-only: with ONNX Runtime's fp32-activation kernel the int4 graph computes x @ dequantized weights."""
    dst = quantize_int4(source, tmp_path / "int4.onnx")
    fp32 = {t.name: numpy_helper.to_array(t) for t in _graph().graph.initializer}
    x = _feed()["x"]
    q, k = x @ _reference_int4(fp32["w_q"], 128), x @ _reference_int4(fp32["w_k"], 128)
    scores = q @ k.T * np.float32(HIDDEN**-0.5)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    expected = (probs @ q) @ _reference_int4(fp32["w_out"], 128) @ fp32["w_head"]
    np.testing.assert_allclose(_run(dst, {"x": x}, accuracy_level=1)[0], expected, rtol=1e-3, atol=1e-3)


def test_int4_of_an_external_graph_writes_its_weights_beside_dst_and_loads_from_a_copy(tmp_path):
    src = tmp_path / "src" / "model.onnx"
    src.parent.mkdir()
    onnx.save(_graph(), str(src), save_as_external_data=True, location="model.onnx.data", size_threshold=0)
    (tmp_path / "out").mkdir()
    dst = quantize_int4(src, tmp_path / "out" / "int4.onnx")
    assert sorted(p.name for p in src.parent.iterdir()) == ["model.onnx", "model.onnx.data"]
    assert sorted(p.name for p in dst.parent.iterdir()) == ["int4.onnx", "int4.onnx.data"]
    external = [t for t in _initializers(dst).values() if t.data_location == TensorProto.EXTERNAL]
    assert {e.value for t in external for e in t.external_data if e.key == "location"} == {"int4.onnx.data"}
    assert {"w_q_int4", "w_q_int4_scale", "w_head"} <= {t.name for t in external}
    copy = tmp_path / "copy"
    copy.mkdir()
    for path in dst.parent.iterdir():
        shutil.copy(path, copy / path.name)
    shutil.rmtree(dst.parent)
    shutil.rmtree(src.parent)
    np.testing.assert_array_equal(_run(copy / "int4.onnx", _feed())[0], _run_inline_int4(tmp_path, _feed()))


def _run_inline_int4(tmp_path: Path, feed: dict[str, np.ndarray]) -> np.ndarray:
    src, dst = tmp_path / "inline.onnx", tmp_path / "inline-int4.onnx"
    onnx.save(_graph(), str(src))
    return _run(quantize_int4(src, dst), feed)[0]


def test_int4_of_an_inline_graph_stays_inline(tmp_path):
    src = tmp_path / "model.onnx"
    onnx.save(_graph(), str(src))
    quantize_int4(src, tmp_path / "int4.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["int4.onnx", "model.onnx"]
    assert all(t.data_location == TensorProto.DEFAULT for t in _initializers(tmp_path / "int4.onnx").values())


def test_int4_of_an_fp16_graph_keeps_fp16_scales_and_runs(tmp_path):
    src = tmp_path / "model.onnx"
    onnx.save(_graph(TensorProto.FLOAT16), str(src))
    dst = quantize_int4(src, tmp_path / "int4.onnx")
    assert _initializers(dst)["w_q_int4_scale"].data_type == TensorProto.FLOAT16
    feed = _feed(dtype=np.float16)
    quantized, exact = _run(dst, feed, accuracy_level=1)[0], _run(src, feed)[0]
    assert quantized.dtype == np.float16 and _cosines(quantized, exact).min() > MIN_COSINE


def test_int4_block_size_sets_the_blocks_and_what_stays_float(tmp_path):
    src = tmp_path / "model.onnx"
    onnx.save(_graph(), str(src))
    dst = quantize_int4(src, tmp_path / "int4.onnx", block_size=32)
    assert int4_counts(dst) == Int4Counts(quantized=4, kept=0, activation=2)  # 96 = 3 blocks of 32
    assert list(_initializers(dst)["w_head_int4_scale"].dims) == [3, HEAD]
    with pytest.raises(ValueError, match="block size 100"):
        quantize_int4(src, tmp_path / "bad.onnx", block_size=100)


def test_int4_of_a_torch_export_converts_its_opset_and_keeps_its_output(tmp_path):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(DIM, HIDDEN), torch.nn.LayerNorm(HIDDEN), torch.nn.GELU(), torch.nn.Linear(HIDDEN, OUT)
    ).eval()
    x = torch.randn(3, 5, DIM)
    src = tmp_path / "linear.onnx"
    torch.onnx.export(model, (x,), str(src), opset_version=18, dynamo=True, external_data=True)
    dst = quantize_int4(src, tmp_path / "int4.onnx")
    assert int4_counts(dst) == Int4Counts(quantized=2, kept=0, activation=0)
    graph = onnx.load(str(dst), load_external_data=False).graph
    quantized = _run(dst, {graph.input[0].name: x.numpy()}, accuracy_level=1, outputs=[graph.output[0].name])[0]
    with torch.no_grad():
        exact = model(x).numpy()
    assert _cosines(quantized, exact).min() > MIN_COSINE


def test_int4_counts_a_gemm_weight_as_kept_in_float(tmp_path):
    """torch.onnx writes an nn.Linear on a 2-D input as Gemm, which quantize_int4 leaves alone."""
    weight = numpy_helper.from_array(np.ones((HEAD, DIM), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w"], ["y"], transB=1)],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", DIM])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", HEAD])],
        [weight],
    )
    src = tmp_path / "gemm.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(src))
    assert int4_counts(quantize_int4(src, tmp_path / "int4.onnx")) == Int4Counts(quantized=0, kept=1, activation=0)


def test_an_int4_bundle_is_gated_under_its_own_bar_and_runs_in_onnx_runtime(tiny_checkpoint, tmp_path):
    from agff_deploy.contract import BARS
    from agff_deploy.manifest import read_manifest
    from runtime.embedder import Embedder
    from tests.conftest import export_bundle, scene_images

    out = tmp_path / "bundle"
    report = export_bundle(
        tiny_checkpoint, out, precisions=("fp32", "int4"), batch=(1, 4, 16), agreement_pairs=0, int4_block_size=32
    )
    assert report.passed, report.table()
    manifest = read_manifest(out)
    rows = [r for r in manifest.parity.rows if r.precision == "int4"]
    assert len(rows) == 4 and all(r.bar == BARS["int4"].describe() for r in rows)
    assert manifest.graphs["int4"]["language_encoder"].backends == ("onnxruntime",)
    assert int4_counts(out / "int4" / "language_encoder.onnx").quantized > 0
    assert manifest.kept_in_float.get("int4", ()) == ()
    with Embedder.load(out, precision="int4") as model:
        assert model.embed_images(scene_images(2, 56)).shape == (2, manifest.model.num_prompts, 32)


def test_int4_dequantized_is_the_numpy_reference_of_block_rounding():
    weight = np.random.default_rng(3).normal(size=(256, 40)).astype(np.float32)
    np.testing.assert_array_equal(int4_dequantized(weight, 64), _reference_int4(weight, 64))


def test_int4_errors_rank_highest_the_matmul_whose_blocks_are_set_by_outliers(tmp_path):
    model = _graph()
    (w_k,) = [t for t in model.graph.initializer if t.name == "w_k"]
    outlier = numpy_helper.to_array(w_k).copy()
    outlier[5] = 50 * np.abs(outlier).max()  # row 5 sets every column's first block: the rest of it rounds to 0
    w_k.CopyFrom(numpy_helper.from_array(outlier, "w_k"))
    src = tmp_path / "model.onnx"
    onnx.save(model, str(src))
    feeds = [_feed(1), _feed(2)]
    for feed in feeds:
        feed["x"][:, 5] = 0  # what the blocks lose, not the outlier's own product, makes the error
    errors = {e.node: e.error for e in int4_errors(src, sample_activations(src, feeds), 128)}
    assert set(errors) == {"q_proj", "k_proj", "out_proj"}  # the head's K is not whole blocks: float anyway
    assert max(errors, key=errors.get) == "k_proj" and errors["k_proj"] > 3 * errors["q_proj"]


def test_a_float_budget_keeps_the_most_disturbed_matmul_float_and_quantizes_the_rest(tmp_path, source):
    kept = int4_kept_in_float(source, [_feed(1)], 128, budget=DIM * HIDDEN / (2 * DIM * HIDDEN + HIDDEN * OUT))
    assert len(kept) == 1
    dst = quantize_int4(source, tmp_path / "int4.onnx", keep=kept)
    assert int4_counts(dst) == Int4Counts(quantized=2, kept=2, activation=2)
    assert int4_kept_in_float(source, [_feed(1)], 128, budget=0.0) == []


def test_an_int4_float_budget_outside_0_to_1_is_refused():
    from export.bundle import ExportOptions

    with pytest.raises(InputError, match="--int4-float-budget 1: give a share from 0 up to"):
        ExportOptions(precisions=("fp32", "int4"), int4_float_budget=1.0).validate()


def test_an_int4_float_budget_is_recorded_and_its_matmuls_stay_float(tiny_checkpoint, tmp_path):
    from agff_deploy.manifest import read_manifest
    from tests.conftest import export_bundle

    out = tmp_path / "bundle"
    report = export_bundle(
        tiny_checkpoint, out, precisions=("fp32", "int4"), batch=(1, 4, 16), agreement_pairs=0, int4_block_size=32,
        int4_float_budget=0.3, calib_samples=4,
    )  # fmt: skip
    assert report.passed, report.table()
    kept = read_manifest(out).kept_in_float["int4"]
    graphs = {name.split("/")[0] for name in kept}
    assert kept and graphs <= {"vision_encoder", "language_encoder"}
    for graph in graphs:
        floats = int4_counts(quantize_int4(out / "fp32" / f"{graph}.onnx", tmp_path / f"{graph}.onnx", 32)).kept
        assert int4_counts(out / "int4" / f"{graph}.onnx").kept == floats + sum(n.startswith(graph) for n in kept)


def test_int4_stores_an_embedding_table_in_fp16_and_casts_what_it_gathers_back_to_fp32(tmp_path):
    rng = np.random.default_rng(4)
    table = rng.normal(size=(50, DIM)).astype(np.float32)
    weight = (rng.normal(size=(DIM, HIDDEN)) / np.sqrt(DIM)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Gather", ["table", "ids"], ["embedded"], name="embedding"),
            helper.make_node("MatMul", ["embedded", "w"], ["y"], name="proj"),
        ],
        "g",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["n"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", HIDDEN])],
        [numpy_helper.from_array(table, "table"), numpy_helper.from_array(weight, "w")],
    )
    src = tmp_path / "model.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(src))
    dst = quantize_int4(src, tmp_path / "int4.onnx")
    assert _initializers(dst)["table"].data_type == TensorProto.FLOAT16
    assert [n.op_type for n in onnx.load(str(dst)).graph.node] == ["Gather", "Cast", "DequantizeLinear", "MatMul"]
    ids = np.array([3, 0, 49], np.int64)
    expected = table.astype(np.float16).astype(np.float32)[ids] @ _reference_int4(weight, 128)
    np.testing.assert_allclose(_run(dst, {"ids": ids}, accuracy_level=1)[0], expected, rtol=1e-4, atol=1e-4)

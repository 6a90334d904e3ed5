import onnx
from onnx import TensorProto, helper

from export.targets import TARGETS, get_target
from export.trt_lint import lint_file, lint_model

GENERIC = get_target("generic")


def graph_with(nodes, opset=18, domains=()):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    graph = helper.make_graph(nodes, "g", [x], [y])
    opsets = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, 1) for d in domains]
    return helper.make_model(graph, opset_imports=opsets)


def test_a_plain_default_domain_graph_is_clean():
    assert lint_model(graph_with([helper.make_node("Relu", ["x"], ["y"])]), GENERIC) == []


def test_custom_domain_ops_need_a_plugin():
    model = graph_with([helper.make_node("FusedThing", ["x"], ["y"], domain="com.example")], domains=["com.example"])
    assert lint_model(model, GENERIC) == ["FusedThing is in custom domain 'com.example': TensorRT would need a plugin"]


def test_control_flow_and_data_dependent_shapes_are_flagged():
    model = graph_with([helper.make_node("NonZero", ["x"], ["n"]), helper.make_node("Identity", ["n"], ["y"])])
    assert lint_model(model, GENERIC) == ["NonZero has a data-dependent output shape"]
    then = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["t"])],
        "then",
        [],
        [helper.make_tensor_value_info("t", TensorProto.FLOAT, [2])],
    )
    model = graph_with([helper.make_node("If", ["x"], ["y"], then_branch=then, else_branch=then)])
    assert lint_model(model, GENERIC) == ["If is control flow: export a graph without data-dependent branches or loops"]


def test_ops_outside_the_parser_support_matrix_are_named():
    model = graph_with([helper.make_node("MatMulInteger", ["x", "x"], ["y"])])
    assert lint_model(model, get_target("jetson-orin-jp6")) == [
        "MatMulInteger is not supported by the TensorRT 10.3 ONNX parser"
    ]


def test_opset_outside_the_target_range_is_flagged():
    model = graph_with([helper.make_node("Relu", ["x"], ["y"])], opset=23)
    assert lint_model(model, GENERIC) == ["opset 23 is outside generic's parser range 9..20"]


def test_asymmetric_quantization_is_flagged():
    zp = helper.make_tensor("zp", TensorProto.INT8, [], [3])
    scale = helper.make_tensor("s", TensorProto.FLOAT, [], [0.1])
    model = graph_with(
        [
            helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["q"], name="q0"),
            helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["y"], name="dq0"),
        ]
    )
    model.graph.initializer.extend([zp, scale])
    assert lint_model(model, GENERIC) == ["Q/DQ with non-zero zero points (q0, dq0): TensorRT needs symmetric"]


def test_every_exported_trt_graph_lints_clean_for_every_target(tiny_bundle):
    for target in TARGETS.values():
        for path in [*tiny_bundle.glob("fp*/*.onnx"), *tiny_bundle.glob("int8/*.onnx"), tiny_bundle / "scorer.onnx"]:
            assert lint_file(path, target) == [], (path, target.name)


def test_dynamic_int8_graphs_would_not_build_on_tensorrt(tiny_bundle):
    problems = lint_file(tiny_bundle / "int8-dynamic" / "language_encoder.onnx", GENERIC)
    assert any("MatMulInteger" in p or "DynamicQuantizeLinear" in p for p in problems)
    assert isinstance(onnx.load(str(tiny_bundle / "int8-dynamic" / "language_encoder.onnx")), onnx.ModelProto)

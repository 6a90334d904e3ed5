"""The edge memory budget: weights, activations at the max shapes and workspace, from the graphs themselves."""

import itertools

import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from agff_deploy.contract import TRT_PRECISIONS
from agff_deploy.manifest import read_manifest
from export.engine_memory import BundleMemory, gib, graph_memory, main, weight_bytes
from export.targets import ORIN_BOARDS, Target, get_target
from export.to_trt import BuildRequest, preflight, profile_shapes

GiB = 2**30


def max_shapes(manifest, graph, batch):
    return {name: hi for name, (_, _, hi) in profile_shapes(manifest, graph, batch).items()}


def test_weights_are_the_initializers_bytes_at_their_stored_dtype_even_in_unread_external_data(tmp_path):
    import numpy as np

    weights = [
        numpy_helper.from_array(np.ones((4, 3), np.float32), "w32"),  # 48 bytes
        numpy_helper.from_array(np.ones((4, 3), np.int8), "w8"),  # 12 bytes
        numpy_helper.from_array(np.ones((3,), np.float16), "b16"),  # 6 bytes
        numpy_helper.from_array(np.array(0.5, np.float32), "scale"),  # 4 bytes
    ]
    nodes = [
        helper.make_node("DequantizeLinear", ["w8", "scale"], ["w8f"]),
        helper.make_node("Add", ["w32", "w8f"], ["w"]),
        helper.make_node("MatMul", ["x", "w"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "weights",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
        weights,
    )
    path = tmp_path / "model.onnx"
    onnx.save_model(helper.make_model(graph), str(path), save_as_external_data=True, location="w.bin", size_threshold=0)
    (tmp_path / "w.bin").unlink()  # the estimate must not need the bytes

    model = onnx.load(str(path), load_external_data=False)
    assert all(t.data_location == TensorProto.EXTERNAL for t in model.graph.initializer)
    assert weight_bytes(model) == 48 + 12 + 6 + 4


def test_activations_peak_at_the_largest_set_of_tensors_alive_together():
    nodes = [
        helper.make_node("Relu", ["x"], ["a"]),  # [2, 3] f32, 24 B; x is dead after this
        helper.make_node("Concat", ["a", "a"], ["b"], axis=0),  # [4, 3], 48 B
        helper.make_node("Neg", ["a"], ["c"]),  # [2, 3], 24 B; a is dead after this
        helper.make_node("Concat", ["b", "c"], ["d"], axis=0),  # [6, 3], 72 B: b, c, d alive = 144 B
        helper.make_node("Cast", ["d"], ["e"], to=TensorProto.FLOAT16),  # [6, 3] f16, 36 B
    ]
    graph = helper.make_graph(
        nodes,
        "branch",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor_value_info("e", TensorProto.FLOAT16, ["batch", 3])],
    )
    memory = graph_memory(helper.make_model(graph), {"x": (2, 3)})
    assert (memory.activations, memory.tensors, memory.unknown, memory.weights) == (144, 5, 0, 0)


def test_activations_grow_with_the_max_batch(tiny_bundle):
    manifest = read_manifest(tiny_bundle)
    model = onnx.load(str(tiny_bundle / "fp32" / "language_encoder.onnx"), load_external_data=False)
    small = graph_memory(model, max_shapes(manifest, "language_encoder", (1, 2, 4)))
    large = graph_memory(model, max_shapes(manifest, "language_encoder", (1, 4, 16)))
    assert small.weights == large.weights
    assert 3.9 * small.activations < large.activations <= 4 * small.activations


@pytest.mark.parametrize("precision", TRT_PRECISIONS)
def test_every_tensor_shape_of_the_exported_graphs_is_inferred(tiny_bundle, precision):
    memory = BundleMemory(tiny_bundle, read_manifest(tiny_bundle), 0).budget(precision, (1, 4, 16))
    assert all(graph.tensors > 0 and graph.unknown == 0 for graph in memory.graphs.values())


def test_orin_boards_leave_engines_their_memory_less_the_system_reserve():
    assert {board.name: board.usable_bytes() / GiB for board in ORIN_BOARDS} == {
        "orin-nano-8gb": 6.0,
        "orin-nx-16gb": 14.0,
        "agx-orin-32gb": 30.0,
        "agx-orin-64gb": 62.0,
    }
    assert get_target("jetson-orin-jp6").usable_bytes() == ORIN_BOARDS[0].usable_bytes()


def test_preflight_refuses_a_board_too_small_and_names_what_would_fit(tiny_bundle):
    manifest = read_manifest(tiny_bundle)
    memory = BundleMemory(tiny_bundle, manifest, 0)
    needed = memory.budget("fp32", (1, 4, 16)).total
    usable = memory.budget("int8", (1, 4, 16)).total  # int8 fits, fp16 (more weight bytes) does not
    assert memory.budget("fp16", (1, 4, 16)).total > usable >= memory.budget("fp32", (1, 4, 8)).total
    board = Target("tiny-board", "a tiny test board", "10.3", 9, 20, TRT_PRECISIONS, usable / GiB, 0.0)
    request = BuildRequest(tiny_bundle, "fp32", (1, 4, 16), 0.0, None, board)
    with pytest.raises(ValueError, match="too large") as refused:
        preflight(request, manifest)
    message = str(refused.value)
    assert f"{gib(needed)} GiB (weights" in message and f"{gib(usable)} GiB usable on a tiny test board" in message
    assert "--precision int8" in message and "--batch 1 4 8 at fp32" in message
    assert "--precision fp16" not in message


def test_the_cli_prints_one_row_per_precision_and_board(tiny_bundle, capsys):
    assert main([str(tiny_bundle), "--batch", "1", "4", "8", "--workspace", "0.5"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "--batch 1 4 8, --workspace 0.5 GiB" in lines[0]
    rows = [line.split() for line in lines[2:]]
    assert [(row[0], row[6]) for row in rows] == list(itertools.product(TRT_PRECISIONS, [b.name for b in ORIN_BOARDS]))
    assert all(row[3] == "0.500" and row[8] == "yes" and row[9] == "16" for row in rows)


def test_a_dequantized_weight_counts_no_activation_memory_as_trt_folds_it_into_its_matmul():
    import numpy as np

    nodes = [
        helper.make_node("DequantizeLinear", ["w8", "scale"], ["w"]),  # [64, 64] f32, 16 KiB if it existed
        helper.make_node("MatMul", ["x", "w"], ["y"]),  # [2, 64], 512 B
    ]
    weights = [numpy_helper.from_array(np.ones((64, 64), np.int8), "w8")]
    weights.append(numpy_helper.from_array(np.float32(1), "scale"))
    graph = helper.make_graph(
        nodes,
        "folded",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 64])],
        weights,
    )
    memory = graph_memory(helper.make_model(graph), {"x": (2, 64)})
    assert (memory.activations, memory.tensors, memory.unknown) == (512 + 512, 2, 0)

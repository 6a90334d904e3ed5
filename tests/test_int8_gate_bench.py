"""bench.int8_gate counts an int8 graph's MatMul weights by what they are stored as."""

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from bench.int8_gate import float_share
from export.precision import stream_qdq

DIM, LAYERS = 16, 12  # one weight of 12 fits the 10% float budget


def test_float_share_counts_the_matmuls_int8_kept_in_float(tmp_path):
    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(rng.normal(size=(DIM, DIM)).astype(np.float32), f"w{i}") for i in range(LAYERS)]
    values = ["x", *(f"h{i}" for i in range(LAYERS - 1)), "y"]
    nodes = [helper.make_node("MatMul", [values[i], f"w{i}"], [values[i + 1]], name=f"m{i}") for i in range(LAYERS)]
    graph = helper.make_graph(
        nodes,
        "chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", DIM])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", DIM])],
        weights,
    )
    src, dst = tmp_path / "chain.onnx", tmp_path / "int8.onnx"
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.save(model, str(src), save_as_external_data=True, location="chain.onnx.data", size_threshold=0)
    feeds = [{"x": rng.normal(size=(8, DIM)).astype(np.float32)} for _ in range(2)]
    kept = stream_qdq(src, dst, feeds, alpha=None)
    share = float_share(dst)
    assert len(kept) == 1
    assert (share["float_matmuls"], share["int8_matmuls"]) == (1, LAYERS - 1)
    assert share["float_weight_share"] == 1 / LAYERS

"""Reading an ONNX graph's MatMul weights one at a time, and the symmetric int8 grid every int8 path shares.

Used by the quantizers (`export.precision`) and by the int8 sensitivity measure (`export.int8_sensitivity`), which
must round weights exactly as the quantizer will.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper


def external_array(tensor: onnx.TensorProto, folder: Path) -> np.ndarray:
    """A read-only memory map of one externally stored tensor: its bytes are read only when used."""
    info = {entry.key: entry.value for entry in tensor.external_data}
    dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)
    return np.memmap(folder / info["location"], dtype, "r", int(info.get("offset", 0)), tuple(tensor.dims))


def float_weight(tensor: onnx.TensorProto, folder: Path) -> np.ndarray:
    """A weight as float32, memory-mapped when stored beside the graph (`folder`), else from the graph itself."""
    data = external_array(tensor, folder) if tensor.data_location else numpy_helper.to_array(tensor)
    return np.asarray(data, np.float32)


def weight_matmuls(graph: onnx.GraphProto) -> dict[str, onnx.TensorProto]:
    """MatMul output name -> its 2-D weight, for weights no other node reads (tied weights stay float)."""
    weights = {t.name: t for t in graph.initializer}
    readers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    found = {}
    for node in graph.node:
        weight = weights.get(node.input[1]) if node.op_type == "MatMul" else None
        if weight is not None and len(weight.dims) == 2 and readers[weight.name] == 1:
            found[node.output[0]] = weight
    return found


def int8_columns(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 per output column: the weight in int8 and one fp32 scale per column."""
    peak = np.abs(weight).max(axis=0)
    scale = np.where(peak > 0, peak / 127, 1).astype(np.float32)
    return np.clip(np.rint(weight / scale), -127, 127).astype(np.int8), scale

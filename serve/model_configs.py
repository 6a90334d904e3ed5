"""Triton `config.pbtxt` files built as the model-config protobuf that tritonclient ships, never as text templates.

Building the message is what validates it: a misspelt field or a wrong type
raises here, and `read_config` parses a written file back with the same
protobuf, which is how Triton reads it. agff-serve and `export.to_triton`
both write their configs through here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from agff_deploy.atomic_files import write_atomically
from agff_deploy.contract import TensorSpec
from agff_deploy.errors import ArtifactError

CONFIG_FILE = "config.pbtxt"
TRITON_DTYPES = {
    "float32": mc.TYPE_FP32,
    "float16": mc.TYPE_FP16,
    "int64": mc.TYPE_INT64,
    "int32": mc.TYPE_INT32,
    "bool": mc.TYPE_BOOL,
    "bytes": mc.TYPE_STRING,
}


@dataclass(frozen=True)
class Tensor:
    """A model input or output as Triton sees it: dims exclude the batch dimension when the model batches."""

    name: str
    dtype: str  # a key of TRITON_DTYPES
    dims: tuple[int, ...]  # -1 for a dimension that varies per request
    optional: bool = False


def tensor_of(spec: TensorSpec, batched: bool, sizes: Mapping[str, int] | None = None) -> Tensor:
    """The graph contract's tensor for Triton; a batching model drops the leading axis.

    A named dimension is -1 unless `sizes` fixes it: a preprocess model pads to one length, and Triton compares a
    config's output dims exactly with a graph whose export fixed them."""
    dims = tuple(d if isinstance(d, int) else (sizes or {}).get(d, -1) for d in spec.shape)
    return Tensor(spec.name, spec.dtype, dims[1:] if batched else dims)


@dataclass(frozen=True)
class Batching:
    max_batch_size: int
    max_queue_delay_us: int


def model_config(
    name: str,
    inputs: Sequence[Tensor],
    outputs: Sequence[Tensor],
    batching: Batching | None,
    *,
    backend: str = "",
    platform: str = "",
    instances: int = 1,
    kind: str = "KIND_CPU",
    parameters: Mapping[str, str] | None = None,
    default_model_filename: str = "",
) -> mc.ModelConfig:
    config = mc.ModelConfig(name=name, backend=backend, platform=platform)
    if default_model_filename:
        config.default_model_filename = default_model_filename
    if batching is not None:
        config.max_batch_size = batching.max_batch_size
        config.dynamic_batching.max_queue_delay_microseconds = batching.max_queue_delay_us
    for tensor in inputs:
        config.input.add(
            name=tensor.name, data_type=TRITON_DTYPES[tensor.dtype], dims=tensor.dims, optional=tensor.optional
        )
    for tensor in outputs:
        config.output.add(name=tensor.name, data_type=TRITON_DTYPES[tensor.dtype], dims=tensor.dims)
    if platform != "ensemble":
        config.instance_group.add(count=instances, kind=mc.ModelInstanceGroup.Kind.Value(kind))
    for key, value in (parameters or {}).items():
        config.parameters[key].string_value = value
    return config


def write_config(model_folder: Path, config: mc.ModelConfig) -> Path:
    path = model_folder / CONFIG_FILE
    text = text_format.MessageToString(config).encode()
    write_atomically(path, lambda f: f.write(text))
    return path


def read_config(path: Path) -> mc.ModelConfig:
    """A config.pbtxt parsed by the model-config protobuf, or an error naming the file and what is wrong."""
    try:
        return text_format.Parse(path.read_text(), mc.ModelConfig())
    except text_format.ParseError as err:
        raise ArtifactError(f"{path}: not a valid Triton model config ({err})") from err

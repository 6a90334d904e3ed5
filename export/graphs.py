"""The three stored graphs and the dynamo export that writes them.

Each wrapper is a thin `nn.Module` over the very `AGFFEmbedder` the trainer
optimised, so the graphs are the model: the vision encoder is the vision tower
on a batch axis; the language encoder is the whole multi-prompt pass (token
lookup, image-feature merge, M-RoPE, K+1 prompts on one shared prefix,
last-token pooling, normalisation) for text and image items alike, so the
language model and its embedding table are stored once.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import onnx
import torch
from torch import nn

from agff_deploy.contract import GraphSpec
from agff_deploy.manifest import ExternalData
from agff_deploy.model import AGFFEmbedder
from agff_deploy.similarity import fused_similarity

# torch.onnx logs a warning per torchvision op it cannot register; we export none of them.
logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)

# Above this many parameter bytes a graph's weights go to external data (protobuf's 2 GB limit).
EXTERNAL_DATA_BYTES = 1_800_000_000


class VisionEncoderGraph(nn.Module):
    """patches `[B, P, 3*p*p]` float32 + patch grids `[B, 2]` -> image features `[B, P/4, D]` float32 (the language
    encoder's input), and with DeepStack its taps `[B, S, P/4, D]` float32."""

    def __init__(self, model: AGFFEmbedder) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor, image_grid: torch.Tensor):
        dtype = next(self.model.parameters()).dtype
        features, deepstack = self.model.image_tokens(pixel_values.to(dtype), image_grid)
        return features.float() if deepstack is None else (features.float(), deepstack.float())


class LanguageEncoderGraph(nn.Module):
    """chat tokens `[B, L]` + image features `[B, T, D]` float32, patch grids `[B, 2]` (unused for text) and, with
    DeepStack, the taps `[B, S, T, D]` float32 -> `[B, K+1, D]`."""

    def __init__(self, model: AGFFEmbedder) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        image_features: torch.Tensor,
        image_grid: torch.Tensor,
        deepstack_features: torch.Tensor | None = None,
    ):
        dtype = next(self.model.parameters()).dtype
        deepstack = None if deepstack_features is None else deepstack_features.to(dtype)
        return self.model.encode_tokens(input_ids, attention_mask, image_features.to(dtype), image_grid, deepstack)


class ScorerGraph(nn.Module):
    """queries `[Nq, K+1, D]`, candidates `[Nc, K+1, D]` -> fused similarity `[Nq, Nc]` (always fp32)."""

    def __init__(self, model: AGFFEmbedder) -> None:
        super().__init__()
        fusion = model.fusion
        self.t_in = fusion.t_in
        self.t_f = float(fusion.t_f.detach())
        self.register_buffer("bias", fusion.pattern_bias.detach().float().clone())

    def forward(self, queries: torch.Tensor, candidates: torch.Tensor):
        return fused_similarity(queries, candidates, self.t_in, self.t_f, self.bias)


def export_graph(
    module: nn.Module,
    spec: GraphSpec,
    example: tuple[torch.Tensor, ...],
    path: Path,
    opset: int,
    dims: dict[str, tuple[int, int]],
    external_data_bytes: int = EXTERNAL_DATA_BYTES,
) -> Path:
    """`torch.onnx.export(dynamo=True)` of `module` as the contract `spec` names its tensors and dynamic axes; `dims`
    gives each dynamic axis's (min, max).

    Past `external_data_bytes` of weights the tensors go to `<file>.onnx.data` beside the graph,
    referenced by a relative path, so the pair can be copied anywhere and still load.
    """
    torch_dims = {d: torch.export.Dim(d, min=lo, max=hi) for d, (lo, hi) in dims.items()}
    dynamic_shapes = {
        arg: {axis: torch_dims[d] for axis, d in axes.items()} for arg, axes in spec.dynamic_axes().items()
    }
    weight_bytes = sum(p.numel() * p.element_size() for p in module.parameters())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module.eval(),
            example,
            str(path),
            dynamo=True,
            opset_version=opset,
            input_names=list(spec.input_names),
            output_names=list(spec.output_names),
            dynamic_shapes=dynamic_shapes,
            external_data=weight_bytes > external_data_bytes,
            verbose=False,
        )
    return path


def external_data_entries(bundle: Path, path: Path) -> tuple[ExternalData, ...]:
    """The manifest's record of a graph's external-data files: path inside the bundle and size."""
    return tuple(ExternalData(str(data.relative_to(bundle)), data.stat().st_size) for data in external_data_files(path))


def external_data_files(path: Path) -> list[Path]:
    """The external-data files a graph references, resolved beside it (its weights are not read)."""
    model = onnx.load(str(path), load_external_data=False)
    locations = {
        entry.value
        for tensor in model.graph.initializer
        if tensor.data_location == onnx.TensorProto.EXTERNAL
        for entry in tensor.external_data
        if entry.key == "location"
    }
    return [path.parent / location for location in sorted(locations)]

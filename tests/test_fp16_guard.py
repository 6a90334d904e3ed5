"""fp16 guard: measured activation ranges decide which modules an fp16 export keeps in fp32."""

import ast
import copy
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto

from export.fp16_guard import (
    FP16_MAX,
    FP16_SAFE_LIMIT,
    ActivationRange,
    Fp16RangeError,
    activation_ranges,
    cast_fp16_except,
    find_fp32_modules,
    fp32_modules,
)
from tests.conftest import scene_images

# An outlier channel between an MLP's up and down projections, as real Qwen2.5-VL has in its last vision block:
# (MLP, projection that makes the channel, projection that brings it back). The tiny model has one vision block.
SITES = {
    "vision": ("mllm.visual.blocks.0.mlp", "fc1", "fc2"),
    "language": ("mllm.language_model.layers.1.mlp", "up_proj", "down_proj"),
}
OUTLIER_SCALE = 4e6  # lifts the channel from ~0.3 to ~1e6, 15x past fp16's max
CHANNEL = 5
BAR = 0.999  # the contract's fp16 parity bar


def with_outlier(model: torch.nn.Module, site: str) -> torch.nn.Module:
    """A copy of `model` whose `site` MLP has one channel scaled up by the first projection and back down by the
    second: huge in between, an ordinary MLP output (exactly the same function for the language MLP's up_proj)."""
    mlp_name, up_name, down_name = SITES[site]
    outlier = copy.deepcopy(model)
    mlp = outlier.get_submodule(mlp_name)
    up, down = getattr(mlp, up_name), getattr(mlp, down_name)
    with torch.no_grad():
        up.weight[CHANNEL] *= OUTLIER_SCALE
        if up.bias is not None:
            up.bias[CHANNEL] *= OUTLIER_SCALE
        down.weight[:, CHANNEL] /= OUTLIER_SCALE
    return outlier


@pytest.fixture(scope="module")
def input_sets(encoder):
    """Two image sets (different scenes and prompts) and one text set, as numpy feeds."""
    size = encoder.preprocessor.height
    return {
        "images": encoder.feeds(["", "", "", ""], scene_images(4, size)),
        "images+questions": encoder.feeds(
            ["what colour is the object?", "how many objects are there?", "", "what is at the left?"],
            scene_images(4, size, first=4),
        ),
        "texts": encoder.feeds(["a red circle", "two small blue filled squares at the left", "a green triangle"]),
    }


def embed(model: torch.nn.Module, feeds: dict[str, np.ndarray]) -> torch.Tensor:
    with torch.no_grad():
        return model(**{name: torch.from_numpy(value) for name, value in feeds.items()}).float()


def min_cosine(out: torch.Tensor, ref: torch.Tensor) -> float:
    return F.cosine_similarity(out, ref, dim=-1).min().item()


def test_threshold_leaves_a_factor_of_four_below_fp16_max():
    assert FP16_SAFE_LIMIT == FP16_MAX / 4
    ranges = {
        "block": ActivationRange(1.0, 1.0),
        "block.mlp": ActivationRange(1.0, 1.0),
        "block.mlp.up": ActivationRange(1.0, 2.0e4),  # fits fp16, but within 4x of overflow
        "other": ActivationRange(1.0, 1.0),
        "other.mlp": ActivationRange(1.0, 1.0),
        "other.mlp.up": ActivationRange(1.0, 1.0e4),
    }
    assert fp32_modules(ranges) == ["block.mlp"]
    assert fp32_modules(ranges, limit=FP16_MAX) == []


def test_island_grows_to_the_nearest_module_whose_boundaries_fit_fp16():
    ranges = {
        "layers.0": ActivationRange(1.0, 1.0),
        "layers.0.mlp": ActivationRange(1.0, 3.0e4),  # its output would overflow at the cast back
        "layers.0.mlp.up": ActivationRange(1.0, 1.0e6),
        "layers.0.mlp.down": ActivationRange(1.0e6, 3.0e4),
    }
    assert fp32_modules(ranges) == ["layers.0"]


def test_overflowing_residual_stream_has_no_fp32_island():
    ranges = {
        "lm": ActivationRange(1.0, 1.0),
        "lm.layers.0": ActivationRange(1.0, 1.0e6),
        "lm.layers.1": ActivationRange(1.0e6, 1.0),
    }
    assert fp32_modules(ranges) == ["lm"]
    with pytest.raises(Fp16RangeError, match="lm.layers.0"):
        fp32_modules({"lm.layers.0": ActivationRange(1.0, 1.0e6)})


def test_clean_model_keeps_nothing_in_fp32(tiny_model, input_sets):
    ranges = activation_ranges(tiny_model, list(input_sets.values()))
    assert fp32_modules(ranges) == []
    # attention masks (dtype min by design) are not counted: every measured value is ordinary
    assert max(r.peak for r in ranges.values()) < 100
    assert "mllm.visual.blocks.0.mlp.fc1" in ranges and "mllm.language_model.layers.1.mlp" in ranges
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in tiny_model.modules())


@pytest.mark.parametrize("site", sorted(SITES))
def test_outlier_channel_is_flagged_at_its_mlp_and_nowhere_else(tiny_model, input_sets, site):
    mlp_name, up_name, down_name = SITES[site]
    model = with_outlier(tiny_model, site)
    ranges = activation_ranges(model, list(input_sets.values()))
    assert ranges[f"{mlp_name}.{up_name}"].output_max > 5e5
    assert ranges[f"{mlp_name}.{down_name}"].input_max > FP16_SAFE_LIMIT
    assert ranges[mlp_name].peak < 100
    assert fp32_modules(ranges) == [mlp_name]
    assert find_fp32_modules(model, list(input_sets.values())) == [mlp_name]


def split_graph_feeds(model: torch.nn.Module, feeds: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
    """The vision encoder's feed and the language encoder's feed for one batch of image items."""
    vision = {name: feeds[name] for name in ("pixel_values", "image_grid")}
    with torch.no_grad():
        features, _ = model.image_tokens(*(torch.from_numpy(v) for v in vision.values()))
    tokens = {name: feeds[name] for name in ("input_ids", "attention_mask", "image_grid")}
    return [vision, {**tokens, "image_features": features.numpy()}]


@pytest.mark.parametrize("site", sorted(SITES))
def test_split_graph_feeds_and_a_callable_flag_the_same_module(tiny_model, input_sets, site):
    model = with_outlier(tiny_model, site)
    feeds = input_sets["images+questions"]
    assert find_fp32_modules(model, split_graph_feeds(model, feeds)) == [SITES[site][0]]
    assert find_fp32_modules(model, lambda m: embed(m, feeds)) == [SITES[site][0]]


@pytest.mark.parametrize("site", sorted(SITES))
def test_fp16_overflows_without_guard_and_matches_fp32_with_it(tiny_model, input_sets, site):
    model = with_outlier(tiny_model, site)
    reference = {name: embed(model, feeds) for name, feeds in input_sets.items()}
    keep = find_fp32_modules(model, list(input_sets.values()))
    plain = copy.deepcopy(model).half()
    guarded = copy.deepcopy(model)
    assert cast_fp16_except(guarded, keep) == [SITES[site][0]]
    through_site = [name for name in input_sets if site == "language" or name.startswith("images")]
    assert len(through_site) >= 2
    for name in through_site:
        out = embed(plain, input_sets[name])
        assert not torch.isfinite(out).all() or min_cosine(out, reference[name]) < BAR, name
    for name, feeds in input_sets.items():
        out = embed(guarded, feeds)
        assert torch.isfinite(out).all(), name
        assert min_cosine(out, reference[name]) >= BAR, name


def test_kept_modules_keep_their_exact_fp32_weights(tiny_model):
    model = with_outlier(tiny_model, "language")
    mlp_name = SITES["language"][0]
    before = {k: v.clone() for k, v in model.get_submodule(mlp_name).state_dict().items()}
    cast_fp16_except(model, [mlp_name])
    after = model.get_submodule(mlp_name).state_dict()
    assert all(after[k].dtype == torch.float32 and torch.equal(after[k], v) for k, v in before.items())
    assert model.mllm.language_model.layers[0].mlp.up_proj.weight.dtype == torch.float16
    assert model.mllm.visual.blocks[0].mlp.fc1.weight.dtype == torch.float16


class ImageGraph(torch.nn.Module):
    """The image encoder's inputs (fp32 pixels) on an fp16 model, as export.graphs.ImageEncoderGraph traces."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values, image_grid, input_ids, attention_mask):
        return self.model(input_ids, attention_mask, pixel_values.half(), image_grid)


def weight_matmul_scopes(graph: onnx.ModelProto) -> dict[str, int]:
    """name scope of each MatMul/Gemm with a weight initializer -> that weight's ONNX element type."""
    weights = {init.name: init.data_type for init in graph.graph.initializer}
    found = {}
    for node in graph.graph.node:
        if node.op_type in ("MatMul", "Gemm") and node.input[1] in weights:
            meta = {p.key: p.value for p in node.metadata_props}
            scope = ast.literal_eval(meta["pkg.torch.onnx.name_scopes"])[-2]  # the Linear's module name
            found[scope] = weights[node.input[1]]
    return found


def test_guarded_fp16_graph_runs_the_kept_mlp_in_fp32(tiny_model, input_sets, tmp_path):
    model = with_outlier(tiny_model, "vision")
    feeds = input_sets["images+questions"]
    reference = embed(model, feeds)
    keep = cast_fp16_except(model, find_fp32_modules(model, [input_sets["images"]]))
    path = tmp_path / "image_encoder.onnx"
    names = ["pixel_values", "image_grid", "input_ids", "attention_mask"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            ImageGraph(model).eval(),
            tuple(torch.from_numpy(feeds[n]) for n in names),
            str(path),
            dynamo=True,
            opset_version=18,
            input_names=names,
            output_names=["embeddings"],
            verbose=False,
        )
    scopes = weight_matmul_scopes(onnx.load(str(path)))
    kept = {scope for scope, dtype in scopes.items() if dtype == TensorProto.FLOAT}
    assert kept == {f"model.{keep[0]}.fc1", f"model.{keep[0]}.fc2"}
    assert {dtype for scope, dtype in scopes.items() if scope not in kept} == {TensorProto.FLOAT16}
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = torch.from_numpy(session.run(None, {n: feeds[n] for n in names})[0]).float()
    assert torch.isfinite(out).all()
    assert min_cosine(out, reference) >= BAR


def export_outlier_bundle(checkpoint, out, monkeypatch, guard: bool):
    """The tiny checkpoint with a vision outlier channel, exported at fp32 and fp16 (the guard off if not `guard`)."""
    from agff_deploy.checkpoint import item_encoder, load_checkpoint
    from export import bundle
    from export.targets import get_target

    if not guard:
        monkeypatch.setattr(bundle, "find_fp32_modules", lambda model, feeds: [])
    model, tokenizer = load_checkpoint(checkpoint)
    model = with_outlier(model, "vision")
    options = bundle.ExportOptions(precisions=("fp32", "fp16"), batch=(1, 4, 16), agreement_pairs=0)
    builder = bundle.BundleBuilder(model, item_encoder(model.config, tokenizer), checkpoint, options, log=print)
    return builder.build(out, get_target("generic"))


def test_an_outlier_channel_fails_the_fp16_gate_without_the_guard(tiny_checkpoint, tmp_path, monkeypatch):
    report = export_outlier_bundle(tiny_checkpoint, tmp_path / "bundle", monkeypatch, guard=False)
    assert report.trusted and report.failed_precisions() == ["fp16"]


def test_the_guard_keeps_the_outlier_mlp_in_fp32_and_fp16_passes_the_gate(tiny_checkpoint, tmp_path, monkeypatch):
    from agff_deploy.manifest import read_manifest

    report = export_outlier_bundle(tiny_checkpoint, tmp_path / "bundle", monkeypatch, guard=True)
    assert report.passed, report.table()
    manifest = read_manifest(tmp_path / "bundle")
    assert manifest.kept_in_float == {"fp16": ("mllm.visual.blocks.0.mlp",)}
    rows = [r for r in manifest.parity.rows if r.precision == "fp16"]
    assert rows and all(r.min_cosine >= BAR for r in rows)

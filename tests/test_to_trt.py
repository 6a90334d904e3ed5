"""The TensorRT engine builder: pre-flight checks everywhere, real builds where TensorRT and a GPU exist."""

import importlib.util
import json

import pytest

from agff_deploy.manifest import read_manifest
from export.targets import get_target
from export.to_trt import (
    ENGINE_FILES,
    BuildRequest,
    build_bundle_engines,
    check_memory,
    main,
    preflight,
    profile_shapes,
    tensorrt_version,
)


def has_tensorrt_gpu() -> bool:
    if importlib.util.find_spec("tensorrt") is None:
        return False
    try:
        tensorrt_version()
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


def request(bundle, **kw):
    values = {
        "precision": "fp16",
        "batch": (1, 4, 8),
        "workspace_gb": 1.0,
        "timing_cache": None,
        "target": get_target("generic"),
    }
    return BuildRequest(bundle, **{**values, **kw})


def test_without_tensorrt_the_builder_says_where_and_how_to_build(tiny_bundle, capsys):
    if has_tensorrt_gpu():
        pytest.skip("TensorRT is installed here")
    assert main([str(tiny_bundle)]) == 3
    err = capsys.readouterr().err
    assert "TensorRT is not installed here" in err and "python -m export.to_trt BUNDLE" in err


def test_profiles_span_the_manifest_dims(tiny_bundle):
    manifest = read_manifest(tiny_bundle)
    shapes = profile_shapes(manifest, "image_encoder", (1, 4, 8))
    length = manifest["dims"]["image_length"]
    assert shapes["pixel_values"] == ((1, 3, 56, 56), (4, 3, 56, 56), (8, 3, 56, 56))
    assert shapes["input_ids"][0] == (1, length["min"]) and shapes["input_ids"][2] == (8, length["max"])
    assert set(profile_shapes(manifest, "text_encoder", (1, 4, 8))) == {"input_ids", "attention_mask"}
    assert profile_shapes(manifest, "scorer", (1, 4, 8))["candidates"][2][0] == 65536


def test_preflight_refuses_a_batch_outside_the_exported_range(tiny_bundle):
    with pytest.raises(ValueError, match="within the bundle's exported batch range 1..16"):
        preflight(request(tiny_bundle, batch=(1, 8, 32)), read_manifest(tiny_bundle))


def test_preflight_refuses_a_precision_the_bundle_or_target_lacks(tiny_bundle):
    with pytest.raises(ValueError, match="--precision int8-dynamic cannot build"):
        preflight(request(tiny_bundle, precision="int8-dynamic"), read_manifest(tiny_bundle))


def test_preflight_returns_the_graphs_to_build_for_a_jetson(tiny_bundle):
    paths = preflight(request(tiny_bundle, target=get_target("jetson-orin-jp6")), read_manifest(tiny_bundle))
    assert [p.name for p in paths] == ["image_encoder.onnx", "text_encoder.onnx", "scorer.onnx"]


def test_memory_check_notes_a_build_that_fits_and_refuses_one_that_does_not(tiny_bundle):
    manifest = read_manifest(tiny_bundle)
    assert "GiB usable on any NVIDIA GPU" in check_memory(request(tiny_bundle), manifest, 8 * 2**30)
    with pytest.raises(ValueError, match="too large: fp16 engines need about 1.0"):
        check_memory(request(tiny_bundle), manifest, 2**30)


@pytest.mark.tensorrt
@pytest.mark.skipif(not has_tensorrt_gpu(), reason="needs TensorRT and a CUDA GPU")
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_engines_build_and_the_manifest_records_them(tmp_path, tiny_bundle, precision):
    import shutil

    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    cache = tmp_path / "timing.cache"
    engines = build_bundle_engines(request(bundle, precision=precision, timing_cache=cache))
    assert cache.is_file()
    assert {e["file"] for e in engines["graphs"].values()} == set(ENGINE_FILES.values())
    assert (bundle / "model.plan").stat().st_size > 0
    recorded = json.loads((bundle / "manifest.json").read_text())["engines"]
    assert recorded["precision"] == precision and recorded["tensorrt"] == tensorrt_version()

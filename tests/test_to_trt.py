"""The TensorRT engine builder: pre-flight checks everywhere, real builds where TensorRT and a GPU exist."""

import dataclasses
import importlib.abc
import importlib.util
import json
import shutil
import sys

import numpy as np
import onnx
import pytest

from agff_deploy.errors import EXIT_STATUS, MissingDependencyError
from agff_deploy.manifest import read_manifest, sha256_file, write_manifest
from export.targets import get_target
from export.to_trt import (
    MEMORY_CHECK_SKIPPED,
    BuildRequest,
    TensorRTMissing,
    build_bundle_engines,
    check_memory,
    main,
    preflight,
    tensorrt_version,
)
from export.trt_profiles import ENGINE_FILES, profile_shapes
from runtime.cuda import cudart
from runtime.embedder import Embedder
from runtime.runner import ArtifactMismatch
from tests import fake_tensorrt

CUDA_ERROR_NO_DEVICE = 100  # cudaErrorNoDevice: the driver runs and sees no GPU


def has_tensorrt_gpu() -> bool:
    """Whether the real builds can run here. Only an absent TensorRT (no module, or the stubs' library-less
    namespace), an absent cuda-python, or CUDA's "no device" answer skip them: a TensorRT that is installed but fails
    to import, or any other CUDA error, raises, so a broken install fails the run instead of skipping its builds."""
    if importlib.util.find_spec("tensorrt") is None:
        return False
    try:
        tensorrt_version()
    except TensorRTMissing as err:
        if err.__cause__ is not None:
            raise  # the module is there and its import failed
        return False
    try:
        runtime = cudart()
    except MissingDependencyError:  # cuda-python is not installed
        return False
    error, count = runtime.cudaGetDeviceCount()
    if int(error) == CUDA_ERROR_NO_DEVICE:
        return False
    if int(error) != 0:
        raise RuntimeError(f"CUDA error {error} asking for the device count: TensorRT is installed, CUDA is broken")
    return count > 0


@pytest.fixture
def tensorrt_here(monkeypatch):
    """TensorRT, cuda-python and one GPU, faked; a test takes one of them away or breaks it."""
    fake_tensorrt.install(monkeypatch)
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: object() if name == "tensorrt" else find_spec(name, *a)
    )


def test_tensorrt_and_a_gpu_are_found_with_the_calls_the_builder_makes(tensorrt_here):
    assert has_tensorrt_gpu()


@pytest.mark.parametrize("absent", ["tensorrt", "library", "gpu"])
def test_only_an_absent_tensorrt_or_gpu_skips_the_real_builds(tensorrt_here, monkeypatch, absent):
    if absent == "tensorrt":
        monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    elif absent == "library":  # tensorrt-stubs: a `tensorrt` namespace without the library
        monkeypatch.delattr(sys.modules["tensorrt"], "Builder")
    else:
        runtime = sys.modules["cuda.bindings.runtime"]
        monkeypatch.setattr(runtime, "cudaGetDeviceCount", lambda: (CUDA_ERROR_NO_DEVICE, 0))
    assert not has_tensorrt_gpu()


class FailingImport(importlib.abc.MetaPathFinder):
    """`import tensorrt` raises `error`, as an installed TensorRT whose shared library is broken does."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    def find_spec(self, name, path=None, target=None):
        if name == "tensorrt":
            raise self.error
        return None


@pytest.mark.parametrize(
    ("error", "raised"),
    [
        (ImportError("libnvinfer.so.10: cannot open shared object file"), TensorRTMissing),
        (OSError("libcudart.so.12: undefined symbol"), OSError),
    ],
)
def test_a_tensorrt_that_fails_to_import_raises_instead_of_skipping_the_real_builds(
    tensorrt_here, monkeypatch, error, raised
):
    monkeypatch.delitem(sys.modules, "tensorrt")
    monkeypatch.setattr(sys, "meta_path", [FailingImport(error), *sys.meta_path])
    with pytest.raises(raised) as caught:
        has_tensorrt_gpu()
    assert caught.value is error or caught.value.__cause__ is error


def test_a_cuda_error_other_than_no_device_raises_instead_of_skipping_the_real_builds(tensorrt_here, monkeypatch):
    monkeypatch.setattr(sys.modules["cuda.bindings.runtime"], "cudaGetDeviceCount", lambda: (35, 0))
    with pytest.raises(RuntimeError, match="CUDA error 35 asking for the device count"):
        has_tensorrt_gpu()


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
    vision = profile_shapes(manifest, "vision_encoder", (1, 4, 8))
    assert vision == {
        "pixel_values": ((1, 16, 588), (4, 16, 588), (8, 16, 588)),
        "image_grid": ((1, 2), (4, 2), (8, 2)),
    }
    language = profile_shapes(manifest, "language_encoder", (1, 4, 8))
    text, image, tokens = manifest.dims.text_length, manifest.dims.image_length, manifest.image.num_image_tokens
    assert language["input_ids"][0] == (1, text.min) and language["input_ids"][2] == (8, image.max)
    assert language["image_features"] == ((1, 1, 32), (4, tokens, 32), (8, tokens, 32))
    assert profile_shapes(manifest, "scorer", (1, 4, 8))["candidates"][2][0] == 4096


def test_native_resolution_profiles_span_one_merge_block_to_the_most_patches_an_image_gives(tiny_bundle):
    manifest = read_manifest(tiny_bundle)
    native = dataclasses.replace(manifest, image=dataclasses.replace(manifest.image, resize="native"))
    vision = profile_shapes(native, "vision_encoder", (1, 4, 8))
    assert vision["pixel_values"] == ((1, 4, 588), (4, 8, 588), (8, 16, 588))
    assert profile_shapes(native, "language_encoder", (1, 4, 8))["image_features"] == (
        (1, 1, 32),
        (4, 2, 32),
        (8, 4, 32),
    )


def test_preflight_refuses_a_batch_outside_the_exported_range(tiny_bundle):
    with pytest.raises(ValueError, match="within the bundle's exported batch range 1..16"):
        preflight(request(tiny_bundle, batch=(1, 8, 32)), read_manifest(tiny_bundle))


def test_preflight_refuses_a_precision_the_bundle_or_target_lacks(tiny_bundle):
    with pytest.raises(ValueError, match="--precision int8-dynamic cannot build"):
        preflight(request(tiny_bundle, precision="int8-dynamic"), read_manifest(tiny_bundle))


def test_preflight_returns_the_graphs_to_build_for_a_jetson(tiny_bundle):
    paths = preflight(request(tiny_bundle, target=get_target("jetson-orin-jp6")), read_manifest(tiny_bundle))
    assert [p.name for p in paths] == ["vision_encoder.onnx", "language_encoder.onnx", "scorer.onnx"]


def test_memory_check_notes_a_build_that_fits_and_refuses_one_that_does_not_naming_the_way_past(tiny_bundle):
    manifest = read_manifest(tiny_bundle)
    assert "GiB usable on any NVIDIA GPU" in check_memory(request(tiny_bundle), manifest, 8 * 2**30)
    with pytest.raises(ValueError, match="too large: fp16 engines need about 1.0.*--skip-memory-check builds anyway"):
        check_memory(request(tiny_bundle), manifest, 2**30)


@pytest.mark.tensorrt
@pytest.mark.skipif(not has_tensorrt_gpu(), reason="needs TensorRT and a CUDA GPU")
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_engines_build_and_the_manifest_records_them(tmp_path, tiny_bundle, precision):
    import shutil

    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    cache = tmp_path / "timing.cache"
    build = build_bundle_engines(request(bundle, precision=precision, timing_cache=cache))
    assert build.report.passed, build.report.table()
    assert cache.is_file()
    assert {e.file for e in build.engines.graphs.values()} == set(ENGINE_FILES.values())
    assert (bundle / "model.plan").stat().st_size > 0
    recorded = json.loads((bundle / "manifest.json").read_text())["engines"]
    assert recorded["precision"] == precision and recorded["tensorrt"] == tensorrt_version()


FAKE_BUILD = ["--batch", "1", "4", "8"]


def built_with_fakes(monkeypatch, source, folder, precision, scale=1.0, flags=()):
    """`python -m export.to_trt` on a copy of `source`, with TensorRT and cuda-python faked: (exit status, copy)."""
    fake_tensorrt.install(monkeypatch)
    monkeypatch.setattr(fake_tensorrt.Build, "scale", scale)
    bundle = folder / "bundle"
    shutil.copytree(source, bundle)
    return main([str(bundle), "--precision", precision, *FAKE_BUILD, *flags]), bundle


@pytest.fixture
def fp32_engines(monkeypatch, tmp_path, tiny_bundle, capsys):
    """A copy of the tiny bundle with faithful fp32 engines built (and gated) by the fake TensorRT."""
    code, bundle = built_with_fakes(monkeypatch, tiny_bundle, tmp_path, "fp32")
    return code, bundle, capsys.readouterr()


def test_engines_that_pass_the_gate_are_put_in_place_and_recorded(fp32_engines):
    code, bundle, printed = fp32_engines
    assert code == 0
    engines = read_manifest(bundle).engines
    assert (engines.precision, engines.tensorrt, engines.gpu) == ("fp32", fake_tensorrt.VERSION, fake_tensorrt.GPU)
    for name, entry in engines.graphs.items():
        assert entry.file == ENGINE_FILES[name] and sha256_file(bundle / entry.file) == entry.sha256
    assert not list(bundle.glob(".*.tmp-*"))
    assert "built vision.plan, model.plan, scorer.plan with TensorRT 10.3.0 on Fake GPU" in printed.out


def test_the_gate_holds_each_engine_pipeline_to_the_recorded_pytorch_outputs_under_its_bar(fp32_engines):
    _, bundle, printed = fp32_engines
    pipelines = ("image_encoder", "text_encoder", "scorer")
    rows = [row for row in map(str.split, printed.out.splitlines()) if row[:1] == ["fp32"] and row[1] in pipelines]
    assert [(row[1], row[2], row[5], row[-1]) for row in rows] == [
        (graph, inputs, "cos>=0.99999", "pass") for graph in pipelines for inputs in ("A", "B")
    ]


def test_engines_are_gated_on_the_device_without_the_fp32_graphs(monkeypatch, tmp_path, tiny_bundle):
    device = tmp_path / "device"
    shutil.copytree(tiny_bundle, device)
    shutil.rmtree(device / "fp32")
    manifest = read_manifest(device)
    write_manifest(device, dataclasses.replace(manifest, graphs={"fp16": manifest.graphs["fp16"]}))
    code, bundle = built_with_fakes(monkeypatch, device, tmp_path / "copy", "fp16")
    assert code == 0 and read_manifest(bundle).engines.precision == "fp16"


def test_an_engine_that_misses_the_gate_is_not_kept_and_the_build_exits_1_with_the_table(
    monkeypatch, tmp_path, tiny_bundle, capsys
):
    code, bundle = built_with_fakes(monkeypatch, tiny_bundle, tmp_path, "fp16", scale=-1.0)
    printed = capsys.readouterr()
    assert code == 1
    assert "FAIL" in printed.out and "min cos" in printed.out
    assert "error: parity gate FAILED for the fp16 engines: image_encoder on input set A: min cos -0." in printed.err
    assert "text_encoder on input set A: min cos -1.00000" in printed.err
    assert read_manifest(bundle).engines is None
    assert not list(bundle.glob("*.plan")) and not list(bundle.glob(".*.tmp-*"))


def test_a_graph_the_parser_rejects_is_named_with_the_parsers_errors_and_the_build_exits_non_zero(
    monkeypatch, tmp_path, tiny_bundle, capsys
):
    fake_tensorrt.install(monkeypatch)
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    path = bundle / "fp32" / "language_encoder.onnx"
    model = onnx.load(str(path))
    model.graph.node[-1].input[0] = "nothing_produces_this"
    onnx.save(model, str(path))
    assert main([str(bundle), "--precision", "fp32", *FAKE_BUILD]) == EXIT_STATUS
    err = capsys.readouterr().err
    assert f"error: TensorRT could not parse {path}: ValidationError: " in err and "nothing_produces_this" in err
    assert read_manifest(bundle).engines is None
    assert not list(bundle.glob("*.plan")) and not list(bundle.glob(".*.tmp-*"))


def test_a_build_the_memory_estimate_refuses_names_the_flag_that_builds_it_anyway(
    monkeypatch, tmp_path, tiny_bundle, capsys
):
    code, _ = built_with_fakes(monkeypatch, tiny_bundle, tmp_path / "refused", "fp32", flags=["--workspace", "64"])
    err = capsys.readouterr().err
    assert code == EXIT_STATUS and "too large: fp32 engines need about 64" in err
    assert "--skip-memory-check builds anyway" in err

    flags = ["--workspace", "64", "--skip-memory-check"]
    code, bundle = built_with_fakes(monkeypatch, tiny_bundle, tmp_path / "built", "fp32", flags=flags)
    assert code == 0 and read_manifest(bundle).engines.precision == "fp32"
    assert capsys.readouterr().err.splitlines() == [MEMORY_CHECK_SKIPPED]


def test_the_embedder_runs_recorded_engines_as_onnx_runtime_runs_their_graphs(fp32_engines, monkeypatch):
    _, bundle, _ = fp32_engines
    monkeypatch.setattr("runtime.loading._tensorrt_here", lambda: True)
    texts = ["a red circle", "two small stars at the top left"]
    with Embedder.load(bundle) as engine, Embedder.load(bundle, backend="onnxruntime") as graph:
        assert engine.backend == "tensorrt"
        np.testing.assert_allclose(engine.embed_texts(texts), graph.embed_texts(texts), atol=1e-6)
        images = engine.embed_images(scene_pictures(5))
        np.testing.assert_allclose(images, graph.embed_images(scene_pictures(5)), atol=1e-6)
        np.testing.assert_allclose(engine.score(images, images), graph.score(images, images), atol=1e-6)


def test_engines_built_from_graphs_the_bundle_no_longer_holds_are_refused(fp32_engines):
    _, bundle, _ = fp32_engines
    manifest = read_manifest(bundle)
    entry = manifest.engines.graphs["language_encoder"]
    stale = dict(manifest.engines.graphs, language_encoder=dataclasses.replace(entry, source_sha256="0" * 64))
    write_manifest(bundle, dataclasses.replace(manifest, engines=dataclasses.replace(manifest.engines, graphs=stale)))
    with pytest.raises(ArtifactMismatch, match="model.plan was built from another fp32/language_encoder.onnx"):
        Embedder.load(bundle, backend="tensorrt")


def scene_pictures(count):
    from agff_deploy.scenes import make_scene

    return [make_scene(60 + i).render(56) for i in range(count)]

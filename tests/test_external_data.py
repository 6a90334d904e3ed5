"""Graphs past the external-data threshold: weights beside the graph, relative paths, every missing byte named."""

import errno
import shutil

import numpy as np
import onnx
import pytest

from agff_deploy.manifest import read_manifest
from export import bundle as bundle_module
from export.bundle import DiskFull
from export.targets import get_target
from export.to_trt import BuildRequest, preflight
from runtime.embedder import Embedder
from tests.conftest import export_bundle, scene_images

ENCODERS = ("vision_encoder", "language_encoder")


@pytest.fixture(scope="module")
def split_bundle(tiny_checkpoint, tmp_path_factory):
    """The tiny checkpoint with every graph's weights in external data (threshold 0)."""
    out = tmp_path_factory.mktemp("split") / "bundle"
    report = export_bundle(
        tiny_checkpoint, out, precisions=("fp32", "int8", "int8-dynamic"), batch=(1, 4, 16),
        agreement_pairs=0, external_data_bytes=0,
    )  # fmt: skip
    assert report.passed, report.table()
    return out


def test_every_encoder_keeps_its_weights_in_a_data_file_the_manifest_lists(split_bundle):
    manifest = read_manifest(split_bundle)
    for precision in ("fp32", "int8", "int8-dynamic"):
        for name in ENCODERS:
            entry = manifest.graphs[precision][name]
            (data,) = entry.external_data
            assert data.file == f"{entry.file}.data"
            assert (split_bundle / data.file).stat().st_size == data.bytes > 0
            onnx.checker.check_model(str(split_bundle / entry.file))


def test_int8_dynamic_of_a_split_graph_streams_its_weights_to_int8_matmul_integer(split_bundle):
    graph = onnx.load(str(split_bundle / "int8-dynamic" / "language_encoder.onnx"), load_external_data=False)
    ops = [n.op_type for n in graph.graph.node]
    assert "MatMulInteger" in ops and ops.count("MatMulInteger") == ops.count("DynamicQuantizeLinear")
    int8 = [t for t in graph.graph.initializer if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 2]
    assert int8 and all(t.data_location == onnx.TensorProto.EXTERNAL for t in int8)


def test_int8_calibration_that_cannot_fit_in_memory_is_refused_first(tmp_path, tiny_checkpoint, monkeypatch):
    monkeypatch.setattr(bundle_module.os, "sysconf", lambda name: 1024)
    with pytest.raises(ValueError, match="calibrating the .* model needs about"):
        export_bundle(tiny_checkpoint, tmp_path / "bundle", precisions=("fp32", "int8"), agreement_pairs=0)
    assert list(tmp_path.iterdir()) == []


def test_a_copied_split_bundle_embeds_exactly_like_the_single_file_bundle(tmp_path, split_bundle, tiny_bundle):
    moved = tmp_path / "elsewhere" / "bundle"
    shutil.copytree(split_bundle, moved)
    images = scene_images(3, 56, 80)
    with Embedder.load(moved) as split, Embedder.load(tiny_bundle) as single:
        np.testing.assert_allclose(split.embed_images(images), single.embed_images(images), atol=1e-6)
        np.testing.assert_allclose(split.embed_texts(["a red circle"]), single.embed_texts(["a red circle"]), atol=1e-6)


def test_a_missing_data_file_is_named_with_its_graph_before_any_inference(tmp_path, split_bundle):
    broken = tmp_path / "bundle"
    shutil.copytree(split_bundle, broken)
    (broken / "fp32" / "language_encoder.onnx.data").unlink()
    with pytest.raises(FileNotFoundError, match=r"fp32/language_encoder.onnx.data is missing: it holds the weights "
                       r"of .*fp32/language_encoder.onnx"):  # fmt: skip
        Embedder.load(broken)


def test_a_missing_language_graph_is_named_with_what_to_do_before_any_inference(tmp_path, split_bundle):
    broken = tmp_path / "bundle"
    shutil.copytree(split_bundle, broken)
    (broken / "fp32" / "language_encoder.onnx").unlink()
    with pytest.raises(FileNotFoundError) as missing:
        Embedder.load(broken)
    assert str(missing.value) == (
        f"{broken / 'fp32' / 'language_encoder.onnx'} is missing: copy the whole bundle folder, or re-export it with "
        "`python -m export.to_onnx CKPT`"
    )


def test_a_truncated_data_file_is_named_with_the_size_it_needs(tmp_path, split_bundle):
    broken = tmp_path / "bundle"
    shutil.copytree(split_bundle, broken)
    data = broken / "int8-dynamic" / "vision_encoder.onnx.data"
    size = data.stat().st_size
    data.write_bytes(data.read_bytes()[: size // 2])
    with pytest.raises(ValueError, match=f"vision_encoder.onnx.data is {size // 2} bytes but .* needs {size}"):
        Embedder.load(broken, precision="int8-dynamic")


def test_the_engine_build_checks_data_files_before_tensorrt_starts(tmp_path, split_bundle):
    broken = tmp_path / "bundle"
    shutil.copytree(split_bundle, broken)
    (broken / "int8" / "vision_encoder.onnx.data").unlink()
    request = BuildRequest(broken, "int8", (1, 4, 16), 1.0, None, get_target("generic"))
    with pytest.raises(FileNotFoundError, match="int8/vision_encoder.onnx.data is missing"):
        preflight(request, read_manifest(broken))


def test_a_bundle_that_cannot_fit_the_disk_is_refused_before_writing(tmp_path, tiny_checkpoint, monkeypatch):
    monkeypatch.setattr(bundle_module.shutil, "disk_usage", lambda _: shutil._ntuple_diskusage(1, 1, 1024))
    with pytest.raises(DiskFull, match=r"has 0.0 GiB free; building this bundle needs about \d+\.\d GiB"):
        export_bundle(tiny_checkpoint, tmp_path / "bundle", precisions=("fp32",), agreement_pairs=0)
    assert list(tmp_path.iterdir()) == []


def test_a_disk_that_fills_mid_export_leaves_the_old_bundle_and_no_partial_one(tmp_path, tiny_checkpoint, monkeypatch):
    out = tmp_path / "bundle"
    out.mkdir()
    (out / "manifest.json").write_text("{}")

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(bundle_module, "export_graph", full_disk)
    with pytest.raises(DiskFull, match=r"disk full while writing .*bundle: building this bundle needs about"):
        export_bundle(tiny_checkpoint, out, precisions=("fp32",), agreement_pairs=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]
    assert (out / "manifest.json").read_text() == "{}"

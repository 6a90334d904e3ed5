"""The ONNX bundle: graphs, manifest, precisions, the parity gate and bad inputs."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, numpy_helper
from onnx.reference import ReferenceEvaluator

from agff_deploy import contract
from agff_deploy.checkpoint import item_encoder, load_checkpoint
from agff_deploy.config import AGFFConfig
from agff_deploy.contract import BARS, IMAGE_ENCODER, LANGUAGE_ENCODER, TEXT_ENCODER, resolved_graphs, resolved_stored
from agff_deploy.feeds import language_feed as feeds_for_language
from agff_deploy.manifest import MANIFEST_FILE, read_manifest, sha256_file
from export.check import agreement, gate_bundle, parity_sets, pytorch_reference
from export.check import main as check_main
from export.targets import get_target
from export.to_onnx import main as to_onnx_main
from runtime.loading import ort_runners
from runtime.torch_runner import TorchRunner

REPO = Path(__file__).resolve().parents[1]
FP32_ONLY = ["--precision", "fp32", "--agreement-pairs", "0", "--gate-images", "1", "2", "--batch", "1", "2", "4"]


@pytest.fixture(scope="module")
def model_and_encoder(tiny_checkpoint):
    model, tokenizer = load_checkpoint(tiny_checkpoint)
    return model, item_encoder(model.config, tokenizer)


def specs_of(config):
    return resolved_graphs(config.sizes())


def test_bundle_holds_a_vision_and_one_language_encoder_per_precision(tiny_bundle):
    manifest = read_manifest(tiny_bundle)
    assert set(manifest.graphs) == {"fp32", "fp16", "int8", "int8-dynamic"}
    for precision, graphs in manifest.graphs.items():
        assert {name: entry.file for name, entry in graphs.items()} == {
            "vision_encoder": f"{precision}/vision_encoder.onnx",
            "language_encoder": f"{precision}/language_encoder.onnx",
            "scorer": "scorer.onnx",
        }
        for entry in graphs.values():
            assert sha256_file(tiny_bundle / entry.file) == entry.sha256


def test_the_language_model_and_its_token_table_are_stored_once_per_precision(tiny_bundle, tiny_checkpoint):
    model, _ = load_checkpoint(tiny_checkpoint)
    table = model.mllm.language_model.embed_tokens.weight.detach().numpy()
    holders = []
    for name in ("vision_encoder", "language_encoder"):
        graph = onnx.load(str(tiny_bundle / "fp32" / f"{name}.onnx"))
        arrays = [numpy_helper.to_array(t) for t in graph.graph.initializer]
        if any(a.shape == table.shape and np.array_equal(a, table) for a in arrays):
            holders.append(name)
    assert holders == ["language_encoder"]


def test_manifest_says_everything_the_runtime_needs(tiny_bundle, tiny_checkpoint):
    manifest = read_manifest(tiny_bundle)
    config = AGFFConfig.load(tiny_checkpoint)
    assert manifest.image.size == tuple(config.image_size)
    assert manifest.model.num_prompts == config.num_prompts
    assert manifest.tokenizer.file == "tokenizer.json" and (tiny_bundle / "tokenizer.json").is_file()
    assert manifest.tokenizer.sha256 == sha256_file(tiny_bundle / "tokenizer.json")
    assert manifest.source.weights_sha256 == sha256_file(tiny_checkpoint / "model.safetensors")
    assert manifest.dims.batch.as_tuple() == (1, 4, 16)
    stored = json.loads((tiny_bundle / MANIFEST_FILE).read_text())
    assert stored["dims"]["batch"] == {"min": 1, "opt": 4, "max": 16}
    vision_inputs = stored["graphs"]["fp32"]["vision_encoder"]["inputs"]
    assert vision_inputs == [
        {"name": "pixel_values", "dtype": "float32", "shape": ["batch", "patches", 588]},
        {"name": "image_grid", "dtype": "int64", "shape": ["batch", 2]},
    ]
    stored_specs = resolved_stored(config.sizes())
    assert manifest.graphs["fp32"]["language_encoder"].inputs == stored_specs["language_encoder"].inputs
    assert manifest.graphs["int8-dynamic"]["language_encoder"].backends == ("onnxruntime",)
    assert manifest.gate.file == "gate.npz" and manifest.gate.sha256 == sha256_file(tiny_bundle / "gate.npz")
    assert manifest.parity.passed is True


def test_image_pipeline_is_the_whole_multi_prompt_pass_with_dynamic_batch(tiny_bundle, model_and_encoder):
    model, encoder = model_and_encoder
    spec = specs_of(model.config)["image_encoder"]
    graph = ort_runners(tiny_bundle, read_manifest(tiny_bundle), "fp32", graphs=["image_encoder"])["image_encoder"]
    reference = TorchRunner(model, spec, device="cpu")
    feeds = parity_sets(encoder, model.config.sizes())["B"]["image_encoder"]
    with graph, reference:
        for batch in (1, 3, 7):
            feed = {k: np.repeat(v, 2, axis=0)[:batch] for k, v in feeds.items()}
            out = graph.infer(feed)[IMAGE_ENCODER.output]
            assert out.shape == (batch, model.config.num_prompts, model.config.hidden_size)
            cos, err = agreement(out, reference.infer(feed)[IMAGE_ENCODER.output])
            assert cos >= BARS["fp32"].min_cosine and err <= BARS["fp32"].max_abs


# The vision tower normalises with LayerNorm, the language model with RMSNorm (a ReduceMean of squares).
@pytest.mark.parametrize("graph, norm", [("vision_encoder", "LayerNormalization"), ("language_encoder", "ReduceMean")])
def test_fp16_graph_keeps_norms_and_softmax_in_fp32(tiny_bundle, graph, norm):
    model = onnx.shape_inference.infer_shapes(onnx.load(str(tiny_bundle / "fp16" / f"{graph}.onnx")))
    types = {v.name: v.type.tensor_type.elem_type for v in [*model.graph.value_info, *model.graph.input]}
    first_input = {n.op_type: types.get(n.input[0]) for n in model.graph.node}
    assert first_input[norm] == TensorProto.FLOAT
    assert first_input["Softmax"] == TensorProto.FLOAT
    matmuls = {types.get(n.input[0]) for n in model.graph.node if n.op_type == "MatMul"}
    assert TensorProto.FLOAT16 in matmuls


def test_fp16_text_graph_meets_its_bar_in_the_onnx_reference_evaluator(tiny_bundle, model_and_encoder):
    """A second, independent fp16 check: onnx's reference evaluator runs fp16 exactly (ORT CPU inserts casts)."""
    model, encoder = model_and_encoder
    feeds = parity_sets(encoder, model.config.sizes())["A"]["text_encoder"]
    language_feed = feeds_for_language(feeds, resolved_stored(model.config.sizes())[LANGUAGE_ENCODER.name])
    out = ReferenceEvaluator(str(tiny_bundle / "fp16" / "language_encoder.onnx")).run(None, language_feed)[0]
    with TorchRunner(model, specs_of(model.config)["text_encoder"], device="cpu") as reference:
        cos, _ = agreement(out, reference.infer(feeds)[TEXT_ENCODER.output])
    assert cos >= BARS["fp16"].min_cosine


def test_int8_graph_is_symmetric_qdq_on_weighted_matmuls_only(tiny_bundle, tiny_checkpoint):
    model = onnx.load(str(tiny_bundle / "int8" / "language_encoder.onnx"))
    initializers = {t.name: t for t in model.graph.initializer}
    zero_points = [initializers[n.input[2]] for n in model.graph.node if n.op_type == "QuantizeLinear"]
    assert zero_points and all(zp.data_type == TensorProto.INT8 for zp in zero_points)
    assert all(not numpy_helper.to_array(zp).any() for zp in zero_points)
    dequantized = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    matmuls = [n for n in model.graph.node if n.op_type == "MatMul"]
    quantized = [n for n in matmuls if set(n.input) <= dequantized]
    float_only = [n for n in matmuls if not set(n.input) & dequantized]
    assert len(quantized) + len(float_only) == len(matmuls)
    layers = AGFFConfig.load(tiny_checkpoint).base["text_config"]["num_hidden_layers"]
    assert len(float_only) == 2 * layers  # attention's QK^T and PV stay float


def test_int8_and_fp16_meet_their_bars_on_both_input_sets(tiny_bundle):
    rows = read_manifest(tiny_bundle).parity.rows
    by_precision = {(r.precision, r.graph, r.inputs): r for r in rows}
    for precision in ("fp16", "int8", "int8-dynamic"):
        for graph in ("image_encoder", "text_encoder"):
            for inputs in ("A", "B"):
                row = by_precision[(precision, graph, inputs)]
                assert row.min_cosine >= BARS[precision].min_cosine and row.passed


def test_gate_fails_a_graph_whose_numbers_drift(tmp_path, tiny_bundle, model_and_encoder):
    model, encoder = model_and_encoder
    broken = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, broken)
    path = broken / "fp32" / "vision_encoder.onnx"
    graph = onnx.load(str(path))
    weight = max(graph.graph.initializer, key=lambda t: np.prod(t.dims))
    weight.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weight) * 1.5, weight.name))
    onnx.save(graph, str(path))
    reference = pytorch_reference(model, encoder, read_manifest(tiny_bundle).fusion, agreement_pairs=0)
    report = gate_bundle(broken, *reference, get_target("generic"))
    failed = {(r.precision, r.graph) for r in report.rows if not r.passed}
    assert failed == {("fp32", "image_encoder")}
    assert not report.passed and "FAIL" in report.table()


def test_check_command_passes_a_good_bundle_and_prints_the_table(tiny_bundle, capsys):
    assert check_main([str(tiny_bundle), "--ckpt", "auto", "--agreement-pairs", "0"]) == 0
    out = capsys.readouterr().out
    assert "min cos" in out and "parity gate: passed" in out


def test_check_command_gates_against_the_record_the_bundle_carries(tiny_bundle, tmp_path, capsys):
    copy = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, copy)
    manifest = json.loads((copy / MANIFEST_FILE).read_text())
    manifest["source"]["checkpoint"] = str(tmp_path / "gone")
    (copy / MANIFEST_FILE).write_text(json.dumps(manifest))
    assert check_main([str(copy)]) == 0
    assert "parity gate: passed" in capsys.readouterr().out


def test_a_gate_record_that_changed_is_refused_by_name(tiny_bundle, tmp_path, capsys):
    copy = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, copy)
    with open(copy / "gate.npz", "ab") as f:
        f.write(b"x")
    assert check_main([str(copy)]) == 2
    assert f"{copy / 'gate.npz'} is not the gate record this bundle was exported with" in capsys.readouterr().err


def test_a_device_bundle_leaves_fp32_out_and_still_runs_and_gates(tmp_path, tiny_checkpoint, tiny_bundle, monkeypatch):
    import export.bundle as bundle
    from runtime.embedder import Embedder

    monkeypatch.setattr(bundle.BundleBuilder, "write_graphs", copied_graphs(tiny_bundle, ("fp32", "fp16")))
    out = tmp_path / "bundle"
    args = [str(tiny_checkpoint), "-o", str(out), "--precision", "fp16", "--without-fp32", "--agreement-pairs", "0"]
    assert to_onnx_main(args) == 0
    manifest = read_manifest(out)
    assert list(manifest.graphs) == ["fp16"] and not (out / "fp32").exists()
    assert {row.precision for row in manifest.parity.rows} == {"fp32", "fp16"}
    with Embedder.load(out) as model:
        assert model.embed_texts(["a red circle"]).shape == (1, manifest.model.num_prompts, manifest.model.hidden_size)
    assert check_main([str(out)]) == 0


def copied_graphs(source, precisions, negate_fp32_language=False):
    """A stand-in for `BundleBuilder.write_graphs`: `source`'s graphs at `precisions` (fp32 embeddings negated)."""
    import export.bundle as bundle

    def write_graphs(self, folder):
        shutil.copyfile(source / "scorer.onnx", folder / "scorer.onnx")
        files = {}
        for precision in precisions:
            shutil.copytree(source / precision, folder / precision)
            files[precision] = {name: folder / precision / f"{name}.onnx" for name in bundle.STORED_ENCODERS}
            files[precision]["scorer"] = folder / "scorer.onnx"
        if negate_fp32_language:
            negate_output(files["fp32"]["language_encoder"])
        return files

    return write_graphs


def negate_output(path):
    graph = onnx.load(str(path))
    output = graph.graph.output[0].name
    for node in graph.graph.node:
        node.output[:] = [o + "_raw" if o == output else o for o in node.output]
    graph.graph.node.append(onnx.helper.make_node("Neg", [output + "_raw"], [output]))
    onnx.save(graph, str(path))


def export_with_int8_out_of_reach(ckpt, out, tiny_bundle, monkeypatch) -> int:
    """Export fp32, fp16 and int8 (the fixture bundle's graphs) under an int8 bar no int8 graph can meet."""
    import export.bundle as bundle

    monkeypatch.setattr(bundle.BundleBuilder, "write_graphs", copied_graphs(tiny_bundle, ("fp32", "fp16", "int8")))
    monkeypatch.setitem(contract.BARS, "int8", contract.Bar(0.99999999))
    return to_onnx_main([str(ckpt), "-o", str(out), "--precision", "fp16", "int8", "--agreement-pairs", "0"])


def test_a_precision_that_fails_the_gate_is_left_out_of_the_bundle(tmp_path, tiny_checkpoint, tiny_bundle, monkeypatch):
    out = tmp_path / "bundle"
    assert export_with_int8_out_of_reach(tiny_checkpoint, out, tiny_bundle, monkeypatch) == 1
    manifest = read_manifest(out)
    assert set(manifest.graphs) == {"fp32", "fp16"}
    assert sorted(p.name for p in out.iterdir()) == [
        "fp16",
        "fp32",
        "gate.npz",
        "manifest.json",
        "scorer.onnx",
        "tokenizer.json",
    ]
    assert manifest.parity.passed is True
    assert {row.precision for row in manifest.parity.rows} == {"fp32", "fp16"}
    assert list(manifest.parity.left_out) == ["int8"]
    assert not list(tmp_path.glob(".bundle*"))


def test_a_left_out_precision_is_named_with_its_numbers_its_bar_and_what_to_try(
    tmp_path, tiny_checkpoint, tiny_bundle, monkeypatch, capsys
):
    out = tmp_path / "bundle"
    export_with_int8_out_of_reach(tiny_checkpoint, out, tiny_bundle, monkeypatch)
    failure, written = capsys.readouterr().err.strip().splitlines()[-2:]
    assert failure.startswith("error: parity gate FAILED for int8: image_encoder on input set A: min cos 0.9")
    assert "(bar cos>=0.99999999)" in failure
    assert "--calib-dir" in failure and "int8-dynamic" in failure and "fp16" in failure
    assert written.startswith(f"bundle written with fp32, fp16 only: {out.resolve()}")


def test_export_whose_fp32_fails_writes_no_bundle_even_where_others_pass(
    tmp_path, tiny_checkpoint, tiny_bundle, monkeypatch, capsys
):
    import export.bundle as bundle

    graphs = copied_graphs(tiny_bundle, ("fp32", "fp16"), negate_fp32_language=True)
    monkeypatch.setattr(bundle.BundleBuilder, "write_graphs", graphs)
    out = tmp_path / "bundle"
    code = to_onnx_main([str(tiny_checkpoint), "-o", str(out), "--precision", "fp16", "--agreement-pairs", "0"])
    assert code == 1
    assert not out.exists() and not list(tmp_path.glob(".bundle*"))
    err = capsys.readouterr().err
    assert "error: parity gate FAILED for fp32: image_encoder on input set A: min cos -1.00000" in err
    assert "no bundle written" in err


def test_export_removes_the_leftovers_of_killed_exports_and_keeps_those_of_running_ones(
    tmp_path, tiny_checkpoint, tiny_bundle, monkeypatch
):
    import export.bundle as bundle

    dead = _pid_of_finished_process()
    leftovers = [tmp_path / f".bundle.tmp-{dead}", tmp_path / f".bundle.old-{dead}"]
    running = tmp_path / f".bundle.tmp-{os.getppid()}"
    for folder in [*leftovers, running]:
        (folder / "fp32").mkdir(parents=True)
    monkeypatch.setattr(bundle.BundleBuilder, "write_graphs", copied_graphs(tiny_bundle, ("fp32",)))
    assert to_onnx_main([str(tiny_checkpoint), "-o", str(tmp_path / "bundle"), *FP32_ONLY]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [running.name, "bundle"]


def _pid_of_finished_process() -> int:
    process = subprocess.Popen([sys.executable, "-c", ""])
    process.wait()
    return process.pid


@pytest.fixture(scope="module")
def fp32_export_run(tiny_checkpoint, tmp_path_factory) -> subprocess.CompletedProcess:
    """`python -m export.to_onnx` as a user runs it (fp32 only), with everything it printed."""
    out = tmp_path_factory.mktemp("fp32") / "bundle"
    command = [sys.executable, "-m", "export.to_onnx", str(tiny_checkpoint), "-o", str(out), *FP32_ONLY]
    return subprocess.run(command, capture_output=True, text=True, cwd=REPO, check=True)


def test_export_prints_no_torchvision_warnings(fp32_export_run):
    assert "torchvision" not in fp32_export_run.stdout + fp32_export_run.stderr


def test_export_timing_lines_name_graphs_inside_the_bundle_never_the_temporary_folder(fp32_export_run):
    timed = [line.split(":")[0].strip() for line in fp32_export_run.stdout.splitlines() if line.endswith(" s")]
    assert timed == ["scorer.onnx", "fp32/vision_encoder.onnx", "fp32/language_encoder.onnx"]
    assert ".tmp-" not in fp32_export_run.stdout + fp32_export_run.stderr


def test_missing_checkpoint_files_are_named(tmp_path, tiny_checkpoint, capsys):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, ckpt)
    (ckpt / "model.safetensors").unlink()
    assert to_onnx_main([str(ckpt)]) == 2
    assert "model.safetensors is missing" in capsys.readouterr().err


def test_unsupported_architecture_is_refused(tmp_path, tiny_checkpoint, capsys):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, ckpt)
    config = json.loads((ckpt / "agff_config.json").read_text())
    config["base"]["model_type"] = "llava"
    (ckpt / "agff_config.json").write_text(json.dumps(config))
    assert to_onnx_main([str(ckpt)]) == 2
    assert "model_type 'llava' is not supported" in capsys.readouterr().err


def test_image_size_off_the_patch_grid_is_refused(tiny_checkpoint, capsys):
    assert to_onnx_main([str(tiny_checkpoint), "--image-size", "50", "56"]) == 2
    assert "not a positive multiple of patch_size*spatial_merge_size = 28" in capsys.readouterr().err


def test_unknown_precision_is_refused(tiny_checkpoint, capsys):
    assert to_onnx_main([str(tiny_checkpoint), "--precision", "int2"]) == 2
    assert "--precision int2: choose from fp32, fp16, int8, int8-dynamic, int4" in capsys.readouterr().err


def test_reading_a_folder_without_manifest_says_how_to_make_one(tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m export.to_onnx CKPT"):
        read_manifest(tmp_path)
    (tmp_path / MANIFEST_FILE).write_text("{}")
    with pytest.raises(ValueError, match="format is None"):
        read_manifest(tmp_path)


def test_the_gate_loads_each_stored_graph_once_per_precision(tiny_bundle, model_and_encoder, monkeypatch):
    from collections import Counter

    from runtime.ort_runner import OnnxSessionLoader

    model, encoder = model_and_encoder
    loads: Counter[str] = Counter()
    load = OnnxSessionLoader.__call__

    def counting(self):
        loads[str(self.path.relative_to(tiny_bundle))] += 1
        return load(self)

    monkeypatch.setattr(OnnxSessionLoader, "__call__", counting)
    reference = pytorch_reference(model, encoder, read_manifest(tiny_bundle).fusion, agreement_pairs=0)
    gate_bundle(tiny_bundle, *reference, get_target("generic"))
    precisions = ("fp32", "fp16", "int8", "int8-dynamic")
    stored = [f"{p}/{g}_encoder.onnx" for p in precisions for g in ("vision", "language")]
    assert loads == Counter([*stored, "scorer.onnx"])

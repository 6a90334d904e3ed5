"""`python -m export.to_triton`: the standalone Triton repository written from the tiny bundle.

Configs are parsed back with tritonclient's model-config protobuf and held to the manifest; the encoders run in
ONNX Runtime on the preprocess models' fixed-length outputs; the two python preprocess models run for real on the
Triton binary the nvidia-pytriton wheel ships (it has no onnxruntime backend, so encoders and ensembles cannot).
"""

import dataclasses
import io
import shutil
import socket
import subprocess
import sys
import textwrap

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image
from tritonclient.grpc import model_config_pb2 as mc

from agff_deploy.contract import IMAGE_ENCODER, SCORER, TEXT_ENCODER
from agff_deploy.manifest import EngineEntry, Engines, ExternalData, read_manifest, sha256_file, write_manifest
from agff_deploy.scenes import make_scene
from export import to_triton
from export.to_triton import RepoOptions, write_repository
from runtime.spec import ModelSpec
from serve.model_configs import CONFIG_FILE, read_config
from serve.preprocess_model import Preprocessor
from serve.request_items import RequestError

TRITON_TYPES = {"float32": "TYPE_FP32", "int64": "TYPE_INT64"}
TEXTS = ("a red circle", "two small blue squares above a green triangle")
INSTRUCTIONS = ("", "what colour is the star?")


@pytest.fixture(scope="module")
def repo(tiny_bundle, tmp_path_factory):
    out = tmp_path_factory.mktemp("triton") / "repo"
    write_repository(tiny_bundle, out, RepoOptions())
    return out


@pytest.fixture(scope="module")
def manifest(tiny_bundle):
    return read_manifest(tiny_bundle)


@pytest.fixture(scope="module")
def preprocessors(repo):
    return {task: Preprocessor.from_folder(repo / f"{task}_preprocess" / "1") for task in ("image", "text")}


@pytest.fixture(scope="module")
def feed_encoder(tiny_bundle, manifest):
    return ModelSpec.from_manifest(tiny_bundle, manifest).feed_encoder()


def png(index: int, size: int = 80) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(make_scene(index).render(size)).save(buffer, "PNG")
    return buffer.getvalue()


def items(*values: bytes) -> np.ndarray:
    """A request's `[n, 1]` BYTES tensor, as Triton hands it to the python model."""
    return np.array([[v] for v in values], dtype=object)


def config_tensors(tensors) -> list[tuple[str, str, list[int]]]:
    return [(t.name, mc.DataType.Name(t.data_type), list(t.dims)) for t in tensors]


def manifest_tensors(specs, batched: bool) -> list[tuple[str, str, list[int]]]:
    """The manifest's tensors as a config must declare them: named dims -1, the batch axis gone if batched."""
    rows = []
    for spec in specs:
        dims = [d if isinstance(d, int) else -1 for d in spec.shape]
        rows.append((spec.name, TRITON_TYPES[spec.dtype], dims[1:] if batched else dims))
    return rows


def embed(graph, feed) -> np.ndarray:
    session = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
    return session.run(None, feed)[0]


@pytest.mark.parametrize("graph", [IMAGE_ENCODER.name, TEXT_ENCODER.name])
def test_encoder_configs_parse_and_declare_the_manifests_tensors(repo, manifest, graph):
    config = read_config(repo / graph / CONFIG_FILE)
    entry = manifest.graph("fp32", graph)
    assert (config.name, config.backend, config.max_batch_size) == (graph, "onnxruntime", manifest.dims.batch.max)
    assert config_tensors(config.input) == manifest_tensors(entry.inputs, batched=True)
    assert config_tensors(config.output) == manifest_tensors(entry.outputs, batched=True)
    assert config.dynamic_batching.max_queue_delay_microseconds == 2000


def test_scorer_config_takes_whole_sets_without_batching(repo, manifest):
    config = read_config(repo / "score" / CONFIG_FILE)
    entry = manifest.graph("fp32", SCORER.name)
    assert (config.backend, config.max_batch_size) == ("onnxruntime", 0)
    assert config_tensors(config.input) == manifest_tensors(entry.inputs, batched=False)
    assert config_tensors(config.output) == manifest_tensors(entry.outputs, batched=False)


@pytest.mark.parametrize("task", ["image", "text"])
def test_preprocess_outputs_are_the_encoder_inputs_at_one_fixed_length(repo, manifest, task):
    config = read_config(repo / f"{task}_preprocess" / CONFIG_FILE)
    encoder = manifest.graph("fp32", f"{task}_encoder")
    length = {"image": manifest.dims.image_length.max, "text": manifest.dims.text_length.max}[task]
    fixed = [(n, t, [length if d == -1 else d for d in dims]) for n, t, dims in manifest_tensors(encoder.inputs, True)]
    assert (config.backend, config.parameters["task"].string_value) == ("python", task)
    assert config_tensors(config.output) == fixed
    assert (
        (repo / f"{task}_preprocess" / "1" / "model.py")
        .read_text()
        .startswith("from serve.preprocess_model import TritonPythonModel")
    )


def test_ensembles_take_agff_serves_inputs_and_return_embeddings(repo):
    image, text = (read_config(repo / name / CONFIG_FILE) for name in ("image", "text"))
    assert [(t.name, mc.DataType.Name(t.data_type), list(t.dims), t.optional) for t in image.input] == [
        ("image", "TYPE_STRING", [1], False),
        ("instruction", "TYPE_STRING", [1], True),
    ]
    assert [(t.name, list(t.dims)) for t in text.input] == [("text", [1])]
    assert [t.name for t in image.output] == [t.name for t in text.output] == ["embeddings"]
    assert image.platform == text.platform == "ensemble"


@pytest.mark.parametrize("task", ["image", "text"])
def test_ensemble_steps_connect_tensors_that_exist_on_both_sides(repo, task):
    ensemble = read_config(repo / task / CONFIG_FILE)
    preprocess_step, encoder_step = ensemble.ensemble_scheduling.step
    preprocess = read_config(repo / preprocess_step.model_name / CONFIG_FILE)
    encoder = read_config(repo / encoder_step.model_name / CONFIG_FILE)
    assert (preprocess.name, encoder.name) == (f"{task}_preprocess", f"{task}_encoder")
    assert dict(preprocess_step.input_map) == {t.name: t.name for t in ensemble.input}
    assert set(preprocess_step.input_map) == {t.name for t in preprocess.input}
    assert set(preprocess_step.output_map) == {t.name for t in preprocess.output}
    assert set(encoder_step.input_map.values()) == set(preprocess_step.output_map.values())
    assert set(encoder_step.input_map) == {t.name for t in encoder.input}
    assert dict(encoder_step.output_map) == {t.name: t.name for t in ensemble.output}
    assert ensemble.max_batch_size == encoder.max_batch_size == preprocess.max_batch_size


@pytest.mark.parametrize(
    "graph, model",
    [(IMAGE_ENCODER.name, IMAGE_ENCODER.name), (TEXT_ENCODER.name, TEXT_ENCODER.name), (SCORER.name, "score")],
)
def test_encoder_and_scorer_graphs_hash_match_the_bundles(repo, tiny_bundle, manifest, graph, model):
    copied = sha256_file(repo / model / "1" / "model.onnx")
    assert (
        copied == manifest.graph("fp32", graph).sha256 == sha256_file(tiny_bundle / manifest.graph("fp32", graph).file)
    )


@pytest.mark.parametrize("text", TEXTS)
def test_fixed_length_padding_leaves_text_embeddings_unchanged(repo, preprocessors, feed_encoder, text):
    (padded,) = preprocessors["text"].texts([items(text.encode())])
    unpadded = feed_encoder.text_feed([text])
    assert padded["input_ids"].shape[1] > unpadded["input_ids"].shape[1]
    graph = repo / TEXT_ENCODER.name / "1" / "model.onnx"
    assert np.abs(embed(graph, padded) - embed(graph, unpadded)).max() <= 1e-5


@pytest.mark.parametrize(("index", "instruction"), list(enumerate(INSTRUCTIONS)))
def test_fixed_length_padding_leaves_image_embeddings_unchanged(repo, preprocessors, feed_encoder, index, instruction):
    (padded,) = preprocessors["image"].images([(items(png(index)), items(instruction.encode()))])
    unpadded = feed_encoder.image_feed(padded["pixel_values"], [instruction])
    assert padded["input_ids"].shape[1] > unpadded["input_ids"].shape[1]
    graph = repo / IMAGE_ENCODER.name / "1" / "model.onnx"
    assert np.abs(embed(graph, padded) - embed(graph, unpadded)).max() <= 1e-5


def test_image_preprocessing_equals_the_runtimes_feed_encoder(preprocessors, feed_encoder):
    data, instruction = png(3, size=97), "where is it?"
    (result,) = preprocessors["image"].images([(items(data), items(instruction.encode()))])
    expected = feed_encoder.image_feed(feed_encoder.pixels([Image.open(io.BytesIO(data))]), [instruction])
    length = expected["input_ids"].shape[1]
    np.testing.assert_array_equal(result["pixel_values"], expected["pixel_values"])
    np.testing.assert_array_equal(result["input_ids"][:, :length], expected["input_ids"])
    assert (result["input_ids"][:, length:] == feed_encoder.formatter.pad_id).all()
    assert result["attention_mask"].sum() == expected["attention_mask"].sum() == length


def test_text_preprocessing_equals_the_runtimes_feed_encoder(preprocessors, feed_encoder):
    (result,) = preprocessors["text"].texts([items(*(t.encode() for t in TEXTS))])
    expected = feed_encoder.text_feed(list(TEXTS))
    length = expected["input_ids"].shape[1]
    np.testing.assert_array_equal(result["input_ids"][:, :length], expected["input_ids"])
    np.testing.assert_array_equal(result["attention_mask"][:, :length], expected["attention_mask"])
    assert not result["attention_mask"][:, length:].any()


@pytest.mark.parametrize(
    ("request_items", "message"),
    [
        (items(b""), "text 0 is empty: send the text to embed"),
        (items(b"\xff\xfe"), "text 0 is not UTF-8 (invalid start byte at byte 0)"),
        (items(("red " * 200).encode()), "tokens, over the model's 48: shorten it"),
        (np.array([[1]], dtype=object), "text 0 must be UTF-8 text (BYTES)"),
        (items(), "the request holds no items"),
    ],
    ids=["empty", "not-utf8", "over-the-token-budget", "not-bytes", "no-items"],
)
def test_a_bad_text_fails_its_own_request_only(preprocessors, request_items, message):
    bad, good = preprocessors["text"].texts([request_items, items(b"a red circle")])
    assert isinstance(bad, RequestError) and message in str(bad)
    assert good["input_ids"].shape == (1, preprocessors["text"].lengths["text"])


@pytest.mark.parametrize(
    ("images", "instructions", "message"),
    [
        (items(b"not an image"), None, "image 0: not an image Pillow can read"),
        (items(b""), None, "image 0: empty (0 bytes)"),
        (items(png(0), png(1)), items(b"one"), "1 instructions for 2 images: send one per image"),
        (items(png(0)), items(b"\xc3"), "instruction 0 is not UTF-8"),
    ],
    ids=["not-an-image", "empty", "instruction-count", "instruction-not-utf8"],
)
def test_a_bad_image_request_fails_its_own_request_only(preprocessors, images, instructions, message):
    bad, good = preprocessors["image"].images([(images, instructions), (items(png(2)), None)])
    assert isinstance(bad, RequestError) and message in str(bad)
    assert good["pixel_values"].shape[0] == 1


def test_an_existing_repository_is_refused_without_force(tiny_bundle, tmp_path, capsys):
    out = tmp_path / "repo"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    assert to_triton.main([str(tiny_bundle), "-o", str(out)]) == 2
    assert f"error: {out} exists and is not empty; pass --force to replace it" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["mine.txt"]


def test_force_replaces_an_existing_repository(tiny_bundle, tmp_path, capsys):
    out = tmp_path / "repo"
    out.mkdir()
    (out / "mine.txt").write_text("old")
    assert to_triton.main([str(tiny_bundle), "-o", str(out), "--force"]) == 0
    names = {"image", "image_preprocess", "image_encoder", "text", "text_preprocess", "text_encoder", "score"}
    assert {p.name for p in out.iterdir()} == names | {"README.md"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["repo"]  # no temporary or old folder left beside it
    rows = capsys.readouterr().out.splitlines()[2:9]
    assert {row.split()[0] for row in rows} == names


def test_a_failure_midway_leaves_no_repository(tiny_bundle, tmp_path, monkeypatch):
    written = []

    def fail_on_the_third(root, model):
        if len(written) == 2:
            raise OSError(28, "No space left on device")
        written.append(model.config.name)
        write_model(root, model)

    write_model = to_triton.write_model
    monkeypatch.setattr(to_triton, "write_model", fail_on_the_third)
    assert to_triton.main([str(tiny_bundle), "-o", str(tmp_path / "repo")]) == 2
    assert len(written) == 2
    assert list(tmp_path.iterdir()) == []


def test_a_config_that_disagrees_with_the_manifest_fails_the_command(tiny_bundle, tmp_path, monkeypatch, capsys):
    def shrink_the_embeddings(folder, config):
        if config.name == TEXT_ENCODER.name:
            config.output[0].dims[0] = 1
        return write_config(folder, config)

    write_config = to_triton.write_config
    monkeypatch.setattr(to_triton, "write_config", shrink_the_embeddings)
    assert to_triton.main([str(tiny_bundle), "-o", str(tmp_path / "repo")]) == 2
    err = capsys.readouterr().err
    assert "the written configs disagree with the bundle's manifest" in err
    assert "text_encoder: outputs are embeddings FP32[1,32], the manifest says embeddings FP32[3,32]" in err
    assert "text: embeddings FP32[1,32] does not fit embeddings FP32[3,32]" in err
    assert list(tmp_path.iterdir()) == []


def test_a_precision_the_bundle_lacks_is_refused(tiny_bundle, tmp_path, capsys):
    assert to_triton.main([str(tiny_bundle), "-o", str(tmp_path / "repo"), "--precision", "bf16"]) == 2
    assert "bundle has no bf16 graphs" in capsys.readouterr().err


def test_tensorrt_is_refused_when_the_bundle_has_no_engines(tiny_bundle, tmp_path, capsys):
    assert to_triton.main([str(tiny_bundle), "-o", str(tmp_path / "repo"), "--backend", "tensorrt"]) == 2
    assert "the bundle has no TensorRT engines; build them on the serving GPU" in capsys.readouterr().err


def copy_bundle(tiny_bundle, tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    return bundle, read_manifest(bundle)


def test_a_bundle_with_engines_gets_tensorrt_plan_encoders(tiny_bundle, tmp_path):
    bundle, manifest = copy_bundle(tiny_bundle, tmp_path)
    entries = {}
    for graph in (IMAGE_ENCODER.name, TEXT_ENCODER.name):
        plan = bundle / f"{graph}.plan"
        plan.write_bytes(f"engine of {graph}".encode())
        source = manifest.graph("fp16", graph)
        entries[graph] = EngineEntry(plan.name, sha256_file(plan), source.file, source.sha256)
    write_manifest(bundle, dataclasses.replace(manifest, engines=Engines("fp16", "10.3", "test GPU", entries)))
    write_repository(bundle, tmp_path / "repo", RepoOptions(precision="fp16"))
    for graph in entries:
        config = read_config(tmp_path / "repo" / graph / CONFIG_FILE)
        assert (config.platform, config.backend) == ("tensorrt_plan", "")
        assert mc.ModelInstanceGroup.Kind.Name(config.instance_group[0].kind) == "KIND_GPU"
        assert (tmp_path / "repo" / graph / "1" / "model.plan").read_bytes() == f"engine of {graph}".encode()
    assert read_config(tmp_path / "repo" / "score" / CONFIG_FILE).backend == "onnxruntime"


def test_external_data_files_travel_beside_model_onnx(tiny_bundle, tmp_path):
    import onnx

    bundle, manifest = copy_bundle(tiny_bundle, tmp_path)
    entry = manifest.graph("fp32", TEXT_ENCODER.name)
    graph = bundle / entry.file
    onnx.save_model(onnx.load(str(graph)), str(graph), save_as_external_data=True, location="weights.bin")
    data = graph.parent / "weights.bin"
    external = (ExternalData(str(data.relative_to(bundle)), data.stat().st_size),)
    moved = dataclasses.replace(entry, sha256=sha256_file(graph), external_data=external)
    graphs = {**manifest.graphs, "fp32": {**manifest.graphs["fp32"], TEXT_ENCODER.name: moved}}
    write_manifest(bundle, dataclasses.replace(manifest, graphs=graphs))
    write_repository(bundle, tmp_path / "repo", RepoOptions())
    version = tmp_path / "repo" / TEXT_ENCODER.name / "1"
    assert (version / "weights.bin").read_bytes() == data.read_bytes()
    feed = Preprocessor.from_folder(tmp_path / "repo" / "text_preprocess" / "1").texts([items(b"a red circle")])[0]
    np.testing.assert_array_equal(embed(version / "model.onnx", feed), embed(tiny_bundle / entry.file, feed))


def test_the_preprocess_model_imports_without_torch_or_onnxruntime():
    blocker = textwrap.dedent("""
        import importlib.abc, sys
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name.split(".")[0] in {"torch", "onnxruntime", "onnx", "transformers"}:
                    raise ImportError(f"{name} is blocked for this test")
        sys.meta_path.insert(0, Block())
        from serve.preprocess_model import TritonPythonModel
        print(TritonPythonModel.__name__)
    """)
    result = subprocess.run([sys.executable, "-c", blocker], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "TritonPythonModel"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def triton(repo, tmp_path_factory):
    """The pytriton wheel's Triton on a copy of the repository that holds only the python preprocess models."""
    pytest.importorskip("pytriton", reason="nvidia-pytriton (the serve extra) is not installed: no Triton binary")
    from serve.tritonserver import Ports, TritonServer

    folder = tmp_path_factory.mktemp("triton-run")
    for model in ("image_preprocess", "text_preprocess"):
        shutil.copytree(repo / model, folder / "models" / model)
    (folder / "workspace").mkdir()
    ports = Ports(free_port(), free_port(), free_port())
    with TritonServer(folder / "models", folder / "workspace", ports, address="127.0.0.1") as server:
        yield server


def bytes_input(name: str, *values: bytes):
    import tritonclient.http as http

    tensor = http.InferInput(name, [len(values), 1], "BYTES")
    tensor.set_data_from_numpy(items(*values))
    return tensor


def test_triton_serves_the_preprocess_models_with_the_triton_free_outputs(triton, preprocessors):
    import tritonclient.http as http

    client = http.InferenceServerClient(f"127.0.0.1:{triton.ports.http}")
    image, instruction, text = png(4), b"how many circles are there?", TEXTS[1].encode()
    image_reply = client.infer(
        "image_preprocess", [bytes_input("image", image), bytes_input("instruction", instruction)]
    )
    text_reply = client.infer("text_preprocess", [bytes_input("text", text)])
    (image_expected,) = preprocessors["image"].images([(items(image), items(instruction))])
    (text_expected,) = preprocessors["text"].texts([items(text)])
    for name, expected in image_expected.items():
        np.testing.assert_array_equal(image_reply.as_numpy(name), expected)
    for name, expected in text_expected.items():
        np.testing.assert_array_equal(text_reply.as_numpy(name), expected)


def test_triton_answers_a_bad_item_with_its_error(triton):
    import tritonclient.http as http
    from tritonclient.utils import InferenceServerException

    client = http.InferenceServerClient(f"127.0.0.1:{triton.ports.http}")
    with pytest.raises(InferenceServerException, match="image 0: not an image Pillow can read"):
        client.infer("image_preprocess", [bytes_input("image", b"not an image")])

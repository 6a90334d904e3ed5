"""`python -m export.to_triton`: the standalone Triton repository written from the tiny bundle.

Configs are parsed back with tritonclient's model-config protobuf and held to the manifest and to the ONNX graphs'
own dims; the vision and language graphs run in ONNX Runtime on the preprocess models' fixed-length outputs; the two
python preprocess models run for real on the Triton binary the nvidia-pytriton wheel ships (it has no onnxruntime
backend, so encoders and ensembles cannot).
"""

import dataclasses
import io
import shutil
import socket
import subprocess
import sys
import textwrap

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from PIL import Image
from tritonclient.grpc import model_config_pb2 as mc

from agff_deploy.contract import IMAGE_FEATURES, IMAGE_GRID, LANGUAGE_ENCODER, SCORER, VISION_ENCODER, resolved_stored
from agff_deploy.feeds import language_feed, vision_feed
from agff_deploy.manifest import EngineEntry, Engines, ExternalData, read_manifest, sha256_file, write_manifest
from agff_deploy.patches import PatchBatch
from agff_deploy.scenes import make_scene
from export import to_triton
from export.to_triton import RepoOptions, write_repository
from export.trt_profiles import ENGINE_FILES
from runtime.spec import ModelSpec
from serve.model_configs import CONFIG_FILE, read_config
from serve.preprocess_model import Preprocessor
from serve.request_items import RequestError

TRITON_TYPES = {"float32": "TYPE_FP32", "int64": "TYPE_INT64"}
TEXTS = ("a red circle", "two small blue squares above a green triangle")
INSTRUCTIONS = ("", "what colour is the star?")
ENCODERS = (VISION_ENCODER.name, LANGUAGE_ENCODER.name)
STEPS = {
    "image": ["image_preprocess", VISION_ENCODER.name, LANGUAGE_ENCODER.name],
    "text": ["text_preprocess", LANGUAGE_ENCODER.name],
}
MODELS = {"image", "image_preprocess", "vision_encoder", "language_encoder", "text", "text_preprocess", "score"}


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


def manifest_tensors(specs, batched: bool, sizes=None) -> list[tuple[str, str, list[int]]]:
    """The manifest's tensors as a config must declare them: named dims -1 unless `sizes` fixes them, the batch axis
    gone if batched."""
    rows = []
    for spec in specs:
        dims = [d if isinstance(d, int) else (sizes or {}).get(d, -1) for d in spec.shape]
        rows.append((spec.name, TRITON_TYPES[spec.dtype], dims[1:] if batched else dims))
    return rows


def graph_dims(graph, kind: str) -> dict[str, list[int]]:
    """The ONNX graph's own input or output dims, -1 where a dimension is symbolic."""
    model = onnx.load(str(graph), load_external_data=False)
    values = model.graph.input if kind == "input" else model.graph.output
    return {
        v.name: [d.dim_value if d.HasField("dim_value") else -1 for d in v.type.tensor_type.shape.dim] for v in values
    }


def run(graph, feed) -> np.ndarray:
    session = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
    return session.run(None, feed)[0]


def model_graph(repo, name: str):
    return repo / name / "1" / "model.onnx"


def language_spec(tiny_bundle):
    return resolved_stored(read_manifest(tiny_bundle).sizes())[LANGUAGE_ENCODER.name]


def image_embeddings(repo, feed, language) -> np.ndarray:
    """The image pipeline on the repository's graphs: vision, then language on the item's tokens and features."""
    features = run(model_graph(repo, VISION_ENCODER.name), vision_feed(feed))
    return run(model_graph(repo, LANGUAGE_ENCODER.name), language_feed(feed, language, {IMAGE_FEATURES.name: features}))


@pytest.mark.parametrize("graph", ENCODERS)
def test_encoder_configs_parse_and_declare_the_manifests_tensors(repo, manifest, graph):
    config = read_config(repo / graph / CONFIG_FILE)
    entry = manifest.graph("fp32", graph)
    assert (config.name, config.backend, config.max_batch_size) == (graph, "onnxruntime", manifest.dims.batch.max)
    assert config_tensors(config.input) == manifest_tensors(entry.inputs, batched=True)
    assert config_tensors(config.output) == manifest_tensors(entry.outputs, batched=True)
    assert config.dynamic_batching.max_queue_delay_microseconds == 2000


def test_image_features_are_dynamic_from_the_vision_encoder_to_the_language_encoder(repo, manifest):
    vision, language = (read_config(repo / name / CONFIG_FILE) for name in ENCODERS)
    hidden = manifest.model.hidden_size
    assert config_tensors(vision.output) == [(IMAGE_FEATURES.name, "TYPE_FP32", [-1, hidden])]
    assert (IMAGE_FEATURES.name, "TYPE_FP32", [-1, hidden]) in config_tensors(language.input)


@pytest.mark.parametrize("model", [*ENCODERS, "score"])
def test_config_dims_pass_the_onnxruntime_backends_check_against_the_graph(repo, model):
    """Triton's onnxruntime backend: a config input dim must equal the graph's unless the graph's is dynamic; an
    output dim must equal it exactly. A batching model's config leaves out the graph's leading -1."""
    config = read_config(repo / model / CONFIG_FILE)
    batch = [-1] if config.max_batch_size else []
    inputs, outputs = (graph_dims(model_graph(repo, model), kind) for kind in ("input", "output"))
    assert [t.name for t in config.input] == list(inputs) and [t.name for t in config.output] == list(outputs)
    for tensor in config.input:
        declared, graph = batch + list(tensor.dims), inputs[tensor.name]
        assert len(declared) == len(graph) and all(g in (-1, d) for d, g in zip(declared, graph, strict=True))
    for tensor in config.output:
        assert batch + list(tensor.dims) == outputs[tensor.name]


def test_scorer_config_takes_whole_sets_without_batching(repo, manifest):
    config = read_config(repo / "score" / CONFIG_FILE)
    entry = manifest.graph("fp32", SCORER.name)
    assert (config.backend, config.max_batch_size) == ("onnxruntime", 0)
    assert config_tensors(config.input) == manifest_tensors(entry.inputs, batched=False)
    assert config_tensors(config.output) == manifest_tensors(entry.outputs, batched=False)


@pytest.mark.parametrize("task", ["image", "text"])
def test_preprocess_outputs_are_the_graph_inputs_no_step_makes_at_one_fixed_length(repo, manifest, task):
    config = read_config(repo / f"{task}_preprocess" / CONFIG_FILE)
    vision, language = (manifest.graph("fp32", name) for name in ENCODERS)
    length = {"image": manifest.dims.image_length.max, "text": manifest.dims.text_length.max}[task]
    if task == "image":  # the vision encoder makes the language encoder's image features
        fed = (*vision.inputs, *(t for t in language.inputs if t.name not in {IMAGE_FEATURES.name, IMAGE_GRID.name}))
    else:  # one placeholder feature per text item
        fed = language.inputs
    assert (config.backend, config.parameters["task"].string_value) == ("python", task)
    assert config_tensors(config.output) == manifest_tensors(fed, True, {"length": length, "image_tokens": 1})
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


def fits(source, target) -> bool:
    """Same dtype, same rank, each dim equal or -1 on one side: what an ensemble may connect."""
    if source.data_type != target.data_type or len(source.dims) != len(target.dims):
        return False
    return all(-1 in (a, b) or a == b for a, b in zip(source.dims, target.dims, strict=True))


@pytest.mark.parametrize("task", ["image", "text"])
def test_ensemble_steps_connect_tensors_that_exist_on_both_sides(repo, task):
    ensemble = read_config(repo / task / CONFIG_FILE)
    steps = list(ensemble.ensemble_scheduling.step)
    models = {step.model_name: read_config(repo / step.model_name / CONFIG_FILE) for step in steps}
    assert [step.model_name for step in steps] == [models[step.model_name].name for step in steps] == STEPS[task]
    assert dict(steps[0].input_map) == {t.name: t.name for t in ensemble.input}
    available = {t.name: t for t in ensemble.input}
    consumed = set()
    for step in steps:
        model = models[step.model_name]
        assert set(step.input_map) == {t.name for t in model.input}
        assert set(step.output_map) == {t.name for t in model.output}
        for tensor in model.input:
            source = available[step.input_map[tensor.name]]
            assert fits(source, tensor), (step.model_name, tensor.name)
            consumed.add(step.input_map[tensor.name])
        available |= {step.output_map[t.name]: t for t in model.output}
    assert dict(steps[-1].output_map) == {t.name: t.name for t in ensemble.output}
    made = {name for step in steps for name in step.output_map.values()}
    assert made - consumed == {t.name for t in ensemble.output}  # every step's output is used
    assert all(fits(available[t.name], t) for t in ensemble.output)
    assert {ensemble.max_batch_size} == {model.max_batch_size for model in models.values()}


def test_the_language_model_is_in_the_repository_once(repo, manifest):
    language = manifest.graph("fp32", LANGUAGE_ENCODER.name).sha256
    copies = [path for path in repo.rglob("*.onnx") if sha256_file(path) == language]
    assert copies == [model_graph(repo, LANGUAGE_ENCODER.name)]
    assert {p.parent.parent.name for p in repo.rglob("model.onnx")} == {*ENCODERS, "score"}


@pytest.mark.parametrize(
    "graph, model",
    [
        (VISION_ENCODER.name, VISION_ENCODER.name),
        (LANGUAGE_ENCODER.name, LANGUAGE_ENCODER.name),
        (SCORER.name, "score"),
    ],
)
def test_encoder_and_scorer_graphs_hash_match_the_bundles(repo, tiny_bundle, manifest, graph, model):
    copied = sha256_file(model_graph(repo, model))
    assert (
        copied == manifest.graph("fp32", graph).sha256 == sha256_file(tiny_bundle / manifest.graph("fp32", graph).file)
    )


@pytest.mark.parametrize("text", TEXTS)
def test_fixed_length_padding_leaves_text_embeddings_unchanged(repo, manifest, preprocessors, feed_encoder, text):
    (padded,) = preprocessors["text"].texts([items(text.encode())])
    unpadded = language_feed(feed_encoder.text_feed([text]), resolved_stored(manifest.sizes())[LANGUAGE_ENCODER.name])
    assert padded["input_ids"].shape[1] > unpadded["input_ids"].shape[1]
    np.testing.assert_array_equal(padded[IMAGE_FEATURES.name], unpadded[IMAGE_FEATURES.name])
    graph = model_graph(repo, LANGUAGE_ENCODER.name)
    assert np.abs(run(graph, padded) - run(graph, unpadded)).max() <= 1e-5


@pytest.mark.parametrize(("index", "instruction"), list(enumerate(INSTRUCTIONS)))
def test_fixed_length_padding_leaves_image_embeddings_unchanged(
    repo, tiny_bundle, preprocessors, feed_encoder, index, instruction
):
    (padded,) = preprocessors["image"].images([(items(png(index)), items(instruction.encode()))])
    unpadded = feed_encoder.image_feed(PatchBatch(padded["pixel_values"], padded["image_grid"]), [instruction])
    assert padded["input_ids"].shape[1] > unpadded["input_ids"].shape[1]
    language = language_spec(tiny_bundle)
    assert np.abs(image_embeddings(repo, padded, language) - image_embeddings(repo, unpadded, language)).max() <= 1e-5


def test_image_preprocessing_equals_the_runtimes_feed_encoder(preprocessors, feed_encoder):
    data, instruction = png(3, size=97), "where is it?"
    (result,) = preprocessors["image"].images([(items(data), items(instruction.encode()))])
    expected = feed_encoder.image_feed(feed_encoder.pixels([Image.open(io.BytesIO(data))]), [instruction])
    length = expected["input_ids"].shape[1]
    assert list(result) == ["pixel_values", "image_grid", "input_ids", "attention_mask"]
    np.testing.assert_array_equal(result["pixel_values"], expected["pixel_values"])
    np.testing.assert_array_equal(result["image_grid"], expected["image_grid"])
    np.testing.assert_array_equal(result["input_ids"][:, :length], expected["input_ids"])
    assert (result["input_ids"][:, length:] == feed_encoder.formatter.pad_id).all()
    assert result["attention_mask"].sum() == expected["attention_mask"].sum() == length


def test_text_preprocessing_equals_the_runtimes_feed_encoder(manifest, preprocessors, feed_encoder):
    (result,) = preprocessors["text"].texts([items(*(t.encode() for t in TEXTS))])
    expected = feed_encoder.text_feed(list(TEXTS))
    length = expected["input_ids"].shape[1]
    assert list(result) == ["input_ids", "attention_mask", IMAGE_FEATURES.name, IMAGE_GRID.name]
    np.testing.assert_array_equal(result["input_ids"][:, :length], expected["input_ids"])
    np.testing.assert_array_equal(result["attention_mask"][:, :length], expected["attention_mask"])
    assert not result["attention_mask"][:, length:].any()
    features = result[IMAGE_FEATURES.name]
    assert (features.dtype, features.shape) == (np.float32, (len(TEXTS), 1, manifest.model.hidden_size))
    assert not features.any()
    assert (result[IMAGE_GRID.name] == 2).all()  # one merge block: the graph divides by it, no token reads it


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
    assert {p.name for p in out.iterdir()} == MODELS | {"README.md"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["repo"]  # no temporary or old folder left beside it
    rows = capsys.readouterr().out.splitlines()[2:9]
    assert {row.split()[0] for row in rows} == MODELS


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
        if config.name == LANGUAGE_ENCODER.name:
            config.output[0].dims[0] = 1
        return write_config(folder, config)

    write_config = to_triton.write_config
    monkeypatch.setattr(to_triton, "write_config", shrink_the_embeddings)
    assert to_triton.main([str(tiny_bundle), "-o", str(tmp_path / "repo")]) == 2
    err = capsys.readouterr().err
    assert "the written configs disagree with the bundle's manifest" in err
    assert "language_encoder: outputs are embeddings FP32[1,32], the manifest says embeddings FP32[3,32]" in err
    assert "text: embeddings FP32[1,32] does not fit embeddings FP32[3,32]" in err
    assert "image: embeddings FP32[1,32] does not fit embeddings FP32[3,32]" in err  # the one model serves both
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


def with_engines(bundle, manifest, graphs=tuple(ENGINE_FILES)):
    """Stand-in fp16 engines of `graphs` (named as `export.to_trt` names them), recorded in the manifest."""
    entries = {}
    for graph in graphs:
        plan = bundle / ENGINE_FILES[graph]
        plan.write_bytes(f"engine of {graph}".encode())
        source = manifest.graph("fp16", graph)
        entries[graph] = EngineEntry(plan.name, sha256_file(plan), source.file, source.sha256)
    write_manifest(bundle, dataclasses.replace(manifest, engines=Engines("fp16", "10.3", "test GPU", entries)))


def test_a_bundle_with_engines_gets_tensorrt_plan_encoders(tiny_bundle, tmp_path):
    bundle, manifest = copy_bundle(tiny_bundle, tmp_path)
    with_engines(bundle, manifest)
    write_repository(bundle, tmp_path / "repo", RepoOptions(precision="fp16"))
    for graph in ENCODERS:
        config = read_config(tmp_path / "repo" / graph / CONFIG_FILE)
        assert (config.platform, config.backend) == ("tensorrt_plan", "")
        assert mc.ModelInstanceGroup.Kind.Name(config.instance_group[0].kind) == "KIND_GPU"
        assert (tmp_path / "repo" / graph / "1" / "model.plan").read_bytes() == f"engine of {graph}".encode()
    score = read_config(tmp_path / "repo" / "score" / CONFIG_FILE)
    assert score.backend == "onnxruntime"
    assert sha256_file(model_graph(tmp_path / "repo", "score")) == manifest.graph("fp16", SCORER.name).sha256


def test_engines_that_lack_an_encoder_are_refused(tiny_bundle, tmp_path, capsys):
    bundle, manifest = copy_bundle(tiny_bundle, tmp_path)
    with_engines(bundle, manifest, (LANGUAGE_ENCODER.name, SCORER.name))
    assert to_triton.main([str(bundle), "-o", str(tmp_path / "repo"), "--precision", "fp16"]) == 2
    assert (
        "TensorRT engines lack the vision_encoder: rebuild them with `python -m export.to_trt"
        in capsys.readouterr().err
    )
    assert not (tmp_path / "repo").exists()


def test_a_bundle_without_fp32_serves_its_first_precision_by_default(tiny_bundle, tmp_path):
    bundle, manifest = copy_bundle(tiny_bundle, tmp_path)
    graphs = {p: g for p, g in manifest.graphs.items() if p != "fp32"}
    write_manifest(bundle, dataclasses.replace(manifest, graphs=graphs))
    write_repository(bundle, tmp_path / "repo", RepoOptions())
    first = next(iter(graphs))
    for graph in ENCODERS:
        assert sha256_file(model_graph(tmp_path / "repo", graph)) == graphs[first][graph].sha256


def test_external_data_files_travel_beside_model_onnx(tiny_bundle, tmp_path):
    bundle, manifest = copy_bundle(tiny_bundle, tmp_path)
    entry = manifest.graph("fp32", LANGUAGE_ENCODER.name)
    graph = bundle / entry.file
    onnx.save_model(onnx.load(str(graph)), str(graph), save_as_external_data=True, location="weights.bin")
    data = graph.parent / "weights.bin"
    external = (ExternalData(str(data.relative_to(bundle)), data.stat().st_size),)
    moved = dataclasses.replace(entry, sha256=sha256_file(graph), external_data=external)
    graphs = {**manifest.graphs, "fp32": {**manifest.graphs["fp32"], LANGUAGE_ENCODER.name: moved}}
    write_manifest(bundle, dataclasses.replace(manifest, graphs=graphs))
    write_repository(bundle, tmp_path / "repo", RepoOptions())
    version = tmp_path / "repo" / LANGUAGE_ENCODER.name / "1"
    assert (version / "weights.bin").read_bytes() == data.read_bytes()
    feed = Preprocessor.from_folder(tmp_path / "repo" / "text_preprocess" / "1").texts([items(b"a red circle")])[0]
    np.testing.assert_array_equal(run(version / "model.onnx", feed), run(tiny_bundle / entry.file, feed))


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

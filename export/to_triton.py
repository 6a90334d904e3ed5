"""`python -m export.to_triton BUNDLE -o REPO`: a standalone model repository for NVIDIA's Triton server containers.

    image             ensemble        image (BYTES) [+ instruction (BYTES)]  ->  embeddings FP32 [K+1, D]
      image_preprocess  python          decode, resize, tokenize, pad to L  ->  pixel_values, image_grid, input_ids,
                                                                                 attention_mask
      vision_encoder    onnxruntime | tensorrt_plan   pixel_values, image_grid  ->  image_features FP32 [T, D]
                                                                             (+ deepstack_features [S, T, D])
      language_encoder  onnxruntime | tensorrt_plan   input_ids, attention_mask, image_features, image_grid
                                                      (+ deepstack_features)  ->  embeddings
    text              ensemble        text (BYTES)                           ->  embeddings FP32 [K+1, D]
      text_preprocess   python          tokenize, pad to L                   ->  input_ids, attention_mask,
                                                                                 image_features FP32 [1, D] (zeros),
                                                                                 (deepstack_features [S, 1, D], zeros)
                                                                                 image_grid (one merge block)
      language_encoder  (the same model as in `image`)
    score             onnxruntime     queries, candidates                    ->  scores (the scorer graph; no batching)

The encoders are the bundle's stored graphs (or their TensorRT engines) at --precision, one model each, so the
language model is in the repository once and serves both ensembles. Its `image_features` input takes T features
per image item and one per text item: an ensemble cannot make a constant, so the text preprocess model emits the
runtime's placeholder (`agff_deploy.feeds.language_feed`), a zero feature no token reads. Triton's dynamic batcher
joins requests of equal shapes only, so text and image items batch separately in front of the language encoder.

The public names (`image`, `text`, `score` and their inputs and outputs) are agff-serve's,
so a client works against either. Preprocessing (`serve.preprocess_model`) pads every item's tokens to one length
per model, so equal-shaped requests batch in Triton's dynamic batcher. Every config.pbtxt is built as tritonclient's
model-config protobuf (`serve.model_configs`), parsed back and checked against the manifest before the repository
appears: it is built in a temporary folder beside REPO and renamed into place, so a failure leaves no REPO.

What was run for real here: the two python preprocess models, loaded and queried over HTTP on the Triton binary the
nvidia-pytriton wheel ships (tests/test_to_triton.py). What was only validated: the onnxruntime and tensorrt_plan
encoder models, the scorer and the ensembles, whose configs were parsed by the protobuf and checked (names, dtypes,
dims, ensemble wiring, the ONNX graphs' own dims) but never loaded, because that server has only the Python
backend; the vision and language graphs were run in ONNX Runtime directly on the preprocess models' fixed-length
outputs. TensorRT engines were not exercised.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tritonclient.grpc import model_config_pb2 as mc

from agff_deploy.contract import (
    IMAGE_ENCODER,
    PIPELINES,
    SCORER,
    STORED_ENCODERS,
    STORED_NAMES,
    TEXT_ENCODER,
    TensorSpec,
)
from agff_deploy.errors import AgffError, ArtifactError, InputError, MissingFileError, print_error
from agff_deploy.manifest import MANIFEST_FILE, GraphEntry, Manifest, check_external_data, read_manifest, sha256_file
from runtime.loading import default_precision
from serve.model_configs import (
    CONFIG_FILE,
    TRITON_DTYPES,
    Batching,
    Tensor,
    model_config,
    read_config,
    tensor_of,
    write_config,
)
from serve.preprocess_model import Preprocessor, fixed_lengths
from serve.request_items import IMAGE, INSTRUCTION, TEXT

TASKS = ("image", "text")
PIPELINE = {"image": IMAGE_ENCODER.name, "text": TEXT_ENCODER.name}  # the contract's item pipeline per ensemble
PREPROCESS = {"image": "image_preprocess", "text": "text_preprocess"}
REQUESTS = {
    "image": (Tensor(IMAGE, "bytes", (1,)), Tensor(INSTRUCTION, "bytes", (1,), optional=True)),
    "text": (Tensor(TEXT, "bytes", (1,)),),
}
PLACEHOLDER_FEATURES = 1  # image features per text item: one zero feature, never read
SCORE = "score"  # agff-serve's name for the model that runs the scorer graph
BACKENDS = ("onnxruntime", "tensorrt")
VERSION = "1"
MODEL_PY = "from serve.preprocess_model import TritonPythonModel  # noqa: F401  (Triton looks the class up here)\n"
DTYPE_NAMES = {value: name for name, value in TRITON_DTYPES.items()}


@dataclass(frozen=True)
class RepoOptions:
    precision: str = ""  # empty: fp32 where the bundle has it, else its first precision (a device bundle)
    backend: str = ""  # empty: tensorrt when the bundle has engines at `precision`, else onnxruntime
    max_batch: int = 0  # 0: the bundle's batch max
    max_queue_delay_ms: float = 2.0
    device: str = ""  # cpu or gpu for the encoders and scorer; empty: gpu for tensorrt, else cpu


@dataclass(frozen=True)
class Plan:
    """The options resolved against one bundle: what every model of the repository is built from."""

    precision: str
    backend: str
    batching: Batching
    kind: str  # the encoders' and scorer's instance kind


@dataclass(frozen=True)
class Interface:
    """A model's tensors as its config must declare them, derived from the manifest."""

    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]
    max_batch: int  # 0: the model does not batch


@dataclass(frozen=True)
class Copy:
    source: Path
    name: str  # inside the model's version folder
    sha256: str = ""  # checked after copying; empty: sizes were checked instead (external data)


@dataclass(frozen=True)
class Model:
    config: mc.ModelConfig
    copies: tuple[Copy, ...] = ()
    texts: Mapping[str, str] | None = None  # file name -> content, inside the version folder


def resolve(manifest: Manifest, options: RepoOptions) -> Plan:
    """Refuse options the bundle cannot serve before anything is written."""
    precision = options.precision or default_precision(manifest)
    for graph in STORED_NAMES:
        manifest.graph(precision, graph)  # says what to export or choose instead
    backend = choose_backend(manifest, precision, options.backend)
    top = manifest.dims.batch.max
    max_batch = options.max_batch or top
    if not 1 <= max_batch <= top:
        raise InputError(f"--max-batch {max_batch}: the bundle's graphs were exported for batches 1..{top}")
    if options.max_queue_delay_ms < 0:
        raise InputError(f"--max-queue-delay-ms {options.max_queue_delay_ms}: must be 0 or more")
    device = options.device or ("gpu" if backend == "tensorrt" else "cpu")
    if backend == "tensorrt" and device != "gpu":
        raise InputError("--device cpu: TensorRT engines run on the GPU only; use --backend onnxruntime for the CPU")
    return Plan(
        precision,
        backend,
        Batching(max_batch, round(options.max_queue_delay_ms * 1000)),
        f"KIND_{device.upper()}",
    )


def choose_backend(manifest: Manifest, precision: str, asked: str) -> str:
    engines = manifest.engines
    has_engines = engines is not None and engines.precision == precision
    if asked == "tensorrt" and not has_engines:
        if engines is None:
            raise InputError(
                "--backend tensorrt: the bundle has no TensorRT engines; build them on the serving GPU with "
                f"`python -m export.to_trt BUNDLE --precision {precision}`, or use --backend onnxruntime"
            )
        raise InputError(
            f"--backend tensorrt: the bundle's engines are {engines.precision}, not {precision}: choose "
            f"--precision {engines.precision} or --backend onnxruntime"
        )
    return asked or ("tensorrt" if has_engines else "onnxruntime")


def steps(task: str) -> tuple[str, ...]:
    """The models an ensemble runs, in order: its preprocess model, then the stored graphs of its pipeline."""
    return (PREPROCESS[task], *PIPELINES[PIPELINE[task]])


def interfaces(manifest: Manifest, precision: str, max_batch: int) -> dict[str, Interface]:
    """Every model's tensors: the graphs' names, dtypes and dims from the manifest, the batch axis dropped where the
    model batches; a preprocess model emits what its pipeline's graphs take and none of them makes, the token
    length fixed at L and a text's image features at one."""
    graphs = {name: manifest.graph(precision, name) for name in STORED_NAMES}
    # The vision graph gives one image token per merge block of its patch rows, as many as the batch's largest image
    # has: a dynamic dim, -1 in the config as in the graph.
    models = {name: encoder_interface(graphs[name], {}, max_batch) for name in STORED_ENCODERS}
    lengths = fixed_lengths(manifest)
    for task in TASKS:
        pipeline = PIPELINES[PIPELINE[task]]
        fixed = {"length": lengths[task], "image_tokens": PLACEHOLDER_FEATURES}
        fed = tuple(tensor_of(t, batched=True, sizes=fixed) for t in fed_inputs([graphs[g] for g in pipeline]))
        models[PREPROCESS[task]] = Interface(REQUESTS[task], fed, max_batch)
        models[task] = Interface(REQUESTS[task], models[pipeline[-1]].outputs, max_batch)
    scorer = graphs[SCORER.name]
    models[SCORE] = Interface(
        tuple(tensor_of(t, batched=False) for t in scorer.inputs),
        tuple(tensor_of(t, batched=False) for t in scorer.outputs),
        0,
    )
    return models


def encoder_interface(entry: GraphEntry, made: Mapping[str, int], max_batch: int) -> Interface:
    """A stored encoder graph's tensors; outputs have the sizes its export fixed (`made`), inputs stay dynamic."""
    inputs = tuple(tensor_of(t, batched=True) for t in entry.inputs)
    outputs = tuple(tensor_of(t, batched=True, sizes=made) for t in entry.outputs)
    return Interface(inputs, outputs, max_batch)


def fed_inputs(graphs: Sequence[GraphEntry]) -> tuple[TensorSpec, ...]:
    """The inputs of a pipeline's graphs, run in order, that no earlier graph of it produces, each once."""
    made: set[str] = set()
    needed: dict[str, TensorSpec] = {}
    for graph in graphs:
        for tensor in graph.inputs:
            if tensor.name not in made:
                needed.setdefault(tensor.name, tensor)
        made |= {t.name for t in graph.outputs}
    return tuple(needed.values())


def repository_models(bundle: Path, manifest: Manifest, plan: Plan) -> dict[str, Model]:
    io = interfaces(manifest, plan.precision, plan.batching.max_batch_size)
    models = {name: encoder_model(name, io[name], bundle, manifest, plan) for name in STORED_ENCODERS}
    for task in TASKS:
        models[PREPROCESS[task]] = preprocess_model(
            PREPROCESS[task], io[PREPROCESS[task]], bundle, manifest, plan, task
        )
        models[task] = ensemble_model(task, io, steps(task))
    scorer = io[SCORE]
    models[SCORE] = Model(
        model_config(SCORE, scorer.inputs, scorer.outputs, None, backend="onnxruntime", kind=plan.kind),
        onnx_copies(bundle, manifest, plan.precision, SCORER.name),
    )
    return models


def preprocess_model(name: str, io: Interface, bundle: Path, manifest: Manifest, plan: Plan, task: str) -> Model:
    """A python-backend model that reads the bundle's manifest and tokenizer from its own version folder."""
    config = model_config(name, io.inputs, io.outputs, plan.batching, backend="python", parameters={"task": task})
    copies = (
        Copy(bundle / MANIFEST_FILE, MANIFEST_FILE),
        Copy(bundle / manifest.tokenizer.file, manifest.tokenizer.file),
    )
    return Model(config, copies, {"model.py": MODEL_PY})


def encoder_model(name: str, io: Interface, bundle: Path, manifest: Manifest, plan: Plan) -> Model:
    """A stored graph as its own model, named as the graph: each is in the repository once."""
    if plan.backend == "tensorrt":
        config = model_config(name, io.inputs, io.outputs, plan.batching, platform="tensorrt_plan", kind=plan.kind)
        return Model(config, (engine_copy(bundle, manifest, plan.precision, name),))
    config = model_config(name, io.inputs, io.outputs, plan.batching, backend="onnxruntime", kind=plan.kind)
    return Model(config, onnx_copies(bundle, manifest, plan.precision, name))


def onnx_copies(bundle: Path, manifest: Manifest, precision: str, graph: str) -> tuple[Copy, ...]:
    """The graph as model.onnx plus its external-data files, named as the graph references them (relative to it)."""
    entry = manifest.graph(precision, graph)
    check_external_data(bundle, entry)
    folder = Path(entry.file).parent
    data = tuple(Copy(bundle / d.file, str(Path(d.file).relative_to(folder))) for d in entry.external_data)
    return (Copy(bundle / entry.file, "model.onnx", entry.sha256), *data)


def engine_copy(bundle: Path, manifest: Manifest, precision: str, graph: str) -> Copy:
    """The TensorRT engine as model.plan, refused when it was built from another graph than the bundle's."""
    assert manifest.engines is not None  # resolve() chose tensorrt because the bundle has engines
    engine = manifest.engines.graphs.get(graph)
    if engine is None:
        raise ArtifactError(
            f"{bundle}'s TensorRT engines lack the {graph}: rebuild them with `python -m export.to_trt {bundle}`"
        )
    if engine.source_sha256 != manifest.graph(precision, graph).sha256:
        raise ArtifactError(
            f"{bundle / engine.file} was built from another {graph} graph than the bundle's: rebuild it with "
            f"`python -m export.to_trt {bundle}`"
        )
    return Copy(bundle / engine.file, "model.plan", engine.sha256)


def ensemble_model(name: str, io: Mapping[str, Interface], step_models: Sequence[str]) -> Model:
    """Request tensors -> each step in turn -> embeddings. Every tensor keeps the contract's name from the step that
    makes it to the steps that take it; the ensemble batches as far as its steps do."""
    config = model_config(name, io[name].inputs, io[name].outputs, None, platform="ensemble")
    config.max_batch_size = io[name].max_batch
    for step in step_models:
        config.ensemble_scheduling.step.add(
            model_name=step,
            model_version=-1,
            input_map={t.name: t.name for t in io[step].inputs},
            output_map={t.name: t.name for t in io[step].outputs},
        )
    return Model(config)


def write_model(root: Path, model: Model) -> None:
    version = root / model.config.name / VERSION
    version.mkdir(parents=True)
    for copy in model.copies:
        copy_checked(copy, version / copy.name)
    for name, text in (model.texts or {}).items():
        (version / name).write_text(text)
    write_config(root / model.config.name, model.config)


def copy_checked(copy: Copy, target: Path) -> None:
    if not copy.source.is_file():
        raise MissingFileError(f"{copy.source} is missing: the manifest lists it; copy the whole bundle folder")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(copy.source, target)
    if copy.sha256 and sha256_file(target) != copy.sha256:
        raise ArtifactError(f"{copy.source} does not match the sha256 its manifest records: an altered or corrupt copy")


def check_repository(root: Path, expected: Mapping[str, Interface]) -> dict[str, mc.ModelConfig]:
    """Every written config parsed back by the model-config protobuf and held to the manifest; the ensembles' steps
    must connect tensors that exist on both sides, and the preprocess models must load their files."""
    configs = {name: read_config(root / name / CONFIG_FILE) for name in expected}
    problems = [p for name, config in configs.items() for p in config_problems(name, config, expected[name])]
    problems += [p for task in TASKS for p in ensemble_problems(configs, task)]
    if problems:
        raise ArtifactError(
            f"{root}: the written configs disagree with the bundle's manifest:\n  " + "\n  ".join(problems)
        )
    for task in TASKS:
        Preprocessor.from_folder(root / PREPROCESS[task] / VERSION)
    return configs


def as_tensor(tensor: mc.ModelInput | mc.ModelOutput) -> Tensor:
    return Tensor(tensor.name, DTYPE_NAMES[tensor.data_type], tuple(tensor.dims), getattr(tensor, "optional", False))


def config_problems(name: str, config: mc.ModelConfig, want: Interface) -> list[str]:
    problems = [] if config.name == name else [f"{name}: config names the model {config.name!r}"]
    for kind, got, expected in (("inputs", config.input, want.inputs), ("outputs", config.output, want.outputs)):
        tensors = tuple(as_tensor(t) for t in got)
        if tensors != expected:
            problems.append(f"{name}: {kind} are {describe(tensors)}, the manifest says {describe(expected)}")
    if config.max_batch_size != want.max_batch:
        problems.append(f"{name}: max_batch_size is {config.max_batch_size}, expected {want.max_batch}")
    return problems


def ensemble_problems(configs: Mapping[str, mc.ModelConfig], name: str) -> list[str]:
    """Each step's inputs come from the ensemble's inputs or an earlier step's outputs, with the same dtype and
    compatible dims (-1 matches any size); every required input of a step is fed; every ensemble output is made."""
    ensemble = configs[name]
    available = {t.name: as_tensor(t) for t in ensemble.input}
    problems = []
    for step in ensemble.ensemble_scheduling.step:
        if step.model_name not in configs:
            problems.append(f"{name}: step {step.model_name} is not a model of the repository")
            continue
        inputs = {t.name: as_tensor(t) for t in configs[step.model_name].input}
        outputs = {t.name: as_tensor(t) for t in configs[step.model_name].output}
        where = f"{name}: step {step.model_name}"
        for model_input, tensor in step.input_map.items():
            problems += link_problems(where, tensor, available.get(tensor), model_input, inputs.get(model_input))
        unfed = [t.name for t in inputs.values() if not t.optional and t.name not in step.input_map]
        problems += [f"{where}: nothing feeds its input {t}" for t in unfed]
        for model_output, tensor in step.output_map.items():
            if model_output not in outputs:
                problems.append(f"{where}: maps {model_output}, which is not one of its outputs")
            else:
                available[tensor] = outputs[model_output]
    for output in map(as_tensor, ensemble.output):
        problems += link_problems(name, output.name, available.get(output.name), output.name, output)
    return problems


def link_problems(where: str, tensor: str, source: Tensor | None, target_name: str, target: Tensor | None) -> list[str]:
    if source is None:
        return [f"{where}: {tensor} is not an ensemble input nor an earlier step's output"]
    if target is None:
        return [f"{where}: has no tensor {target_name} to connect {tensor} to"]
    dims_fit = len(source.dims) == len(target.dims) and all(
        a == b or -1 in (a, b) for a, b in zip(source.dims, target.dims, strict=True)
    )
    if source.dtype != target.dtype or not dims_fit:
        return [f"{where}: {describe((source,))} does not fit {describe((target,))}"]
    return []


def describe(tensors: Sequence[Tensor]) -> str:
    """`name TYPE[dims]` as Triton's protocol names the types (BYTES, FP32, INT64), `?` marking an optional input."""
    names = {"bytes": "BYTES", "float32": "FP32", "float16": "FP16", "int64": "INT64", "int32": "INT32", "bool": "BOOL"}
    return (
        ", ".join(
            f"{t.name} {names[t.dtype]}[{','.join(map(str, t.dims))}]{'?' if t.optional else ''}" for t in tensors
        )
        or "none"
    )


def summary(configs: Mapping[str, mc.ModelConfig]) -> str:
    rows = [("model", "backend/platform", "max batch", "inputs", "outputs")]
    for name, config in configs.items():
        inputs, outputs = (describe([as_tensor(t) for t in tensors]) for tensors in (config.input, config.output))
        rows.append((name, config.backend or config.platform, str(config.max_batch_size), inputs, outputs))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row[:4], widths, strict=True)) + "  " + row[4]
        for row in rows
    ]
    return "\n".join([lines[0], "-" * len(lines[0]), *lines[1:]])


def readme(bundle: Path, plan: Plan, table: str) -> str:
    return f"""# AGFF Triton model repository

Written by `python -m export.to_triton {bundle}` ({plan.precision} graphs, {plan.backend} encoders, dynamic batching
up to {plan.batching.max_batch_size} with a {plan.batching.max_queue_delay_us} us queue delay).

```
{table}
```

Clients call the ensembles `image` (inputs `image`: the bytes of an encoded image file, optional `instruction`:
UTF-8) and `text` (input `text`: UTF-8); both return `embeddings`. `score` takes whole sets of embeddings
(`queries`, `candidates`) and returns their fused `scores`. All three are agff-serve's models of the same names.

`image` runs `image_preprocess`, `vision_encoder` (pixels to image features) and `language_encoder`; `text` runs
`text_preprocess` and the same `language_encoder`, so the language model is loaded once. A text item carries one
zero image feature that no token reads; text and image requests differ in shape, so each batches with its own kind.

The preprocess models run on Triton's Python backend and import `serve.preprocess_model`, so the Triton container
needs agff-deploy installed (it brings numpy, Pillow and tokenizers; no torch, no ONNX Runtime) into a Python of
3.10 or newer, agff-deploy's minimum: check `python3 --version` in the image you pick. Build a wheel where
agff-deploy is checked out with `pip wheel --no-deps -w dist .`, then:

```
docker run --gpus all -p8000:8000 -p8001:8001 -p8002:8002 -v $PWD/REPO:/models -v $PWD/dist:/dist \\
    nvcr.io/nvidia/tritonserver:<yy.mm>-py3 \\
    bash -c "pip install /dist/agff_deploy-*.whl && tritonserver --model-repository=/models"
```

TensorRT plans run only with the TensorRT version and GPU they were built on, and only for batches up to the
`--batch` MAX they were built with (`python -m export.to_trt`).
"""


def replace_folder(built: Path, out: Path) -> None:
    """`built` becomes `out`; an old `out` is moved aside first and removed only once the new one is in place."""
    if not out.exists():
        built.rename(out)
        return
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    out.rename(old)
    built.rename(out)
    shutil.rmtree(old)


def refuse_existing(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise InputError(f"{out} is a file; name a folder for the model repository")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise InputError(f"{out} exists and is not empty; pass --force to replace it")


def write_repository(bundle: Path, out: Path, options: RepoOptions, force: bool = False) -> str:
    """Write the repository at `out` and return its summary table; on any failure `out` is left as it was."""
    out = out.resolve()
    manifest = read_manifest(bundle)
    plan = resolve(manifest, options)
    refuse_existing(out, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    built = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(built, ignore_errors=True)
    try:
        for model in repository_models(bundle, manifest, plan).values():
            write_model(built, model)
        configs = check_repository(built, interfaces(manifest, plan.precision, plan.batching.max_batch_size))
        table = summary(configs)
        (built / "README.md").write_text(readme(bundle, plan, table))
        replace_folder(built, out)
    finally:
        shutil.rmtree(built, ignore_errors=True)
    return table


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m export.to_triton", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("bundle", type=Path, metavar="BUNDLE", help="bundle folder written by `python -m export.to_onnx`")
    p.add_argument("-o", "--out", type=Path, required=True, metavar="REPO", help="model repository folder to write")
    p.add_argument(
        "--precision",
        default="",
        help="the bundle's graphs to serve (default: fp32, or the bundle's first precision when it has no fp32)",
    )
    p.add_argument(
        "--backend",
        choices=BACKENDS,
        help="the encoders' backend (default: tensorrt when the bundle has engines at --precision, else onnxruntime)",
    )
    p.add_argument(
        "--max-batch", type=int, default=0, metavar="N", help="largest dynamic batch (default: the bundle's batch max)"
    )
    p.add_argument(
        "--max-queue-delay-ms", type=float, default=2.0, help="how long a request may wait for others (default: 2)"
    )
    p.add_argument(
        "--device", choices=("cpu", "gpu"), help="where encoders and scorer run (default: gpu for tensorrt, else cpu)"
    )
    p.add_argument("--force", action="store_true", help="replace an existing non-empty REPO")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    options = RepoOptions(
        args.precision, args.backend or "", args.max_batch, args.max_queue_delay_ms, args.device or ""
    )
    try:
        table = write_repository(args.bundle, args.out, options, args.force)
    except (AgffError, OSError) as err:
        return print_error(err)
    print(table)
    print(f"Triton model repository written: {args.out.resolve()} (see its README.md)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

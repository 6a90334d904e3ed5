"""The parity gate: candidate runners against reference runners on the same input sets, plus the TensorRT lint.

`compare` is the one gate. `export.to_onnx` runs it on every pipeline of a new
bundle against the PyTorch model (its outputs recorded first, so the model can
be freed before ONNX Runtime loads the graphs, and stored in the bundle by
`export.gate_reference`); `python -m export.check BUNDLE` runs it again on
demand against that record (or a checkpoint); `export.to_trt` runs it on built
engines against the same record, on the device. Candidates are the runners
users run, from `runtime.loading`: the item pipelines, so every stored graph is
gated through what it computes for an item. Two input sets differ in batch size, text length and
padding; bars and their reasons in `agff_deploy.contract` and docs/parity.md.
torch is imported by `main` and `pytorch_reference` only: a Jetson has none.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Iterable, Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agff_deploy.config import source_config_file
from agff_deploy.contract import (
    ATTENTION_MASK,
    ENCODERS,
    GRAPH_NAMES,
    GRAPHS,
    IMAGE_ENCODER,
    PRECISIONS,
    SCORER,
    TEXT_ENCODER,
    Bar,
    Feed,
    resolved_graphs,
)
from agff_deploy.errors import AgffError, ArtifactError, InputError, MissingFileError, print_error
from agff_deploy.feeds import FeedEncoder
from agff_deploy.manifest import Fusion, Manifest, ParityRow, read_manifest, sha256_file
from agff_deploy.scenes import make_scene
from runtime.loading import ort_runners
from runtime.runner import Runner

from .gate_reference import HeldOutPairs, InputSets, RecordedRunner
from .targets import Target, get_target
from .trt_lint import lint_file

AGREEMENT_SEED = 700_000_000
INSTRUCTIONS = ("", "what colour is the star?", "how many circles are there in this picture?", "", "where is it?")
GATE_IMAGES = (2, 5)
# The held-out pairs' default: as many as fit AGREEMENT_BUDGET_S, in whole chunks, between the two counts. A pair
# runs through PyTorch and every precision with a top-1 bar: at the demo size 256 take seconds, at 2B minutes.
AGREEMENT_CHUNK = 32
AGREEMENT_PAIRS = (32, 256)
AGREEMENT_BUDGET_S = 300.0
CPU = ("CPUExecutionProvider",)  # the gate's ONNX Runtime sessions: exact fp32, whatever the host has


def add_gate_arguments(parser: argparse.ArgumentParser) -> None:
    """The gate's input-set and agreement options, shared by every command that gates (export and engine build)."""
    parser.add_argument(
        "--gate-images",
        type=int,
        nargs=2,
        default=list(GATE_IMAGES),
        metavar=("A", "B"),
        help="images in the gate's input sets A and B (default: %(default)s; 1 2 saves minutes on a 2B model)",
    )
    parser.add_argument(
        "--agreement-pairs",
        type=agreement_pairs_argument,
        default=None,
        help="held-out pairs for the top-1 retrieval check of int8 and int4, each run through PyTorch and every such "
        f"precision on the CPU (0 skips it; default: auto, as many as fit {AGREEMENT_BUDGET_S / 60:.0f} minutes by the "
        f"speed measured on sets A and B, {AGREEMENT_PAIRS[0]} to {AGREEMENT_PAIRS[1]})",
    )


def agreement_pairs_argument(text: str) -> int | None:
    """`auto` (None) or a count of held-out pairs."""
    if text == "auto":
        return None
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r}: give a count of pairs (0 skips the check) or auto")
    return int(text)


def top1_precisions(precisions: Iterable[str]) -> list[str]:
    """The precisions among `precisions` whose bar has a top-1 part: only they run the held-out pairs."""
    return [p for p in precisions if p in PRECISIONS and GRAPHS[IMAGE_ENCODER.name].bars[p].top1 is not None]


@dataclass(frozen=True)
class AgreementPlan:
    """How many held-out pairs the gate runs, and why: printed at export and kept in the bundle's gate record."""

    pairs: int
    reason: str


def plan_agreement(requested: int | None, seconds_per_pair: float, precisions: Iterable[str]) -> AgreementPlan:
    """`requested` pairs, or (None) the most that fit the budget when each costs `seconds_per_pair` in PyTorch and
    about as much again in each precision with a top-1 bar; at least the minimum, so a top-1 check always runs."""
    if requested is not None:
        return AgreementPlan(requested, f"--agreement-pairs {requested}")
    checked = top1_precisions(precisions)
    if not checked:
        return AgreementPlan(0, "auto: no precision asked for has a top-1 bar (int8, int8-dynamic and int4 have)")
    runs = 1 + len(checked)
    lo, hi = AGREEMENT_PAIRS
    fit = math.floor(AGREEMENT_BUDGET_S / (seconds_per_pair * runs) / AGREEMENT_CHUNK) * AGREEMENT_CHUNK
    pairs = min(hi, max(lo, fit))
    why = (
        f"auto: a pair took {seconds_per_pair:.3g} s in PyTorch and runs {runs} times (PyTorch, {', '.join(checked)}), "
        f"so {hi} would take about {hi * seconds_per_pair * runs / 60:.1f} min against a {AGREEMENT_BUDGET_S / 60:.0f}-"
        f"minute budget"
    )
    if fit < lo:
        why += f"; {lo} is the least that still gives a top-1 check"
    return AgreementPlan(pairs, why + "; --agreement-pairs N sets the count")


@dataclass
class GateReport:
    rows: list[ParityRow]
    lint: dict[str, list[str]]

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.rows) and not any(self.lint.values())

    @property
    def trusted(self) -> bool:
        """fp32 and the scorer pass: the graphs reproduce the model, so every precision that passes can ship."""
        return "fp32" not in self.failed_precisions()

    def failed_precisions(self) -> list[str]:
        """Precisions with a row under its bar or a graph the TensorRT lint flags (the shared scorer counts as fp32)."""
        failed = {r.precision for r in self.rows if not r.passed}
        failed |= {_lint_precision(file) for file, problems in self.lint.items() if problems}
        return [p for p in PRECISIONS if p in failed]

    def failures(self, precision: str) -> list[str]:
        """What failed at `precision`, each with its numbers and the bar they missed."""
        rows = [_describe_failure(r) for r in self.rows if r.precision == precision and not r.passed]
        lint = [
            f"TensorRT lint {file}: {'; '.join(problems)}"
            for file, problems in self.lint.items()
            if problems and _lint_precision(file) == precision
        ]
        return rows + lint

    def without(self, precisions: list[str]) -> GateReport:
        """The report of the graphs that remain once `precisions` are left out of the bundle."""
        return GateReport(
            [r for r in self.rows if r.precision not in precisions],
            {file: problems for file, problems in self.lint.items() if _lint_precision(file) not in precisions},
        )

    def table(self) -> str:
        bar = max([26, *(len(r.bar) + 2 for r in self.rows)])
        head = (
            f"{'precision':<13}{'graph':<15}{'inputs':<8}{'min cos':>11}{'max abs':>11}{'top-1':>8}  "
            f"{'bar':<{bar}}result"
        )
        lines = [head, "-" * len(head)]
        for r in self.rows:
            cos = "" if r.min_cosine is None else f"{r.min_cosine:.7f}"
            err = "" if r.max_abs is None else f"{r.max_abs:.2e}"
            top1 = "" if r.top1 is None else f"{r.top1:.1%}"
            lines.append(
                f"{r.precision:<13}{r.graph:<15}{r.inputs:<8}{cos:>11}{err:>11}{top1:>8}  "
                f"{r.bar:<{bar}}{'pass' if r.passed else 'FAIL'}"
            )
        for name, problems in self.lint.items():
            lines.append(f"TensorRT lint {name}: " + ("clean" if not problems else "; ".join(problems)))
        return "\n".join(lines)


def _lint_precision(file: str) -> str:
    """The precision a linted bundle file belongs to: its folder, or fp32 for the shared scorer."""
    return Path(file).parent.name or "fp32"


def _describe_failure(row: ParityRow) -> str:
    if row.top1 is not None:
        return f"retrieval top-1 agreement {row.top1:.1%} over {row.inputs} held-out pairs (bar {row.bar})"
    numbers = f"min cos {row.min_cosine:.5f}, max abs {row.max_abs:.2e}"
    return f"{row.graph} on input set {row.inputs}: {numbers} (bar {row.bar})"


def check_gate_images(images: tuple[int, int]) -> tuple[int, int]:
    a, b = images
    if not 1 <= a < b:
        raise InputError(f"--gate-images {a} {b}: set B needs more images than set A, and A at least one")
    return a, b


def parity_sets(
    encoder: FeedEncoder, sizes: Mapping[str, int], images: tuple[int, int] = GATE_IMAGES
) -> dict[str, dict[str, Feed]]:
    """Sets A and B, which differ in batch size, text length and padding (never the traced example). `images` is
    the image batch of set A and set B; a 2B model is gated on (1, 2) to save minutes. The scorer gets seeded
    unit-length embeddings of the model's shape (`sizes`)."""
    a, b = check_gate_images(images)
    scenes = [make_scene(AGREEMENT_SEED - 100 + i) for i in range(a + b)]
    pictures = encoder.render(scenes, mixed_aspects=True)
    questions_b = [INSTRUCTIONS[(2 + i) % len(INSTRUCTIONS)] for i in range(b)]
    texts_a = [scenes[0].caption(), "a red circle", "snow"]
    texts_b = ["x", scenes[1].caption(), scenes[2].global_caption(), "two stars"]
    rng = np.random.default_rng(AGREEMENT_SEED)
    return {
        "A": {
            IMAGE_ENCODER.name: encoder.feeds([INSTRUCTIONS[i % 2] for i in range(a)], pictures[:a]),
            TEXT_ENCODER.name: encoder.feeds(texts_a),
            SCORER.name: _scorer_feed(rng, sizes, a, len(texts_a)),
        },
        "B": {
            IMAGE_ENCODER.name: encoder.feeds(questions_b, pictures[a:]),
            TEXT_ENCODER.name: encoder.feeds(texts_b),
            SCORER.name: _scorer_feed(rng, sizes, b, len(texts_b)),
        },
    }


def _scorer_feed(rng: np.random.Generator, sizes: Mapping[str, int], queries: int, candidates: int) -> Feed:
    def unit(count: int) -> np.ndarray:
        vectors = rng.standard_normal((count, sizes["prompts"], sizes["hidden"])).astype(np.float32)
        return vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)

    query, candidate = SCORER.inputs
    return {query.name: unit(queries), candidate.name: unit(candidates)}


def held_out_pairs(encoder: FeedEncoder, fusion: Fusion, pairs: int) -> HeldOutPairs:
    """`pairs` held-out scenes and their captions, in chunks, ranked under `fusion`."""
    scenes = [make_scene(AGREEMENT_SEED + i, held_out=True) for i in range(pairs)]
    pictures = encoder.render(scenes)
    captions = [s.caption() for s in scenes]
    chunks = [slice(i, i + AGREEMENT_CHUNK) for i in range(0, pairs, AGREEMENT_CHUNK)]
    feeds = {
        IMAGE_ENCODER.name: [encoder.feeds([""] * len(pictures[c]), pictures[c]) for c in chunks],
        TEXT_ENCODER.name: [encoder.feeds(captions[c]) for c in chunks],
    }
    return HeldOutPairs(feeds, fusion)


def agreement(out: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    """Min cosine over embedding vectors (last axis) and max abs difference."""
    a = out.reshape(-1, out.shape[-1]).astype(np.float64)
    b = ref.reshape(-1, ref.shape[-1]).astype(np.float64)
    cos = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1) + 1e-30)
    return float(cos.min()), float(np.abs(a - b).max())


def compare(
    reference: Mapping[str, Runner],
    candidates: Mapping[str, Runner],
    input_sets: InputSets,
    bars: Mapping[str, Bar],
    precision: str,
) -> list[ParityRow]:
    """Each candidate graph against the reference runner of the same graph, on every input set, under `bars` (by
    graph); the encoders also on the held-out pairs when their bar has a top-1 part.

    The candidates are the pipelines of one precision, which share their stored graphs (the language encoder
    serves image and text items): all are activated first, so each stored graph loads once, and each pipeline is
    released after its feeds, so a graph no later pipeline needs is freed early. Together they hold one copy of the
    model. Rows are labelled `precision`.
    """
    rows, held_out = [], {}
    set_names = list(input_sets.sets)
    with ExitStack() as active:
        for candidate in candidates.values():
            active.enter_context(candidate)
        for graph, candidate in candidates.items():
            bar = bars[graph]
            feeds = [input_sets.sets[s][graph] for s in set_names]
            pairs = input_sets.held_out.feeds.get(graph, []) if input_sets.held_out and bar.top1 is not None else []
            expected = _run_all(reference[graph], feeds + pairs)
            found = _run_all(candidate, feeds + pairs)
            for name, out, ref in zip(set_names, found, expected, strict=False):
                rows.append(_row(precision, graph, name, out, ref, bar))
            if pairs:
                held_out[graph] = (np.concatenate(found[len(feeds) :]), np.concatenate(expected[len(feeds) :]))
    if input_sets.held_out and set(ENCODERS) <= set(held_out):
        rows.append(_retrieval_row(precision, input_sets.held_out, held_out, bars[IMAGE_ENCODER.name]))
    return rows


def _run_all(runner: Runner, feeds: list[Feed]) -> list[np.ndarray]:
    with runner:
        return [runner.infer(feed)[runner.spec.output] for feed in feeds]


def _row(precision: str, graph: str, inputs: str, out: np.ndarray, ref: np.ndarray, bar: Bar) -> ParityRow:
    if graph == SCORER.name:  # a score matrix is one vector: its rows are not embeddings
        out, ref = out.reshape(1, -1), ref.reshape(1, -1)
    min_cos, max_abs = agreement(out, ref)
    return ParityRow(precision, graph, inputs, min_cos, max_abs, bar.describe(), bar.passes(min_cos, max_abs))


def _retrieval_row(
    precision: str, pairs: HeldOutPairs, outputs: Mapping[str, tuple[np.ndarray, np.ndarray]], bar: Bar
) -> ParityRow:
    (image, image_ref), (text, text_ref) = (outputs[name] for name in ENCODERS)
    found, expected = pairs.top1(image, text), pairs.top1(image_ref, text_ref)
    top1 = float((found == expected).mean())
    return ParityRow(precision, "retrieval", str(len(found)), None, None, bar.describe(), top1 >= (bar.top1 or 0), top1)


def bars_at(precision: str, graphs: Iterable[str]) -> dict[str, Bar]:
    """Each graph's bar at `precision`, from the contract."""
    return {graph: GRAPHS[graph].bars[precision] for graph in graphs}


def gate_bundle(bundle: Path, reference: Mapping[str, Runner], input_sets: InputSets, target: Target) -> GateReport:
    """Every graph of `bundle` in ONNX Runtime (CPU) against `reference`, plus the TensorRT lint (no torch here).

    The scorer is exported once, in fp32, and shared: it is compared with fp32. Graphs are not hashed: their
    numbers are what the gate measures (and hashing a 2B bundle costs a minute).
    """
    manifest = read_manifest(bundle)
    rows = []
    for precision in manifest.graphs:
        graphs = GRAPH_NAMES if precision == "fp32" else ENCODERS
        candidates = ort_runners(bundle, manifest, precision, providers=CPU, graphs=graphs, check_hashes=False)
        rows += compare(reference, candidates, input_sets, bars_at(precision, graphs), precision)
    return GateReport(rows, lint_bundle(bundle, manifest, target))


def lint_bundle(bundle: Path, manifest: Manifest, target: Target) -> dict[str, list[str]]:
    """TensorRT lint of every graph a TensorRT build would take (int8-dynamic is ONNX Runtime only)."""
    files = {
        entry.file for graphs in manifest.graphs.values() for entry in graphs.values() if "tensorrt" in entry.backends
    }
    return {file: lint_file(bundle / file, target) for file in sorted(files)}


def pytorch_reference(
    model: Any,
    encoder: FeedEncoder,
    fusion: Fusion,
    images: tuple[int, int] = GATE_IMAGES,
    agreement_pairs: int | None = None,
    precisions: Iterable[str] = (),
) -> tuple[dict[str, Runner], InputSets]:
    """The gate's input sets for `model` (whose fusion parameters are `fusion`) and its outputs on them, recorded
    on the CPU so the model can be freed. Sets A and B run first; their speed sizes the held-out pairs when
    `agreement_pairs` is None (auto) for the `precisions` to be gated."""
    from runtime.torch_runner import TorchRunner

    sizes = model.config.sizes()
    sets = parity_sets(encoder, sizes, images)
    runners = {name: TorchRunner(model, spec, device="cpu") for name, spec in resolved_graphs(sizes).items()}
    reference, seconds = {}, {}
    for name, runner in runners.items():
        started = time.perf_counter()
        reference[name] = RecordedRunner.record(runner, [feeds[name] for feeds in sets.values()])
        seconds[name] = time.perf_counter() - started
    items = {name: sum(len(feeds[name][ATTENTION_MASK.name]) for feeds in sets.values()) for name in ENCODERS}
    per_pair = sum(seconds[name] / items[name] for name in ENCODERS)  # one image and one caption
    plan = plan_agreement(agreement_pairs, per_pair, precisions)
    print(f"parity gate: {plan.pairs} held-out pairs for the top-1 check ({plan.reason})", flush=True)
    held_out = held_out_pairs(encoder, fusion, plan.pairs) if plan.pairs else None
    if held_out is not None:
        for name, chunks in held_out.feeds.items():
            reference[name].record_more(runners[name], chunks)
    return reference, InputSets(sets, held_out, plan.reason)


def _source_checkpoint(bundle: Path, manifest: Manifest, override: str | None) -> Path:
    from agff_deploy.weights import weights_sha256

    ckpt = Path(override or manifest.source.checkpoint)
    if not ckpt.is_dir():
        raise MissingFileError(f"source checkpoint {ckpt} not found; pass --ckpt with the folder the bundle came from")
    if weights_sha256(ckpt) != manifest.source.weights_sha256:
        raise ArtifactError(f"the weights in {ckpt} are not those {bundle} was exported from (hash differs); re-export")
    config = source_config_file(ckpt)
    if sha256_file(config) != manifest.source.config_sha256:
        raise ArtifactError(f"{config} is not the config {bundle} was exported with (hash differs); re-export")
    return ckpt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export.check", description=__doc__)
    parser.add_argument("bundle", type=Path)
    parser.add_argument(
        "--ckpt",
        help="recompute the PyTorch reference from this checkpoint (default: the gate record stored in the bundle; "
        "--ckpt auto takes the checkpoint the manifest names)",
    )
    parser.add_argument("--target", default="generic", help="TensorRT target for the lint (default: %(default)s)")
    add_gate_arguments(parser)
    args = parser.parse_args(argv)
    try:
        manifest = read_manifest(args.bundle)
        if args.ckpt is None:
            from .gate_reference import load_gate_reference

            specs = resolved_graphs(manifest.sizes())
            reference, input_sets = load_gate_reference(args.bundle, manifest.gate, specs, manifest.fusion)
        else:
            reference, input_sets = _checkpoint_reference(args, manifest)
        report = gate_bundle(args.bundle, reference, input_sets, get_target(args.target))
    except (AgffError, OSError) as err:
        return print_error(err)
    print(report.table())
    print("parity gate: " + ("passed" if report.passed else "FAILED"))
    return 0 if report.passed else 1


def _checkpoint_reference(args: argparse.Namespace, manifest: Manifest) -> tuple[dict[str, Runner], InputSets]:
    from agff_deploy.checkpoint import item_encoder, load_checkpoint

    ckpt = _source_checkpoint(args.bundle, manifest, None if args.ckpt == "auto" else args.ckpt)
    model, tokenizer = load_checkpoint(ckpt, image_size=manifest.fixed_size())
    encoder = item_encoder(model.config, tokenizer)
    gate_images = tuple(args.gate_images)
    return pytorch_reference(model, encoder, manifest.fusion, gate_images, args.agreement_pairs, manifest.graphs)


if __name__ == "__main__":
    sys.exit(main())

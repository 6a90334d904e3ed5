"""The parity gate: every graph of a bundle against the PyTorch model, plus the TensorRT lint.

`python -m export.check BUNDLE` runs it on demand; `export.to_onnx` runs it
before a bundle is moved into place. Two input sets with different batch
sizes, text lengths and padding; bars and their reasons in docs/parity.md.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from agff_deploy.checkpoint import item_encoder, load_checkpoint
from agff_deploy.inputs import ItemEncoder
from agff_deploy.manifest import PRECISIONS, TRT_PRECISIONS, read_manifest
from agff_deploy.model import AGFFEmbedder
from agff_deploy.scenes import make_scene
from agff_deploy.weights import weights_sha256
from runtime.onnxruntime_loader import import_onnxruntime
from runtime.scoring import fused_similarity as numpy_fused_similarity

from .targets import Target, get_target
from .trt_lint import lint_file

AGREEMENT_SEED = 700_000_000
ENCODERS = ("image_encoder", "text_encoder")


@dataclass(frozen=True)
class Bar:
    min_cosine: float
    max_abs: float | None = None
    top1: float | None = None

    def describe(self) -> str:
        parts = [f"cos>={self.min_cosine}"]
        if self.max_abs is not None:
            parts.append(f"abs<={self.max_abs:g}")
        if self.top1 is not None:
            parts.append(f"top1>={self.top1:.0%}")
        return " ".join(parts)


BARS = {
    "fp32": Bar(0.99999, 1e-4),
    "fp16": Bar(0.999),
    "int8": Bar(0.98, top1=0.95),
    "int8-dynamic": Bar(0.98, top1=0.95),
}
SCORER_BAR = Bar(0.99999, 1e-4)


@dataclass
class ParityRow:
    precision: str
    graph: str
    inputs: str
    min_cosine: float | None
    max_abs: float | None
    bar: str
    passed: bool
    top1: float | None = None


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
        head = (
            f"{'precision':<13}{'graph':<15}{'inputs':<8}{'min cos':>11}{'max abs':>11}{'top-1':>8}  {'bar':<26}result"
        )
        lines = [head, "-" * len(head)]
        for r in self.rows:
            cos = "" if r.min_cosine is None else f"{r.min_cosine:.7f}"
            err = "" if r.max_abs is None else f"{r.max_abs:.2e}"
            top1 = "" if r.top1 is None else f"{r.top1:.1%}"
            lines.append(
                f"{r.precision:<13}{r.graph:<15}{r.inputs:<8}{cos:>11}{err:>11}{top1:>8}  "
                f"{r.bar:<26}{'pass' if r.passed else 'FAIL'}"
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


INSTRUCTIONS = ("", "what colour is the star?", "how many circles are there in this picture?", "", "where is it?")
GATE_IMAGES = (2, 5)


def check_gate_images(images: tuple[int, int]) -> tuple[int, int]:
    a, b = images
    if not 1 <= a < b:
        raise ValueError(f"--gate-images {a} {b}: set B needs more images than set A, and A at least one")
    return a, b


def parity_input_sets(
    encoder: ItemEncoder, images: tuple[int, int] = GATE_IMAGES
) -> dict[str, dict[str, dict[str, np.ndarray]]]:
    """Two sets that differ in batch size, text length and padding (never the traced example).

    `images` is the image batch of set A and set B; a 2B model is gated on (1, 2) to save minutes.
    """
    a, b = check_gate_images(images)
    size = encoder.preprocessor.height
    scenes = [make_scene(AGREEMENT_SEED - 100 + i) for i in range(a + b)]
    pictures = [s.render(size) for s in scenes]
    questions_b = [INSTRUCTIONS[(2 + i) % len(INSTRUCTIONS)] for i in range(b)]
    return {
        "A": {
            "image_encoder": encoder.feeds([INSTRUCTIONS[i % 2] for i in range(a)], pictures[:a]),
            "text_encoder": encoder.feeds([scenes[0].caption(), "a red circle", "snow"], None),
        },
        "B": {
            "image_encoder": encoder.feeds(questions_b, pictures[a:]),
            "text_encoder": encoder.feeds(["x", scenes[1].caption(), scenes[2].global_caption(), "two stars"], None),
        },
    }


@torch.no_grad()
def torch_embeddings(model: AGFFEmbedder, feeds: dict[str, np.ndarray]) -> np.ndarray:
    pixels = feeds.get("pixel_values")
    out = model(
        torch.from_numpy(feeds["input_ids"]),
        torch.from_numpy(feeds["attention_mask"]),
        None if pixels is None else torch.from_numpy(pixels),
    )
    return out.numpy()


def compare(out: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    """Min cosine over embedding vectors (last axis) and max abs difference."""
    a = out.reshape(-1, out.shape[-1]).astype(np.float64)
    b = ref.reshape(-1, ref.shape[-1]).astype(np.float64)
    cos = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1) + 1e-30)
    return float(cos.min()), float(np.abs(a - b).max())


def session(path: Path):
    ort = import_onnxruntime()
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _row(precision: str, graph: str, inputs: str, out: np.ndarray, ref: np.ndarray, bar: Bar) -> ParityRow:
    min_cos, max_abs = compare(out, ref)
    passed = min_cos >= bar.min_cosine and (bar.max_abs is None or max_abs <= bar.max_abs)
    return ParityRow(precision, graph, inputs, min_cos, max_abs, bar.describe(), passed)


def embed_in_chunks(run, encoder: ItemEncoder, texts: list[str], images: list | None, chunk: int = 32) -> np.ndarray:
    """`run(feeds) -> embeddings` over `texts` (and `images`) in chunks, concatenated."""
    parts = []
    for i in range(0, len(texts), chunk):
        parts.append(run(encoder.feeds(texts[i : i + chunk], None if images is None else images[i : i + chunk])))
    return np.concatenate(parts)


@dataclass
class GateReference:
    """What the gate compares graphs against, computed once by the PyTorch model.

    Holding numbers instead of the model lets the exporter free the model's
    weights before ONNX Runtime loads the graphs: at 2B parameters the two
    together would not fit a 24 GB machine.
    """

    feeds: dict[str, dict[str, dict[str, np.ndarray]]]
    outputs: dict[str, dict[str, np.ndarray]]
    scores: dict[str, np.ndarray]
    fusion: tuple[float, float, np.ndarray]
    agreement_feeds: dict[str, list[dict[str, np.ndarray]]] = field(default_factory=dict)
    agreement_top1: np.ndarray | None = None

    def top1(self, images: np.ndarray, texts: np.ndarray) -> np.ndarray:
        """Each image's best caption under the fused score (the model's own fusion parameters)."""
        return numpy_fused_similarity(images, texts, *self.fusion).argmax(1)


def gate_reference(
    model: AGFFEmbedder, encoder: ItemEncoder, agreement_pairs: int = 256, images: tuple[int, int] = GATE_IMAGES
) -> GateReference:
    feeds = parity_input_sets(encoder, images)
    outputs = {s: {name: torch_embeddings(model, f) for name, f in graphs.items()} for s, graphs in feeds.items()}
    with torch.no_grad():
        scores = {
            s: model.similarity(torch.from_numpy(o["image_encoder"]), torch.from_numpy(o["text_encoder"])).numpy()
            for s, o in outputs.items()
        }
    fusion = model.fusion
    reference = GateReference(
        feeds, outputs, scores, (fusion.t_in, float(fusion.t_f.detach()), fusion.pattern_bias.detach().float().numpy())
    )
    if agreement_pairs > 0:
        scenes = [make_scene(AGREEMENT_SEED + i, held_out=True) for i in range(agreement_pairs)]
        pictures = [s.render(encoder.preprocessor.height) for s in scenes]
        captions = [s.caption() for s in scenes]
        chunks = [slice(i, i + 32) for i in range(0, agreement_pairs, 32)]
        reference.agreement_feeds = {
            "image_encoder": [encoder.feeds([""] * len(pictures[c]), pictures[c]) for c in chunks],
            "text_encoder": [encoder.feeds(captions[c], None) for c in chunks],
        }
        reference.agreement_top1 = reference.top1(
            *(np.concatenate([torch_embeddings(model, f) for f in fs]) for fs in reference.agreement_feeds.values())
        )
    return reference


def check_precision(bundle: Path, manifest: dict, precision: str, reference: GateReference) -> list[ParityRow]:
    """Both encoders of one precision, one ONNX Runtime session at a time."""
    bar = BARS[precision]
    rows, agreement_out = [], {}
    for name in ENCODERS:
        sess = session(bundle / manifest["graphs"][precision][name]["file"])
        for set_name, feeds in reference.feeds.items():
            out = sess.run(None, feeds[name])[0]
            rows.append(_row(precision, name, set_name, out, reference.outputs[set_name][name], bar))
        if bar.top1 is not None and reference.agreement_top1 is not None:
            agreement_out[name] = np.concatenate([sess.run(None, f)[0] for f in reference.agreement_feeds[name]])
        del sess
    if agreement_out:
        top1 = reference.top1(agreement_out["image_encoder"], agreement_out["text_encoder"])
        agreement = float((top1 == reference.agreement_top1).mean())
        pairs = str(len(top1))
        rows.append(
            ParityRow(precision, "retrieval", pairs, None, None, bar.describe(), agreement >= bar.top1, agreement)
        )
    return rows


def check_scorer(bundle: Path, manifest: dict, reference: GateReference) -> list[ParityRow]:
    sess = session(bundle / manifest["graphs"]["fp32"]["scorer"]["file"])
    rows = []
    for set_name, outputs in reference.outputs.items():
        feeds = {"queries": outputs["image_encoder"], "candidates": outputs["text_encoder"]}
        out = sess.run(None, feeds)[0]
        rows.append(
            _row("fp32", "scorer", set_name, out.reshape(1, -1), reference.scores[set_name].reshape(1, -1), SCORER_BAR)
        )
    return rows


def lint_bundle(bundle: Path, manifest: dict, target: Target) -> dict[str, list[str]]:
    """TensorRT lint of every graph a TensorRT build would take (int8-dynamic is ONNX Runtime only)."""
    files = {
        entry["file"]
        for precision, graphs in manifest["graphs"].items()
        if precision in TRT_PRECISIONS
        for entry in graphs.values()
    }
    return {file: lint_file(bundle / file, target) for file in sorted(files)}


def run_gate(bundle: Path, reference: GateReference, target: Target) -> GateReport:
    """Every graph of `bundle` against the reference numbers, plus the TensorRT lint (no torch needed here)."""
    manifest = read_manifest(bundle)
    rows = check_scorer(bundle, manifest, reference)
    for precision in manifest["graphs"]:
        rows += check_precision(bundle, manifest, precision, reference)
    return GateReport(rows, lint_bundle(bundle, manifest, target))


def report_dict(report: GateReport) -> dict:
    return {"passed": report.passed, "rows": [asdict(r) for r in report.rows], "lint": report.lint}


def _source_checkpoint(bundle: Path, manifest: dict, override: str | None) -> Path:
    ckpt = Path(override or manifest["source"]["checkpoint"])
    if not ckpt.is_dir():
        raise FileNotFoundError(f"source checkpoint {ckpt} not found; pass --ckpt with the folder the bundle came from")
    if weights_sha256(ckpt) != manifest["source"]["weights_sha256"]:
        raise ValueError(f"the weights in {ckpt} are not those {bundle} was exported from (hash differs); re-export")
    return ckpt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export.check", description=__doc__)
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--ckpt", help="source checkpoint (default: the one recorded in the manifest)")
    parser.add_argument("--target", default="generic", help="TensorRT target for the lint (default: %(default)s)")
    parser.add_argument(
        "--agreement-pairs", type=int, default=256, help="held-out pairs for int8 top-1 agreement (0 skips it)"
    )
    parser.add_argument(
        "--gate-images", type=int, nargs=2, default=GATE_IMAGES, metavar=("A", "B"), help="images in set A and set B"
    )
    args = parser.parse_args(argv)
    manifest = read_manifest(args.bundle)
    ckpt = _source_checkpoint(args.bundle, manifest, args.ckpt)
    model, tokenizer = load_checkpoint(ckpt, image_size=tuple(manifest["image"]["size"]))
    encoder = item_encoder(model.config, tokenizer)
    reference = gate_reference(model, encoder, args.agreement_pairs, tuple(args.gate_images))
    del model
    report = run_gate(args.bundle, reference, get_target(args.target))
    print(report.table())
    print("parity gate: " + ("passed" if report.passed else "FAILED"))
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())

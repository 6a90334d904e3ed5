"""The parity gate: every graph of a bundle against the PyTorch model, plus the TensorRT lint.

`python -m export.check BUNDLE` runs it on demand; `export.to_onnx` runs it
before a bundle is moved into place. Two input sets with different batch
sizes, text lengths and padding; bars from DESIGN.md section 6.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from agff_deploy.checkpoint import WEIGHTS_FILE, item_encoder, load_checkpoint
from agff_deploy.inputs import ItemEncoder
from agff_deploy.manifest import TRT_PRECISIONS, read_manifest, sha256_file
from agff_deploy.model import AGFFEmbedder
from agff_deploy.scenes import make_scene
from runtime.onnxruntime_loader import import_onnxruntime

from .targets import Target, get_target
from .trt_lint import lint_file

AGREEMENT_SEED = 700_000_000


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


def parity_input_sets(encoder: ItemEncoder) -> dict[str, dict[str, dict[str, np.ndarray]]]:
    """Two sets that differ in batch size, text length and padding (never the traced example)."""
    size = encoder.preprocessor.height
    scenes = [make_scene(AGREEMENT_SEED - 100 + i) for i in range(9)]
    images = [s.render(size) for s in scenes]
    return {
        "A": {
            "image_encoder": encoder.feeds(["", "what colour is the star?"], images[:2]),
            "text_encoder": encoder.feeds([scenes[0].caption(), "a red circle", "snow"], None),
        },
        "B": {
            "image_encoder": encoder.feeds(
                ["how many circles are there in this picture?", "", "", "where is it?", ""], images[2:7]
            ),
            "text_encoder": encoder.feeds(["x", scenes[3].caption(), scenes[4].global_caption(), "two stars"], None),
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


def retrieval_agreement(model: AGFFEmbedder, encoder: ItemEncoder, image_sess, text_sess, pairs: int) -> float:
    """Share of held-out images whose top-1 caption under the graphs equals PyTorch fp32's."""
    scenes = [make_scene(AGREEMENT_SEED + i, held_out=True) for i in range(pairs)]
    images = [s.render(encoder.preprocessor.height) for s in scenes]
    queries, captions = [""] * pairs, [s.caption() for s in scenes]

    def top1(image_run, text_run) -> torch.Tensor:
        image_emb = embed_in_chunks(image_run, encoder, queries, images)
        text_emb = embed_in_chunks(text_run, encoder, captions, None)
        with torch.no_grad():
            return model.similarity(torch.from_numpy(image_emb), torch.from_numpy(text_emb)).argmax(1)

    graphs = top1(lambda f: image_sess.run(None, f)[0], lambda f: text_sess.run(None, f)[0])
    reference = top1(lambda f: torch_embeddings(model, f), lambda f: torch_embeddings(model, f))
    return float((graphs == reference).float().mean())


def check_precision(
    bundle: Path,
    manifest: dict,
    precision: str,
    model: AGFFEmbedder,
    encoder: ItemEncoder,
    agreement_pairs: int,
) -> list[ParityRow]:
    bar = BARS[precision]
    graphs = manifest["graphs"][precision]
    sessions = {name: session(bundle / graphs[name]["file"]) for name in ("image_encoder", "text_encoder")}
    rows = []
    for set_name, feeds in parity_input_sets(encoder).items():
        for name, sess in sessions.items():
            out = sess.run(None, feeds[name])[0]
            rows.append(_row(precision, name, set_name, out, torch_embeddings(model, feeds[name]), bar))
    if bar.top1 is not None and agreement_pairs > 0:
        agreement = retrieval_agreement(
            model, encoder, sessions["image_encoder"], sessions["text_encoder"], agreement_pairs
        )
        passed = agreement >= bar.top1
        rows.append(
            ParityRow(precision, "retrieval", str(agreement_pairs), None, None, bar.describe(), passed, agreement)
        )
    return rows


def check_scorer(bundle: Path, manifest: dict, model: AGFFEmbedder, encoder: ItemEncoder) -> list[ParityRow]:
    sess = session(bundle / manifest["graphs"]["fp32"]["scorer"]["file"])
    rows = []
    for set_name, feeds in parity_input_sets(encoder).items():
        queries = torch_embeddings(model, feeds["image_encoder"])
        candidates = torch_embeddings(model, feeds["text_encoder"])
        out = sess.run(None, {"queries": queries, "candidates": candidates})[0]
        with torch.no_grad():
            ref = model.similarity(torch.from_numpy(queries), torch.from_numpy(candidates)).numpy()
        rows.append(_row("fp32", "scorer", set_name, out.reshape(1, -1), ref.reshape(1, -1), SCORER_BAR))
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


def run_gate(
    bundle: Path,
    model: AGFFEmbedder,
    encoder: ItemEncoder,
    target: Target,
    agreement_pairs: int = 256,
) -> GateReport:
    manifest = read_manifest(bundle)
    rows = check_scorer(bundle, manifest, model, encoder)
    for precision in manifest["graphs"]:
        rows += check_precision(bundle, manifest, precision, model, encoder, agreement_pairs)
    return GateReport(rows, lint_bundle(bundle, manifest, target))


def report_dict(report: GateReport) -> dict:
    return {"passed": report.passed, "rows": [asdict(r) for r in report.rows], "lint": report.lint}


def _source_checkpoint(bundle: Path, manifest: dict, override: str | None) -> Path:
    ckpt = Path(override or manifest["source"]["checkpoint"])
    weights = ckpt / WEIGHTS_FILE
    if not weights.is_file():
        raise FileNotFoundError(f"source checkpoint {ckpt} not found; pass --ckpt with the folder the bundle came from")
    if sha256_file(weights) != manifest["source"]["weights_sha256"]:
        raise ValueError(f"{weights} is not the checkpoint {bundle} was exported from (hash differs); re-export")
    return ckpt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export.check", description=__doc__)
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--ckpt", help="source checkpoint (default: the one recorded in the manifest)")
    parser.add_argument("--target", default="generic", help="TensorRT target for the lint (default: %(default)s)")
    parser.add_argument(
        "--agreement-pairs", type=int, default=256, help="held-out pairs for int8 top-1 agreement (0 skips it)"
    )
    args = parser.parse_args(argv)
    manifest = read_manifest(args.bundle)
    ckpt = _source_checkpoint(args.bundle, manifest, args.ckpt)
    model, tokenizer = load_checkpoint(ckpt, image_size=tuple(manifest["image"]["size"]))
    report = run_gate(
        args.bundle, model, item_encoder(model.config, tokenizer), get_target(args.target), args.agreement_pairs
    )
    print(report.table())
    print("parity gate: " + ("passed" if report.passed else "FAILED"))
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())

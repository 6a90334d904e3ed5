"""`python -m export.to_onnx CKPT`: write an ONNX bundle (a vision and a language encoder per precision) and gate it."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from tokenizers import Tokenizer

from agff_deploy.checkpoint import item_encoder, load_checkpoint
from agff_deploy.config import POOLINGS
from agff_deploy.contract import PRECISIONS
from agff_deploy.errors import AgffError, InputError, print_error
from agff_deploy.model import AGFFEmbedder
from agff_deploy.single_vector import single_vector_embedder

from .bundle import BundleBuilder, DiskFull, ExportOptions, parse_precisions
from .check import GateReport, add_gate_arguments
from .graphs import EXTERNAL_DATA_BYTES
from .precision import INT4_BLOCK_SIZES
from .targets import TARGETS, get_target

ADVICE = {
    "fp32": "the fp32 graphs do not reproduce the PyTorch model, so no precision can be trusted",
    "fp16": "left out; use fp32, or int8-dynamic for ONNX Runtime on CPU",
    "int8": (
        "left out; try --calib-dir with a folder of your own images (the built-in scenes may not look like them), "
        "int8-dynamic for ONNX Runtime on CPU, or fp16 for TensorRT; a briefly trained model often misses int8's bars"
    ),
    "int8-dynamic": "left out; try fp16, or int8 with --calib-dir and a folder of your own images",
    "int4": (
        "left out; try --int4-float-budget 0.1 (the MatMuls int4 disturbs most stay float), --int4-block-size 64 "
        "(a scale per 64 weight rows), or int8 or fp16"
    ),
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m export.to_onnx", description=__doc__)
    p.add_argument(
        "ckpt",
        type=Path,
        help="checkpoint folder written by `python -m train.run`, or with --pooling last-token a Qwen2-VL or "
        "Qwen3-VL folder in the save_pretrained layout (a published single-vector embedder such as gme-Qwen2-VL or "
        "Qwen3-VL-Embedding)",
    )
    p.add_argument(
        "--pooling",
        choices=POOLINGS,
        default="prompts",
        help="prompts: an AGFF checkpoint's K+1 embeddings; last-token: one embedding, the last token's L2-normalised "
        "state after the chat turn of the folder's family (GME's on Qwen2-VL, Qwen3-VL-Embedding's on Qwen3-VL)",
    )
    p.add_argument(
        "--system-prompt",
        help="last-token: the system turn's default task instruction, which each call may replace (default: the "
        "convention's, 'You are a helpful assistant.' for GME, \"Represent the user's input.\" for "
        "Qwen3-VL-Embedding)",
    )
    p.add_argument(
        "--max-text-tokens",
        type=int,
        help="last-token: text tokens per item; a longer text is cut with a warning naming it (default: the "
        "convention's, 512 for GME, 8192 for Qwen3-VL-Embedding)",
    )
    p.add_argument(
        "--dim",
        type=int,
        help="last-token: keep the first DIM dimensions of each embedding, renormalised (Matryoshka; default: all)",
    )
    p.add_argument("-o", "--out", type=Path, help="bundle folder (default: bundle/ beside the checkpoint)")
    p.add_argument(
        "--precision",
        nargs="+",
        default=["fp32", "fp16", "int8"],
        metavar="P",
        help=f"precisions to export: {', '.join(PRECISIONS)} (fp32 is always included; default: %(default)s)",
    )
    p.add_argument(
        "--image-size", type=int, nargs=2, metavar=("H", "W"), help="fixed input resolution (default: the model's)"
    )
    for bound in ("min", "max"):
        p.add_argument(
            f"--{bound}-pixels",
            type=int,
            help=f"native resolution: the {'fewest' if bound == 'min' else 'most'} pixels an image is resized to "
            "(default: the model's); a lower maximum shrinks the TensorRT profiles and their memory",
        )
    p.add_argument(
        "--without-fp32",
        action="store_true",
        help="a device bundle: gate the fp32 graphs, then leave them out (engines and the other precisions are "
        "gated against the PyTorch outputs the bundle records)",
    )
    p.add_argument("--batch", type=int, nargs=3, default=[1, 8, 64], metavar=("MIN", "OPT", "MAX"))
    p.add_argument("--opset", type=int, default=18)
    p.add_argument(
        "--calib-dir", help="images (and optional texts.txt) for int8 calibration (default: built-in scenes)"
    )
    p.add_argument(
        "--calib-samples", type=int, default=128, help="built-in scenes for int8 calibration (default: %(default)s)"
    )
    p.add_argument(
        "--int4-block-size",
        type=int,
        default=128,
        choices=INT4_BLOCK_SIZES,
        help="weight rows per int4 scale (default: %(default)s; TensorRT documents 64 and 128)",
    )
    p.add_argument(
        "--int4-float-budget",
        type=float,
        default=0.0,
        metavar="SHARE",
        help="share of the int4 MatMul weights left in float, those int4 disturbs most on calibration items "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--fp16-guard-samples",
        type=int,
        default=16,
        help="images and texts the fp16 overflow guard measures activations on (default: %(default)s; "
        "4 saves minutes on a 2B model)",
    )
    p.add_argument("--target", default="generic", choices=sorted(TARGETS), help="TensorRT target for the lint")
    add_gate_arguments(p)
    p.add_argument(
        "--external-data-mb",
        type=float,
        default=EXTERNAL_DATA_BYTES / 2**20,
        help="graphs with more weight than this keep it in a .onnx.data file beside them (default: %(default).0f)",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    try:
        options = ExportOptions(
            precisions=parse_precisions(args.precision),
            batch=tuple(args.batch),
            opset=args.opset,
            calib_dir=args.calib_dir,
            calib_samples=args.calib_samples,
            agreement_pairs=args.agreement_pairs,
            gate_images=tuple(args.gate_images),
            external_data_bytes=int(args.external_data_mb * 2**20),
            keep_fp32=not args.without_fp32,
            fp16_guard_samples=args.fp16_guard_samples,
            int4_block_size=args.int4_block_size,
            int4_float_budget=args.int4_float_budget,
        )
        options.validate()
        target = get_target(args.target)
        model, tokenizer = _load(args)
    except (AgffError, OSError) as err:
        return print_error(err)
    out = args.out or args.ckpt.resolve().parent / "bundle"
    print(f"exporting {args.ckpt} -> {out} ({', '.join(options.precisions)})")
    try:
        report = BundleBuilder(model, item_encoder(model.config, tokenizer), args.ckpt, options).build(out, target)
    except DiskFull as err:
        return print_error(err.strerror or err)
    except (AgffError, OSError) as err:
        return print_error(err)
    print(report.table())
    elapsed = time.perf_counter() - started
    if report.passed:
        print(f"parity gate passed; bundle: {out.resolve()} ({elapsed:.0f} s)")
        return 0
    for precision in report.failed_precisions():
        print(_failure_line(report, precision), file=sys.stderr)
    if not report.trusted:
        print(f"parity gate FAILED after {elapsed:.0f} s: no bundle written", file=sys.stderr)
    else:
        kept = [p for p in options.precisions if p not in report.failed_precisions()]
        print(f"bundle written with {', '.join(kept)} only: {out.resolve()} ({elapsed:.0f} s)", file=sys.stderr)
    return 1


def _load(args: argparse.Namespace) -> tuple[AGFFEmbedder, Tokenizer]:
    """The model to export (an AGFF checkpoint, or with --pooling last-token a published embedder's folder), its
    pixel range as asked."""
    model, tokenizer = _model(args)
    if args.min_pixels or args.max_pixels:
        model.config = model.config.with_pixels(args.min_pixels, args.max_pixels)
    return model, tokenizer


def _model(args: argparse.Namespace) -> tuple[AGFFEmbedder, Tokenizer]:
    if args.pooling == "prompts":
        for flag, value in (("--system-prompt", args.system_prompt), ("--max-text-tokens", args.max_text_tokens),
                            ("--dim", args.dim)):  # fmt: skip
            if value is not None:
                raise InputError(f"{flag} is for published single-vector embedders: add --pooling last-token")
        return load_checkpoint(args.ckpt, image_size=args.image_size)
    if args.image_size:
        raise InputError("--pooling last-token keeps the folder's native-resolution image settings: drop --image-size")
    model, tokenizer, notes = single_vector_embedder(args.ckpt, args.system_prompt, args.max_text_tokens, args.dim)
    for note in notes:
        print(note)
    return model, tokenizer


def _failure_line(report: GateReport, precision: str) -> str:
    what = "; ".join(report.failures(precision))
    return f"error: parity gate FAILED for {precision}: {what}; {ADVICE[precision]}"


if __name__ == "__main__":
    sys.exit(main())

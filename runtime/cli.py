"""`agff-run`: embed, classify, rank and search with any AGFF artifact (no torch needed).

    agff-run --engine model.plan img.jpg                 embed one image, print a JSON summary
    agff-run --engine bundle/ photos/ "*.png" --out e.npy   many inputs, batched, written atomically
    agff-run --engine bundle/ --text "a red circle"      embed texts
    agff-run --engine bundle/ img.jpg --labels cat dog   zero-shot classification
    agff-run --engine bundle/ photos/ --query "a dog"    rank images by fused score
    agff-run index photos/ --engine bundle/ --index idx/ build or update a persistent index
    agff-run search "a dog" --engine bundle/ --index idx/

Bad inputs (missing, empty, truncated, not an image, decompression bombs) get
one line each on stderr and the batch goes on; the exit status is 1 when any
input failed, 2 when the command itself could not run.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import time
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from agff_deploy.images import DEFAULT_MAX_PIXELS, ImageLoadError, open_image

from .embedder import BACKENDS, Embedder
from .index import EmbeddingIndex

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


@dataclass
class Outcome:
    """What a batch job did: embedded paths in order, their embeddings, and every failure."""

    paths: list[str] = field(default_factory=list)
    embeddings: list[np.ndarray] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    inference_s: float = 0.0
    wall_s: float = 0.0

    def stacked(self) -> np.ndarray:
        return np.concatenate(self.embeddings) if self.embeddings else np.zeros((0, 0, 0), np.float32)


def expand_inputs(inputs: list[str]) -> tuple[list[Path], list[str]]:
    """Files, folders (recursive, image files) and globs -> paths; patterns matching nothing are errors."""
    paths, errors = [], []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            paths += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        elif glob.has_magic(item):
            matches = sorted(Path(p) for p in glob.glob(item, recursive=True) if Path(p).is_file())
            paths += matches
            if not matches:
                errors.append(f"{item}: no files match")
        else:
            paths.append(path)
    return paths, errors


def _prepare(embedder: Embedder, paths: list[Path], max_pixels: int):
    """Decode and preprocess one batch (runs in a worker thread, overlapping inference)."""
    ok, arrays, errors, notes = [], [], [], []
    for path in paths:
        try:
            image, image_notes = open_image(path, max_pixels)
            arrays.append(embedder.preprocessor.resize(image))
            ok.append(str(path))
            notes += image_notes
        except ImageLoadError as err:
            errors.append(str(err))
    pixels = embedder.preprocessor.normalize(np.stack(arrays)) if arrays else None
    return ok, pixels, errors, notes


def embed_files(
    embedder: Embedder, paths: list[Path], instruction: str, max_pixels: int, progress: bool = True
) -> Outcome:
    """Batches of images through the model, decoding the next batches while the current one runs."""
    outcome = Outcome()
    started = time.perf_counter()
    batches = [paths[i : i + embedder.batch_size] for i in range(0, len(paths), embedder.batch_size)]
    with (
        ThreadPoolExecutor(max_workers=2) as pool,
        tqdm(total=len(paths), unit="img", desc="embed", disable=not progress, file=sys.stderr) as bar,
    ):
        for ok, pixels, errors, notes in _ahead(pool, batches, lambda b: _prepare(embedder, b, max_pixels)):
            for line in errors:
                tqdm.write(f"error: {line}", file=sys.stderr)
            for line in notes:
                tqdm.write(f"warning: {line}", file=sys.stderr)
            outcome.errors += errors
            if pixels is not None:
                t0 = time.perf_counter()
                outcome.embeddings.append(embedder.embed_pixels(pixels, instruction))
                outcome.inference_s += time.perf_counter() - t0
                outcome.paths += ok
            bar.update(len(ok) + len(errors))
    outcome.wall_s = time.perf_counter() - started
    return outcome


def _ahead(pool: ThreadPoolExecutor, items: list, fn, depth: int = 2) -> Iterator:
    """`map(fn, items)` computed `depth` items ahead in `pool`, in order."""
    pending = [pool.submit(fn, item) for item in items[:depth]]
    for i in range(len(items)):
        result = pending.pop(0).result()
        if i + depth < len(items):
            pending.append(pool.submit(fn, items[i + depth]))
        yield result


def write_atomically(path: Path, write) -> None:
    """Write through a temporary file in the same folder, then rename: never a half-written output."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_output(out: Path, names: list[str], embeddings: np.ndarray, key: str) -> None:
    if out.suffix == ".npy":
        write_atomically(out, lambda f: np.save(f, embeddings.astype(np.float32)))
        write_atomically(out.with_name(out.name + ".paths.txt"), lambda f: f.write("\n".join(names).encode() + b"\n"))
    elif out.suffix == ".jsonl":
        rows = (json.dumps({key: n, "embedding": e.tolist()}) + "\n" for n, e in zip(names, embeddings, strict=True))
        write_atomically(out, lambda f: f.writelines(r.encode() for r in rows))
    else:
        raise ValueError(f"--out {out}: use a .npy or .jsonl file")


def _embed_texts(embedder: Embedder, texts: list[str]) -> np.ndarray:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        embeddings = embedder.embed_texts(texts, names=[f"text {t[:40]!r}" for t in texts])
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    return embeddings


def _summary_items(names: list[str], embeddings: np.ndarray, key: str, limit: int = 20) -> list[dict]:
    return [
        {
            key: n,
            "global_head": [round(float(v), 4) for v in e[0, :4]],
            "norms": [round(float(x), 4) for x in np.linalg.norm(e, axis=-1)],
        }
        for n, e in list(zip(names, embeddings, strict=True))[:limit]
    ]


def run_embed(args: argparse.Namespace) -> int:
    paths, errors = expand_inputs(args.inputs)
    for line in errors:
        print(f"error: {line}", file=sys.stderr)
    if not paths and not args.text:
        print("error: no inputs: give image files, folders or globs, or --text", file=sys.stderr)
        return 2
    with Embedder.load(args.engine, args.backend, args.precision, args.threads) as embedder:
        if args.batch_size:
            embedder.batch_size = args.batch_size
        summary: dict = {"backend": embedder.backend, "engine": str(args.engine)}
        outcome = Outcome(errors=errors)
        if paths:
            done = embed_files(embedder, paths, args.instruction, args.max_pixels, progress=not args.quiet)
            outcome.paths, outcome.embeddings, outcome.errors = done.paths, done.embeddings, errors + done.errors
            outcome.inference_s, outcome.wall_s = done.inference_s, done.wall_s
        images = outcome.stacked()
        texts = _embed_texts(embedder, args.text) if args.text else None
        summary.update(
            inputs=len(paths) + len(errors) + len(args.text or []),
            embedded=len(outcome.paths) + len(args.text or []),
            failed=len(outcome.errors),
        )
        if len(outcome.paths):
            summary["images_per_s"] = round(len(outcome.paths) / max(outcome.wall_s, 1e-9), 1)
            summary["time_outside_inference"] = round(1 - outcome.inference_s / max(outcome.wall_s, 1e-9), 3)
            summary["image_items"] = _summary_items(outcome.paths, images, "path")
        if texts is not None:
            summary["text_items"] = _summary_items(args.text, texts, "text")
        if args.labels and len(images):
            results = embedder.classify(images, args.labels, args.label_template)
            summary["labels"] = [
                {"path": p, "label": r["label"], "probability": round(r["probability"], 4)}
                for p, r in zip(outcome.paths, results, strict=True)
            ]
        if args.query and len(images):
            scores = embedder.rank(_embed_texts(embedder, [args.query])[0], images)
            order = np.argsort(-scores)
            summary["ranking"] = [{"path": outcome.paths[i], "score": round(float(scores[i]), 5)} for i in order]
        if texts is not None and len(images):
            summary["scores"] = np.round(embedder.score(images, texts), 5).tolist()
        if args.out:
            names, data, key = (outcome.paths, images, "path") if len(images) else (args.text, texts, "text")
            write_output(Path(args.out), names, data, key)
            summary["out"] = str(args.out)
    print(json.dumps(summary))
    return 1 if outcome.errors else 0


def run_index(args: argparse.Namespace) -> int:
    paths, errors = expand_inputs(args.inputs)
    for line in errors:
        print(f"error: {line}", file=sys.stderr)
    with Embedder.load(args.engine, args.backend, args.precision, args.threads) as embedder:
        index = EmbeddingIndex.open_or_create(args.index, embedder.model_id)
        existing = [p for p in paths if p.is_file()]
        todo = index.stale(existing) + [p for p in paths if not p.is_file()]
        done = embed_files(embedder, todo, "", args.max_pixels, progress=not args.quiet)
        if done.paths:
            index.add([Path(p) for p in done.paths], done.stacked())
        index.save(args.index)
    failed = errors + done.errors
    print(
        json.dumps(
            {
                "index": str(args.index),
                "items": len(index),
                "added": len(done.paths),
                "skipped_unchanged": len(paths) - len(todo),
                "failed": len(failed),
            }
        )
    )
    return 1 if failed else 0


def run_search(args: argparse.Namespace) -> int:
    index = EmbeddingIndex.load(args.index)
    with Embedder.load(args.engine, args.backend, args.precision, args.threads) as embedder:
        index.require_model(embedder.model_id)
        if args.image:
            query, is_text = embedder.embed_images([args.image], args.instruction)[0], False
        else:
            query, is_text = _embed_texts(embedder, [args.query])[0], True
        started = time.perf_counter()
        hits = index.search(query, embedder.score, is_text, args.top_k, args.shortlist)
        elapsed = time.perf_counter() - started
    results = [{"path": p, "score": round(s, 5)} for p, s in hits]
    print(
        json.dumps(
            {
                "query": args.image or args.query,
                "items": len(index),
                "search_ms": round(elapsed * 1000, 2),
                "results": results,
            }
        )
    )
    return 0


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--engine", required=True, help="TensorRT plan, ONNX graph, bundle folder or checkpoint folder")
    p.add_argument("--backend", choices=BACKENDS, help="force a backend (default: by what --engine is)")
    p.add_argument("--precision", help="bundle graphs to run with ONNX Runtime (default: fp32)")
    p.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads")
    p.add_argument(
        "--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="refuse larger images (decompression bombs)"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def parser_for(command: str) -> argparse.ArgumentParser:
    if command == "index":
        p = argparse.ArgumentParser(
            prog="agff-run index", description="Embed a folder into a persistent index (new or changed files only)."
        )
        p.add_argument("inputs", nargs="+")
        p.add_argument("--index", required=True, type=Path)
    elif command == "search":
        p = argparse.ArgumentParser(
            prog="agff-run search", description="Query an index: global shortlist, fused re-rank."
        )
        p.add_argument("query", nargs="?", default="")
        p.add_argument("--image", help="an image query instead of text")
        p.add_argument("--instruction", default="", help="instruction for an image query")
        p.add_argument("--index", required=True, type=Path)
        p.add_argument("--top-k", type=int, default=10)
        p.add_argument("--shortlist", type=int, default=100, help="candidates re-ranked with the fused score")
    else:
        p = argparse.ArgumentParser(
            prog="agff-run", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
        )
        p.add_argument("inputs", nargs="*", help="image files, folders or globs")
        p.add_argument("--text", nargs="+", help="texts to embed")
        p.add_argument("--instruction", default="", help="instruction text for image queries")
        p.add_argument("--labels", nargs="+", help="zero-shot classify the images among these labels")
        p.add_argument(
            "--label-template", default="a photo of a {}", help="how a label becomes a text (default: %(default)r)"
        )
        p.add_argument("--query", help="rank the images by fused score against this text")
        p.add_argument("--out", help="write embeddings to a .npy (plus .paths.txt) or .jsonl file")
        p.add_argument("--batch-size", type=int, help="default: the bundle's optimal batch")
    _common(p)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv and argv[0] in ("index", "search") else "embed"
    args = parser_for(command).parse_args(argv[1:] if command != "embed" else argv)
    if command == "search" and not (args.query or args.image):
        print("error: give a text query or --image", file=sys.stderr)
        return 2
    try:
        return {"embed": run_embed, "index": run_index, "search": run_search}[command](args)
    except (FileNotFoundError, ValueError, KeyError, ImportError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

"""`agff-run`: embed, classify, rank and search with any AGFF artifact (no torch needed).

    agff-run --engine model.plan img.jpg                 embed one image, print a summary
    agff-run --engine bundle/ photos/ "*.png" --out e.npy   many inputs, batched, written atomically
    agff-run --engine bundle/ --text "a red circle"      embed texts
    agff-run --engine bundle/ img.jpg --labels cat dog   zero-shot classification
    agff-run --engine bundle/ photos/ --query "a dog"    rank images by fused score
    agff-run index photos/ --engine bundle/ --index idx/ build or update a persistent index
    agff-run search "a dog" --engine bundle/ --index idx/
    agff-run embed-corpus photos/ --engine bundle/ --out shards/   a large corpus on Ray Data, as Parquet shards
    agff-run index --from-shards shards/ --index idx/           an index straight from those shards

On a terminal the summary is for people: counts, speed, where the output went,
the errors and, for --query, --labels and search, a table of the best matches.
Piped, redirected or with --json it is one JSON line for programs.

Bad inputs (missing, empty, truncated, not an image, decompression bombs,
dangling symlinks) get one `error:` line each on stderr and the batch goes on;
files in folders without an image file name are counted as skipped (--verbose
names them). The exit status is 1 when any input failed, 2 when the command
itself could not run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from agff_deploy.atomic_files import write_atomically
from agff_deploy.errors import AgffError, InputError

from .console import error_lines, output_options, report, say, warnings_as_lines
from .embedder import Embedder
from .index import EmbeddingIndex
from .input_files import Inputs, expand_inputs
from .loading import BACKENDS
from .pipeline import Outcome

TABLE_ROWS = 5  # rows of a ranked table a person sees; --json lists all
SCORE_SCALE = "fused score (higher = closer)"


def _report_inputs(found: Inputs, verbose: bool) -> None:
    for line in found.errors:
        say(f"error: {line}")
    for path in found.skipped if verbose else []:
        say(f"skipped: {path}: not an image file name ({path.suffix or 'no suffix'})")


def embed_files(
    embedder: Embedder, paths: list[Path], instruction: str, max_pixels: int, progress: bool, task: str | None = None
) -> Outcome:
    """The pipeline over `paths`, each error and notice a line on stderr as its batch comes up, with a progress bar."""
    with tqdm(total=len(paths), unit="img", desc="embed", disable=not progress, file=sys.stderr) as bar:
        return embedder.try_embed_images(
            paths,
            instruction,
            max_pixels,
            on_error=lambda line: say(f"error: {line}"),
            on_note=lambda line: say(f"warning: {line}"),
            on_done=bar.update,
            task=task,
        )


def write_output(out: Path, names: list[str], embeddings: np.ndarray, key: str) -> None:
    if out.suffix == ".npy":
        write_atomically(out, lambda f: np.save(f, embeddings.astype(np.float32)))
        write_atomically(out.with_name(out.name + ".paths.txt"), lambda f: f.write("\n".join(names).encode() + b"\n"))
    elif out.suffix == ".jsonl":
        rows = (json.dumps({key: n, "embedding": e.tolist()}) + "\n" for n, e in zip(names, embeddings, strict=True))
        write_atomically(out, lambda f: f.writelines(r.encode() for r in rows))
    else:
        raise InputError(f"--out {out}: use a .npy or .jsonl file")


def _embed_texts(embedder: Embedder, texts: list[str], task: str | None) -> np.ndarray:
    return embedder.embed_texts(texts, names=[f"text {t[:40]!r}" for t in texts], task=task)


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
    found = expand_inputs(args.inputs)
    _report_inputs(found, args.verbose)
    if not found.paths and not args.text:
        say("error: no inputs: give image files, folders or globs, or --text")
        return 2
    with Embedder.load(args.engine, args.backend, args.precision, args.threads) as embedder:
        if args.batch_size:
            embedder.batch_size = args.batch_size
        outcome = Outcome()
        if found.paths:
            outcome = embed_files(
                embedder, found.paths, args.instruction, args.max_pixels, not args.quiet, args.image_task
            )
        outcome.errors[:0] = found.errors
        summary = _embed_summary(embedder, args, found, outcome)
    report(summary, args.json, lambda: _embed_lines(summary, outcome.errors, args))
    return 1 if outcome.errors else 0


def _embed_summary(embedder: Embedder, args: argparse.Namespace, found: Inputs, outcome: Outcome) -> dict:
    """The JSON summary, with rankings and scores as asked for; writes --out (it needs the same arrays)."""
    images = outcome.stacked()
    texts = _embed_texts(embedder, args.text, args.task) if args.text else None
    summary: dict = {
        "backend": embedder.backend,
        "engine": str(args.engine),
        "inputs": len(found.paths) + len(found.errors) + len(args.text or []),
        "embedded": len(outcome.names) + len(args.text or []),
        "failed": len(outcome.errors),
        "skipped_unsupported": len(found.skipped),
    }
    if len(outcome.names):
        summary["images_per_s"] = round(len(outcome.names) / max(outcome.wall_s, 1e-9), 1)
        summary["time_outside_inference"] = round(1 - outcome.inference_s / max(outcome.wall_s, 1e-9), 3)
        summary["image_items"] = _summary_items(outcome.names, images, "path")
    if texts is not None:
        summary["text_items"] = _summary_items(args.text, texts, "text")
    if len(images):
        summary.update(_image_rankings(embedder, args, outcome.names, images, texts))
    if args.out:
        names, data, key = (
            (outcome.names, images, "path") if texts is None or len(images) else (args.text, texts, "text")
        )
        write_output(Path(args.out), names, data, key)
        summary["out"] = str(args.out)
    return summary


def _image_rankings(
    embedder: Embedder, args: argparse.Namespace, paths: list[str], images: np.ndarray, texts: np.ndarray | None
) -> dict:
    """Labels, the ranking for --query and image-text scores, as far as asked for."""
    found: dict = {}
    if args.labels:
        results = embedder.classify(images, args.labels, args.label_template)
        found["labels"] = [
            {"path": p, "label": r["label"], "probability": round(r["probability"], 4)}
            for p, r in zip(paths, results, strict=True)
        ]
    if args.query:
        scores = embedder.rank(_embed_texts(embedder, [args.query], args.task)[0], images)
        found["ranking"] = [{"path": paths[i], "score": round(float(scores[i]), 5)} for i in np.argsort(-scores)]
    if texts is not None:
        found["scores"] = np.round(embedder.score(images, texts), 5).tolist()
    return found


def _embed_lines(summary: dict, errors: list[str], args: argparse.Namespace) -> list[str]:
    """At most about 15 lines whatever the number of inputs: counts, speed, output, errors, ranked tables."""
    lines = [f"embedded {summary['embedded']} of {summary['inputs']} inputs with {summary['backend']}"]
    lines[0] += _failed_and_skipped(summary["failed"], summary["skipped_unsupported"], args.verbose)
    if "images_per_s" in summary:
        outside = summary["time_outside_inference"]
        lines.append(f"{summary['images_per_s']} images/s, {outside:.0%} of the time outside inference")
    lines.append(_where_output_went(summary.get("out")))
    lines += error_lines(errors)
    if "ranking" in summary:
        rows = [f"  {i:>3}  {r['score']:7.4f}  {r['path']}" for i, r in enumerate(summary["ranking"], 1)]
        lines += _table(f"ranked by {SCORE_SCALE} for {args.query!r}:", rows)
    if "labels" in summary:
        width = max(len(label) for label in args.labels)
        labels = sorted(summary["labels"], key=lambda r: -r["probability"])
        rows = [f"  {r['probability']:6.1%}  {r['label']:<{width}}  {r['path']}" for r in labels]
        lines += _table("zero-shot labels, most confident first:", rows)
    if "scores" in summary:
        lines.append(f"{SCORE_SCALE} of each image with each text: --json prints them")
    return lines


def _failed_and_skipped(failed: int, skipped: int, verbose: bool) -> str:
    parts = [f"{failed} failed"] if failed else []
    if skipped:
        parts.append(f"{skipped} skipped (not image file names{'' if verbose else '; --verbose names them'})")
    return "".join(f"; {part}" for part in parts)


def _where_output_went(out: str | None) -> str:
    if not out:
        return "embeddings not kept: --out FILE.npy or FILE.jsonl writes them"
    return f"embeddings written to {out}" + (f" and {out}.paths.txt" if out.endswith(".npy") else "")


def _table(title: str, rows: list[str]) -> list[str]:
    more = [f"  ... and {len(rows) - TABLE_ROWS} more (--json lists all)"] if len(rows) > TABLE_ROWS else []
    return [title, *rows[:TABLE_ROWS], *more]


def run_index(args: argparse.Namespace) -> int:
    if args.from_shards:
        return run_index_shards(args)
    if not args.engine:
        raise InputError("agff-run index: give --engine BUNDLE (the model that embeds the files)")
    found = expand_inputs(args.inputs)
    _report_inputs(found, args.verbose)
    with Embedder.load(args.engine, args.backend, args.precision, args.threads) as embedder:
        index = EmbeddingIndex.open_or_create(args.index, embedder.model_id)
        existing = [p for p in found.paths if p.is_file()]
        todo = index.stale(existing) + [p for p in found.paths if not p.is_file()]
        done = embed_files(embedder, todo, "", args.max_pixels, not args.quiet, args.task)
        if done.names:
            index.add([Path(p) for p in done.names], done.stacked())
        removed = index.remove(_vanished(index, args.inputs))
        index.commit()
    failed = found.errors + done.errors
    summary = {
        "index": str(args.index),
        "items": len(index),
        "added": len(done.names),
        "removed": removed,
        "skipped_unchanged": len(found.paths) - len(todo),
        "skipped_unsupported": len(found.skipped),
        "failed": len(failed),
    }
    if done.names:
        summary["images_per_s"] = round(len(done.names) / max(done.wall_s, 1e-9), 1)
    report(summary, args.json, lambda: _index_lines(summary, failed, args.verbose))
    return 1 if failed else 0


def run_index_shards(args: argparse.Namespace) -> int:
    """An index built (or updated) straight from `agff-run embed-corpus`'s shards: no model runs."""
    from .corpus_shards import ShardModel, index_items, shard_files

    files = shard_files(args.from_shards)
    if not files or args.inputs:
        why = "give no inputs with it" if args.inputs else "it holds no shards (shard-*.parquet)"
        raise InputError(f"--from-shards {args.from_shards}: {why}")
    import pyarrow.parquet as pq

    model = ShardModel.of(pq.read_schema(files[0]), files[0])
    index = EmbeddingIndex.open_or_create(args.index, model.model_id)
    index.require_shape((model.vectors, model.dimensions))
    count, chunks = index_items(args.from_shards, model, index.unchanged)
    index.add_chunks(count, tqdm(chunks, desc="index", unit="shard", disable=args.quiet, file=sys.stderr))
    index.commit()
    summary = {"index": str(args.index), "items": len(index), "added": count, "shards": len(files)}
    line = f"index {args.index}: {len(index)} items; {count} added from {len(files)} shards"
    report(summary, args.json, lambda: [line])
    return 0


def _vanished(index: EmbeddingIndex, inputs: list[str]) -> list[str]:
    """Indexed files under the given folders that are gone: their items leave the index."""
    roots = tuple(str(Path(i).resolve()) + os.sep for i in inputs if Path(i).is_dir())
    if not roots:
        return []
    paths = (item["path"] for item in index.items())
    return [path for path in paths if path.startswith(roots) and not os.path.exists(path)]


def _index_lines(summary: dict, errors: list[str], verbose: bool) -> list[str]:
    counts = (
        f"index {summary['index']}: {summary['items']} items; {summary['added']} added, "
        f"{summary['removed']} removed (files gone), {summary['skipped_unchanged']} unchanged"
    )
    counts += _failed_and_skipped(summary["failed"], summary["skipped_unsupported"], verbose)
    return [counts, *error_lines(errors)]


def run_search(args: argparse.Namespace) -> int:
    index = EmbeddingIndex.load(args.index)
    with Embedder.load(args.engine, args.backend, args.precision, args.threads) as embedder:
        index.require_model(embedder.model_id)
        if args.image:
            query, is_text = embedder.embed_images([args.image], args.instruction, args.task)[0], False
        else:
            query, is_text = _embed_texts(embedder, [args.query], args.task)[0], True
        started = time.perf_counter()
        hits = index.search(query, embedder.score, is_text, args.top_k, args.shortlist)
        elapsed = time.perf_counter() - started
    summary = {
        "query": args.image or args.query,
        "items": len(index),
        "search_ms": round(elapsed * 1000, 2),
        "results": [{"path": p, "score": round(s, 5)} for p, s in hits],
    }
    report(summary, args.json, lambda: _search_lines(summary))
    return 0


def _search_lines(summary: dict) -> list[str]:
    title = f"{summary['items']} items searched in {summary['search_ms']} ms; {SCORE_SCALE} for {summary['query']!r}:"
    return [title, *(f"  {i:>3}  {r['score']:7.4f}  {r['path']}" for i, r in enumerate(summary["results"], 1))]


TASK_HELP = (
    "a single-vector embedder's task instruction (GME's and Qwen3-VL-Embedding's, in the system turn; an AGFF "
    "model takes none) for "
)


def _common(p: argparse.ArgumentParser, engine_required: bool = True) -> None:
    p.add_argument(
        "--engine", required=engine_required, help="TensorRT plan, ONNX graph, bundle folder or checkpoint folder"
    )
    p.add_argument("--backend", choices=BACKENDS, help="force a backend (default: by what --engine is)")
    p.add_argument("--precision", help="bundle graphs to run with ONNX Runtime (default: fp32)")
    p.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads")
    output_options(p)


def _input_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--verbose", action="store_true", help="name each file skipped for not having an image name")


def parser_for(command: str) -> argparse.ArgumentParser:
    if command == "index":
        p = argparse.ArgumentParser(
            prog="agff-run index", description="Embed a folder into a persistent index (new or changed files only)."
        )
        p.add_argument("inputs", nargs="*", help="image files, folders or globs (none: migrate or tidy the index)")
        p.add_argument("--index", required=True, type=Path)
        p.add_argument("--from-shards", type=Path, help="build from agff-run embed-corpus's shards (no model runs)")
        p.add_argument("--task", help=TASK_HELP + "the documents (default: the model's)")
        _input_options(p)
        _common(p, engine_required=False)  # --from-shards runs no model
        return p
    elif command == "search":
        p = argparse.ArgumentParser(
            prog="agff-run search", description="Query an index: global shortlist, fused re-rank."
        )
        p.add_argument("query", nargs="?", default="")
        p.add_argument("--image", help="an image query instead of text")
        p.add_argument("--instruction", default="", help="instruction for an image query")
        p.add_argument("--task", help=TASK_HELP + "the query, e.g. 'Retrieve images that match the given text.'")
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
        p.add_argument("--task", help=TASK_HELP + "the --text items and the --query (default: the model's)")
        p.add_argument("--image-task", help=TASK_HELP + "the images (default: the model's)")
        p.add_argument("--out", help="write embeddings to a .npy (plus .paths.txt) or .jsonl file")
        p.add_argument("--batch-size", type=int, help="default: the bundle's optimal batch")
        _input_options(p)
    _common(p)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "embed-corpus":  # its own module: it needs Ray (the `corpus` extra), nothing else does
        from .embed_corpus import main as embed_corpus

        return embed_corpus(argv[1:])
    command = argv[0] if argv and argv[0] in ("index", "search") else "embed"
    args = parser_for(command).parse_args(argv[1:] if command != "embed" else argv)
    if command == "search" and not (args.query or args.image):
        say("error: give a text query or --image")
        return 2
    with warnings_as_lines():
        try:
            return {"embed": run_embed, "index": run_index, "search": run_search}[command](args)
        except (AgffError, OSError) as err:
            say(f"error: {err}")
            return 2


if __name__ == "__main__":
    sys.exit(main())

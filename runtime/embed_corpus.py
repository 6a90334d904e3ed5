"""`agff-run embed-corpus`: embed a large set of images on Ray Data into Parquet shards, resumable after any kill.

    agff-run embed-corpus photos/ --engine bundle/ --out shards/              a folder (recursive, image names)
    agff-run embed-corpus list.txt --engine bundle/ --out shards/             one path per line
    agff-run embed-corpus table.parquet --engine bundle/ --out shards/        a `path` column
    agff-run embed-corpus list.txt --engine bundle/ --out shards/ --address head:6379 --num-gpus 1

Ray Data decodes and embeds in a pool of actors, one `Embedder` each; this process (the driver) takes their
results as they come and commits them as shards (`runtime.corpus_shards`) every --shard-size items. A shard is
renamed into place whole, so the ids in the shards are exactly what is done: a rerun skips them and embeds the
rest, and a run killed with SIGKILL loses at most the items not yet in a shard, embedded again by the next run.

Relative paths in a list file or Parquet table are taken from that file's folder, so a rerun from another folder
finds the same items. An item is its resolved path: the same file listed twice (or through a symlink) is embedded
once and each further listing reported as a duplicate. An item that cannot be embedded (unreadable, truncated, not
an image, gone) is recorded in its shard with the reason and the job goes on; the exit status is then 1.
Ray is the optional `corpus` extra; nothing else in the runtime needs it.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from agff_deploy.contract import IMAGE_ENCODER
from agff_deploy.errors import AgffError, ArtifactError, InputError, MissingDependencyError, MissingFileError

from .console import error_lines, output_options, report, say, warnings_as_lines
from .embedder import Embedder
from .input_files import expand_inputs
from .loading import BACKENDS

INSTALL = "pip install 'agff-deploy[corpus]'"
SHARD_SIZE = 1000
BLOCK_ITEMS = 256  # items an actor embeds per call: enough for its decode threads to stay ahead of the model
CONNECT_TIMEOUT_S = 10.0


class ClusterUnreachable(AgffError):
    """The Ray cluster named by --address does not answer."""


@dataclass
class Source:
    """What a folder, list file or Parquet table names: each item as (path as given, resolved id)."""

    items: list[tuple[str, str]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # entries that name no file to record (dangling symlinks)
    skipped: int = 0  # files in a folder without an image file name


@dataclass
class Plan:
    """What this run embeds, after dropping duplicates and the items committed shards hold already."""

    todo: list[tuple[str, str]] = field(default_factory=list)
    duplicates: list[tuple[str, str]] = field(default_factory=list)  # (path as given, the first listing's path)
    done: int = 0


@dataclass
class Counts:
    embedded: int = 0
    failed: list[str] = field(default_factory=list)
    shards: int = 0
    wall_s: float = 0.0
    first_s: float = 0.0  # until the first results came back: Ray Data's planning, the actors' start, one block
    first_rows: int = 0


def _resolved(base: Path, given: str) -> str:
    """The item's id: its absolute path with symlinks resolved (a vanished file keeps its absolute path)."""
    return os.path.realpath(base / given)


def read_source(source: Path) -> Source:
    """The items of a folder (walked as `agff-run` walks one), a Parquet table's `path` column or a list file's
    lines (blank lines ignored); relative paths in a file are relative to its folder."""
    if source.is_dir():
        found = expand_inputs([str(source)])
        items = [(str(p), _resolved(Path.cwd(), str(p))) for p in found.paths]
        return Source(items, found.errors, len(found.skipped))
    if not source.is_file():
        raise MissingFileError(f"{source} does not exist: give a folder, a list file or a Parquet table of paths")
    if source.suffix == ".parquet":
        paths = _parquet_paths(source)
    else:
        paths = [line.strip() for line in source.read_text().splitlines() if line.strip()]
    return Source([(p, _resolved(source.parent, p)) for p in paths])


def _parquet_paths(table: Path) -> list[str]:
    import pyarrow.parquet as pq

    names = pq.read_schema(table).names
    if "path" not in names:
        raise InputError(f"{table} has no `path` column (its columns: {', '.join(names)}); name the image paths `path`")
    return [str(p) for p in pq.read_table(table, columns=["path"]).column("path").to_pylist() if p]


def plan(source: Source, done: set[str]) -> Plan:
    first: dict[str, str] = {}
    result = Plan()
    for given, item_id in source.items:
        if item_id in first:
            result.duplicates.append((given, first[item_id]))
            continue
        first[item_id] = given
        if item_id in done:
            result.done += 1
        else:
            result.todo.append((given, item_id))
    return result


def _stat(path: str) -> tuple[int | None, int | None]:
    try:
        stat = os.stat(path)
    except OSError:
        return None, None
    return stat.st_size, stat.st_mtime_ns


def _reasons(ids: list[str], lines: list[str]) -> dict[str, str]:
    """Each failed item's reason: the pipeline's error line naming it (`<id>: why`) without the id, which the row
    holds already."""
    found = {}
    for item_id in ids:
        prefix = item_id + ": "
        found[item_id] = next((line[len(prefix) :] for line in lines if line.startswith(prefix)), "not embedded")
    return found


class EmbedActor:
    """One Ray actor's `Embedder`: a block of (id, path) rows in, the block's shard rows (plus notes) out."""

    def __init__(self, args: dict[str, Any], model: Any) -> None:
        self.embedder = Embedder.load(args["engine"], args["backend"], args["precision"], args["threads"])
        if self.embedder.model_id != model.model_id:
            raise ArtifactError(f"{args['engine']} on this node is another model than on the driver: copy it again")
        self.embedder.activate([IMAGE_ENCODER.name])
        self.max_pixels, self.task, self.model = args["max_pixels"], args["task"], model

    def __call__(self, block: Any) -> Any:
        import pyarrow as pa

        from .corpus_shards import ShardRows, rows_table

        ids, paths = block.column("id").to_pylist(), block.column("path").to_pylist()
        stats = [_stat(i) for i in ids]  # before decoding: a file changed meanwhile looks changed to an index
        notes: list[str] = []
        outcome = self.embedder.try_embed_images(ids, "", self.max_pixels, on_note=notes.append, task=self.task)
        embedded = dict(zip(outcome.names, outcome.stacked(), strict=True))
        errors = _reasons([i for i in ids if i not in embedded], outcome.errors)
        shape = (self.model.vectors, self.model.dimensions)
        rows = ShardRows(
            ids,
            paths,
            [s for s, _ in stats],
            [m for _, m in stats],
            np.stack([embedded.get(i, np.full(shape, np.nan, np.float32)) for i in ids]),
            [errors.get(i) for i in ids],
        )
        note = ["; ".join(n for n in notes if n.startswith(i + ": ")) or None for i in ids]
        return rows_table(self.model, rows).append_column("note", pa.array(note, pa.string()))


def import_ray() -> Any:
    try:
        import pyarrow  # noqa: F401  (the shards)
        import ray
        import ray.data
    except ImportError as err:
        raise MissingDependencyError(f"agff-run embed-corpus runs on Ray Data: {INSTALL} ({err})") from err
    return ray


def probe(address: str, timeout_s: float) -> None:
    """Fail fast on a cluster address that does not answer: Ray itself retries for minutes."""
    host_port = address.split("://", 1)[-1]
    host, _, port = host_port.rpartition(":")
    if not host or not port.isdigit():
        return  # "auto" and other forms Ray resolves itself
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as err:
        raise ClusterUnreachable(
            f"--address {address}: no Ray cluster answers there ({err}); start one with `ray start --head` or "
            "leave --address out to run on this machine"
        ) from None


def connect(ray: Any, address: str | None, timeout_s: float) -> bool:
    """A local Ray on this machine's cores, or the cluster at `address`, with Ray's own logging and bars kept quiet;
    a Ray this process has up already (a program calling `run_embed_corpus`) is used as it is. True: Ray was
    started here (and is to be shut down here)."""
    if address:
        probe(address, timeout_s)
    started = not ray.is_initialized()
    if started:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    context.enable_auto_log_stats = False
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    return started


def default_actors(ray: Any, num_gpus: float) -> int:
    """One actor per node (it uses the node's cores through its threads), or one per `num_gpus` of the GPUs."""
    if num_gpus > 0:
        return max(1, int(ray.cluster_resources().get("GPU", 0) / num_gpus))
    return max(1, sum(1 for node in ray.nodes() if node["Alive"]))


def embed(ray: Any, todo: list[tuple[str, str]], args: argparse.Namespace, model: Any) -> Counts:
    """Embed `todo` on the actor pool and commit shards as the results come; errors and notes on stderr."""
    import pyarrow as pa

    from .corpus_shards import ShardWriter

    counts = Counts()
    if not todo:
        return counts
    actors = args.actors or default_actors(ray, args.num_gpus)
    size = min(BLOCK_ITEMS, args.shard_size)  # a small --shard-size commits as often as it says
    blocks = [
        pa.table({"id": [i for _, i in todo[s : s + size]], "path": [p for p, _ in todo[s : s + size]]})
        for s in range(0, len(todo), size)
    ]
    settings = {k: getattr(args, k) for k in ("engine", "backend", "precision", "threads", "max_pixels", "task")}
    results = ray.data.from_arrow(blocks).map_batches(
        EmbedActor,
        batch_size=None,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=actors),
        fn_constructor_kwargs={"args": {**settings, "engine": os.path.abspath(args.engine)}, "model": model},
        num_cpus=args.threads or 1,
        num_gpus=args.num_gpus or None,
    )
    writer = ShardWriter(args.out, model, args.shard_size)
    started = time.perf_counter()
    with tqdm(total=len(todo), unit="img", desc="embed-corpus", disable=args.quiet, file=sys.stderr) as bar:
        for table in results.iter_batches(batch_size=None, batch_format="pyarrow"):
            if not counts.first_s:
                counts.first_s, counts.first_rows = time.perf_counter() - started, table.num_rows
            _report_rows(table, counts)
            writer.add(table.drop_columns(["note"]))
            bar.update(table.num_rows)
        writer.close()
    counts.shards = writer.written
    counts.wall_s = time.perf_counter() - started
    return counts


def _report_rows(table: Any, counts: Counts) -> None:
    for path, error, note in zip(*(table.column(c).to_pylist() for c in ("path", "error", "note")), strict=True):
        if note:
            say(f"warning: {note}")
        if error:
            counts.failed.append(f"{path}: {error}")
            say(f"error: {path}: {error}")
        else:
            counts.embedded += 1


def run_embed_corpus(args: argparse.Namespace) -> int:
    ray = import_ray()
    from .corpus_shards import ShardModel, check_folder, done_ids, shard_files, writer_lock

    if args.shard_size < 1:
        raise InputError(f"--shard-size {args.shard_size}: give at least 1")
    source = read_source(args.source)
    embedder = Embedder.load(args.engine, args.backend, args.precision, args.threads)  # the model's identity only
    vectors, dimensions = embedder.runners[IMAGE_ENCODER.name].spec.outputs[0].shape[1:]
    model = ShardModel(embedder.model_id, int(vectors), int(dimensions))
    check_folder(args.out, model)
    started = connect(ray, args.address, args.connect_timeout)
    try:
        with writer_lock(args.out):
            work = plan(source, done_ids(args.out))
            for given, first in work.duplicates:
                say(f"duplicate: {given}: the same file as {first}, embedded once")
            for line in source.errors:
                say(f"error: {line}")
            driver_cpu = time.process_time()
            counts = embed(ray, work.todo, args, model)
            driver_cpu = time.process_time() - driver_cpu
            items = len(done_ids(args.out))
            shards = len(shard_files(args.out))
    finally:
        if started:
            ray.shutdown()
    failed = source.errors + counts.failed
    summary = {
        "out": str(args.out),
        "items": items,
        "shards": shards,
        "embedded": counts.embedded,
        "failed": len(failed),
        "duplicates": len(work.duplicates),
        "skipped_done": work.done,
        "skipped_unsupported": source.skipped,
        "shards_written": counts.shards,
    }
    if counts.embedded:
        summary["images_per_s"] = round(counts.embedded / max(counts.wall_s, 1e-9), 1)
        summary["first_results_s"] = round(counts.first_s, 2)
        # what this process (the only writer) spends per item bounds how many actors it can keep up with
        summary["driver_cpu_ms_per_item"] = round(driver_cpu / counts.embedded * 1000, 3)
    if counts.wall_s > counts.first_s and counts.embedded > counts.first_rows:
        # after the first results: the rate a longer corpus approaches, start-up costs aside
        steady = (len(work.todo) - counts.first_rows) / (counts.wall_s - counts.first_s)
        summary["steady_images_per_s"] = round(steady, 1)
    report(summary, args.json, lambda: _lines(summary, failed))
    return 1 if failed else 0


def _lines(summary: dict, failed: list[str]) -> list[str]:
    lines = [
        f"{summary['out']}: {summary['items']} items in {summary['shards']} shards; {summary['embedded']} embedded, "
        f"{summary['skipped_done']} already done, {summary['failed']} failed, {summary['duplicates']} duplicates"
    ]
    if "images_per_s" in summary:
        lines.append(f"{summary['images_per_s']} images/s")
    return lines + error_lines(failed)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="agff-run embed-corpus",
        description="Embed a folder, list file or Parquet table of image paths into Parquet shards on Ray Data; "
        "a rerun embeds only what the shards do not hold yet.",
    )
    p.add_argument("source", type=Path, help="a folder, a text file of paths (one a line) or a .parquet with `path`")
    p.add_argument("--engine", required=True, help="bundle folder, ONNX graph or TensorRT plan (on every node)")
    p.add_argument("--out", required=True, type=Path, help="the shards' folder (created; a rerun resumes it)")
    p.add_argument("--shard-size", type=int, default=SHARD_SIZE, help="items per shard (default: %(default)s)")
    p.add_argument("--address", help="a Ray cluster (host:port or ray://host:port); default: Ray on this machine")
    p.add_argument("--connect-timeout", type=float, default=CONNECT_TIMEOUT_S, help="seconds --address has to answer")
    p.add_argument("--actors", type=int, help="Embedders at once (default: one per node, or per --num-gpus share)")
    p.add_argument("--num-gpus", type=float, default=0, help="GPUs per actor on GPU hosts (default: 0, the CPU)")
    p.add_argument("--task", help="a single-vector embedder's task instruction for the images (default: the model's)")
    p.add_argument("--backend", choices=BACKENDS, help="force a backend (default: by what --engine is)")
    p.add_argument("--precision", help="bundle graphs to run with ONNX Runtime (default: fp32)")
    p.add_argument("--threads", type=int, help="each actor's ONNX Runtime threads and the CPUs Ray reserves for it")
    output_options(p)
    return p


def main(argv: list[str]) -> int:
    """`agff-run embed-corpus ARGS`: exit 0 when every item is embedded, 1 when some failed or the cluster does not
    answer, 2 when the command could not run."""
    args = parser().parse_args(argv)
    with warnings_as_lines():
        try:
            return run_embed_corpus(args)
        except ClusterUnreachable as err:
            say(f"error: {err}")
            return 1
        except (AgffError, OSError) as err:
            say(f"error: {err}")
            return 2

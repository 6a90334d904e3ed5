"""Bulk embedding on Ray Data against one `agff-run index` process: the same bundle, the same photos, one machine.

    python -m bench.embed_corpus BUNDLE [--images 2000] [--rounds 3] [--side 448] [--out docs/embed-corpus.json]

N photos (skimage's, each a different crop) are written once. Each round runs `agff-run index` into a fresh index
and `agff-run embed-corpus` into a fresh shard folder on those files, one after the other, the order alternating
from round to round, each as a user runs it (its own process, from start to exit). Throughput is images per second
over the whole process: model loading, and for embed-corpus starting a local Ray and its actors, included, since a
user waits for those too. Beside it, the embedding loop alone: index's own rate (its model loaded) and
embed-corpus's after its first results came back (Ray started, the actors up): what a corpus long enough for the
start-up to vanish approaches. Ratios embed-corpus / index are given per round and as mean, min and max.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from agff_deploy.provenance import provenance

from .records import publish
from .throughput import write_photos

COMMANDS = ("index", "embed-corpus")


def run_command(name: str, bundle: Path, photos: Path, work: Path, args: argparse.Namespace) -> dict:
    """One command, from start to exit, into a fresh output folder: its wall time and what it says it did."""
    target = work / name
    shutil.rmtree(target, ignore_errors=True)
    if name == "index":
        extra = ["--index", str(target)]
    else:
        extra = ["--out", str(target), "--shard-size", str(args.shard_size)]
        extra += ["--actors", str(args.actors)] if args.actors else []
    extra += ["--threads", str(args.threads)] if args.threads else []
    command = [sys.executable, "-m", "runtime.cli", name, str(photos), "--engine", str(bundle), *extra, "--quiet"]
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}): {result.stderr.strip()[-2000:]}")
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    done = summary["added"] if name == "index" else summary["embedded"]
    if done != args.images:
        raise RuntimeError(f"{name} embedded {done} of {args.images} photos: {result.stderr.strip()[-2000:]}")
    row = {"wall_s": round(wall, 3), "images_per_s": round(args.images / wall, 2)}
    # the embedding loop alone: index's own rate (model loading aside), embed-corpus's after its first results
    row["steady_images_per_s"] = summary["images_per_s"] if name == "index" else summary["steady_images_per_s"]
    if name == "embed-corpus":
        row["first_results_s"] = summary["first_results_s"]
        row["driver_cpu_ms_per_item"] = summary["driver_cpu_ms_per_item"]
    return row


def measure(args: argparse.Namespace, work: Path) -> list[dict]:
    photos = work / "photos"
    write_photos(photos, args.images, side=args.side)
    rows = []
    for r in range(args.rounds):
        order = COMMANDS if r % 2 == 0 else COMMANDS[::-1]
        row: dict = {"round": r, "order": list(order)}
        for name in order:
            row[name] = run_command(name, args.bundle, photos, work, args)
            print(f"round {r}: {name} {row[name]}", file=sys.stderr)
        row["ratio"] = round(row["embed-corpus"]["images_per_s"] / row["index"]["images_per_s"], 3)
        steady = row["embed-corpus"]["steady_images_per_s"] / row["index"]["steady_images_per_s"]
        row["steady_ratio"] = round(steady, 3)
        rows.append(row)
    return rows


def mean(rows: list[dict], name: str, key: str) -> float:
    return round(statistics.mean(row[name][key] for row in rows), 2)


def summarize(rows: list[dict], args: argparse.Namespace) -> dict:
    def spread(values: list[float]) -> dict:
        return {"mean": round(statistics.mean(values), 3), "min": min(values), "max": max(values)}

    return {
        "bench": "embed_corpus",
        "bundle": str(args.bundle),
        "images": args.images,
        "images_per_s": {name: mean(rows, name, "images_per_s") for name in COMMANDS},
        "steady_images_per_s": {name: mean(rows, name, "steady_images_per_s") for name in COMMANDS},
        "first_results_s": mean(rows, "embed-corpus", "first_results_s"),
        "driver_cpu_ms_per_item": mean(rows, "embed-corpus", "driver_cpu_ms_per_item"),
        "ratio": spread([row["ratio"] for row in rows]),
        "steady_ratio": spread([row["steady_ratio"] for row in rows]),
        "rows": rows,
    }


def table(report: dict) -> str:
    whole, steady = report["ratio"], report["steady_ratio"]
    lines = [
        "| images | measured over | index img/s | embed-corpus img/s | embed-corpus / index [min..max] |",
        "| --- | --- | --- | --- | --- |",
        f"| {report['images']} | the whole command | {report['images_per_s']['index']:.1f} | "
        f"{report['images_per_s']['embed-corpus']:.1f} | "
        f"{whole['mean']:.2f} [{whole['min']:.2f}..{whole['max']:.2f}] |",
        f"| {report['images']} | the embedding loop | {report['steady_images_per_s']['index']:.1f} | "
        f"{report['steady_images_per_s']['embed-corpus']:.1f} | "
        f"{steady['mean']:.2f} [{steady['min']:.2f}..{steady['max']:.2f}] |",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.embed_corpus", description=__doc__.split("\n\n")[0])
    p.add_argument("bundle", type=Path)
    p.add_argument("--images", type=int, default=2000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--side", type=int, default=448, help="the photos' longer side in pixels")
    p.add_argument("--shard-size", type=int, default=1000, help="embed-corpus's --shard-size")
    p.add_argument("--actors", type=int, help="embed-corpus's --actors (default: its own)")
    p.add_argument("--threads", type=int, help="--threads for both commands (default: ONNX Runtime's)")
    p.add_argument("--out", type=Path, help="write the numbers as JSON here")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        rows = measure(args, Path(tmp))
    report = {**summarize(rows, args), **provenance("bench.embed_corpus", args, argv)}
    publish(report, table(report), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

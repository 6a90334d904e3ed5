"""Peak memory of one training step against GradCache's --chunk-size, each setting in a fresh process.

    python -m bench.train_memory [--preset demo] [--batch 256] [--chunks none,64,16] [--threads 2]

A process's peak resident set (`ru_maxrss`) only grows, so every chunk size gets a process of its own:
it builds the trainer, notes its peak so far, takes one step and notes the peak again. The step's own
cost is the difference; the table shows both, the ratio of step costs to the unchunked step's, and the
step's loss, which chunking must leave unchanged.
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time

import torch

from agff_deploy.provenance import provenance
from train.trainer import Trainer, TrainSettings

from .common import in_fresh_processes


def peak_memory(preset: str, batch: int, chunk_size: int | None, threads: int) -> dict:
    """One training step in this process: peak RSS before and after it, in MiB."""
    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as out:
        settings = TrainSettings(out=out, preset=preset, batch_size=batch, chunk_size=chunk_size, eval_pairs=0)
        trainer = Trainer.create(settings)
        before = _peak_mib()
        started = time.perf_counter()
        loss = trainer.train_step()
        seconds = time.perf_counter() - started
    peak = _peak_mib()
    return {"chunk_size": chunk_size, "before_mib": before, "peak_mib": peak, "step_mib": round(peak - before, 1),
            "seconds": round(seconds, 2), "loss": loss}  # fmt: skip


def _peak_mib() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # KiB on Linux


def _chunk_sizes(text: str) -> list[int | None]:
    return [None if part.strip() == "none" else int(part) for part in text.split(",")]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="demo")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--chunks", type=_chunk_sizes, default="none,64,16", help="chunk sizes, `none` = unchunked")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    rows = [peak_memory_in_fresh_process(args, chunk) for chunk in args.chunks]
    baseline = rows[0]["step_mib"]
    print(f"{args.preset} preset, global batch {args.batch}, one step per fresh process (peak RSS, MiB)")
    header = ("chunk size", "before step", "peak", "step", "step ratio", "s/step", "loss")
    print(" ".join(f"{h:>{w}}" for h, w in zip(header, (10, 12, 8, 8, 11, 7, 9), strict=True)))
    for r in rows:
        chunk = "none" if r["chunk_size"] is None else str(r["chunk_size"])
        print(f"{chunk:>10} {r['before_mib']:>12.0f} {r['peak_mib']:>8.0f} {r['step_mib']:>8.0f} "
              f"{r['step_mib'] / baseline:>10.2f}x {r['seconds']:>7.2f} {r['loss']:>9.5f}")  # fmt: skip
    print(
        json.dumps(
            {
                "bench": "train_memory",
                "preset": args.preset,
                "batch": args.batch,
                "runs": rows,
                **provenance("bench.train_memory", args),
            }
        )
    )


def peak_memory_in_fresh_process(args: argparse.Namespace, chunk_size: int | None) -> dict:
    return in_fresh_processes(peak_memory, args.preset, args.batch, chunk_size, args.threads, processes=1)[0]


if __name__ == "__main__":
    main()

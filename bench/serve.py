"""What serving costs: agff-serve (Triton, dynamic batching) against the same bundle embedded in-process.

At each concurrency C, C client threads each send one JPEG per request to the
served `image` model over HTTP (Triton forms batches of up to C); in-process,
one thread hands `EmbeddingService` (the code the served model runs) C JPEGs
per call, so both sides decode, resize and embed the same images at the same
batch size. Throughput is images per second over all requests, latency is
per request (in-process: per call, which is every image's latency). Levels
run in turn against one server, in-process first, for `--rounds` rounds;
the table gives the mean over rounds and the ratio's spread.

Run: python -m bench.serve BUNDLE [--concurrency 1 4 16] [--requests 480] [--rounds 3] [--out serve.json]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from agff_deploy.provenance import provenance
from runtime.embedder import Embedder
from serve.cli import settings_of
from serve.client import PROTOCOLS, EmbeddingClient
from serve.embedder_model import EmbeddingService
from serve.repository import write_serving_repository
from serve.tritonserver import Ports, TritonServer, free_ports

from .records import percentiles, publish
from .throughput import write_photos


def in_process(service: EmbeddingService, images: list[bytes], batch: int, requests: int) -> dict[str, float]:
    latencies = []
    started = time.perf_counter()
    for first in range(0, requests, batch):
        column = np.array([[images[(first + i) % len(images)]] for i in range(batch)], dtype=object)
        call = time.perf_counter()
        (result,) = service.images([(column, None, None)])
        assert isinstance(result, np.ndarray), result
        latencies.append(time.perf_counter() - call)
    wall = time.perf_counter() - started
    return {"images_per_s": round(len(latencies) * batch / wall, 1), **percentiles(latencies)}


def served(url: str, protocol: str, images: list[bytes], clients: int, requests: int) -> dict[str, float]:
    latencies: list[list[float]] = [[] for _ in range(clients)]
    barrier = threading.Barrier(clients + 1)

    def client_loop(c: int) -> None:
        with EmbeddingClient(url, protocol) as client:
            client.embed_images([images[c % len(images)]])  # connect before the clock starts
            barrier.wait()
            for r in range(c, requests, clients):
                call = time.perf_counter()
                client.embed_images([images[r % len(images)]])
                latencies[c].append(time.perf_counter() - call)

    threads = [threading.Thread(target=client_loop, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    started, cpu = time.perf_counter(), time.process_time()
    for t in threads:
        t.join()
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    flat = [x for per_client in latencies for x in per_client]
    return {
        "images_per_s": round(len(flat) / wall, 1),
        **percentiles(flat),
        "client_cpu_share": round(cpu / (wall * (os.cpu_count() or 1)), 3),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle", type=Path)
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--requests", type=int, default=480, help="images per level and side")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--side", type=int, default=256, help="the photos' longer side in pixels")
    p.add_argument("--max-queue-delay-ms", type=float, default=2.0)
    p.add_argument("--instances", type=int, default=1, help="as agff-serve's flag")
    p.add_argument("--protocol", choices=PROTOCOLS, default="http", help="how the clients call the server")
    p.add_argument("--threads", type=int, default=0, help="as agff-serve's flag (0: cores / instances)")
    p.add_argument("--out", type=Path, help="write the numbers as JSON here")
    args = p.parse_args()
    run(args)


def run(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        workspace = Path(tmp)
        images = [path.read_bytes() for path in write_photos(workspace / "photos", 64, side=args.side)]
        with Embedder.load(args.bundle) as embedder:
            service = EmbeddingService(embedder)
            _, prompts, hidden = embedder.embed_texts(["warm-up"]).shape
            serve_args = argparse.Namespace(
                engine=args.bundle, backend=None, precision=None, max_batch=max(args.concurrency),
                max_queue_delay_ms=args.max_queue_delay_ms, instances=args.instances, threads=args.threads,
            )  # fmt: skip
            repository = write_serving_repository(workspace / "models", settings_of(serve_args), prompts, hidden)
            http, grpc, metrics = free_ports(3)
            server = TritonServer(repository, workspace, Ports(http, grpc, metrics), "127.0.0.1")
            with server:
                port = http if args.protocol == "http" else grpc
                rows = measure(service, f"127.0.0.1:{port}", images, args)
    report = {**summarize(rows, args), **provenance("bench.serve", args)}
    publish(report, table(report), args.out)


def measure(service: EmbeddingService, url: str, images: list[bytes], args: argparse.Namespace) -> list[dict]:
    rows = []
    steps = [(r, c) for r in range(args.rounds) for c in args.concurrency]
    for r, c in tqdm(steps, desc="bench.serve", unit="level"):
        in_process(service, images, c, c * 2)  # warm-up at this batch size
        served(url, args.protocol, images, c, c * 2)
        rows.append(
            {
                "round": r,
                "concurrency": c,
                "in_process": in_process(service, images, c, args.requests),
                "served": served(url, args.protocol, images, c, args.requests),
            }
        )
    return rows


def summarize(rows: list[dict], args: argparse.Namespace) -> dict:
    levels = []
    for c in args.concurrency:
        mine = [row for row in rows if row["concurrency"] == c]
        ratios = [row["served"]["images_per_s"] / row["in_process"]["images_per_s"] for row in mine]
        levels.append(
            {
                "concurrency": c,
                "in_process": _means(mine, "in_process"),
                "served": _means(mine, "served"),
                "ratio_mean": round(statistics.mean(ratios), 3),
                "ratio_min": round(min(ratios), 3),
                "ratio_max": round(max(ratios), 3),
            }
        )
    return {
        "bench": "serve",
        "bundle": str(args.bundle),
        "requests": args.requests,
        "rounds": args.rounds,
        "side": args.side,
        "max_queue_delay_ms": args.max_queue_delay_ms,
        "instances": args.instances,
        "threads": args.threads,
        "protocol": args.protocol,
        "levels": levels,
        "rows": rows,
    }


def _means(rows: list[dict], side: str) -> dict[str, float]:
    keys = ("images_per_s", "p50_ms", "p99_ms")
    return {key: round(statistics.mean(row[side][key] for row in rows), 2) for key in keys}


def table(report: dict) -> str:
    lines = [
        "| clients | in-process img/s | served img/s | served / in-process [min..max] | in-process p50 / p99 ms | "
        "served p50 / p99 ms |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for level in report["levels"]:
        i, s = level["in_process"], level["served"]
        lines.append(
            f"| {level['concurrency']} | {i['images_per_s']:.1f} | {s['images_per_s']:.1f} | "
            f"{level['ratio_mean']:.2f} [{level['ratio_min']:.2f}..{level['ratio_max']:.2f}] | "
            f"{i['p50_ms']:.1f} / {i['p99_ms']:.1f} | {s['p50_ms']:.1f} / {s['p99_ms']:.1f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()

"""What the OpenAI-style API costs: /v1/embeddings against Triton's own protocol, one agff-serve, one run.

    python -m bench.openai_serve BUNDLE [--clients 1 16] [--batch 1 8] [--requests 96] [--rounds 3] [--out F]

agff-serve is started once on BUNDLE. At each batch size B and client count C, C client processes (each its own
interpreter and connection, as separate users are) share requests of B images (the same JPEGs), through three
paths in turn:
- `triton`: `serve.client.EmbeddingClient` (tritonclient, HTTP, binary tensors): what a Triton shop calls;
- `openai float` and `openai base64`: httpx POSTs to /v1/embeddings with the images as data URIs
  (`"modality": "image"`) and `encoding_format` float or base64, each response parsed into float32 arrays.
Each path returns what a client needs: the global vector of every image. Throughput is images per second over
all requests, latency is per request; the order of the paths rotates from round to round. The clients run on
the server's cores, so throughput also pays for the clients' own work; the CPU time agff-serve's processes spend
per image (front end, tritonserver, models) is what a server whose clients are elsewhere is limited by. The
table gives the mean over rounds of each path's throughput and of its ratio to `triton`'s (with the ratio's
spread), the server's CPU per image and the response bytes per image.
"""

from __future__ import annotations

import argparse
import base64
import multiprocessing
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from agff_deploy.provenance import provenance
from serve.client import EmbeddingClient
from serve.tritonserver import free_ports

from .records import percentiles, publish
from .throughput import write_photos

PATHS = ("triton", "openai float", "openai base64")
KEY = "bench"
Send = Callable[[list[bytes]], tuple[np.ndarray, int | None]]  # images -> their global vectors, response bytes


class Server:
    """agff-serve as users start it, on free loopback ports."""

    def __init__(self, bundle: Path, workspace: Path, max_batch: int) -> None:
        import subprocess
        import urllib.request

        self.http, grpc, metrics, self.openai = free_ports(4)
        command = [sys.executable, "-m", "serve.cli", "--engine", str(bundle), "--address", "127.0.0.1",
                   "--http-port", str(self.http), "--grpc-port", str(grpc), "--metrics-port", str(metrics),
                   "--openai-port", str(self.openai), "--api-key", KEY, "--max-batch", str(max_batch),
                   "--repository", str(workspace / "models")]  # fmt: skip
        self.process = subprocess.Popen(command, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.openai}/health", timeout=2):
                    return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.process.kill()
                    raise RuntimeError("agff-serve did not start") from None
                time.sleep(0.3)

    def cpu_seconds(self) -> float:
        """CPU time of agff-serve and its children so far: the front end, tritonserver and the model processes."""
        import psutil

        root = psutil.Process(self.process.pid)
        return sum(sum(p.cpu_times()[:2]) for p in [root, *root.children(recursive=True)])

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=60)


def triton_path(server: Server) -> Send:
    client = EmbeddingClient(f"127.0.0.1:{server.http}")
    return lambda images: (client.embed_images(images)[:, 0], None)  # tritonclient does not say its size


def openai_path(server: Server, encoding: str) -> Send:
    import httpx

    client = httpx.Client(headers={"Authorization": f"Bearer {KEY}"}, timeout=120)
    url = f"http://127.0.0.1:{server.openai}/v1/embeddings"

    def send(images: list[bytes]) -> tuple[np.ndarray, int]:
        uris = ["data:image/jpeg;base64," + base64.b64encode(image).decode() for image in images]
        response = client.post(url, json={"input": uris, "modality": "image", "encoding_format": encoding})
        response.raise_for_status()
        data = response.json()["data"]
        if encoding == "base64":
            vectors = np.stack([np.frombuffer(base64.b64decode(d["embedding"]), "<f4") for d in data])
        else:
            vectors = np.array([d["embedding"] for d in data], np.float32)
        return vectors, len(response.content)

    return send


def connect(server: Server, name: str) -> Send:
    return triton_path(server) if name == "triton" else openai_path(server, name.removeprefix("openai "))


def client_process(server: Server, name: str, work: Work, images: list[bytes], batch: int, requests: int) -> None:
    """One client: its own process and connection, as separate users are (threads in one process would queue
    on one interpreter lock, and the slowest client library would pay for that most)."""
    send = connect(server, name)
    send(images[:batch])  # connect before the clock starts
    latencies, sizes = [], []
    work.barrier.wait()
    while True:
        with work.counter.get_lock():
            r = work.counter.value
            work.counter.value += 1
        if r >= requests:
            break
        chosen = [images[(r * batch + i) % len(images)] for i in range(batch)]
        call = time.perf_counter()
        vectors, size = send(chosen)
        latencies.append(time.perf_counter() - call)
        assert vectors.shape[0] == batch
        sizes.append(None if size is None else size / batch)
    work.results.put((latencies, sizes))


@dataclass
class Work:
    """What a level's client processes share: a start line, the next request's number and their results."""

    barrier: Any
    counter: Any
    results: Any


def drive(server: Server, name: str, images: list[bytes], clients: int, batch: int, requests: int) -> dict:
    """`clients` processes sharing `requests` requests of `batch` images; throughput, latency, response size and
    the CPU time the server (its front end, Triton and the model processes) spent per image."""
    context = multiprocessing.get_context("fork")
    work = Work(context.Barrier(clients + 1), context.Value("i", 0), context.Queue())
    processes = [
        context.Process(target=client_process, args=(server, name, work, images, batch, requests))
        for _ in range(clients)
    ]
    for process in processes:
        process.start()
    work.barrier.wait()
    started, cpu = time.perf_counter(), server.cpu_seconds()
    answers = [work.results.get(timeout=600) for _ in processes]
    wall, cpu = time.perf_counter() - started, server.cpu_seconds() - cpu
    for process in processes:
        process.join()
        if process.exitcode:
            raise RuntimeError(f"a {name} client failed (exit code {process.exitcode})")
    latencies = [x for answer in answers for x in answer[0]]
    sizes = [x for answer in answers for x in answer[1]]
    return {
        "images_per_s": round(requests * batch / wall, 1), **percentiles(latencies),
        "server_cpu_ms_per_image": round(cpu / (requests * batch) * 1000, 3),
        "response_bytes_per_image": None if None in sizes else round(statistics.mean(sizes), 1),
    }  # fmt: skip


def measure(server: Server, images: list[bytes], args: argparse.Namespace) -> list[dict]:
    rows = []
    steps = [(r, b, c) for r in range(args.rounds) for b in args.batch for c in args.clients]
    for r, batch, clients in tqdm(steps, desc="bench.openai_serve", unit="level"):
        order = PATHS[r % len(PATHS) :] + PATHS[: r % len(PATHS)]
        row: dict = {"round": r, "batch": batch, "clients": clients}
        for name in order:
            drive(server, name, images, clients, batch, clients * 2)  # warm-up
            row[name] = drive(server, name, images, clients, batch, args.requests)
        rows.append(row)
    return rows


def summarize(rows: list[dict], args: argparse.Namespace) -> dict:
    levels = []
    for batch in args.batch:
        for clients in args.clients:
            mine = [row for row in rows if (row["batch"], row["clients"]) == (batch, clients)]
            level: dict = {"batch": batch, "clients": clients}
            for name in PATHS:
                level[name] = {k: _mean([r[name][k] for r in mine]) for k in mine[0][name]}
                ratios = [r[name]["images_per_s"] / r["triton"]["images_per_s"] for r in mine]
                level[name]["ratio_to_triton"] = {
                    "mean": round(statistics.mean(ratios), 3), "min": round(min(ratios), 3),
                    "max": round(max(ratios), 3),
                }  # fmt: skip
            levels.append(level)
    return {"bench": "openai_serve", "bundle": str(args.bundle), "levels": levels, "rows": rows}


def table(report: dict) -> str:
    header = "| batch | clients | path | img/s | / triton [min..max] | p50 / p99 ms | server CPU ms/img | bytes/img |"
    lines = [header, "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for level in report["levels"]:
        for name in PATHS:
            cell, ratio = level[name], level[name]["ratio_to_triton"]
            lines.append(
                f"| {level['batch']} | {level['clients']} | {name} | {cell['images_per_s']:.1f} | "
                f"{ratio['mean']:.2f} [{ratio['min']:.2f}..{ratio['max']:.2f}] | "
                f"{cell['p50_ms']:.1f} / {cell['p99_ms']:.1f} | {cell['server_cpu_ms_per_image']:.2f} | "
                f"{_bytes(cell['response_bytes_per_image'])} |"
            )
    return "\n".join(lines)


def _mean(values: list[float | None]) -> float | None:
    return None if None in values else round(statistics.mean(values), 2)  # type: ignore[type-var]


def _bytes(size: float | None) -> str:
    return "-" if size is None else f"{size:.0f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.openai_serve", description=__doc__.split("\n\n")[0])
    p.add_argument("bundle", type=Path)
    p.add_argument("--clients", type=int, nargs="+", default=[1, 16])
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    p.add_argument("--requests", type=int, default=96, help="requests per path and level")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--side", type=int, default=448, help="the photos' longer side in pixels")
    p.add_argument("--out", type=Path, help="write the numbers as JSON here")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        workspace = Path(tmp)
        images = [path.read_bytes() for path in write_photos(workspace / "photos", 64, side=args.side)]
        server = Server(args.bundle, workspace, max(args.clients) * max(args.batch))
        try:
            rows = measure(server, images, args)
        finally:
            server.close()
    report = {**summarize(rows, args), **provenance("bench.openai_serve", args, argv)}
    publish(report, table(report), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What the OpenAI-style API costs: /v1/embeddings against Triton's own protocol, one agff-serve, one run.

    python -m bench.openai_serve BUNDLE [--clients 1 16] [--batch 1 8] [--requests 96] [--rounds 3] [--out F]

agff-serve is started once on BUNDLE. At each batch size B and client count C, C client threads each send
requests of B images (the same JPEGs) through three paths in turn:
- `triton`: `serve.client.EmbeddingClient` (tritonclient, HTTP, binary tensors): what a Triton shop calls;
- `openai float` and `openai base64`: httpx POSTs to /v1/embeddings with the images as data URIs
  (`"modality": "image"`) and `encoding_format` float or base64, each response parsed into float32 arrays.
Each path returns what a client needs: the global vector of every image. Throughput is images per second over
all requests, latency is per request; the order of the paths rotates from round to round. The table gives the
mean over rounds of each path's throughput and of its ratio to `triton`'s, with the ratio's spread, and the
response size of float and base64 bodies.
"""

from __future__ import annotations

import argparse
import base64
import json
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from tqdm import tqdm

from agff_deploy.atomic_files import write_atomically
from agff_deploy.provenance import provenance
from serve.client import EmbeddingClient
from serve.tritonserver import free_ports

from .serve import percentiles
from .throughput import write_photos

PATHS = ("triton", "openai float", "openai base64")
KEY = "bench"


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

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=60)


def triton_path(server: Server) -> Callable[[list[bytes]], np.ndarray]:
    local = threading.local()

    def send(images: list[bytes]) -> np.ndarray:
        if not hasattr(local, "client"):
            local.client = EmbeddingClient(f"127.0.0.1:{server.http}")
        return local.client.embed_images(images)[:, 0]

    return send


def openai_path(server: Server, encoding: str, sizes: list[float]) -> Callable[[list[bytes]], np.ndarray]:
    import httpx

    local = threading.local()
    url = f"http://127.0.0.1:{server.openai}/v1/embeddings"

    def send(images: list[bytes]) -> np.ndarray:
        if not hasattr(local, "client"):
            local.client = httpx.Client(headers={"Authorization": f"Bearer {KEY}"}, timeout=120)
        uris = ["data:image/jpeg;base64," + base64.b64encode(image).decode() for image in images]
        response = local.client.post(url, json={"input": uris, "modality": "image", "encoding_format": encoding})
        response.raise_for_status()
        sizes.append(len(response.content) / len(images))
        data = response.json()["data"]
        if encoding == "base64":
            return np.stack([np.frombuffer(base64.b64decode(d["embedding"]), "<f4") for d in data])
        return np.array([d["embedding"] for d in data], np.float32)

    return send


def drive(send: Callable[[list[bytes]], np.ndarray], images: list[bytes], clients: int, batch: int, requests: int):
    """`clients` threads sharing `requests` requests of `batch` images; throughput and latency."""
    latencies: list[float] = []
    lock = threading.Lock()
    counter = iter(range(requests))

    def loop(c: int) -> None:
        while True:
            with lock:
                r = next(counter, None)
            if r is None:
                return
            chosen = [images[(r * batch + i) % len(images)] for i in range(batch)]
            call = time.perf_counter()
            vectors = send(chosen)
            elapsed = time.perf_counter() - call
            assert vectors.shape[0] == batch
            with lock:
                latencies.append(elapsed)

    threads = [threading.Thread(target=loop, args=(c,)) for c in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    return {"images_per_s": round(requests * batch / wall, 1), **percentiles(latencies)}


def measure(server: Server, images: list[bytes], args: argparse.Namespace) -> tuple[list[dict], dict[str, list[float]]]:
    sizes: dict[str, list[float]] = {"openai float": [], "openai base64": []}  # response bytes per image
    paths = {
        "triton": triton_path(server),
        "openai float": openai_path(server, "float", sizes["openai float"]),
        "openai base64": openai_path(server, "base64", sizes["openai base64"]),
    }
    rows = []
    steps = [(r, b, c) for r in range(args.rounds) for b in args.batch for c in args.clients]
    for r, batch, clients in tqdm(steps, desc="bench.openai_serve", unit="level"):
        order = PATHS[r % len(PATHS) :] + PATHS[: r % len(PATHS)]
        row: dict = {"round": r, "batch": batch, "clients": clients}
        for name in order:
            drive(paths[name], images, clients, batch, clients * 2)  # warm-up
            row[name] = drive(paths[name], images, clients, batch, args.requests)
        rows.append(row)
    return rows, sizes


def summarize(rows: list[dict], sizes: dict[str, list[float]], args: argparse.Namespace) -> dict:
    levels = []
    for batch in args.batch:
        for clients in args.clients:
            mine = [row for row in rows if (row["batch"], row["clients"]) == (batch, clients)]
            level: dict = {"batch": batch, "clients": clients}
            for name in PATHS:
                level[name] = {k: round(statistics.mean(r[name][k] for r in mine), 2) for k in mine[0][name]}
                ratios = [r[name]["images_per_s"] / r["triton"]["images_per_s"] for r in mine]
                level[name]["ratio_to_triton"] = {
                    "mean": round(statistics.mean(ratios), 3), "min": round(min(ratios), 3),
                    "max": round(max(ratios), 3),
                }  # fmt: skip
            levels.append(level)
    per_image = {name: round(statistics.mean(s), 1) for name, s in sizes.items()}
    return {"bench": "openai_serve", "bundle": str(args.bundle), "levels": levels, "rows": rows,
            "response_bytes_per_image": per_image}  # fmt: skip


def table(report: dict) -> str:
    header = "| batch | clients | path | img/s | / triton [min..max] | p50 / p99 ms |"
    lines = [header, "| --- | --- | --- | --- | --- | --- |"]
    for level in report["levels"]:
        for name in PATHS:
            cell, ratio = level[name], level[name]["ratio_to_triton"]
            lines.append(
                f"| {level['batch']} | {level['clients']} | {name} | {cell['images_per_s']:.1f} | "
                f"{ratio['mean']:.2f} [{ratio['min']:.2f}..{ratio['max']:.2f}] | "
                f"{cell['p50_ms']:.1f} / {cell['p99_ms']:.1f} |"
            )
    return "\n".join(lines)


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
            rows, sizes = measure(server, images, args)
        finally:
            server.close()
    report = {**summarize(rows, sizes, args), **provenance("bench.openai_serve", args, argv)}
    print(table(report), file=sys.stderr)
    print(json.dumps({k: v for k, v in report.items() if k != "rows"}))
    if args.out:
        text = json.dumps(report, indent=1) + "\n"
        write_atomically(args.out, lambda f: f.write(text.encode()))
    return 0


if __name__ == "__main__":
    sys.exit(main())

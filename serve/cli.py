"""`agff-serve`: a bundle or engine behind Triton Inference Server (HTTP and gRPC, KServe v2; Prometheus metrics),
and an OpenAI-style API (/v1/embeddings, /v1/rerank, /v1/models) in front of the same models.

    agff-serve --engine bundle/                       image, text and score on ports 8000 / 8001 / 8002; the
                                                      OpenAI-style API on 8080
    agff-serve --engine model.plan --instances 2 --max-batch 32 --max-queue-delay-ms 5 --api-key "$KEY"

The models and their inputs are in `serve/repository.py`; any Triton client
in any language calls them (docs/serving.md; the README has a Python client snippet). The server
runs until Ctrl-C or SIGTERM, which drain in-flight requests first.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import tempfile
from pathlib import Path

from agff_deploy.contract import TEXT_ENCODER
from agff_deploy.errors import AgffError, InputError, print_error
from runtime.loading import BACKENDS, LoadedModel, load_model

from .openai_protocol import Limits
from .openai_server import FrontEnd, ModelCard, TokenCounter, TritonModels, run_front_end
from .repository import ServeSettings, write_serving_repository
from .tritonserver import Ports, TritonServer, pytriton_dist, shared_libpython, stub_for_this_python

API_KEY_VARIABLE = "AGFF_SERVE_API_KEY"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="agff-serve", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--engine", required=True, type=Path, help="bundle folder, .onnx graph or TensorRT .plan")
    p.add_argument("--backend", choices=BACKENDS[:2], help="default: the one the path implies")
    p.add_argument("--precision", help="a bundle's precision to serve (default: the runtime's choice)")
    p.add_argument("--http-port", type=int, default=8000)
    p.add_argument("--grpc-port", type=int, default=8001)
    p.add_argument("--metrics-port", type=int, default=8002)
    p.add_argument("--openai-port", type=int, default=8080, help="the OpenAI-style API's port (0: none)")
    p.add_argument(
        "--api-key",
        default=os.environ.get(API_KEY_VARIABLE),
        help=f"the OpenAI-style API answers only 'Authorization: Bearer KEY' (default: ${API_KEY_VARIABLE}; unset: "
        "no key; Triton's own ports take none, so keep them on 127.0.0.1 where the key matters)",
    )
    p.add_argument("--served-model-name", help="the model's id in the OpenAI-style API (default: the engine's name)")
    p.add_argument("--max-body-mb", type=float, default=64, help="largest request body (413 above; default: 64)")
    p.add_argument("--max-items", type=int, default=256, help="items (inputs, documents) a request may hold")
    p.add_argument("--max-image-mb", type=float, default=16, help="largest encoded image an item may send")
    p.add_argument("--address", default="0.0.0.0", help="interface to listen on (127.0.0.1: this machine only)")
    p.add_argument("--max-batch", type=int, default=64, help="largest batch Triton's dynamic batcher forms")
    p.add_argument(
        "--max-queue-delay-ms", type=float, default=2.0, help="how long a request may wait for others to batch with"
    )
    p.add_argument("--instances", type=int, default=1, help="model instances (processes) per model")
    p.add_argument("--threads", type=int, default=0, help="backend threads per instance (default: cores / instances)")
    p.add_argument("--repository", type=Path, help="write the generated Triton model repository here and keep it")
    p.add_argument("--verbose", action="store_true", help="Triton's verbose log")
    return p.parse_args(argv)


def check_args(args: argparse.Namespace) -> None:
    for flag in ("http_port", "grpc_port", "metrics_port"):
        port = getattr(args, flag)
        if not 0 < port < 65536:
            raise InputError(f"--{flag.replace('_', '-')} {port}: a port is 1 to 65535")
    if args.openai_port and not 0 < args.openai_port < 65536:
        raise InputError(f"--openai-port {args.openai_port}: a port is 1 to 65535, or 0 for none")
    ports = [args.http_port, args.grpc_port, args.metrics_port, *([args.openai_port] if args.openai_port else [])]
    if len(set(ports)) != len(ports):
        raise InputError(f"--http-port, --grpc-port, --metrics-port and --openai-port must differ (got {ports})")
    for flag in ("max_batch", "instances", "max_items"):
        if getattr(args, flag) < 1:
            raise InputError(f"--{flag.replace('_', '-')} {getattr(args, flag)}: must be at least 1")
    if args.max_queue_delay_ms < 0:
        raise InputError(f"--max-queue-delay-ms {args.max_queue_delay_ms}: must be 0 or more")
    if args.threads < 0:
        raise InputError(f"--threads {args.threads}: must be 0 (automatic) or more")
    for flag in ("max_body_mb", "max_image_mb"):
        if getattr(args, flag) <= 0:
            raise InputError(f"--{flag.replace('_', '-')} {getattr(args, flag)}: must be more than 0")
    if args.api_key is not None and not args.api_key.strip():
        raise InputError(f"--api-key is empty: give a key, or unset ${API_KEY_VARIABLE} to serve without one")


def settings_of(args: argparse.Namespace) -> ServeSettings:
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.instances)
    return ServeSettings(
        engine=args.engine,
        backend=args.backend or "",
        precision=args.precision or "",
        max_batch=args.max_batch,
        max_queue_delay_ms=args.max_queue_delay_ms,
        instances=args.instances,
        threads=threads,
    )


def serve(args: argparse.Namespace, workspace: Path) -> None:
    check_args(args)
    stub_for_this_python(pytriton_dist())
    shared_libpython()
    model = load_model(args.engine, args.backend, args.precision)  # refuses a bad artifact before Triton starts
    repository = args.repository or workspace / "models"
    _, prompts, hidden = model.runners[TEXT_ENCODER.name].spec.outputs[0].shape
    write_serving_repository(repository, settings_of(args), int(prompts), int(hidden))
    ports = Ports(args.http_port, args.grpc_port, args.metrics_port)
    server = TritonServer(repository, workspace, ports, args.address, args.verbose)
    print(f"agff-serve: starting Triton on {args.engine} ({model.backend}); log: {server.log_path}", file=sys.stderr)
    with server:
        host = server.host
        openai = f"; OpenAI-style API http://{host}:{args.openai_port}/v1" if args.openai_port else ""
        print(
            f"agff-serve: models image, text, score ready; HTTP {host}:{ports.http}, gRPC {host}:{ports.grpc}, "
            f"metrics http://{host}:{ports.metrics}/metrics{openai}; Ctrl-C stops",
            file=sys.stderr,
        )
        if args.openai_port:
            if args.api_key is None and args.address not in ("127.0.0.1", "localhost", "::1"):
                print(
                    f"agff-serve: no --api-key: whoever reaches {args.address}:{args.openai_port} can use the "
                    "OpenAI-style API",
                    file=sys.stderr,
                )
            asyncio.run(serve_openai(args, model, f"{host}:{ports.http}", server))
        wait_for_stop(server)


async def serve_openai(args: argparse.Namespace, model: LoadedModel, triton_url: str, server: TritonServer) -> None:
    """The OpenAI-style front end, until Triton exits (then `wait_for_stop` reports why) or Ctrl-C."""
    _, vectors, dimensions = model.runners[TEXT_ENCODER.name].spec.outputs[0].shape
    limits = Limits(args.max_items, int(args.max_image_mb * 2**20))
    card = ModelCard(
        id=args.served_model_name or args.engine.resolve().name,
        dimensions=int(dimensions),
        vectors=int(vectors),
        precision=model.precision,
        backend=model.backend,
        matryoshka=model.spec.matryoshka,
        takes_task=model.spec.task is not None,
        max_text_tokens=model.spec.max_text_tokens,
        limits=limits,
    )
    tokens = TokenCounter(model.spec.formatter(), model.spec.image)
    front_end = FrontEnd(TritonModels(triton_url, args.max_batch), card, tokens, args.api_key)
    await run_front_end(front_end, args.address, args.openai_port, int(args.max_body_mb * 2**20), _exited(server))


async def _exited(server: TritonServer, period_s: float = 0.5) -> None:
    """Polled, not waited on in a thread: a thread blocked on the process would hold up Ctrl-C's shutdown."""
    assert server.process is not None
    while server.process.poll() is None:
        await asyncio.sleep(period_s)


def wait_for_stop(server: TritonServer) -> None:
    """Until SIGINT/SIGTERM (a KeyboardInterrupt, caught in `main`) or the server exits on its own."""
    assert server.process is not None
    code = server.process.wait()
    raise AgffError(server.failure_report(f"tritonserver exited with code {code}"))


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Both stop the server; set explicitly because a shell starts background jobs with SIGINT ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        with tempfile.TemporaryDirectory(prefix="agff-serve-") as workspace:
            serve(args, Path(workspace))
    except KeyboardInterrupt:  # leaving `with server` has stopped Triton, draining in-flight requests
        print("agff-serve: stopped", file=sys.stderr)
    except AgffError as err:
        return print_error(err)
    return 0


if __name__ == "__main__":
    sys.exit(main())

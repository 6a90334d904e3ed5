"""`agff-serve`: a bundle or engine behind Triton Inference Server (HTTP and gRPC, KServe v2; Prometheus metrics).

    agff-serve --engine bundle/                       image, text and score on ports 8000 / 8001 / 8002
    agff-serve --engine model.plan --instances 2 --max-batch 32 --max-queue-delay-ms 5

The models and their inputs are in `serve/repository.py`; any Triton client
in any language calls them (docs/serving.md; the README has a Python client snippet). The server
runs until Ctrl-C or SIGTERM, which drain in-flight requests first.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
from pathlib import Path

from agff_deploy.contract import TEXT_ENCODER
from agff_deploy.errors import AgffError, InputError, print_error
from runtime.loading import BACKENDS, load_model

from .repository import ServeSettings, write_serving_repository
from .tritonserver import Ports, TritonServer, pytriton_dist, shared_libpython, stub_for_this_python


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="agff-serve", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--engine", required=True, type=Path, help="bundle folder, .onnx graph or TensorRT .plan")
    p.add_argument("--backend", choices=BACKENDS[:2], help="default: the one the path implies")
    p.add_argument("--precision", help="a bundle's precision to serve (default: the runtime's choice)")
    p.add_argument("--http-port", type=int, default=8000)
    p.add_argument("--grpc-port", type=int, default=8001)
    p.add_argument("--metrics-port", type=int, default=8002)
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
    ports = [args.http_port, args.grpc_port, args.metrics_port]
    if len(set(ports)) != 3:
        raise InputError(f"--http-port, --grpc-port and --metrics-port must differ (got {ports})")
    for flag in ("max_batch", "instances"):
        if getattr(args, flag) < 1:
            raise InputError(f"--{flag.replace('_', '-')} {getattr(args, flag)}: must be at least 1")
    if args.max_queue_delay_ms < 0:
        raise InputError(f"--max-queue-delay-ms {args.max_queue_delay_ms}: must be 0 or more")
    if args.threads < 0:
        raise InputError(f"--threads {args.threads}: must be 0 (automatic) or more")


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
        print(
            f"agff-serve: models image, text, score ready; HTTP {host}:{ports.http}, gRPC {host}:{ports.grpc}, "
            f"metrics http://{host}:{ports.metrics}/metrics; Ctrl-C stops",
            file=sys.stderr,
        )
        wait_for_stop(server)


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

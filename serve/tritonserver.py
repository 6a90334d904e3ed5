"""The Triton Inference Server that the `nvidia-pytriton` wheel ships, started on a model repository of ours.

pytriton's own binding (`Triton.bind`) runs every callable behind one proxy
that fails all requests of a dynamic batch when one of them fails, so a bad
image would take its batch neighbours down with it. We use the wheel for what
no other pip package gives, a `tritonserver` binary with its Python backend,
and write ordinary Python-backend models, which answer each request of a
batch on its own (`serve.embedder_model`).

The Python backend runs each model instance in a stub process linked against
`libpython3.X.so.1.0` that then imports this interpreter's standard library.
Both must come from the same CPython build: the stub would otherwise pick up
whichever libpython the system has first (Debian's 3.11.2 here) and fail on
the other build's internals. So the stub is pointed at this interpreter's own
shared libpython, and an interpreter built without one is refused up front.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from agff_deploy.errors import InputError

STUB = "triton_python_backend_stub"
MISMATCH_SYMPTOM = "'_thread.RLock' object has no attribute '_recursion_count'"
PR_SET_PDEATHSIG = 1  # linux/prctl.h


class ServeSetupError(InputError):
    """The serving environment cannot run Triton's Python backend; the message says how to make one that can."""


@dataclass(frozen=True)
class Ports:
    http: int = 8000
    grpc: int = 8001
    metrics: int = 8002


def free_ports(count: int) -> list[int]:
    """Ports nothing listens on now, for servers started by tests and benchmarks on loopback."""
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def pytriton_dist() -> Path:
    """The `tritonserver` tree inside the installed nvidia-pytriton wheel."""
    try:
        import pytriton
    except ImportError as err:
        raise ServeSetupError(
            "serving needs the `serve` extra: pip install 'agff-deploy[cpu,serve]' (or [gpu,serve]) in a virtual "
            "environment made from a Python with a shared libpython (see docs/serving.md: Which Python)"
        ) from err
    return Path(pytriton.__file__).parent / "tritonserver"


def shared_libpython() -> Path:
    """This interpreter's own `libpython3.X.so.1.0`, which the Python-backend stub must link."""
    libdir, soname = sysconfig.get_config_var("LIBDIR"), sysconfig.get_config_var("INSTSONAME")
    library = Path(libdir or "") / (soname or "")
    if not soname or not library.name.startswith("libpython") or not library.is_file():
        version = sys.version.split()[0]
        raise ServeSetupError(
            f"{sys.executable} (Python {version}) has no shared libpython ({library} not found). Triton's Python "
            "backend runs each model in a stub that links libpython and then imports this interpreter's standard "
            "library; with another build's libpython (the system's) the model fails to load with "
            f"{MISMATCH_SYMPTOM!r}. Make the serving virtual environment from a Python built with --enable-shared, "
            "for example the system's: /usr/bin/python3.11 -m venv .venv-serve"
        )
    return library


def stub_for_this_python(dist: Path) -> Path:
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = dist / "python_backend_stubs" / version / STUB
    if not stub.is_file():
        shipped = sorted(p.name for p in (dist / "python_backend_stubs").iterdir())
        raise ServeSetupError(
            f"nvidia-pytriton ships Python-backend stubs for Python {', '.join(shipped)}, not {version}: "
            "make the serving virtual environment from one of those"
        )
    return stub


def backend_directory(workspace: Path, dist: Path) -> Path:
    """`backends/python` with the stub for this interpreter, where Triton's Python backend looks for it."""
    python = workspace / "backends" / "python"
    python.mkdir(parents=True, exist_ok=True)
    for name in ("libtriton_python.so", "triton_python_backend_utils.py"):
        shutil.copy2(dist / "backends" / "python" / name, python / name)
    shutil.copy2(stub_for_this_python(dist), python / STUB)
    return workspace / "backends"


def server_environment(dist: Path) -> dict[str, str]:
    """This interpreter's libpython first on the library path, its scripts first on PATH (the stub finds the
    virtual environment, and so its packages, through the `python3` on PATH)."""
    env = dict(os.environ)
    libraries = [str(shared_libpython().parent), str(dist.parent.parent / "nvidia_pytriton.libs")]
    env["LD_LIBRARY_PATH"] = os.pathsep.join([*libraries, env.get("LD_LIBRARY_PATH", "")]).rstrip(os.pathsep)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def _stop_with_parent() -> None:
    """Run in the server's process before exec: the kernel sends it SIGTERM when the process that started it dies,
    even by SIGKILL, so no orphaned server keeps the ports."""
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class TritonServer:
    """One `tritonserver` process serving `repository`; `with TritonServer(...) as server:` waits until it is ready
    and stops it on leaving."""

    def __init__(
        self, repository: Path, workspace: Path, ports: Ports = Ports(), address: str = "0.0.0.0", verbose: bool = False
    ) -> None:
        self.repository = repository
        self.workspace = workspace
        self.ports = ports
        self.address = address
        self.verbose = verbose
        self.log_path = workspace / "tritonserver.log"
        self.process: subprocess.Popen[bytes] | None = None

    def command(self, dist: Path) -> list[str]:
        return [
            str(dist / "bin" / "tritonserver"),
            f"--model-repository={self.repository}",
            f"--backend-directory={backend_directory(self.workspace, dist)}",
            f"--cache-directory={dist / 'caches'}",
            f"--http-address={self.address}",
            f"--grpc-address={self.address}",
            f"--metrics-address={self.address}",
            f"--http-port={self.ports.http}",
            f"--grpc-port={self.ports.grpc}",
            f"--metrics-port={self.ports.metrics}",
            "--allow-metrics=true",
            "--exit-timeout-secs=5",
            "--exit-on-error=true",
            f"--log-verbose={1 if self.verbose else 0}",
        ]

    def start(self, timeout_s: float = 120.0) -> None:
        dist = pytriton_dist()
        env = server_environment(dist)
        log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            self.command(dist),
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a Ctrl-C reaches agff-serve, which then drains and stops the server
            preexec_fn=_stop_with_parent,
        )
        log.close()
        try:
            self.wait_ready(timeout_s)
        except BaseException:  # Ctrl-C during start-up too: never leave a server behind
            self.stop()
            raise

    @property
    def host(self) -> str:
        """Where a client on this machine reaches the server."""
        return "127.0.0.1" if self.address in ("0.0.0.0", "") else self.address

    def url(self, path: str = "") -> str:
        return f"http://{self.host}:{self.ports.http}{path}"

    def is_ready(self) -> bool:
        try:
            with urllib.request.urlopen(self.url("/v2/health/ready"), timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise ServeSetupError(self.failure_report(f"tritonserver exited with code {self.process.returncode}"))
            if self.is_ready():
                return
            time.sleep(0.2)
        raise ServeSetupError(self.failure_report(f"tritonserver was not ready within {timeout_s:.0f} s"))

    def failure_report(self, what: str) -> str:
        log = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        errors = [line for line in log.splitlines() if line.startswith("E") or "rror" in line][-8:]
        hint = ""
        if MISMATCH_SYMPTOM in log:
            hint = (
                "\nThe Python-backend stub loaded a different CPython build's libpython than this interpreter's; "
                "make the serving virtual environment from the system's Python (/usr/bin/python3.11 -m venv)."
            )
        return f"{what}; from its log:\n" + "\n".join(errors) + hint

    def stop(self) -> None:
        """SIGINT (Triton drains in-flight requests, up to --exit-timeout-secs), then SIGKILL if it hangs."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def __enter__(self) -> TritonServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

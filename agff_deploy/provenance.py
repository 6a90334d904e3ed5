"""Where a measured number came from: the commit (marked dirty when the work tree had changes), the command and
its configuration, the machine, and the time.

Every JSON record a bench or report command writes carries this, so a number in the docs can be traced to the
code, the settings and the hardware that produced it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

LIBRARIES = ("numpy", "onnx", "onnxruntime", "torch", "transformers")
KEYS = ("commit", "command", "config", "machine", "utc")  # what `provenance` adds to a record


def commit() -> str:
    """`git describe --always --dirty` of this checkout (full hash), or "unknown" outside a git work tree."""
    try:
        result = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--abbrev=40"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).resolve().parent,
            check=False,
        )
    except OSError:
        return "unknown"
    return result.stdout.strip() or "unknown"


def machine() -> dict[str, object]:
    """Cores, memory, Python and the versions of the libraries a number depends on (None: not installed)."""
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    versions: dict[str, str | None] = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "cores": os.cpu_count(),
        "memory_bytes": memory,
        "python": platform.python_version(),
        "libraries": versions,
    }


def provenance(module: str, args: argparse.Namespace, argv: Sequence[str] | None = None) -> dict[str, object]:
    """What `python -m module` adds to its JSON record: the commit, the command line (`argv`, or this process's),
    every parsed option with its default filled in (the configuration), the machine, and the UTC time of the record."""
    return {
        "commit": commit(),
        "command": ["python", "-m", module, *(sys.argv[1:] if argv is None else argv)],
        "config": json.loads(json.dumps(vars(args), default=str)),
        "machine": machine(),
        "utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }

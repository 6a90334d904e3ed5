"""Where a measured number came from: the commit (marked dirty when the work tree had changes) and the machine.

Every JSON file a bench or report command writes carries this, so a number in the docs can be traced to the code
and the hardware that produced it.
"""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

LIBRARIES = ("numpy", "onnx", "onnxruntime", "torch", "transformers")


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


def provenance() -> dict[str, object]:
    return {"commit": commit(), "machine": machine()}

"""One file written so that no reader, power loss or `kill -9` ever sees it half-written.

The data goes to a temporary name beside the target, reaches the disk, and is
renamed over the target. The temporary name carries the writer's pid, so a
later writer can tell a dead writer's leftovers from a live one's
(runtime/index.py removes them). No torch: the runtime writes this way too.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


def write_atomically(path: Path, write: Callable[[IO[bytes]], object]) -> None:
    """Write through a temporary file in the same folder, then rename: never a half-written output."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())  # the data is on disk before the rename makes it visible (power loss)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: Path, value: Any) -> None:
    """`value` as indented JSON, written atomically (what every bench record and run file is)."""
    text = json.dumps(value, indent=2) + "\n"
    write_atomically(path, lambda f: f.write(text.encode()))


def writer_running(pid: int) -> bool:
    """Whether the writer whose pid a temporary name carries still runs (its files are then not leftovers)."""
    if os.name != "posix":
        return True  # os.kill would terminate the process on Windows: assume it is a live writer
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, and another user's
    return True

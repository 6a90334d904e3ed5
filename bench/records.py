"""What every bench run ends with: latency percentiles, and its record shown and written."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from agff_deploy.atomic_files import write_json


def percentiles(latencies: list[float]) -> dict[str, float]:
    p50, p99 = np.percentile(np.asarray(latencies) * 1000, [50, 99])
    return {"p50_ms": round(float(p50), 2), "p99_ms": round(float(p99), 2)}


def publish(report: dict[str, Any], table: str, out: Path | None) -> None:
    """The table for people on stderr, the record without its per-round rows as one JSON line on stdout, and the
    whole record written to `out`."""
    print(table, file=sys.stderr)
    print(json.dumps({k: v for k, v in report.items() if k != "rows"}))
    if out:
        write_json(out, report)

"""The bundle manifest: everything a runtime needs beside the graphs, and nothing it must guess.

Plain JSON read with the standard library, so a Jetson runtime without torch
reads it. Written by `export.to_onnx`, extended by `export.to_trt`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

MANIFEST_FILE = "manifest.json"
FORMAT = "agff-bundle"
FORMAT_VERSION = 1
GRAPH_NAMES = ("image_encoder", "text_encoder", "scorer")
PRECISIONS = ("fp32", "fp16", "int8", "int8-dynamic")
TRT_PRECISIONS = ("fp32", "fp16", "int8")


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(folder: str | Path, manifest: dict[str, Any]) -> Path:
    path = Path(folder) / MANIFEST_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    tmp.replace(path)
    return path


def read_manifest(folder: str | Path) -> dict[str, Any]:
    """The manifest of a bundle folder, checked for format and the fields every runtime reads."""
    path = Path(folder) / MANIFEST_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: a bundle folder is written by `python -m export.to_onnx CKPT`")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from err
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{path}: format is {manifest.get('format')!r}, expected {FORMAT!r}")
    if manifest.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(
            f"{path}: format_version {manifest['format_version']} is newer than this agff-deploy reads "
            f"({FORMAT_VERSION}); upgrade agff-deploy"
        )
    missing = [key for key in ("model", "image", "tokenizer", "fusion", "graphs") if key not in manifest]
    if missing:
        raise ValueError(f"{path} lacks {', '.join(missing)}; re-export the bundle")
    return manifest


def graph_entry(manifest: dict[str, Any], precision: str, name: str) -> dict[str, Any]:
    graphs = manifest["graphs"]
    if precision not in graphs:
        raise KeyError(f"bundle has no {precision} graphs (it has {', '.join(graphs)}); {_advice(precision, graphs)}")
    if name not in graphs[precision]:
        raise KeyError(f"bundle's {precision} graphs lack {name}")
    return graphs[precision][name]


def _advice(precision: str, graphs: dict[str, Any]) -> str:
    """What to do instead, in flags `python -m export.to_onnx` and `agff-run` both accept."""
    if precision in PRECISIONS:
        return f"export with --precision {precision}"
    choices = " or ".join(f"--precision {p}" for p in graphs)
    return f"{precision} is not a precision bundles hold ({', '.join(PRECISIONS)}): choose {choices}"


def check_external_data(bundle: str | Path, entry: dict[str, Any]) -> None:
    """Every external-data file a graph needs is there at its full size, or an error naming it and the graph.

    Sizes, not hashes: a truncated copy is the common failure, and hashing
    gigabytes at every start would cost seconds. The graph file's own sha256
    is checked by the runner.
    """
    graph = Path(bundle) / entry["file"]
    for data in entry.get("external_data", []):
        path = Path(bundle) / data["file"]
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} is missing: it holds the weights of {graph}; copy the whole bundle folder, "
                ".onnx.data files included"
            )
        size = path.stat().st_size
        if size != data["bytes"]:
            raise ValueError(
                f"{path} is {size} bytes but {graph} needs {data['bytes']}: a truncated or altered copy; copy it again"
            )

"""What the parity gate measured of an int8 bundle, and how much of it int8 left in float, as a JSON record.

Run: python -m bench.int8_gate --json OUT.json CKPT -o BUNDLE --precision fp32 int8 [export.to_onnx options]

Runs `export.to_onnx` in this process with the options after --json, then records: every parity row the
bundle's manifest keeps (each pipeline on each input set: min cosine, max abs, bar), the gate's lines for a
precision it refused, each int8 graph's weight MatMuls by what they multiply by (int8 or float, counted in
weights as well as MatMuls, read from the graph itself), the MatMuls the manifest records as kept in float,
the wall time and this process's peak RSS, with provenance.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import resource
import sys
import time
from pathlib import Path

import onnx

from agff_deploy.atomic_files import write_json
from agff_deploy.manifest import read_manifest
from agff_deploy.provenance import provenance
from export import to_onnx


def float_share(path: Path) -> dict[str, float | int]:
    """The MatMuls of the graph at `path` whose 2-D weight is int8 (behind a DequantizeLinear) or float."""
    graph = onnx.load(str(path), load_external_data=False).graph
    weights = {t.name: t for t in graph.initializer if len(t.dims) == 2}
    int8 = {
        n.output[0]: weights[n.input[0]]
        for n in graph.node
        if n.op_type == "DequantizeLinear"
        and n.input[0] in weights
        and weights[n.input[0]].data_type == onnx.TensorProto.INT8
    }
    counts = {"int8_matmuls": 0, "float_matmuls": 0, "int8_weights": 0, "float_weights": 0}
    for node in (n for n in graph.node if n.op_type == "MatMul"):
        weight = node.input[1]
        kind = "int8" if weight in int8 else "float" if weight in weights else None
        if kind:
            counts[f"{kind}_matmuls"] += 1
            counts[f"{kind}_weights"] += math.prod((int8.get(weight) or weights[weight]).dims)
    total = counts["int8_weights"] + counts["float_weights"]
    return {**counts, "float_weight_share": counts["float_weights"] / total if total else 0.0}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.int8_gate", description=__doc__)
    parser.add_argument("--json", type=Path, required=True, help="where the record goes")
    args, export_argv = parser.parse_known_args(argv)
    bundle = to_onnx.parse_args(export_argv).out
    started = time.perf_counter()
    code = to_onnx.main(export_argv)
    record: dict[str, object] = {
        "bench": "int8_gate",
        "export_exit_code": code,
        "wall_s": round(time.perf_counter() - started, 1),
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }
    if bundle is not None and (bundle / "manifest.json").is_file():
        manifest = read_manifest(bundle)
        record["parity"] = [dataclasses.asdict(row) for row in manifest.parity.rows] if manifest.parity else []
        record["left_out"] = dict(manifest.parity.left_out) if manifest.parity else {}
        record["kept_in_float"] = {p: list(names) for p, names in manifest.kept_in_float.items()}
        record["int8_graphs"] = {
            name: float_share(bundle / entry.file) for name, entry in manifest.graphs.get("int8", {}).items()
        }
    args.export_args = export_argv
    record.update(provenance("bench.int8_gate", args, argv))
    write_json(args.json, record)
    print(f"record: {args.json}")
    return code


if __name__ == "__main__":
    sys.exit(main())

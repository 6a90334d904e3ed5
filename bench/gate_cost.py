"""What the gate's top-1 check costs and finds on a real-size checkpoint: the same export twice, side by side.

    python -m bench.gate_cost --ckpt CKPT --work DIR -o docs/gate-cost-qwen3-2b.json

Exports CKPT's `--precision` graphs first with `--agreement-pairs 0` (no top-1 check), then with the default
(auto: as many held-out pairs as fit the gate's time budget), each sampled by `bench.scale.run_export`. Records
both runs' seconds, peak RSS and stages, their ratio, the count of pairs auto chose and why, and the gate rows
of the default run (its retrieval rows are the top-1 check). The default run's bundle stays in DIR/bundle.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
from pathlib import Path
from typing import Any

from agff_deploy.atomic_files import write_atomically
from agff_deploy.manifest import read_manifest
from agff_deploy.provenance import provenance

from .scale import run_export

RUNS = {"without pairs": ["--agreement-pairs", "0"], "default": []}


def export_once(ckpt: Path, bundle: Path, precisions: list[str], extra: list[str]) -> dict[str, Any]:
    """One export of `ckpt` into `bundle`, timed and sampled; the gate's record and rows from its manifest."""
    command = [sys.executable, "-m", "export.to_onnx", str(ckpt), "-o", str(bundle), "--precision", *precisions]
    command += ["--gate-images", "1", "2", "--fp16-guard-samples", "4", *extra]
    print("export:", " ".join(command[1:]), flush=True)
    run = run_export(command)
    manifest = read_manifest(bundle)
    assert manifest.parity is not None and manifest.gate is not None
    return {
        "seconds": run.seconds,
        "peak_rss": run.peak_rss,
        "stages": [vars(s) for s in run.stages],
        "agreement": manifest.gate.agreement,
        "parity": [dataclasses.asdict(row) for row in manifest.parity.rows],
        "left_out": dict(manifest.parity.left_out),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.gate_cost", description=__doc__)
    p.add_argument("--ckpt", type=Path, required=True)
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--precision", nargs="+", default=["fp32", "int8", "int4"])
    p.add_argument("-o", "--out", type=Path, required=True, help="the JSON record")
    p.add_argument("--skip-baseline", action="store_true", help="only the default export (no time ratio)")
    args = p.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    bundle = args.work / "bundle"
    runs = {}
    for name, extra in RUNS.items():
        if args.skip_baseline and name != "default":
            continue
        shutil.rmtree(bundle, ignore_errors=True)
        runs[name] = export_once(args.ckpt, bundle, args.precision, extra)
    ratio = runs["default"]["seconds"] / runs["without pairs"]["seconds"] if "without pairs" in runs else None
    retrieval = [row for row in runs["default"]["parity"] if row["graph"] == "retrieval"]
    print(f"default export {runs['default']['seconds']:.0f} s; time ratio to the export without pairs: {ratio}")
    print(runs["default"]["agreement"])
    for row in retrieval:
        print(f"  {row['precision']}: top-1 {row['top1']:.1%} over {row['inputs']} pairs ({row['bar']})")
    record = {"runs": runs, "time_ratio": ratio, **provenance("bench.gate_cost", args, argv)}
    text = json.dumps(record, indent=2) + "\n"
    write_atomically(args.out, lambda f: f.write(text.encode()))
    return 0


if __name__ == "__main__":
    sys.exit(main())

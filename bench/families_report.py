"""docs/families-2b.md: a Qwen2-VL-2B and a Qwen3-VL-2B model side by side, from the JSON files `bench.scale` and
`export.engine_memory --json` wrote for each: no number typed in.

    python -m bench.families_report -o docs/families-2b.md

`tests/test_docs_numbers.py` renders the page again from the same files and compares.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agff_deploy.atomic_files import write_atomically

from .scale_report import short_commit

DOCS = Path(__file__).resolve().parents[1] / "docs"
GIB = 2**30
# Each model's two records, in the order the page shows them.
SOURCES = {
    "Qwen2-VL-2B": ("scale-qwen2-2b.json", "engine-memory-qwen2-2b.json"),
    "Qwen3-VL-2B": ("scale-qwen3-2b.json", "engine-memory-qwen3-2b.json"),
}
NX, NANO = "orin-nx-16gb", "orin-nano-8gb"


def load(folder: Path = DOCS) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    """Each model's (scale, engine memory) records; a missing file is a FileNotFoundError."""
    return {
        name: tuple(json.loads((folder / file).read_text()) for file in files)  # type: ignore[misc]
        for name, files in SOURCES.items()
    }


def _gib(n: float) -> str:
    return f"{n / GIB:.2f}"


def render(records: dict[str, tuple[dict[str, Any], dict[str, Any]]]) -> str:
    names = list(records)
    lines = [
        "# Qwen2-VL-2B and Qwen3-VL-2B, measured side by side",
        "",
        "Rendered by `python -m bench.families_report -o docs/families-2b.md` from these files:",
        "",
    ]
    for name, (scale, memory) in records.items():
        files = SOURCES[name]
        lines.append(
            f"- {name}: `docs/{files[0]}`, written by `{' '.join(scale['command'])}` (commit "
            f"`{short_commit(scale['commit'])}`), and `docs/{files[1]}`, by `python -m export.engine_memory` "
            f"(commit `{short_commit(memory['commit'])}`)."
        )
    lines += [
        "",
        "Each model is a random-initialised base of the published architecture (`python -m agff_deploy.base`) after",
        "two LoRA steps at 448 x 448 px (256 image tokens either way): right for size, memory, speed and parity,",
        "not for quality. ONNX Runtime on this machine's CPU; TensorRT was not run (the memory table is",
        "`export.engine_memory`'s estimate).",
        "",
        _when(records),
        "",
    ]
    lines += _bundles(names, records)
    lines += _export(names, records)
    lines += _runtime(names, records)
    for name, (scale, _) in records.items():
        lines += _gate(name, scale)
    lines += _memory(names, records)
    return "\n".join(lines) + "\n"


def _when(records: dict[str, tuple[dict[str, Any], dict[str, Any]]]) -> str:
    """When each run was, and the machine's fp32 GEMM peak it measured: timings compare only where these agree."""
    runs = "; ".join(
        f"{name} at {scale['utc']}, GEMM peak {scale['gemm_gflops']:.0f} GFLOP/s on {scale['machine']['cores']} cores"
        for name, (scale, _) in records.items()
    )
    commits = {short_commit(scale["commit"]) for scale, _ in records.values()}
    same = f"the same commit (`{commits.pop()}`)" if len(commits) == 1 else "different commits"
    return f"The runs, from {same}: {runs}."


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    return [_row(header), _row(["---"] * len(header)), *map(_row, rows)]


def _bundles(names: list[str], records: dict) -> list[str]:
    precisions = list(dict.fromkeys(p for name in names for p in records[name][0]["bundle_bytes"]))
    rows = [
        [p, *(_gib(records[n][0]["bundle_bytes"][p]) if p in records[n][0]["bundle_bytes"] else "-" for n in names)]
        for p in precisions
    ]
    return [
        "## Bundle: the vision and language encoder graphs per precision, GiB",
        "",
        *markdown_table(["precision", *names], rows),
        "",
    ]


def _export(names: list[str], records: dict) -> list[str]:
    stages = list(dict.fromkeys(s["name"] for name in names for s in records[name][0]["export"]["stages"]))
    rows = []
    for stage in stages:
        cells = [stage]
        for name in names:
            found = [s for s in records[name][0]["export"]["stages"] if s["name"] == stage]
            cells += [f"{found[0]['seconds']:.0f}", _gib(found[0]["peak_rss"])] if found else ["-", "-"]
        rows.append(cells)
    exports = [records[name][0]["export"] for name in names]
    rows.append(["whole export", *(v for e in exports for v in (f"{e['seconds']:.0f}", _gib(e["peak_rss"])))])
    header = ["export stage", *(f"{name} {what}" for name in names for what in ("s", "peak RSS GiB"))]
    precisions = {name: " ".join(records[name][0]["config"]["precision"]) for name in names}
    asked = "; ".join(f"{name}: {p}" for name, p in precisions.items())
    return ["## Export and gate", "", f"Precisions asked for: {asked}.", "", *markdown_table(header, rows), ""]


def _runtime(names: list[str], records: dict) -> list[str]:
    rows = []
    for name in names:
        runtime = records[name][0]["runtime"]
        for precision, r in runtime.items():
            images, texts = (sorted(r[key], key=int)[-1] for key in ("image_ms", "text_ms"))
            text_only = _gib(r["text_only"]["peak_rss"]) if "text_only" in r else "-"
            rows.append(
                [
                    name,
                    precision,
                    f"{r['load_s']:.1f}",
                    _gib(r["peak_rss"]),
                    text_only,
                    f"{r['image_ms']['1']:.0f}",
                    f"{r['image_ms'][images]:.0f} (batch {images})",
                    f"{r['text_ms']['1']:.0f}",
                    f"{r['text_ms'][texts]:.0f} (batch {texts})",
                ]
            )
    header = ["model", "precision", "load s", "peak RSS GiB", "text-only RSS GiB", "image ms b1", "image ms",
              "text ms b1", "text ms"]  # fmt: skip
    flops = [
        f"{name}: {records[name][0]['gflop_per_image']:.0f} GFLOP per image, fp32 at "
        f"{records[name][0].get('fp32_image_gflops', 0):.1f} GFLOP/s of a "
        f"{records[name][0]['gemm_gflops']:.1f} GFLOP/s GEMM peak"
        for name in names
    ]
    return [
        "## Runtime (torch-free Embedder, each in a fresh process; latency per item)",
        "",
        *markdown_table(header, rows),
        "",
        "Work per image and how much of the machine it used: " + "; ".join(flops) + ".",
        "",
    ]


def _gate(name: str, scale: dict[str, Any]) -> list[str]:
    if "parity" not in scale:
        return [f"## {name}: the gate", "", "Its record predates `bench.scale` keeping the gate's rows.", ""]
    rows = [
        [
            row["precision"],
            row["graph"],
            row["inputs"],
            "-" if row["min_cosine"] is None else f"{row['min_cosine']:.5f}",
            "-" if row["max_abs"] is None else f"{row['max_abs']:.2e}",
            row["bar"],
            "pass" if row["passed"] else "FAIL",
        ]
        for row in scale["parity"]
    ]
    lines = [f"## {name}: the gate, against PyTorch fp32", ""]
    lines += markdown_table(["precision", "pipeline", "inputs", "min cosine", "max abs", "bar", "result"], rows)
    for precision, reasons in scale.get("left_out", {}).items():
        lines += ["", f"Left out of the bundle, {precision}: " + "; ".join(reasons) + "."]
    for precision, graphs in scale.get("kept_in_float", {}).items():
        lines += ["", f"{precision} weight MatMuls, quantised / kept in float: " + _shares(precision, graphs) + "."]
    return [*lines, ""]


def _shares(precision: str, graphs: dict[str, dict[str, float]]) -> str:
    parts = []
    for graph, counts in graphs.items():
        if precision == "int8":
            share = f", {counts['float_weight_share']:.1%} of the weights in float"
            parts.append(f"{graph} {counts['int8_matmuls']} / {counts['float_matmuls']}{share}")
        else:
            parts.append(f"{graph} {counts['quantized']} / {counts['kept']}")
    return "; ".join(parts)


def _memory(names: list[str], records: dict) -> list[str]:
    tables = {name: {(r["precision"], r["board"]): r for r in records[name][1]["rows"]} for name in names}
    keys = list(dict.fromkeys(key for name in names for key in tables[name]))
    rows = []
    for precision, board in keys:
        cells = [precision, board]
        for name in names:
            row = tables[name].get((precision, board))
            cells += [row["total GiB"], row["fits"], row["largest max batch"]] if row else ["-", "-", "-"]
        rows.append(cells)
    header = ["precision", "board", *(f"{n} {what}" for n in names for what in ("GiB", "fits", "largest max batch"))]
    batches = "; ".join(f"{name} at --batch {' '.join(map(str, records[name][1]['batch']))}" for name in names)
    return [
        "## TensorRT memory on the Orin boards, estimated (`export.engine_memory`)",
        "",
        f"Engines sized for the bundle's batch range ({batches}); 'largest max batch' is the largest",
        "profile maximum that still fits the board. These int8 bundles kept the token table in fp32; since the",
        "int8 and int4 graphs store it in fp16, the current estimate is in [real-size-2b.md](real-size-2b.md).",
        "",
        *markdown_table(header, rows),
        "",
        *(_fits(name, tables[name]) for name in names),
        "",
    ]


def _fits(name: str, table: dict[tuple[str, str], dict[str, str]]) -> str:
    def largest(row: dict[str, str]) -> int:
        return 0 if row["largest max batch"] == "none" else int(row["largest max batch"])

    nx = [p for (p, board), row in table.items() if board == NX and largest(row) >= 8]
    nano = [p for (p, board), row in table.items() if board == NANO and largest(row) >= 1]
    return (
        f"- {name}: at a max batch of 8 images an Orin NX 16 GB fits {', '.join(nx) or 'no precision'}; at batch 1 "
        f"an Orin Nano 8 GB fits {', '.join(nano) or 'no precision'}."
    )


def write_page(prog: str, description: str, page: Callable[[], str], argv: list[str] | None) -> int:
    """A rendering command's main: `-o PAGE`, written atomically."""
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("-o", "--out", type=Path, required=True)
    args = p.parse_args(argv)
    text = page()
    write_atomically(args.out, lambda f: f.write(text.encode()))
    print(f"wrote {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return write_page("python -m bench.families_report", __doc__.split("\n\n")[0], lambda: render(load()), argv)


if __name__ == "__main__":
    sys.exit(main())

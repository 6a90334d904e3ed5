"""docs/scale-2b.md from the JSON files `bench.scale`, `export.engine_memory --json` and `bench.int8_gate` wrote: no
number typed in.

    python -m bench.scale_report docs/scale-2b.json docs/engine-memory-2b.json docs/int8-2b.json -o docs/scale-2b.md

`tests/test_docs_numbers.py` renders the page again from the same files and compares.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

GIB = 2**30


def _gib(n: float) -> str:
    return f"{n / GIB:.2f}"


def short_commit(commit: str) -> str:
    """A commit as `git describe --dirty` gives it, the hash cut to 12 characters."""
    head, dirty, _ = commit.partition("-dirty")
    return head[:12] + dirty


def render(scale: dict[str, Any], memory: dict[str, Any], int8: dict[str, Any], sources: tuple[str, ...]) -> str:
    lines = [
        "# A 2B model in the vision + language layout, measured",
        "",
        f"Rendered by `python -m bench.scale_report {' '.join(sources)}` from the files",
        f"`{' '.join(scale['command'])}` (commit `{short_commit(scale['commit'])}`),",
        "`python -m export.engine_memory BUNDLE --json` and `python -m bench.int8_gate` wrote. The model is a",
        "random-initialised Qwen2-VL-2B-architecture base after two LoRA steps at 448 px: right for size, memory,",
        "speed and parity, not for quality. ONNX Runtime on this machine's CPU; TensorRT was not run (the memory",
        "table is `export.engine_memory`'s estimate).",
        "",
        "## Bundle",
        "",
        "| precision | encoder graphs GiB | a device bundle of it alone, GiB |",
        "| --- | --- | --- |",
    ]
    device = scale.get("device_bundle_bytes", {})
    for precision, size in scale["bundle_bytes"].items():
        alone = _gib(device[precision]) if precision in device else "(fp32 is the reference; not a device bundle)"
        lines.append(f"| {precision} | {_gib(size)} | {alone} |")
    export = scale["export"]
    reused = " (an earlier run's export, kept by `--reuse`)" if "--reuse" in scale["command"] else ""
    lines += ["", f"Export and gate{reused}: {export['seconds']:.0f} s, peak RSS {_gib(export['peak_rss'])} GiB.", ""]
    lines += ["| export stage | seconds | peak RSS GiB |", "| --- | --- | --- |"]
    lines += [f"| {s['name']} | {s['seconds']:.0f} | {_gib(s['peak_rss'])} |" for s in export["stages"]]
    lines += _runtime(scale)
    lines += _memory(memory)
    lines += _int8(int8)
    return "\n".join(lines) + "\n"


def _runtime(scale: dict[str, Any]) -> list[str]:
    runtime = scale["runtime"]
    first = next(iter(runtime.values()))
    image_batches, text_batches = list(first["image_ms"]), list(first["text_ms"])
    head = ["layout / precision", "load s", "peak RSS GiB", "text-only peak RSS GiB"]
    head += [f"image ms, batch {b}" for b in image_batches] + [f"text ms, batch {b}" for b in text_batches]
    lines = ["", "## Runtime (torch-free Embedder, each in a fresh process; latency per item)", ""]
    lines += ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for name, r in runtime.items():
        text_only = _gib(r["text_only"]["peak_rss"]) if "text_only" in r else "-"
        row = [name, f"{r['load_s']:.1f}", _gib(r["peak_rss"]), text_only]
        row += [f"{r['image_ms'][b]:.0f}" for b in image_batches] + [f"{r['text_ms'][b]:.0f}" for b in text_batches]
        lines.append("| " + " | ".join(row) + " |")
    loaded = {name: r["text_only"]["vision_loaded"] for name, r in runtime.items() if "text_only" in r}
    if loaded:
        lines += ["", f"The text-only processes opened the vision encoder: {loaded}."]
    comparison = scale.get("pipeline_vs_one_graph")
    if comparison:
        image = ", ".join(f"batch {b}: {v:.3f}" for b, v in comparison["image_time_ratio"].items())
        text = ", ".join(f"batch {b}: {v:.3f}" for b, v in comparison["text_time_ratio"].items())
        lines += [
            "",
            "fp32 vision + language pipeline against the one-graph layout, same run (time ratio, under 1 is faster):",
            f"image {image}; text {text}; peak RSS ratio {comparison['peak_rss_ratio']:.3f}; their embeddings agree",
            f"to min cosine {comparison['min_cosine']:.7f}, max abs {comparison['max_abs']:.1e}.",
        ]
    return lines


def _memory(memory: dict[str, Any]) -> list[str]:
    batch = " ".join(map(str, memory["batch"]))
    lines = ["", f"## TensorRT memory, estimated (`export.engine_memory`, --batch {batch}, GiB)", ""]
    keys = ["precision", "board", "weights", "activations", "workspace", "total GiB", "fits", "largest max batch"]
    lines += ["| " + " | ".join(keys) + " |", "|" + " --- |" * len(keys)]
    lines += ["| " + " | ".join(row[k] for k in keys) + " |" for row in memory["rows"]]
    return lines


def _int8(int8: dict[str, Any]) -> list[str]:
    command = " ".join(int8["command"])
    lines = [
        "",
        "## int8 Q/DQ through the gate",
        "",
        f"`{command}` (commit `{short_commit(int8['commit'])}`): export and gate {int8['wall_s']:.0f} s, peak RSS",
        f"{_gib(int8['peak_rss_bytes'])} GiB. Min cosine against PyTorch on the gate's two input sets; the top-1 part",
        "of the bar was not run at this size (`--agreement-pairs 0`).",
        "",
        "| pipeline | inputs | min cosine | bar | passed |",
        "| --- | --- | --- | --- | --- |",
    ]
    rows = [r for r in int8["parity"] if r["precision"] == "int8"]
    lines += [
        f"| {r['graph']} | {r['inputs']} | {r['min_cosine']:.4f} | {r['bar']} | {'yes' if r['passed'] else 'no'} |"
        for r in rows
    ]
    lines += [
        "",
        "| graph | MatMuls in int8 | kept in float | share of MatMul weights in float |",
        "| --- | --- | --- | --- |",
    ]
    lines += [
        f"| {name} | {g['int8_matmuls']} | {g['float_matmuls']} | {g['float_weight_share']:.1%} |"
        for name, g in int8["int8_graphs"].items()
        if g["int8_matmuls"] or g["float_matmuls"]
    ]
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.scale_report", description=__doc__.split("\n\n")[0])
    p.add_argument("scale", type=Path, help="scale.json written by bench.scale")
    p.add_argument("memory", type=Path, help="the JSON written by export.engine_memory --json")
    p.add_argument("int8", type=Path, help="the JSON written by bench.int8_gate --json")
    p.add_argument("-o", "--out", type=Path, help="write here (default: print)")
    args = p.parse_args(argv)
    files = (args.scale, args.memory, args.int8)
    write_page(render(*(json.loads(f.read_text()) for f in files), tuple(map(str, files))), args.out)
    return 0


def write_page(page: str, out: Path | None) -> None:
    """The rendered page to `out`, or to stdout without one."""
    if out:
        out.write_text(page)
    else:
        print(page, end="")


if __name__ == "__main__":
    sys.exit(main())

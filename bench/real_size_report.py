"""docs/real-size-2b.md: what a retrieval user meets at 2B, from the JSON files the commands wrote: the gate's
top-1 check and what it costs (`bench.gate_cost`), the Orin boards (`export.engine_memory`), and int4 on random
and trained-like weights (`bench.int4_weights`). No number typed in.

    python -m bench.real_size_report -o docs/real-size-2b.md

`tests/test_docs_numbers.py` renders the page again from the same files and compares.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from .families_report import markdown_table, write_page
from .scale_report import short_commit

DOCS = Path(__file__).resolve().parents[1] / "docs"
GIB = 2**30
MODELS = ("Qwen2-VL-2B", "Qwen3-VL-2B")
GATE_COST = {"Qwen3-VL-2B": "gate-cost-qwen3-2b.json"}
MEMORY = {"Qwen2-VL-2B": "engine-memory-nano-qwen2-2b.json", "Qwen3-VL-2B": "engine-memory-nano-qwen3-2b.json"}
INT4 = "int4-weights.json"
SOURCES = (*GATE_COST.values(), *MEMORY.values(), INT4)
BOARDS = ("orin-nano-8gb", "orin-nx-16gb")


def load(folder: Path = DOCS) -> dict[str, dict[str, Any]]:
    """Every source file by name; a missing one is a FileNotFoundError."""
    return {name: json.loads((folder / name).read_text()) for name in SOURCES}


def render(records: dict[str, dict[str, Any]]) -> str:
    lines = [
        "# Real-size details: the top-1 check, the Orin boards and int4 at 2B",
        "",
        "Rendered by `python -m bench.real_size_report -o docs/real-size-2b.md` from these files:",
        "",
        *(_source(name, records[name]) for name in SOURCES),
        "",
        "The 2B models are random-initialised bases of the published architectures (`python -m agff_deploy.base`)",
        "after two LoRA steps at 448 x 448 px, as in [families-2b.md](families-2b.md): right for time, memory and",
        "the arithmetic of each precision, not for what a trained model retrieves.",
        "",
    ]
    lines += _gate_cost(records)
    lines += _memory(records)
    lines += _int4(records[INT4])
    return "\n".join(lines) + "\n"


def _source(name: str, record: dict[str, Any]) -> str:
    command = " ".join(record["command"])
    return f"- `docs/{name}`: `{command}`, commit `{short_commit(record['commit'])}`, {record['utc']}."


def _gate_cost(records: dict[str, dict[str, Any]]) -> list[str]:
    rows, checks, reasons = [], [], []
    for model, file in GATE_COST.items():
        record = records[file]
        plain, default = record["runs"].get("without pairs"), record["runs"]["default"]
        rows.append(
            [
                model,
                " ".join(record["config"]["precision"]),
                f"{plain['seconds']:.0f}" if plain else "not run",
                f"{default['seconds']:.0f}",
                f"{record['time_ratio']:.2f}" if plain else "-",
                (f"{plain['peak_rss'] / GIB:.1f} / " if plain else "- / ") + f"{default['peak_rss'] / GIB:.1f}",
            ]
        )
        reasons.append(f"- {model}: {default['agreement']}.")
        for row in default["parity"]:
            if row["graph"] == "retrieval":
                checks.append(f"- {model}, {row['precision']}: passed, top-1 agreement {row['top1']:.1%} over "
                              f"{row['inputs']} held-out pairs (bar {row['bar']}).")  # fmt: skip
        for precision, why in default["left_out"].items():
            checks.append(f"- {model}, {precision}: left out of the bundle by the gate: {'; '.join(why)}.")
    return [
        "## The gate's top-1 check at 2B",
        "",
        "The same export twice on one machine, one after the other: with `--agreement-pairs 0` (no top-1",
        "check) and with the default (auto: as many held-out pairs as fit the gate's time budget); where the",
        "first was not run (`--skip-baseline`, to save its quarter hour), only the default's time is shown.",
        "",
        *markdown_table(["model", "precisions", "without pairs s", "default s", "ratio", "peak RSS GiB"], rows),
        "",
        *_stages(records),
        "How many pairs the default took, as each export printed it:",
        "",
        *reasons,
        "",
        "What the default exports' gate found for the precisions with a top-1 bar (the top-1 check: each held-out",
        "image's best caption under the fused score, against PyTorch fp32's own choice):",
        "",
        *checks,
        "",
    ]


def _stages(records: dict[str, dict[str, Any]]) -> list[str]:
    """Where the time went, stage by stage, in the runs that have both exports: the pairs' cost is in the PyTorch
    reference (their outputs) and the ONNX Runtime gate (each precision with a top-1 bar runs them)."""
    lines = []
    for model, file in GATE_COST.items():
        runs = records[file]["runs"]
        if "without pairs" not in runs:
            continue
        names = list(dict.fromkeys(s["name"] for run in runs.values() for s in run["stages"]))
        seconds = {run: {s["name"]: s["seconds"] for s in runs[run]["stages"]} for run in runs}
        rows = [[name, *(f"{seconds[run].get(name, 0):.0f}" for run in ("without pairs", "default"))] for name in names]
        lines += [
            f"{model}, seconds per export stage:",
            "",
            *markdown_table(["stage", "without pairs", "default"], rows),
            "",
        ]
    return lines


def _memory(records: dict[str, dict[str, Any]]) -> list[str]:
    rows = []
    for model in MODELS:
        record = records[MEMORY[model]]
        for row in record["rows"]:
            if row["board"] in BOARDS:
                rows.append(
                    [
                        model,
                        row["precision"],
                        row["board"],
                        row["weights"],
                        row["activations"],
                        row["workspace"],
                        row["total GiB"],
                        row["usable GiB"],
                        row["fits"],
                        row["largest max batch"],
                    ]
                )
    batches = "; ".join(f"{m} at --batch {' '.join(map(str, records[MEMORY[m]]['batch']))}" for m in MODELS)
    header = ["model", "precision", "board", "weights", "activations", "workspace", "total", "usable", "fits",
              "largest max batch"]  # fmt: skip
    return [
        "## TensorRT engines on the Orin boards, estimated",
        "",
        "`export.engine_memory` on bundles of the same kind of checkpoint exported with `--precision fp32 int8",
        "--agreement-pairs 0 --calib-samples 16` (the top-1 check leaves int8 out of these random-weight models,",
        "and the estimate reads the graphs' shapes and types, not their values), at "
        f"{batches}; sizes in GiB; 'fits' is at that batch, 'largest max batch' the largest profile maximum that",
        "fits the board. What each term rests on is in [real-size models](real-size.md#tensorrt-memory-on-a-jetson).",
        "",
        *markdown_table(header, rows),
        "",
    ]


def _int4(record: dict[str, Any]) -> list[str]:
    config = record["config"]
    rows = []
    for cell in record["summary"]:
        random, trained = (
            f"{cell[f'{kind} min cosine']['mean']:.3f} ± {cell[f'{kind} min cosine']['sd']:.3f} "
            f"({cell[f'{kind} passed']}/{cell[f'{kind} seeds']})"
            for kind in ("random", "trained-like")
        )
        difference = cell["paired difference of min cosine (trained-like - random)"]
        rows.append(
            [
                str(cell["block"]),
                f"{cell['budget']:.0%}",
                cell["level"],
                random,
                trained,
                f"{difference['mean']:+.3f} ± {difference['sd']:.3f}",
            ]
        )
    header = ["block", "float budget", "ONNX Runtime int4 kernel", "random: min cos (passed)",
              "trained-like: min cos (passed)", "paired difference"]  # fmt: skip
    return [
        "## int4: random weights or the method?",
        "",
        f"`{config['architecture']}` at full width with {config['layers']} language and {config['vision_depth']}",
        f"vision blocks, {config['image_size']} px, seeds {', '.join(map(str, config['seeds']))}; each model's",
        "fp32 bundle, then int4 from the same fp32 graphs at each block size and float budget, gated against",
        f"PyTorch on sets A and B and {config['pairs']} held-out pairs (the int4 bar: min cosine >= 0.95 and",
        "top-1 >= 90%). Min cosine is the lower of the two pipelines' (image and text items), mean ± sample",
        "standard deviation over the seeds; 'passed' counts the seeds whose whole int4 gate passed; the paired",
        "difference is trained-like minus random, seed by seed.",
        "",
        *markdown_table(header, rows),
        "",
    ]


def main(argv: list[str] | None = None) -> int:
    return write_page("python -m bench.real_size_report", __doc__.split("\n\n")[0], lambda: render(load()), argv)


if __name__ == "__main__":
    sys.exit(main())

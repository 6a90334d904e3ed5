"""docs/native-resolution.md from the JSON files `bench.bucketing` and `bench.native_cost` wrote: no number typed in.

    python -m bench.native_report docs/bucketing.json docs/native-cost-2b.json -o docs/native-resolution.md

`tests/test_docs_numbers.py` renders the page again from the same files and compares.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from .scale_report import short_commit, write_page


def _origin(report: dict[str, Any]) -> str:
    machine = report["machine"]
    return (
        f"`{' '.join(report['command'])}`, commit `{short_commit(report['commit'])}`, {machine['cores']} cores, "
        f"{machine['memory_bytes'] / 2**30:.0f} GiB"
    )


def render(bucketing: dict[str, Any], cost: dict[str, Any], sources: tuple[str, str]) -> str:
    lines = [
        "# Native resolution: what it costs and what bucketing saves",
        "",
        f"Rendered by `python -m bench.native_report {' '.join(sources)}` from the files the commands below wrote.",
        "ONNX Runtime fp32 on this machine's CPU.",
    ]
    lines += _cost(cost["provenance"], cost)
    lines += _bucketing(bucketing)
    return "\n".join(lines) + "\n"


def _cost(origin: dict[str, Any], cost: dict[str, Any]) -> list[str]:
    native, fixed = cost["latency"]["native"], cost["latency"]["fixed"]
    ratio = cost["native_over_fixed"]
    size = origin["config"]["size"]
    lines = [
        "",
        "## Native resolution against a fixed square, at 2B",
        "",
        f"{_origin(origin)}. A published-style single-vector export (`--pooling last-token`) of a random-weight",
        "Qwen2-VL-2B-architecture folder with GME's image settings (256 to 1280 image tokens); the same graphs run",
        f"each photo at its own size and squashed to {size} x {size} px, interleaved in one process.",
        "",
        f"| photo | size | image tokens, native | image tokens, {size} px |",
        "| --- | --- | --- | --- |",
    ]
    lines += [
        f"| {p['photo']} | {p['size'][0]}x{p['size'][1]} | {p['native_tokens']} | {p['fixed_tokens']} |"
        for p in cost["photos"]
    ]
    lines += [
        "",
        "| | ms per image, batch 1 | images/s, batch 8 |",
        "| --- | --- | --- |",
        f"| native | {native['ms_per_image_batch1']:.0f} | {native['images_per_s_batch8']:.3f} |",
        f"| {size} px square | {fixed['ms_per_image_batch1']:.0f} | {fixed['images_per_s_batch8']:.3f} |",
        f"| native / square | {ratio['latency_batch1']:.2f} | {ratio['throughput_batch8']:.2f} |",
        "",
        f"Native resolution gives these photos {ratio['tokens']:.2f} times the image tokens of the square. The",
        "export's gate, with one batch of several image sizes, against PyTorch:",
        "",
        "| pipeline | inputs | min cosine | max abs | passed |",
        "| --- | --- | --- | --- | --- |",
    ]
    lines += [
        f"| {r['graph']} | {r['inputs']} | {r['min_cosine']:.7f} | {r['max_abs']:.1e} | {_yes(r['passed'])} |"
        for r in cost["gate"]
        if r["graph"] != "scorer"
    ]
    return lines


def _yes(passed: bool) -> str:
    return "yes" if passed else "no"


def _bucketing(report: dict[str, Any]) -> list[str]:
    ways = report["ways"]
    patches = report["patches_per_image"]
    config = report["config"]
    return [
        "",
        "## Batching mixed sizes: in input order or by size",
        "",
        f"{_origin(report)}. The {report['preset']} preset at native resolution (at most {config['max_pixels']}",
        f"pixels), {report['images']} photos of {patches['min']} to {patches['max']} patches (median",
        f"{patches['median']}), batch {config['batch']}, medians of {config['repeat']} interleaved rounds.",
        "",
        "| batching | images/s | images/s, inference only | padded patch rows | share of rows that are padding |",
        "| --- | --- | --- | --- | --- |",
        *(
            f"| {name.replace('_', ' ')} | {w['images_per_s']:.1f} | {w['inference_images_per_s']:.1f} | "
            f"{w['padded_patches']} | {w['padding_share']:.1%} |"
            for name, w in ways.items()
        ),
        "",
        f"By size: {report['speedup']:.2f} times the images per second of input order, the embeddings equal to",
        f"{report['max_abs_difference']:.1e}. Padded patch rows count the batches as formed, which is what a vision",
        "encoder taking whole batches computes; ONNX Runtime on the CPU runs each image alone with its own patches,",
        "so there the gain comes from the language encoder's shorter token padding. Packing several images into one",
        "row would need block-diagonal attention inside the vision graph, which masks padding per row; bucketing is",
        "what this layout supports.",
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.native_report", description=__doc__.split("\n\n")[0])
    p.add_argument("bucketing", type=Path, help="the JSON bench.bucketing wrote")
    p.add_argument("cost", type=Path, help="the JSON bench.native_cost wrote")
    p.add_argument("-o", "--out", type=Path, help="write here (default: print)")
    args = p.parse_args(argv)
    files = (args.bucketing, args.cost)
    write_page(render(*(json.loads(f.read_text()) for f in files), tuple(map(str, files))), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

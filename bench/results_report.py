"""docs/results.md from the JSON files bench.ablation and bench.serve wrote: every number in it is read, none typed.

    python -m bench.results_report -o docs/results.md

`tests/test_docs_numbers.py` renders the page again from the same files and compares, so a number on the page
that differs from its file, or a file that is gone, fails the tests.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.ablation import METRICS, markdown_tables

DOCS = Path(__file__).resolve().parents[1] / "docs"


@dataclass(frozen=True)
class Source:
    """One JSON file on the page: the command that wrote it and the commit that added it to the repository."""

    name: str
    command: str
    commit: str


PRETRAIN = (
    "python -m train.run --objective lm --steps 1500 --out base-lm && "
    "python -m train.run --out base-lm --resume --steps 3000"
)
ABLATIONS = (
    (
        "A pretrained base, LoRA-adapted",
        "The paper's regime at this scale: a generative base (`--objective lm`), then each variant fine-tuned from "
        "it with LoRA on the language model (vision tower and embeddings fixed; prompts, fusion, temperature and "
        "adapters trained).",
        Source(
            "ablation-lora.json",
            "python -m bench.ablation --base base-lm --lora-rank 8 --steps 300 --variants baseline baseline+ega agff "
            "agff+ega agff+ega+text-init --out ablation-lora/",
            "d59bec1",
        ),
    ),
    (
        "The same base, frozen",
        "Only the prompts, fusion parameters and temperature train; the backbone is the generative base as it is.",
        Source(
            "ablation-frozen.json",
            "python -m bench.ablation --base base-lm --freeze-backbone --steps 300 --variants baseline agff agff+ega "
            "--out ablation-frozen/",
            "c2323e8",
        ),
    ),
    (
        "From scratch, same budget",
        "No base: every weight trains from random for the same number of steps.",
        Source(
            "ablation-scratch.json",
            "python -m bench.ablation --steps 300 --variants baseline agff agff+ega --out ablation-scratch/",
            "d59bec1",
        ),
    ),
)
SERVING = (
    (
        "Defaults",
        Source("serve-bench.json", "python -m bench.serve bundle/ --rounds 5 --out docs/serve-bench.json", "3622eb0"),
    ),
    (
        "No queue delay",
        Source(
            "serve-bench-delay0.json",
            "python -m bench.serve bundle/ --rounds 5 --max-queue-delay-ms 0 --out docs/serve-bench-delay0.json",
            "3622eb0",
        ),
    ),
    (
        "Two instances of one thread each",
        Source(
            "serve-bench-2-instances.json",
            "python -m bench.serve bundle/ --rounds 5 --instances 2 --threads 1 "
            "--out docs/serve-bench-2-instances.json",
            "3622eb0",
        ),
    ),
)
SOURCES = tuple(s for *_, s in ABLATIONS) + tuple(s for _, s in SERVING)


def load(docs: Path = DOCS) -> dict[str, Any]:
    """Every file the page is rendered from, by name; a missing file raises (the page cannot be rendered without it)."""
    return {s.name: json.loads((docs / s.name).read_text()) for s in SOURCES}


def render(reports: dict[str, Any]) -> str:
    lines = [
        "# Results: quality and serving cost",
        "",
        "Rendered by `python -m bench.results_report -o docs/results.md` from the JSON files named under each",
        "table; no number on this page is typed by hand, and `tests/test_docs_numbers.py` fails when one differs",
        "from its file. Where a file records no commit or machine (files written before the benches recorded",
        "them), the commit given is the one that added the file, and the run was made on the project's development",
        "machine (a 2-core CPU, no GPU). Earlier numbers that no file backs are in the [changelog](changelog.md),",
        "as history.",
        "",
        "## Quality: what AGFF and EGA change",
        "",
    ]
    lines += _protocol(reports[ABLATIONS[0][2].name]["settings"])
    for title, regime, source in ABLATIONS:
        lines += _ablation(title, regime, source, reports[source.name])
    lines += _ega(reports)
    lines += ["", "## Serving cost: agff-serve against the same bundle in-process", ""]
    lines += _serving_intro(reports[SERVING[0][1].name])
    for title, source in SERVING:
        report = reports[source.name]
        lines += ["", f"### {title}", "", f"`{source.command}` ({_settings_line(report)}; {origin(source, report)})"]
        lines += ["", serving_table(report)]
    lines += _serving_reading(reports)
    return "\n".join(lines) + "\n"


def _protocol(settings: dict[str, Any]) -> list[str]:
    seeds = ", ".join(map(str, settings["seeds"]))
    eval_seeds = " and ".join(map(str, settings["eval_seeds"]))
    return [
        "Every comparison is one `python -m bench.ablation` run. Each variant is trained with one recipe on",
        f"training seeds {seeds}, and each checkpoint is evaluated on synthetic-mmvp and synthetic-global at",
        f"evaluation seeds {eval_seeds}; a run's number is its mean over the evaluation seeds. The first table",
        "of each pair gives each variant's mean ± sample std over training seeds, the second each comparison's",
        "difference seed by seed (same seed, same batches), its mean and its 95% Student t interval. A gain is",
        "claimed only where the interval lies above 0. The variants: `baseline` (`--num-fine 0 --ega-alpha 0`: one",
        "global embedding, plain cosine, plain InfoNCE), `baseline+ega`, `agff` (K fine prompts, fused similarity,",
        "`--ega-alpha 0`), `agff+ega` and `agff+ega+text-init` (`--prompt-init aspects`). `agff+ega - agff` is EGA",
        "on its own.",
        "",
        "The generative base of the first two regimes is made by",
        "",
        "<!-- not run: about 15 minutes of pretraining on 2 cores -->",
        "```bash",
        PRETRAIN,
        "```",
    ]


def _ablation(title: str, regime: str, source: Source, report: dict[str, Any]) -> list[str]:
    settings = report["settings"]
    runs = len(settings["seeds"]) * len(settings["variants"])
    minutes = report["wall_s"] / 60
    lines = ["", f"### {title}", "", regime, f"{settings['steps']} steps per run; {runs} runs took {minutes:.0f} min."]
    lines += ["", "<!-- not run: trains a model per variant and seed (tens of minutes on 2 cores) -->", "```bash"]
    lines += [source.command, "```", "", origin(source, report).capitalize() + ".", ""]
    lines += [markdown_tables(report)]
    plot = DOCS / source.name.replace(".json", ".png")
    if plot.exists():
        lines += ["", f"![per-pattern pair accuracy: {title.lower()}]({plot.name})"]
    lines += ["", "Intervals that lie above 0 in this run:", ""]
    above = [
        f"- `{label}`, {METRICS[metric]}: {_interval(d)}"
        for label, metrics in report["paired"].items()
        for metric, d in metrics.items()
        if d["ci_low"] > 0
    ]
    return lines + (above or ["- none"])


def _ega(reports: dict[str, Any]) -> list[str]:
    lines = [
        "",
        "### What EGA adds, and what the defaults follow from",
        "",
        "EGA on its own is `agff+ega - agff`, the same fused model with and without the hard-negative weighting:",
        "",
        "| regime | metric | mean difference (points) | 95% CI | sign of the mean |",
        "| --- | --- | --- | --- | --- |",
    ]
    for title, _, source in ABLATIONS:
        for metric, d in reports[source.name]["paired"]["agff+ega - agff"].items():
            sign = "negative" if d["mean"] < 0 else "positive"
            lines.append(f"| {title} | {METRICS[metric]} | {_signed(d['mean'])} | {_ci(d)} | {sign} |")
    lora = reports[ABLATIONS[0][2].name]["paired"]
    ega = lora["agff+ega - agff"]
    negative = [METRICS[m] for m, d in ega.items() if d["mean"] < 0]
    whole = lora["agff+ega - baseline"]
    lowest = min(whole.values(), key=lambda d: d["ci_low"])
    lines += [
        "",
        f"In the LoRA regime, the one closest to the paper's, EGA's mean difference is negative on {len(negative)}",
        f"of {len(ega)} metrics ({', '.join(negative)}), and no interval excludes 0 either way. These runs do not",
        "show EGA helping. The demo preset keeps `--ega-alpha 1` because it is the method this toolkit implements;",
        "`--ega-alpha 0` is as well supported by these numbers. Nor do they show that AGFF + EGA is free: the",
        f"interval of `agff+ega - baseline` in the LoRA regime reaches {_signed(lowest['ci_low'])} points. What they",
        "do show is the fine prompts' gain over a single embedding with a pretrained backbone (`agff - baseline`,",
        f"MMVP mean: {_interval(lora['agff - baseline']['mmvp'])}). The gain the paper reports needs a capable",
        "pretrained backbone, which the toy generative base is not.",
    ]
    return lines


def _serving_intro(report: dict[str, Any]) -> list[str]:
    return [
        "`python -m bench.serve BUNDLE` runs `agff-serve`'s models and the same bundle in-process side by side: at",
        "C concurrent clients, C threads each send one JPEG per HTTP request and Triton batches them; the in-process",
        "side hands the same code (`EmbeddingService`, decoding included) C JPEGs per call from one thread. Levels",
        "run in turn against one server; the ratio is served / in-process throughput per round, shown as mean",
        f"[min..max] over the rounds. Demo bundle, ONNX Runtime fp32, photos of {report['side']} px on the longer",
        "side; the clients share the CPU with the server.",
    ]


def _settings_line(report: dict[str, Any]) -> str:
    return (
        f"{report['requests']} images per level and side, {report['rounds']} rounds, queue delay "
        f"{report['max_queue_delay_ms']:g} ms, {report['instances']} instance(s), threads {report['threads']} "
        "(0: cores / instances)"
    )


def _serving_reading(reports: dict[str, Any]) -> list[str]:
    default, delay0, two = (reports[s.name]["levels"] for _, s in SERVING)
    top, single, single0 = default[-1], default[0], delay0[0]
    return [
        "",
        f"At {top['concurrency']} clients the server keeps {top['ratio_mean']:.2f} of in-process throughput with",
        f"the defaults (lowest round {top['ratio_min']:.2f}). A lone client pays for the queue delay: each request",
        "waits for partners that never come, so use `--max-queue-delay-ms 0` where clients are few (a single",
        f"client's served p50 goes from {single['served']['p50_ms']:.1f} to {single0['served']['p50_ms']:.1f} ms).",
        f"Two instances overlap one batch's decoding with the other's inference and at {two[-1]['concurrency']}",
        f"clients serve {two[-1]['ratio_mean']:.2f}x the one-thread in-process throughput.",
    ]


def serving_table(report: dict[str, Any]) -> str:
    """bench.serve's own table of a report (imported here, not at the top: bench.serve needs the serve extra)."""
    from bench.serve import table

    return table(report)


def origin(source: Source, report: dict[str, Any]) -> str:
    """Where a file's numbers come from: its own commit and machine when it records them, else the commit that
    added it to the repository."""
    if "commit" not in report:
        return f"file `docs/{source.name}`, added in commit `{source.commit}`"
    machine = report["machine"]
    cores, memory = machine["cores"], machine["memory_bytes"] / 2**30
    return f"file `docs/{source.name}`, commit `{report['commit'][:12]}`, {cores} cores, {memory:.0f} GiB"


def _signed(points: float) -> str:
    return f"{round(points, 1) + 0.0:+.1f}"  # as bench.ablation's tables print it


def _ci(d: dict[str, Any]) -> str:
    return f"[{_signed(d['ci_low'])}, {_signed(d['ci_high'])}]"


def _interval(d: dict[str, Any]) -> str:
    return f"{_signed(d['mean'])} points, 95% interval {_ci(d)}"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.results_report", description=__doc__)
    p.add_argument("-o", "--out", type=Path, help="write the page here (default: stdout)")
    args = p.parse_args(argv)
    page = render(load())
    if args.out:
        args.out.write_text(page)
    else:
        sys.stdout.write(page)


if __name__ == "__main__":
    main()

"""docs/results.md from the JSON files bench.ablation and bench.serve wrote: every number in it is read, none typed.

    python -m bench.results_report -o docs/results.md

`tests/test_docs_numbers.py` renders the page again from the same files and compares, so a number on the page
that differs from its file, or a file that is gone, fails the tests.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agff_deploy.config import AGFFConfig
from bench.ablation import METRICS, markdown_tables
from bench.ega_diagnosis import diagnosis_table

DOCS = Path(__file__).resolve().parents[1] / "docs"


@dataclass(frozen=True)
class Source:
    """One JSON file on the page: the command that wrote it and the commit that added it to the repository."""

    name: str
    command: str
    commit: str = ""  # for files that record no commit of their own


PRETRAIN = (
    "python -m train.run --objective lm --steps 1500 --out base-lm && "
    "python -m train.run --out base-lm --resume --steps 3000"
)
FINETUNE = (
    "A pretrained base, fully fine-tuned",
    "The generative base, then every weight fine-tuned (no LoRA, nothing frozen) for the demo's budget of 1000 "
    "steps at its learning rate: the regime meant to give a baseline that works (global R@1 of 80% or more) before "
    "AGFF and EGA are compared. Chosen on tuning seeds that no table on this page uses (training seed 100, "
    "evaluation seeds 200 and 201): at 500 steps the baseline's global R@1 sat at the 80% line, at 1000 steps it "
    "cleared it with margin.",
    Source(
        "ablation-finetune.json",
        "python -m bench.ablation --base base-lm --steps 1000 --seeds 31 32 33 34 35 --eval-seeds 41 43 "
        "--variants baseline agff agff+ega baseline+ega --out ablation-finetune/",
    ),
)
DIAGNOSIS = Source(
    "ega-diagnosis.json",
    "python -m bench.ega_diagnosis --base base-lm --steps 1000 --seed 100 --eval-seeds 200 201 --out diagnosis/",
)
ABLATIONS = (
    FINETUNE,
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
OPENAI = Source(
    "openai-serve.json",
    "python -m bench.openai_serve bundle/ --clients 1 16 --batch 1 8 --requests 96 --rounds 5 "
    "--out docs/openai-serve.json",
)
INDEX = Source(
    "index-scale.json",
    "python -m bench.index_scale bundle/ --sizes 100000 1000000 --seeds 0 1 2 --seeds-at-largest 1 --queries 100 "
    "--out docs/index-scale.json",
)
EMBED_CORPUS = Source(
    "embed-corpus.json", "python -m bench.embed_corpus bundle/ --images 8000 --rounds 3 --out docs/embed-corpus.json"
)
SOURCES = (*(s for *_, s in ABLATIONS), DIAGNOSIS, *(s for _, s in SERVING), OPENAI, INDEX, EMBED_CORPUS)


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
    lines += _protocol()
    title, regime, source = FINETUNE
    lines += _ablation(title, regime, source, reports[source.name])
    lines += _targets(reports[source.name])
    lines += _patterns(reports[source.name])
    lines += _diagnosis(reports[DIAGNOSIS.name])
    lines += _ega(reports)
    lines += ["", "## Earlier regimes: short fine-tuning", "", _earlier(reports)]
    for title, regime, source in ABLATIONS[1:]:
        lines += _ablation(title, regime, source, reports[source.name])
    lines += ["", "## Serving cost: agff-serve against the same bundle in-process", ""]
    lines += _serving_intro(reports[SERVING[0][1].name])
    for title, source in SERVING:
        report = reports[source.name]
        lines += ["", f"### {title}", "", f"`{source.command}` ({_settings_line(report)}; {origin(source, report)})"]
        lines += ["", serving_table(report)]
    lines += _serving_reading(reports)
    lines += _openai(reports[OPENAI.name])
    lines += _index_scale(reports[INDEX.name])
    lines += _embed_corpus(reports[EMBED_CORPUS.name])
    return "\n".join(lines) + "\n"


def _protocol() -> list[str]:
    return [
        "Every comparison is one `python -m bench.ablation` run. Each variant is trained with one recipe on the",
        "training seeds its section names, and each checkpoint is evaluated on synthetic-mmvp and synthetic-global",
        "at its evaluation seeds; a run's number is its mean over the evaluation seeds. The first table of each",
        "pair gives each variant's mean ± sample std over training seeds, the second each comparison's difference",
        "seed by seed",
        "(same seed, same batches), its mean and its 95% Student t interval. A gain is claimed only where the",
        "interval lies above 0. The variants: `baseline` (`--num-fine 0 --ega-alpha 0`: one global embedding, plain",
        "cosine, plain InfoNCE), `baseline+ega`, `agff` (K fine prompts, fused similarity, `--ega-alpha 0`),",
        "`agff+ega` and `agff+ega+text-init` (`--prompt-init aspects`). `agff+ega - agff` is EGA on its own.",
        "",
        "Every regime starts from the same generative base (the scratch regime aside), made by",
        "",
        "<!-- not run: about 10 minutes of pretraining on 2 cores -->",
        "```bash",
        PRETRAIN,
        "```",
    ]


def _earlier(reports: dict[str, Any]) -> str:
    """What the earlier regimes share, read from their files: the budget, the seeds, how far the baseline got."""
    settings = [reports[source.name]["settings"] for *_, source in ABLATIONS[1:]]
    recall = max(reports[source.name]["summary"]["baseline"]["i2t_r1_mean"] for *_, source in ABLATIONS[1:])
    steps = sorted({s["steps"] for s in settings})
    text = (
        f"{len(settings)} regimes with {' or '.join(map(str, steps))} fine-tuning steps. In all of them the baseline's "
        f"global i2t R@1 is at most {_percent(recall)}"
    )
    if recall < 0.5:
        return text + (
            ", so they compare models that do not yet perceive: kept as the record of what did not work, not as "
            "evidence for or against a method."
        )
    return text + "."


def _ablation(title: str, regime: str, source: Source, report: dict[str, Any]) -> list[str]:
    settings = report["settings"]
    runs = len(settings["seeds"]) * len(settings["variants"])
    minutes = report["wall_s"] / 60
    seeds = f"training seeds {_listed(settings['seeds'])}, evaluation seeds {_listed(settings['eval_seeds'])}"
    lines = ["", f"### {title}", "", regime, f"{settings['steps']} steps per run, {seeds}; {runs} runs took "
             f"{minutes:.0f} min."]  # fmt: skip
    lines += ["", "<!-- not run: trains a model per variant and seed (tens of minutes on 2 cores) -->", "```bash"]
    lines += [source.command, "```", "", _sentence(origin(source, report)), ""]
    lines += [markdown_tables(report)]
    plot = DOCS / source.name.replace(".json", ".png")
    if plot.exists():
        lines += ["", f"![per-pattern pair accuracy: {title.lower()}]({plot.name})"]
    for side, beyond in (("above", lambda d: d["ci_low"] > 0), ("below", lambda d: d["ci_high"] < 0)):
        found = [
            f"- `{label}`, {METRICS[metric]}: {_interval(d)}"
            for label, metrics in report["paired"].items()
            for metric, d in metrics.items()
            if beyond(d)
        ]
        lines += ["", f"Intervals that lie {side} 0 in this run:", "", *(found or ["- none"])]
    return lines


def _targets(report: dict[str, Any]) -> list[str]:
    """The quality targets of this regime, each checked against the file."""
    baseline, paired = report["summary"]["baseline"], report["paired"]
    whole, ega = paired["agff+ega - baseline"], paired["agff+ega - agff"]
    recall = [whole["i2t_r1"]["mean"], whole["t2i_r1"]["mean"]]
    rows = [
        ("the baseline's global i2t R@1 is 80% or more", _percent(baseline["i2t_r1_mean"]),
         baseline["i2t_r1_mean"] >= 0.8),
        ("`agff+ega - baseline`: MMVP +3 points or more, interval above 0", _interval(whole["mmvp"]),
         whole["mmvp"]["mean"] >= 3 and whole["mmvp"]["ci_low"] > 0),
        ("`agff+ega - baseline`: global R@1 not lower (mean difference, i2t and t2i)",
         " and ".join(_signed(r) for r in recall), min(recall) >= 0),
        ("`agff+ega - agff`: MMVP +1 point or more, interval above 0", _interval(ega["mmvp"]),
         ega["mmvp"]["mean"] >= 1 and ega["mmvp"]["ci_low"] > 0),
    ]  # fmt: skip
    lines = ["", "The targets set for this regime before it ran:", "", "| target | measured | met |"]
    lines.append("| --- | --- | --- |")
    return lines + [f"| {target} | {measured} | {'yes' if met else 'no'} |" for target, measured, met in rows]


def _patterns(report: dict[str, Any]) -> list[str]:
    """Where the variants could differ at all: the patterns the baseline already solves and those every variant
    leaves below a random scorer's 25%, read from the per-pattern means."""
    summary = report["summary"]
    patterns = summary["baseline"]["per_pattern"]
    solved = [p for p, s in patterns.items() if s["mean"] >= 0.9]
    unseen = [p for p in patterns if all(v["per_pattern"][p]["mean"] < 0.25 for v in summary.values())]
    between = [p for p in patterns if p not in solved and p not in unseen]
    return [
        "",
        f"Per pattern, the baseline already reaches 90% or more on {_named(solved)}, and every variant stays below "
        f"the 25% a random scorer gets on {_named(unseen)} (means over training seeds): the room for a gain is "
        f"mostly in {_named(between)}, {len(between)} of the {len(patterns)} patterns that MMVP's mean averages.",
    ]


def _named(items: list[str]) -> str:
    return ", ".join(items) if items else "none"


def _diagnosis(report: dict[str, Any]) -> list[str]:
    """The EGA diagnosis on tuning seeds: its table, the hardness chart, and what each mechanism shows."""
    runs = {run["name"]: run for run in report["runs"]}
    settings = report["settings"]
    lines = [
        "",
        "### EGA diagnosed on tuning seeds",
        "",
        f"The fused recipe of the regime above, {settings['steps']} steps, changed one setting at a time and trained",
        f"once, on tuning seed {settings['seed']} (evaluation seeds {_listed(settings['eval_seeds'])}); no table",
        "above uses these seeds, and with one training seed these show directions and support no claim.",
        "`hard share` is the share of in-batch negatives with p_ij / p_ii > 0.5, logged every step",
        "(`hard_share` in `train_log.jsonl`),",
        "averaged over the first, the sixth and the last tenth of training.",
        f"{report['wall_s'] / 60:.0f} min for {len(runs)} runs.",
        "",
        "<!-- not run: trains a model per setting (tens of minutes on 2 cores) -->",
        "```bash",
        DIAGNOSIS.command,
        "```",
        "",
        _sentence(origin(DIAGNOSIS, report)),
        "",
        diagnosis_table(report["runs"]),
    ]
    chart = DOCS / DIAGNOSIS.name.replace(".json", ".png")
    if chart.exists():
        lines += ["", f"![share of hard negatives through training]({chart.name})"]
    return lines + ["", *_diagnosis_reading(runs, settings)]


def _diagnosis_reading(runs: dict[str, Any], settings: dict[str, Any]) -> list[str]:
    def ega_gain(plain: str, amplified: str) -> str:
        return _signed(100 * (runs[amplified]["mmvp"] - runs[plain]["mmvp"]))

    learned = runs["alpha-0"]["curves"]
    share = learned["hard_share"]
    alpha = f"{settings['alpha']:g}"
    amplified = runs[f"alpha-{alpha}"]["curves"]
    gains = [f"learned temperature {ega_gain('alpha-0', 'alpha-' + alpha)}"]
    gains += [f"fixed at {t:g} {ega_gain(f'fixed-{t:g}-alpha-0', f'fixed-{t:g}-alpha-{alpha}')}"
              for t in settings["temperatures"]]  # fmt: skip
    gains += [f"batch {n} {ega_gain(f'batch-{n}-alpha-0', f'batch-{n}-alpha-{alpha}')}" for n in settings["batches"]]
    sweep = ", ".join(f"{a:g}: {100 * runs[f'alpha-{a:g}']['mmvp']:.1f}" for a in settings["alphas"])
    return [
        f"- Temperature: learned, its mean is {learned['temperature'][0]:.4f} over the first tenth of training and",
        f"  {learned['temperature'][-1]:.4f} over the last without EGA ({amplified['temperature'][-1]:.4f} with alpha"
        f" {alpha}).",
        f"- Hardness: without EGA {_percent(share[0], 2)} of negatives are hard in the first tenth of training,",
        f"  {_percent(share[len(share) // 2], 2)} in the sixth and {_percent(share[-1], 2)} in the last.",
        f"- Alpha (MMVP mean by alpha): {sweep}.",
        f"- EGA (alpha {alpha} minus 0, MMVP points) per setting: {'; '.join(gains)}.",
    ]


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
    paired = reports[FINETUNE[2].name]["paired"]
    ega, agff = paired["agff+ega - agff"], paired["agff - baseline"]
    helps, default = ega_helps(paired), AGFFConfig.ega_alpha
    above = [METRICS[m] for m, d in ega.items() if d["ci_low"] > 0]
    below = [METRICS[m] for m, d in ega.items() if d["ci_high"] < 0]
    lines += [
        "",
        f"Fully fine-tuned from the base, EGA on its own changes MMVP by {_interval(ega['mmvp'])}; its interval",
        f"lies above 0 on {_count(above, len(ega))} and below 0 on {_count(below, len(ega))}. The fine prompts",
        f"alone (`agff - baseline`) change MMVP by {_interval(agff['mmvp'])}.",
        "",
        f"The demo trains {'with' if default else 'without'} EGA (`ega_alpha` {default:g} by default). Its rule: EGA",
        "is on by default when, in this regime, its MMVP interval on its own lies above 0; here it "
        + ("does." if helps else "does not.")
        + " `tests/test_docs_numbers.py` holds the default to the rule. `--ega-alpha A` sets it for a run; the loss",
        "stays in `train/ega.py`, tested, as the method this family of models introduced.",
    ]
    return lines


def ega_helps(paired: dict[str, Any]) -> bool:
    """The rule the demo's EGA default follows: on when EGA on its own (`agff+ega - agff`) gains MMVP with its
    95% interval above 0 in the regime where the baseline works."""
    return paired["agff+ega - agff"]["mmvp"]["ci_low"] > 0


def _sentence(text: str) -> str:
    return text[0].upper() + text[1:] + "."


def _listed(values: list[Any]) -> str:
    return ", ".join(map(str, values[:-1])) + f" and {values[-1]}" if len(values) > 1 else str(values[0])


def _count(metrics: list[str], of: int) -> str:
    return f"{len(metrics)} of {of} metrics ({', '.join(metrics)})" if metrics else "no metric"


def _percent(fraction: float, digits: int = 1) -> str:
    return f"{100 * fraction:.{digits}f}%"


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


def _openai(report: dict[str, Any]) -> list[str]:
    from bench.openai_serve import table

    top = [level for level in report["levels"] if level["clients"] == max(r["clients"] for r in report["levels"])]
    kept = ", ".join(
        f"{level['openai base64']['ratio_to_triton']['mean']:.2f} (base64) and "
        f"{level['openai float']['ratio_to_triton']['mean']:.2f} (float) at batch {level['batch']}"
        for level in top
    )
    cpu = ", ".join(
        f"{level['openai float']['server_cpu_ms_per_image'] / level['triton']['server_cpu_ms_per_image']:.2f}x "
        f"at batch {level['batch']}"
        for level in top
    )
    sizes = top[-1]
    return [
        "",
        "## The OpenAI-style API against Triton's own protocol",
        "",
        f"`{OPENAI.command}` ({origin(OPENAI, report)}; bundle `{report['bundle']}`, ONNX Runtime fp32). One",
        "agff-serve; at each batch size and client count, the same JPEGs go through `EmbeddingClient` (Triton's",
        "HTTP protocol, binary tensors) and through `/v1/embeddings` as data URIs with float and with base64",
        "vectors, the paths' order rotating by round; '/ triton' is each path's throughput over Triton's in the same",
        "round, mean [min..max] over rounds. Each client is its own process; the clients share the two cores with",
        "the server, so throughput also pays for their work. 'server CPU' is what agff-serve's processes (front",
        "end, tritonserver, models) spent per image.",
        "",
        table(report),
        "",
        f"At {top[0]['clients']} clients the OpenAI-style path keeps {kept} of Triton's throughput. Per image its",
        f"server processes spend {cpu} Triton's CPU (float responses): the front end's hop and JSON. A response",
        f"carries {sizes['openai float']['response_bytes_per_image']:.0f} bytes an image as float JSON (float32's",
        f"shortest text) and {sizes['openai base64']['response_bytes_per_image']:.0f} as base64",
        f"(batch {sizes['batch']}).",
    ]


def _index_scale(report: dict[str, Any]) -> list[str]:
    from bench.index_scale import table

    c, spread = report["calibration"], report["calibration_spread"]
    largest = report["summary"][-1]
    ours = {k: v["mean"] for k, v in largest["ours"].items()}
    smaller = report["summary"][0]["ours"]["add_add_s"]["mean"]
    return [
        "",
        "## The index at corpus scale",
        "",
        f"`{INDEX.command}` ({origin(INDEX, report)}). Synthetic items of the 2B width ({report['vectors']} vectors",
        f"of {report['dimensions']}), shaped like the bundle's own embeddings of {spread['photos']} photos cut into",
        f"two overlapping views each: an item's fine vectors have cosine {c['global_fine']:.3f} (std",
        f"{spread['global_fine_std']:.3f}) with its global vector, two views of one scene {c['two_views']:.3f} (std",
        f"{spread['two_views_std']:.3f}), which sets how tight a cluster is and how far a query lies from its item;",
        "the bundle's fused-score temperatures and biases. `bench/index_scale.py` says how the vectors are drawn.",
        f"Shortlist {report['shortlist']}, top {report['top_k']}; each number the mean over the seeds counted,",
        "recall's lowest and highest seed in brackets; `naive` is the one-array index agff-run had, where it fits.",
        "",
        table(report),
        "",
        f"At {largest['size']:,} items a search process peaks at {ours['search_peak_rss'] / 2**30:.2f} GiB, a query",
        f"takes {ours['search_p50_ms']:.1f} ms at the median ({ours['search_p99_ms']:.1f} ms p99) and recall@10 is",
        f"{ours['recall_at_10']:.3f}. Adding {report['added']:,} items takes",
        f"{ours['add_add_s']:.2f} s at {largest['size']:,} and {smaller:.2f} s at {report['summary'][0]['size']:,}.",
    ]


def _embed_corpus(report: dict[str, Any]) -> list[str]:
    from bench.embed_corpus import table

    driver_ms = report["driver_cpu_ms_per_item"]
    rows, n = report["rows"], report["images"]
    fixed = {name: statistics.mean(r[name]["wall_s"] - n / r[name]["steady_images_per_s"] for r in rows)
             for name in ("index", "embed-corpus")}  # fmt: skip
    rates = report["steady_images_per_s"]
    gain = 1 / rates["index"] - 0.9 / rates["embed-corpus"]
    crossover = (
        f"by these rates and start-up costs the whole command reaches 0.9 of index's from about "
        f"{(0.9 * fixed['embed-corpus'] - fixed['index']) / gain:,.0f} images a run"
        if gain > 0 else "its embedding loop is too slow for the whole command to reach 0.9 of index's at any size"
    )  # fmt: skip
    return [
        "",
        "## Bulk embedding on Ray Data against one process",
        "",
        f"`{EMBED_CORPUS.command}` ({origin(EMBED_CORPUS, report)}; bundle `{report['bundle']}`). `agff-run index`",
        "and `agff-run embed-corpus` (a local Ray, one actor) on the same photos, in turn, order alternating by round;",
        "'the whole command' counts from start to exit (embed-corpus starts Ray and its actor), 'the embedding loop'",
        "from index's model being loaded and from embed-corpus's first results. Mean over rounds, ratio's spread.",
        "",
        table(report),
        "",
        f"embed-corpus's start-up (Ray, its actor, the first block) cost {fixed['embed-corpus']:.1f} s against",
        f"index's {fixed['index']:.1f} s (model loading): {crossover}. Its driver, the one process that writes the",
        "shards, spent",
        f"{driver_ms:.2f} ms of CPU per item; while N actors each embed at the rate above, it keeps up as long as",
        f"N times that rate stays under {1000 / driver_ms:,.0f} items/s. That bound and the one-actor rate are what",
        "was measured; no run on several GPUs or nodes backs a scaling figure.",
    ]


def serving_table(report: dict[str, Any]) -> str:
    """bench.serve's own table of a report (imported here, not at the top: bench.serve needs the serve extra)."""
    from bench.serve import table

    return table(report)


def origin(source: Source, report: dict[str, Any]) -> str:
    """Where a file's numbers come from: its own commit and machine when it records them, else the commit that
    added it to the repository."""
    if "commit" not in report:
        if not source.commit:
            raise ValueError(f"docs/{source.name} records no commit: name the commit that added it in its Source")
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
